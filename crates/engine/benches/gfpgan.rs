//! GFPGAN v1.4 at full size (512x512 face, channel multiplier 2) on the CPU: candle against the
//! PyTorch reference architecture, same seeded weights (the reference writes them as a .pth that
//! we read the way we read `GFPGANv1.4.pth`), same input, same thread count, in one run. Prints
//! the medians, their ratio and the relative error between the two outputs.
//!
//!     cargo bench -p likeness-engine --bench gfpgan
//!
//! The reference side is `tools/bench_reference.py --gfpgan` with `$LIKENESS_BENCH_PYTHON` (default
//! `.venv/bin/python`, else `python3`); it needs torch and spandrel. `LIKENESS_BENCH_RUNS` (default 3)
//! sets the timed runs of each side (after one warm-up).

use std::process::Command;
use std::time::Instant;

use candle_core::{Device, Module, Tensor};
use likeness_engine::imgops::{self, Affine, Border};
use likeness_engine::models::gfpgan::{Config, Gfpgan};
use likeness_engine::pth::pth_var_builder;

mod common;
use common::{python, root};

fn main() {
    let dev = Device::Cpu;
    let runs = std::env::var("LIKENESS_BENCH_RUNS").ok().and_then(|s| s.parse().ok()).unwrap_or(3usize).max(1);
    let work = root().join("target/bench/gfpgan");
    std::fs::create_dir_all(&work).expect("mkdir");

    // A real 512x512 face: the sample portrait, in [-1, 1].
    let photo = image::open(root().join("assets/photos/grace_hopper_512x512.jpg")).expect("photo").to_rgb8();
    let x = imgops::warp_to_tensor(&photo, &Affine::IDENTITY, 512, 512, (-1.0, 1.0), Border::Replicate, &dev).expect("input");
    let input_path = work.join("gfpgan_input.safetensors");
    candle_core::safetensors::save(&[("input".to_string(), x.clone())].into_iter().collect(), &input_path).expect("save");

    let out = Command::new(python())
        .arg(root().join("tools/bench_reference.py"))
        .arg(&work)
        .args(["--gfpgan", "--runs", &runs.to_string()])
        .output()
        .expect("run tools/bench_reference.py (set LIKENESS_BENCH_PYTHON to a Python with torch and spandrel)");
    if !out.status.success() {
        panic!("reference failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let reference: serde_json::Value = serde_json::from_slice(&out.stdout).expect("reference JSON");
    let r = &reference["gfpgan-v1.4"];
    let ref_ms = r["median_ms"].as_f64().expect("reference median");

    let bytes = std::fs::read(work.join("gfpgan_full.pth")).expect("reference weights");
    let vb = pth_var_builder("gfpgan-v1.4", &bytes, Some("params_ema"), &dev).expect("read .pth");
    drop(bytes);
    let model = Gfpgan::new(&Config::v1_4(), vb).expect("model");
    let y = model.forward(&x).expect("warm-up");
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            drop(model.forward(&x).expect("forward"));
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    let ours = times[times.len() / 2];

    let want = candle_core::safetensors::load(work.join("gfpgan_output.safetensors"), &dev).expect("reference output");
    let want: &Tensor = &want["output"];
    let diff = (&y - want).and_then(|d| d.abs()).and_then(|d| d.max_all()).and_then(|d| d.to_scalar::<f32>()).expect("diff");
    let scale = want.abs().and_then(|d| d.max_all()).and_then(|d| d.to_scalar::<f32>()).expect("scale");

    let threads = rayon::current_num_threads();
    println!("\n== GFPGAN v1.4 architecture, 512x512 face, CPU, median of {runs} (candle: {threads} threads) ==");
    println!("{:<14} {:>12} {:>14} {:>8}  reference", "model", "ours ms", "reference ms", "ratio");
    println!("{:<14} {ours:>12.0} {ref_ms:>14.0} {:>8.2}  {}", "gfpgan-v1.4", ours / ref_ms, r["runtime"].as_str().unwrap_or("?"));
    println!("relative error vs the reference output: {:.2e}", diff / scale.max(1e-6));
}
