//! Logging to the proxy's log, tagged with the tenant.
//!
//! ```
//! use cachet_sdk::log;
//! log::info!("bypassing {} for a logged-in user", "/cart");
//! log::write(log::Level::Warn, "plain message");
//! ```
//!
//! Natively, lines go to stderr and are kept for
//! `testing::take_logs` (native only).

use std::fmt;

/// Severity of a log line, least severe first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Step-by-step detail, normally filtered out.
    Trace,
    /// Diagnostic detail.
    Debug,
    /// Notable, expected events.
    Info,
    /// Something looks wrong but the request proceeds.
    Warn,
    /// A failure worth an operator's attention.
    Error,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Trace => "trace",
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        })
    }
}

/// Writes one line at `level`.
pub fn write(level: Level, message: &str) {
    #[cfg(target_arch = "wasm32")]
    crate::__private::host_log(level, message);
    #[cfg(not(target_arch = "wasm32"))]
    crate::testing::record_log(level, message);
}

/// Formats its arguments like `format!` and logs them at the given level.
#[doc(hidden)]
#[macro_export]
macro_rules! __cachet_log {
    ($level:ident, $($arg:tt)+) => {
        $crate::log::write($crate::log::Level::$level, &::std::format!($($arg)+))
    };
}

/// `trace!("...", args)`: log at [`Level::Trace`].
#[doc(hidden)]
#[macro_export]
macro_rules! __cachet_log_trace {
    ($($arg:tt)+) => { $crate::__cachet_log!(Trace, $($arg)+) };
}

/// `debug!("...", args)`: log at [`Level::Debug`].
#[doc(hidden)]
#[macro_export]
macro_rules! __cachet_log_debug {
    ($($arg:tt)+) => { $crate::__cachet_log!(Debug, $($arg)+) };
}

/// `info!("...", args)`: log at [`Level::Info`].
#[doc(hidden)]
#[macro_export]
macro_rules! __cachet_log_info {
    ($($arg:tt)+) => { $crate::__cachet_log!(Info, $($arg)+) };
}

/// `warn!("...", args)`: log at [`Level::Warn`].
#[doc(hidden)]
#[macro_export]
macro_rules! __cachet_log_warn {
    ($($arg:tt)+) => { $crate::__cachet_log!(Warn, $($arg)+) };
}

/// `error!("...", args)`: log at [`Level::Error`].
#[doc(hidden)]
#[macro_export]
macro_rules! __cachet_log_error {
    ($($arg:tt)+) => { $crate::__cachet_log!(Error, $($arg)+) };
}

// `#[macro_export]` puts macros at the crate root; re-export them here so
// authors write `log::info!`.
#[doc(inline)]
pub use crate::__cachet_log_debug as debug;
#[doc(inline)]
pub use crate::__cachet_log_error as error;
#[doc(inline)]
pub use crate::__cachet_log_info as info;
#[doc(inline)]
pub use crate::__cachet_log_trace as trace;
#[doc(inline)]
pub use crate::__cachet_log_warn as warn;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::take_logs;

    #[test]
    fn macros_format_and_record_at_their_level() {
        take_logs();
        trace!("t{}", 1);
        debug!("d");
        info!("path {}", "/a");
        warn!("w");
        error!("e {x}", x = 2);
        assert_eq!(
            take_logs(),
            [
                (Level::Trace, "t1".to_string()),
                (Level::Debug, "d".to_string()),
                (Level::Info, "path /a".to_string()),
                (Level::Warn, "w".to_string()),
                (Level::Error, "e 2".to_string()),
            ]
        );
        assert!(take_logs().is_empty());
    }
}
