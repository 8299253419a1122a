//! The requests of one HTTP/2 connection still being worked on, reset or not.
//!
//! The h2 crate counts a stream closed as soon as the client resets it, and the client may
//! open another at once, while the reset request goes on: a cache fill runs to its end for
//! the cache. Reset at a steady pace (a few ms apart, below the h2 crate's burst limit), one
//! connection limited to 100 streams kept 1024 origin exchanges busy, the tenant's whole
//! origin budget (probe AG; the CVE-2023-44487 class). Over HTTP/1.1 a connection holds one
//! request until it ends. So every request of an HTTP/2 connection is counted from its head
//! until its work ends, and a new stream beyond twice `h2_max_concurrent_streams` of them
//! (a stream the client saw end may still be finishing here when it opens the next) is
//! refused with `REFUSED_STREAM`, which tells the client it was not processed and may be
//! retried (RFC 9113 §8.7). A HEAD answered at once whose fill goes on counts too: a
//! client sending HEADs at its stream limit would otherwise start fills without bound.

use parking_lot::Mutex;
use pingora::protocols::l4::socket::SocketAddr;
use std::collections::HashMap;
use std::sync::Arc;

/// One connection: the listener's address and the client's (unique while it is open).
type ConnectionId = (Option<SocketAddr>, Option<SocketAddr>);

pub struct H2Work {
    limit: usize,
    in_flight: Mutex<HashMap<ConnectionId, usize>>,
}

impl H2Work {
    /// At most `limit` requests at work per connection.
    pub fn new(limit: u32) -> Arc<Self> {
        Arc::new(Self {
            limit: limit.max(1) as usize,
            in_flight: Mutex::default(),
        })
    }

    /// Counts one more request of the connection `server` ← `client`, or `None` when it
    /// already has as many at work as it may have streams open.
    pub fn enter(
        self: &Arc<Self>,
        server: Option<&SocketAddr>,
        client: Option<&SocketAddr>,
    ) -> Option<H2WorkTurn> {
        let connection = (server.cloned(), client.cloned());
        let mut in_flight = self.in_flight.lock();
        let count = in_flight.entry(connection.clone()).or_default();
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(H2WorkTurn {
            work: self.clone(),
            connection,
        })
    }

    /// Requests at work on the connection (tests).
    #[cfg(test)]
    fn count(&self, connection: &ConnectionId) -> usize {
        self.in_flight.lock().get(connection).copied().unwrap_or(0)
    }
}

/// One request's place in its connection's count, given back when dropped (with the
/// request's context, once its work is over).
pub struct H2WorkTurn {
    work: Arc<H2Work>,
    connection: ConnectionId,
}

impl Drop for H2WorkTurn {
    fn drop(&mut self) {
        let mut in_flight = self.work.in_flight.lock();
        if let Some(count) = in_flight.get_mut(&self.connection) {
            *count -= 1;
            if *count == 0 {
                in_flight.remove(&self.connection);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_has_at_most_its_stream_limit_at_work() {
        let work = H2Work::new(2);
        let addr = |port: u16| SocketAddr::Inet(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
        let (server, client, other) = (addr(443), addr(50000), addr(50001));
        let first = work.enter(Some(&server), Some(&client)).unwrap();
        let second = work.enter(Some(&server), Some(&client)).unwrap();
        assert!(work.enter(Some(&server), Some(&client)).is_none());
        // Another connection has its own count.
        let elsewhere = work.enter(Some(&server), Some(&other)).unwrap();
        drop(first);
        let third = work.enter(Some(&server), Some(&client)).unwrap();
        drop((second, third, elsewhere));
        assert_eq!(work.count(&(Some(server), Some(client))), 0);
        assert!(work.in_flight.lock().is_empty());
    }
}
