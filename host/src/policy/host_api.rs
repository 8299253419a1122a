//! What the host grants a plugin: the request/response resources, logging and
//! the tenant's configuration values (0.1.0, 0.2.0), or logging alone (0.3.0).
//! Nothing else is linked for policy code.

use super::bindings::{v1, v2, v3};
use super::call_scope::{CallScope, LogLine, MAX_LOG_LINES_PER_CALL};
use super::limits::MemoryLimiter;
use super::TenantContext;
use std::sync::Arc;
use wasmtime::component::{Resource, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// The data of one plugin `Store`.
pub(crate) struct HostState {
    pub scope: CallScope,
    pub limiter: MemoryLimiter,
    pub tenant: Arc<TenantContext>,
    /// WASI for components built for wasm32-wasip2, whose standard library
    /// may ask for random seeds or clocks. Empty: no preopened directories,
    /// no environment, no arguments, no network. Built on the first WASI call
    /// only: most hook calls make none, and a fresh instance per request
    /// would otherwise pay for a context (RNG seeding, allocations) each time.
    wasi: Option<WasiCtx>,
    table: ResourceTable,
}

/// The most random bytes one `wasi:random` call may ask the host for.
const MAX_RANDOM_BYTES: u64 = 4096;

impl HostState {
    pub(crate) fn new(tenant: Arc<TenantContext>, memory_bytes: usize) -> Self {
        Self {
            scope: CallScope::default(),
            limiter: MemoryLimiter {
                max_bytes: memory_bytes,
                refused: false,
                grew: false,
                held: 0,
            },
            tenant,
            wasi: None,
            table: ResourceTable::new(),
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: self.wasi.get_or_insert_with(|| {
                // Random bytes are made on the host, outside the guest's memory limit and
                // its deadline: enough for a hash seed, not the 64 MiB a call may otherwise ask.
                WasiCtx::builder().max_random_size(MAX_RANDOM_BYTES).build()
            }),
            table: &mut self.table,
        }
    }
}

fn lossy(value: &http::HeaderValue) -> String {
    String::from_utf8_lossy(value.as_bytes()).into_owned()
}

fn first_header(headers: &http::HeaderMap, name: &str) -> Option<String> {
    headers.get(name).map(lossy)
}

fn all_headers(headers: &http::HeaderMap, name: &str) -> Vec<String> {
    headers.get_all(name).iter().map(lossy).collect()
}

/// Whether a request field is shown to a plugin: not the client's `Connection`, which the
/// origin is never sent (as `heads::RequestHead` leaves it out for 0.3.0 plugins).
fn shown_on_request(name: &str) -> bool {
    !name.trim().eq_ignore_ascii_case("connection")
}

/// The host the client asked for: the Host header, else the URI authority.
pub fn request_host(req: &pingora::http::RequestHeader) -> String {
    // Lower-cased as it is copied: one allocation per call (every hook call makes one).
    String::from_utf8_lossy(host_as_sent(req)).to_ascii_lowercase()
}

fn host_as_sent(req: &pingora::http::RequestHeader) -> &[u8] {
    req.headers
        .get(http::header::HOST)
        .map(|v| v.as_bytes())
        .or_else(|| req.uri.authority().map(|a| a.as_str().as_bytes()))
        .unwrap_or_default()
}

/// [`request_host`] without a copy when the name is spelled so already (UTF-8, no upper
/// case), as a live request's is once `canonical_host` has spelled it.
pub fn request_host_ref(req: &pingora::http::RequestHeader) -> std::borrow::Cow<'_, str> {
    match std::str::from_utf8(host_as_sent(req)) {
        Ok(name) if !name.bytes().any(|b| b.is_ascii_uppercase()) => name.into(),
        _ => request_host(req).into(),
    }
}

/// Longest plugin log line kept; a plugin must not flood the proxy's log.
const MAX_LOG_LINE: usize = 4096;

/// The `tracing` level of a contract's `log-level`.
macro_rules! tracing_level {
    ($types:ident, $level:expr) => {
        match $level {
            $types::LogLevel::Trace => tracing::Level::TRACE,
            $types::LogLevel::Debug => tracing::Level::DEBUG,
            $types::LogLevel::Info => tracing::Level::INFO,
            $types::LogLevel::Warn => tracing::Level::WARN,
            $types::LogLevel::Error => tracing::Level::ERROR,
        }
    };
}

impl HostState {
    /// Writes a plugin's log line, at most [`MAX_LOG_LINES_PER_CALL`] per hook call.
    fn log(&mut self, level: tracing::Level, message: String) {
        match self.scope.log_line() {
            LogLine::Write => plugin_log(&self.tenant.tenant, level, message),
            LogLine::WriteLimitNotice => tracing::warn!(
                target: "cachet::plugin",
                tenant = self.tenant.tenant,
                "more than {MAX_LOG_LINES_PER_CALL} log lines in one hook call: the rest of \
                 this call's are dropped"
            ),
            LogLine::Drop => {}
        }
    }
}

/// A plugin's log line, cut to [`MAX_LOG_LINE`] and tagged with its tenant. One line: control
/// characters (CR, LF...) and the Unicode line and bidi controls are escaped, so a plugin (or
/// request data it logs) cannot write a line that looks like another tenant's or the proxy's.
fn plugin_log(tenant: &str, level: tracing::Level, message: String) {
    let message = crate::one_line::one_line_within(&message, MAX_LOG_LINE);
    match level {
        tracing::Level::TRACE => tracing::trace!(target: "cachet::plugin", tenant, "{message}"),
        tracing::Level::DEBUG => tracing::debug!(target: "cachet::plugin", tenant, "{message}"),
        tracing::Level::INFO => tracing::info!(target: "cachet::plugin", tenant, "{message}"),
        tracing::Level::WARN => tracing::warn!(target: "cachet::plugin", tenant, "{message}"),
        _ => tracing::error!(target: "cachet::plugin", tenant, "{message}"),
    }
}

/// The host side of 0.1.0 and 0.2.0: both grant the same resources and
/// imports, so one implementation serves both.
macro_rules! grant {
    ($version:ident) => {
        const _: () = {
            use $version::cachet::policy::{host, types};

            impl types::Host for HostState {}

            impl types::HostRequest for HostState {
                fn method(&mut self, _: Resource<types::Request>) -> wasmtime::Result<String> {
                    Ok(self.scope.request()?.method.as_str().to_owned())
                }

                fn host(&mut self, _: Resource<types::Request>) -> wasmtime::Result<String> {
                    Ok(request_host(self.scope.request()?))
                }

                fn path(&mut self, _: Resource<types::Request>) -> wasmtime::Result<String> {
                    Ok(self.scope.request()?.uri.path().to_owned())
                }

                fn query(
                    &mut self,
                    _: Resource<types::Request>,
                ) -> wasmtime::Result<Option<String>> {
                    Ok(self.scope.request()?.uri.query().map(str::to_owned))
                }

                fn header(
                    &mut self,
                    _: Resource<types::Request>,
                    name: String,
                ) -> wasmtime::Result<Option<String>> {
                    let request = self.scope.request()?;
                    Ok(shown_on_request(&name)
                        .then(|| first_header(&request.headers, &name))
                        .flatten())
                }

                fn header_all(
                    &mut self,
                    _: Resource<types::Request>,
                    name: String,
                ) -> wasmtime::Result<Vec<String>> {
                    let request = self.scope.request()?;
                    match shown_on_request(&name) {
                        true => Ok(all_headers(&request.headers, &name)),
                        false => Ok(Vec::new()),
                    }
                }

                fn drop(&mut self, _: Resource<types::Request>) -> wasmtime::Result<()> {
                    // Handles are borrows of the proxy's own request; nothing to free.
                    Ok(())
                }
            }

            impl types::HostResponse for HostState {
                fn status(&mut self, _: Resource<types::Response>) -> wasmtime::Result<u16> {
                    Ok(self.scope.response()?.status.as_u16())
                }

                fn header(
                    &mut self,
                    _: Resource<types::Response>,
                    name: String,
                ) -> wasmtime::Result<Option<String>> {
                    Ok(first_header(&self.scope.response()?.headers, &name))
                }

                fn header_all(
                    &mut self,
                    _: Resource<types::Response>,
                    name: String,
                ) -> wasmtime::Result<Vec<String>> {
                    Ok(all_headers(&self.scope.response()?.headers, &name))
                }

                fn drop(&mut self, _: Resource<types::Response>) -> wasmtime::Result<()> {
                    Ok(())
                }
            }

            impl host::Host for HostState {
                fn log(&mut self, level: types::LogLevel, message: String) -> wasmtime::Result<()> {
                    HostState::log(self, tracing_level!(types, level), message);
                    Ok(())
                }

                fn config(&mut self, key: String) -> wasmtime::Result<Option<String>> {
                    Ok(self.tenant.plugin_config.get(&key).cloned())
                }
            }
        };
    };
}

grant!(v1);
grant!(v2);

/// 0.3.0 grants logging only: hooks receive the request as a value, and the
/// tenant's settings arrive through `configure`.
const _: () = {
    use v3::cachet::policy::{host, types};

    impl types::Host for HostState {}

    impl host::Host for HostState {
        fn log(&mut self, level: types::LogLevel, message: String) -> wasmtime::Result<()> {
            HostState::log(self, tracing_level!(types, level), message);
            Ok(())
        }
    }
};
