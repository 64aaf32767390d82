//! The background worker: one thread that sleeps until a job is queued, then works the queue
//! through `likeness_core::worker::run_queue`, sending throttled events to the page.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use likeness_core::worker::{run_queue, StudioRunner, WorkerEvent};
use likeness_core::{JobId, JobState, OutputId};
use serde::Serialize;
use tauri::{AppHandle, Emitter, Runtime};

use crate::state::{assets_dir, lock, AppState};

/// The event the page listens to for job changes.
pub const JOB_EVENT: &str = "job-event";
/// Progress events of one job closer together than this are dropped (a stage change always goes).
pub const PROGRESS_INTERVAL: Duration = Duration::from_millis(120);

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JobEvent {
    Started { job: JobId, attempt: u32 },
    Progress { job: JobId, stage: String, fraction: f32 },
    Finished { job: JobId, state: JobState, error: Option<String>, outputs: Vec<OutputId> },
    Warning { job: JobId, message: String },
    /// The worker stopped because the library failed (full disk ...); queued jobs wait.
    WorkerError { code: &'static str, message: String },
}

/// Drops progress events that come faster than the page can usefully show them.
#[derive(Default)]
pub struct Throttle {
    last: Mutex<HashMap<JobId, (Instant, String)>>,
}

impl Throttle {
    pub fn filter(&self, event: WorkerEvent, now: Instant) -> Option<JobEvent> {
        match event {
            WorkerEvent::Started { job, attempt, .. } => Some(JobEvent::Started { job, attempt }),
            WorkerEvent::Finished { job, state, error, outputs } => {
                lock(&self.last).remove(&job);
                Some(JobEvent::Finished { job, state, error, outputs })
            }
            WorkerEvent::Progress { job, stage, fraction } => {
                let stage = stage.name().to_string();
                let mut last = lock(&self.last);
                let due = match last.get(&job) {
                    Some((t, s)) => *s != stage || now.duration_since(*t) >= PROGRESS_INTERVAL || fraction >= 1.0,
                    None => true,
                };
                if !due {
                    return None;
                }
                last.insert(job.clone(), (now, stage.clone()));
                Some(JobEvent::Progress { job, stage, fraction })
            }
        }
    }
}

/// Starts the worker thread; it ends when [`crate::state::Inner::shutdown`] is called.
pub fn spawn<R: Runtime>(app: AppHandle<R>, state: AppState) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name("likeness-worker".into()).spawn(move || {
        while state.wait_for_work() {
            work_queue(&app, &state);
            // Batches whose photos have all finished are exported and reported now.
            crate::batch::finish_and_notify(&app, &state);
        }
    })
}

fn emit<R: Runtime>(app: &AppHandle<R>, event: JobEvent) {
    // A closed window just misses the event; the page re-reads the job list when it opens.
    let _ = app.emit(JOB_EVENT, event);
}

fn work_queue<R: Runtime>(app: &AppHandle<R>, state: &AppState) {
    let Ok(lib) = state.library() else { return };
    let pending = lock(lib).list_jobs().map(|jobs| jobs.iter().any(|j| !j.state.is_finished())).unwrap_or(false);
    if !pending {
        return;
    }
    let models = match state.models() {
        Ok(m) => m.clone(),
        Err(e) => {
            // Without models no job can succeed: fail the queued ones with the reason instead of
            // leaving them waiting forever.
            let mut lib = lock(lib);
            while let Ok(Some(job)) = lib.claim_next_job() {
                let _ = lib.fail_job(&job.id, &e.message);
                emit(app, JobEvent::Finished { job: job.id, state: JobState::Failed, error: Some(e.message.clone()), outputs: vec![] });
            }
            return;
        }
    };
    let warn = |job: &JobId, message: &str| emit(app, JobEvent::Warning { job: job.clone(), message: message.to_string() });
    let runner = StudioRunner { models: &models, assets: assets_dir(), on_warning: Some(&warn) };
    let throttle = Throttle::default();
    let on_event = |e: WorkerEvent| {
        if let WorkerEvent::Finished { job, .. } = &e {
            crate::batch::job_finished(state, job);
        }
        if let Some(ev) = throttle.filter(e, Instant::now()) {
            emit(app, ev);
        }
    };
    if let Err(e) = run_queue(lib, &runner, 1, &state.stop, &on_event) {
        let e = crate::error::IpcError::from(e);
        emit(app, JobEvent::WorkerError { code: e.code, message: e.message });
    }
}
