//! RFC 9111 shared-cache semantics, CDN-Cache-Control and purge, end to end.

mod support;
