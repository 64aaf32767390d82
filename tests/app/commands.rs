//! Each command's success and error paths (the worker is off: jobs stay queued).

use serde_json::{json, Value};

use crate::support::{app, app_with, code, config, photo, settings};

#[test]
fn app_info_and_privacy_notice_acknowledged_once() {
    let t = app();
    let info = t.invoke("app_info", Value::Null).expect("app_info");
    assert_eq!(info["library_error"], Value::Null);
    assert_eq!(info["privacy_acknowledged"], false);
    assert_eq!(info["retention_days"], 30);
    assert_eq!(info["key_kind"], "passphrase");
    assert_eq!(info["data_dir"].as_str(), Some(t.dir.path().join("data").to_string_lossy().as_ref()));
    assert_eq!(info["max_photos"], 3);
    let presets: Vec<&str> = info["presets"].as_array().expect("presets").iter().filter_map(|p| p["value"].as_str()).collect();
    assert!(presets.contains(&"square") && presets.contains(&"passport-eu"), "{presets:?}");
    assert!(info["backdrops"].as_array().expect("backdrops").iter().any(|b| b["value"] == "image:warm-beige"));

    t.invoke("acknowledge_privacy", Value::Null).expect("acknowledge");
    assert_eq!(t.invoke("app_info", Value::Null).expect("app_info")["privacy_acknowledged"], true);
    drop(t.app);
}

#[test]
fn app_info_reports_a_library_that_cannot_open() {
    // The data folder is a file: nothing can be stored, and the page is told why.
    let t = app_with(|d| {
        let file = d.path().join("not-a-folder");
        std::fs::write(&file, b"x").expect("write");
        likeness_app::Config { data_dir: Some(file), ..config(d, false) }
    });
    let info = t.invoke("app_info", Value::Null).expect("app_info never fails");
    assert_eq!(info["library_error"]["code"], "io", "{info}");
    assert_eq!(info["privacy_acknowledged"], false);
    assert_eq!(code(t.invoke("list_jobs", Value::Null)), "io");
    assert_eq!(code(t.invoke("acknowledge_privacy", Value::Null)), "io");
}

#[test]
fn stage_photo_accepts_photos_and_refuses_everything_else() {
    let t = app();
    let staged = t.stage("grace%20hopper.jpg", photo()).expect("stage");
    assert_eq!(staged["name"], "grace hopper.jpg");
    assert_eq!(staged["size"].as_u64(), Some(photo().len() as u64));

    assert_eq!(code(t.stage("notes.txt", b"just some text, not a photo".to_vec())), "invalid_input");
    assert_eq!(code(t.stage("empty.jpg", Vec::new())), "invalid_input");
    // JSON instead of raw bytes.
    assert_eq!(code(t.invoke("stage_photo", json!({"bytes": [1, 2, 3]}))), "invalid_input");
    // A path-like name keeps only the file name.
    let s2 = t.stage("%2Fhome%2Fsomeone%2Fme.jpg", photo()).expect("stage");
    assert_eq!(s2["name"], "me.jpg");
    t.stage("3.jpg", photo()).expect("third");
    let fourth = t.stage("4.jpg", photo());
    assert_eq!(code(fourth), "invalid_input");

    t.invoke("unstage_photo", json!({"id": staged["id"]})).expect("unstage");
    assert_eq!(code(t.invoke("unstage_photo", json!({"id": staged["id"]}))), "not_found");
    t.stage("4.jpg", photo()).expect("room again after removing one");
}

#[test]
fn create_job_queues_the_staged_photos() {
    let t = app();
    let a = t.stage("a.jpg", photo()).expect("stage");
    let b = t.stage("b.jpg", photo()).expect("stage");
    let id = t.invoke("create_job", json!({"photos": [a["id"], b["id"]], "settings": settings()})).expect("create_job");
    let jobs = t.jobs();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0]["id"], id);
    assert_eq!(jobs[0]["state"], "queued");
    assert_eq!(jobs[0]["inputs"], json!(["a.jpg", "b.jpg"]));
    assert_eq!(jobs[0]["settings"]["preset"], "square");
    // The photos joined the job: they are no longer waiting.
    assert_eq!(code(t.invoke("unstage_photo", json!({"id": a["id"]}))), "not_found");
    assert_eq!(code(t.invoke("create_job", json!({"photos": [a["id"]], "settings": settings()}))), "not_found");
}

#[test]
fn create_job_refuses_bad_requests_before_storing_anything() {
    let t = app();
    let a = t.stage("a.jpg", photo()).expect("stage");
    assert_eq!(code(t.invoke("create_job", json!({"photos": [], "settings": settings()}))), "invalid_input");
    assert_eq!(code(t.invoke("create_job", json!({"photos": ["a", "b", "c", "d"], "settings": settings()}))), "invalid_input");
    let mut bad = settings();
    bad["preset"] = json!("selfie");
    assert_eq!(code(t.invoke("create_job", json!({"photos": [a["id"]], "settings": bad}))), "invalid_input");
    let mut bad = settings();
    bad["backdrop"] = json!("image:no-such-backdrop");
    assert_eq!(code(t.invoke("create_job", json!({"photos": [a["id"]], "settings": bad}))), "invalid_input");
    assert_eq!(code(t.invoke("create_job", json!({"photos": ["s999"], "settings": settings()}))), "not_found");
    // A missing argument is refused by the IPC layer itself.
    assert!(t.invoke("create_job", json!({"photos": [a["id"]]})).is_err());
    assert!(t.jobs().is_empty());
    // The photo is still waiting after the refusals.
    t.invoke("create_job", json!({"photos": [a["id"]], "settings": settings()})).expect("valid job");
}

#[test]
fn cancel_and_delete_jobs() {
    let t = app();
    let a = t.stage("a.jpg", photo()).expect("stage");
    let id = t.invoke("create_job", json!({"photos": [a["id"]], "settings": settings()})).expect("create");
    assert_eq!(t.invoke("cancel_job", json!({"id": id})).expect("cancel"), "cancelled");
    assert_eq!(t.jobs()[0]["state"], "cancelled");
    // Cancelling again is harmless: the answer is the job's state.
    assert_eq!(t.invoke("cancel_job", json!({"id": id})).expect("cancel again"), "cancelled");
    assert_eq!(code(t.invoke("cancel_job", json!({"id": "no-such-job"}))), "not_found");
    t.invoke("delete_job", json!({"id": id})).expect("delete");
    assert!(t.jobs().is_empty());
    assert_eq!(code(t.invoke("delete_job", json!({"id": id}))), "not_found");
    assert_eq!(code(t.invoke("delete_output", json!({"id": "no-such-output"}))), "not_found");
    // Export looks the output up before any dialog opens.
    assert_eq!(code(t.invoke("export_output", json!({"id": "no-such-output"}))), "not_found");
}

#[test]
fn retention_days_and_delete_all_data() {
    let t = app();
    assert_eq!(t.invoke("set_retention_days", json!({"days": 7})).expect("set")["retention_days"], 7);
    assert_eq!(t.invoke("app_info", Value::Null).expect("info")["retention_days"], 7);
    assert_eq!(code(t.invoke("set_retention_days", json!({"days": 0}))), "invalid_input");
    assert!(t.invoke("set_retention_days", json!({"days": -3})).is_err());

    let a = t.stage("a.jpg", photo()).expect("stage");
    t.invoke("create_job", json!({"photos": [a["id"]], "settings": settings()})).expect("create");
    let waiting = t.stage("b.jpg", photo()).expect("stage");
    t.invoke("delete_all_data", Value::Null).expect("delete all");
    assert!(t.jobs().is_empty());
    assert_eq!(code(t.invoke("unstage_photo", json!({"id": waiting["id"]}))), "not_found");
    // The library stays usable.
    let c = t.stage("c.jpg", photo()).expect("stage after delete");
    t.invoke("create_job", json!({"photos": [c["id"]], "settings": settings()})).expect("create after delete");
}

#[test]
fn preview_finds_the_face_and_the_crop() {
    let t = app();
    let a = t.stage("grace.jpg", photo()).expect("stage");
    let p = t.invoke("preview_photo", json!({"id": a["id"], "preset": "portrait"})).expect("preview");
    assert_eq!((p["width"].as_u64(), p["height"].as_u64()), (Some(512), Some(512)));
    let faces = p["faces"].as_array().expect("faces");
    assert_eq!(faces.len(), 1, "{p}");
    let (x, w) = (faces[0]["x"].as_f64().unwrap_or(-1.0), faces[0]["w"].as_f64().unwrap_or(0.0));
    assert!(x > 50.0 && x + w < 460.0 && w > 80.0, "face box {p}");
    let crop = p["crop"].as_array().expect("crop corners");
    assert_eq!(crop.len(), 4);
    // Portrait 4:5: the crop is taller than wide.
    let width = crop[1][0].as_f64().unwrap_or(0.0) - crop[0][0].as_f64().unwrap_or(0.0);
    let height = crop[3][1].as_f64().unwrap_or(0.0) - crop[0][1].as_f64().unwrap_or(0.0);
    assert!((height / width - 1.25).abs() < 0.05, "crop {crop:?}");

    assert_eq!(code(t.invoke("preview_photo", json!({"id": a["id"], "preset": "selfie"}))), "invalid_input");
    assert_eq!(code(t.invoke("preview_photo", json!({"id": "s404", "preset": "square"}))), "not_found");
    // A photo without a face: an answer with a note, not an error.
    let cup = std::fs::read(crate::support::repo_file("assets/photos/coffee.png")).expect("coffee photo");
    let c = t.stage("coffee.png", cup).expect("stage");
    let p = t.invoke("preview_photo", json!({"id": c["id"], "preset": "square"})).expect("preview");
    assert!(p["faces"].as_array().is_some_and(|f| f.is_empty()), "{p}");
    assert!(p["notes"][0].as_str().is_some_and(|n| n.contains("No face")), "{p}");
}

#[test]
fn settings_managed_by_the_machine_policy_show_as_managed() {
    let json = br#"{"retention_min_days": 7, "retention_max_days": 7, "allowed_export_formats": ["png"], "allow_model_import": false}"#;
    let policy = likeness_core::policy::Policy::from_json(json, "/etc/likeness/policy.json");
    let t = app_with(|d| likeness_app::Config { policy: Some(std::sync::Arc::new(policy)), ..config(d, false) });
    let info = t.invoke("app_info", Value::Null).expect("app_info");
    let p = &info["policy"];
    assert_eq!(p["refused"], Value::Null, "{p}");
    assert_eq!((p["retention_min_days"].as_u64(), p["retention_max_days"].as_u64()), (Some(7), Some(7)));
    assert_eq!(p["retention_bounds"]["managed"], true);
    assert_eq!(p["retention_bounds"]["source"], "/etc/likeness/policy.json");
    assert_eq!(p["export_formats"], json!(["png"]));
    assert_eq!(p["export_formats_managed"]["managed"], true);
    assert_eq!(p["model_import_allowed"], false);
    assert_eq!(p["data_dir"]["managed"], false);
    assert_eq!(info["retention_days"], 7, "the retention is clamped to the policy's bounds");
    // The page cannot change what the policy fixes.
    assert_eq!(code(t.invoke("set_retention_days", json!({"days": 30}))), "policy");

    // Without a policy nothing is managed.
    let t = app();
    let p = t.invoke("app_info", Value::Null).expect("app_info")["policy"].clone();
    assert_eq!(p["retention_bounds"]["managed"], false);
    assert_eq!(p["export_formats"], json!(["png", "jpg", "webp"]));
}
