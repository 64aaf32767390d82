//! The studio headshot benchmark: each stage and the whole headshot from a 12-megapixel JPEG, and
//! each model's forward pass against its reference runtime (onnxruntime / TFLite) on the same
//! inputs in the same run, with our/reference ratios. Medians; timings on shared machines are noisy.
//!
//!     cargo bench -p likeness-engine --bench headshot
//!
//! `LIKENESS_BENCH_MODELS_ONLY=1` stops after the model table (quick iterations on the kernels);
//! `LIKENESS_BENCH_ROUNDS=N` (default 1) alternates ours and the reference N times and reports medians
//! over the rounds (a shared machine's slow spells then fall on both sides);
//! `LIKENESS_BENCH_ONLY=<model id>` times only that model, without the reference (for `perf record`).
//!
//! The reference side runs `tools/bench_reference.py` with `$LIKENESS_BENCH_PYTHON` (default
//! `.venv/bin/python`, else `python3`); `tools/bench.sh` creates that environment.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use likeness_engine::composite::StudioStyle;
use likeness_engine::framing::Preset;
use likeness_engine::image_io::{DecodeLimits, OutputFormat};
use likeness_engine::models::{blazeface, facemesh, selfie};
use likeness_engine::pipeline::{studio_headshot, HeadshotRequest, ModelBytes, StudioModels};
use likeness_engine::progress::{CancelToken, NoProgress};

mod common;
use common::{python, root};

fn read(rel: &str) -> Vec<u8> {
    let p = root().join(rel);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1e3
}

/// A 12-megapixel (4000x3000) JPEG of the sample portrait: upscaled, on a soft backdrop.
fn twelve_megapixel_jpeg() -> Vec<u8> {
    let src = image::load_from_memory(&read("assets/photos/grace_hopper_512x512.jpg")).expect("sample").to_rgb8();
    let face = image::imageops::resize(&src, 2600, 2600, image::imageops::FilterType::CatmullRom);
    let mut canvas = image::RgbImage::from_fn(4000, 3000, |x, y| image::Rgb([90 + (x / 40) as u8, 100, 110 + (y / 40) as u8]));
    image::imageops::replace(&mut canvas, &face, 700, 400);
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90).encode_image(&canvas).expect("jpeg");
    out
}

/// CPU time of all this process's threads in ms: the sum of `/proc/self/task/*/schedstat`
/// (nanoseconds, Linux), or 0 where that is not available.
fn process_cpu_ms() -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return 0.0 };
    let ns: u64 = tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()))
        .sum();
    ns as f64 / 1e6
}

/// (median wall ms, mean CPU ms per call over all threads, fastest wall ms) of `runs` calls after
/// `warmup`. On a shared machine the fastest call is the one least disturbed by other load.
fn time_cpu<F: FnMut()>(warmup: usize, runs: usize, mut f: F) -> (f64, f64, f64) {
    for _ in 0..warmup {
        f();
    }
    let cpu0 = process_cpu_ms();
    let times: Vec<Duration> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    let fastest = times.iter().min().map_or(0.0, |d| d.as_secs_f64() * 1e3);
    (median(times), (process_cpu_ms() - cpu0) / runs.max(1) as f64, fastest)
}

fn reference_times(inputs: &Path) -> Option<serde_json::Value> {
    let out = Command::new(python())
        .arg(root().join("tools/bench_reference.py"))
        .arg(inputs)
        .output()
        .map_err(|e| eprintln!("reference runtime not run ({e}); run tools/bench.sh to set it up"))
        .ok()?;
    if !out.status.success() {
        eprintln!("reference runtime failed: {}", String::from_utf8_lossy(&out.stderr));
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

fn main() {
    let dev = Device::Cpu;
    let runs = std::env::var("LIKENESS_BENCH_RUNS").ok().and_then(|s| s.parse().ok()).unwrap_or(15usize);
    let bytes = ModelBytes {
        blazeface_front: read("models/blazeface_front_128.safetensors"),
        blazeface_back: Some(read("models/blazeface_back_256.safetensors")),
        face_mesh: read("models/face_mesh_468.safetensors"),
        selfie: read("models/selfie_segmentation_256.safetensors"),
    };
    let models = StudioModels::load(bytes, &dev).expect("models");

    // ---- Models: ours vs the reference runtime, same inputs ----
    let vb = |file: &str| {
        candle_nn::VarBuilder::from_buffered_safetensors(read(&format!("models/{file}")), DType::F32, &dev).expect("weights")
    };
    let front = blazeface::BlazeFace::new(&blazeface::Config::front(), vb("blazeface_front_128.safetensors")).expect("front");
    let back = blazeface::BlazeFace::new(&blazeface::Config::back(), vb("blazeface_back_256.safetensors")).expect("back");
    let mesh = facemesh::FaceMeshNet::new(&facemesh::Config::face_mesh_468(), vb("face_mesh_468.safetensors")).expect("mesh");
    let seg = selfie::SelfieSegNet::new(&selfie::Config::default(), vb("selfie_segmentation_256.safetensors")).expect("selfie");
    let input = |s: usize, lo: f32, hi: f32| Tensor::rand(lo, hi, (1, 3, s, s), &dev).expect("rand");
    let inputs = [
        ("blazeface-front-128", input(128, -1.0, 1.0)),
        ("blazeface-back-256", input(256, -1.0, 1.0)),
        ("face-mesh-468", input(192, 0.0, 1.0)),
        ("selfie-segmentation-256", input(256, 0.0, 1.0)),
    ];
    if let Ok(only) = std::env::var("LIKENESS_BENCH_ONLY") {
        let n = runs.max(50);
        for (id, x) in inputs.iter().filter(|(id, _)| only.split(',').any(|o| o == *id)) {
            let (ms, cpu, _) = match *id {
                "blazeface-front-128" => time_cpu(10, n, || drop(front.forward(x).expect("fwd"))),
                "blazeface-back-256" => time_cpu(10, n, || drop(back.forward(x).expect("fwd"))),
                "face-mesh-468" => time_cpu(10, n, || drop(mesh.forward(x).expect("fwd"))),
                _ => time_cpu(10, n, || drop(seg.forward(x).expect("fwd"))),
            };
            println!("{id:<26} median {ms:>8.3} ms   cpu {cpu:>8.3} ms/call");
        }
        return;
    }
    let dir = root().join("target/bench");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let path = dir.join("model_inputs.safetensors");
    candle_core::safetensors::save(&inputs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(), &path).expect("save");
    // Rounds alternate ours and the reference, so that a shared machine's slow spells fall on
    // both sides; each figure is then the median over rounds of its per-round value.
    let rounds = std::env::var("LIKENESS_BENCH_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(1usize).max(1);
    let mut ours_rounds: Vec<Vec<(f64, f64, f64)>> = Vec::with_capacity(rounds);
    let mut ref_rounds: Vec<serde_json::Value> = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        ours_rounds.push(
            inputs
                .iter()
                .map(|(id, x)| match *id {
                    "blazeface-front-128" => time_cpu(10, 50, || drop(front.forward(x).expect("fwd"))),
                    "blazeface-back-256" => time_cpu(10, 50, || drop(back.forward(x).expect("fwd"))),
                    "face-mesh-468" => time_cpu(10, 50, || drop(mesh.forward(x).expect("fwd"))),
                    _ => time_cpu(10, 50, || drop(seg.forward(x).expect("fwd"))),
                })
                .collect(),
        );
        match reference_times(&path) {
            Some(r) => ref_rounds.push(r),
            None => break,
        }
    }
    let mid = |mut v: Vec<f64>| -> Option<f64> {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied()
    };

    println!(
        "\n== model forward, median wall ms, mean CPU ms per call and fastest call (candle CPU vs reference, {} thread(s) each; {} round{}, medians over rounds) ==",
        rayon::current_num_threads(),
        ours_rounds.len(),
        if ours_rounds.len() == 1 { "" } else { "s" }
    );
    println!(
        "{:<26} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7} {:>7} {:>7}  reference",
        "model", "ours", "ours cpu", "ours min", "ref", "ref cpu", "ref min", "ratio", "cpu", "min"
    );
    for (i, (id, _)) in inputs.iter().enumerate() {
        let ours_col = |f: fn(&(f64, f64, f64)) -> f64| mid(ours_rounds.iter().filter_map(|r| r.get(i)).map(f).collect()).unwrap_or(0.0);
        let (ms, cpu, fastest) = (ours_col(|t| t.0), ours_col(|t| t.1), ours_col(|t| t.2));
        let refs: Vec<&serde_json::Value> = ref_rounds.iter().filter_map(|v| v.get(*id)).collect();
        let num = |k: &str| mid(refs.iter().filter_map(|r| r.get(k)).filter_map(|m| m.as_f64()).collect());
        let fmt = |v: Option<f64>, digits: usize| v.map_or("-".into(), |v| format!("{v:.digits$}"));
        match (num("median_ms"), num("cpu_ms"), num("min_ms")) {
            (Some(rm), rc, rmin) => println!(
                "{id:<26} {ms:>9.3} {cpu:>9.3} {fastest:>9.3} {rm:>9.3} {:>9} {:>9} {:>7.2} {:>7} {:>7}  {}",
                fmt(rc, 3),
                fmt(rmin, 3),
                ms / rm,
                fmt(rc.map(|c| cpu / c), 2),
                fmt(rmin.map(|m| fastest / m), 2),
                refs.first().and_then(|r| r.get("runtime")).and_then(|s| s.as_str()).unwrap_or("")
            ),
            _ => println!(
                "{id:<26} {ms:>9.3} {cpu:>9.3} {fastest:>9.3} {:>9}  {}",
                "-",
                refs.first().map(|v| v.to_string()).unwrap_or_else(|| "not run".into())
            ),
        }
    }

    if std::env::var_os("LIKENESS_BENCH_MODELS_ONLY").is_some() {
        return;
    }
    // ---- The whole headshot from a 12 MP JPEG, per stage ----
    let jpeg = twelve_megapixel_jpeg();
    for (label, format) in [("png", OutputFormat::Png), ("jpg", OutputFormat::Jpeg { quality: 92 })] {
        let req = HeadshotRequest {
            preset: Preset::Portrait,
            style: StudioStyle::default(),
            format,
            max_short_side: 1024,
            limits: DecodeLimits::default(),
            ..HeadshotRequest::default()
        };
        let mut stages: Vec<Vec<Duration>> = vec![Vec::new(); 8];
        let mut size = (0, 0);
        for i in 0..runs + 2 {
            let t = Instant::now();
            let shot = studio_headshot(&models, &jpeg, &req, &NoProgress, &CancelToken::new()).expect("headshot");
            let total = t.elapsed();
            size = (shot.width, shot.height);
            if i < 2 {
                continue; // warm-up
            }
            let s = &shot.timings;
            for (k, d) in [s.decode, s.detect, s.landmarks, s.framing, s.segment, s.composite, s.encode, total].into_iter().enumerate() {
                stages[k].push(d);
            }
        }
        println!("\n== headshot from a 4000x3000 JPEG ({} bytes) -> {}x{} {label}, median of {runs} ==", jpeg.len(), size.0, size.1);
        for (name, v) in ["decode", "detect", "landmarks", "framing", "segment", "composite", "encode", "whole"].iter().zip(stages) {
            println!("{name:<10} {:>9.1} ms", median(v));
        }
    }
}
