//! `generate --restore`: without GFPGAN the headshot is still made and one notice says why; with
//! a (tiny, seeded) GFPGAN checkpoint imported into the data folder the restoration runs.

use sha2::{Digest, Sha256};

use crate::support::*;

const NOTICE: &str = "face restoration was skipped";

#[test]
fn restore_without_the_model_makes_the_headshots_and_says_so_once() {
    let data = tempfile::tempdir().expect("tempdir");
    let out = data.path().join("out");
    let a = photo("astronaut.png");
    let g = photo("grace_hopper_512x512.jpg");
    let args = ["generate", a.to_str().expect("utf8"), g.to_str().expect("utf8"), "--restore", "--out", out.to_str().expect("utf8")];
    let o = run(&args, data.path());
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(files(&out).len(), 2, "{}", stdout(&o));
    let err = stderr(&o);
    assert_eq!(err.matches(NOTICE).count(), 1, "{err}");
    assert!(err.contains("GFPGANv1.4.pth"), "the notice says what to import: {err}");
    // A strength outside 0-1 is refused before anything runs.
    let o = run(&["generate", g.to_str().expect("utf8"), "--restore", "1.5"], data.path());
    assert!(!o.status.success());
    assert!(stderr(&o).contains("restore strength"), "{}", stderr(&o));
}

/// A models folder like the bundled one whose manifest lists the tiny test checkpoint as GFPGAN.
pub(crate) fn models_with_tiny_gfpgan(dir: &std::path::Path, tiny: &[u8]) {
    let src = repo().join("models");
    for entry in std::fs::read_dir(&src).expect("models").flatten() {
        let p = entry.path();
        if p.extension().is_some_and(|e| e == "safetensors") {
            std::fs::copy(&p, dir.join(entry.file_name())).expect("copy");
        }
    }
    let manifest = std::fs::read_to_string(src.join("manifest.toml")).expect("manifest");
    let sha = hex::encode(Sha256::digest(tiny));
    let manifest = manifest
        .replace("e2cd4703ab14f4d01fd1383a8a8b266f9a5833dacee8e6a79d3bf21a1b6be5ad", &sha)
        .replace("bytes = 348632874", &format!("bytes = {}", tiny.len()));
    std::fs::write(dir.join("manifest.toml"), manifest).expect("write manifest");
}

#[test]
fn restore_runs_with_an_imported_checkpoint() {
    let data = tempfile::tempdir().expect("tempdir");
    let models = tempfile::tempdir().expect("tempdir");
    let tiny = std::fs::read(repo().join("crates/engine/tests/fixtures/gfpgan_tiny.pth")).expect("tiny .pth");
    models_with_tiny_gfpgan(models.path(), &tiny);
    let imported = data.path().join("models/imported/gfpgan-v1.4");
    std::fs::create_dir_all(&imported).expect("mkdir");
    std::fs::write(imported.join("GFPGANv1.4.pth"), &tiny).expect("install");

    let g = photo("grace_hopper_512x512.jpg");
    let m = models.path().to_str().expect("utf8");
    let shot = |extra: &[&str]| {
        let out = tempfile::tempdir_in(data.path()).expect("out");
        let mut args = vec!["--models-dir", m, "generate", g.to_str().expect("utf8"), "--relight", "0", "--retouch", "0"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--out", out.path().to_str().expect("utf8")]);
        let o = run(&args, data.path());
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(!stderr(&o).contains(NOTICE), "{}", stderr(&o));
        let f = files(out.path());
        image::open(f.first().expect("a headshot")).expect("decodes").to_rgb8()
    };
    let plain = shot(&[]);
    let restored = shot(&["--restore", "1"]);
    assert_eq!(plain.dimensions(), restored.dimensions());
    // The (random) network changed the face ...
    let changed = plain.as_raw().iter().zip(restored.as_raw()).filter(|(a, b)| a.abs_diff(**b) > 8).count();
    assert!(changed > 1000, "only {changed} channel values changed");
    // ... and nothing far from it: the backdrop's corner is the same.
    assert_eq!(plain.get_pixel(2, 2), restored.get_pixel(2, 2));
}
