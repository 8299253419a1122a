//! Write cache policies for the cachet reverse proxy as plain Rust.
//!
//! A policy is a type implementing [`Policy`] plus one [`export_policy!`] line.
//! Every hook has a default, so a policy overrides only what it changes:
//!
//! ```
//! use cachet_sdk::prelude::*;
//!
//! #[derive(Default)]
//! struct ShortLivedApi;
//!
//! impl Policy for ShortLivedApi {
//!     fn on_request(&self, req: &Request) -> RequestDecision {
//!         if req.may_carry_cookie("session") {
//!             return RequestDecision::bypass("logged-in user");
//!         }
//!         defaults::on_request(req)
//!     }
//!
//!     fn on_response(&self, _req: &Request, resp: &Response) -> ResponseDecision {
//!         if resp.cache_control().no_store() {
//!             return ResponseDecision::no_store("origin sent no-store");
//!         }
//!         ResponseDecision::store(Duration::from_secs(10))
//!     }
//! }
//!
//! cachet_sdk::export_policy!(ShortLivedApi);
//!
//! // Natively the same code runs against in-memory requests, so policies are
//! // unit-tested with plain `cargo test`:
//! let req = Request::builder()
//!     .uri("http://example.com/a?b=1")
//!     .header("Cookie", "session=abc")
//!     .build();
//! assert_eq!(
//!     ShortLivedApi.on_request(&req),
//!     RequestDecision::bypass("logged-in user")
//! );
//! ```
//!
//! A policy can also declare test vectors ([`Policy::self_test`], built with
//! [`TestVector`]): the host runs them before a new plugin version may serve,
//! and `testing::check_self_tests` runs the same list under `cargo test`.
//!
//! Build the plugin crate (`crate-type = ["cdylib"]`) with `cachet build`: it
//! compiles for `wasm32-unknown-unknown` (no WASI imports) and wraps the module
//! into a component implementing the `cachet:policy@0.3.0` world.
//!
//! On `wasm32` a [`Request`] or [`Response`] holds the head the host handed
//! the hook (the header fields stay one string, searched by name), and
//! [`config`] reads the settings the host handed the instance. When the
//! request is not edited, its key goes back with the decision and the host
//! makes no separate `cache-key` call. On other targets they hold in-memory
//! values built with [`Request::builder`] and [`Response::builder`]; [`config`]
//! and [`log`] are backed by the native-only `testing` module.

#![warn(missing_docs)]

#[cfg(all(target_arch = "wasm32", feature = "arena-allocator"))]
mod allocator;
// Compiled on every target so that its tests run natively.
#[cfg_attr(
    not(all(target_arch = "wasm32", feature = "arena-allocator")),
    allow(dead_code)
)]
mod bump;
mod cache_control;
mod config;
mod cookie;
mod credentials;
mod decision;
pub mod defaults;
mod edits;
mod export;
mod header_list;
pub mod log;
mod percent;
mod policy;
pub mod prelude;
mod query;
mod request;
mod response;
mod response_directives;
mod self_test;
mod structured;
mod uri;

#[cfg(not(target_arch = "wasm32"))]
pub mod testing;

#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod __private;

#[cfg(not(target_arch = "wasm32"))]
#[doc(hidden)]
pub mod __private {
    /// Lets the native `export_policy!` check its argument at compile time.
    pub fn assert_policy<P: crate::Policy>() {}
}

pub use cache_control::CacheControl;
pub use config::config;
pub use credentials::names_a_credential;
pub use decision::{RequestDecision, ResponseDecision, StoreDirective, SyntheticResponse};
pub use edits::{HeaderEdit, HeaderEdits, OriginFailure, RequestEdits};
pub use policy::Policy;
pub use query::{Query, QueryParam};
pub use request::{Request, RequestBuilder};
pub use response::{Response, ResponseBuilder};
pub use response_directives::{DirectiveField, ResponseDirectives};
pub use self_test::{ExpectedRequest, ExpectedResponse, TestRequest, TestResponse, TestVector};
