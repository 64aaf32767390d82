//! The shell's security settings: the capability grants only the app's own commands, the CSP
//! allows no remote source, the scheme answers only for ids, and progress is throttled.

use std::time::{Duration, Instant};

use likeness_app::worker::{JobEvent, Throttle, PROGRESS_INTERVAL};
use likeness_core::worker::WorkerEvent;
use likeness_core::JobId;
use likeness_engine::progress::Stage;
use serde_json::Value;

use crate::support::{app, photo, repo_file};

include!("../../src-tauri/command_names.rs");

fn json_file(rel: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(repo_file(rel)).expect("read")).expect("JSON")
}

#[test]
fn the_capability_grants_exactly_the_apps_commands() {
    let cap = json_file("capabilities/default.json");
    assert_eq!(cap["windows"], serde_json::json!(["main"]));
    let perms: Vec<String> = cap["permissions"].as_array().expect("permissions").iter().filter_map(|p| p.as_str().map(str::to_owned)).collect();
    let mut expected: Vec<String> = COMMANDS.iter().map(|c| format!("allow-{}", c.replace('_', "-"))).collect();
    expected.extend(["core:event:allow-listen".to_string(), "core:event:allow-unlisten".to_string()]);
    let (mut a, mut b) = (perms.clone(), expected);
    a.sort();
    b.sort();
    assert_eq!(a, b);
    for p in &perms {
        for banned in ["fs:", "http:", "shell:", "updater:", "dialog:", "core:default", "core:webview", "core:window"] {
            assert!(!p.starts_with(banned), "{p} must not be granted");
        }
    }
    // build.rs declares the same commands (the app's ACL manifest): it includes this very list.
    let build = std::fs::read_to_string(repo_file("build.rs")).expect("build.rs");
    assert!(build.contains("include!(\"src-tauri/command_names.rs\")"), "build.rs must declare the shared command list");
}

#[test]
fn the_csp_allows_no_remote_source_and_devtools_stay_off() {
    let conf = json_file("tauri.conf.json");
    let csp = conf["app"]["security"]["csp"].as_str().expect("a CSP is set");
    assert!(csp.contains("default-src 'self'"), "{csp}");
    for directive in csp.split(';') {
        for src in directive.split_whitespace().skip(1) {
            let local = src.starts_with('\'')
                || ["likeness:", "http://likeness.localhost", "ipc:", "http://ipc.localhost", "blob:"].contains(&src);
            assert!(local, "remote source {src} in {directive}");
        }
    }
    assert_eq!(conf["app"]["windows"][0]["devtools"], Value::Null, "devtools must not be enabled");
    assert_eq!(conf["app"]["windows"][0]["dragDropEnabled"], false, "OS drops would hand paths to the page");
    let cargo = std::fs::read_to_string(repo_file("Cargo.toml")).expect("Cargo.toml");
    assert!(!cargo.contains("\"devtools\""), "the devtools feature must stay off");
}

#[test]
fn the_scheme_serves_ids_only() {
    let t = app();
    let state = t.state();
    let staged = t.stage("a.jpg", photo()).expect("stage");
    let id = staged["id"].as_str().expect("id");
    let r = likeness_app::protocol::serve(&state, &format!("/staged/{id}"));
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "image/jpeg");
    for path in ["/", "/etc/passwd", "/output/../../etc/passwd", "/staged/nope", "/input/x/notanumber", "/output/a/b"] {
        let r = likeness_app::protocol::serve(&state, path);
        assert!(r.status() == 404 || r.status() == 400, "{path}: {}", r.status());
        assert!(!r.body().starts_with(b"root:"), "{path}");
    }
}

#[test]
fn progress_events_are_throttled_per_job() {
    let th = Throttle::default();
    let t0 = Instant::now();
    let job = JobId("j1".into());
    let p = |stage, f| WorkerEvent::Progress { job: job.clone(), stage, fraction: f };
    assert!(matches!(th.filter(p(Stage::Decode, 0.0), t0), Some(JobEvent::Progress { .. })));
    // Same stage, too soon: dropped.
    assert!(th.filter(p(Stage::Decode, 0.01), t0 + Duration::from_millis(10)).is_none());
    // A new stage always goes through.
    assert!(th.filter(p(Stage::Detect, 0.1), t0 + Duration::from_millis(20)).is_some());
    assert!(th.filter(p(Stage::Detect, 0.12), t0 + Duration::from_millis(30)).is_none());
    assert!(th.filter(p(Stage::Detect, 0.2), t0 + Duration::from_millis(20) + PROGRESS_INTERVAL).is_some());
    // Another job is not held back by this one.
    let other = WorkerEvent::Progress { job: JobId("j2".into()), stage: Stage::Detect, fraction: 0.1 };
    assert!(th.filter(other, t0 + Duration::from_millis(31)).is_some());
    // Start and finish are never dropped.
    let fin = WorkerEvent::Finished { job: job.clone(), state: likeness_core::JobState::Done, error: None, outputs: vec![] };
    assert!(th.filter(fin, t0 + Duration::from_millis(32)).is_some());
    let started = WorkerEvent::Started { job, inputs: vec![], attempt: 1 };
    assert!(matches!(th.filter(started, t0 + Duration::from_millis(33)), Some(JobEvent::Started { attempt: 1, .. })));
}

#[test]
fn photo_names_and_ids_are_decoded_and_checked() {
    assert_eq!(likeness_app::commands::percent_decode("a%20b%2Fc%zz"), "a b/c%zz");
    assert_eq!(likeness_app::commands::sniff_image(b"GIF89a......"), None);
    assert_eq!(likeness_app::commands::sniff_image(b"RIFF\0\0\0\0WEBPVP8 "), Some("image/webp"));
    assert_eq!(likeness_app::export::date_of(0), "1970-01-01");
    assert_eq!(likeness_app::export::date_of(1_800_000_000), "2027-01-15");
    assert_eq!(likeness_app::export::date_of(951_782_400), "2000-02-29");
    // Backdrops are named, never given as paths by the page.
    use likeness_app::commands::check_backdrop;
    assert!(check_backdrop("image:warm-beige").is_ok() && check_backdrop("navy").is_ok());
    for bad in ["image:/etc/passwd", "image:../x", "image:a.jpg", "image:", "image:C:x"] {
        assert_eq!(check_backdrop(bad).map_err(|e| e.code), Err("invalid_input"), "{bad}");
    }
}
