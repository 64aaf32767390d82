//! Start-up benchmark: launches the built app N times (each with a fresh data folder) and reports
//! the median time from process start to the page's first command, i.e. an interactive window.
//! Needs a display (run it under `xvfb-run`).
//!
//! Usage: startup_bench [APP_BINARY] [RUNS]   (defaults: target/release/likeness-app, 7)

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use likeness_app::startup::{READY_LINE, STARTUP_LOG_ENV};

const TIMEOUT: Duration = Duration::from_secs(30);
const TARGET: Duration = Duration::from_secs(2);

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let app = args.next().map(PathBuf::from).unwrap_or_else(|| {
        // target/release/examples/startup_bench -> target/release/likeness-app
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().and_then(|d| d.parent()).map(|d| d.join("likeness-app")))
            .unwrap_or_else(|| PathBuf::from("likeness-app"))
    });
    let runs: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(7).max(1);
    let mut times = Vec::with_capacity(runs);
    for i in 0..runs {
        match launch_once(&app, i) {
            Ok(t) => {
                eprintln!("run {}: {:.0} ms", i + 1, t.as_secs_f64() * 1000.0);
                times.push(t);
            }
            Err(e) => {
                eprintln!("startup_bench: run {}: {e}", i + 1);
                return ExitCode::FAILURE;
            }
        }
    }
    times.sort();
    let median = times[times.len() / 2];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "startup: median {:.0} ms, min {:.0} ms, max {:.0} ms over {runs} runs (target < {} ms)",
        ms(median),
        ms(times[0]),
        ms(times[times.len() - 1]),
        TARGET.as_millis()
    );
    if median < TARGET {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn launch_once(app: &PathBuf, run: usize) -> Result<Duration, String> {
    let data = std::env::temp_dir().join(format!("likeness-bench-{}-{run}", std::process::id()));
    std::fs::create_dir_all(&data).map_err(|e| format!("cannot create {}: {e}", data.display()))?;
    let start = Instant::now();
    let mut child = Command::new(app)
        .env(STARTUP_LOG_ENV, "1")
        .env("LIKENESS_DATA_DIR", &data)
        .env("LIKENESS_PASSPHRASE", std::env::var("LIKENESS_PASSPHRASE").unwrap_or_else(|_| "startup-bench".into()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", app.display()))?;
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains(READY_LINE) {
                let _ = tx.send(Instant::now());
            }
        }
    });
    let ready = rx.recv_timeout(TIMEOUT);
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&data);
    match ready {
        Ok(t) => Ok(t.duration_since(start)),
        Err(_) => Err(format!("the page made no call within {} s", TIMEOUT.as_secs())),
    }
}
