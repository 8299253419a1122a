//! Native stand-ins for the host's `config` and `log`, a runner for a
//! policy's own test vectors ([`check_self_tests`]), and the host's checks on
//! edits ([`request_edits_refusal`]), for unit tests.
//!
//! State is per thread, and the test harness runs each test on its own
//! thread, so tests do not see each other's config or logs.
//!
//! ```
//! use cachet_sdk::testing;
//! testing::set_config("ttl", "30");
//! assert_eq!(cachet_sdk::config("ttl").as_deref(), Some("30"));
//! testing::clear_config();
//! assert_eq!(cachet_sdk::config("ttl"), None);
//! ```

use std::cell::RefCell;
use std::collections::HashMap;

use crate::log::Level;

mod host_rules;
mod self_check;

pub use host_rules::{request_edits_refusal, response_edits_refusal};
pub use self_check::{check_self_tests, self_test_failures};

thread_local! {
    static CONFIG: RefCell<HashMap<String, String>> = RefCell::new(HashMap::new());
    static LOGS: RefCell<Vec<(Level, String)>> = const { RefCell::new(Vec::new()) };
}

/// Makes [`config`](crate::config) return `value` for `key` on this thread.
pub fn set_config(key: impl Into<String>, value: impl Into<String>) {
    CONFIG.with(|config| config.borrow_mut().insert(key.into(), value.into()));
}

/// Makes [`config`](crate::config) return `None` for `key` on this thread.
pub fn remove_config(key: &str) {
    CONFIG.with(|config| config.borrow_mut().remove(key));
}

/// Removes every config value set on this thread.
pub fn clear_config() {
    CONFIG.with(|config| config.borrow_mut().clear());
}

/// Returns and forgets the lines logged on this thread so far.
pub fn take_logs() -> Vec<(Level, String)> {
    LOGS.with(|logs| std::mem::take(&mut *logs.borrow_mut()))
}

pub(crate) fn config_value(key: &str) -> Option<String> {
    CONFIG.with(|config| config.borrow().get(key).cloned())
}

/// Runs `f` with this thread's config emptied, then puts the config back,
/// also when `f` panics (a policy under test may).
fn without_config<T>(f: impl FnOnce() -> T) -> T {
    struct Restore(HashMap<String, String>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let saved = std::mem::take(&mut self.0);
            CONFIG.with(|config| *config.borrow_mut() = saved);
        }
    }
    let _restore = Restore(CONFIG.with(|config| std::mem::take(&mut *config.borrow_mut())));
    f()
}

pub(crate) fn record_log(level: Level, message: &str) {
    eprintln!("[cachet {level}] {message}");
    LOGS.with(|logs| logs.borrow_mut().push((level, message.to_owned())));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;

    #[test]
    fn config_is_settable_and_removable() {
        assert_eq!(config("a"), None);
        set_config("a", "1");
        set_config("b", "2");
        assert_eq!(config("a").as_deref(), Some("1"));
        remove_config("a");
        assert_eq!(config("a"), None);
        assert_eq!(config("b").as_deref(), Some("2"));
        clear_config();
        assert_eq!(config("b"), None);
    }

    #[test]
    fn config_is_per_thread() {
        set_config("a", "1");
        let seen_elsewhere = std::thread::spawn(|| config("a")).join().unwrap();
        assert_eq!(seen_elsewhere, None);
    }
}
