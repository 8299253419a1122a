//! The request and response a hook call may read.
//!
//! The guest receives `borrow<request>` / `borrow<response>` handles and pulls
//! fields through host calls. Rather than copying the whole header map into the
//! store for every call, the store points at the proxy's own header structs for
//! exactly the duration of one synchronous hook call.

use pingora::http::{RequestHeader, ResponseHeader};
use std::ptr::NonNull;

#[derive(Default)]
pub(crate) struct CallScope {
    request: Option<NonNull<RequestHeader>>,
    response: Option<NonNull<ResponseHeader>>,
}

// SAFETY: the pointers are only dereferenced on the thread that runs the hook
// call, while the referenced headers are borrowed by that call (see `enter`).
unsafe impl Send for CallScope {}

impl CallScope {
    /// Points the scope at `request` (and `response`) for one call.
    ///
    /// The caller must call [`CallScope::leave`] before the borrows end; the
    /// only caller is `PolicyInstance::call`, which does so on every path.
    pub(crate) fn enter(
        &mut self,
        request: Option<&RequestHeader>,
        response: Option<&ResponseHeader>,
    ) {
        self.request = request.map(NonNull::from);
        self.response = response.map(NonNull::from);
    }

    pub(crate) fn leave(&mut self) {
        self.request = None;
        self.response = None;
    }

    pub(crate) fn request(&self) -> wasmtime::Result<&RequestHeader> {
        match self.request {
            // SAFETY: set by `enter` from a reference that outlives the call.
            Some(ptr) => Ok(unsafe { ptr.as_ref() }),
            None => Err(wasmtime::format_err!("request used outside a hook call")),
        }
    }

    pub(crate) fn response(&self) -> wasmtime::Result<&ResponseHeader> {
        match self.response {
            // SAFETY: set by `enter` from a reference that outlives the call.
            Some(ptr) => Ok(unsafe { ptr.as_ref() }),
            None => Err(wasmtime::format_err!("response used outside on-response")),
        }
    }
}
