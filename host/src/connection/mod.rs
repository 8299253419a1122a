//! Per-connection bounds, applied below Pingora's HTTP parser.
//!
//! Pingora 0.9 buffers up to 1 MiB of request head per connection and accepts
//! any number of connections, so memory held by clients would be bounded by
//! nothing cachet configures. Two pieces close that:
//!
//! - [`ConnectionGuard`] wraps the proxy's `ServerApp`: it counts open
//!   connections against `[server] max_connections` (503 beyond) and wraps
//!   every accepted stream in a [`GuardedStream`];
//! - [`GuardedStream`] stops reading a request head at `[server]
//!   max_request_head` bytes and answers 431 itself, before Pingora's buffer
//!   can grow further. The proxy phases tell it where heads start and end
//!   ([`head_complete`], [`next_head`]). An HTTP/2 connection (ALPN `h2`,
//!   or the h2c peek on the plain listener) must start its preface within
//!   `h2_idle_timeout`; after that, HTTP/2 frames are Pingora's and the `h2`
//!   crate's to bound (`h2_max_header_list`, `h2_max_concurrent_streams`), and
//!   [`H2Work`] counts a connection's requests until their work ends, reset or not.
//!   An HTTP/2 connection's writes are coalesced (`coalesce`): responses that finish
//!   together leave in one TLS record and one system call.
//!
//! Both listeners, plain and TLS, share one guard and so one connection count. The admin
//! and metrics listeners have a guard each ([`ListenerRole::Operators`]), with a deadline
//! on every head, and their apps mark heads through [`OperatorApp`]; one peer address holds
//! a few of their connections at most (`per_peer`).
//!
//! The bound is therefore `max_connections × max_request_head` of head
//! buffers, on top of the cache's byte budget.

mod coalesce;
mod guard;
mod h2_work;
mod operator;
mod per_peer;
mod slot;
mod stream;

pub use guard::{ConnectionGuard, ConnectionLimits, ListenerRole};
pub use h2_work::{H2Work, H2WorkTurn};
pub use operator::OperatorApp;
pub(crate) use slot::ConnectionSlot;
pub(crate) use stream::{connection_slot, head_held, H2_PREFACE, HEAD_TIMED_OUT, TOO_LARGE};
pub use stream::{head_complete, next_head, request_answered, GuardedStream};
