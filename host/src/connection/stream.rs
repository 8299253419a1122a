//! A downstream stream that bounds how many bytes a request head may take.

use super::coalesce::Coalescer;
use super::{ConnectionLimits, ListenerRole};
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::SslDigest;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use pingora::proxy::Session;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// What a client gets when its request head is over the limit (the body is 30 bytes).
pub(crate) const TOO_LARGE: &[u8] = b"HTTP/1.1 431 Request Header Fields Too Large\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
Content-Length: 30\r\n\
Connection: close\r\n\
\r\n\
the request head is too large\n";

/// What a client gets when its request head is not whole within `request_head_timeout`
/// (the body is 42 bytes).
pub(crate) const HEAD_TIMED_OUT: &[u8] = b"HTTP/1.1 408 Request Timeout\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
Content-Length: 42\r\n\
Connection: close\r\n\
\r\n\
the request head was not received in time\n";

/// `GuardedStream::signal` values: nothing new, a head was parsed, (this plus the bytes
/// of it already read) the next request's head is expected, or Pingora holds the start of
/// the next head ([`head_held`]).
const NO_SIGNAL: usize = 0;
const HEAD_DONE: usize = 1;
const HEAD_EXPECTED: usize = 2;
const HEAD_HELD: usize = usize::MAX;

/// The HTTP/2 connection preface (RFC 9113 §3.4); HTTP/2 frames are not heads.
pub(crate) const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Where the connection is in its request/response cycle, as far as reading goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading a request head: reads are capped by the remaining budget.
    Head { read: usize },
    /// The head was parsed; bodies and pipelined bytes are Pingora's to bound.
    Body,
    /// HTTP/2 (framed, with its own header limits) or another protocol.
    Unbounded,
    /// Refusing the head (431 over the limit, 408 too slow): `written` bytes of `answer`
    /// so far.
    Refusing {
        answer: &'static [u8],
        written: usize,
    },
    /// The refusal is written; every later read is end-of-stream.
    Closed,
}

/// A stream holding one of the server's connection slots and a head budget.
pub struct GuardedStream {
    inner: Stream,
    max_head: usize,
    phase: Phase,
    /// The last thing the proxy phases or the front signalled (through a shared reference)
    /// since the last read: [`NO_SIGNAL`], [`HEAD_DONE`], [`HEAD_EXPECTED`] plus how many
    /// bytes of the next head were already read, or [`HEAD_HELD`]. Only the last counts:
    /// signals come in the connection's order, and a pipelined request may end and the next
    /// one's head be parsed with no read between (a head held and then parsed whole from
    /// what Pingora holds is done, its reads after it body, not head).
    signal: AtomicUsize,
    /// Counts the connection as open for as long as the stream lives, and as long as the
    /// work of its HTTP/2 streams runs ([`connection_slot`]).
    slot: Arc<super::ConnectionSlot>,
    /// On an operator listener, the slot of the peer's address ([`super::per_peer`]), held
    /// for as long as the stream lives.
    _peer_slot: Option<super::per_peer::PeerSlot>,
    role: ListenerRole,
    /// How long a head may take (`request_head_timeout`), where this stream bounds it.
    head_timeout: Duration,
    /// Running while a head is awaited that must be whole before it fires: on an operator
    /// listener every head (idle wait included); on a client listener a head whose start
    /// Pingora holds ([`head_held`]), from the first read for its rest.
    head_timer: Option<Pin<Box<Sleep>>>,
    /// How long an HTTP/2 client may take to send its preface (Pingora and
    /// the `h2` crate wait for it without limit).
    preface_limit: Duration,
    /// Running until the whole preface of a connection ALPN made HTTP/2 came: a client that
    /// sends part of it would otherwise hold its slot for ever (the `h2` crate waits).
    preface_timer: Option<Pin<Box<Sleep>>>,
    /// Bytes of that preface still to come.
    preface_left: usize,
    /// Bytes a peek read (`try_peek`), given back by the next reads before any new ones.
    peeked: bytes::BytesMut,
    /// On an h2c listener, how many bytes of the HTTP/2 preface the connection's first bytes
    /// matched so far; `None` once they cannot be it (or h2c is off, or TLS). Only the whole
    /// preface makes the connection HTTP/2: anything else is a head, bounded like any head.
    preface_matched: Option<usize>,
    /// An HTTP/2 connection's writes, gathered so that responses finishing together leave in
    /// one TLS record and one system call (`None` until the connection is HTTP/2).
    coalescer: Option<Coalescer>,
}

impl GuardedStream {
    pub(super) fn new(
        inner: Stream,
        limits: &ConnectionLimits,
        slot: super::ConnectionSlot,
        peer_slot: Option<super::per_peer::PeerSlot>,
    ) -> Self {
        let preface_limit = limits.h2_preface_timeout;
        let h2 = matches!(inner.selected_alpn_proto(), Some(ALPN::H2));
        let preface_matched = (limits.h2c && !h2 && inner.get_ssl_digest().is_none()).then_some(0);
        let phase = if h2 {
            Phase::Unbounded
        } else {
            Phase::Head { read: 0 }
        };
        let preface_timer = h2.then(|| Box::pin(tokio::time::sleep(preface_limit)));
        Self {
            inner,
            max_head: limits.max_request_head,
            phase,
            signal: AtomicUsize::new(NO_SIGNAL),
            slot: Arc::new(slot),
            _peer_slot: peer_slot,
            role: limits.role,
            head_timeout: limits.head_timeout,
            head_timer: None,
            preface_limit,
            preface_timer,
            preface_left: super::H2_PREFACE.len(),
            peeked: bytes::BytesMut::new(),
            preface_matched,
            coalescer: h2.then(Coalescer::default),
        }
    }

    /// The first reads of an HTTP/2 connection: end of stream when the whole preface has
    /// not come within `preface_limit`.
    fn poll_preface(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        if let Poll::Ready(result) = self.poll_inner(cx, buf) {
            let read = buf.filled().len() - before;
            self.preface_left = self.preface_left.saturating_sub(read);
            if result.is_err() || read == 0 || self.preface_left == 0 {
                self.preface_timer = None;
            }
            return Poll::Ready(result);
        }
        match self.preface_timer.as_mut().map(|t| t.as_mut().poll(cx)) {
            Some(Poll::Ready(())) => {
                self.preface_timer = None;
                self.phase = Phase::Closed;
                Poll::Ready(Ok(()))
            }
            _ => Poll::Pending,
        }
    }

    /// Applies what the proxy phases signalled last since the last read.
    fn sync_phase(&mut self) {
        match std::mem::replace(self.signal.get_mut(), NO_SIGNAL) {
            NO_SIGNAL => {}
            HEAD_HELD => {
                // What follows the held bytes is more of that head (after a request, the
                // next one's), bounded in time as the front bounds the heads it reads.
                if self.phase == Phase::Body {
                    self.phase = Phase::Head { read: 0 };
                }
                if let Phase::Head { .. } = self.phase {
                    self.head_timer = Some(Box::pin(tokio::time::sleep(self.head_timeout)));
                }
            }
            HEAD_DONE => {
                self.head_timer = None;
                if let Phase::Head { .. } = self.phase {
                    self.phase = Phase::Body;
                }
            }
            expected => {
                // The next head's time starts at its first read.
                self.head_timer = None;
                if let Phase::Head { .. } | Phase::Body = self.phase {
                    self.phase = Phase::Head {
                        read: expected - HEAD_EXPECTED,
                    };
                }
            }
        }
    }

    /// Reads from the connection: first what a peek read, then the socket.
    fn poll_inner(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.peeked.is_empty() {
            let n = self.peeked.len().min(buf.remaining());
            buf.put_slice(&self.peeked.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }

    /// Reads at most `most` bytes into `buf`; the poll and how many bytes it read.
    fn poll_read_at_most(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
        most: usize,
    ) -> (Poll<io::Result<()>>, usize) {
        let mut limited = buf.take(most.min(buf.remaining()));
        let poll = self.poll_inner(cx, &mut limited);
        let filled = limited.filled().len();
        // SAFETY: `limited` wrote `filled` initialised bytes into `buf`'s unfilled part,
        // which `take` borrowed from.
        unsafe { buf.assume_init(filled) };
        buf.advance(filled);
        (poll, filled)
    }

    /// Writes the refusal; Ready(Ok) once all of it is written.
    fn poll_refuse(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Phase::Refusing { answer, written } = self.phase {
            if written == answer.len() {
                break;
            }
            match Pin::new(&mut self.inner).poll_write(cx, &answer[written..]) {
                Poll::Ready(Ok(0)) => break,
                Poll::Ready(Ok(n)) => {
                    self.phase = Phase::Refusing {
                        answer,
                        written: written + n,
                    }
                }
                Poll::Ready(Err(e)) => {
                    self.phase = Phase::Closed;
                    return Poll::Ready(Err(e));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(_) => {
                self.phase = Phase::Closed;
                Poll::Ready(Ok(()))
            }
        }
    }

    /// Whether the head awaited now is out of time: on an operator listener, the timer
    /// armed at the first read for it; on a client listener, one armed for a head Pingora
    /// holds the start of. The phase is then set to refuse it, or to end the connection
    /// when none of it came (an operator's connection idle too long).
    fn head_out_of_time(&mut self, cx: &mut Context<'_>, read: usize) -> bool {
        let operators = self.role == ListenerRole::Operators;
        if operators && self.head_timer.is_none() {
            self.head_timer = Some(Box::pin(tokio::time::sleep(self.head_timeout)));
        }
        let Some(timer) = self.head_timer.as_mut() else {
            return false;
        };
        if timer.as_mut().poll(cx).is_pending() {
            return false;
        }
        self.head_timer = None;
        self.phase = if read == 0 && operators {
            Phase::Closed
        } else {
            self.role.refused("head_timeout");
            Phase::Refusing {
                answer: HEAD_TIMED_OUT,
                written: 0,
            }
        };
        true
    }
}

/// How much of the HTTP/2 preface the connection's first bytes match after `read`, given
/// `matched` bytes matched before it; `None` when they stray from it.
fn preface_progress(matched: usize, read: &[u8]) -> Option<usize> {
    let want = &H2_PREFACE[matched..];
    let n = read.len().min(want.len());
    (read[..n] == want[..n]).then_some(matched + n)
}

/// Called when a request head has been parsed (the first proxy phase).
pub fn head_complete(session: &Session) {
    if let Some(stream) = guarded(session) {
        stream.signal.store(HEAD_DONE, Ordering::Relaxed);
    }
}

/// The connection slot `stream` holds, shared: an HTTP/2 connection's streams keep it
/// until their work ends, so a client that closes its connection while its requests still
/// run at the origin has not freed a slot for a new connection with a fresh work bound.
pub(crate) fn connection_slot(stream: &Stream) -> Option<Arc<super::ConnectionSlot>> {
    let stream = stream.as_any().downcast_ref::<GuardedStream>()?;
    Some(stream.slot.clone())
}

/// Called by an operator app ([`super::OperatorApp`]) when Pingora has read a request head.
pub(super) fn head_read(stream: &Stream) {
    if let Some(stream) = stream.as_any().downcast_ref::<GuardedStream>() {
        stream.signal.store(HEAD_DONE, Ordering::Relaxed);
    }
}

/// Called when a request is finished: what is read next is a new head. (Bytes of it that
/// Pingora already holds are not counted: it reads pipelined heads with its own bound.)
pub fn next_head(session: &Session) {
    if let Some(stream) = guarded(session) {
        stream.signal.store(HEAD_EXPECTED, Ordering::Relaxed);
    }
}

/// Called by the front when it leaves Pingora a head to read from bytes Pingora holds (read
/// past the request it served, or handed over by the front), which may not be whole: if
/// Pingora must read more of it, that head must be whole within `head_timeout`. (Pingora's
/// own wait for the rest is bounded by nothing: its keep-alive wait applies per read, and
/// is unbounded after a request that asked for none.) A head Pingora parses from what it
/// holds signals [`head_complete`] after this, so nothing after it is held to the bound.
pub(crate) fn head_held(stream: &Stream) {
    if let Some(stream) = stream.as_any().downcast_ref::<GuardedStream>() {
        stream.signal.store(HEAD_HELD, Ordering::Relaxed);
    }
}

/// Called by the front when it answered a request itself, holding `already_read` bytes of
/// the next head: those count toward its budget.
pub fn request_answered(stream: &Stream, already_read: usize) {
    if let Some(stream) = stream.as_any().downcast_ref::<GuardedStream>() {
        let signal = HEAD_EXPECTED.saturating_add(already_read);
        stream.signal.store(signal, Ordering::Relaxed);
    }
}

fn guarded(session: &Session) -> Option<&GuardedStream> {
    session.stream()?.as_any().downcast_ref::<GuardedStream>()
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.preface_timer.is_some() {
            return this.poll_preface(cx, buf);
        }
        this.sync_phase();
        loop {
            match this.phase {
                Phase::Unbounded => return this.poll_inner(cx, buf),
                Phase::Body => {
                    // Pingora keeps what it reads past a body as the start of the next head,
                    // which this count never sees (it reads a chunked body 64 KiB at a time):
                    // capped, that start is less than one head's budget.
                    return this.poll_read_at_most(cx, buf, this.max_head).0;
                }
                Phase::Closed => return Poll::Ready(Ok(())),
                Phase::Refusing { .. } => {
                    // End of stream for Pingora once the answer is out.
                    return this.poll_refuse(cx);
                }
                Phase::Head { read } if read >= this.max_head => {
                    this.role.refused("head_too_large");
                    this.phase = Phase::Refusing {
                        answer: TOO_LARGE,
                        written: 0,
                    };
                }
                Phase::Head { read } => {
                    // Never let Pingora's head buffer hold more than the budget.
                    let before = buf.filled().len();
                    let (poll, filled) = this.poll_read_at_most(cx, buf, this.max_head - read);
                    if poll.is_pending() && this.head_out_of_time(cx, read) {
                        continue;
                    }
                    let preface = this.preface_matched.and_then(|matched| {
                        preface_progress(matched, &buf.filled()[before..before + filled])
                    });
                    this.preface_matched = preface.filter(|&m| m < H2_PREFACE.len());
                    this.phase = if preface == Some(H2_PREFACE.len()) {
                        this.coalescer = Some(Coalescer::default());
                        Phase::Unbounded
                    } else {
                        Phase::Head {
                            read: read + filled,
                        }
                    };
                    return poll;
                }
            }
        }
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match &mut this.coalescer {
            Some(coalescer) => coalescer.poll_write(&mut this.inner, cx, data),
            None => Pin::new(&mut this.inner).poll_write(cx, data),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match &mut this.coalescer {
            Some(coalescer) => coalescer.poll_write_vectored(&mut this.inner, cx, bufs),
            None => Pin::new(&mut this.inner).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.coalescer.is_some() || self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match &mut this.coalescer {
            Some(coalescer) => coalescer.poll_flush(&mut this.inner, cx),
            None => Pin::new(&mut this.inner).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(coalescer) = &mut this.coalescer {
            std::task::ready!(coalescer.poll_drain(&mut this.inner, cx))?;
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

// Everything Pingora asks of a stream is the inner stream's answer.

#[async_trait::async_trait]
impl Shutdown for GuardedStream {
    async fn shutdown(&mut self) {
        if let Some(coalescer) = &mut self.coalescer {
            let inner = &mut self.inner;
            let _ = std::future::poll_fn(|cx| coalescer.poll_drain(inner, cx)).await;
        }
        self.inner.shutdown().await
    }
}

impl UniqueID for GuardedStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for GuardedStream {
    fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for GuardedStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> std::time::Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> std::time::Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for GuardedStream {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for GuardedStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait::async_trait]
impl Peek for GuardedStream {
    /// The front and Pingora peek for the h2c preface before anything else. Pingora's own
    /// peek waits for all 24 bytes (a complete HTTP/1 request shorter than that was never
    /// answered, and a timeout lost the bytes it had read). This one stops as soon as the
    /// bytes stop matching the preface (the rest of `buf` left as it was: it cannot equal
    /// the preface), keeps what it read for the reads that follow, and waits at most
    /// `h2_idle_timeout` for more.
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        use tokio::io::AsyncReadExt;
        let wanted = buf.len();
        let filling = async {
            while self.peeked.len() < wanted && super::H2_PREFACE.starts_with(&self.peeked) {
                let mut more = [0u8; 64];
                let room = (wanted - self.peeked.len()).min(more.len());
                match self.inner.read(&mut more[..room]).await? {
                    0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                    n => self.peeked.extend_from_slice(&more[..n]),
                }
            }
            Ok(())
        };
        match tokio::time::timeout(self.preface_limit, filling).await {
            Ok(Ok(())) => {
                let n = self.peeked.len().min(wanted);
                buf[..n].copy_from_slice(&self.peeked[..n]);
                Ok(true)
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no request bytes within h2_idle_timeout",
            )),
        }
    }
}

impl std::fmt::Debug for GuardedStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardedStream")
            .field("inner", &self.inner)
            .field("phase", &self.phase)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::{preface_progress, H2_PREFACE, HEAD_TIMED_OUT, TOO_LARGE};

    #[test]
    fn refusals_are_framed_correctly() {
        for answer in [TOO_LARGE, HEAD_TIMED_OUT] {
            let text = std::str::from_utf8(answer).expect("ascii");
            let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .expect("content-length")
                .parse()
                .expect("number");
            assert_eq!(length, body.len(), "{text}");
        }
    }

    #[test]
    fn only_the_whole_preface_makes_a_connection_http2() {
        assert_eq!(preface_progress(0, b"PRI"), Some(3));
        assert_eq!(preface_progress(3, b" * HTTP/2.0\r\n"), Some(16));
        assert_eq!(preface_progress(16, b"\r\nSM\r\n\r\n\0\0\x12"), Some(24));
        assert_eq!(preface_progress(0, H2_PREFACE), Some(H2_PREFACE.len()));
        // A head that starts the same way strays from it.
        assert_eq!(preface_progress(3, b" /x HTTP/1.1\r\n"), None);
        assert_eq!(preface_progress(0, b"GET / HTTP/1.1"), None);
    }
}
