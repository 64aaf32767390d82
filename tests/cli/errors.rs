//! Bad input: a clear, specific message naming the file, a non-zero exit, and nothing written.

use std::time::{Duration, Instant};

use crate::support::*;

fn generate_fails(input: &std::path::Path, expect: &str) {
    let data = tempfile::tempdir().expect("tempdir");
    let out = data.path().join("out");
    let o = run(&["generate", input.to_str().expect("utf8"), "--out", out.to_str().expect("utf8")], data.path());
    let err = stderr(&o);
    assert!(!o.status.success(), "{}: should fail", input.display());
    assert!(err.contains(expect), "{}: expected '{expect}' in: {err}", input.display());
    let name = input.file_name().and_then(|n| n.to_str()).expect("name");
    assert!(err.contains(name), "the message must name the file: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(files(&out).is_empty(), "something was written for a failed photo");
}

#[test]
fn unreadable_inputs_get_specific_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let empty = dir.path().join("empty.jpg");
    std::fs::write(&empty, b"").expect("w");
    generate_fails(&empty, "empty");

    let text = dir.path().join("notes.jpg");
    std::fs::write(&text, b"these are my notes, not a photo").expect("w");
    generate_fails(&text, "not an image");

    let full = std::fs::read(photo("grace_hopper_512x512.jpg")).expect("read");
    let truncated = dir.path().join("truncated.jpg");
    std::fs::write(&truncated, &full[..full.len() / 3]).expect("w");
    generate_fails(&truncated, "truncated");

    generate_fails(&dir.path().join("does-not-exist.png"), "cannot open");
    generate_fails(&photo("coffee.png"), "no face found");
}

#[test]
fn a_huge_png_header_is_refused_quickly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let huge = dir.path().join("huge.png");
    std::fs::write(&huge, png_header_only(60_000, 60_000)).expect("w");
    let start = Instant::now();
    generate_fails(&huge, "pixels");
    assert!(start.elapsed() < Duration::from_secs(10), "took {:?}", start.elapsed());
    let start = Instant::now();
    let o = run(&["detect", huge.to_str().expect("utf8")], dir.path());
    assert!(!o.status.success());
    // Refused from the header: decoding 3.6 gigapixels would take minutes and ~11 GB, so a
    // generous bound (a loaded CI machine) still tells the two apart.
    assert!(start.elapsed() < Duration::from_secs(10), "took {:?}", start.elapsed());
}

#[test]
fn missing_or_corrupt_models_are_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let models = dir.path().join("models");
    std::fs::create_dir(&models).expect("mkdir");
    for e in std::fs::read_dir(repo().join("models")).expect("ls") {
        let e = e.expect("entry");
        std::fs::copy(e.path(), models.join(e.file_name())).expect("copy");
    }
    let target = models.join("face_mesh_468.safetensors");
    let mut bytes = std::fs::read(&target).expect("read");
    let n = bytes.len();
    bytes[n / 2] ^= 0xFF;
    std::fs::write(&target, &bytes).expect("write");
    let out = dir.path().join("out");
    let astronaut = photo("astronaut.png");
    let args = ["--models-dir", models.to_str().expect("utf8"), "generate", astronaut.to_str().expect("utf8"), "--out", out.to_str().expect("utf8")];
    let o = run(&args, dir.path());
    assert!(!o.status.success());
    assert!(stderr(&o).contains("face_mesh_468.safetensors") && stderr(&o).contains("corrupt"), "{}", stderr(&o));

    std::fs::remove_file(&target).expect("rm");
    let o = run(&args, dir.path());
    assert!(!o.status.success());
    assert!(stderr(&o).contains("missing"), "{}", stderr(&o));
    assert!(files(&out).is_empty());

    let o = run(&["--models-dir", models.to_str().expect("utf8"), "models", "verify"], dir.path());
    assert!(!o.status.success());
}

#[test]
fn one_bad_photo_does_not_stop_the_others() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.png");
    std::fs::write(&bad, b"\x89PNG\r\n\x1a\nbroken").expect("w");
    let out = dir.path().join("out");
    let o = run(
        &["generate", bad.to_str().expect("utf8"), photo("astronaut.png").to_str().expect("utf8"), "--out", out.to_str().expect("utf8"), "--json"],
        dir.path(),
    );
    assert!(!o.status.success(), "exit code must report the failure");
    let v = json(&o);
    assert_eq!(v["outputs"].as_array().map(Vec::len), Some(1));
    assert_eq!(v["failures"].as_array().map(Vec::len), Some(1));
    assert!(v["failures"][0]["error"].as_str().expect("e").contains("bad.png"));
}
