//! What sets a reload off: changes in the configuration file's directory and
//! SIGHUP. The directory is watched, not the file, so editors' rename-writes
//! and Kubernetes ConfigMap symlink swaps (which replace `..data`) are seen.
//! This module only triggers reloads; `server` performs them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::server::{Handle, Trigger};

/// Quiet time after a change before the file is read, so a burst of events
/// from one save becomes one reload of the finished file.
const SETTLE: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
#[error("cannot watch {dir} for configuration changes: {source}")]
pub struct WatchError {
    dir: PathBuf,
    #[source]
    source: notify::Error,
}

/// Watches the directory of a configuration file.
pub struct FileWatcher {
    /// Kept alive for as long as events are wanted.
    _watcher: notify::RecommendedWatcher,
    events: mpsc::Receiver<()>,
    handle: Handle,
}

impl FileWatcher {
    pub fn new(path: &Path, handle: Handle) -> Result<Self, WatchError> {
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let (tx, events) = mpsc::channel(1);
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                match event {
                    Ok(event) if matches!(event.kind, EventKind::Access(_)) => {}
                    // A full channel means a reload is already pending.
                    Ok(_) => _ = tx.try_send(()),
                    Err(e) => tracing::warn!(error = %e, "configuration watch error"),
                }
            })
            .map_err(|source| WatchError {
                dir: dir.clone(),
                source,
            })?;
        watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .map_err(|source| WatchError { dir, source })?;
        Ok(Self {
            _watcher: watcher,
            events,
            handle,
        })
    }

    pub async fn run(mut self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                event = self.events.recv() => if event.is_none() { break },
                () = shutdown.cancelled() => break,
            }
            tokio::time::sleep(SETTLE).await;
            while self.events.try_recv().is_ok() {}
            self.handle.request_reload(Trigger::FileChanged).await;
        }
    }
}

/// The process signals the proxy answers, installed before it starts serving.
pub(crate) struct Signals {
    hangup: Signal,
    terminate: Signal,
    interrupt: Signal,
}

impl Signals {
    pub(crate) fn install() -> std::io::Result<Self> {
        Ok(Self {
            hangup: signal(SignalKind::hangup())?,
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    /// Turns SIGHUP into reloads and SIGTERM/SIGINT into a graceful shutdown;
    /// a second SIGTERM/SIGINT exits at once.
    pub(crate) async fn run(mut self, handle: Handle) {
        let mut stopping = false;
        loop {
            tokio::select! {
                _ = self.hangup.recv() => {
                    tracing::info!("SIGHUP: reloading the configuration");
                    handle.request_reload(Trigger::Signal).await;
                    continue;
                }
                _ = self.terminate.recv() => {}
                _ = self.interrupt.recv() => {}
            }
            if stopping {
                tracing::warn!("second stop signal: exiting now");
                std::process::exit(1);
            }
            stopping = true;
            tracing::info!("stop signal: finishing in-flight requests, then exiting");
            handle.shutdown();
        }
    }
}
