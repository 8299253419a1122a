//! cachet: a caching HTTP reverse proxy whose cache policy is a sandboxed,
//! hot-swappable WebAssembly component.
//!
//! The binary `cachet` is a thin CLI over this library. A Pingora user can
//! embed the policy layer directly: [`policy`] loads and runs plugins,
//! [`proxy::CachetProxy`] is a complete `ProxyHttp`, and [`storage`] is the
//! bounded in-memory cache storage.

pub mod access_log;
pub mod admin;
pub mod config;
pub mod connection;
pub mod daemon;
mod demo_origin;
pub mod descriptors;
pub mod file_read;
pub mod front;
pub mod host_table;
pub mod log_writer;
pub mod metrics;
pub mod one_line;
pub mod policy;
pub mod proxy;
pub mod reload;
pub mod runtime_files;
pub mod server;
pub mod shadow;
pub mod shutdown;
pub mod storage;
pub mod tenant;
mod thread_index;
pub mod tls;
pub mod upstream;
