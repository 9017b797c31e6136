//! The local control socket: `krisp on`, `krisp off`, `krisp status` talk to a running engine.
//!
//! A Unix-domain socket in `$XDG_RUNTIME_DIR/krisp/` (a 0700 directory; the socket is 0600)
//! and, on top, a peer-credential check: only the same user may connect. One request line,
//! one JSON response line.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Default socket path for this user.
pub fn default_path() -> PathBuf {
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join(format!("krisp-{}", unsafe_uid())));
    base.join("krisp").join("control.sock")
}

fn unsafe_uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

/// A request to the running engine.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// Noise removal on.
    On,
    /// Noise removal off (pass-through).
    Off,
    /// Report the state.
    Status,
    /// Set the strength in dB.
    Strength {
        /// Attenuation limit.
        db: f32,
    },
    /// Bring the running app's window to the front (a second launch asks the first).
    Show,
    /// Switch the input device.
    Input {
        /// Device name (`None`: default).
        name: Option<String>,
    },
    /// Switch the denoising model (crossfaded, while audio flows).
    Model {
        /// Model name from the models manifest (`rnnoise`, `dfn3`).
        name: String,
    },
    /// Ask the license server again now, not when due (after a sign-in or sign-out).
    CheckLicense,
    /// Quit the whole app (the window's Quit button): the engine stops and "Krisp
    /// Microphone" goes.
    Quit,
}

/// The engine's answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Response {
    /// Whether the request was carried out.
    pub ok: bool,
    /// Error message when not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Noise removal switched on by the user.
    pub enabled: bool,
    /// The denoiser is actually running (on and licensed).
    pub denoising: bool,
    /// Strength in dB.
    pub strength_db: f32,
    /// Status sentence of the audio path.
    pub status: String,
    /// Chosen input (`None`: default).
    pub input: Option<String>,
    /// The denoising model in use.
    #[serde(default)]
    pub model: String,
    /// Statistics.
    pub stats: crate::StatsSnapshot,
    /// Extra lines from the embedding app (e.g. license state).
    #[serde(default)]
    pub extra: Vec<String>,
    /// The audio path's health (what the status sentence is about), for banners and icons.
    #[serde(default = "starting")]
    pub health: crate::Health,
    /// The embedding app's own state as JSON (the window app: license, virtual microphone,
    /// tray); the engine does not look into it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<serde_json::Value>,
}

fn starting() -> crate::Health {
    crate::Health::Starting
}

/// Serves requests until dropped.
pub struct Server {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Binds `path` (replacing a stale socket) and answers with `handler` on its own thread.
    pub fn start(
        path: &Path,
        handler: impl Fn(Request) -> Response + Send + 'static,
    ) -> std::io::Result<Server> {
        // A folder we create is private (0700); an existing one (e.g. a test's temp dir) is
        // left as it is: the socket itself is 0600 and every peer's uid is checked.
        if let Some(dir) = path.parent()
            && !dir.exists()
        {
            std::fs::create_dir_all(dir)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
        if UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!(
                    "another krisp is already running (socket {})",
                    path.display()
                ),
            ));
        }
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        // Blocking accept: no polling while idle. Drop wakes it with a connection of its own.
        let thread = std::thread::Builder::new()
            .name("krisp-socket".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    if stop2.load(Ordering::Relaxed) {
                        break;
                    }
                    if let Ok(stream) = stream {
                        let _ = serve_one(stream, &handler);
                    }
                }
            })?;
        Ok(Server {
            path: path.to_path_buf(),
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn peer_uid(stream: &UnixStream) -> Option<u32> {
    use std::os::fd::AsRawFd;
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: the fd is a live Unix socket owned by `stream`; `cred` and `len` are valid,
    // properly sized out-pointers for SO_PEERCRED.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(cred.uid)
}

fn serve_one(stream: UnixStream, handler: &impl Fn(Request) -> Response) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    if peer_uid(&stream) != Some(unsafe_uid()) {
        return Ok(()); // another user: hang up without a word
    }
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    let mut w = &stream;
    match serde_json::from_str::<Request>(line.trim()) {
        Ok(req) => {
            let resp = handler(req);
            writeln!(w, "{}", serde_json::to_string(&resp).unwrap_or_default())?;
        }
        Err(e) => {
            writeln!(
                w,
                "{{\"ok\":false,\"error\":\"bad request: {}\"}}",
                e.to_string().replace('"', "'")
            )?;
        }
    }
    Ok(())
}

/// Why a request got no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// Nothing listens at the path: no engine runs (or it has just stopped).
    NotRunning(String),
    /// An engine listens but the exchange failed (a timeout, a garbled answer).
    Failed(String),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::NotRunning(e) | SendError::Failed(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for SendError {}

/// Sends one request to the engine at `path`.
pub fn send(path: &Path, req: &Request) -> Result<Response, String> {
    exchange(path, req).map_err(|e| e.to_string())
}

/// [`send`], telling "no engine" from a failed exchange (a busy engine is not a gone one).
pub fn exchange(path: &Path, req: &Request) -> Result<Response, SendError> {
    let stream = UnixStream::connect(path).map_err(|e| {
        SendError::NotRunning(format!(
            "no running krisp engine ({}: {e}); start it with `krisp run`",
            path.display()
        ))
    })?;
    let failed = |e: String| SendError::Failed(e);
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| failed(e.to_string()))?;
    let mut w = &stream;
    let line = serde_json::to_string(req).map_err(|e| failed(e.to_string()))?;
    writeln!(w, "{line}").map_err(|e| failed(e.to_string()))?;
    let mut line = String::new();
    BufReader::new(&stream)
        .read_line(&mut line)
        .map_err(|e| failed(format!("the engine did not answer: {e}")))?;
    serde_json::from_str(&line).map_err(|e| failed(format!("garbled answer from the engine: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn answer(req: Request) -> Response {
        Response {
            ok: true,
            error: None,
            enabled: !matches!(req, Request::Off),
            denoising: false,
            strength_db: 100.0,
            status: "test".into(),
            input: None,
            model: "rnnoise".into(),
            stats: crate::StatsSnapshot {
                captured_frames: 0,
                processed_frames: 0,
                underruns: 0,
                overruns: 0,
                drift_dropped: 0,
                drift_inserted: 0,
                direct: false,
                pipe: false,
                node: false,
                late_model_frames: 0,
                input_rms: 0.0,
                output_rms: 0.0,
                vad: 0.0,
                added_latency_ms: 0.0,
                jitter_buffer_ms: 0.0,
                device_buffer_ms: 0.0,
                device_underflows: 0,
                cpu_load: 0.0,
                input_running: false,
                output_running: false,
                listeners: false,
                restarts: 0,
                output: crate::OUTPUT_VIRTUAL_MIC.into(),
                ring: None,
            },
            extra: vec![],
            health: crate::Health::Running,
            app: matches!(req, Request::Status).then(|| serde_json::json!({ "shown": 1 })),
        }
    }

    #[test]
    fn requests_round_trip_and_only_the_owner_can_open_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k/control.sock");
        let server = Server::start(&path, answer).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert_eq!(
            std::fs::metadata(path.parent().unwrap()).unwrap().mode() & 0o777,
            0o700
        );
        assert!(!send(&path, &Request::Off).unwrap().enabled);
        assert!(send(&path, &Request::On).unwrap().enabled);
        let st = send(&path, &Request::Status).unwrap();
        assert_eq!(st.health, crate::Health::Running);
        assert_eq!(st.app, Some(serde_json::json!({ "shown": 1 })));
        assert_eq!(send(&path, &Request::Quit).unwrap().app, None);
        // A second instance is refused while the first runs.
        let err = Server::start(&path, answer).err().unwrap();
        assert!(err.to_string().contains("already running"), "{err}");
        // Garbage gets a clear error line, not a hang or a crash.
        let mut s = UnixStream::connect(&path).unwrap();
        writeln!(s, "not json").unwrap();
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line).unwrap();
        assert!(line.contains("bad request"), "{line}");
        drop(server);
        assert!(!path.exists(), "socket removed on drop");
        // An older engine's answer (no health, no app part) still reads.
        let old = r#"{"ok":true,"enabled":true,"denoising":true,"strength_db":100.0,
            "status":"running","input":null,"stats":STATS}"#
            .replace(
                "STATS",
                &serde_json::to_string(&answer(Request::On).stats).unwrap(),
            );
        let r: Response = serde_json::from_str(&old).unwrap();
        assert_eq!((r.health, r.app), (crate::Health::Starting, None));
        assert_eq!(
            serde_json::to_string(&Request::CheckLicense).unwrap(),
            r#"{"cmd":"check_license"}"#
        );
        let err = send(&path, &Request::Status).unwrap_err();
        assert!(err.contains("no running krisp"), "{err}");
        assert!(matches!(
            exchange(&path, &Request::Status),
            Err(SendError::NotRunning(_))
        ));
    }
}
