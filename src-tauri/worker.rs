//! The background worker: one thread that sleeps until a job is queued, then works the queue
//! through `likeness_core::worker::run_queue`, sending throttled events to the page.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use likeness_core::generative::LookRunner;
use likeness_core::worker::{run_queue, JobRunner, RunError, StudioRunner, StudioSettings, WorkerEvent};
use likeness_core::{ClaimedJob, JobId, JobState, NewOutput, OutputId};
use likeness_engine::progress::{CancelToken, ProgressSink};
use serde::Serialize;
use tauri::{AppHandle, Emitter, Runtime};
use zeroize::Zeroizing;

use crate::state::{assets_dir, lock, AppState};

/// The event the page listens to for job changes.
pub const JOB_EVENT: &str = "job-event";
/// Progress events of one job closer together than this are dropped (a stage change always goes).
pub const PROGRESS_INTERVAL: Duration = Duration::from_millis(120);

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JobEvent {
    Started { job: JobId, attempt: u32 },
    Progress { job: JobId, stage: String, fraction: f32, step: Option<StepInfo> },
    Finished { job: JobId, state: JobState, error: Option<String>, outputs: Vec<OutputId> },
    Warning { job: JobId, message: String },
    /// The worker stopped because the library failed (full disk ...); queued jobs wait.
    WorkerError { code: &'static str, message: String },
}

/// How many denoising steps a generative job takes: per variant, variants, photos.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GenPlan {
    pub steps: u32,
    pub variants: u32,
    pub photos: u32,
}

/// Where a generative job is in its denoising loop ("variant 2 of 2, step 3 of 20").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct StepInfo {
    pub step: u32,
    pub steps: u32,
    pub variant: u32,
    pub variants: u32,
}

/// The step a generative job's progress `fraction` stands for. The engine reports the denoising
/// of one photo as 0.1 + 0.85 * (steps done / all steps of all variants); a job of several photos
/// gives each photo an equal share.
pub fn step_info(plan: GenPlan, fraction: f32) -> StepInfo {
    let photos = plan.photos.max(1) as f32;
    let steps = plan.steps.max(1);
    let variants = plan.variants.max(1);
    let scaled = fraction.clamp(0.0, 1.0) * photos;
    let photo = scaled.floor().min(photos - 1.0);
    let local = scaled - photo;
    let total = steps * variants;
    let done = (((local - 0.1) / 0.85).clamp(0.0, 1.0) * total as f32).round() as u32;
    if done == 0 {
        return StepInfo { step: 0, steps, variant: 1, variants };
    }
    let variant = ((done - 1) / steps + 1).min(variants);
    StepInfo { step: done - (variant - 1) * steps, steps, variant, variants }
}

/// Drops progress events that come faster than the page can usefully show them.
#[derive(Default)]
pub struct Throttle {
    last: Mutex<HashMap<JobId, (Instant, String)>>,
    /// The plans of generative jobs (see [`GenPlan`]).
    pub plans: HashMap<JobId, GenPlan>,
}

impl Throttle {
    pub fn filter(&self, event: WorkerEvent, now: Instant) -> Option<JobEvent> {
        self.filter_with(event, now, None)
    }

    /// [`Throttle::filter`], with the plan of a generative job for its step.
    pub fn filter_with(&self, event: WorkerEvent, now: Instant, plan: Option<GenPlan>) -> Option<JobEvent> {
        match event {
            WorkerEvent::Started { job, attempt, .. } => Some(JobEvent::Started { job, attempt }),
            WorkerEvent::Finished { job, state, error, outputs } => {
                lock(&self.last).remove(&job);
                Some(JobEvent::Finished { job, state, error, outputs })
            }
            WorkerEvent::Progress { job, stage, fraction } => {
                let step = match stage {
                    likeness_engine::progress::Stage::Generate => plan.or_else(|| self.plans.get(&job).copied()).map(|p| step_info(p, fraction)),
                    _ => None,
                };
                let stage = stage.name().to_string();
                // A new denoising step always shows (they are seconds apart on real models).
                let key = match step {
                    Some(s) => format!("{stage}:{}:{}", s.variant, s.step),
                    None => stage.clone(),
                };
                let mut last = lock(&self.last);
                let due = match last.get(&job) {
                    Some((t, s)) => *s != key || now.duration_since(*t) >= PROGRESS_INTERVAL || fraction >= 1.0,
                    None => true,
                };
                if !due {
                    return None;
                }
                last.insert(job.clone(), (now, key));
                Some(JobEvent::Progress { job, stage, fraction, step })
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

/// Runs studio jobs and generative ones (Stable Diffusion), noting each generative job's plan
/// first so its progress can be told in steps.
struct AppRunner<'a> {
    look: LookRunner<'a>,
    state: &'a AppState,
}

impl JobRunner for AppRunner<'_> {
    fn run(
        &self,
        job: &ClaimedJob,
        inputs: &[(String, Zeroizing<Vec<u8>>)],
        progress: &dyn ProgressSink,
        cancel: &CancelToken,
    ) -> Result<Vec<NewOutput>, RunError> {
        if let Ok(s) = StudioSettings::from_json(&job.settings_json) {
            if s.is_generative() {
                // The page names imported models only; one removed since the job was queued
                // fails the job with what to do.
                let id = s.model.clone().unwrap_or_default();
                if let Ok(store) = self.state.store() {
                    if let Err(likeness_core::import::ImportError::NotImported { .. }) = store.diffusion(&id) {
                        return Err(RunError::Failed(format!(
                            "the Stable Diffusion model '{id}' is not installed (it may have been removed); import it again on the Models screen, or choose another model"
                        )));
                    }
                }
                let plan = gen_plan(self.state, &s, inputs.len());
                if let Some(p) = plan {
                    lock(&self.state.gen_steps).insert(job.id.clone(), p);
                }
            }
        }
        let out = self.look.run(job, inputs, progress, cancel);
        lock(&self.state.gen_steps).remove(&job.id);
        out
    }
}

/// The plan of a generative job: the model's architecture (from its import record) decides
/// between ordinary and Turbo step counts.
pub fn gen_plan(state: &AppState, s: &StudioSettings, photos: usize) -> Option<GenPlan> {
    let arch = s.model.as_deref().and_then(|id| state.store().ok()?.record(id).ok()?.arch?.parse().ok());
    let steps = likeness_core::models_runtime::steps_per_variant(&s.gen_quality, s.steps, arch)?;
    Some(GenPlan { steps: steps as u32, variants: s.variants.max(1), photos: photos.max(1) as u32 })
}

fn work_queue<R: Runtime>(app: &AppHandle<R>, state: &AppState) {
    let Ok(lib) = state.library() else { return };
    let jobs = lock(lib).list_jobs().unwrap_or_default();
    let pending: Vec<_> = jobs.iter().filter(|j| !j.state.is_finished()).collect();
    if pending.is_empty() {
        return;
    }
    // GFPGAN is loaded only when a waiting job asks for face restoration.
    let wants_restore: Vec<JobId> = pending
        .iter()
        .filter(|j| StudioSettings::from_json(&j.settings_json).is_ok_and(|s| s.restore.is_some()))
        .map(|j| j.id.clone())
        .collect();
    let models = if wants_restore.is_empty() {
        state.models().cloned()
    } else {
        state.restoring_models().map(|(m, notice)| {
            if let Some(n) = notice {
                for job in &wants_restore {
                    emit(app, JobEvent::Warning { job: job.clone(), message: n.clone() });
                }
            }
            m
        })
    };
    let (models, diffusion) = match models.and_then(|m| Ok((m, state.diffusion()?))) {
        Ok(m) => m,
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
    let studio = StudioRunner { models: &models, assets: assets_dir(), on_warning: Some(&warn) };
    let runner = AppRunner { look: LookRunner { studio, diffusion: &diffusion }, state };
    let throttle = Throttle::default();
    let on_event = |e: WorkerEvent| {
        if let WorkerEvent::Finished { job, .. } = &e {
            crate::batch::job_finished(state, job);
        }
        let plan = match &e {
            WorkerEvent::Progress { job, .. } => lock(&state.gen_steps).get(job).copied(),
            _ => None,
        };
        if let Some(ev) = throttle.filter_with(e, Instant::now(), plan) {
            emit(app, ev);
        }
    };
    if let Err(e) = run_queue(lib, &runner, 1, &state.stop, &on_event) {
        let e = crate::error::IpcError::from(e);
        emit(app, JobEvent::WorkerError { code: e.code, message: e.message });
    }
}
