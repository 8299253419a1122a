//! The request and response a hook call may read.
//!
//! A 0.1.0 or 0.2.0 guest receives `borrow<request>` / `borrow<response>`
//! handles and pulls fields through host calls (a 0.3.0 guest receives the
//! heads as values: `heads.rs`). Rather than copying the whole header map into
//! the store for every call, the store points at the proxy's own header
//! structs for exactly the duration of one synchronous hook call.

use pingora::http::{RequestHeader, ResponseHeader};
use std::ptr::NonNull;

#[derive(Default)]
pub(crate) struct CallScope {
    request: Option<NonNull<RequestHeader>>,
    response: Option<NonNull<ResponseHeader>>,
    /// Log lines the plugin wrote in this call.
    logged: u32,
}

/// Log lines one hook call may write: the access log and every tenant's lines share one
/// bounded queue, which a plugin logging in a loop would otherwise fill.
pub(crate) const MAX_LOG_LINES_PER_CALL: u32 = 32;

/// What becomes of a plugin's log line.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum LogLine {
    Write,
    /// The first line over the limit: say that the rest are dropped.
    WriteLimitNotice,
    Drop,
}

// SAFETY: the pointers are only dereferenced on the thread that runs the hook
// call, while the referenced headers are borrowed by that call (`enter`'s contract).
unsafe impl Send for CallScope {}

impl CallScope {
    /// Points the scope at `request` (and `response`) for one call.
    ///
    /// # Safety
    ///
    /// `request` and `response` are kept as raw pointers and read by later host calls
    /// ([`CallScope::request`], [`CallScope::response`]). The caller must call
    /// [`CallScope::leave`] before either borrow ends, on every path including unwinding, and
    /// must not touch the scope from another thread in between. The only caller,
    /// `PolicyInstance::call`, clears it with a drop guard at the end of the call.
    pub(crate) unsafe fn enter(
        &mut self,
        request: Option<&RequestHeader>,
        response: Option<&ResponseHeader>,
    ) {
        self.request = request.map(NonNull::from);
        self.response = response.map(NonNull::from);
        self.logged = 0;
    }

    /// Counts a log line of this call and says what to do with it.
    pub(crate) fn log_line(&mut self) -> LogLine {
        self.logged = self.logged.saturating_add(1);
        match self.logged {
            n if n <= MAX_LOG_LINES_PER_CALL => LogLine::Write,
            n if n == MAX_LOG_LINES_PER_CALL + 1 => LogLine::WriteLimitNotice,
            _ => LogLine::Drop,
        }
    }

    pub(crate) fn leave(&mut self) {
        self.request = None;
        self.response = None;
    }

    pub(crate) fn request(&self) -> wasmtime::Result<&RequestHeader> {
        match self.request {
            // SAFETY: `enter`'s contract: set from a borrow that lasts until `leave`.
            Some(ptr) => Ok(unsafe { ptr.as_ref() }),
            None => Err(wasmtime::format_err!("request used outside a hook call")),
        }
    }

    pub(crate) fn response(&self) -> wasmtime::Result<&ResponseHeader> {
        match self.response {
            // SAFETY: `enter`'s contract: set from a borrow that lasts until `leave`.
            Some(ptr) => Ok(unsafe { ptr.as_ref() }),
            None => Err(wasmtime::format_err!("response used outside on-response")),
        }
    }
}
