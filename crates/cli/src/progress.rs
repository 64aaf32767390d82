//! The terminal progress bar for queue runs (hidden when not a terminal or with --json).

use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use likeness_core::worker::WorkerEvent;
use likeness_engine::progress::Stage;

/// One bar over all jobs of a run: each job counts `Stage::ALL.len()` steps.
pub struct JobBar {
    bar: ProgressBar,
    steps: u64,
    /// Steps of finished jobs, and each running job's name and last step.
    state: Mutex<(u64, Vec<(String, String, u64)>)>,
}

impl JobBar {
    pub fn new(jobs: usize, show: bool) -> Self {
        let steps = Stage::ALL.len() as u64;
        let bar = if show { ProgressBar::new(jobs as u64 * steps) } else { ProgressBar::hidden() };
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{bar:30}] {percent:>3}% {elapsed_precise} (eta {eta}) {wide_msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        if show {
            bar.enable_steady_tick(Duration::from_millis(120));
        }
        JobBar { bar, steps, state: Mutex::new((0, Vec::new())) }
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
            }
        }
        let running: u64 = st.1.iter().map(|r| r.2).sum();
        self.bar.set_position(st.0 + running);
    }

    pub fn println(&self, line: &str) {
        self.bar.suspend(|| eprintln!("{line}"));
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
