//! Progress bars on stderr for long work, only when stderr is a terminal;
//! otherwise nothing is drawn (scripts and logs get no escape sequences).
//! Never on stdout, which carries results.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Whether progress is drawn: stderr is a terminal and `VEIL_NO_PROGRESS`
/// is unset.
pub fn enabled() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("VEIL_NO_PROGRESS").is_none()
}

/// A byte progress bar for `veil image` operations (a hidden one when
/// progress is not drawn).
pub struct Bar(ProgressBar);

impl Bar {
    /// A bar prefixed by `action` (e.g. `pulling`).
    pub fn new(action: &str) -> Self {
        if !enabled() {
            return Bar(ProgressBar::hidden());
        }
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix} {msg:<10} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_prefix(action.to_string());
        Bar(bar)
    }
}

impl veil_image::progress::Progress for Bar {
    fn total(&self, bytes: u64) {
        self.0.set_length(bytes);
    }
    fn step(&self, what: &str) {
        self.0.set_message(what.to_string());
    }
    fn advance(&self, bytes: u64) {
        self.0.inc(bytes);
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

/// A spinner with `message` while work of unknown length runs (hidden
/// when progress is not drawn); cleared when dropped.
pub struct Spinner(ProgressBar);

impl Spinner {
    pub fn new(message: &str) -> Self {
        if !enabled() {
            return Spinner(ProgressBar::hidden());
        }
        let s = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        s.set_style(
            ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        s.set_message(message.to_string());
        s.enable_steady_tick(Duration::from_millis(120));
        Spinner(s)
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}
