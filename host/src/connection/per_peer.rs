//! A cap on the connections one peer address holds on an operator listener.
//!
//! Why: the admin and metrics listeners have a few connection slots each, taken before any
//! token is checked. One peer that opened them all and sent nothing kept the admin API
//! (reload, purge, status) from operators holding the token until each connection's head
//! timed out, and could open them again at once. One address now holds at most
//! [`PER_PEER`]. An IPv6 peer is counted by its /64 network: one host is usually given a
//! whole /64 and can pick a new address in it for every connection. Loopback peers are not
//! capped: every local user shares those addresses, so a cap would only limit the operator's
//! own tools.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

/// Connections one peer address may hold on one operator listener.
pub(super) const PER_PEER: usize = 8;

/// The connections each peer address holds on one listener.
#[derive(Default)]
pub(super) struct PeerCap {
    held: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection of `peer`'s; dropped with the connection.
pub struct PeerSlot {
    cap: Arc<PeerCap>,
    peer: IpAddr,
}

impl PeerCap {
    /// A slot for a connection from `peer`, unless it holds [`PER_PEER`] already. Loopback
    /// peers need none (`Some(None)`).
    pub(super) fn take(self: &Arc<Self>, peer: IpAddr) -> Option<Option<PeerSlot>> {
        if peer.is_loopback() || peer.to_canonical().is_loopback() {
            return Some(None);
        }
        let peer = network_of(peer);
        let mut held = self.held.lock();
        let count = held.entry(peer).or_default();
        if *count >= PER_PEER {
            return None;
        }
        *count += 1;
        Some(Some(PeerSlot {
            cap: self.clone(),
            peer,
        }))
    }
}

/// What one peer is counted by: an IPv4 address (an IPv4-mapped IPv6 one too), or an IPv6
/// address's /64 network.
fn network_of(peer: IpAddr) -> IpAddr {
    match peer.to_canonical() {
        IpAddr::V6(address) => {
            let network = u128::from(address) & !(u128::from(u64::MAX));
            IpAddr::V6(network.into())
        }
        v4 => v4,
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut held = self.cap.held.lock();
        if let Some(count) = held.get_mut(&self.peer) {
            *count -= 1;
            // Only addresses holding connections stay: the map is bounded by the slots.
            if *count == 0 {
                held.remove(&self.peer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_address_holds_at_most_its_share_and_gets_it_back() {
        let cap = Arc::new(PeerCap::default());
        let peer: IpAddr = "192.0.2.7".parse().unwrap();
        let mut slots: Vec<_> = (0..PER_PEER).map(|_| cap.take(peer).unwrap()).collect();
        assert!(slots.iter().all(Option::is_some));
        assert!(cap.take(peer).is_none(), "one past the share");
        // Another address is not held back by the first.
        assert!(cap.take("192.0.2.8".parse().unwrap()).unwrap().is_some());
        slots.pop();
        assert!(
            cap.take(peer).unwrap().is_some(),
            "a closed connection frees its slot"
        );
        drop(slots);
        assert!(cap.held.lock().is_empty(), "{:?}", cap.held.lock());
    }

    #[test]
    fn loopback_peers_are_not_capped() {
        let cap = Arc::new(PeerCap::default());
        for peer in ["127.0.0.1", "127.0.0.2", "::1", "::ffff:127.0.0.1"] {
            let peer: IpAddr = peer.parse().unwrap();
            for _ in 0..2 * PER_PEER {
                assert!(matches!(cap.take(peer), Some(None)), "{peer}");
            }
        }
        assert!(cap.held.lock().is_empty());
    }

    #[test]
    fn an_ipv6_peer_is_counted_by_its_64_network_and_a_mapped_ipv4_one_by_its_address() {
        let cap = Arc::new(PeerCap::default());
        let slots: Vec<_> = (0..PER_PEER)
            .map(|i| cap.take(format!("2001:db8:1:2::{i:x}").parse().unwrap()))
            .collect();
        assert!(slots.iter().all(|slot| matches!(slot, Some(Some(_)))));
        let same_network: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        assert!(
            cap.take(same_network).is_none(),
            "a new address in a full /64"
        );
        let next_network: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert!(cap.take(next_network).unwrap().is_some());

        let ipv4: IpAddr = "192.0.2.7".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        let ipv4_slots: Vec<_> = (0..PER_PEER / 2)
            .flat_map(|_| [cap.take(ipv4), cap.take(mapped)])
            .collect();
        assert!(ipv4_slots.iter().all(|slot| matches!(slot, Some(Some(_)))));
        assert!(cap.take(ipv4).is_none(), "both spellings count as one peer");
    }
}
