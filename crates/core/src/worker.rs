//! The job worker: claims queued jobs from the [`Library`] and runs them through the engine, a
//! bounded number at a time.
//!
//! Crash safety comes from the library: a job is `running` only while a worker holds it; one left
//! running by a killed process is queued again when the library is opened, and a job that used up
//! its attempts is failed with its last reason instead of looping. Outputs are stored only when the
//! whole job succeeded, so a cancelled or failed job leaves no partial file.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use likeness_engine::composite::{Backdrop, StudioStyle};
use likeness_engine::error::EngineError;
use likeness_engine::framing::Preset;
use likeness_engine::image_io::{self, DecodeLimits, OutputFormat};
use likeness_engine::pipeline::{self, HeadshotRequest, StudioModels, UpscalerSource};
use likeness_engine::progress::{CancelToken, ProgressSink, Stage};
use likeness_engine::upscale::{UpscaleMode, Upscaler};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::{CoreError, Result};
use crate::models::ModelStore;
use crate::library::{ClaimedJob, JobId, JobState, Library, NewOutput, OutputId};

/// The settings of a studio job, as stored in the job's JSON (fields of
/// [`crate::StyleSettings`] plus the studio look's own). Unknown fields are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StudioSettings {
    /// square, portrait, passport-eu, us-passport or team.
    pub preset: String,
    /// A backdrop spec (see [`Backdrop::parse`]) or `image:NAME` / `image:PATH`.
    pub backdrop: String,
    /// png, jpg or webp.
    pub format: String,
    pub jpeg_quality: u8,
    pub relight: f32,
    pub retouch: f32,
    /// Largest short side of the output.
    pub max_size: u32,
    /// "studio" (the default) or "generative" (Stable Diffusion; see `generative.rs`).
    pub look: String,
    /// The imported diffusion model's id (generative look).
    pub model: Option<String>,
    /// Generative look: suit, blazer, business-casual, smart-shirt or keep.
    pub attire: String,
    /// Generative look: soft-studio, natural-window or dramatic.
    pub lighting: String,
    /// Generative look: draft, standard or high.
    pub gen_quality: String,
    /// Generative look: outputs per photo, one seed each (`seed`, `seed + 1`, ...).
    pub variants: u32,
    pub seed: u64,
    /// Generative look: overrides the quality level's denoising steps.
    pub steps: Option<u32>,
    /// Face restoration (GFPGAN) strength in [0, 1], or `None` for off. Jobs stored before this
    /// setting existed read as off; a job asking for it runs without it (with a warning) when
    /// GFPGAN is not installed.
    pub restore: Option<f32>,
    /// The output's short side exactly (overrides `max_size`); a smaller crop is upscaled.
    pub size: Option<u32>,
    /// Real-ESRGAN upscaling: auto (only when `size` exceeds the crop), off, 2 or 4.
    pub upscale: String,
}

impl Default for StudioSettings {
    fn default() -> Self {
        StudioSettings {
            preset: "square".into(),
            backdrop: "gradient".into(),
            format: "png".into(),
            jpeg_quality: 92,
            relight: 0.5,
            retouch: 0.35,
            max_size: 2048,
            look: "studio".into(),
            model: None,
            attire: "keep".into(),
            lighting: "soft-studio".into(),
            gen_quality: "standard".into(),
            variants: 1,
            seed: 0,
            steps: None,
            restore: None,
            size: None,
            upscale: "auto".into(),
        }
    }
}

impl StudioSettings {
    pub fn from_json(json: &str) -> Result<Self> {
        serde_json::from_str(json).map_err(|e| CoreError::InvalidSettings(format!("{e}")))
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".into())
    }

    /// The engine request these settings describe. `assets` is the folder of bundled backdrops
    /// (`<assets>/backdrops/NAME.jpg`). Every option is checked here, before a job is queued.
    pub fn request(&self, assets: Option<&Path>) -> Result<HeadshotRequest> {
        let invalid = |m: String| CoreError::InvalidSettings(m);
        self.check_look()?;
        let preset: Preset = self.preset.parse().map_err(|e: EngineError| invalid(e.to_string()))?;
        let format = match self.format.parse::<OutputFormat>().map_err(|e| invalid(e.to_string()))? {
            OutputFormat::Jpeg { .. } => {
                if !(1..=100).contains(&self.jpeg_quality) {
                    return Err(invalid("JPEG quality must be between 1 and 100".into()));
                }
                OutputFormat::Jpeg { quality: self.jpeg_quality }
            }
            f => f,
        };
        if !(0.0..=1.0).contains(&self.relight) || !(0.0..=1.0).contains(&self.retouch) {
            return Err(invalid("relight and retouch take a value between 0 and 1".into()));
        }
        if let Some(r) = self.restore {
            if !(0.0..=1.0).contains(&r) {
                return Err(invalid(format!("restore strength {r} must be between 0 and 1")));
            }
        }
        if self.max_size < 64 {
            return Err(invalid(format!("output size {} is too small; use at least 64 pixels", self.max_size)));
        }
        let upscale: UpscaleMode = self.upscale.parse().map_err(|e: EngineError| invalid(e.to_string()))?;
        if let Some(n) = self.size {
            if !(pipeline::MIN_SIZE..=pipeline::MAX_SIZE).contains(&n) {
                return Err(invalid(format!("output size {n}: use between {} and {} pixels", pipeline::MIN_SIZE, pipeline::MAX_SIZE)));
            }
        }
        Ok(HeadshotRequest {
            preset,
            style: StudioStyle {
                // The generative look reads the backdrop as a prompt (generative.rs), not as a studio backdrop.
                backdrop: if self.is_generative() { StudioStyle::default().backdrop } else { resolve_backdrop(&self.backdrop, assets)? },
                relight: self.relight,
                retouch: self.retouch,
            },
            format,
            max_short_side: self.max_size,
            size: self.size,
            upscale,
            limits: DecodeLimits::default(),
            restore: self.restore,
        })
    }
}

/// Loads the upscaling model `id` from `store` when first needed (see [`StudioModels::with_upscaler`]):
/// a `.safetensors` file is the bundled Real-ESRGAN x4plus, a `.pth` a user-imported
/// SRVGGNetCompact (`realesr-general-x4v3`). The bytes are sha256-checked against the manifest.
pub fn upscaler_source(store: ModelStore, id: &str, device: candle_core::Device) -> UpscalerSource {
    let id = id.to_owned();
    Box::new(move || load_upscaler(&store, &id, &device))
}

/// Loads the upscaling model `id` now (see [`upscaler_source`]).
pub fn load_upscaler(store: &ModelStore, id: &str, device: &candle_core::Device) -> std::result::Result<Upscaler, EngineError> {
    let model_err = |reason: String| EngineError::Model { model: id.to_owned(), reason };
    let entry = store.manifest().models.iter().find(|m| m.id == id);
    let entry = entry.ok_or_else(|| model_err(format!("not in {} (see `likeness models list`)", store.dir().display())))?;
    if entry.task != "upscale" {
        return Err(model_err(format!("it is a {} model, not an upscaler", entry.task)));
    }
    let bytes = store.read_verified(id).map_err(|e| model_err(e.to_string()))?;
    let is_pth = entry.files.first().is_some_and(|f| f.path.ends_with(".pth") || f.path.ends_with(".pt"));
    if is_pth {
        Upscaler::compact_from_pth(id, &bytes, device)
    } else {
        Upscaler::realesrgan_x4plus(bytes, device)
    }
}

/// Parses a backdrop spec, reading `image:NAME` (a bundled backdrop) or `image:PATH` (a file).
pub fn resolve_backdrop(spec: &str, assets: Option<&Path>) -> Result<Backdrop> {
    let Some(name) = Backdrop::image_name(spec) else {
        return Backdrop::parse(spec).map_err(|e| CoreError::InvalidSettings(e.to_string()));
    };
    let path = if name.contains(['/', '\\']) || name.contains('.') {
        PathBuf::from(name)
    } else {
        let bundled: Vec<String> = assets
            .and_then(|a| std::fs::read_dir(a.join("backdrops")).ok())
            .map(|rd| {
                let mut v: Vec<String> = rd
                    .filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_suffix(".jpg")).map(str::to_owned))
                    .collect();
                v.sort();
                v
            })
            .unwrap_or_default();
        match assets.map(|a| a.join("backdrops").join(format!("{name}.jpg"))).filter(|p| p.is_file()) {
            Some(p) => p,
            None => {
                return Err(CoreError::InvalidSettings(format!(
                    "no bundled backdrop named '{name}' (bundled: {}); or give a file as image:PATH",
                    if bundled.is_empty() { "none found".to_string() } else { bundled.join(", ") }
                )))
            }
        }
    };
    let limits = DecodeLimits::default();
    let meta = std::fs::metadata(&path).map_err(|e| CoreError::io("read the backdrop", &path, e))?;
    if meta.len() > limits.max_bytes {
        return Err(CoreError::InvalidSettings(format!("the backdrop {} is larger than {} bytes", path.display(), limits.max_bytes)));
    }
    let bytes = std::fs::read(&path).map_err(|e| CoreError::io("read the backdrop", &path, e))?;
    let img = image_io::decode(&bytes, &limits)
        .map_err(|e| CoreError::InvalidSettings(format!("the backdrop {}: {e}", path.display())))?
        .image;
    Ok(Backdrop::Image(img))
}

/// Why a job did not produce outputs.
#[derive(Debug)]
pub enum RunError {
    /// The user cancelled it.
    Cancelled,
    /// It cannot succeed (no face, not an image ...): the job fails with this message.
    Failed(String),
}

/// Runs one claimed job: its decrypted inputs in, encoded outputs out.
pub trait JobRunner: Sync {
    fn run(
        &self,
        job: &ClaimedJob,
        inputs: &[(String, Zeroizing<Vec<u8>>)],
        progress: &dyn ProgressSink,
        cancel: &CancelToken,
    ) -> std::result::Result<Vec<NewOutput>, RunError>;
}

/// The studio look (no diffusion model): one headshot per input photo.
pub struct StudioRunner<'a> {
    pub models: &'a StudioModels,
    /// Folder of bundled assets (backdrops).
    pub assets: Option<PathBuf>,
    /// Told about things the user should know (e.g. several faces: the most prominent was used).
    pub on_warning: Option<&'a (dyn Fn(&JobId, &str) + Sync)>,
}

impl JobRunner for StudioRunner<'_> {
    fn run(
        &self,
        job: &ClaimedJob,
        inputs: &[(String, Zeroizing<Vec<u8>>)],
        progress: &dyn ProgressSink,
        cancel: &CancelToken,
    ) -> std::result::Result<Vec<NewOutput>, RunError> {
        let settings = StudioSettings::from_json(&job.settings_json).map_err(|e| RunError::Failed(e.to_string()))?;
        let req = settings.request(self.assets.as_deref()).map_err(|e| RunError::Failed(e.to_string()))?;
        if inputs.is_empty() {
            return Err(RunError::Failed("the job's photos were deleted before it ran".into()));
        }
        let n = inputs.len() as f32;
        let mut outputs = Vec::with_capacity(inputs.len());
        for (i, (name, bytes)) in inputs.iter().enumerate() {
            // Scale each photo's progress into its share of the job.
            let sink = |stage: Stage, f: f32| progress.stage(stage, (i as f32 + f) / n);
            let shot = pipeline::studio_headshot(self.models, bytes, &req, &sink, cancel).map_err(|e| match e {
                EngineError::Cancelled => RunError::Cancelled,
                e => RunError::Failed(format!("{name}: {e}")),
            })?;
            outputs.push(self.output_of(job, name, shot));
        }
        Ok(outputs)
    }
}

impl StudioRunner<'_> {
    /// A finished headshot as a job output; its warnings go to `on_warning`, named by photo.
    pub(crate) fn output_of(&self, job: &ClaimedJob, name: &str, shot: pipeline::Headshot) -> NewOutput {
        if let Some(warn) = self.on_warning {
            for w in &shot.warnings {
                warn(&job.id, &format!("{name}: {w}"));
            }
        }
        let format = match shot.format {
            OutputFormat::Png => "png",
            OutputFormat::Jpeg { .. } => "jpeg",
            OutputFormat::WebP => "webp",
        };
        NewOutput { bytes: shot.encoded, format: format.into(), width: shot.width, height: shot.height }
    }
}

/// What the worker reports as it goes.
#[derive(Debug, Clone)]
pub enum WorkerEvent {
    Started { job: JobId, inputs: Vec<String>, attempt: u32 },
    Progress { job: JobId, stage: Stage, fraction: f32 },
    Finished { job: JobId, state: JobState, error: Option<String>, outputs: Vec<OutputId> },
}

/// Totals of one [`run_queue`] call.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RunReport {
    pub done: usize,
    pub failed: usize,
    pub cancelled: usize,
    /// Interrupted (the run was stopped, or an internal error) and queued again.
    pub requeued: usize,
}

/// Works the queue until it is empty, `threads` jobs at a time. Stops early (returning the error,
/// with the job queued again) when the library itself fails, e.g. a full disk: running again once
/// the problem is fixed resumes. `stop` is checked between jobs and cancels running ones.
pub fn run_queue(
    lib: &Mutex<Library>,
    runner: &dyn JobRunner,
    threads: usize,
    stop: &AtomicBool,
    on_event: &(dyn Fn(WorkerEvent) + Sync),
) -> Result<RunReport> {
    let report = Mutex::new(RunReport::default());
    let failure: Mutex<Option<CoreError>> = Mutex::new(None);
    let halt = AtomicBool::new(false);
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| {
                while !halt.load(Ordering::SeqCst) && !stop.load(Ordering::SeqCst) {
                    match work_one(lib, runner, stop, on_event) {
                        Ok(Some(state)) => {
                            let mut r = report.lock().unwrap_or_else(|p| p.into_inner());
                            match state {
                                JobState::Done => r.done += 1,
                                JobState::Cancelled => r.cancelled += 1,
                                JobState::Queued | JobState::Running => r.requeued += 1,
                                JobState::Failed => r.failed += 1,
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            halt.store(true, Ordering::SeqCst);
                            failure.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e);
                            break;
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = failure.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    Ok(report.into_inner().unwrap_or_else(|p| p.into_inner()))
}

fn locked(lib: &Mutex<Library>) -> std::sync::MutexGuard<'_, Library> {
    // A panic while holding the lock leaves the library consistent (every change is a transaction).
    lib.lock().unwrap_or_else(|p| p.into_inner())
}

/// Claims and runs one job; `None` when the queue is empty.
fn work_one(
    lib: &Mutex<Library>,
    runner: &dyn JobRunner,
    stop: &AtomicBool,
    on_event: &(dyn Fn(WorkerEvent) + Sync),
) -> Result<Option<JobState>> {
    let Some(job) = locked(lib).claim_next_job()? else { return Ok(None) };
    on_event(WorkerEvent::Started { job: job.id.clone(), inputs: job.input_names.clone(), attempt: job.attempt });
    let inputs = match locked(lib).job_inputs(&job.id) {
        Ok(i) => i,
        Err(e @ CoreError::Corrupt { .. }) => return finish_failed(lib, &job.id, &e.to_string(), on_event),
        Err(e) => {
            let _ = locked(lib).requeue_job(&job.id, &e.to_string());
            return Err(e);
        }
    };

    let cancel = CancelToken::new();
    let progress_error: Mutex<Option<CoreError>> = Mutex::new(None);
    let sink = |stage: Stage, fraction: f32| {
        if stop.load(Ordering::SeqCst) {
            cancel.cancel();
        }
        match locked(lib).set_progress(&job.id, fraction, stage.name()) {
            Ok(true) => cancel.cancel(),
            Ok(false) => {}
            Err(e) => {
                // The database can't record progress (full disk ...): stop this job and report.
                progress_error.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e);
                cancel.cancel();
            }
        }
        on_event(WorkerEvent::Progress { job: job.id.clone(), stage, fraction });
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| runner.run(&job, &inputs, &sink, &cancel)));
    drop(inputs);
    if let Some(e) = progress_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        let _ = locked(lib).requeue_job(&job.id, &e.to_string());
        return Err(e);
    }
    match result {
        Ok(Ok(outputs)) => {
            let stored = locked(lib).complete_job(&job.id, outputs);
            match stored {
                Ok(ids) => {
                    on_event(WorkerEvent::Finished { job: job.id.clone(), state: JobState::Done, error: None, outputs: ids });
                    Ok(Some(JobState::Done))
                }
                Err(CoreError::JobState { .. }) => {
                    // Cancelled while its outputs were being stored: they were discarded.
                    let state = locked(lib).get_job(&job.id)?.state;
                    on_event(WorkerEvent::Finished { job: job.id.clone(), state, error: None, outputs: vec![] });
                    Ok(Some(state))
                }
                Err(e) => {
                    // Nothing was kept; queue it again so a later run completes it.
                    let _ = locked(lib).requeue_job(&job.id, &e.to_string());
                    Err(e)
                }
            }
        }
        Ok(Err(RunError::Cancelled)) => {
            if stop.load(Ordering::SeqCst) && !locked(lib).is_cancel_requested(&job.id)? {
                // Interrupted by the user stopping the run, not by cancelling the job: resume it later.
                locked(lib).requeue_job(&job.id, "the run was stopped before this job finished")?;
                on_event(WorkerEvent::Finished { job: job.id.clone(), state: JobState::Queued, error: None, outputs: vec![] });
                return Ok(Some(JobState::Queued));
            }
            locked(lib).mark_cancelled(&job.id)?;
            on_event(WorkerEvent::Finished { job: job.id.clone(), state: JobState::Cancelled, error: None, outputs: vec![] });
            Ok(Some(JobState::Cancelled))
        }
        Ok(Err(RunError::Failed(msg))) => finish_failed(lib, &job.id, &msg, on_event),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown".into());
            // Counted as an attempt: after MAX_ATTEMPTS the job is failed with this reason.
            locked(lib).requeue_job(&job.id, &format!("internal error: {what}"))?;
            on_event(WorkerEvent::Finished {
                job: job.id.clone(),
                state: JobState::Queued,
                error: Some(format!("internal error: {what}")),
                outputs: vec![],
            });
            Ok(Some(JobState::Queued))
        }
    }
}

fn finish_failed(lib: &Mutex<Library>, id: &JobId, msg: &str, on_event: &(dyn Fn(WorkerEvent) + Sync)) -> Result<Option<JobState>> {
    locked(lib).fail_job(id, msg)?;
    let state = locked(lib).get_job(id)?.state;
    on_event(WorkerEvent::Finished { job: id.clone(), state, error: Some(msg.to_string()), outputs: vec![] });
    Ok(Some(state))
}
