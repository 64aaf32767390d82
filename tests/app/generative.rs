//! The generative look in the app: the Create screen's options, importing the tiny random-weight
//! Stable Diffusion model (crates/engine/tests/fixtures/sd/tiny) with progress, a generative job
//! with two variants through the worker (per-step progress), verify, remove, and the error paths.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use likeness_app::models::{import_path, ImportEvent};
use likeness_app::worker::{step_info, GenPlan, StepInfo, Throttle};
use likeness_core::worker::{StudioSettings, WorkerEvent};
use likeness_core::JobId;
use likeness_engine::progress::Stage;
use serde_json::{json, Value};

use crate::support::{app, app_with, code, config, photo, repo_file, TestApp};

fn tiny() -> std::path::PathBuf {
    repo_file("crates/engine/tests/fixtures/sd/tiny")
}

/// Imports the tiny model as the Models screen does after the folder dialog; returns its id and the events.
fn import_tiny(t: &TestApp) -> (Value, Vec<ImportEvent>) {
    let events = Mutex::new(Vec::new());
    let v = import_path(&t.state(), &tiny(), &|e| events.lock().expect("events").push(e)).expect("import");
    (serde_json::to_value(v).expect("json"), events.into_inner().expect("events"))
}

fn gen_settings(model: &str, variants: u32) -> Value {
    json!({"preset": "square", "backdrop": "office", "format": "png", "jpeg_quality": 92, "relight": 0.5, "retouch": 0.35,
           "max_size": 192, "look": "generative", "model": model, "attire": "suit", "lighting": "dramatic",
           "gen_quality": "draft", "variants": variants, "seed": 7, "steps": 2})
}

fn wait_finished(t: &TestApp, id: &Value) -> Value {
    let start = Instant::now();
    loop {
        let job = t.jobs().into_iter().find(|j| &j["id"] == id).expect("job listed");
        if matches!(job["state"].as_str(), Some("done" | "failed" | "cancelled")) {
            return job;
        }
        assert!(start.elapsed() < Duration::from_secs(240), "job not finished after 240 s: {job}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn create_options_offer_the_core_choices_and_say_why_generative_is_off() {
    let t = app();
    let o = t.invoke("create_options", Value::Null).expect("options");
    let values = |k: &str| -> Vec<String> {
        o["choices"][k].as_array().expect("array").iter().map(|c| c["value"].as_str().unwrap_or("").to_string()).collect()
    };
    assert_eq!(values("attires"), ["keep", "suit", "blazer", "business-casual", "smart-shirt"]);
    assert_eq!(values("lightings"), ["soft-studio", "natural-window", "dramatic"]);
    assert_eq!(values("qualities"), ["draft", "standard", "high"]);
    assert_eq!(o["choices"]["qualities"][1]["resolution"], 512);
    assert_eq!(o["choices"]["qualities"][1]["steps"], 25);
    assert_eq!(o["choices"]["max_variants"], 4);
    // Nothing imported: no generative look, no restoration, with the reason.
    assert_eq!(o["generative_available"], false);
    assert!(o["generative_reason"].as_str().is_some_and(|r| r.contains("Models screen")), "{o}");
    assert_eq!(o["restore_available"], false);
    assert_eq!(o["upscale_available"], true);

    // A policy that allows only the studio look says so, even with a model installed.
    let policy = likeness_core::policy::Policy::from_json(br#"{"allowed_looks": ["studio"]}"#, "/etc/likeness/policy.json");
    let t = app_with(|d| likeness_app::Config { policy: Some(Arc::new(policy)), ..config(d, false) });
    import_tiny(&t);
    let o = t.invoke("create_options", Value::Null).expect("options");
    assert_eq!(o["generative_available"], false);
    assert!(o["generative_reason"].as_str().is_some_and(|r| r.contains("policy")), "{o}");
}

#[test]
fn a_model_is_imported_with_progress_listed_verified_and_removed() {
    let t = app();
    let (v, events) = import_tiny(&t);
    assert_eq!(v["id"], "tiny");
    assert_eq!(v["known"], false, "a random-weight model is not a known release: {v}");
    assert_eq!(v["already_imported"], false);
    assert!(v.get("folder").is_none() && v.get("linked_source").is_none(), "no paths reach the page: {v}");
    let progress: Vec<(u64, u64)> =
        events.iter().filter_map(|e| if let ImportEvent::Progress { done, total, .. } = e { Some((*done, *total)) } else { None }).collect();
    assert!(!progress.is_empty(), "{events:?}");
    assert!(progress.windows(2).all(|w| w[0].0 <= w[1].0), "bytes only grow: {progress:?}");
    let (done, total) = *progress.last().expect("last");
    assert!(total > 0 && done == total, "the last event is the whole model: {progress:?}");
    assert_eq!(events.last(), Some(&ImportEvent::Finished { id: "tiny".into() }));

    let models = t.invoke("list_models", Value::Null).expect("list");
    let m = models.as_array().and_then(|a| a.iter().find(|m| m["id"] == "tiny").cloned()).expect("tiny listed");
    assert_eq!(m["state"], "ok");
    assert_eq!(m["imported"], true);
    assert_eq!(m["known"], false);
    assert!(m["arch"].as_str().is_some_and(|a| a.starts_with("sd")), "{m}");
    assert_eq!(t.invoke("verify_model", json!({"id": "tiny"})).expect("verify")["state"], "ok");

    let o = t.invoke("create_options", Value::Null).expect("options");
    assert_eq!(o["generative_available"], true, "{o}");
    assert_eq!(o["models"][0]["id"], "tiny");

    // The same folder again: recognised, nothing copied.
    let (again, _) = import_tiny(&t);
    assert_eq!(again["already_imported"], true);

    // A copied file damaged later is found by verify.
    let data = t.dir.path().join("data/models/imported/tiny/vae");
    let weights = std::fs::read_dir(&data).expect("vae").filter_map(|e| e.ok()).map(|e| e.path()).find(|p| p.extension().is_some_and(|x| x == "safetensors")).expect("weights");
    let mut bytes = std::fs::read(&weights).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xFF;
    std::fs::write(&weights, bytes).expect("write");
    let checked = t.invoke("verify_model", json!({"id": "tiny"})).expect("verify");
    assert_eq!(checked["state"], "corrupt", "{checked}");

    // Removal: imported models only.
    assert_eq!(code(t.invoke("remove_model", json!({"id": "face-mesh-468"}))), "invalid_input");
    assert_eq!(code(t.invoke("remove_model", json!({"id": "no-such-model"}))), "not_found");
    assert_eq!(code(t.invoke("verify_model", json!({"id": "no-such-model"}))), "not_found");
    t.invoke("remove_model", json!({"id": "tiny"})).expect("remove");
    let models = t.invoke("list_models", Value::Null).expect("list");
    assert!(models.as_array().is_some_and(|a| a.iter().all(|m| m["id"] != "tiny")));
    assert!(!t.dir.path().join("data/models/imported/tiny").exists());
    assert_eq!(t.invoke("create_options", Value::Null).expect("options")["generative_available"], false);
}

#[test]
fn import_errors_are_in_plain_words_and_leave_nothing_behind() {
    let t = app();
    let state = t.state();
    // Truncated checkpoint.
    let bad = t.dir.path().join("broken.safetensors");
    let whole = std::fs::read(repo_file("crates/engine/tests/fixtures/sd/tiny_single.safetensors")).expect("single file");
    std::fs::write(&bad, &whole[..whole.len() / 2]).expect("write");
    let e = import_path(&state, &bad, &|_| {}).expect_err("truncated");
    assert_eq!(e.code, "corrupt", "{e:?}");
    assert!(e.message.contains("truncated"), "{e:?}");
    // Not a model at all.
    let text = t.dir.path().join("notes.safetensors");
    std::fs::write(&text, b"hello, not a model").expect("write");
    assert_eq!(import_path(&state, &text, &|_| {}).expect_err("not a model").code, "corrupt");
    // A pickle is never opened.
    let pickle = t.dir.path().join("model.ckpt");
    std::fs::write(&pickle, b"\x80\x02}q\x00.").expect("write");
    assert_eq!(import_path(&state, &pickle, &|_| {}).expect_err("pickle").code, "unsupported");
    assert_eq!(import_path(&state, &t.dir.path().join("gone"), &|_| {}).expect_err("missing").code, "not_found");

    // Cancelled from its progress (as the Cancel button does while bytes are copied).
    let s2 = state.clone();
    let e = import_path(&state, &tiny(), &move |ev| {
        if matches!(ev, ImportEvent::Progress { .. }) {
            if let Some(flag) = likeness_app::state::lock(&s2.import).as_ref() {
                flag.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
    })
    .expect_err("cancelled");
    assert_eq!(e.code, "cancelled");
    assert_eq!(t.invoke("cancel_import", Value::Null).expect("cancel"), false, "nothing runs now");
    let imported = t.dir.path().join("data/models/imported");
    let left: Vec<_> = std::fs::read_dir(&imported).map(|r| r.filter_map(|e| e.ok()).map(|e| e.file_name()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "nothing half-imported: {left:?}");

    // The organisation's policy forbids imports.
    let policy = likeness_core::policy::Policy::from_json(br#"{"allow_model_import": false}"#, "/etc/likeness/policy.json");
    let t = app_with(|d| likeness_app::Config { policy: Some(Arc::new(policy)), ..config(d, false) });
    assert_eq!(import_path(&t.state(), &tiny(), &|_| {}).expect_err("policy").code, "policy");
    assert_eq!(code(t.invoke("import_model", json!({"kind": "file"}))), "policy");
    assert_eq!(code(t.invoke("remove_model", json!({"id": "tiny"}))), "policy");
}

#[test]
fn a_generative_job_makes_two_variants_with_step_progress() {
    let t = app_with(|d| config(d, true));
    let events = t.record("job-event");
    let a = t.stage("grace.jpg", photo()).expect("stage");
    // Not imported: refused before anything is stored; a path is not a model id.
    assert_eq!(code(t.invoke("create_job", json!({"photos": [a["id"]], "settings": gen_settings("tiny", 2)}))), "not_found");
    let path = tiny().to_string_lossy().into_owned();
    assert_eq!(code(t.invoke("create_job", json!({"photos": [a["id"]], "settings": gen_settings(&path, 2)}))), "not_found");
    import_tiny(&t);
    let id = t.invoke("create_job", json!({"photos": [a["id"]], "settings": gen_settings("tiny", 2)})).expect("create");
    let job = wait_finished(&t, &id);
    assert_eq!(job["state"], "done", "{job}");
    let outputs = job["outputs"].as_array().expect("outputs");
    assert_eq!(outputs.len(), 2, "two variants: {job}");
    assert_ne!(outputs[0]["size"], outputs[1]["size"], "two seeds, two images");

    std::thread::sleep(Duration::from_millis(200));
    let ev = events.lock().expect("events").clone();
    let steps: Vec<(u64, u64, u64)> = ev
        .iter()
        .filter(|e| e["kind"] == "progress" && e["stage"] == "generate" && e["step"].is_object())
        .map(|e| (e["step"]["variant"].as_u64().unwrap_or(0), e["step"]["step"].as_u64().unwrap_or(0), e["step"]["steps"].as_u64().unwrap_or(0)))
        .collect();
    assert!(steps.contains(&(1, 1, 2)) && steps.contains(&(2, 2, 2)), "every step is told: {steps:?}");
    assert!(ev.iter().all(|e| e["stage"] != "segment" || e["step"].is_null()), "steps only while generating");
}

#[test]
fn a_queued_generative_job_whose_model_is_gone_fails_in_plain_words() {
    let t = app_with(|d| config(d, true));
    let s = StudioSettings {
        look: "generative".into(),
        model: Some("removed-model".into()),
        variants: 1,
        max_size: 192,
        ..StudioSettings::default()
    };
    let id = {
        let lib = t.state().library().expect("library").clone();
        let id = likeness_app::state::lock(&lib).create_job("grace.jpg", &photo(), &s.to_json()).expect("job");
        id
    };
    t.state().wake_worker();
    let job = wait_finished(&t, &json!(id));
    assert_eq!(job["state"], "failed");
    let error = job["error"].as_str().unwrap_or("");
    assert!(error.contains("removed-model") && error.contains("import"), "{error}");
}

#[test]
fn progress_of_the_denoising_loop_is_told_in_steps() {
    let plan = GenPlan { steps: 20, variants: 1, photos: 1 };
    let at = |done: f32, total: f32| 0.1 + 0.85 * done / total;
    assert_eq!(step_info(plan, at(0.0, 20.0)), StepInfo { step: 0, steps: 20, variant: 1, variants: 1 });
    assert_eq!(step_info(plan, at(3.0, 20.0)), StepInfo { step: 3, steps: 20, variant: 1, variants: 1 });
    assert_eq!(step_info(plan, at(20.0, 20.0)).step, 20);
    let two = GenPlan { steps: 12, variants: 2, photos: 1 };
    assert_eq!(step_info(two, at(12.0, 24.0)), StepInfo { step: 12, steps: 12, variant: 1, variants: 2 });
    assert_eq!(step_info(two, at(13.0, 24.0)), StepInfo { step: 1, steps: 12, variant: 2, variants: 2 });
    // The second of two photos: its own share of the job.
    let photos = GenPlan { steps: 10, variants: 1, photos: 2 };
    assert_eq!(step_info(photos, (1.0 + at(4.0, 10.0)) / 2.0).step, 4);
    assert!(step_info(plan, f32::NAN).step <= 20);

    // The throttle never drops a new step, even within its interval.
    let mut throttle = Throttle::default();
    let job = JobId("j1".into());
    throttle.plans.insert(job.clone(), plan);
    let now = Instant::now();
    let ev = |f: f32| WorkerEvent::Progress { job: job.clone(), stage: Stage::Generate, fraction: f };
    assert!(throttle.filter(ev(at(1.0, 20.0)), now).is_some());
    assert!(throttle.filter(ev(at(1.01, 20.0)), now).is_none(), "the same step within the interval is dropped");
    let next = throttle.filter(ev(at(2.0, 20.0)), now).expect("a new step");
    let v = serde_json::to_value(next).expect("json");
    assert_eq!(v["step"]["step"], 2);
}

#[test]
fn a_studio_job_asking_for_restoration_without_gfpgan_runs_and_says_so() {
    let t = app_with(|d| config(d, true));
    let events = t.record("job-event");
    let a = t.stage("grace.jpg", photo()).expect("stage");
    let mut s = crate::support::settings();
    s["restore"] = json!(0.6);
    let id = t.invoke("create_job", json!({"photos": [a["id"]], "settings": s})).expect("create");
    let job = wait_finished(&t, &id);
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(job["outputs"].as_array().map(Vec::len), Some(1));
    std::thread::sleep(Duration::from_millis(200));
    let warned = events.lock().expect("events").iter().any(|e| {
        e["kind"] == "warning" && e["message"].as_str().is_some_and(|m| m.contains(likeness_engine::pipeline::RESTORE_UNAVAILABLE))
    });
    assert!(warned, "the job says that restoration was skipped");
    // A restore strength out of range is refused before anything is stored.
    let b = t.stage("grace.jpg", photo()).expect("stage");
    let mut bad = crate::support::settings();
    bad["restore"] = json!(1.5);
    assert_eq!(code(t.invoke("create_job", json!({"photos": [b["id"]], "settings": bad}))), "invalid_input");
}

#[test]
fn a_generative_job_is_cancelled_between_steps_and_leaves_no_output() {
    let t = app_with(|d| config(d, true));
    let events = t.record("job-event");
    let stepped = || events.lock().expect("events").iter().any(|v| v["kind"] == "progress" && v["step"]["step"].as_u64().is_some_and(|s| s >= 1));
    import_tiny(&t);
    let a = t.stage("grace.jpg", photo()).expect("stage");
    let mut s = gen_settings("tiny", 4);
    s["steps"] = json!(200);
    let id = t.invoke("create_job", json!({"photos": [a["id"]], "settings": s})).expect("create");
    let start = Instant::now();
    while !stepped() {
        assert!(start.elapsed() < Duration::from_secs(120), "no denoising step reported");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The job list tells the step too (a reloaded page has seen no event yet).
    let running = t.jobs().into_iter().find(|j| j["id"] == id).expect("the job");
    assert_eq!(running["state"], "running", "{running}");
    assert_eq!((running["step"]["steps"].as_u64(), running["step"]["variants"].as_u64()), (Some(200), Some(4)), "{running}");
    assert!(running["step"]["step"].as_u64().is_some_and(|s| s >= 1), "{running}");
    t.invoke("cancel_job", json!({"id": id})).expect("cancel");
    let job = wait_finished(&t, &id);
    assert_eq!(job["state"], "cancelled", "{job}");
    assert!(job["step"].is_null(), "a finished job has no step: {job}");
    assert_eq!(job["outputs"].as_array().map(Vec::len), Some(0));
}

#[test]
fn an_interrupted_import_is_cleaned_up_at_start() {
    let t = app_with(|d| {
        // A temporary folder of an import whose process is gone (pid far above any real one).
        let tmp = d.path().join("data/models/imported/.tmp-4000000-1");
        std::fs::create_dir_all(tmp.join("unet")).expect("leftover");
        std::fs::write(tmp.join("unet/part.safetensors"), b"half a file").expect("leftover file");
        config(d, false)
    });
    let tmp = t.dir.path().join("data/models/imported/.tmp-4000000-1");
    let start = Instant::now();
    while tmp.exists() {
        assert!(start.elapsed() < Duration::from_secs(30), "the leftover import stays");
        std::thread::sleep(Duration::from_millis(50));
    }
}
