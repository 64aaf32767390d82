//! The full-size Stable Diffusion VAE (`diffusion::vae`, block channels 128/256/512/512) on random weights,
//! f32, CPU: a 64x64 latent decoded to 512x512 pixels and a 512x512 image encoded to its latent mean, ours
//! against diffusers' `AutoencoderKL` (torch, 2 threads, `tools/bench_vae_reference.py` with
//! `$LIKENESS_BENCH_PYTHON`) in one run. Prints the medians and the ratios.
//!
//!     cargo bench -p likeness-engine --bench vae
//!
//! `LIKENESS_BENCH_RUNS` (default 3) sets the timed calls of each after one warm-up. The reference runs
//! first, then ours, so the two never share the cores.

use std::process::Command;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use likeness_engine::diffusion::{config, vae::Vae};

mod common;
use common::{median, python, root, RandomWeights};

fn main() {
    let runs: usize = std::env::var("LIKENESS_BENCH_RUNS").ok().and_then(|s| s.parse().ok()).unwrap_or(3).max(1);
    let out = Command::new(python())
        .arg(root().join("tools/bench_vae_reference.py"))
        .args(["--runs", &runs.to_string()])
        .output()
        .expect("run tools/bench_vae_reference.py (set LIKENESS_BENCH_PYTHON to a Python with torch and diffusers)");
    let text = String::from_utf8_lossy(&out.stdout);
    let reference: serde_json::Value = text
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("reference failed: {}", String::from_utf8_lossy(&out.stderr)));
    let list = |k: &str| -> Vec<f64> { reference[k].as_array().map(|a| a.iter().filter_map(|v| v.as_f64()).collect()).unwrap_or_default() };
    let (ref_dec, ref_enc) = (median(list("decode_s")), median(list("encode_s")));

    let dev = Device::Cpu;
    let cfg = config::vae(br#"{"block_out_channels": [128, 256, 512, 512], "layers_per_block": 2}"#).expect("config");
    let vae = Vae::new(&cfg, VarBuilder::from_backend(Box::new(RandomWeights), DType::F32, dev.clone())).expect("vae");
    let z = Tensor::randn(0f32, 1.0, (1, 4, 64, 64), &dev).expect("latent");
    let img = Tensor::randn(0f32, 1.0, (1, 3, 512, 512), &dev).expect("image");
    let timed = |f: &dyn Fn() -> Tensor| -> f64 {
        drop(f());
        median(
            (0..runs)
                .map(|_| {
                    let t = Instant::now();
                    drop(f());
                    t.elapsed().as_secs_f64()
                })
                .collect(),
        )
    };
    let dec = timed(&|| vae.decode(&z).expect("decode"));
    let enc = timed(&|| vae.encode_mean(&img).expect("encode"));
    println!("SD VAE (128/256/512/512), f32 CPU, 2 threads, {runs} runs, torch {}", reference["torch"]);
    println!("  decode 64x64 -> 512x512: ours {dec:.2} s, diffusers {ref_dec:.2} s, ratio {:.2}x", dec / ref_dec);
    println!("  encode 512x512 -> mean:  ours {enc:.2} s, diffusers {ref_enc:.2} s, ratio {:.2}x", enc / ref_enc);
}
