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

use crate::common::{copy_dir, hf_cache, open, photo, tmp, vault_files};

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

#[test]
fn a_model_used_from_its_folder_is_told_sd_turbo_as_an_import_would() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/sd_import/sd_turbo_tiny");
    let cache = DiffusionCache::new(None, Device::Cpu);
    // Its folder name and model_index.json say SD-Turbo: 1-4 unguided steps, not SD 2.1's 40 guided ones.
    let (_, sampling) = cache.locate(&fixture.to_string_lossy()).expect("locate");
    assert_eq!(sampling, likeness_engine::generative::Sampling::Turbo);

    // The same weights under a neutral name: SD-Turbo or SD 2.1 cannot be told, so it is refused with
    // what to do, as the import refuses it (SD 2.1 is not supported).
    let dir = tmp();
    let src = dir.path().join("mystery");
    copy_dir(&fixture, &src);
    std::fs::write(src.join("model_index.json"), "{\"_class_name\": \"StableDiffusionPipeline\"}").unwrap();
    let err = cache.locate(&src.to_string_lossy()).err().expect("an SD 2.x folder of unknown kind is refused");
    assert!(err.to_string().contains("--arch sd-turbo"), "{err}");

    // SD 1.5 (the engine's tiny fixture) keeps the ordinary guided sampling.
    let tiny = Path::new(env!("CARGO_MANIFEST_DIR")).join("../engine/tests/fixtures/sd/tiny");
    let (_, sampling) = cache.locate(&tiny.to_string_lossy()).expect("locate tiny");
    assert_eq!(sampling, likeness_engine::generative::Sampling::Standard);

    // A Hugging Face cache repository folder is used through the snapshot its refs/main names.
    let repo = dir.path().join("models--stabilityai--sd-turbo");
    hf_cache(&fixture, &repo, "rev1");
    let (_, sampling) = cache.locate(&repo.to_string_lossy()).expect("locate the cache repository");
    assert_eq!(sampling, likeness_engine::generative::Sampling::Turbo);
}
