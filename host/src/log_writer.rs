//! Access-log lines leave the request path: workers hand each formatted line
//! to a bounded queue and one background thread writes them to stderr in
//! batches. A worker never waits on stderr; when the writer falls behind,
//! lines are dropped and counted (`cachet_access_log_dropped_total`).
//!
//! Every other line (start-up, reloads, plugin faults) is rare and goes to
//! stderr at once, so it is visible the moment it happens. So do all lines
//! until [`start`] runs (CLI subcommands, start-up before a daemon fork).

use std::io::Write;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::OnceLock;
use std::time::Duration;

/// Lines queued at most (at ~150 bytes a line, about 1.2 MiB): far more than
/// arrive in one gather interval at any request rate this proxy reaches.
const QUEUE_LINES: usize = 8192;
/// How long lines gather before one write: bounds a line's delay and the
/// writer's wake-ups (about 100 a second under load).
const GATHER_INTERVAL: Duration = Duration::from_millis(10);
/// How long a shutdown waits for the queue to drain.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

enum Message {
    Line(Vec<u8>),
    Flush(SyncSender<()>),
}

static QUEUE: OnceLock<SyncSender<Message>> = OnceLock::new();

/// Starts the writer thread of this process (call after any daemon fork:
/// threads do not survive one). Later calls do nothing.
pub fn start() -> std::io::Result<()> {
    if QUEUE.get().is_some() {
        return Ok(());
    }
    let (tx, rx) = mpsc::sync_channel(QUEUE_LINES);
    std::thread::Builder::new()
        .name("cachet-log".into())
        .spawn(move || write_lines(rx))?;
    crate::metrics::log_lines_dropped(0);
    let _ = QUEUE.set(tx);
    Ok(())
}

/// Writes what is queued, waiting at most a couple of seconds.
pub fn flush() {
    let Some(queue) = QUEUE.get() else { return };
    let (done, wait) = mpsc::sync_channel(1);
    if queue.send(Message::Flush(done)).is_ok() {
        let _ = wait.recv_timeout(FLUSH_TIMEOUT);
    }
}

fn write_lines(rx: Receiver<Message>) {
    let mut batch = Vec::with_capacity(64 * 1024);
    // Blocks only while nothing is queued; then lets lines gather, so a busy
    // proxy wakes this thread (and pays a futex wake in a worker) about once
    // per interval instead of once per line.
    while let Ok(first) = rx.recv() {
        std::thread::sleep(GATHER_INTERVAL);
        let mut flushed = Vec::new();
        for message in std::iter::once(first).chain(rx.try_iter().take(QUEUE_LINES)) {
            match message {
                Message::Line(line) => batch.extend_from_slice(&line),
                Message::Flush(done) => flushed.push(done),
            }
        }
        // stderr is locked only while writing, so direct writers still get a turn.
        let _ = std::io::stderr().lock().write_all(&batch);
        batch.clear();
        for done in flushed {
            let _ = done.send(());
        }
    }
}

/// The target of the per-request access-log events.
pub const ACCESS_TARGET: &str = "cachet::access";

/// The `tracing_subscriber` writer: one buffer per event, written when the
/// event is complete (queued for access-log events).
#[derive(Clone, Copy, Default)]
pub struct QueuedStderr;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for QueuedStderr {
    type Writer = LineBuffer;

    fn make_writer(&'a self) -> LineBuffer {
        LineBuffer {
            bytes: Vec::new(),
            queued: false,
        }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> LineBuffer {
        LineBuffer {
            bytes: Vec::new(),
            queued: meta.target() == ACCESS_TARGET,
        }
    }
}

/// One log event's bytes.
pub struct LineBuffer {
    bytes: Vec<u8>,
    queued: bool,
}

impl Write for LineBuffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.bytes.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineBuffer {
    fn drop(&mut self) {
        if self.bytes.is_empty() {
            return;
        }
        let line = std::mem::take(&mut self.bytes);
        if self.queued {
            queue_access_line(line);
        } else {
            let _ = std::io::stderr().write_all(&line);
        }
    }
}

/// Queues one access-log line (already formatted, newline included) for the
/// writer thread; before the writer starts it goes to stderr at once.
pub fn queue_access_line(line: Vec<u8>) {
    match QUEUE.get() {
        Some(queue) => enqueue(queue, line),
        None => {
            let _ = std::io::stderr().write_all(&line);
        }
    }
}

/// Queues a line without waiting; a full queue drops it and counts the drop.
fn enqueue(queue: &SyncSender<Message>, line: Vec<u8>) {
    match queue.try_send(Message::Line(line)) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) => crate::metrics::log_lines_dropped(1),
        // The writer thread is gone (process exiting): write directly.
        Err(TrySendError::Disconnected(Message::Line(line))) => {
            let _ = std::io::stderr().write_all(&line);
        }
        Err(TrySendError::Disconnected(_)) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_drops_lines_and_counts_them_without_waiting() {
        let (queue, pending) = mpsc::sync_channel(2);
        let before = crate::metrics::log_lines_dropped_total();
        for i in 0..5 {
            enqueue(&queue, format!("line {i}\n").into_bytes());
        }
        assert_eq!(crate::metrics::log_lines_dropped_total() - before, 3);
        let kept: Vec<Vec<u8>> = pending
            .try_iter()
            .filter_map(|m| match m {
                Message::Line(l) => Some(l),
                Message::Flush(_) => None,
            })
            .collect();
        assert_eq!(kept, vec![b"line 0\n".to_vec(), b"line 1\n".to_vec()]);
    }
}
