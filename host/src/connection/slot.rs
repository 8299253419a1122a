//! A client connection's place among `[server] max_connections`.
//!
//! Taken at the accept, before a TLS handshake, and held until the connection ends and the
//! work of its HTTP/2 streams with it. `cachet_connections_open` counts exactly these places,
//! so an operator (or a test) sees connections still in their handshake as the limit does.

use super::ListenerRole;
use tokio::sync::OwnedSemaphorePermit;

/// One taken place; dropping it gives it back and uncounts it.
pub struct ConnectionSlot {
    _permit: OwnedSemaphorePermit,
    role: ListenerRole,
}

impl ConnectionSlot {
    /// `permit`, counted as an open connection of `role`'s listeners.
    pub(super) fn taken(permit: OwnedSemaphorePermit, role: ListenerRole) -> Self {
        if role == ListenerRole::Clients {
            crate::metrics::connections_open(1);
        }
        Self {
            _permit: permit,
            role,
        }
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        if self.role == ListenerRole::Clients {
            crate::metrics::connections_open(-1);
        }
    }
}
