//! Runs third-party code that may assert on bytes a plugin's author chose (wit-component,
//! wit-parser, wasmparser) and turns its panic into a refusal, quietly: the default panic
//! hook printed `thread 'main' panicked at ...` (with a backtrace under `RUST_BACKTRACE`) to
//! raw stderr before the one-line refusal, outside the JSON log format too.

use std::cell::Cell;
use std::sync::Once;

thread_local! {
    /// Whether this thread is inside [`contain`]: its panics are refusals, not crashes.
    static CONTAINING: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f`; a panic inside it comes back as `Err` with its message, and prints nothing.
/// Panics elsewhere (any other thread, or this one outside `f`) go to the hook as before.
pub fn contain<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    static QUIET_HOOK: Once = Once::new();
    QUIET_HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !CONTAINING.with(Cell::get) {
                previous(info);
            }
        }));
    });
    let was = CONTAINING.with(|c| c.replace(true));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    CONTAINING.with(|c| c.set(was));
    outcome.map_err(|payload| {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_owned());
        crate::one_line::one_line_within(&message, 300)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_inside_is_its_message_and_the_flag_is_put_back() {
        let caught = contain(|| -> u8 { panic!("assertion failed: prev.is_none()") });
        assert_eq!(caught, Err("assertion failed: prev.is_none()".to_owned()));
        assert!(!CONTAINING.with(Cell::get));
        assert_eq!(contain(|| 7), Ok(7));
        let formatted = contain(|| -> u8 { panic!("at {}", 3) });
        assert_eq!(formatted, Err("at 3".to_owned()));
    }
}
