//! A real job through the worker (bundled models, the sample photo): events, the gallery's images
//! through the `likeness:` scheme, export, delete.

use std::time::{Duration, Instant};

use likeness_app::export::{self, ExportOptions};
use likeness_core::OutputId;
use serde_json::{json, Value};

use crate::support::{app_with, code, config, photo, settings};

fn wait_for_done(t: &crate::support::TestApp, id: &Value) -> Value {
    let start = Instant::now();
    loop {
        let job = t.jobs().into_iter().find(|j| &j["id"] == id).expect("job listed");
        match job["state"].as_str() {
            Some("done") => return job,
            Some("failed") | Some("cancelled") => panic!("job ended {job}"),
            _ => {}
        }
        assert!(start.elapsed() < Duration::from_secs(180), "job not done after 180 s: {job}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_job_runs_to_a_headshot_that_can_be_seen_exported_and_deleted() {
    let t = app_with(|d| config(d, true));
    let events = t.record("job-event");

    let a = t.stage("grace.jpg", photo()).expect("stage");
    let id = t.invoke("create_job", json!({"photos": [a["id"]], "settings": settings()})).expect("create");
    let job = wait_for_done(&t, &id);
    let outputs = job["outputs"].as_array().expect("outputs");
    assert_eq!(outputs.len(), 1, "{job}");
    let out = &outputs[0];
    assert_eq!(out["format"], "png");
    assert_eq!((out["width"].as_u64(), out["height"].as_u64()), (Some(512), Some(512)));
    let days = (out["expires_at"].as_i64().unwrap_or(0) - out["created_at"].as_i64().unwrap_or(0)) / 86_400;
    assert_eq!(days, 30);

    // Events: started, throttled progress, finished with the output.
    std::thread::sleep(Duration::from_millis(200));
    let ev = events.lock().expect("events").clone();
    let kinds: Vec<&str> = ev.iter().filter_map(|e| e["kind"].as_str()).collect();
    assert_eq!(kinds.first(), Some(&"started"), "{kinds:?}");
    assert!(kinds.contains(&"progress"), "{kinds:?}");
    let fin = ev.iter().find(|e| e["kind"] == "finished").expect("finished event");
    assert_eq!(fin["state"], "done");
    assert_eq!(fin["outputs"][0], out["id"]);

    // The gallery's images: decrypted in memory, served by the scheme.
    let state = t.state();
    let oid = out["id"].as_str().expect("id").to_string();
    let r = likeness_app::protocol::serve(&state, &format!("/output/{oid}"));
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "image/png");
    assert_eq!(r.headers()["cache-control"], "no-store");
    assert!(r.body().starts_with(b"\x89PNG"));
    let before = likeness_app::protocol::serve(&state, &format!("/input/{}/0", id.as_str().expect("id")));
    assert_eq!(before.status(), 200);
    assert_eq!(before.body(), &photo());
    assert_eq!(likeness_app::protocol::serve(&state, &format!("/input/{}/5", id.as_str().expect("id"))).status(), 404);

    // Favourites: stored with the output, shown in the job list.
    t.invoke("set_favourite", json!({"id": oid, "favourite": true})).expect("star");
    assert_eq!(t.jobs()[0]["outputs"][0]["favourite"], true);
    assert_eq!(code(t.invoke("set_favourite", json!({"id": "no-such-output", "favourite": true}))), "not_found");

    // Export writes the decrypted file where the dialog pointed: as made ...
    let oid_ = OutputId(oid.clone());
    let dest = t.dir.path().join("exported.png");
    let res = export::write_to(&state, &oid_, &ExportOptions::default(), &dest).expect("export");
    assert!(res.saved);
    assert_eq!(res.files, ["exported.png"]);
    assert_eq!(std::fs::read(&dest).expect("exported file"), r.body().clone());
    let bad = export::write_to(&state, &oid_, &ExportOptions::default(), &t.dir.path().join("no/such/dir/x.png"));
    assert_eq!(bad.map_err(|e| e.code), Err("io"));
    // ... or converted: JPEG, 256 px on the longest side, a templated name; several into a
    // folder never replace a file.
    let opts = ExportOptions { format: "jpg".into(), max_side: Some(256), jpeg_quality: 90, template: "{photo}-{preset}-{size}-{n}".into() };
    let folder = t.dir.path().join("several");
    std::fs::create_dir(&folder).expect("folder");
    let res = export::write_into(&state, &[oid_.clone(), oid_.clone()], &opts, &folder).expect("export several");
    assert_eq!(res.files, ["grace-square-256x256-1.jpg", "grace-square-256x256-2.jpg"]);
    let again = export::write_into(&state, &[oid_.clone()], &opts, &folder).expect("export again");
    assert_eq!(again.files, ["grace-square-256x256-1-2.jpg"], "an existing file is never replaced");
    let jpeg = std::fs::read(folder.join(&res.files[0])).expect("jpeg");
    assert!(jpeg.starts_with(&[0xFF, 0xD8, 0xFF]));
    let decoded = likeness_engine::image_io::decode(&jpeg, &Default::default()).expect("decodes");
    assert_eq!(decoded.image.dimensions(), (256, 256));
    // A larger size than the headshot never enlarges it; WebP is lossless.
    let big = ExportOptions { format: "webp".into(), max_side: Some(4096), ..ExportOptions::default() };
    let res = export::write_into(&state, &[oid_.clone()], &big, &folder).expect("webp");
    let webp = std::fs::read(folder.join(&res.files[0])).expect("webp");
    assert_eq!(likeness_app::commands::sniff_image(&webp), Some("image/webp"));
    assert_eq!(likeness_engine::image_io::decode(&webp, &Default::default()).expect("decodes").image.dimensions(), (512, 512));
    // Bad options are refused before any dialog opens.
    let with = |o: Value| t.invoke("export_output", json!({"id": oid, "options": o}));
    assert_eq!(code(with(json!({"format": "gif"}))), "invalid_input");
    assert_eq!(code(with(json!({"max_side": 10}))), "invalid_input");
    assert_eq!(code(with(json!({"template": "{nope}"}))), "invalid_input");
    assert!(with(json!({"path": "/etc/passwd"})).is_err(), "unknown options are refused");
    assert_eq!(code(t.invoke("export_outputs", json!({"ids": [], "options": {}}))), "invalid_input");
    assert_eq!(code(t.invoke("export_outputs", json!({"ids": [oid, "no-such-output"], "options": {}}))), "not_found");

    t.invoke("delete_output", json!({"id": oid})).expect("delete output");
    assert_eq!(code(t.invoke("delete_output", json!({"id": oid}))), "not_found");
    assert_eq!(likeness_app::protocol::serve(&state, &format!("/output/{oid}")).status(), 404);
    assert!(t.jobs()[0]["outputs"].as_array().is_some_and(|o| o.is_empty()));
    // The exported copy is the person's: deleting the output leaves it.
    assert!(dest.is_file());
    state.shutdown();
}

#[test]
fn a_photo_without_a_face_fails_in_plain_words() {
    let t = app_with(|d| config(d, true));
    let cup = std::fs::read(crate::support::repo_file("assets/photos/coffee.png")).expect("coffee photo");
    let a = t.stage("coffee.png", cup).expect("stage");
    let id = t.invoke("create_job", json!({"photos": [a["id"]], "settings": settings()})).expect("create");
    let start = Instant::now();
    let job = loop {
        let job = t.jobs().into_iter().find(|j| j["id"] == id).expect("job");
        if job["state"] == "failed" {
            break job;
        }
        assert_ne!(job["state"], "done", "a coffee cup made a headshot: {job}");
        assert!(start.elapsed() < Duration::from_secs(120), "{job}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let err = job["error"].as_str().expect("error message");
    assert!(err.contains("coffee.png") && err.to_lowercase().contains("face"), "{err}");
    t.state().shutdown();
}
