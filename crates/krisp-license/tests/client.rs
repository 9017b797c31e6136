//! The license client against the real krisp-server on loopback.

mod common;

use common::*;
use krisp_license::krisp_token::{KeySet, PublicKey};
use krisp_license::{
    Backend as StoreBackend, Clock, Error, ExpiryReason, FileStore, LicenseState, Policy, evaluate,
};

const EMAIL: &str = "ann@example.com";

#[tokio::test]
async fn sign_in_and_activation_give_an_active_license() {
    let b = Backend::start().await;
    let clock = Clock::manual(T0);
    let store = mock_store();
    let c = client(&b.url(), "dev-a", b.keyset().await, &clock, keyring(&store));
    assert!(matches!(c.backend(), StoreBackend::Keyring(v) if v.contains("Mock")));
    assert_eq!(c.state().expect("state"), LicenseState::Unlicensed);

    sign_in(&b, &c, EMAIL).await;
    let d = c.activate("Ann's laptop", "linux").await.expect("activate");
    assert_eq!(d.device_id, "dev-a");
    let state = c.check().await.expect("check");
    assert!(
        matches!(&state, LicenseState::Active { until, plan } if *until == T0 + DAY && plan == "trial"),
        "{state:?}"
    );
    assert!(state.allows_noise_removal());
    // The secrets went to the keyring.
    let s = keyring(&store);
    assert!(s.get("refresh_token").expect("get").is_some());
    assert!(s.get("license_token").expect("get").is_some());
}

#[tokio::test]
async fn wrong_code_is_refused_with_the_servers_message() {
    let b = Backend::start().await;
    let c = client(
        &b.url(),
        "dev-a",
        b.keyset().await,
        &Clock::manual(T0),
        keyring(&mock_store()),
    );
    c.request_code(EMAIL).await.expect("request code");
    let real = b.code_for(EMAIL);
    let wrong = if real == "000000" { "111111" } else { "000000" };
    match c.sign_in(EMAIL, wrong).await {
        Err(Error::Server {
            status: 401,
            message,
            ..
        }) => assert!(!message.is_empty()),
        other => panic!("expected a 401 with a message, got {other:?}"),
    }
    assert!(matches!(c.refresh_license().await, Err(Error::NotSignedIn)));
}

#[tokio::test]
async fn token_refresh_returns_a_newer_token_that_verifies() {
    let b = Backend::start().await;
    let clock = Clock::manual(T0);
    let keys = b.keyset().await;
    let c = client(
        &b.url(),
        "dev-a",
        keys.clone(),
        &clock,
        keyring(&mock_store()),
    );
    sign_in(&b, &c, EMAIL).await;
    c.activate("laptop", "linux").await.expect("activate");
    let first = c.refresh_license().await.expect("license");
    // Half a day later (past the 15-minute access token: the client rotates its session).
    b.clock.advance(DAY / 2);
    clock.advance(DAY / 2);
    let second = c.refresh_license().await.expect("renewed license");
    assert_ne!(first, second);
    let l = krisp_license::krisp_token::verify(&second, &keys, "dev-a", T0 + DAY / 2)
        .expect("verifies");
    assert_eq!(l.claims.iat, T0 + DAY / 2);
    assert_eq!(l.claims.exp, T0 + DAY / 2 + DAY);
}

#[tokio::test]
async fn server_down_means_grace_then_expiry_and_back_up_means_active_again() {
    let mut b = Backend::start().await;
    let clock = Clock::manual(T0);
    let c = client(
        &b.url(),
        "dev-a",
        b.keyset().await,
        &clock,
        keyring(&mock_store()),
    );
    sign_in(&b, &c, EMAIL).await;
    c.activate("laptop", "linux").await.expect("activate");
    assert!(matches!(
        c.check().await.expect("check"),
        LicenseState::Active { .. }
    ));

    b.stop().await;
    assert!(
        matches!(c.refresh_license().await, Err(ref e @ Error::Unreachable { .. }) if e.is_offline())
    );
    // Still within the token's validity: active, offline.
    clock.advance(DAY / 2);
    assert!(matches!(
        c.check().await.expect("check"),
        LicenseState::Active { .. }
    ));
    // Past exp: grace until exp + 7 days.
    clock.set(T0 + 2 * DAY);
    let grace = c.check().await.expect("check");
    assert_eq!(
        grace,
        LicenseState::Grace {
            until: T0 + 8 * DAY
        }
    );
    assert!(grace.allows_noise_removal());
    assert!(grace.message().contains("offline"));
    // Past grace: expired, noise removal stops.
    clock.set(T0 + 8 * DAY);
    let expired = c.check().await.expect("check");
    assert_eq!(
        expired,
        LicenseState::Expired {
            reason: ExpiryReason::GraceEnded { at: T0 + 8 * DAY }
        }
    );
    assert!(!expired.allows_noise_removal());
    assert!(expired.message().contains("grace period ended"));

    // The server comes back (its clock moved on too): the next check renews.
    b.set_time(T0 + 8 * DAY);
    b.restart().await;
    let state = c.check().await.expect("check");
    assert!(
        matches!(state, LicenseState::Active { until, .. } if until == T0 + 9 * DAY),
        "{state:?}"
    );
}

#[tokio::test]
async fn revoked_device_is_expired_at_the_next_successful_check() {
    let b = Backend::start().await;
    let clock = Clock::manual(T0);
    let store = mock_store();
    let c = client(&b.url(), "dev-a", b.keyset().await, &clock, keyring(&store));
    sign_in(&b, &c, EMAIL).await;
    c.activate("laptop", "linux").await.expect("activate");
    assert!(matches!(
        c.check().await.expect("check"),
        LicenseState::Active { .. }
    ));
    // The user removes this device from elsewhere (another session on the same account).
    let access = b.access_token_for(EMAIL).await;
    let r = http()
        .delete(format!("{}/v1/devices/dev-a", b.url()))
        .bearer_auth(access)
        .send()
        .await
        .expect("delete device");
    assert_eq!(r.status().as_u16(), 204);
    let state = c.check().await.expect("check");
    assert!(
        matches!(
            &state,
            LicenseState::Expired {
                reason: ExpiryReason::Refused(_)
            }
        ),
        "{state:?}"
    );
    assert!(!state.allows_noise_removal());
    // It stays expired offline too (the old token was dropped).
    assert_eq!(c.state().expect("state"), state);
}

#[tokio::test]
async fn trial_end_expires_the_license_at_the_next_check() {
    let b = Backend::start().await;
    let clock = Clock::manual(T0);
    let c = client(
        &b.url(),
        "dev-a",
        b.keyset().await,
        &clock,
        keyring(&mock_store()),
    );
    sign_in(&b, &c, EMAIL).await;
    c.activate("laptop", "linux").await.expect("activate");
    // Keep renewing daily until the 14-day trial is over.
    for day in 1..=13 {
        b.set_time(T0 + day * DAY);
        clock.set(T0 + day * DAY);
        assert!(
            matches!(c.check().await.expect("check"), LicenseState::Active { .. }),
            "day {day}"
        );
    }
    b.set_time(T0 + 15 * DAY);
    clock.set(T0 + 15 * DAY);
    let state = c.check().await.expect("check");
    assert!(
        matches!(
            &state,
            LicenseState::Expired {
                reason: ExpiryReason::Refused(_)
            }
        ),
        "{state:?}"
    );
}

#[tokio::test]
async fn tampered_token_foreign_device_and_unknown_key_are_refused() {
    let b = Backend::start().await;
    let keys = b.keyset().await;
    let clock = Clock::manual(T0);
    let a = client(
        &b.url(),
        "dev-a",
        keys.clone(),
        &clock,
        keyring(&mock_store()),
    );
    sign_in(&b, &a, EMAIL).await;
    a.activate("laptop", "linux").await.expect("activate");
    let token = a.refresh_license().await.expect("license");

    // Tampered: flip one character of the claims.
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let mut claims = parts[2].clone().into_bytes();
    claims[5] = if claims[5] == b'A' { b'B' } else { b'A' };
    parts[2] = String::from_utf8(claims).expect("ascii");
    let tampered = parts.join(".");
    assert_eq!(
        evaluate(Some(&tampered), None, &keys, "dev-a", T0),
        LicenseState::Expired {
            reason: ExpiryReason::Tampered
        }
    );
    // A tampered token in the keyring stops noise removal, too.
    let store = mock_store();
    let b_client = client(&b.url(), "dev-a", keys.clone(), &clock, keyring(&store));
    keyring(&store)
        .set("license_token", &tampered)
        .expect("plant");
    assert!(!b_client.state().expect("state").allows_noise_removal());

    // A genuine token for another device.
    assert_eq!(
        evaluate(Some(&token), None, &keys, "dev-other", T0),
        LicenseState::Expired {
            reason: ExpiryReason::WrongDevice
        }
    );

    // Signed by a key this build does not embed.
    let mut other = KeySet::new();
    other.insert(
        "someone-else",
        {
            // The Ed25519 base point: a valid key nobody signs licenses with.
            let mut k = [0x66u8; 32];
            k[0] = 0x58;
            PublicKey::from_bytes(&k)
        }
        .expect("valid point"),
    );
    let state = evaluate(Some(&token), None, &other, "dev-a", T0);
    assert_eq!(
        state,
        LicenseState::Expired {
            reason: ExpiryReason::UnknownKey
        }
    );
    assert!(state.message().contains("Update"));
    // And the client refuses to store such a token from the server.
    let c = client(&b.url(), "dev-a", other, &clock, keyring(&mock_store()));
    sign_in(&b, &c, EMAIL).await;
    assert!(matches!(
        c.refresh_license().await,
        Err(Error::Token(
            krisp_license::krisp_token::VerifyError::UnknownKey(_)
        ))
    ));
}

#[tokio::test]
async fn html_error_page_and_garbage_are_reported_as_bad_responses() {
    let html = canned_responder(
        b"HTTP/1.1 502 Bad Gateway\r\ncontent-type: text/html\r\ncontent-length: 40\r\n\
          connection: close\r\n\r\n<html><body>Bad Gateway</body></html>\n\n\n",
    );
    let c = client(
        &html,
        "dev-a",
        KeySet::new(),
        &Clock::manual(T0),
        keyring(&mock_store()),
    );
    match c.request_code(EMAIL).await {
        Err(e @ Error::BadResponse { status: 502, .. }) => {
            assert!(e.is_offline());
            assert!(e.to_string().contains("<html>"), "{e}");
        }
        other => panic!("expected BadResponse 502, got {other:?}"),
    }

    let ok_but_not_json = canned_responder(
        b"HTTP/1.1 202 Accepted\r\ncontent-length: 11\r\nconnection: close\r\n\r\nhello world",
    );
    let c = client(
        &ok_but_not_json,
        "dev-a",
        KeySet::new(),
        &Clock::manual(T0),
        keyring(&mock_store()),
    );
    assert!(matches!(
        c.request_code(EMAIL).await,
        Err(Error::BadResponse { status: 202, .. })
    ));

    let not_http = canned_responder(b"SSH-2.0-OpenSSH_9.2\r\n\r\n");
    let c = client(
        &not_http,
        "dev-a",
        KeySet::new(),
        &Clock::manual(T0),
        keyring(&mock_store()),
    );
    let e = c.request_code(EMAIL).await.expect_err("not HTTP");
    assert!(e.is_offline(), "{e:?}");
}

#[tokio::test]
async fn unreachable_server_and_tls_failure_are_told_apart() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let c = client(
        &format!("http://127.0.0.1:{port}"),
        "dev-a",
        KeySet::new(),
        &Clock::manual(T0),
        keyring(&mock_store()),
    );
    assert!(matches!(
        c.request_code(EMAIL).await,
        Err(Error::Unreachable { .. })
    ));

    // https:// to a plain-HTTP server: the TLS handshake fails.
    let b = Backend::start().await;
    let c = client(
        &format!("https://{}", b.addr),
        "dev-a",
        KeySet::new(),
        &Clock::manual(T0),
        keyring(&mock_store()),
    );
    match c.request_code(EMAIL).await {
        Err(Error::Tls { .. }) => {}
        other => panic!("expected a TLS error, got {other:?}"),
    }
}

#[tokio::test]
async fn clock_rolled_back_does_not_revive_an_expired_license() {
    let mut b = Backend::start().await;
    let clock = Clock::manual(T0);
    let c = client(
        &b.url(),
        "dev-a",
        b.keyset().await,
        &clock,
        keyring(&mock_store()),
    );
    sign_in(&b, &c, EMAIL).await;
    c.activate("laptop", "linux").await.expect("activate");
    c.refresh_license().await.expect("license");
    b.stop().await;
    clock.set(T0 + 9 * DAY);
    assert!(matches!(
        c.check().await.expect("check"),
        LicenseState::Expired {
            reason: ExpiryReason::GraceEnded { .. }
        }
    ));
    // Setting the clock back to when the token was fresh does not help.
    clock.set(T0 + 60);
    let t = c.trusted_now().expect("time");
    assert!(t.rolled_back);
    assert_eq!(t.now, T0 + 9 * DAY);
    assert!(matches!(
        c.check().await.expect("check"),
        LicenseState::Expired {
            reason: ExpiryReason::GraceEnded { .. }
        }
    ));
}

#[tokio::test]
async fn signed_issue_time_is_trusted_over_a_slow_local_clock() {
    let b = Backend::start().await;
    // The server is a day ahead of this machine's clock (far beyond the token's skew).
    b.set_time(T0 + DAY);
    let clock = Clock::manual(T0);
    let c = client(
        &b.url(),
        "dev-a",
        b.keyset().await,
        &clock,
        keyring(&mock_store()),
    );
    sign_in(&b, &c, EMAIL).await;
    c.activate("laptop", "linux").await.expect("activate");
    c.refresh_license()
        .await
        .expect("license despite the slow clock");
    let t = c.trusted_now().expect("time");
    assert_eq!(t.now, T0 + DAY, "the signed issue time is the trusted time");
    assert!(t.rolled_back);
    assert!(matches!(
        c.state().expect("state"),
        LicenseState::Active { until, .. } if until == T0 + 2 * DAY
    ));
    // As the local clock moves on past the token's expiry, grace follows as usual.
    clock.set(T0 + 3 * DAY);
    assert_eq!(
        c.state().expect("state"),
        LicenseState::Grace {
            until: T0 + 9 * DAY
        }
    );
}

#[tokio::test]
async fn logout_frees_the_seat_and_removes_the_stored_secrets() {
    let b = Backend::start().await;
    let clock = Clock::manual(T0);
    let store = mock_store();
    let c = client(&b.url(), "dev-a", b.keyset().await, &clock, keyring(&store));
    sign_in(&b, &c, EMAIL).await;
    c.activate("laptop", "linux").await.expect("activate");
    c.refresh_license().await.expect("license");
    c.logout().await.expect("logout");
    let s = keyring(&store);
    for k in ["refresh_token", "device_token", "license_token", "revoked"] {
        assert_eq!(s.get(k).expect("get"), None, "{k} still stored");
    }
    assert_eq!(c.state().expect("state"), LicenseState::Unlicensed);
    // The device is gone on the server.
    let access = b.access_token_for(EMAIL).await;
    let v: serde_json::Value = http()
        .get(format!("{}/v1/devices", b.url()))
        .bearer_auth(access)
        .send()
        .await
        .expect("list devices")
        .json()
        .await
        .expect("JSON");
    assert_eq!(v["devices"].as_array().map(Vec::len), Some(0), "{v}");
}

#[tokio::test]
async fn file_store_backend_works_end_to_end_and_is_reported() {
    let b = Backend::start().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("krisp");
    let c = client(
        &b.url(),
        "dev-a",
        b.keyset().await,
        &Clock::manual(T0),
        Box::new(FileStore::new(&dir).expect("file store")),
    );
    assert_eq!(c.backend(), StoreBackend::File(dir.join("secrets.json")));
    sign_in(&b, &c, EMAIL).await;
    c.activate("laptop", "linux").await.expect("activate");
    assert!(matches!(
        c.check().await.expect("check"),
        LicenseState::Active { .. }
    ));
    let text = std::fs::read_to_string(dir.join("secrets.json")).expect("secrets file");
    assert!(text.contains("license_token"));
    c.logout().await.expect("logout");
    let text = std::fs::read_to_string(dir.join("secrets.json")).expect("secrets file");
    assert!(
        !text.contains("refresh_token") && !text.contains("license_token"),
        "{text}"
    );
}

#[tokio::test]
async fn policy_file_enrols_the_machine_without_a_user() {
    let b = Backend::start().await;
    let token = b.org_enrolment_token("it@acme.example").await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("policy.toml");
    std::fs::write(
        &path,
        format!(
            "server_url = \"{}\"\nenrolment_token = \"{token}\"\nstart_at_login = true\n\
             locked = [\"server_url\"]\n",
            b.url()
        ),
    )
    .expect("write policy");
    let policy = Policy::load(&path).expect("read").expect("present");
    let store = mock_store();
    let c = client(
        policy.server_url.as_deref().expect("url"),
        "dev-fleet-1",
        b.keyset().await,
        &Clock::manual(T0),
        keyring(&store),
    );
    let d = c
        .enrol_with_policy(&policy, "Fleet laptop", "linux")
        .await
        .expect("enrol");
    assert!(d.org_id.is_some());
    let state = c.check().await.expect("check");
    assert!(
        matches!(&state, LicenseState::Active { plan, .. } if plan == "org"),
        "{state:?}"
    );
    assert!(keyring(&store).get("device_token").expect("get").is_some());
    // A policy without a token cannot enrol.
    let empty = Policy::default();
    assert!(matches!(
        c.enrol_with_policy(&empty, "x", "linux").await,
        Err(Error::Config(_))
    ));
}

#[tokio::test]
async fn requests_carry_only_the_expected_json_fields_and_no_audio() {
    let b = Backend::start().await;
    let (proxy, log) = recording_proxy(b.addr);
    let c = client(
        &proxy,
        "dev-a",
        b.keyset().await,
        &Clock::manual(T0),
        keyring(&mock_store()),
    );
    sign_in(&b, &c, EMAIL).await;
    c.activate("laptop", "linux").await.expect("activate");
    c.check().await.expect("check");
    c.logout().await.expect("logout");

    let allowed = [
        "email",
        "code",
        "refresh_token",
        "device_id",
        "name",
        "os",
        "enrolment_token",
    ];
    let log = log.lock().expect("log").clone();
    let lines: Vec<&str> = log.iter().map(|r| r.request_line.as_str()).collect();
    assert!(lines.len() >= 5, "{lines:?}");
    for r in &log {
        assert!(
            r.body.len() < 1024,
            "{} sent {} bytes",
            r.request_line,
            r.body.len()
        );
        if r.body.is_empty() {
            assert!(r.request_line.starts_with("DELETE "), "{}", r.request_line);
            continue;
        }
        let v: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON body");
        let obj = v.as_object().expect("a JSON object");
        for (k, val) in obj {
            assert!(
                allowed.contains(&k.as_str()),
                "unexpected field {k} in {}",
                r.request_line
            );
            assert!(val.is_string(), "{k} is not a short string");
        }
    }
    for expected in [
        "POST /v1/auth/email",
        "POST /v1/auth/verify",
        "POST /v1/devices ",
        "POST /v1/license",
        "DELETE /v1/devices/dev-a",
    ] {
        assert!(
            lines.iter().any(|l| l.starts_with(expected)),
            "{expected} missing: {lines:?}"
        );
    }
}

#[tokio::test]
async fn https_works_with_a_trusted_private_ca_and_an_untrusted_certificate_is_a_tls_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
        .expect("self-signed certificate");
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, ck.cert.pem()).expect("write cert");
    std::fs::write(&key, ck.signing_key.serialize_pem()).expect("write key");
    let server = krisp_server::start(krisp_server::Config {
        listen: "127.0.0.1:0".parse().expect("literal"),
        database_url: format!("sqlite://{}", dir.path().join("k.db").display()),
        tls: Some(krisp_server::TlsFiles { cert, key }),
        signing_key: krisp_server::KeySource::Ephemeral,
        dev_outbox: true,
        clock: krisp_server::Clock::manual(T0),
        ..krisp_server::Config::default()
    })
    .await
    .expect("TLS server starts");
    let url = format!("https://localhost:{}", server.local_addr().port());

    // Not trusted: a typed TLS error, not "unreachable".
    let c = client(
        &url,
        "dev-a",
        KeySet::new(),
        &Clock::manual(T0),
        keyring(&mock_store()),
    );
    match c.request_code(EMAIL).await {
        Err(e @ Error::Tls { .. }) => assert!(e.is_offline()),
        other => panic!("expected a TLS error, got {other:?}"),
    }

    // Trusted through the configured extra root (an IT department's private CA).
    let mut cfg = krisp_license::ClientConfig::new(&url, "dev-a", KeySet::new());
    cfg.clock = Clock::manual(T0);
    cfg.extra_root_certs_pem = vec![ck.cert.pem().into_bytes()];
    let c = krisp_license::LicenseClient::new(cfg, keyring(&mock_store())).expect("client");
    c.request_code(EMAIL)
        .await
        .expect("request code over HTTPS");
    assert!(
        server
            .outbox()
            .and_then(|o| o.last_code_for(EMAIL))
            .is_some()
    );
}

#[tokio::test]
async fn logout_while_offline_keeps_the_secrets_and_says_so() {
    let mut b = Backend::start().await;
    let store = mock_store();
    let c = client(
        &b.url(),
        "dev-a",
        b.keyset().await,
        &Clock::manual(T0),
        keyring(&store),
    );
    sign_in(&b, &c, EMAIL).await;
    c.activate("laptop", "linux").await.expect("activate");
    c.refresh_license().await.expect("license");
    b.stop().await;
    // The cached access token is still valid, so the DELETE itself fails to connect.
    assert!(matches!(c.logout().await, Err(Error::Unreachable { .. })));
    assert!(keyring(&store).get("refresh_token").expect("get").is_some());
    // Forgetting locally is still possible on purpose.
    c.forget_secrets().expect("forget");
    assert_eq!(c.state().expect("state"), LicenseState::Unlicensed);
}

#[tokio::test]
async fn concurrent_renewals_share_one_session_rotation() {
    let b = Backend::start().await;
    let clock = Clock::manual(T0);
    let c = client(
        &b.url(),
        "dev-a",
        b.keyset().await,
        &clock,
        keyring(&mock_store()),
    );
    sign_in(&b, &c, EMAIL).await;
    c.activate("laptop", "linux").await.expect("activate");
    // The access token has expired: both callers need the session rotated.
    b.set_time(T0 + 3600);
    clock.set(T0 + 3600);
    let (x, y) = tokio::join!(c.check(), c.refresh_license());
    assert!(matches!(x.expect("check"), LicenseState::Active { .. }));
    y.expect("second renewal");
    assert!(matches!(
        c.check().await.expect("check"),
        LicenseState::Active { .. }
    ));
}

#[tokio::test]
async fn keyring_failure_while_signing_in_is_reported_as_a_keyring_error() {
    let b = Backend::start().await;
    let store = mock_store();
    let c = client(
        &b.url(),
        "dev-a",
        b.keyset().await,
        &Clock::manual(T0),
        keyring(&store),
    );
    c.request_code(EMAIL).await.expect("request code");
    // The keyring refuses the next write of the refresh token (e.g. it is locked).
    let entry = store
        .build(krisp_license::SERVICE, "refresh_token", None)
        .expect("mock entry");
    let cred: &keyring_core::mock::Cred = entry.as_any().downcast_ref().expect("mock credential");
    cred.set_error(keyring_core::Error::NoStorageAccess(
        "keyring locked".to_string().into(),
    ));
    match c.sign_in(EMAIL, &b.code_for(EMAIL)).await {
        Err(e @ Error::Keyring(_)) => assert!(e.to_string().contains("keyring locked"), "{e}"),
        other => panic!("expected a keyring error, got {other:?}"),
    }
}

#[tokio::test]
async fn background_checks_are_scheduled_half_way_to_expiry_and_back_off_when_offline() {
    let mut b = Backend::start().await;
    let clock = Clock::manual(T0);
    let policy = krisp_license::RefreshPolicy::default();
    let c = client(
        &b.url(),
        "dev-a",
        b.keyset().await,
        &clock,
        keyring(&mock_store()),
    );
    assert_eq!(
        c.next_check_in(&policy, 0).expect("schedule"),
        None,
        "nothing to renew"
    );
    sign_in(&b, &c, EMAIL).await;
    c.activate("laptop", "linux").await.expect("activate");
    c.check().await.expect("check");
    let next = c
        .next_check_in(&policy, 0)
        .expect("schedule")
        .expect("some");
    assert_eq!(next.as_secs(), (DAY / 2) as u64);
    b.stop().await;
    clock.advance(DAY / 2);
    c.check().await.expect("offline check");
    for failures in 1..=3u32 {
        let d = c
            .next_check_in(&policy, failures)
            .expect("schedule")
            .expect("some")
            .as_secs();
        let nominal = 30u64 << (failures - 1);
        assert!(d >= nominal / 2 && d < nominal, "failure {failures}: {d}s");
    }
}
