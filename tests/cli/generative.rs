//! The generative look end to end through the real binary, on the tiny random-weight Stable Diffusion
//! model committed with the engine's fixtures (crates/engine/tests/fixtures/sd/tiny): outputs written and
//! recorded, job states, the kept region byte-identical across seeds (only backdrop / clothes change), the
//! same seed giving the same image, cancellation, and errors before any job is made.

use std::path::{Path, PathBuf};

use crate::support::*;

fn tiny() -> PathBuf {
    repo().join("crates/engine/tests/fixtures/sd/tiny")
}

fn generative(data: &Path, out: &Path, seed: &str, extra: &[&str]) -> std::process::Output {
    generative_in(data, None, out, seed, extra)
}

/// `generate --look generative` on the tiny model at draft quality, 3 steps, 256 px; `models` replaces
/// the bundled models folder.
fn generative_in(data: &Path, models: Option<&Path>, out: &Path, seed: &str, extra: &[&str]) -> std::process::Output {
    generative_env(data, models, out, seed, extra, &[])
}

fn generative_env(data: &Path, models: Option<&Path>, out: &Path, seed: &str, extra: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let model = tiny();
    let mut args: Vec<String> = match models {
        Some(m) => vec!["--models-dir".into(), m.to_str().expect("utf8").into()],
        None => vec![],
    };
    args.extend(
        [
            "generate",
            photo("grace_hopper_512x512.jpg").to_str().expect("utf8"),
            "--look",
            "generative",
            "--model",
            model.to_str().expect("utf8"),
            "--quality",
            "draft",
            "--steps",
            "3",
            "--max-size",
            "256",
            "--seed",
            seed,
            "--out",
            out.to_str().expect("utf8"),
            "--json",
        ]
        .into_iter()
        .map(str::to_owned),
    );
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    run_env(&refs, data, env)
}

fn images(dir: &Path) -> Vec<image::RgbImage> {
    files(dir).iter().map(|p| image::open(p).expect("output image").to_rgb8()).collect()
}

#[test]
fn generative_job_writes_variants_keeps_the_face_and_is_deterministic() {
    let data = tempfile::tempdir().expect("tempdir");
    let (a, b, c) = (data.path().join("a"), data.path().join("b"), data.path().join("c"));
    let extra = ["--attire", "suit", "--backdrop", "office", "--lighting", "dramatic", "--variants", "2"];
    let o = generative(data.path(), &a, "5", &extra);
    assert!(o.status.success(), "{}", stderr(&o));
    let v = json(&o);
    let outputs = v["outputs"].as_array().expect("outputs");
    assert_eq!(outputs.len(), 2, "one output per variant: {v}");
    assert!(v["failures"].as_array().expect("failures").is_empty());
    assert_eq!(outputs[0]["job"], outputs[1]["job"], "N variants are N outputs of one job");
    let first = images(&a);
    assert_eq!(first.len(), 2);
    assert_eq!(first[0].dimensions(), (256, 256));
    assert_ne!(first[0], first[1], "variants use different seeds");

    // The job is recorded as done with both outputs.
    let jobs = run(&["jobs", "list", "--json"], data.path());
    let jobs = json(&jobs)["jobs"].as_array().expect("jobs").clone();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0]["state"], "done");
    assert_eq!(jobs[0]["outputs"].as_array().map(Vec::len), Some(2));

    // Same seed, same images.
    let o = generative(data.path(), &b, "5", &extra);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(images(&b), first);

    // Another seed: the generated region changes, the kept region (face, hair, neck) does not.
    let o = generative(data.path(), &c, "6", &extra);
    assert!(o.status.success(), "{}", stderr(&o));
    let other = images(&c);
    assert_only_generated_region_changed(&first[0], &other[0]);
}

/// Two 256 px headshots of one photo from different seeds: part of the image (the generated backdrop /
/// clothes) differs and the kept region does not; the centre of the face (framing puts the eyes on the
/// centre line, in the upper half) is byte-identical.
fn assert_only_generated_region_changed(x: &image::RgbImage, y: &image::RgbImage) {
    let same = x.pixels().zip(y.pixels()).filter(|(p, q)| p == q).count() as f32 / (256.0 * 256.0);
    assert!(same > 0.08 && same < 0.9, "kept fraction {same}");
    for (px, py) in [(128, 100), (128, 120), (118, 110), (138, 110)] {
        assert_eq!(x.get_pixel(px, py), y.get_pixel(px, py), "face pixel ({px},{py}) changed with the seed");
    }
}

#[test]
fn generative_queued_job_can_be_cancelled_and_old_settings_still_parse() {
    let data = tempfile::tempdir().expect("tempdir");
    let model = tiny();
    let o = run(
        &[
            "generate",
            photo("grace_hopper_512x512.jpg").to_str().expect("utf8"),
            "--look",
            "generative",
            "--model",
            model.to_str().expect("utf8"),
            "--queue",
            "--json",
        ],
        data.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let id = json(&o)["queued"][0]["job"].as_str().expect("job id").to_owned();
    let o = run(&["jobs", "cancel", &id], data.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(&["jobs", "run", "--json"], data.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let jobs = json(&run(&["jobs", "list", "--json"], data.path()))["jobs"].as_array().expect("jobs").clone();
    assert_eq!(jobs[0]["state"], "cancelled");
    assert_eq!(jobs[0]["outputs"].as_array().map(Vec::len), Some(0));

    // Settings written before the generative look existed still parse, as the studio look.
    let old = r#"{"preset":"square","backdrop":"gradient","format":"png","jpeg_quality":92,"relight":0.5,"retouch":0.35,"max_size":2048}"#;
    let s = likeness_core::worker::StudioSettings::from_json(old).expect("old settings");
    assert!(!s.is_generative());
    assert_eq!(s.variants, 1);
}

#[test]
fn generative_options_are_checked_before_any_job_is_made() {
    let data = tempfile::tempdir().expect("tempdir");
    let p = photo("grace_hopper_512x512.jpg");
    let p = p.to_str().expect("utf8");
    let model = tiny();
    let m = model.to_str().expect("utf8");
    for (args, needle) in [
        (vec!["generate", p, "--look", "generative"], "needs a model"),
        (vec!["generate", p, "--look", "generative", "--model", "no-such-model"], "no model 'no-such-model'"),
        (vec!["generate", p, "--look", "generative", "--model", m, "--attire", "cape"], "unknown attire"),
        (vec!["generate", p, "--look", "generative", "--model", m, "--backdrop", "moon"], "unknown backdrop"),
        (vec!["generate", p, "--look", "generative", "--model", m, "--quality", "ultra"], "unknown quality"),
        (vec!["generate", p, "--look", "generative", "--model", m, "--variants", "0"], "variants"),
        (vec!["generate", p, "--look", "painting"], "unknown look"),
    ] {
        let o = run(&args, data.path());
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(stderr(&o).contains(needle), "{args:?}: {}", stderr(&o));
    }
    let o = run(&["jobs", "list", "--json"], data.path());
    assert_eq!(json(&o)["jobs"].as_array().map(Vec::len), Some(0), "no job was recorded");
}

/// SDXL end to end: the tiny SDXL diffusers folder (two text encoders, text_time UNet; tests/fixtures/sd_import)
/// imported, then the generative look through it: outputs written, the same seed giving the same image,
/// and the face kept whatever the seed.
#[test]
fn sdxl_model_imports_and_generates() {
    let data = tempfile::tempdir().expect("tempdir");
    let src = repo().join("tests/fixtures/sd_import/sdxl_tiny");
    let o = run(&["models", "import", src.to_str().expect("utf8"), "--id", "xl"], data.path());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("sdxl"), "{}", stdout(&o));
    let gen = |out: &Path, seed: &str| {
        run(
            &[
                "generate",
                photo("grace_hopper_512x512.jpg").to_str().expect("utf8"),
                "--look",
                "generative",
                "--model",
                "xl",
                "--quality",
                "draft",
                "--steps",
                "2",
                "--max-size",
                "256",
                "--seed",
                seed,
                "--out",
                out.to_str().expect("utf8"),
                "--json",
            ],
            data.path(),
        )
    };
    let (a, b, c) = (data.path().join("a"), data.path().join("b"), data.path().join("c"));
    let o = gen(&a, "5");
    assert!(o.status.success(), "{}", stderr(&o));
    let v = json(&o);
    assert_eq!(v["outputs"].as_array().map(Vec::len), Some(1), "{v}");
    assert!(v["failures"].as_array().expect("failures").is_empty(), "{v}");
    let first = images(&a);
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].dimensions(), (256, 256));

    let o = gen(&b, "5");
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(images(&b), first, "same seed, same image");

    let o = gen(&c, "6");
    assert!(o.status.success(), "{}", stderr(&o));
    let other = images(&c);
    let (x, y) = (&first[0], &other[0]);
    assert_ne!(x, y, "another seed, another backdrop");
    assert_only_generated_region_changed(x, y);
}

#[test]
fn generative_look_honours_restore_and_the_output_size() {
    let data = tempfile::tempdir().expect("tempdir");
    let models = tempfile::tempdir().expect("tempdir");
    let tiny_gfpgan = std::fs::read(repo().join("crates/engine/tests/fixtures/gfpgan_tiny.pth")).expect("tiny .pth");
    crate::restore::models_with_tiny_gfpgan(models.path(), &tiny_gfpgan);
    let imported = data.path().join("models/imported/gfpgan-v1.4");
    std::fs::create_dir_all(&imported).expect("mkdir");
    std::fs::write(imported.join("GFPGANv1.4.pth"), &tiny_gfpgan).expect("install");
    let shot = |name: &str, extra: &[&str]| {
        let out = data.path().join(name);
        let mut all = vec!["--size", "320", "--upscale", "off"];
        all.extend_from_slice(extra);
        let o = generative_in(data.path(), Some(models.path()), &out, "7", &all);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(!stderr(&o).contains("face restoration was skipped"), "{}", stderr(&o));
        let imgs = images(&out);
        assert_eq!(imgs.len(), 1);
        imgs.into_iter().next().expect("one image")
    };
    let plain = shot("plain", &[]);
    // The output size applies to the generative look as to the studio look (the crop here is
    // framed for 320 px; without `--size` it would be the 256 px of `--max-size`).
    assert_eq!(plain.width().min(plain.height()), 320, "{:?}", plain.dimensions());
    let restored = shot("restored", &["--restore", "1"]);
    assert_eq!(plain.dimensions(), restored.dimensions());
    // The (random) GFPGAN changed the kept face, which is then the restored one.
    let (cx, cy) = (plain.width() / 2, plain.height() * 2 / 5);
    let changed = (cy - 20..cy + 20)
        .flat_map(|y| (cx - 20..cx + 20).map(move |x| (x, y)))
        .filter(|&(x, y)| plain.get_pixel(x, y) != restored.get_pixel(x, y))
        .count();
    assert!(changed > 400, "only {changed} of 1600 face pixels changed with restoration");
}

/// A model this machine cannot hold is refused before its weights are read, with the numbers and what to
/// do, instead of the process being killed mid-job. `LIKENESS_MAX_MEMORY_MB` (a user's or administrator's
/// cap, one of the limits the check reads beside the system's available memory and cgroup) stands in for a
/// small machine here. Nothing is written and the job is recorded as failed with the reason.
#[test]
fn generative_model_that_does_not_fit_in_memory_is_refused_with_what_to_do() {
    let data = tempfile::tempdir().expect("tempdir");
    let out = data.path().join("out");
    let o = generative_env(data.path(), None, &out, "1", &[], &[("LIKENESS_MAX_MEMORY_MB", "1")]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("not enough memory for model") && err.contains("LIKENESS_MAX_MEMORY_MB"), "{err}");
    assert!(err.contains("of weights in float32") && err.contains("close other programs"), "{err}");
    assert!(files(&out).is_empty(), "nothing written");
    let jobs = json(&run(&["jobs", "list", "--json"], data.path()))["jobs"].as_array().expect("jobs").clone();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0]["state"], "failed");
    assert!(jobs[0]["error"].as_str().unwrap_or_default().contains("not enough memory"), "{}", jobs[0]);

    // A cap that is not a number is named, not ignored.
    let o = generative_env(data.path(), None, &out, "1", &[], &[("LIKENESS_MAX_MEMORY_MB", "lots")]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("LIKENESS_MAX_MEMORY_MB is 'lots'"), "{}", stderr(&o));

    // With room (a 64 GB cap, or only the machine's own limits) the same job runs.
    let o = generative_env(data.path(), None, &out, "1", &[], &[("LIKENESS_MAX_MEMORY_MB", "65536")]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(files(&out).len(), 1);
}
