//! The control thread's window on the audio server: one persistent libpulse connection that
//! keeps a snapshot of the sources (name, description, whether anyone records) and the default
//! source, refreshed when the server reports a change.
//!
//! It replaces `pactl` subprocesses that the supervisor used to start about three times a
//! second (~5 ms of CPU each). The connection runs on a standard (non-threaded) libpulse main
//! loop that the control thread pumps without blocking at each supervision round, so it adds
//! no thread. Subscribed events (sources, source outputs, server) mark the snapshot stale; it
//! is also refreshed at least once a second, in case a server (or a future one) leaves out an
//! event. A lost connection is reported as an error: the audio server is down.
//!
//! Loading and unloading "Krisp Microphone"'s modules stays with `pactl` (krisp-vdev): that
//! happens a few times per session.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use libpulse_binding::callbacks::ListResult;
use libpulse_binding::context::subscribe::InterestMaskSet;
use libpulse_binding::def::SourceState;
use libpulse_binding::mainloop::standard::IterateResult;

use crate::pa::{ANSWER_TIMEOUT, Conn};
/// Oldest the snapshot may get without an event (the cadence of the old `pactl` polling).
const MAX_AGE: Duration = Duration::from_millis(1000);

/// A source as the server lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Source {
    /// Server name (`alsa_input...`, `krisp_mic`).
    pub name: String,
    /// Human description.
    pub description: String,
    /// Someone records from it (state RUNNING).
    pub running: bool,
}

/// What the callbacks fill in; read by the control thread between pumps.
#[derive(Default)]
struct Shared {
    /// An event arrived since the last refresh was asked for.
    dirty: bool,
    /// The source list being received.
    incoming: Vec<Source>,
    /// The last complete source list.
    sources: Vec<Source>,
    /// Replies still awaited by the refresh in flight.
    awaiting: u8,
    /// A query failed.
    failed: bool,
    default_source: String,
}

/// A persistent connection to the audio server, for the control thread only (not `Send`).
pub(crate) struct Watch {
    conn: Conn,
    shared: Rc<RefCell<Shared>>,
    refreshed: Option<Instant>,
}

impl Watch {
    /// Connects to the default server (as `pactl` would: same environment, no autospawn),
    /// subscribes to source, source-output and server events, and takes a first snapshot.
    pub fn connect() -> Result<Watch, String> {
        let mut conn = Conn::connect("Krisp control")?;
        let shared = Rc::new(RefCell::new(Shared::default()));
        let s = shared.clone();
        conn.context
            .set_subscribe_callback(Some(Box::new(move |_, _, _| {
                s.borrow_mut().dirty = true;
            })));
        let _ = conn.context.subscribe(
            InterestMaskSet::SOURCE | InterestMaskSet::SOURCE_OUTPUT | InterestMaskSet::SERVER,
            |_| {},
        );
        let mut w = Watch {
            conn,
            shared,
            refreshed: None,
        };
        w.refresh()?;
        Ok(w)
    }

    /// Takes in what the server sent; re-reads the sources when an event said they changed or
    /// the snapshot is older than a second. An error means the connection is lost.
    pub fn update(&mut self) -> Result<(), String> {
        // Non-blocking: dispatch what is already there (bounded, in case of an event storm).
        for _ in 0..64 {
            match self.conn.mainloop.iterate(false) {
                IterateResult::Success(0) => break,
                IterateResult::Success(_) => {}
                _ => return Err("the audio server connection broke".into()),
            }
        }
        self.check()?;
        let stale =
            self.shared.borrow().dirty || self.refreshed.is_none_or(|t| t.elapsed() >= MAX_AGE);
        if stale {
            self.refresh()?;
        }
        Ok(())
    }

    /// Blocks until the server sends something (an event) or `timeout` passes, and
    /// dispatches it; [`Watch::update`] then acts on it.
    pub fn wait(&mut self, timeout: Duration) -> Result<(), String> {
        self.conn.wait(timeout.as_micros() as u64)?;
        self.check()
    }

    /// Re-reads the source list and the default source now, waiting for the answer.
    pub fn refresh(&mut self) -> Result<(), String> {
        {
            let mut sh = self.shared.borrow_mut();
            sh.dirty = false;
            sh.failed = false;
            sh.incoming.clear();
            sh.awaiting = 2;
        }
        let introspect = self.conn.context.introspect();
        let s = self.shared.clone();
        introspect.get_source_info_list(move |r| {
            let mut sh = s.borrow_mut();
            match r {
                ListResult::Item(i) => {
                    let name = i.name.as_deref().unwrap_or_default().to_string();
                    let description = i.description.as_deref().unwrap_or_default().to_string();
                    sh.incoming.push(Source {
                        name,
                        description,
                        running: i.state == SourceState::Running,
                    });
                }
                ListResult::End => {
                    let list = std::mem::take(&mut sh.incoming);
                    sh.sources = list;
                    sh.awaiting = sh.awaiting.saturating_sub(1);
                }
                ListResult::Error => {
                    sh.failed = true;
                    sh.awaiting = sh.awaiting.saturating_sub(1);
                }
            }
        });
        let s = self.shared.clone();
        introspect.get_server_info(move |i| {
            let mut sh = s.borrow_mut();
            sh.default_source = i
                .default_source_name
                .as_deref()
                .unwrap_or_default()
                .to_string();
            sh.awaiting = sh.awaiting.saturating_sub(1);
        });
        let t = Instant::now();
        while self.shared.borrow().awaiting > 0 {
            self.check()?;
            if t.elapsed() > ANSWER_TIMEOUT {
                return Err("the audio server did not answer".into());
            }
            self.conn.wait(20_000)?;
        }
        if self.shared.borrow().failed {
            return Err(format!(
                "the audio server refused to list sources: {}",
                self.conn.context.errno()
            ));
        }
        self.refreshed = Some(Instant::now());
        Ok(())
    }

    fn check(&self) -> Result<(), String> {
        if self.conn.good() {
            Ok(())
        } else {
            Err(format!(
                "the audio server connection ended: {}",
                self.conn.context.errno()
            ))
        }
    }

    /// The source called `name`, as of the last snapshot.
    pub fn source(&self, name: &str) -> Option<Source> {
        self.shared
            .borrow()
            .sources
            .iter()
            .find(|s| s.name == name)
            .cloned()
    }

    /// Every source, as of the last snapshot.
    pub fn sources(&self) -> Vec<Source> {
        self.shared.borrow().sources.clone()
    }

    /// The server's default source name, as of the last snapshot.
    pub fn default_source(&self) -> String {
        self.shared.borrow().default_source.clone()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.conn.context.set_subscribe_callback(None);
        self.conn.context.disconnect();
    }
}
