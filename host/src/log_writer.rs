//! Log lines leave the request path: workers hand each formatted line to a
//! bounded queue and one background thread writes them to stderr in batches.
//! A worker never waits on stderr; when the writer falls behind, lines are
//! dropped and counted (`cachet_access_log_dropped_total`), as are the lines a
//! failed write loses. Not only access-log lines: a client or an origin can make
//! other lines per request too (Pingora's
//! error for each malformed head or broken origin, a plugin's own log lines), and
//! a slow stderr must not hold any request up. A line is cut at
//! [`MAX_LINE_BYTES`] (Pingora's errors may quote a whole origin buffer), so the
//! queue holds a bounded number of bytes.
//!
//! Until [`start`] runs (CLI subcommands, start-up before a daemon fork), lines go
//! to stderr at once.

use std::io::Write;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::OnceLock;
use std::time::Duration;

/// Lines queued at most (at ~150 bytes a line, about 1.2 MiB): far more than
/// arrive in one gather interval at any request rate this proxy reaches.
const QUEUE_LINES: usize = 8192;
/// The longest line written; longer ones are cut, saying how much was left out.
const MAX_LINE_BYTES: usize = 4096;
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

/// Writes what is queued, waiting at most [`FLUSH_TIMEOUT`] in all: a stalled stderr (a
/// paused terminal, a blocked log pipe) keeps the queue full, and a shutdown must still end.
pub fn flush() {
    let Some(queue) = QUEUE.get() else { return };
    let deadline = std::time::Instant::now() + FLUSH_TIMEOUT;
    let (done, wait) = mpsc::sync_channel(1);
    let mut message = Message::Flush(done);
    loop {
        match queue.try_send(message) {
            Ok(()) => break,
            Err(TrySendError::Full(back)) if std::time::Instant::now() < deadline => {
                message = back;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => return,
        }
    }
    let _ = wait.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()));
}

fn write_lines(rx: Receiver<Message>) {
    let mut batch = Vec::with_capacity(64 * 1024);
    // Blocks only while nothing is queued; then lets lines gather, so a busy
    // proxy wakes this thread (and pays a futex wake in a worker) about once
    // per interval instead of once per line.
    while let Ok(first) = rx.recv() {
        std::thread::sleep(GATHER_INTERVAL);
        let mut flushed = Vec::new();
        let mut lines = 0u64;
        for message in std::iter::once(first).chain(rx.try_iter().take(QUEUE_LINES)) {
            match message {
                Message::Line(line) => {
                    batch.extend_from_slice(&line);
                    lines += 1;
                }
                Message::Flush(done) => flushed.push(done),
            }
        }
        // stderr is locked only while writing, so direct writers still get a turn. Lines a
        // failed write loses (a full disk, a closed pipe) are counted as dropped too: there
        // is nowhere left to say so but the metric.
        if std::io::stderr().lock().write_all(&batch).is_err() {
            crate::metrics::log_lines_dropped(lines);
        }
        batch.clear();
        for done in flushed {
            let _ = done.send(());
        }
    }
}

/// The target of the per-request access-log events.
pub const ACCESS_TARGET: &str = "cachet::access";

/// The `tracing_subscriber` writer: one buffer per event, queued when the event
/// is complete.
#[derive(Clone, Copy, Default)]
pub struct QueuedStderr;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for QueuedStderr {
    type Writer = LineBuffer;

    fn make_writer(&'a self) -> LineBuffer {
        LineBuffer { bytes: Vec::new() }
    }
}

/// One log event's bytes.
pub struct LineBuffer {
    bytes: Vec<u8>,
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
        queue_line(std::mem::take(&mut self.bytes));
    }
}

/// Queues one access-log line (already formatted, newline included) for the
/// writer thread; before the writer starts it goes to stderr at once.
pub fn queue_access_line(line: Vec<u8>) {
    queue_line(line);
}

fn queue_line(line: Vec<u8>) {
    let line = cut_to_bound(line);
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

/// `line` itself, or its first [`MAX_LINE_BYTES`] (at a character boundary) and a note of
/// how many bytes were left out. A JSON line (`--log-format json`) stays one parseable
/// object: its longest strings are cut instead, so its other fields (level, status, path)
/// are kept whichever one was long.
fn cut_to_bound(line: Vec<u8>) -> Vec<u8> {
    if line.len() <= MAX_LINE_BYTES {
        return line;
    }
    if line.first() == Some(&b'{') {
        if let Some(cut) = cut_json_strings(&line) {
            return cut;
        }
    }
    cut_bytes(line)
}

/// The JSON object `line` holds, reserialized within [`MAX_LINE_BYTES`] with its longest
/// string values shortened, each saying how much it lost; `None` when `line` is not one
/// object or cannot be brought within the bound that way.
fn cut_json_strings(line: &[u8]) -> Option<Vec<u8>> {
    let mut object: serde_json::Value = serde_json::from_slice(line).ok()?;
    let mut size = line.len();
    // Each pass shortens the longest string by at least the excess (escapes may make the
    // serialized text longer than the string): a few passes always suffice.
    for _ in 0..8 {
        let excess = size.saturating_sub(MAX_LINE_BYTES);
        let longest = longest_string(&mut object)?;
        // Room for the note saying what was cut.
        let mut keep = longest.len().checked_sub(excess + 32)?;
        while !longest.is_char_boundary(keep) {
            keep -= 1;
        }
        let cut = longest.len() - keep;
        longest.truncate(keep);
        longest.push_str(&format!(" ... ({cut} bytes cut)"));
        let mut text = serde_json::to_vec(&object).ok()?;
        text.push(b'\n');
        if text.len() <= MAX_LINE_BYTES {
            return Some(text);
        }
        size = text.len();
    }
    None
}

/// The longest string value anywhere in `value`.
fn longest_string(value: &mut serde_json::Value) -> Option<&mut String> {
    match value {
        serde_json::Value::String(s) => Some(s),
        serde_json::Value::Array(items) => items
            .iter_mut()
            .filter_map(longest_string)
            .max_by_key(|s| s.len()),
        serde_json::Value::Object(fields) => fields
            .values_mut()
            .filter_map(longest_string)
            .max_by_key(|s| s.len()),
        _ => None,
    }
}

/// The first [`MAX_LINE_BYTES`] of `line` (at a character boundary) and a note of how many
/// bytes were left out.
fn cut_bytes(mut line: Vec<u8>) -> Vec<u8> {
    let mut keep = MAX_LINE_BYTES;
    // Never split a UTF-8 sequence: back up over continuation bytes.
    while keep > 0 && line[keep] & 0b1100_0000 == 0b1000_0000 {
        keep -= 1;
    }
    let cut = line.len() - keep;
    line.truncate(keep);
    line.extend_from_slice(format!(" ... ({cut} bytes cut)\n").as_bytes());
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lines_are_cut_at_a_character_boundary() {
        assert_eq!(cut_to_bound(b"short\n".to_vec()), b"short\n");
        // Two-byte characters after one ASCII byte: the bound falls inside a character.
        let long = "x".to_owned() + &"é".repeat(MAX_LINE_BYTES) + "\n";
        let cut = String::from_utf8(cut_to_bound(long.clone().into_bytes())).expect("still UTF-8");
        let kept = MAX_LINE_BYTES - 1;
        assert!(
            cut.ends_with(&format!(" ... ({} bytes cut)\n", long.len() - kept)),
            "{cut}"
        );
    }

    #[test]
    fn a_long_json_line_stays_one_object_with_every_field() {
        // An origin's broken head quoted whole in an error: the longest value by far.
        let error = format!("invalid response head, buf: {}", "\\x01".repeat(3000));
        let mut line = serde_json::json!({
            "fields": { "error": error, "message": "request", "path": "/a\"b", "status": 502 },
            "level": "INFO",
            "target": ACCESS_TARGET,
        })
        .to_string();
        line.push('\n');
        assert!(line.len() > MAX_LINE_BYTES);
        let cut = cut_to_bound(line.into_bytes());
        assert!(cut.len() <= MAX_LINE_BYTES, "{}", cut.len());
        assert_eq!(cut.last(), Some(&b'\n'));
        let parsed: serde_json::Value = serde_json::from_slice(&cut).expect("still JSON");
        assert_eq!(parsed["level"], "INFO");
        assert_eq!(parsed["fields"]["path"], "/a\"b");
        assert_eq!(parsed["fields"]["status"], 502);
        let kept = parsed["fields"]["error"].as_str().expect("error kept");
        assert!(
            kept.starts_with("invalid response head, buf: \\x01"),
            "{kept}"
        );
        assert!(kept.ends_with(" bytes cut)"), "{kept}");
    }

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
