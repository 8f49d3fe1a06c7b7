//! Progress bars for the long phases of the benches, so a run of minutes shows it is alive and how far it got.
//! They draw on stderr only when it is a terminal (indicatif hides them otherwise), so logs and the printed
//! results stay as they were.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// A bar counting `len` items (tickets, messages).
pub fn counter(len: u64, label: &str) -> ProgressBar {
    bar(len, label, "{prefix} [{bar:30}] {pos}/{len} {per_sec} {msg}")
}

/// A bar over a phase of `secs` seconds; the caller sets the position (elapsed seconds) and a message.
pub fn timer(secs: u64, label: &str) -> ProgressBar {
    bar(secs, label, "{prefix} [{bar:30}] {pos}/{len} s {msg}")
}

/// A spinner for a wait of unknown length; the caller sets a message.
pub fn spinner(label: &str) -> ProgressBar {
    let bar = ProgressBar::new_spinner().with_prefix(format!("   {label}"));
    if let Ok(style) = ProgressStyle::with_template("{prefix} {spinner} {elapsed} {msg}") {
        bar.set_style(style);
    }
    bar.enable_steady_tick(Duration::from_millis(250));
    bar
}

fn bar(len: u64, label: &str, template: &str) -> ProgressBar {
    let bar = ProgressBar::new(len).with_prefix(format!("   {label}"));
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.enable_steady_tick(Duration::from_millis(250));
    bar
}
