//! Write coalescing for HTTP/2 connections.
//!
//! Pingora runs each HTTP/2 stream as its own task, and every stream that finishes wakes the
//! connection's task, which tokio runs next (its LIFO slot): the connection then encodes and
//! flushes that one response alone. A client with four requests in flight got four TLS records
//! and four `sendto` calls where one would do, and under load the kernel's share of a hit
//! was mostly those sends. Here a connection's writes collect in a bounded buffer, and a flush
//! with bytes waiting first lets the tasks already runnable (the other streams' responses)
//! run once: the next flush sends everything they added in one record and one system call.
//! The delay is one pass of the runtime's queue, never a timer.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::AsyncWrite;

/// Bytes held before they are written on without waiting for a flush: the largest TLS
/// record's payload, so a full buffer is one record.
pub(super) const COALESCE_LIMIT: usize = 16 * 1024;

/// The buffer's first allocation in a batch: a few small responses.
const FIRST_CAPACITY: usize = 4 * 1024;

/// A connection's unsent bytes and where its flush stands.
#[derive(Debug, Default)]
pub(super) struct Coalescer {
    buf: Vec<u8>,
    /// How much of `buf` the inner stream has taken (a partial write leaves the rest).
    sent: usize,
    /// The flush in progress already gave the runnable tasks their turn.
    deferred: bool,
}

impl Coalescer {
    fn pending(&self) -> usize {
        self.buf.len() - self.sent
    }

    /// Takes `data` into the buffer, or writes it straight on when it alone fills the
    /// buffer (a large DATA frame is not copied).
    pub(super) fn poll_write<W: AsyncWrite + Unpin>(
        &mut self,
        inner: &mut W,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(inner, cx, &[io::IoSlice::new(data)])
    }

    /// As [`Self::poll_write`], for several slices (the h2 codec writes a frame head and its
    /// payload as two).
    pub(super) fn poll_write_vectored<W: AsyncWrite + Unpin>(
        &mut self,
        inner: &mut W,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if self.pending() + total > COALESCE_LIMIT {
            ready!(self.poll_drain(inner, cx))?;
            if total >= COALESCE_LIMIT {
                return Pin::new(inner).poll_write_vectored(cx, bufs);
            }
        }
        if self.buf.capacity() == 0 {
            self.buf.reserve(FIRST_CAPACITY.max(total));
        }
        for slice in bufs {
            self.buf.extend_from_slice(slice);
        }
        Poll::Ready(Ok(total))
    }

    /// Flushes: the first call with bytes waiting yields once (the task is woken again at
    /// once, behind the tasks already queued), the next writes them and flushes the stream.
    pub(super) fn poll_flush<W: AsyncWrite + Unpin>(
        &mut self,
        inner: &mut W,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pending() > 0 && !self.deferred {
            self.deferred = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        ready!(self.poll_drain(inner, cx))?;
        self.deferred = false;
        Pin::new(inner).poll_flush(cx)
    }

    /// Writes every buffered byte to `inner` (not flushing it).
    pub(super) fn poll_drain<W: AsyncWrite + Unpin>(
        &mut self,
        inner: &mut W,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        while self.pending() > 0 {
            let n = ready!(Pin::new(&mut *inner).poll_write(cx, &self.buf[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        // Released, not kept: an idle connection holds no buffer (the next batch's
        // allocation costs far less than the system call it saves).
        self.buf = Vec::new();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::task::Wake;

    /// Records every write and flush it gets.
    #[derive(Default)]
    struct Recorder {
        writes: Vec<Vec<u8>>,
        flushes: usize,
        /// Accept at most this many bytes per write.
        chunk: Option<usize>,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = self.chunk.map_or(data.len(), |c| c.min(data.len()));
            self.get_mut().writes.push(data[..n].to_vec());
            Poll::Ready(Ok(n))
        }

        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.get_mut().flushes += 1;
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[derive(Default)]
    struct CountWakes(Mutex<usize>);

    impl Wake for CountWakes {
        fn wake(self: Arc<Self>) {
            *self.0.lock().unwrap() += 1;
        }
    }

    fn write(c: &mut Coalescer, inner: &mut Recorder, cx: &mut Context<'_>, data: &[u8]) {
        match c.poll_write(inner, cx, data) {
            Poll::Ready(Ok(n)) => assert_eq!(n, data.len()),
            other => panic!("write: {other:?}"),
        }
    }

    #[test]
    fn a_flush_waits_one_turn_then_sends_everything_written_meanwhile_at_once() {
        let wakes = Arc::new(CountWakes::default());
        let waker = wakes.clone().into();
        let mut cx = Context::from_waker(&waker);
        let (mut c, mut inner) = (Coalescer::default(), Recorder::default());
        write(&mut c, &mut inner, &mut cx, b"first ");
        assert!(c.poll_flush(&mut inner, &mut cx).is_pending());
        assert_eq!(
            *wakes.0.lock().unwrap(),
            1,
            "the task is woken for its next turn"
        );
        assert!(inner.writes.is_empty() && inner.flushes == 0);
        write(&mut c, &mut inner, &mut cx, b"second");
        assert!(matches!(
            c.poll_flush(&mut inner, &mut cx),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(inner.writes, vec![b"first second".to_vec()]);
        assert_eq!(inner.flushes, 1);
        // Nothing waiting: a flush goes straight through.
        assert!(c.poll_flush(&mut inner, &mut cx).is_ready());
        assert_eq!(inner.flushes, 2);
    }

    #[test]
    fn the_buffer_is_bounded_and_large_writes_are_not_copied() {
        let waker = Arc::new(CountWakes::default()).into();
        let mut cx = Context::from_waker(&waker);
        let (mut c, mut inner) = (Coalescer::default(), Recorder::default());
        let small = vec![1u8; COALESCE_LIMIT - 10];
        write(&mut c, &mut inner, &mut cx, &small);
        assert!(inner.writes.is_empty());
        // Over the limit: what is held goes first, then the new bytes are held.
        write(&mut c, &mut inner, &mut cx, &[2u8; 20]);
        assert_eq!(inner.writes, vec![small.clone()]);
        assert_eq!(c.pending(), 20);
        // A write as large as the buffer drains it and goes straight on.
        let large = vec![3u8; COALESCE_LIMIT];
        write(&mut c, &mut inner, &mut cx, &large);
        assert_eq!(inner.writes, vec![small, vec![2u8; 20], large]);
        assert_eq!(c.pending(), 0);
    }

    #[test]
    fn partial_writes_of_the_inner_stream_lose_nothing() {
        let waker = Arc::new(CountWakes::default()).into();
        let mut cx = Context::from_waker(&waker);
        let mut c = Coalescer::default();
        let mut inner = Recorder {
            chunk: Some(3),
            ..Recorder::default()
        };
        let slices = [io::IoSlice::new(b"head"), io::IoSlice::new(b"payload")];
        assert!(matches!(
            c.poll_write_vectored(&mut inner, &mut cx, &slices),
            Poll::Ready(Ok(11))
        ));
        assert!(c.poll_flush(&mut inner, &mut cx).is_pending());
        assert!(c.poll_flush(&mut inner, &mut cx).is_ready());
        assert_eq!(inner.writes.concat(), b"headpayload");
        assert_eq!(inner.writes.len(), 4);
    }
}
