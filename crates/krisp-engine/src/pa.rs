//! A libpulse connection on a standard (non-threaded) main loop, driven by the thread that
//! owns it: the capture and feeder I/O threads each block in their own main loop's poll, and
//! the control thread pumps the supervisor's. libpulse's simple API, used before, ran a
//! threaded main loop per stream, so every block crossed two threads (measured: the two
//! `threaded-ml` threads cost more CPU than the model). Not `Send`: built on the thread that
//! uses it.

use std::time::{Duration, Instant};

use libpulse_binding::context::{Context, FlagSet, State};
use libpulse_binding::mainloop::standard::Mainloop;
use libpulse_binding::stream::{self, Stream};
use libpulse_binding::time::MicroSeconds;

/// How long connecting or opening a stream may take before the server counts as down.
pub(crate) const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

pub(crate) struct Conn {
    // Field order is drop order: the context before its main loop.
    pub context: Context,
    pub mainloop: Mainloop,
}

impl Conn {
    /// Connects to the default server (same environment as `pactl`; no autospawn).
    pub fn connect(name: &str) -> Result<Conn, String> {
        let mainloop = Mainloop::new().ok_or("cannot create a libpulse main loop")?;
        let mut context =
            Context::new(&mainloop, name).ok_or("cannot create a libpulse context")?;
        context
            .connect(None, FlagSet::NOAUTOSPAWN, None)
            .map_err(|e| format!("cannot connect to the audio server: {e}"))?;
        let mut conn = Conn { context, mainloop };
        let t = Instant::now();
        loop {
            match conn.context.get_state() {
                State::Ready => return Ok(conn),
                State::Failed | State::Terminated => {
                    return Err(format!(
                        "cannot connect to the audio server: {}",
                        conn.context.errno()
                    ));
                }
                _ => {}
            }
            if t.elapsed() > ANSWER_TIMEOUT {
                return Err("the audio server did not answer".into());
            }
            conn.wait(20_000)?;
        }
    }

    /// One main-loop iteration: waits for the server (or `timeout_us`), then dispatches.
    pub fn wait(&mut self, timeout_us: u64) -> Result<(), String> {
        let broke = |e| format!("libpulse main loop: {e}");
        let ml = &mut self.mainloop;
        ml.prepare(Some(MicroSeconds(timeout_us))).map_err(broke)?;
        ml.poll().map_err(broke)?;
        ml.dispatch().map_err(broke)?;
        Ok(())
    }

    /// Whether the connection still stands.
    pub fn good(&self) -> bool {
        self.context.get_state().is_good()
    }

    /// Waits until `stream` is ready; an error names `what`.
    pub fn wait_ready(&mut self, stream: &Stream, what: &str) -> Result<(), String> {
        let t = Instant::now();
        loop {
            match stream.get_state() {
                stream::State::Ready => return Ok(()),
                stream::State::Failed | stream::State::Terminated => {
                    return Err(format!("cannot open {what}: {}", self.context.errno()));
                }
                _ => {}
            }
            if !self.good() {
                return Err(format!("cannot open {what}: {}", self.context.errno()));
            }
            if t.elapsed() > ANSWER_TIMEOUT {
                return Err(format!(
                    "cannot open {what}: the audio server did not answer"
                ));
            }
            self.wait(20_000)?;
        }
    }
}
