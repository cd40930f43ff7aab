//! What sets a reload off: changes in the configuration file's directory,
//! or in a directory of the TLS files in use, and SIGHUP. Directories are
//! watched, not files, so editors' rename-writes and Kubernetes ConfigMap
//! and Secret symlink swaps (which replace `..data`) are seen. This module
//! only triggers reloads; `server` performs them.

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

/// Watches the directory of a configuration file, and those of the TLS
/// files it names.
pub struct FileWatcher {
    /// Kept alive for as long as events are wanted.
    watcher: notify::RecommendedWatcher,
    events: mpsc::Receiver<()>,
    handle: Handle,
    /// The configuration file's directory, always watched.
    config_dir: PathBuf,
    /// TLS directories watched now, besides `config_dir`.
    tls_dirs: Vec<PathBuf>,
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
            .map_err(|source| WatchError {
                dir: dir.clone(),
                source,
            })?;
        let mut this = Self {
            watcher,
            events,
            handle,
            config_dir: dir,
            tls_dirs: Vec::new(),
        };
        this.watch_tls_dirs();
        Ok(this)
    }

    /// Watches the TLS directories of the configuration in force, and no
    /// others. A directory that cannot be watched is logged, not fatal: the
    /// files it holds still reload with SIGHUP.
    fn watch_tls_dirs(&mut self) {
        let wanted: Vec<PathBuf> = self
            .handle
            .status()
            .tls_dirs
            .into_iter()
            .filter(|d| *d != self.config_dir)
            .collect();
        for dir in &self.tls_dirs {
            if !wanted.contains(dir) {
                _ = self.watcher.unwatch(dir);
            }
        }
        for dir in &wanted {
            if !self.tls_dirs.contains(dir) {
                if let Err(e) = self.watcher.watch(dir, RecursiveMode::NonRecursive) {
                    tracing::warn!(dir = %dir.display(), error = %e,
                        "cannot watch this TLS directory; changes in it reload on SIGHUP only");
                }
            }
        }
        self.tls_dirs = wanted;
    }

    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut status = self.handle.tls_dirs();
        loop {
            tokio::select! {
                event = self.events.recv() => if event.is_none() { break },
                changed = status.changed() => {
                    if changed.is_err() { break }
                    self.watch_tls_dirs();
                    continue;
                }
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
