//! TLS termination: certificates chosen by SNI per tenant, hot-reloaded from
//! their files, and the SNI/Host agreement every TLS request must meet.
//!
//! - [`certificate`]: reading and checking one PEM chain and key;
//! - [`coverage`]: warnings for tenant hosts a certificate does not name;
//! - [`store`]: the running set, swapped whole, with refusals kept;
//! - [`resolver`]: rustls' certificate choice from the handshake's SNI;
//! - [`server_name`](mod@server_name): the SNI kept on the connection, and the 421 check;
//! - [`listener`]: Pingora's TLS and HTTP/2 settings.

pub mod certificate;
pub mod coverage;
pub mod listener;
pub mod resolver;
pub mod server_name;
pub mod store;

pub use certificate::LoadedCert;
pub use server_name::{digest_server_name, misdirected, misdirected_name, server_name};
pub use store::{CertOwner, CertSet, CertStore};
