//! HTTPS: TLS 1.2 and 1.3 work and carry HSTS; TLS 1.1 is refused at the handshake.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use krisp_server::{Clock, Config, KeySource, Server, TlsFiles};
use rustls::pki_types::CertificateDer;

struct Tls {
    server: Server,
    cert_der: CertificateDer<'static>,
    _dir: tempfile::TempDir,
}

async fn start_tls() -> Tls {
    let dir = tempfile::tempdir().expect("temp dir");
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("self-signed certificate");
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, ck.cert.pem()).expect("write cert");
    std::fs::write(&key, ck.signing_key.serialize_pem()).expect("write key");
    let server = krisp_server::start(Config {
        listen: "127.0.0.1:0".parse().expect("literal"),
        database_url: format!("sqlite://{}", dir.path().join("k.db").display()),
        tls: Some(TlsFiles { cert, key }),
        signing_key: KeySource::Ephemeral,
        clock: Clock::manual(1_700_000_000),
        ..Config::default()
    })
    .await
    .expect("TLS server starts");
    Tls {
        server,
        cert_der: ck.cert.der().clone(),
        _dir: dir,
    }
}

/// One HTTPS GET over a rustls client limited to `version`; returns the raw response and the
/// negotiated version.
async fn https_get(
    t: &Tls,
    version: &'static rustls::SupportedProtocolVersion,
    path: &str,
) -> (String, rustls::ProtocolVersion) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut roots = rustls::RootCertStore::empty();
    roots.add(t.cert_der.clone()).expect("trust test cert");
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[version])
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = tokio::net::TcpStream::connect(t.server.local_addr())
        .await
        .expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut tls = connector.connect(name, tcp).await.expect("TLS handshake");
    let negotiated = tls
        .get_ref()
        .1
        .protocol_version()
        .expect("negotiated version");
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    tls.write_all(req.as_bytes()).await.expect("send request");
    let mut buf = Vec::new();
    let _ = tls.read_to_end(&mut buf).await;
    (String::from_utf8_lossy(&buf).into_owned(), negotiated)
}

#[tokio::test]
async fn https_works_with_tls13_and_tls12_and_sends_hsts() {
    let t = start_tls().await;
    for v in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let (resp, negotiated) = https_get(&t, v, "/healthz").await;
        assert_eq!(negotiated, v.version);
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        assert!(
            resp.to_ascii_lowercase()
                .contains("strict-transport-security: max-age=63072000; includesubdomains"),
            "{resp}"
        );
    }
}

/// A TLS 1.1 ClientHello, built by hand (no client library will send one any more).
fn tls11_client_hello() -> Vec<u8> {
    let mut hello = vec![0x03, 0x02]; // client_version TLS 1.1
    hello.extend([0x42; 32]); // random
    hello.push(0); // no session id
    // Suites a TLS 1.2 server would accept (ECDHE-ECDSA/RSA AES-GCM) plus classic CBC ones, so
    // the only thing wrong is the version.
    hello.extend([
        0x00, 0x0a, 0xc0, 0x2b, 0xc0, 0x2f, 0xc0, 0x13, 0xc0, 0x14, 0x00, 0x2f,
    ]);
    hello.extend([0x01, 0x00]); // null compression
    // Extensions a modern server needs before it looks at the version (rustls checks
    // signature algorithms first): supported groups, point formats, signature algorithms.
    let ext: &[u8] = &[
        0x00, 0x0a, 0x00, 0x06, 0x00, 0x04, 0x00, 0x1d, 0x00, 0x17, // groups: x25519, P-256
        0x00, 0x0b, 0x00, 0x02, 0x01, 0x00, // point formats: uncompressed
        0x00, 0x0d, 0x00, 0x08, 0x00, 0x06, 0x04, 0x03, 0x08, 0x04, 0x04, 0x01, // sig algs
    ];
    hello.extend((ext.len() as u16).to_be_bytes());
    hello.extend(ext);
    let mut hs = vec![0x01]; // ClientHello
    hs.extend(&(hello.len() as u32).to_be_bytes()[1..]);
    hs.extend(hello);
    let mut record = vec![0x16, 0x03, 0x02]; // handshake record, TLS 1.1
    record.extend((hs.len() as u16).to_be_bytes());
    record.extend(hs);
    record
}

#[tokio::test]
async fn tls11_handshake_is_refused() {
    let t = start_tls().await;
    let addr: SocketAddr = t.server.local_addr();
    let answer = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        s.write_all(&tls11_client_hello()).expect("send hello");
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        buf
    })
    .await
    .expect("blocking task");
    assert!(
        !answer.is_empty(),
        "the server answers with an alert before closing"
    );
    assert_eq!(
        answer[0], 0x15,
        "an alert record, not a ServerHello: {answer:02x?}"
    );
    assert_eq!(answer[5], 2, "fatal");
    assert_eq!(answer[6], 70, "protocol_version alert: {answer:02x?}");
}

/// The same with the openssl CLI when it is installed (Debian package `openssl`).
#[tokio::test]
async fn openssl_cli_cannot_negotiate_tls11_or_tls10() {
    if std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_err()
    {
        if std::env::var("KRISP_REQUIRE_SERVERS").as_deref() == Ok("1") {
            panic!(
                "KRISP_REQUIRE_SERVERS=1 but the openssl CLI is missing (apt-get install openssl)"
            );
        }
        eprintln!(
            "\n!!!!!!!! SKIPPING openssl s_client check: openssl CLI not installed !!!!!!!!\n"
        );
        return;
    }
    let t = start_tls().await;
    let port = t.server.local_addr().port();
    for flag in ["-tls1_1", "-tls1", "-tls1_2"] {
        let args = [
            "s_client".to_owned(),
            "-connect".into(),
            format!("127.0.0.1:{port}"),
            flag.into(),
            "-cipher".into(),
            "DEFAULT:@SECLEVEL=0".into(),
        ];
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new("openssl")
                .args(&args)
                .stdin(std::process::Stdio::null())
                .output()
                .expect("openssl s_client")
        })
        .await
        .expect("blocking task");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let negotiated = text.contains("Protocol  : TLSv1") || text.contains("New, TLSv1");
        if flag == "-tls1_2" {
            assert!(out.status.success() && negotiated, "TLS 1.2 works: {text}");
        } else {
            assert!(!out.status.success(), "{flag} must fail: {text}");
            assert!(
                !text.contains("Cipher is ECDHE") || text.contains("Cipher is (NONE)"),
                "{flag}: {text}"
            );
        }
    }
}
