//! The terminal progress bar for queue runs (hidden when not a terminal or with --json).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use likeness_core::worker::WorkerEvent;
use likeness_engine::progress::Stage;

/// One bar over all jobs of a run: each job counts `Stage::ALL.len()` steps.
pub struct JobBar {
    bar: ProgressBar,
    steps: u64,
    jobs: u64,
    started: Instant,
    /// Steps of finished jobs, and each running job's name and last step.
    state: Mutex<(u64, Vec<(String, String, u64)>)>,
}

/// Photos finished so far, the rate and the time left, from a run's start.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub done: u64,
    pub total: u64,
    pub per_second: f64,
    pub seconds_left: Option<f64>,
}

impl Rate {
    pub fn new(done: u64, total: u64, elapsed: Duration) -> Rate {
        let secs = elapsed.as_secs_f64();
        let per_second = if secs > 0.0 { done as f64 / secs } else { 0.0 };
        let seconds_left = (per_second > 0.0).then(|| total.saturating_sub(done) as f64 / per_second);
        Rate { done, total, per_second, seconds_left }
    }
}

impl JobBar {
    pub fn new(jobs: usize, show: bool) -> Self {
        let steps = Stage::ALL.len() as u64;
        let bar = if show { ProgressBar::new(jobs as u64 * steps) } else { ProgressBar::hidden() };
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{bar:30}] {percent:>3}% {prefix} {elapsed_precise} (eta {eta}) {wide_msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        if show {
            bar.enable_steady_tick(Duration::from_millis(120));
        }
        bar.set_prefix(format!("0/{jobs} photos"));
        JobBar { bar, steps, jobs: jobs as u64, started: Instant::now(), state: Mutex::new((0, Vec::new())) }
    }

    pub fn event(&self, e: &WorkerEvent) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match e {
            WorkerEvent::Started { job, inputs, .. } => {
                let name = inputs.first().cloned().unwrap_or_else(|| job.0.clone());
                st.1.push((job.0.clone(), name, 0));
            }
            WorkerEvent::Progress { job, stage, fraction } => {
                if let Some(r) = st.1.iter_mut().find(|r| r.0 == job.0) {
                    r.2 = (fraction * self.steps as f32).floor() as u64;
                    self.bar.set_message(format!("{}: {}", r.1, stage.name()));
                }
            }
            WorkerEvent::Finished { job, .. } => {
                st.1.retain(|r| r.0 != job.0);
                st.0 += self.steps;
                if st.0 > self.bar.length().unwrap_or(0) {
                    // Jobs queued by another run (resumed now) extend the bar.
                    self.bar.set_length(st.0);
                }
                let r = self.rate_of(st.0);
                self.bar.set_prefix(format!("{}/{} photos, {:.2}/s", r.done, r.total, r.per_second));
            }
        }
        let running: u64 = st.1.iter().map(|r| r.2).sum();
        self.bar.set_position(st.0 + running);
    }

    fn rate_of(&self, finished_steps: u64) -> Rate {
        let done = finished_steps / self.steps.max(1);
        Rate::new(done, self.jobs.max(done), self.started.elapsed())
    }

    /// Photos finished, per second and time left so far in this run.
    pub fn rate(&self) -> Rate {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.rate_of(st.0)
    }

    pub fn println(&self, line: &str) {
        self.bar.suspend(|| eprintln!("{line}"));
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
