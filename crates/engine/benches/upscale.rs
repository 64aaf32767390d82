//! The upscaler benchmark: RRDBNet (Real-ESRGAN x4plus, real weights) and SRVGGNetCompact
//! (realesr-general-x4v3's shape, random weights) on a 256x256 tile, candle on the CPU against the
//! PyTorch reference (spandrel's architectures, `torch.set_num_threads(2)`) on the same input in
//! the same run; plus single convolutions through `fastconv`, nn.rs's im2col+gemm and candle's conv2d.
//!
//!     cargo bench -p likeness-engine --bench upscale
//!
//! Both sides use 2 threads; on a shared machine run it alone (wall-clock medians). The reference side runs `tools/bench_reference.py --torch` with
//! `$LIKENESS_BENCH_PYTHON` (default `.venv/bin/python`, else `python3`; it needs torch and
//! spandrel). `LIKENESS_BENCH_RUNS` (default 3) timed runs after one warm-up; medians.
//! `LIKENESS_BENCH_TILE` (default 256) sets the tile side (the x4plus model at 256 px is ~2.4 TFLOP).

use std::collections::HashMap;
use std::process::Command;
use std::time::Instant;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;
use likeness_engine::models::rrdbnet::{self, RrdbNet};
use likeness_engine::models::srvgg::{self, SrVggNetCompact};
use likeness_engine::fastconv::{Activation, Conv3x3};
use likeness_engine::nn::{Conv2d, Padding};

mod common;
use common::{python, root};

const THREADS: usize = 2;

/// This process's CPU time (all threads, user + system) in ms, from /proc (Linux; 0 elsewhere).
fn cpu_ms() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses): utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let ticks = field(11) + field(12);
    ticks * 10.0 // USER_HZ is 100 on Linux
}

/// Median wall-clock and median CPU ms of `runs` calls after one warm-up. On a loaded machine
/// the CPU time is the steadier measure of work (wall time depends on what else runs).
fn time(runs: usize, mut f: impl FnMut()) -> (f64, f64) {
    f();
    let (mut wall, mut cpu): (Vec<f64>, Vec<f64>) = (0..runs)
        .map(|_| {
            let (t, c) = (Instant::now(), cpu_ms());
            f();
            (t.elapsed().as_secs_f64() * 1e3, cpu_ms() - c)
        })
        .unzip();
    wall.sort_by(f64::total_cmp);
    cpu.sort_by(f64::total_cmp);
    (wall[wall.len() / 2], cpu[cpu.len() / 2])
}

fn main() {
    rayon::ThreadPoolBuilder::new().num_threads(THREADS).build_global().expect("thread pool");
    let dev = Device::Cpu;
    let runs = std::env::var("LIKENESS_BENCH_RUNS").ok().and_then(|s| s.parse().ok()).unwrap_or(3usize);

    let weights = std::fs::read(root().join("models/realesrgan_x4plus.safetensors")).expect("weights");
    let vb = VarBuilder::from_buffered_safetensors(weights, DType::F32, &dev).expect("vb");
    let rrdb = RrdbNet::new(&rrdbnet::Config::x4plus(), vb).expect("rrdb");

    let cfg = srvgg::Config::general_x4v3();
    let mut state = HashMap::new();
    for i in 0..=cfg.num_conv {
        let cin = if i == 0 { 3 } else { cfg.num_feat };
        state.insert(format!("{}.weight", 2 * i), Tensor::randn(0f32, 0.05, (cfg.num_feat, cin, 3, 3), &dev).expect("w"));
        state.insert(format!("{}.bias", 2 * i), Tensor::zeros(cfg.num_feat, DType::F32, &dev).expect("b"));
        state.insert(format!("{}.weight", 2 * i + 1), (Tensor::ones(cfg.num_feat, DType::F32, &dev).expect("a") * 0.25).expect("a"));
    }
    let last = 2 * cfg.num_conv + 2;
    state.insert(format!("{last}.weight"), Tensor::randn(0f32, 0.05, (48, cfg.num_feat, 3, 3), &dev).expect("w"));
    state.insert(format!("{last}.bias"), Tensor::zeros(48, DType::F32, &dev).expect("b"));
    let compact = SrVggNetCompact::new(&cfg, VarBuilder::from_tensors(state, DType::F32, &dev)).expect("srvgg");

    let tile = std::env::var("LIKENESS_BENCH_TILE").ok().and_then(|s| s.parse().ok()).unwrap_or(256usize);
    let x = Tensor::rand(0f32, 1.0, (1, 3, tile, tile), &dev).expect("input");
    eprintln!("timing RRDBNet x4plus on {tile}x{tile} ({runs} runs + 1 warm-up) ...");
    let ours_rrdb = time(runs, || drop(rrdb.forward(&x).expect("rrdb")));
    let ours_compact = time(runs, || drop(compact.forward(&x).expect("srvgg")));

    // Per-conv lines: RRDBNet's widest dense-block conv (192 -> 32 + LeakyReLU), its conv5
    // (192 -> 64) and SRVGG's 64 -> 64, through fastconv, nn.rs's im2col+gemm and candle's conv2d.
    let pad1 = Padding::Explicit { top: 1, bottom: 1, left: 1, right: 1 };
    let mut conv_lines = Vec::new();
    for (name, cin, cout) in [("rdb conv4 160->32", 160usize, 32usize), ("rdb conv5 192->64", 192, 64), ("srvgg 64->64", 64, 64)] {
        let w = Tensor::randn(0f32, 0.05, (cout, cin, 3, 3), &dev).expect("w");
        let b = Tensor::randn(0f32, 0.05, cout, &dev).expect("b");
        let fast = Conv3x3::from_tensors(w.clone(), Some(b.clone()), Activation::LeakyRelu(0.2)).expect("fastconv");
        let old = Conv2d::from_tensors(w, Some(b), 1, pad1, false).expect("conv");
        let xc = Tensor::rand(0f32, 1.0, (1, cin, tile, tile), &dev).expect("x");
        let gflop = 2.0 * 9.0 * (cin * cout * tile * tile) as f64 / 1e9;
        let n = runs.max(5);
        let t_new = time(n, || drop(fast.forward(&xc).expect("fast")));
        let t_old = time(n, || drop(old.forward(&xc).expect("im2col")));
        let t_candle = time(n, || drop(old.forward_candle(&xc).expect("candle")));
        conv_lines.push((name, gflop, t_new, t_old, t_candle));
    }

    let dir = root().join("target/bench");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let path = dir.join("upscale_inputs.safetensors");
    let inputs: HashMap<String, Tensor> = [("realesrgan-x4plus".to_string(), x.clone()), ("realesr-general-x4v3".to_string(), x)].into();
    candle_core::safetensors::save(&inputs, &path).expect("save");
    let out = Command::new(python())
        .arg(root().join("tools/bench_reference.py"))
        .arg(&path)
        .args(["--torch", "--warmup", "1", "--runs", &runs.to_string()])
        .output();
    let reference: Option<serde_json::Value> = match out {
        Ok(o) if o.status.success() => serde_json::from_slice(&o.stdout).ok(),
        Ok(o) => {
            eprintln!("reference runtime failed: {}", String::from_utf8_lossy(&o.stderr));
            None
        }
        Err(e) => {
            eprintln!("reference runtime not run ({e})");
            None
        }
    };

    println!("\n== upscalers on a {tile}x{tile} tile, median ms (candle CPU vs PyTorch CPU, {THREADS} threads) ==");
    println!("{:<22} {:>10} {:>10} {:>6} {:>10} {:>10} {:>6}  reference", "model", "ours", "ref", "ratio", "ours cpu", "ref cpu", "ratio");
    for (id, (ms, cpu)) in [("realesrgan-x4plus", ours_rrdb), ("realesr-general-x4v3", ours_compact)] {
        let r = reference.as_ref().and_then(|v| v.get(id));
        let get = |k: &str| r.and_then(|r| r.get(k)).and_then(|m| m.as_f64());
        match (get("median_ms"), get("cpu_ms")) {
            (Some(rm), Some(rc)) => println!(
                "{id:<22} {ms:>10.0} {rm:>10.0} {:>6.2} {cpu:>10.0} {rc:>10.0} {:>6.2}  {}",
                ms / rm,
                cpu / rc,
                r.and_then(|r| r.get("runtime")).and_then(|s| s.as_str()).unwrap_or("")
            ),
            _ => println!("{id:<22} {ms:>10.0} {:>10} {:>6} {cpu:>10.0}  {}", "-", "-", r.map(|v| v.to_string()).unwrap_or_else(|| "not run".into())),
        }
    }
    println!("\n== single convs at {tile}x{tile}: GFLOP/s by wall (by CPU time, per core), medians ==");
    println!("{:<20} {:>20} {:>20} {:>20} {:>8}", "conv", "fastconv", "nn.rs im2col+gemm", "candle conv2d", "new/old");
    for (name, gflop, new, old, candle) in conv_lines {
        let rate = |(wall, cpu): (f64, f64)| format!("{:>7.1} ({:>5.1}/core)", gflop / wall * 1e3, gflop / cpu.max(1e-9) * 1e3);
        println!("{name:<20} {:>20} {:>20} {:>20} {:>8.2}", rate(new), rate(old), rate(candle), new.0 / old.0);
    }
}
