//! The Batch screen's commands: folders known only by tokens, a real batch through the worker
//! (export into a mirrored tree, CSV and JSON report), cancelling, and the refusals.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{app, app_with, code, config, photo, settings, TestApp};

fn token(t: &TestApp, dir: &Path) -> String {
    likeness_app::batch::register_folder(&t.state(), dir.to_path_buf()).token
}

fn start(t: &TestApp, input: &str, output: &str, recursive: bool) -> Result<Value, Value> {
    t.invoke("start_batch", json!({"input": input, "output": output, "recursive": recursive, "settings": settings(), "template": "{stem}-{preset}"}))
}

fn wait_for_report(t: &TestApp, id: &Value) -> Value {
    let started = Instant::now();
    loop {
        let v = t.invoke("batch_status", json!({"id": id})).expect("status");
        if !v["report"].is_null() {
            return v;
        }
        assert!(started.elapsed() < Duration::from_secs(300), "batch not finished after 300 s: {v}");
        std::thread::sleep(Duration::from_millis(150));
    }
}

#[test]
fn a_folder_runs_to_a_mirrored_tree_and_a_report() {
    let t = app_with(|d| config(d, true));
    let finished = t.record("batch-event");
    let input = t.dir.path().join("clients");
    std::fs::create_dir_all(input.join("anna")).expect("folders");
    std::fs::write(input.join("anna/grace.jpg"), photo()).expect("photo");
    std::fs::write(input.join("broken.jpg"), b"\xFF\xD8\xFFnot really a jpeg at all").expect("broken");
    std::fs::write(input.join("notes.txt"), b"not a photo").expect("notes");
    let output = t.dir.path().join("headshots");

    let (i, o) = (token(&t, &input), token(&t, &output));
    let v = start(&t, &i, &o, true).expect("start");
    assert_eq!(v["input_name"], "clients");
    assert_eq!(v["output_name"], "headshots");
    assert_eq!(v["total"], 2, "two photos taken, the text file is not: {v}");
    let names: Vec<&str> = v["files"].as_array().expect("files").iter().filter_map(|f| f["name"].as_str()).collect();
    assert!(names.contains(&"anna/grace.jpg") && names.contains(&"broken.jpg") && names.contains(&"notes.txt"), "{names:?}");
    let id = v["id"].clone();

    let v = wait_for_report(&t, &id);
    let r = &v["report"];
    assert_eq!((r["done"].as_u64(), r["failed"].as_u64(), r["not_processed"].as_u64()), (Some(1), Some(1), Some(1)), "{v}");
    let failures: Vec<&str> = r["failures"].as_array().expect("failures").iter().filter_map(|f| f["file"].as_str()).collect();
    assert_eq!(failures, ["broken.jpg", "notes.txt"]);
    let reason = r["failures"][0]["reason"].as_str().unwrap_or("");
    assert!(!reason.is_empty(), "{v}");
    // The output mirrors the input's subfolder; the report sits next to the headshots.
    let made = output.join("anna/grace-square.png");
    assert!(std::fs::read(&made).expect("headshot").starts_with(b"\x89PNG"));
    let csv = output.join(r["report_csv"].as_str().expect("csv name"));
    let csv = std::fs::read_to_string(csv).expect("csv report");
    assert!(csv.starts_with("input,output,status,reason,job,seconds\n") && csv.contains("\"anna/grace.jpg\",\"anna/grace-square.png\",\"done\""), "{csv}");
    let json: Value = serde_json::from_slice(&std::fs::read(output.join(r["report_json"].as_str().expect("json name"))).expect("json report")).expect("JSON");
    assert_eq!(json["files"].as_array().map(Vec::len), Some(3));
    let file = |name: &str| v["files"].as_array().and_then(|f| f.iter().find(|x| x["name"] == name).cloned()).expect("file listed");
    assert_eq!(file("anna/grace.jpg")["state"], "done");
    assert_eq!(file("broken.jpg")["state"], "failed");
    assert_eq!(file("notes.txt")["state"], "not-processed");
    std::thread::sleep(Duration::from_millis(100));
    assert!(finished.lock().expect("events").iter().any(|e| e["batch"] == id), "the page is told the batch finished");
    // A batch's jobs are not the Create screen's: the page files them under the batch.
    assert!(t.jobs().iter().all(|j| j["group_id"] == id));

    // The same batch again: nothing is made twice.
    let v = start(&t, &i, &o, true).expect("again");
    let v = wait_for_report(&t, &v["id"]);
    assert_eq!(v["report"]["done"], 0, "{v}");
    assert_eq!(v["report"]["earlier"], 1, "{v}");
    assert!(!output.join("anna/grace-square-2.png").exists());
    t.state().shutdown();
}

#[test]
fn cancelling_a_batch_stops_every_photo_not_yet_made() {
    let t = app();
    let input = t.dir.path().join("in");
    std::fs::create_dir(&input).expect("in");
    for n in 0..3 {
        std::fs::write(input.join(format!("p{n}.jpg")), photo()).expect("photo");
    }
    let output = t.dir.path().join("out");
    let v = start(&t, &token(&t, &input), &token(&t, &output), false).expect("start");
    assert_eq!(v["total"], 3);
    assert!(v["report"].is_null(), "the worker is off: nothing ran yet");
    let v = t.invoke("cancel_batch", json!({"id": v["id"]})).expect("cancel");
    assert_eq!(v["report"]["cancelled"], 3, "{v}");
    assert_eq!(v["report"]["done"], 0);
    assert!(v["files"].as_array().expect("files").iter().all(|f| f["state"] == "cancelled"), "{v}");
    // Only the report was written.
    let written: Vec<String> = std::fs::read_dir(&output).expect("out").filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    assert!(written.iter().all(|n| n.starts_with("likeness-report-") || n == ".likeness-batch.json"), "{written:?}");
}

#[test]
fn batch_requests_are_checked_before_anything_runs() {
    let t = app();
    let input = t.dir.path().join("in");
    std::fs::create_dir(&input).expect("in");
    std::fs::write(input.join("a.jpg"), photo()).expect("photo");
    let i = token(&t, &input);
    let o = token(&t, &t.dir.path().join("out"));
    assert_eq!(code(start(&t, "f999", &o, false)), "not_found", "an unknown token");
    assert_eq!(code(start(&t, &i, &i, false)), "invalid_input", "the output is the input");
    let inside = token(&t, &input.join("out"));
    assert_eq!(code(start(&t, &i, &inside, true)), "invalid_input", "a recursive batch would read its outputs");
    let bad = |field: &str, value: Value| {
        let mut s = settings();
        s[field] = value;
        t.invoke("start_batch", json!({"input": i, "output": o, "recursive": false, "settings": s}))
    };
    assert_eq!(code(bad("preset", json!("selfie"))), "invalid_input");
    assert_eq!(code(bad("backdrop", json!("image:/etc/passwd"))), "invalid_input", "backdrops are named, not paths");
    let tpl = t.invoke("start_batch", json!({"input": i, "output": o, "recursive": false, "settings": settings(), "template": "{nope}"}));
    assert_eq!(code(tpl), "invalid_input");
    // A missing input folder (removed after it was picked).
    let gone = t.dir.path().join("gone");
    std::fs::create_dir(&gone).expect("gone");
    let g = token(&t, &gone);
    std::fs::remove_dir(&gone).expect("remove");
    assert_eq!(code(start(&t, &g, &o, false)), "io");
    assert_eq!(code(t.invoke("batch_status", json!({"id": "nope"}))), "not_found");
    assert_eq!(code(t.invoke("cancel_batch", json!({"id": "nope"}))), "not_found");
    assert_eq!(code(t.invoke("pick_folder", json!({"purpose": "somewhere"}))), "invalid_input");
    assert!(t.jobs().is_empty(), "nothing was queued by a refused batch");
}
