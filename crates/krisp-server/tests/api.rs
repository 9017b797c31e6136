//! End-to-end tests over real HTTP on loopback, each run against SQLite and PostgreSQL.

#[macro_use]
mod common;

use common::{Ctx, Kind, T0};
use krisp_server::krisp_token::{self, Claims, Signer, Status, VerifyError};
use serde_json::{Value, json};

on_both_backends!(
    full_flow_from_code_to_license_to_deletion,
    wrong_code_six_times_is_refused_even_when_right,
    expired_code_is_refused,
    replayed_code_is_refused,
    tampered_and_forged_tokens_are_refused,
    seat_limit_answers_409_with_what_to_do,
    oversize_and_malformed_bodies_get_clear_4xx_json,
    sql_like_strings_in_every_field_are_inert,
    another_accounts_device_is_out_of_reach,
    code_requests_are_rate_limited_and_abusers_banned,
    code_attempts_are_shared_across_instances,
    organisation_admin_flow_and_silent_enrolment,
    trial_end_stops_new_licenses,
    refresh_rotates_tokens_and_access_tokens_expire,
    account_delete_needs_confirmation_and_spares_others,
    concurrent_activations_never_exceed_seats,
    paid_plan_set_by_operator_grants_seats_and_features,
    wrong_codes_per_address_are_capped_across_new_codes,
);

macro_rules! ctx {
    ($kind:expr) => {
        match Ctx::new($kind).await {
            Some(c) => c,
            None => return,
        }
    };
}

async fn full_flow_from_code_to_license_to_deletion(kind: Kind) {
    let ctx = ctx!(kind);
    let email = "Alice@Example.com";
    let s = ctx.sign_in(email).await;
    let other = ctx.sign_in("bystander@example.com").await;
    assert_eq!(ctx.activate(&other, "bystander-dev").await.status, 201);

    let acc = ctx.get("/v1/account", Some(&s.access)).await;
    assert_eq!(acc.status, 200);
    assert_eq!(acc.body["email"], "alice@example.com");
    assert_eq!(acc.body["plan"]["kind"], "trial");

    let dev = ctx.activate(&s, "alice-laptop-7f3a").await;
    assert_eq!(dev.status, 201, "{:?}", dev.body);
    assert_eq!(
        dev.headers["strict-transport-security"],
        "max-age=63072000; includeSubDomains"
    );

    let lic = ctx.license(&s.access, "alice-laptop-7f3a").await;
    assert_eq!(lic.status, 200, "{:?}", lic.body);
    let token = lic.body["token"].as_str().expect("token");
    let keys = ctx.keyset().await;
    let verified = krisp_token::verify(token, &keys, "alice-laptop-7f3a", ctx.clock.now())
        .expect("license verifies with the published key");
    assert_eq!(verified.status, Status::Active);
    assert_eq!(verified.claims.sub, s.account_id);
    assert_eq!(verified.claims.plan, "trial");
    assert_eq!(verified.claims.iat, T0);
    assert!(verified.claims.exp > T0 && verified.claims.grace >= verified.claims.exp);

    let export = ctx.get("/v1/account/export", Some(&s.access)).await;
    assert_eq!(export.status, 200);
    let text = export.body.to_string();
    assert!(text.contains("alice-laptop-7f3a"));
    assert!(text.contains("device.activated"));
    assert!(text.contains("auth.sign_in"));
    assert!(
        !text.contains(&s.access) && !text.contains(&s.refresh),
        "no secrets in export"
    );
    assert!(!text.contains("bystander"), "nothing of other accounts");

    // Deletion: every trace goes, in every table.
    let del = ctx
        .send(
            reqwest::Method::DELETE,
            "/v1/account",
            Some(&s.access),
            Some(&json!({"confirm_email": email})),
        )
        .await;
    assert_eq!(del.status, 204, "{:?}", del.body);
    let rows = ctx.dump_all_rows().await;
    for needle in [&s.account_id, "alice@example.com", "alice-laptop-7f3a"] {
        let left: Vec<_> = rows.iter().filter(|(_, r)| r.contains(needle)).collect();
        assert!(left.is_empty(), "rows still mention {needle}: {left:?}");
    }
    assert!(
        rows.iter().any(|(_, r)| r.contains("bystander-dev")),
        "other accounts' rows are untouched"
    );
    assert_eq!(ctx.get("/v1/account", Some(&s.access)).await.status, 401);
    assert_eq!(
        ctx.license(&s.access, "alice-laptop-7f3a").await.status,
        401
    );
}

async fn wrong_code_six_times_is_refused_even_when_right(kind: Kind) {
    let ctx = ctx!(kind);
    let email = "bob@example.com";
    let code = ctx.request_code(email).await;
    let wrong = if code == "000000" { "111111" } else { "000000" };
    for i in 0..5 {
        let r = ctx
            .post(
                "/v1/auth/verify",
                None,
                json!({"email": email, "code": wrong}),
            )
            .await;
        assert_eq!(r.status, 401, "try {i}: {:?}", r.body);
        assert_eq!(r.code(), "invalid_code");
    }
    let r = ctx
        .post(
            "/v1/auth/verify",
            None,
            json!({"email": email, "code": code}),
        )
        .await;
    assert_eq!(
        r.status, 401,
        "the sixth try is refused even with the right code"
    );
    // A new code works.
    let code = ctx.request_code(email).await;
    let r = ctx
        .post(
            "/v1/auth/verify",
            None,
            json!({"email": email, "code": code}),
        )
        .await;
    assert_eq!(r.status, 200);
}

async fn expired_code_is_refused(kind: Kind) {
    let ctx = ctx!(kind);
    let email = "carol@example.com";
    let code = ctx.request_code(email).await;
    ctx.clock.advance(601);
    let r = ctx
        .post(
            "/v1/auth/verify",
            None,
            json!({"email": email, "code": code}),
        )
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(r.code(), "invalid_code");
    // Just inside the 10 minutes is fine.
    let code = ctx.request_code(email).await;
    ctx.clock.advance(599);
    let r = ctx
        .post(
            "/v1/auth/verify",
            None,
            json!({"email": email, "code": code}),
        )
        .await;
    assert_eq!(r.status, 200);
}

async fn replayed_code_is_refused(kind: Kind) {
    let ctx = ctx!(kind);
    let email = "dave@example.com";
    let code = ctx.request_code(email).await;
    let body = json!({"email": email, "code": code});
    assert_eq!(
        ctx.post("/v1/auth/verify", None, body.clone()).await.status,
        200
    );
    let r = ctx.post("/v1/auth/verify", None, body).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.code(), "invalid_code");
}

async fn tampered_and_forged_tokens_are_refused(kind: Kind) {
    let ctx = ctx!(kind);
    let s = ctx.sign_in("erin@example.com").await;
    assert_eq!(ctx.activate(&s, "erin-pc").await.status, 201);
    let lic = ctx.license(&s.access, "erin-pc").await;
    let token = lic.body["token"].as_str().expect("token").to_owned();
    let keys = ctx.keyset().await;
    let now = ctx.clock.now();

    // Tampered: extend the expiry inside the payload.
    let parts: Vec<&str> = token.split('.').collect();
    let mut claims: Claims = {
        use base64::Engine as _;
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(parts[2])
            .expect("payload");
        serde_json::from_slice(&raw).expect("claims")
    };
    claims.exp += 365 * 86_400;
    claims.grace += 365 * 86_400;
    let payload = {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(&claims).expect("json"))
    };
    let tampered = format!("{}.{}.{}.{}", parts[0], parts[1], payload, parts[3]);
    assert_eq!(
        krisp_token::verify(&tampered, &keys, "erin-pc", now),
        Err(VerifyError::BadSignature)
    );
    // Forged with another key under the server's key id.
    let forger = Signer::from_secret(parts[1], [9u8; 32]).expect("kid");
    assert_eq!(
        krisp_token::verify(&forger.sign(&claims), &keys, "erin-pc", now),
        Err(VerifyError::BadSignature)
    );
    // Forged with a key id nobody published.
    let stranger = Signer::from_secret("evil", [9u8; 32]).expect("kid");
    assert_eq!(
        krisp_token::verify(&stranger.sign(&claims), &keys, "erin-pc", now),
        Err(VerifyError::UnknownKey("evil".into()))
    );
    // Copied to another machine.
    assert!(matches!(
        krisp_token::verify(&token, &keys, "mallory-pc", now),
        Err(VerifyError::WrongDevice { .. })
    ));
    // Past the grace period.
    let grace = lic.body["grace_until"].as_i64().expect("grace");
    assert_eq!(
        krisp_token::verify(&token, &keys, "erin-pc", grace),
        Err(VerifyError::Expired { grace_until: grace })
    );
    // The server refuses tampered bearer tokens too.
    let mut bad = s.access.clone();
    bad.push('x');
    assert_eq!(ctx.license(&bad, "erin-pc").await.status, 401);
}

async fn seat_limit_answers_409_with_what_to_do(kind: Kind) {
    let ctx = ctx!(kind);
    let s = ctx.sign_in("frank@example.com").await;
    assert_eq!(ctx.activate(&s, "one").await.status, 201);
    assert_eq!(ctx.activate(&s, "two").await.status, 201);
    // Re-activating a known device does not take another seat.
    assert_eq!(ctx.activate(&s, "one").await.status, 200);
    let r = ctx.activate(&s, "three").await;
    assert_eq!(r.status, 409, "{:?}", r.body);
    assert_eq!(r.code(), "seats_exhausted");
    assert_eq!(r.body["error"]["seats"], 2);
    assert_eq!(r.body["error"]["devices"].as_array().map(Vec::len), Some(2));
    let msg = r.body["error"]["message"].as_str().expect("message");
    assert!(msg.contains("krisp logout"), "says what to do: {msg}");
    // `krisp logout` on one frees the seat.
    assert_eq!(
        ctx.delete("/v1/devices/one", Some(&s.access)).await.status,
        204
    );
    assert_eq!(ctx.license(&s.access, "one").await.status, 404);
    assert_eq!(ctx.activate(&s, "three").await.status, 201);
    let list = ctx.get("/v1/devices", Some(&s.access)).await;
    assert_eq!(list.body["devices"].as_array().map(Vec::len), Some(2));
}

async fn oversize_and_malformed_bodies_get_clear_4xx_json(kind: Kind) {
    let ctx = ctx!(kind);
    let url = format!("{}/v1/auth/email", ctx.base);
    let send = |body: String, ct: &'static str| {
        let c = ctx.client.clone();
        let url = url.clone();
        async move {
            let r = c
                .post(url)
                .header("content-type", ct)
                .body(body)
                .send()
                .await
                .expect("send");
            let status = r.status().as_u16();
            let hsts = r.headers().contains_key("strict-transport-security");
            let v: Value = r.json().await.unwrap_or(Value::Null);
            (status, v, hsts)
        }
    };
    let big = format!("{{\"email\":\"{}@example.com\"}}", "a".repeat(20_000));
    let cases = [
        (big, "application/json", 413, "body_too_large"),
        (
            "{\"email\":".into(),
            "application/json",
            400,
            "malformed_json",
        ),
        ("not json".into(), "application/json", 400, "malformed_json"),
        (
            "{\"email\":\"a@example.com\",\"admin\":true}".into(),
            "application/json",
            400,
            "invalid_body",
        ),
        ("{}".into(), "application/json", 400, "invalid_body"),
        (
            "{\"email\":42}".into(),
            "application/json",
            400,
            "invalid_body",
        ),
        (
            "{\"email\":\"a@example.com\"}".into(),
            "text/plain",
            415,
            "unsupported_media_type",
        ),
        (
            "{\"email\":\"not-an-address\"}".into(),
            "application/json",
            400,
            "invalid_email",
        ),
    ];
    for (body, ct, status, code) in cases {
        let (got, v, hsts) = send(
            body.chars().take(60).collect::<String>() + &body.chars().skip(60).collect::<String>(),
            ct,
        )
        .await;
        assert_eq!(got, status, "{v:?}");
        assert_eq!(v["error"]["code"], code, "{v:?}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
        assert!(hsts, "HSTS on error answers too");
    }
    let r = ctx.get("/no/such/thing", None).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.code(), "not_found");
}

async fn sql_like_strings_in_every_field_are_inert(kind: Kind) {
    let Some(ctx) = Ctx::with(kind, |c| c.policy.trial_seats = 100).await else {
        return;
    };
    let nasty = [
        "'; DROP TABLE accounts; --",
        "\" OR \"1\"=\"1",
        "1' OR '1'='1",
        "x'); DELETE FROM devices; --",
        "$1 $2 ?1 :name @p",
        "%_\\'",
    ];
    // E-mail addresses may legally contain quotes; the rest are refused by syntax.
    let s = ctx.sign_in("o'brien+1=1@example.com").await;
    for n in nasty {
        let r = ctx.post("/v1/auth/email", None, json!({"email": n})).await;
        assert_eq!(r.status, 400, "{n}: {:?}", r.body);
        let r = ctx
            .post(
                "/v1/auth/verify",
                None,
                json!({"email": "o'brien+1=1@example.com", "code": n}),
            )
            .await;
        assert_eq!(r.status, 400, "{n}");
        let r = ctx.activate(&s, n).await;
        assert_eq!(
            r.status, 201,
            "device ids are opaque text: {n}: {:?}",
            r.body
        );
        let r = ctx
            .post(
                "/v1/devices",
                Some(&s.access),
                json!({"device_id": format!("named-{n}"), "name": n, "os": n}),
            )
            .await;
        assert_eq!(r.status, 201, "{n}: {:?}", r.body);
        assert_eq!(ctx.license(&s.access, n).await.status, 200, "{n}");
        let r = ctx
            .post("/v1/auth/refresh", None, json!({"refresh_token": n}))
            .await;
        assert_eq!(r.status, 401, "{n}");
        let r = ctx.license(n, "x").await;
        assert_eq!(r.status, 401, "{n}");
        let r = ctx
            .post(
                "/v1/devices/enrol",
                None,
                json!({"enrolment_token": n, "device_id": n, "name": n, "os": n}),
            )
            .await;
        assert_eq!(r.status, 401, "{n}");
    }
    for n in nasty {
        let path = format!("/v1/orgs/{}", urlencode(n));
        assert_eq!(ctx.get(&path, Some(&s.access)).await.status, 404, "{n}");
        let r = ctx
            .post("/v1/orgs", Some(&s.access), json!({"name": n, "seats": 3}))
            .await;
        assert_eq!(r.status, 201, "{n}");
        let org = r.body["id"].as_str().expect("org id").to_owned();
        let r = ctx
            .post(
                &format!("/v1/orgs/{org}/members"),
                Some(&s.access),
                json!({"email": n}),
            )
            .await;
        assert_eq!(r.status, 400, "{n}");
    }
    // Every value came back literally and nothing was dropped.
    let list = ctx.get("/v1/devices", Some(&s.access)).await;
    let ids: Vec<&str> = list.body["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .filter_map(|d| d["device_id"].as_str())
        .collect();
    for n in nasty {
        assert!(ids.contains(&n), "{n} stored verbatim");
    }
    let acc = ctx.get("/v1/account", Some(&s.access)).await;
    assert_eq!(acc.body["email"], "o'brien+1=1@example.com");
    assert_eq!(
        acc.body["organisations"].as_array().map(Vec::len),
        Some(nasty.len())
    );
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

async fn another_accounts_device_is_out_of_reach(kind: Kind) {
    let ctx = ctx!(kind);
    let a = ctx.sign_in("ann@example.com").await;
    let b = ctx.sign_in("ben@example.com").await;
    let dev = ctx.activate(&a, "ann-desktop").await;
    assert_eq!(dev.status, 201);
    let server_id = dev.body["id"].as_str().expect("id").to_owned();
    // B cannot get a license for, list, or remove A's device.
    let r = ctx.license(&b.access, "ann-desktop").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.code(), "device_not_activated");
    assert_eq!(
        ctx.delete("/v1/devices/ann-desktop", Some(&b.access))
            .await
            .status,
        404
    );
    let list = ctx.get("/v1/devices", Some(&b.access)).await;
    assert_eq!(list.body["devices"], json!([]));
    // Nor reach A's organisation.
    let org = ctx
        .post(
            "/v1/orgs",
            Some(&a.access),
            json!({"name": "Ann Inc", "seats": 5}),
        )
        .await;
    let org_id = org.body["id"].as_str().expect("org").to_owned();
    for path in [
        format!("/v1/orgs/{org_id}"),
        format!("/v1/orgs/{org_id}/devices"),
    ] {
        assert_eq!(ctx.get(&path, Some(&b.access)).await.status, 404, "{path}");
    }
    let r = ctx
        .delete(
            &format!("/v1/orgs/{org_id}/devices/{server_id}"),
            Some(&b.access),
        )
        .await;
    assert_eq!(r.status, 404);
    let r = ctx
        .put(
            &format!("/v1/orgs/{org_id}/seats"),
            Some(&b.access),
            json!({"seats": 1}),
        )
        .await;
    assert_eq!(r.status, 404);
    let r = ctx
        .post(
            &format!("/v1/orgs/{org_id}/enrolment-token"),
            Some(&b.access),
            json!({}),
        )
        .await;
    assert_eq!(r.status, 404);
    // A still has it. Activating the same device id under B is B's own, separate device.
    assert_eq!(ctx.license(&a.access, "ann-desktop").await.status, 200);
    assert_eq!(ctx.activate(&b, "ann-desktop").await.status, 201);
    assert_eq!(
        ctx.get("/v1/devices", Some(&a.access)).await.body["devices"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
}

async fn code_requests_are_rate_limited_and_abusers_banned(kind: Kind) {
    let Some(ctx) = Ctx::with(kind, |c| {
        c.limits.codes_per_email = 3;
        c.limits.auth_per_ip = 6;
        c.limits.ban_after = 10;
        c.limits.ban_secs = 3600;
    })
    .await
    else {
        return;
    };
    // Per address.
    for _ in 0..3 {
        assert_eq!(
            ctx.post("/v1/auth/email", None, json!({"email": "gail@example.com"}))
                .await
                .status,
            202
        );
    }
    let r = ctx
        .post("/v1/auth/email", None, json!({"email": "gail@example.com"}))
        .await;
    assert_eq!(r.status, 429);
    assert_eq!(r.code(), "rate_limited");
    assert!(r.headers.contains_key("retry-after"));
    let code = ctx.code_for("gail@example.com");
    // Per IP: 4 hits used so far; 2 more are allowed, then limited, then banned.
    for i in 0..2 {
        let r = ctx
            .post(
                "/v1/auth/email",
                None,
                json!({"email": format!("u{i}@example.com")}),
            )
            .await;
        assert_eq!(r.status, 202, "{i}: {:?}", r.body);
    }
    let r = ctx
        .post("/v1/auth/email", None, json!({"email": "u9@example.com"}))
        .await;
    assert_eq!((r.status, r.code()), (429, "rate_limited"));
    let mut last = r;
    for i in 0..5 {
        last = ctx
            .post(
                "/v1/auth/email",
                None,
                json!({"email": format!("v{i}@example.com")}),
            )
            .await;
    }
    assert_eq!(
        (last.status, last.code()),
        (429, "banned"),
        "{:?}",
        last.body
    );
    let rows = ctx.dump_all_rows().await;
    assert!(
        rows.iter().any(|(t, r)| t == "audit_log"
            && r.contains("abuse.banned")
            && r.contains("127.0.0.1")),
        "the ban is in the audit log"
    );
    // Banned means banned: even the right code is refused, for the ban's length.
    let r = ctx
        .post(
            "/v1/auth/verify",
            None,
            json!({"email": "gail@example.com", "code": code}),
        )
        .await;
    assert_eq!((r.status, r.code()), (429, "banned"));
    let retry: i64 = r.headers["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("number");
    assert!(retry > 3000, "ban lasts about an hour, got {retry}");
    ctx.clock.advance(3601);
    let code = ctx.request_code("gail@example.com").await;
    let r = ctx
        .post(
            "/v1/auth/verify",
            None,
            json!({"email": "gail@example.com", "code": code}),
        )
        .await;
    assert_eq!(r.status, 200, "ban expired: {:?}", r.body);
    // Banned and limited requests are counted in the metrics.
    let m = ctx
        .client
        .get(format!("{}/metrics", ctx.base))
        .send()
        .await
        .expect("metrics");
    let text = m.text().await.expect("text");
    assert!(text.contains("krisp_rate_limited_total"), "{text}");
    assert!(!text.contains("krisp_rate_limited_total 0\n"), "{text}");
}

async fn code_attempts_are_shared_across_instances(kind: Kind) {
    let ctx = ctx!(kind);
    let second = ctx.another_instance().await;
    let bases = [ctx.base.clone(), second.url()];
    let email = "hank@example.com";
    let code = ctx.request_code(email).await;
    let wrong = if code == "999999" { "888888" } else { "999999" };
    for i in 0..5 {
        let r = ctx
            .send_to(
                &bases[i % 2],
                reqwest::Method::POST,
                "/v1/auth/verify",
                None,
                Some(&json!({"email": email, "code": wrong})),
            )
            .await;
        assert_eq!(r.status, 401);
    }
    let r = ctx
        .send_to(
            &bases[1],
            reqwest::Method::POST,
            "/v1/auth/verify",
            None,
            Some(&json!({"email": email, "code": code})),
        )
        .await;
    assert_eq!(r.status, 401, "the 5-try cap holds across instances");
    // A session made on one instance works on the other.
    let s = ctx.sign_in(email).await;
    let r = ctx
        .send_to(
            &bases[1],
            reqwest::Method::GET,
            "/v1/account",
            Some(&s.access),
            None,
        )
        .await;
    assert_eq!(r.status, 200);
    second.shutdown().await;
}

async fn organisation_admin_flow_and_silent_enrolment(kind: Kind) {
    let ctx = ctx!(kind);
    let admin = ctx.sign_in("it@corp.example").await;
    let org = ctx
        .post(
            "/v1/orgs",
            Some(&admin.access),
            json!({"name": "Corp", "seats": 2}),
        )
        .await;
    assert_eq!(org.status, 201, "{:?}", org.body);
    let org_id = org.body["id"].as_str().expect("id").to_owned();
    let r = ctx
        .post(
            &format!("/v1/orgs/{org_id}/members"),
            Some(&admin.access),
            json!({"email": "Worker@Corp.example"}),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let r = ctx
        .post(
            &format!("/v1/orgs/{org_id}/members"),
            Some(&admin.access),
            json!({"email": "worker@corp.example"}),
        )
        .await;
    assert_eq!(r.status, 409);

    // The invitee signs in and activates against the organisation's seats.
    let worker = ctx.sign_in("worker@corp.example").await;
    let acc = ctx.get("/v1/account", Some(&worker.access)).await;
    assert_eq!(acc.body["organisations"][0]["id"], org_id.as_str());
    let d = ctx.activate(&worker, "worker-pc").await;
    assert_eq!(d.status, 201);
    assert_eq!(d.body["org_id"], org_id.as_str());
    let lic = ctx.license(&worker.access, "worker-pc").await;
    let keys = ctx.keyset().await;
    let v = krisp_token::verify(
        lic.body["token"].as_str().expect("t"),
        &keys,
        "worker-pc",
        ctx.clock.now(),
    )
    .expect("valid");
    assert_eq!(v.claims.plan, "org");
    assert_eq!(v.claims.org.as_deref(), Some(org_id.as_str()));

    // Silent install: only the enrolment token and the URL.
    let et = ctx
        .post(
            &format!("/v1/orgs/{org_id}/enrolment-token"),
            Some(&admin.access),
            json!({}),
        )
        .await;
    assert_eq!(et.status, 201);
    let enrol_token = et.body["enrolment_token"]
        .as_str()
        .expect("token")
        .to_owned();
    let e = ctx
        .post("/v1/devices/enrol", None, json!({"enrolment_token": enrol_token, "device_id": "kiosk-1", "name": "Kiosk", "os": "windows"}))
        .await;
    assert_eq!(e.status, 201, "{:?}", e.body);
    let device_token = e.body["device_token"]
        .as_str()
        .expect("device token")
        .to_owned();
    let lic = ctx.license(&device_token, "kiosk-1").await;
    assert_eq!(lic.status, 200, "{:?}", lic.body);
    let v = krisp_token::verify(
        lic.body["token"].as_str().expect("t"),
        &keys,
        "kiosk-1",
        ctx.clock.now(),
    )
    .expect("valid");
    assert_eq!(v.claims.sub, org_id);
    // The device token is bound to its device.
    assert_eq!(ctx.license(&device_token, "worker-pc").await.status, 404);

    // Seats: 2 used of 2.
    let r = ctx
        .post("/v1/devices/enrol", None, json!({"enrolment_token": enrol_token, "device_id": "kiosk-2", "name": "Kiosk", "os": "windows"}))
        .await;
    assert_eq!((r.status, r.code()), (409, "seats_exhausted"));
    assert!(
        r.body["error"]["message"]
            .as_str()
            .expect("m")
            .contains("admin")
    );
    let r = ctx
        .put(
            &format!("/v1/orgs/{org_id}/seats"),
            Some(&admin.access),
            json!({"seats": 1}),
        )
        .await;
    assert_eq!((r.status, r.code()), (409, "seats_in_use"));
    let r = ctx
        .put(
            &format!("/v1/orgs/{org_id}/seats"),
            Some(&admin.access),
            json!({"seats": 3}),
        )
        .await;
    assert_eq!(r.status, 200);
    let r = ctx
        .post("/v1/devices/enrol", None, json!({"enrolment_token": enrol_token, "device_id": "kiosk-2", "name": "Kiosk", "os": "windows"}))
        .await;
    assert_eq!(r.status, 201);

    // The admin sees and revokes devices.
    let list = ctx
        .get(&format!("/v1/orgs/{org_id}/devices"), Some(&admin.access))
        .await;
    let devices = list.body["devices"].as_array().expect("devices").clone();
    assert_eq!(devices.len(), 3);
    let kiosk = devices
        .iter()
        .find(|d| d["device_id"] == "kiosk-1")
        .expect("kiosk-1");
    let r = ctx
        .delete(
            &format!(
                "/v1/orgs/{org_id}/devices/{}",
                kiosk["id"].as_str().expect("id")
            ),
            Some(&admin.access),
        )
        .await;
    assert_eq!(r.status, 204);
    assert_eq!(
        ctx.license(&device_token, "kiosk-1").await.status,
        401,
        "revoked device credential is dead"
    );

    // Rotating the enrolment token kills the old one.
    let et2 = ctx
        .post(
            &format!("/v1/orgs/{org_id}/enrolment-token"),
            Some(&admin.access),
            json!({}),
        )
        .await;
    assert_ne!(et2.body["enrolment_token"], enrol_token.as_str());
    let r = ctx
        .post("/v1/devices/enrol", None, json!({"enrolment_token": enrol_token, "device_id": "kiosk-3", "name": "K", "os": "linux"}))
        .await;
    assert_eq!((r.status, r.code()), (401, "invalid_enrolment_token"));

    // Removing the member frees their seats and ends their licenses.
    let r = ctx
        .delete(
            &format!("/v1/orgs/{org_id}/members/worker@corp.example"),
            Some(&admin.access),
        )
        .await;
    assert_eq!(r.status, 204);
    assert_eq!(ctx.license(&worker.access, "worker-pc").await.status, 404);
    let r = ctx
        .delete(
            &format!("/v1/orgs/{org_id}/members/it@corp.example"),
            Some(&admin.access),
        )
        .await;
    assert_eq!(r.status, 409, "the admin cannot remove themselves");
    let info = ctx
        .get(&format!("/v1/orgs/{org_id}"), Some(&admin.access))
        .await;
    assert_eq!(info.body["seats_used"], 1);
    assert_eq!(info.body["members"].as_array().map(Vec::len), Some(1));

    // Admin actions are in the audit log (seen through the admin's export), without secrets.
    let export = ctx.get("/v1/account/export", Some(&admin.access)).await;
    let text = export.body.to_string();
    for ev in [
        "org.created",
        "org.member_invited",
        "org.seats_changed",
        "org.device_revoked",
        "org.enrolment_token_created",
        "org.member_removed",
    ] {
        assert!(text.contains(ev), "{ev} audited");
    }
    assert!(!text.contains(&enrol_token));
    let rows = ctx.dump_all_rows().await;
    for secret in [&enrol_token, &device_token, &admin.access, &admin.refresh] {
        assert!(
            !rows.iter().any(|(_, r)| r.contains(secret.as_str())),
            "secrets never stored in clear"
        );
    }
}

async fn trial_end_stops_new_licenses(kind: Kind) {
    let ctx = ctx!(kind);
    let s = ctx.sign_in("ivy@example.com").await;
    assert_eq!(ctx.activate(&s, "ivy-pc").await.status, 201);
    ctx.clock.advance(13 * 86_400 + 12 * 3600);
    let s = ctx.sign_in("ivy@example.com").await;
    let lic = ctx.license(&s.access, "ivy-pc").await;
    assert_eq!(lic.status, 200);
    let trial_end = T0 + 14 * 86_400;
    assert_eq!(
        lic.body["expires_at"], trial_end,
        "license never outlives the trial"
    );
    assert_eq!(lic.body["grace_until"], trial_end);
    ctx.clock.advance(86_400);
    let s = ctx.sign_in("ivy@example.com").await;
    let r = ctx.license(&s.access, "ivy-pc").await;
    assert_eq!((r.status, r.code()), (402, "plan_expired"));
    let r = ctx.activate(&s, "ivy-laptop").await;
    assert_eq!(r.status, 402);
}

async fn refresh_rotates_tokens_and_access_tokens_expire(kind: Kind) {
    let ctx = ctx!(kind);
    let s = ctx.sign_in("jo@example.com").await;
    ctx.clock.advance(901);
    assert_eq!(
        ctx.get("/v1/account", Some(&s.access)).await.status,
        401,
        "access token expired"
    );
    let r = ctx
        .post(
            "/v1/auth/refresh",
            None,
            json!({"refresh_token": s.refresh}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let access = r.body["access_token"].as_str().expect("a").to_owned();
    let refresh = r.body["refresh_token"].as_str().expect("r").to_owned();
    assert_eq!(ctx.get("/v1/account", Some(&access)).await.status, 200);
    let r = ctx
        .post(
            "/v1/auth/refresh",
            None,
            json!({"refresh_token": s.refresh}),
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (401, "invalid_refresh_token"),
        "old refresh token is dead"
    );
    // Replaying a rotated-out refresh token is a theft signal: the whole session ends, also
    // for whoever holds the newer tokens.
    assert_eq!(
        ctx.get("/v1/account", Some(&access)).await.status,
        401,
        "session revoked on reuse"
    );
    let r = ctx
        .post("/v1/auth/refresh", None, json!({"refresh_token": refresh}))
        .await;
    assert_eq!(r.status, 401);
    // Sign-out ends a session.
    let s = ctx.sign_in("jo@example.com").await;
    let r = ctx
        .post(
            "/v1/auth/refresh",
            None,
            json!({"refresh_token": s.refresh}),
        )
        .await;
    let access = r.body["access_token"].as_str().expect("a").to_owned();
    let refresh = r.body["refresh_token"].as_str().expect("r").to_owned();
    assert_eq!(
        ctx.post("/v1/auth/logout", Some(&access), json!({}))
            .await
            .status,
        204
    );
    assert_eq!(ctx.get("/v1/account", Some(&access)).await.status, 401);
    let r = ctx
        .post("/v1/auth/refresh", None, json!({"refresh_token": refresh}))
        .await;
    assert_eq!(r.status, 401);
}

async fn account_delete_needs_confirmation_and_spares_others(kind: Kind) {
    let ctx = ctx!(kind);
    let admin = ctx.sign_in("kim@example.com").await;
    let r = ctx
        .send(
            reqwest::Method::DELETE,
            "/v1/account",
            Some(&admin.access),
            Some(&json!({"confirm_email": "someone@else.example"})),
        )
        .await;
    assert_eq!((r.status, r.code()), (400, "confirmation_mismatch"));
    let org = ctx
        .post(
            "/v1/orgs",
            Some(&admin.access),
            json!({"name": "Kim Co", "seats": 3}),
        )
        .await;
    let org_id = org.body["id"].as_str().expect("org").to_owned();
    ctx.post(
        &format!("/v1/orgs/{org_id}/members"),
        Some(&admin.access),
        json!({"email": "lee@example.com"}),
    )
    .await;
    let body = json!({"confirm_email": "kim@example.com"});
    let r = ctx
        .send(
            reqwest::Method::DELETE,
            "/v1/account",
            Some(&admin.access),
            Some(&body),
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (409, "org_admin"),
        "an admin with members must hand over first"
    );
    // The invited member deletes their own account: the invitation and its audit trail go.
    let lee = ctx.sign_in("lee@example.com").await;
    let r = ctx
        .send(
            reqwest::Method::DELETE,
            "/v1/account",
            Some(&lee.access),
            Some(&json!({"confirm_email": "lee@example.com"})),
        )
        .await;
    assert_eq!(r.status, 204);
    let rows = ctx.dump_all_rows().await;
    assert!(
        !rows
            .iter()
            .any(|(_, r)| r.contains("lee@example.com") || r.contains(&lee.account_id)),
        "{rows:?}"
    );
    // Now the admin's org is empty: deleting the admin deletes the org too.
    let r = ctx
        .send(
            reqwest::Method::DELETE,
            "/v1/account",
            Some(&admin.access),
            Some(&body),
        )
        .await;
    assert_eq!(r.status, 204, "{:?}", r.body);
    let rows = ctx.dump_all_rows().await;
    assert!(
        !rows
            .iter()
            .any(|(_, r)| r.contains(&org_id) || r.contains("kim@example.com")),
        "{rows:?}"
    );
    // The deletions are on record, anonymously.
    let deletions = rows
        .iter()
        .filter(|(t, r)| t == "audit_log" && r.contains("account.deleted"))
        .count();
    assert_eq!(deletions, 2);
}

async fn concurrent_activations_never_exceed_seats(kind: Kind) {
    let ctx = ctx!(kind);
    let s = ctx.sign_in("race@example.com").await;
    let tries = (0..12).map(|i| {
        let ctx = &ctx;
        let s = &s;
        async move { ctx.activate(s, &format!("racer-{i}")).await.status }
    });
    let statuses = futures_join_all(tries).await;
    let created = statuses.iter().filter(|&&st| st == 201).count();
    let refused = statuses.iter().filter(|&&st| st == 409).count();
    assert_eq!((created, refused), (2, 10), "{statuses:?}");
}

/// Polls all futures concurrently on this task (no extra dependency for join_all).
async fn futures_join_all<F: std::future::Future<Output = u16>>(
    futs: impl Iterator<Item = F>,
) -> Vec<u16> {
    let mut set = Vec::new();
    for f in futs {
        set.push(Box::pin(f));
    }
    let mut out = vec![None; set.len()];
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in set.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

async fn paid_plan_set_by_operator_grants_seats_and_features(kind: Kind) {
    let ctx = ctx!(kind);
    // Provisioned before the first sign-in, as billing would.
    let plan = krisp_server::Plan::Paid {
        seats: 3,
        ends_at: None,
    };
    krisp_server::set_plan(&ctx.db_url, "payer@example.com", &plan, T0)
        .await
        .expect("set plan");
    let s = ctx.sign_in("payer@example.com").await;
    let acc = ctx.get("/v1/account", Some(&s.access)).await;
    assert_eq!(acc.body["plan"]["kind"], "paid");
    for d in ["p1", "p2", "p3"] {
        assert_eq!(ctx.activate(&s, d).await.status, 201, "{d}");
    }
    assert_eq!(ctx.activate(&s, "p4").await.status, 409);
    // Long after a trial would have ended.
    ctx.clock.advance(60 * 86_400);
    let s = ctx.sign_in("payer@example.com").await;
    let lic = ctx.license(&s.access, "p1").await;
    assert_eq!(lic.status, 200, "{:?}", lic.body);
    let v = krisp_token::verify(
        lic.body["token"].as_str().expect("t"),
        &ctx.keyset().await,
        "p1",
        ctx.clock.now(),
    )
    .expect("valid");
    assert_eq!(v.claims.plan, "paid");
    assert!(v.claims.features.len() > 1);
    assert_eq!(v.claims.exp, ctx.clock.now() + 86_400);
    // A paid period that ends stops licenses like a trial does.
    let ended = krisp_server::Plan::Paid {
        seats: 3,
        ends_at: Some(ctx.clock.now() + 3600),
    };
    krisp_server::set_plan(&ctx.db_url, "payer@example.com", &ended, T0)
        .await
        .expect("set plan");
    let lic = ctx.license(&s.access, "p1").await;
    assert_eq!(lic.body["expires_at"], ctx.clock.now() + 3600);
    ctx.clock.advance(3600);
    let s = ctx.sign_in("payer@example.com").await;
    let r = ctx.license(&s.access, "p1").await;
    assert_eq!((r.status, r.code()), (402, "plan_expired"));
    assert!(
        krisp_server::set_plan(&ctx.db_url, "not an address", &plan, T0)
            .await
            .is_err(),
        "bad input is refused"
    );
}

async fn wrong_codes_per_address_are_capped_across_new_codes(kind: Kind) {
    let ctx = ctx!(kind);
    let email = "target@example.com";
    // Asking for a fresh code resets the per-code tries, but not the hourly budget of the
    // address: an attacker with many IPs still gets only 10 guesses an hour.
    for _ in 0..2 {
        let code = ctx.request_code(email).await;
        let wrong = if code == "123456" { "654321" } else { "123456" };
        for _ in 0..5 {
            let r = ctx
                .post(
                    "/v1/auth/verify",
                    None,
                    json!({"email": email, "code": wrong}),
                )
                .await;
            assert_eq!(r.status, 401);
        }
    }
    let code = ctx.request_code(email).await;
    let r = ctx
        .post(
            "/v1/auth/verify",
            None,
            json!({"email": email, "code": code}),
        )
        .await;
    assert_eq!((r.status, r.code()), (429, "rate_limited"), "{:?}", r.body);
    assert!(r.headers.contains_key("retry-after"));
    ctx.clock.advance(3601);
    let code = ctx.request_code(email).await;
    let r = ctx
        .post(
            "/v1/auth/verify",
            None,
            json!({"email": email, "code": code}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
}

// ------------------------------------------------------------ single-backend checks

#[tokio::test]
async fn openapi_document_is_served_checked_in_and_complete() {
    let Some(ctx) = Ctx::new(Kind::Sqlite).await else {
        return;
    };
    let served = ctx
        .client
        .get(format!("{}/openapi.json", ctx.base))
        .send()
        .await
        .expect("get");
    assert_eq!(served.status(), 200);
    let served = served.text().await.expect("text");
    let checked_in = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json"))
        .expect("openapi.json");
    assert_eq!(
        served, checked_in,
        "served document equals the checked-in file"
    );
    let doc: Value = serde_json::from_str(&checked_in).expect("valid JSON");
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
    for (method, path) in krisp_server::ROUTES {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} is documented"
        );
        // And it is routed: the fallback answers "no such endpoint", real routes do not.
        let concrete = path
            .replace("{device_id}", "x")
            .replace("{org_id}", "org_x")
            .replace("{email}", "a@example.com")
            .replace("{id}", "dev_x");
        let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
        let r = ctx.send(m, &concrete, None, None).await;
        assert_ne!(r.status, 405, "{method} {path}");
        assert_ne!(
            r.body["error"]["message"], "no such endpoint",
            "{method} {path} is routed"
        );
    }
    let documented: usize = doc["paths"]
        .as_object()
        .expect("paths")
        .values()
        .map(|p| {
            p.as_object().map_or(0, |o| {
                o.keys()
                    .filter(|k| ["get", "post", "put", "delete", "patch"].contains(&k.as_str()))
                    .count()
            })
        })
        .sum();
    assert_eq!(
        documented,
        krisp_server::ROUTES.len(),
        "no documented route is missing from the server"
    );
}

#[tokio::test]
async fn health_and_metrics_answer() {
    let Some(ctx) = Ctx::new(Kind::Sqlite).await else {
        return;
    };
    let r = ctx.get("/healthz", None).await;
    assert_eq!((r.status, r.body["status"].as_str()), (200, Some("ok")));
    ctx.sign_in("m@example.com").await;
    let text = ctx
        .client
        .get(format!("{}/metrics", ctx.base))
        .send()
        .await
        .expect("get")
        .text()
        .await
        .expect("text");
    assert!(text.contains("krisp_sign_ins_total 1"), "{text}");
    assert!(text.contains("krisp_http_request_duration_seconds_bucket{le=\"+Inf\"}"));
}

#[tokio::test]
async fn general_flood_limit_throttles_then_bans_an_ip() {
    let Some(ctx) = Ctx::with(Kind::Sqlite, |c| c.limits.requests_per_sec_per_ip = 5).await else {
        return;
    };
    let mut statuses = Vec::new();
    for _ in 0..30 {
        let r = ctx.get("/v1/keys", None).await;
        statuses.push((r.status, r.code().to_owned()));
    }
    assert_eq!(statuses[0].0, 200);
    assert!(
        statuses.iter().any(|s| s.1 == "rate_limited"),
        "{statuses:?}"
    );
    assert_eq!(statuses.last().map(|s| s.1.as_str()), Some("banned"));
    // Health checks are exempt.
    assert_eq!(ctx.get("/healthz", None).await.status, 200);
}
