//! Ctrl-C: the first one stops the run (it ends early and reports what it measured), a second
//! one exits at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// A shared "stop now" flag that every loop checks.
#[derive(Clone, Debug, Default)]
pub struct Stop(Arc<AtomicBool>);

impl Stop {
    /// A flag nobody has raised.
    pub fn new() -> Stop {
        Stop::default()
    }

    /// Raises the flag.
    pub fn raise(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// Whether the run should stop.
    pub fn raised(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    /// Raises the flag on Ctrl-C; a second Ctrl-C exits with status 130.
    pub fn on_ctrl_c(&self) {
        let stop = self.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("Interrupted: finishing the current phase and reporting (Ctrl-C again to quit).");
                stop.raise();
                if tokio::signal::ctrl_c().await.is_ok() {
                    std::process::exit(130);
                }
            }
        });
    }
}
