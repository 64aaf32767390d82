//! Generative jobs in the worker (tiny random-weight diffusion model from the engine's fixtures, the real
//! bundled face / segmentation models): N variants are N outputs of one job, progress comes per denoising
//! step, and cancelling during the denoising loop stops the job before the next step with nothing kept.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Mutex, OnceLock};

use likeness_core::generative::{DiffusionCache, LookRunner};
use likeness_core::models::ModelStore;
use likeness_core::worker::{run_queue, StudioRunner, StudioSettings, WorkerEvent};
use likeness_core::{JobState, MemoryKeyStore};
use likeness_engine::diffusion::Device;
use likeness_engine::pipeline::StudioModels;
use likeness_engine::progress::Stage;

use crate::common::{open, photo, tmp, vault_files};

fn models() -> &'static StudioModels {
    static MODELS: OnceLock<StudioModels> = OnceLock::new();
    MODELS.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models");
        let bytes = ModelStore::open(&dir).expect("models").studio_model_bytes().expect("bundled models");
        StudioModels::load(bytes, &Device::Cpu).expect("load")
    })
}

fn settings(variants: u32, steps: u32) -> String {
    let tiny = Path::new(env!("CARGO_MANIFEST_DIR")).join("../engine/tests/fixtures/sd/tiny");
    StudioSettings {
        look: "generative".into(),
        model: Some(tiny.to_string_lossy().into_owned()),
        attire: "blazer".into(),
        backdrop: "bookshelf".into(),
        gen_quality: "draft".into(),
        variants,
        seed: 3,
        steps: Some(steps),
        max_size: 192,
        ..StudioSettings::default()
    }
    .to_json()
}

#[test]
fn generative_job_makes_one_output_per_variant_with_per_step_progress() {
    let dir = tmp();
    let store = MemoryKeyStore::new();
    let mut lib = open(dir.path(), &store);
    let id = lib.create_job("grace.jpg", &photo("grace_hopper_512x512.jpg"), &settings(3, 2)).expect("create");
    let lib = Mutex::new(lib);
    let cache = DiffusionCache::new(None, Device::Cpu);
    let runner = LookRunner { studio: StudioRunner { models: models(), assets: None, on_warning: None }, diffusion: &cache };
    let events = Mutex::new(Vec::new());
    let report = run_queue(&lib, &runner, 1, &AtomicBool::new(false), &|e| events.lock().unwrap().push(e)).expect("run");
    assert_eq!(report.done, 1);
    let lib = lib.into_inner().unwrap();
    let job = lib.get_job(&id).unwrap();
    assert_eq!(job.state, JobState::Done);
    assert_eq!(job.outputs.len(), 3, "three variants, three outputs of one job");
    let steps = events
        .into_inner()
        .unwrap()
        .iter()
        .filter(|e| matches!(e, WorkerEvent::Progress { stage: Stage::Generate, .. }))
        .count();
    assert_eq!(steps, 1 + 3 * 2, "the stage start, then one report per denoising step of each variant");
}

#[test]
fn cancel_during_denoising_stops_before_the_next_step_and_keeps_nothing() {
    let dir = tmp();
    let store = MemoryKeyStore::new();
    let mut lib = open(dir.path(), &store);
    let id = lib.create_job("grace.jpg", &photo("grace_hopper_512x512.jpg"), &settings(1, 6)).expect("create");
    let lib = Mutex::new(lib);
    let cache = DiffusionCache::new(None, Device::Cpu);
    let runner = LookRunner { studio: StudioRunner { models: models(), assets: None, on_warning: None }, diffusion: &cache };
    let generate_events = Mutex::new(0usize);
    // The user presses Cancel after the second denoising step.
    let on_event = |e: WorkerEvent| {
        if let WorkerEvent::Progress { job, stage: Stage::Generate, .. } = e {
            let mut n = generate_events.lock().unwrap();
            *n += 1;
            if *n == 3 {
                lib.lock().unwrap().cancel_job(&job).unwrap();
            }
        }
    };
    let report = run_queue(&lib, &runner, 1, &AtomicBool::new(false), &on_event).unwrap();
    assert_eq!(report.cancelled, 1);
    // The worker learns of the request at its next progress report (step 3's) and the engine stops before
    // step 4: of the 1 + 6 reports, 4 came.
    assert_eq!(*generate_events.lock().unwrap(), 4, "stopped between steps");
    let lib = lib.into_inner().unwrap();
    let job = lib.get_job(&id).unwrap();
    assert_eq!(job.state, JobState::Cancelled);
    assert!(job.outputs.is_empty());
    assert!(vault_files(dir.path()).is_empty(), "no output stored, the photo released");
}
