//! SIGHUP asks for a full check of the config and every plugin, whether or not files are
//! watched. The handler is installed before plugins load and listeners open, so a hangup never
//! takes the default action (terminating the process); the thread that acts on it starts with
//! the server (after a daemon fork, which would not carry a thread over).

use super::Reloader;
use signal_hook::consts::SIGHUP;
use signal_hook::iterator::Signals;
use std::sync::Arc;

/// SIGHUP, caught and queued until [`Hangups::spawn`] starts acting on it.
pub struct Hangups {
    signals: Signals,
}

impl Hangups {
    /// Installs the handler; hangups received from now on are kept.
    pub fn catch() -> std::io::Result<Self> {
        Ok(Self {
            signals: Signals::new([SIGHUP])?,
        })
    }

    /// Starts the thread that runs a full check for every hangup.
    pub fn spawn(mut self, reloader: Arc<Reloader>) -> std::io::Result<()> {
        std::thread::Builder::new()
            .name("cachet-sighup".into())
            .spawn(move || {
                for _ in self.signals.forever() {
                    tracing::info!("SIGHUP: checking the config and plugins");
                    // Each refusal is logged where it happens.
                    let _refused = reloader.check_everything();
                }
            })?;
        Ok(())
    }
}
