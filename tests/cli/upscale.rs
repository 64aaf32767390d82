//! `likeness upscale` and `generate --size / --upscale`: Real-ESRGAN on real photos, never
//! overwriting, clear errors; an imported SRVGGNetCompact read from its .pth.

use std::path::{Path, PathBuf};

use image::imageops::{self, FilterType};
use sha2::{Digest, Sha256};

use crate::support::*;

fn s(p: &Path) -> &str {
    p.to_str().expect("utf8")
}

/// A real photo made small (the full RRDBNet is heavy on a CPU): the astronaut's face, `side` px.
fn small_face(dir: &Path, name: &str, side: u32) -> PathBuf {
    let img = image::open(photo("astronaut.png")).expect("photo").to_rgb8();
    let face = imageops::crop_imm(&img, 160, 64, 128, 128).to_image();
    let p = dir.join(name);
    imageops::resize(&face, side, side, FilterType::Triangle).save(&p).expect("save");
    p
}

/// A models folder whose manifest lists an imported `realesr-general-x4v3` (the tiny seeded
/// SRVGGNetCompact .pth of the engine's fixtures) and, by absolute path, a bundled model.
fn models_with_compact(dir: &Path) -> PathBuf {
    let pth = repo().join("crates/engine/tests/fixtures/upscale_srvgg.pth");
    let blaze = repo().join("models/blazeface_front_128.safetensors");
    let entry = |id: &str, task: &str, path: &Path| {
        let bytes = std::fs::read(path).expect("read model");
        format!(
            "[[model]]\nid = \"{id}\"\ntask = \"{task}\"\nlicense = \"BSD-3-Clause\"\nsource = \"user import\"\n\
             [[model.files]]\npath = \"{}\"\nsha256 = \"{}\"\nbytes = {}\n\n",
            path.display(),
            hex::encode(Sha256::digest(&bytes)),
            bytes.len()
        )
    };
    let models = dir.join("models");
    std::fs::create_dir_all(&models).expect("mkdir");
    let manifest = entry("realesr-general-x4v3", "upscale", &pth) + &entry("blazeface-front-128", "face-detection", &blaze);
    std::fs::write(models.join("manifest.toml"), manifest).expect("manifest");
    models
}

#[test]
fn upscale_a_real_photo_4x_without_overwriting() {
    let data = tempfile::tempdir().expect("tempdir");
    let input = small_face(data.path(), "face.png", 40);
    let out = data.path().join("out");
    std::fs::create_dir_all(&out).expect("mkdir");
    // Someone's file already has the name the result would take.
    std::fs::write(out.join("face-x4.png"), b"mine").expect("write");
    let o = run(&["upscale", s(&input), "--out", s(&out), "--json"], data.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let v = json(&o);
    let rec = &v["outputs"][0];
    let path = PathBuf::from(rec["path"].as_str().expect("path"));
    assert_eq!(path, out.join("face-x4-2.png"));
    assert_eq!(std::fs::read(out.join("face-x4.png")).expect("read"), b"mine", "an existing file was overwritten");
    let img = image::open(&path).expect("png").to_rgb8();
    assert_eq!(img.dimensions(), (160, 160));
    assert_eq!((rec["width"].as_u64(), rec["height"].as_u64()), (Some(160), Some(160)));
    // The result is the photo, enlarged: close to the source when shrunk back.
    let back = imageops::resize(&img, 40, 40, FilterType::Triangle);
    let src = image::open(&input).expect("input").to_rgb8();
    let mean_err = back.as_raw().iter().zip(src.as_raw()).map(|(a, b)| (*a as f64 - *b as f64).abs()).sum::<f64>() / src.as_raw().len() as f64;
    assert!(mean_err < 8.0, "upscaled image does not resemble the input (mean error {mean_err:.1})");
}

#[test]
fn upscale_with_an_imported_compact_model_read_from_its_pth() {
    let data = tempfile::tempdir().expect("tempdir");
    let models = models_with_compact(data.path());
    let a = small_face(data.path(), "a.png", 24);
    let b = small_face(data.path(), "b.jpg", 30);
    let out = data.path().join("out");
    let args = ["--models-dir", s(&models), "upscale", s(&a), s(&b), "--out", s(&out), "--model", "realesr-general-x4v3", "--scale", "2", "--json"];
    let o = run(&args, data.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let v = json(&o);
    let outs = v["outputs"].as_array().expect("outputs");
    assert_eq!(outs.len(), 2);
    for (rec, side) in outs.iter().zip([48u32, 60]) {
        let img = image::open(rec["path"].as_str().expect("path")).expect("png");
        assert_eq!((img.width(), img.height()), (side, side));
    }
    assert_eq!(files(&out).len(), 2);
}

#[test]
fn upscale_errors_are_clear_and_write_nothing() {
    let data = tempfile::tempdir().expect("tempdir");
    let out = data.path().join("out");
    let notes = data.path().join("notes.png");
    std::fs::write(&notes, b"these are my notes, not a photo").expect("write");
    let good = small_face(data.path(), "good.png", 16);

    // Not an image: named, non-zero exit, nothing written for it.
    let o = run(&["upscale", s(&notes), "--out", s(&out)], data.path());
    let err = stderr(&o);
    assert!(!o.status.success());
    assert!(err.contains("notes.png") && err.contains("not an image"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(files(&out).is_empty());

    for (args, expect) in [
        (vec!["--scale", "3"], "upscale factor '3' (use 2 or 4)"),
        (vec!["--model", "no-such-model"], "no-such-model"),
        (vec!["--model", "blazeface-front-128"], "not an upscaler"),
    ] {
        let mut all = vec!["upscale", s(&good), "--out", s(&out)];
        all.extend(args);
        let o = run(&all, data.path());
        let err = stderr(&o);
        assert!(!o.status.success(), "{all:?} should fail");
        assert!(err.contains(expect), "{all:?}: expected '{expect}' in: {err}");
        assert!(files(&out).is_empty());
    }

    // A .pth that is not a checkpoint of an upscaler.
    let models = models_with_compact(data.path());
    let junk: &[u8] = b"PK\x03\x04 not really";
    std::fs::write(models.join("broken.pth"), junk).expect("write");
    let text = std::fs::read_to_string(models.join("manifest.toml")).expect("manifest");
    let digest = hex::encode(Sha256::digest(junk));
    let text = text + &format!(
        "[[model]]\nid = \"broken\"\ntask = \"upscale\"\nlicense = \"MIT\"\nsource = \"user import\"\n[[model.files]]\npath = \"broken.pth\"\nsha256 = \"{digest}\"\nbytes = {}\n",
        junk.len()
    );
    std::fs::write(models.join("manifest.toml"), text).expect("manifest");
    let o = run(&["--models-dir", s(&models), "upscale", s(&good), "--out", s(&out), "--model", "broken"], data.path());
    let err = stderr(&o);
    assert!(!o.status.success() && err.contains("model 'broken'") && err.contains("re-import"), "{err}");
    assert!(files(&out).is_empty());
}

/// `--size N` makes the output's short side exactly N; a smaller crop is upscaled with the real
/// Real-ESRGAN (auto) or plainly resized (off); without --size nothing changes.
#[test]
fn generate_size_upscales_small_crops() {
    let data = tempfile::tempdir().expect("tempdir");
    let img = image::open(photo("grace_hopper_512x512.jpg")).expect("photo").to_rgb8();
    let input = data.path().join("small.png");
    imageops::resize(&img, 64, 64, FilterType::Triangle).save(&input).expect("save");
    let out = data.path().join("out");
    let gen = |extra: &[&str]| {
        let mut args = vec!["generate", s(&input), "--out", s(&out), "--json"];
        args.extend_from_slice(extra);
        let o = run(&args, data.path());
        assert!(o.status.success(), "{extra:?}: {}", stderr(&o));
        let v = json(&o);
        let rec = &v["outputs"][0];
        let path = PathBuf::from(rec["path"].as_str().expect("path"));
        (image::open(&path).expect("png").to_rgb8(), stderr(&o))
    };
    let (plain, _) = gen(&[]);
    assert!(plain.width() < 96, "the crop of a 64-pixel photo is small ({}x{})", plain.width(), plain.height());
    let (off, _) = gen(&["--size", "96", "--upscale", "off"]);
    assert_eq!(off.dimensions(), (96, 96));
    let (auto, err) = gen(&["--size", "96"]);
    assert_eq!(auto.dimensions(), (96, 96));
    assert!(!err.contains("not upscaled"), "{err}");
    assert_ne!(auto, off, "auto must run Real-ESRGAN, not resample");
    // Bad values are refused before any job is recorded.
    for (flag, value, expect) in [("--upscale", "8", "use auto, off, 2 or 4"), ("--size", "20", "output size 20")] {
        let o = run(&["generate", s(&input), "--out", s(&out), flag, value], data.path());
        assert!(!o.status.success() && stderr(&o).contains(expect), "{flag} {value}: {}", stderr(&o));
    }
}
