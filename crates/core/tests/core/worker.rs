//! The worker with the real engine and the bundled models: jobs run N at a time, cancel stops a
//! running job at the next stage and leaves no file, a job that keeps crashing is failed after its
//! attempts, and the run stops (with the job queued again) when the disk is full.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Mutex, OnceLock};

use likeness_core::models::ModelStore;
use likeness_core::worker::{run_queue, JobRunner, RunError, StudioRunner, StudioSettings, WorkerEvent};
use likeness_core::{ClaimedJob, JobId, JobState, MemoryKeyStore, NewOutput, MAX_ATTEMPTS};
use likeness_engine::pipeline::StudioModels;
use likeness_engine::progress::{CancelToken, ProgressSink, Stage};
use zeroize::Zeroizing;

use crate::common::{open, photo, tmp, vault_files};

fn models() -> &'static StudioModels {
    static MODELS: OnceLock<StudioModels> = OnceLock::new();
    MODELS.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models");
        let bytes = ModelStore::open(&dir).expect("models").studio_model_bytes().expect("bundled models");
        StudioModels::load(bytes, &candle_core::Device::Cpu).expect("load")
    })
}

fn assets() -> Option<std::path::PathBuf> {
    Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets"))
}

fn settings() -> String {
    StudioSettings { preset: "portrait".into(), format: "jpg".into(), ..StudioSettings::default() }.to_json()
}

#[test]
fn jobs_run_two_at_a_time_into_real_outputs() {
    let dir = tmp();
    let store = MemoryKeyStore::new();
    let mut lib = open(dir.path(), &store);
    let mut ids = Vec::new();
    for name in ["grace_hopper_512x512.jpg", "astronaut.png", "camera.png", "coffee.png"] {
        ids.push(lib.create_job(name, &photo(name), &settings()).expect("create"));
    }
    let lib = Mutex::new(lib);
    let runner = StudioRunner { models: models(), assets: assets(), on_warning: None };
    let events = Mutex::new(Vec::new());
    let report = run_queue(&lib, &runner, 2, &AtomicBool::new(false), &|e| events.lock().unwrap().push(e)).expect("run");
    assert_eq!((report.done, report.failed, report.cancelled), (3, 1, 0));
    let lib = lib.into_inner().unwrap();
    for (i, id) in ids.iter().enumerate() {
        let job = lib.get_job(id).unwrap();
        if i == 3 {
            assert_eq!(job.state, JobState::Failed);
            assert!(job.error.as_deref().unwrap_or("").contains("no face"), "{:?}", job.error);
            continue;
        }
        assert_eq!(job.state, JobState::Done);
        let o = &job.outputs[0];
        assert_eq!(o.format, "jpeg");
        let img = image::load_from_memory(&lib.get_output(&o.id).unwrap()).expect("a real JPEG");
        assert_eq!((img.width(), img.height()), (o.width, o.height));
        assert!((o.width as f32 / o.height as f32 - 0.8).abs() < 0.01, "portrait 4:5");
    }
    // Progress was reported stage by stage for every job.
    let ev = events.into_inner().unwrap();
    let progress = ev.iter().filter(|e| matches!(e, WorkerEvent::Progress { stage: Stage::Segment, .. })).count();
    assert_eq!(progress, 3, "three jobs reached segmentation");
}

#[test]
fn cancel_stops_a_running_job_at_the_next_stage_and_keeps_nothing() {
    let dir = tmp();
    let store = MemoryKeyStore::new();
    let mut lib = open(dir.path(), &store);
    let id = lib.create_job("grace.jpg", &photo("grace_hopper_512x512.jpg"), &settings()).unwrap();
    let lib = Mutex::new(lib);
    let runner = StudioRunner { models: models(), assets: assets(), on_warning: None };
    let stages = Mutex::new(Vec::new());
    // The user presses Cancel while the job is at the detection stage.
    let on_event = |e: WorkerEvent| {
        if let WorkerEvent::Progress { job, stage, .. } = e {
            stages.lock().unwrap().push(stage);
            if stage == Stage::Detect {
                let state = lib.lock().unwrap().cancel_job(&job).unwrap();
                assert_eq!(state, JobState::Running, "a running job is flagged, then stopped by the worker");
            }
        }
    };
    let report = run_queue(&lib, &runner, 1, &AtomicBool::new(false), &on_event).unwrap();
    assert_eq!(report.cancelled, 1);
    let lib = lib.into_inner().unwrap();
    let job = lib.get_job(&id).unwrap();
    assert_eq!(job.state, JobState::Cancelled);
    assert!(job.outputs.is_empty());
    let stages = stages.into_inner().unwrap();
    assert!(!stages.contains(&Stage::Segment), "it stopped at the next boundary: {stages:?}");
    assert!(vault_files(dir.path()).is_empty(), "no output stored, the photo released");
}

/// Stands for an engine bug that brings the worker down on one photo.
struct Crashes;
impl JobRunner for Crashes {
    fn run(&self, _: &ClaimedJob, _: &[(String, Zeroizing<Vec<u8>>)], _: &dyn ProgressSink, _: &CancelToken) -> Result<Vec<NewOutput>, RunError> {
        panic!("decoder bug on this photo")
    }
}

#[test]
fn a_job_that_keeps_crashing_fails_with_its_reason() {
    let dir = tmp();
    let store = MemoryKeyStore::new();
    let mut lib = open(dir.path(), &store);
    let id = lib.create_job("bad.jpg", &photo("grace_hopper_512x512.jpg"), &settings()).unwrap();
    let lib = Mutex::new(lib);
    let report = run_queue(&lib, &Crashes, 1, &AtomicBool::new(false), &|_| {}).unwrap();
    assert_eq!(report.requeued as u32, MAX_ATTEMPTS, "tried {MAX_ATTEMPTS} times");
    let job = lib.into_inner().unwrap().get_job(&id).unwrap();
    assert_eq!(job.state, JobState::Failed);
    let err = job.error.unwrap_or_default();
    assert!(err.contains("gave up after 3 attempts") && err.contains("decoder bug on this photo"), "{err}");
}

#[test]
fn a_stopped_run_queues_its_job_again() {
    let dir = tmp();
    let store = MemoryKeyStore::new();
    let mut lib = open(dir.path(), &store);
    let id: JobId = lib.create_job("grace.jpg", &photo("grace_hopper_512x512.jpg"), &settings()).unwrap();
    let lib = Mutex::new(lib);
    let runner = StudioRunner { models: models(), assets: assets(), on_warning: None };
    let stop = AtomicBool::new(false);
    let on_event = |e: WorkerEvent| {
        if matches!(e, WorkerEvent::Progress { stage: Stage::Landmarks, .. }) {
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    };
    let report = run_queue(&lib, &runner, 1, &stop, &on_event).unwrap();
    assert_eq!(report.requeued, 1);
    assert_eq!(lib.lock().unwrap().get_job(&id).unwrap().state, JobState::Queued);
    // The next run finishes it.
    let report = run_queue(&lib, &runner, 1, &AtomicBool::new(false), &|_| {}).unwrap();
    assert_eq!(report.done, 1);
    assert_eq!(lib.into_inner().unwrap().get_job(&id).unwrap().state, JobState::Done);
}
