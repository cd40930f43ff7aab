//! `[admin] audit_log`: the file every event is appended to as one JSON
//! line, synced to disk before the next. A dedicated thread owns the file,
//! so neither the write nor the fsync ever runs on an async runtime; events
//! reach it through a bounded queue that `record` never waits on. The file
//! may be rotated by an outside tool: renamed away or removed, it is opened
//! again at its path at the next event, and `reopen` (SIGHUP) forces that.
//! This module writes the file only; what goes in an event is `audit`'s.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;

use super::Event;
use crate::metrics::Metrics;

/// Events waiting for the writer; beyond this, events are left out of the
/// file (and counted), never waited for.
const QUEUE: usize = 4096;

/// Mode of a file the writer creates (before the umask): the owner
/// writes, its group reads, others get nothing.
const MODE: u32 = 0o640;

/// The writer thread of one path, fed by `send`. Dropping it lets the
/// thread write what is queued and end.
pub(super) struct AuditLog {
    path: PathBuf,
    queue: SyncSender<Message>,
    /// Set by `reopen`, taken by the writer before its next line.
    reopen: Arc<AtomicBool>,
    metrics: Metrics,
    /// The queue was full at the last `send`: logged once per streak.
    overflowing: AtomicBool,
}

enum Message {
    Event(Arc<Event>),
    /// Answered with the number of times the file was opened, once every
    /// message before it is written.
    Flush(mpsc::Sender<u64>),
}

impl AuditLog {
    /// Starts the writer of `path`, which opens it at once (a failure is
    /// logged, and tried again at the first event).
    pub(super) fn start(path: &Path, metrics: &Metrics) -> io::Result<Self> {
        let (queue, events) = mpsc::sync_channel(QUEUE);
        let reopen = Arc::new(AtomicBool::new(false));
        let writer = Writer {
            path: path.to_path_buf(),
            file: None,
            reopen: reopen.clone(),
            failing: false,
            opens: 0,
            metrics: metrics.clone(),
        };
        std::thread::Builder::new()
            .name("audit-log".to_owned())
            .spawn(move || writer.run(events))?;
        Ok(Self {
            path: path.to_path_buf(),
            queue,
            reopen,
            metrics: metrics.clone(),
            overflowing: AtomicBool::new(false),
        })
    }

    /// The path written to.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Queues `event` for the file without waiting; a full queue leaves it
    /// out of the file, counted in `cutover_audit_log_errors_total`.
    pub(super) fn send(&self, event: &Arc<Event>) {
        match self.queue.try_send(Message::Event(event.clone())) {
            Ok(()) => {
                if self.overflowing.swap(false, Ordering::Relaxed) {
                    tracing::info!(path = %self.path.display(), "audit log: queue has room again");
                }
            }
            Err(TrySendError::Full(_)) => {
                self.metrics.audit_log_errors.inc();
                if !self.overflowing.swap(true, Ordering::Relaxed) {
                    tracing::error!(
                        path = %self.path.display(),
                        seq = event.seq,
                        "audit log: {QUEUE} events are waiting for the disk; \
                         events are left out of the file until it catches up"
                    );
                }
            }
            Err(TrySendError::Disconnected(_)) => {
                self.metrics.audit_log_errors.inc();
                tracing::error!(
                    path = %self.path.display(),
                    seq = event.seq,
                    "audit log: the writer has stopped; event left out of the file"
                );
            }
        }
    }

    /// Has the writer open the path afresh before its next line, wherever
    /// the file it has open now went (SIGHUP after a rotation).
    pub(super) fn reopen(&self) {
        self.reopen.store(true, Ordering::Relaxed);
    }

    /// Tells this writer from another started for the same path.
    #[cfg(test)]
    pub(super) fn id(&self) -> usize {
        Arc::as_ptr(&self.reopen) as usize
    }

    /// A marker queued behind every event sent so far: its receiver is
    /// answered once they are written. `None` when the queue is full or
    /// the writer gone: nothing is waited for then.
    pub(super) fn marker(&self) -> Option<mpsc::Receiver<u64>> {
        let (done, wait) = mpsc::channel();
        self.queue.try_send(Message::Flush(done)).ok()?;
        Some(wait)
    }

    /// Waits (at most `limit`) until every event sent before is written;
    /// how many times the file has been opened.
    #[cfg(test)]
    pub(super) fn flush(&self, limit: std::time::Duration) -> u64 {
        let (done, wait) = mpsc::channel();
        self.queue
            .send(Message::Flush(done))
            .expect("writer running");
        wait.recv_timeout(limit).expect("writer flushed in time")
    }
}

/// The thread's side: the open file and whether writing it is failing.
struct Writer {
    path: PathBuf,
    file: Option<File>,
    reopen: Arc<AtomicBool>,
    /// The last attempt failed: the next failure is counted, not logged.
    failing: bool,
    /// Times the path was opened.
    opens: u64,
    metrics: Metrics,
}

impl Writer {
    /// Writes events in the order queued until every sender is gone.
    fn run(mut self, events: Receiver<Message>) {
        if let Err(error) = self.open() {
            self.failed(&error);
        }
        for message in events {
            match message {
                Message::Event(event) => self.write(&event),
                Message::Flush(done) => {
                    // Whoever waits may have given up; nothing to tell.
                    _ = done.send(self.opens);
                }
            }
        }
    }

    /// Appends `event` as one line and syncs it; a failure is counted, and
    /// the file opened again at the next event.
    fn write(&mut self, event: &Event) {
        let mut line = match serde_json::to_vec(event) {
            Ok(line) => line,
            Err(error) => {
                let error = io::Error::new(io::ErrorKind::InvalidData, error);
                self.metrics.audit_log_errors.inc();
                return self.failed(&error);
            }
        };
        line.push(b'\n');
        match self.append(&line) {
            Ok(()) => {
                if std::mem::take(&mut self.failing) {
                    tracing::info!(path = %self.path.display(), seq = event.seq, "audit log: writing again");
                }
            }
            Err(error) => {
                self.file = None;
                self.metrics.audit_log_errors.inc();
                self.failed(&error);
            }
        }
    }

    fn append(&mut self, line: &[u8]) -> io::Result<()> {
        let moved = self.reopen.swap(false, Ordering::Relaxed)
            || self.file.as_ref().is_some_and(|f| !self.still_at_path(f));
        if moved || self.file.is_none() {
            self.open()?;
        }
        let Some(file) = self.file.as_mut() else {
            return Err(io::Error::other("no file open"));
        };
        file.write_all(line)?;
        file.sync_data()
    }

    /// Whether the path still names `file`: not renamed away or removed.
    fn still_at_path(&self, file: &File) -> bool {
        match (std::fs::metadata(&self.path), file.metadata()) {
            (Ok(at_path), Ok(open)) => at_path.dev() == open.dev() && at_path.ino() == open.ino(),
            _ => false,
        }
    }

    /// Opens the path to append, creating it (and syncing its directory,
    /// so the new name survives a crash) when it is not there.
    fn open(&mut self) -> io::Result<()> {
        self.file = None;
        let existed = std::fs::symlink_metadata(&self.path).is_ok();
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(MODE)
            .open(&self.path)?;
        if !existed {
            let dir = match self.path.parent() {
                Some(dir) if !dir.as_os_str().is_empty() => dir,
                _ => Path::new("."),
            };
            File::open(dir)?.sync_all()?;
        }
        self.opens += 1;
        self.file = Some(file);
        Ok(())
    }

    /// Logs `error`, once per run of failures.
    fn failed(&mut self, error: &io::Error) {
        if !std::mem::replace(&mut self.failing, true) {
            tracing::error!(
                path = %self.path.display(),
                %error,
                "audit log: cannot write; events stay in GET /v1/events and are left out \
                 of the file until it can be written again"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::audit::{Audit, Change, EventKind, Source};

    const LIMIT: Duration = Duration::from_secs(10);

    fn weights(audit: &Audit, blue: u32, green: u32) -> Arc<Event> {
        audit.record(
            Change::new(EventKind::Weights, Source::File, "weights set")
                .service("hello")
                .generation(3)
                .before(serde_json::json!({"blue": 100 - blue, "green": 100 - green}))
                .after(serde_json::json!({"blue": blue, "green": green})),
        )
    }

    fn lines(path: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn errors(metrics: &Metrics) -> u64 {
        metrics.audit_log_errors.get()
    }

    #[test]
    fn every_event_is_one_json_line_with_before_and_after() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let metrics = Metrics::new();
        let log = AuditLog::start(&path, &metrics).unwrap();
        let audit = Audit::new(metrics.clone());
        for event in [weights(&audit, 0, 100), weights(&audit, 100, 0)] {
            log.send(&event);
        }
        log.flush(LIMIT);
        let lines = lines(&path);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["seq"], 1);
        assert_eq!(lines[0]["kind"], "weights");
        assert_eq!(lines[0]["service"], "hello");
        assert_eq!(
            lines[0]["before"],
            serde_json::json!({"blue": 100, "green": 0})
        );
        assert_eq!(
            lines[0]["after"],
            serde_json::json!({"blue": 0, "green": 100})
        );
        assert_eq!(lines[1]["seq"], 2);
        let mode = std::fs::metadata(&path).unwrap().mode() & 0o777;
        assert_eq!(mode & !0o640, 0, "mode {mode:o} gives more than 0640");
        assert_eq!(errors(&metrics), 0);
    }

    #[test]
    fn written_lines_keep_their_order_and_a_dropped_writer_finishes_its_queue() {
        // Each line is synced before the next is written: read here through
        // another handle while the writer is still running.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let metrics = Metrics::new();
        let log = AuditLog::start(&path, &metrics).unwrap();
        let audit = Audit::new(metrics.clone());
        for i in 0..50 {
            log.send(&weights(&audit, i, 100 - i));
        }
        log.flush(LIMIT);
        let seqs: Vec<u64> = lines(&path)
            .iter()
            .map(|l| l["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(seqs, (1..=50).collect::<Vec<_>>());
        // A writer dropped writes what it was sent before ending.
        log.send(&weights(&audit, 7, 93));
        drop(log);
        let deadline = std::time::Instant::now() + LIMIT;
        while lines(&path).len() < 51 {
            assert!(
                std::time::Instant::now() < deadline,
                "the last line never came"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_file_renamed_away_keeps_its_lines_and_the_next_go_to_a_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let rotated = dir.path().join("audit.jsonl.1");
        let metrics = Metrics::new();
        let log = AuditLog::start(&path, &metrics).unwrap();
        let audit = Audit::new(metrics.clone());
        log.send(&weights(&audit, 0, 100));
        log.send(&weights(&audit, 10, 90));
        assert_eq!(log.flush(LIMIT), 1);

        std::fs::rename(&path, &rotated).unwrap();
        log.send(&weights(&audit, 20, 80));
        assert_eq!(log.flush(LIMIT), 2);
        assert_eq!(lines(&rotated).len(), 2);
        assert_eq!(lines(&path)[0]["seq"], 3);

        // Removed outright: created again.
        std::fs::remove_file(&path).unwrap();
        log.send(&weights(&audit, 30, 70));
        assert_eq!(log.flush(LIMIT), 3);
        assert_eq!(lines(&path).len(), 1);
        assert_eq!(lines(&path)[0]["seq"], 4);
        assert_eq!(errors(&metrics), 0);
    }

    #[test]
    fn reopen_opens_the_path_afresh_at_the_next_event() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let metrics = Metrics::new();
        let audit = Audit::new(metrics.clone());
        let log = AuditLog::start(&path, &metrics).unwrap();
        log.send(&weights(&audit, 0, 100));
        assert_eq!(log.flush(LIMIT), 1);

        // logrotate's `create`: rename, create an empty file, then SIGHUP.
        std::fs::rename(&path, dir.path().join("audit.jsonl.1")).unwrap();
        std::fs::write(&path, "").unwrap();
        log.reopen();
        log.send(&weights(&audit, 50, 50));
        assert_eq!(log.flush(LIMIT), 2);
        assert_eq!(lines(&path).len(), 1);
        assert_eq!(lines(&dir.path().join("audit.jsonl.1")).len(), 1);

        // Nothing moved: reopening still opens once more, and appends.
        log.reopen();
        log.send(&weights(&audit, 60, 40));
        assert_eq!(log.flush(LIMIT), 3);
        assert_eq!(lines(&path).len(), 2);
        // Without a reopen asked for, the open file is kept.
        log.send(&weights(&audit, 70, 30));
        assert_eq!(log.flush(LIMIT), 3);
    }

    #[test]
    fn a_missing_directory_is_counted_per_event_and_writing_resumes_once_it_exists() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("not-yet/audit.jsonl");
        let metrics = Metrics::new();
        let audit = Audit::new(metrics.clone());
        let log = AuditLog::start(&path, &metrics).unwrap();
        log.send(&weights(&audit, 0, 100));
        log.send(&weights(&audit, 10, 90));
        assert_eq!(log.flush(LIMIT), 0);
        assert_eq!(errors(&metrics), 2);

        std::fs::create_dir(dir.path().join("not-yet")).unwrap();
        log.send(&weights(&audit, 20, 80));
        assert_eq!(log.flush(LIMIT), 1);
        assert_eq!(errors(&metrics), 2);
        let lines = lines(&path);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0]["seq"], 3);
        // The ring kept everything.
        assert_eq!(audit.recent(10, None).len(), 3);
    }
}
