//! Start-up timing for the `startup_bench` example: with `LIKENESS_STARTUP_LOG=1`, the page's first
//! call (made once the UI is drawn and its handlers are attached) prints one line to stderr.

use std::sync::Once;

pub const STARTUP_LOG_ENV: &str = "LIKENESS_STARTUP_LOG";
/// The line the bench waits for.
pub const READY_LINE: &str = "likeness: ui ready";

static FIRST: Once = Once::new();

pub fn first_call() {
    FIRST.call_once(|| {
        if std::env::var_os(STARTUP_LOG_ENV).is_some_and(|v| v == "1") {
            eprintln!("{READY_LINE}");
        }
    });
}
