//! The real license server (krisp-server) in the test process, on loopback, with SQLite in a
//! temp dir and its dev outbox standing in for the SMTP relay.

use serde_json::Value;

/// A running license server and the keys the app must trust to accept its tokens.
pub struct Backend {
    pub rt: tokio::runtime::Runtime,
    pub server: Option<krisp_server::Server>,
    pub url: String,
    pub keys: String,
    _tmp: tempfile::TempDir,
}

impl Backend {
    pub fn start() -> Backend {
        let tmp = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let cfg = krisp_server::Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            database_url: format!("sqlite://{}", tmp.path().join("krisp.db").display()),
            signing_key: krisp_server::KeySource::File(tmp.path().join("keys.txt")),
            dev_outbox: true,
            max_connections: 4,
            ..krisp_server::Config::default()
        };
        let server = rt.block_on(krisp_server::start(cfg)).unwrap();
        let url = format!("http://{}", server.local_addr());
        // The key the app must trust, as the server publishes it.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let v: Value = rt.block_on(async {
            reqwest::get(format!("{url}/v1/keys"))
                .await
                .unwrap()
                .json()
                .await
                .unwrap()
        });
        let keys = v["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| {
                format!(
                    "{}:{}",
                    k["kid"].as_str().unwrap(),
                    k["public_key"].as_str().unwrap()
                )
            })
            .collect::<Vec<_>>()
            .join(",");
        Backend {
            rt,
            server: Some(server),
            url,
            keys,
            _tmp: tmp,
        }
    }

    pub fn code_for(&self, email: &str) -> Option<String> {
        self.server.as_ref()?.outbox()?.last_code_for(email)
    }

    pub fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            self.rt.block_on(s.shutdown());
        }
    }
}
