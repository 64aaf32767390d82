//! The library through the command line: jobs, export, sweep, delete, purge, doctor, and a
//! kill -9 storm against the real binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

fn ok(args: &[&str], data: &Path) -> serde_json::Value {
    let o = run(args, data);
    assert!(o.status.success(), "likeness {args:?} failed: {}", stderr(&o));
    json(&o)
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// Every file under `dir`, recursively.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

fn jobs(data: &Path) -> Vec<serde_json::Value> {
    ok(&["jobs", "list", "--json"], data)["jobs"].as_array().expect("jobs").clone()
}

#[test]
fn generate_records_jobs_with_expiring_outputs_and_exports() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let grace = photo("grace_hopper_512x512.jpg");
    let coffee = photo("coffee.png");
    // Without --out: stored in the library only.
    let o = run(&["generate", &s(&grace), &s(&coffee), "--preset", "portrait", "--json"], &data);
    assert!(!o.status.success(), "the coffee photo has no face");
    let v = json(&o);
    assert_eq!(v["outputs"].as_array().expect("outputs").len(), 1);
    assert!(v["outputs"][0]["path"].is_null());
    assert!(v["failures"][0]["error"].as_str().expect("error").contains("no face"), "{v}");

    let list = jobs(&data);
    assert_eq!(list.len(), 2);
    let done = list.iter().find(|j| j["state"] == "done").expect("a done job");
    let failed = list.iter().find(|j| j["state"] == "failed").expect("a failed job");
    assert_eq!(done["input"].as_str(), Some(s(&grace).as_str()));
    assert!(failed["error"].as_str().expect("error").contains("no face"));
    let out = &done["outputs"][0];
    let created = time::OffsetDateTime::parse(out["created_at"].as_str().expect("c"), &time::format_description::well_known::Rfc3339)
        .expect("rfc3339");
    let expires = time::OffsetDateTime::parse(out["expires_at"].as_str().expect("e"), &time::format_description::well_known::Rfc3339)
        .expect("rfc3339");
    assert_eq!((expires - created).whole_days(), 30, "outputs expire 30 days after creation");
    assert!(out["width"].as_u64().expect("w") > 0);

    // Export by job id with a template; again: a new name, nothing overwritten.
    let to = dir.path().join("exported");
    let job_id = done["id"].as_str().expect("id");
    let e1 = ok(&["export", job_id, "--to", &s(&to), "--name", "{input}-{preset}-{n}", "--json"], &data);
    let p1 = PathBuf::from(e1["exported"][0]["path"].as_str().expect("path"));
    assert_eq!(p1.file_name().and_then(|n| n.to_str()), Some("grace_hopper_512x512-portrait-1.png"));
    let bytes1 = std::fs::read(&p1).expect("read");
    let img = image::load_from_memory(&bytes1).expect("a real image").to_rgb8();
    assert_eq!(u64::from(img.width()), out["width"].as_u64().expect("w"));
    let out_id = out["id"].as_str().expect("output id");
    let e2 = ok(&["export", out_id, "--to", &s(&to), "--name", "{input}-{preset}-{n}", "--json"], &data);
    let p2 = PathBuf::from(e2["exported"][0]["path"].as_str().expect("path"));
    assert_ne!(p1, p2);
    assert_eq!(std::fs::read(&p1).expect("read"), bytes1, "the first export was not touched");
    // Bad template and unknown ids are refused with a message.
    let bad = run(&["export", job_id, "--to", &s(&to), "--name", "{nope}"], &data);
    assert!(!bad.status.success() && stderr(&bad).contains("unknown placeholder"), "{}", stderr(&bad));
    let unknown = run(&["export", "no-such-id", "--to", &s(&to)], &data);
    assert!(!unknown.status.success() && stderr(&unknown).contains("neither a job nor an output"), "{}", stderr(&unknown));

    // No readable image bytes under the data dir.
    let photo_bytes = std::fs::read(&grace).expect("photo");
    let slice = &photo_bytes[photo_bytes.len() / 2..photo_bytes.len() / 2 + 64];
    for f in walk(&data) {
        let b = std::fs::read(&f).expect("read");
        for sig in [&b"\x89PNG"[..], &b"\xFF\xD8\xFF"[..], &b"RIFF"[..]] {
            assert!(!b.windows(sig.len()).any(|w| w == sig) || f.extension().is_some_and(|e| e == "db" || e == "db-wal"),
                "{} holds an image signature", f.display());
        }
        assert!(!b.windows(64).any(|w| w == slice), "{} holds the photo's bytes", f.display());
        assert!(!b.windows(bytes1.len().min(64)).any(|w| w == &bytes1[..64]), "{} holds an output's bytes", f.display());
    }

    // Sweep as of 31 days later removes the output; the exported copies stay.
    let later = (time::OffsetDateTime::now_utc() + time::Duration::days(31)).format(&time::format_description::well_known::Rfc3339).expect("fmt");
    let sw = ok(&["sweep", "--as-of", &later, "--json"], &data);
    assert_eq!(sw["report"]["outputs_expired"].as_u64(), Some(1), "{sw}");
    assert!(jobs(&data).iter().all(|j| j["outputs"].as_array().expect("o").is_empty()));
    assert!(p1.is_file() && p2.is_file(), "exported copies are the user's");
    // A clock moved back does not bring anything back.
    let v = ok(&["sweep", "--json"], &data);
    assert_eq!(v["report"]["outputs_expired"].as_u64(), Some(0));
    let bad_time = run(&["sweep", "--as-of", "yesterday"], &data);
    assert!(!bad_time.status.success() && stderr(&bad_time).contains("RFC 3339"));

    let doc = ok(&["doctor", "--json"], &data);
    assert_eq!(doc["integrity"], "ok");
    assert_eq!(doc["orphan_files"], 0);
    assert_eq!(doc["missing_files"], 0);
}

#[test]
fn delete_and_purge_remove_everything() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let grace = photo("grace_hopper_512x512.jpg");
    let astro = photo("astronaut.png");
    ok(&["generate", &s(&grace), &s(&astro), "--json"], &data);
    let list = jobs(&data);
    assert_eq!(list.len(), 2);
    // Delete one output, then one job.
    let out_id = list[0]["outputs"][0]["id"].as_str().expect("id").to_string();
    let o = run(&["delete", &out_id], &data);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(jobs(&data)[0]["outputs"].as_array().expect("o").is_empty());
    let job_id = list[1]["id"].as_str().expect("id").to_string();
    assert!(run(&["delete", &job_id], &data).status.success());
    assert_eq!(jobs(&data).len(), 1);
    let gone = run(&["delete", &job_id], &data);
    assert!(!gone.status.success() && stderr(&gone).contains("neither a job nor an output"), "{}", stderr(&gone));
    let vault_files = walk(&data.join("vault"));
    assert!(vault_files.is_empty(), "photos are released once jobs finish; outputs deleted: {vault_files:?}");

    // Purge needs both flags, then leaves no job data behind.
    ok(&["generate", &s(&grace), "--json"], &data);
    let refused = run(&["purge"], &data);
    assert!(!refused.status.success() && stderr(&refused).contains("--all --yes"));
    let o = run(&["purge", "--all", "--yes"], &data);
    assert!(o.status.success(), "{}", stderr(&o));
    let left = walk(&data);
    assert!(left.is_empty(), "purge left {left:?}");
    // The library starts afresh afterwards.
    assert!(jobs(&data).is_empty());
}

#[test]
fn queued_jobs_run_later_and_cancel() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let grace = photo("grace_hopper_512x512.jpg");
    let q = ok(&["generate", &s(&grace), &s(&grace), "--queue", "--json"], &data);
    assert_eq!(q["queued"].as_array().expect("queued").len(), 2);
    assert!(jobs(&data).iter().all(|j| j["state"] == "queued"));
    let cancel_id = q["queued"][1]["job"].as_str().expect("id").to_string();
    let c = run(&["jobs", "cancel", &cancel_id], &data);
    assert!(c.status.success(), "{}", stderr(&c));
    let r = ok(&["jobs", "run", "--json"], &data);
    assert_eq!(r["report"]["done"], 1, "{r}");
    let list = jobs(&data);
    let states: Vec<_> = list.iter().map(|j| j["state"].as_str().expect("state").to_string()).collect();
    assert_eq!(states, ["done", "cancelled"]);
    assert!(list[1]["outputs"].as_array().expect("o").is_empty());
}

/// Queues `n` jobs, then starts `likeness jobs run` and kills it with SIGKILL at random points,
/// `kills` times, before letting it finish: every job is done exactly once, no file is orphaned
/// or missing, and the database is intact.
#[test]
fn kill_dash_nine_storm_loses_and_repeats_nothing() {
    let kills: usize = std::env::var("LIKENESS_KILL_TEST_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(50);
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let photos = ["grace_hopper_512x512.jpg", "astronaut.png", "camera.png"];
    let mut args = vec!["generate".to_string()];
    for i in 0..8 {
        args.push(s(&photo(photos[i % photos.len()])));
    }
    args.extend(["--queue", "--json"].map(String::from));
    ok(&args.iter().map(String::as_str).collect::<Vec<_>>(), &data);
    // A job killed while running counts as an attempt; LIKENESS_MAX_ATTEMPTS allows enough that only
    // the kills matter here (the default of 3 is tested in the core crate).

    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut killed = 0;
    let start = Instant::now();
    while killed < kills {
        let mut child = Command::new(env!("CARGO_BIN_EXE_likeness"))
            .args(["jobs", "run", "--json"])
            .env("LIKENESS_DATA_DIR", &data)
            .env("LIKENESS_PASSPHRASE", "likeness-tests")
            .env("LIKENESS_MAX_ATTEMPTS", "1000")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        std::thread::sleep(Duration::from_millis(rand() % 700));
        match child.try_wait().expect("wait") {
            Some(_) => {
                // It finished everything before the kill: queue more work and go on.
                ok(&["generate", &s(&photo(photos[killed % photos.len()])), "--queue", "--json"], &data);
            }
            None => {
                child.kill().expect("SIGKILL");
                child.wait().expect("reap");
                killed += 1;
            }
        }
        assert!(start.elapsed() < Duration::from_secs(600), "the kill storm took too long");
    }
    let o = Command::new(env!("CARGO_BIN_EXE_likeness"))
        .args(["jobs", "run", "--json"])
        .env("LIKENESS_DATA_DIR", &data)
        .env("LIKENESS_PASSPHRASE", "likeness-tests")
        .env("LIKENESS_MAX_ATTEMPTS", "1000")
        .output()
        .expect("final run");
    assert!(o.status.success(), "{}", stderr(&o));
    let list = jobs(&data);
    assert!(list.len() >= 8);
    for j in &list {
        assert_eq!(j["state"], "done", "{j}");
        assert_eq!(j["outputs"].as_array().expect("o").len(), 1, "done exactly once: {j}");
    }
    let doc = ok(&["doctor", "--json"], &data);
    assert_eq!(doc["integrity"], "ok", "{doc}");
    assert_eq!(doc["orphan_files"], 0, "{doc}");
    assert_eq!(doc["missing_files"], 0, "{doc}");
    // Every output decrypts to a real image.
    let to = dir.path().join("all");
    let ids: Vec<String> = list.iter().map(|j| j["id"].as_str().expect("id").to_string()).collect();
    let mut ex = vec!["export".to_string()];
    ex.extend(ids);
    ex.extend(["--to".to_string(), s(&to), "--json".into()]);
    let e = ok(&ex.iter().map(String::as_str).collect::<Vec<_>>(), &data);
    for rec in e["exported"].as_array().expect("exported") {
        image::open(rec["path"].as_str().expect("p")).expect("decodes");
    }
}
