//! The full-size Stable Diffusion 1.5 inpainting UNet (9 input channels) on random weights, f32, CPU:
//! our UNet (`diffusion::unet`) against diffusers' `UNet2DConditionModel` (torch, 2 threads) in one run,
//! batch 2 (classifier-free guidance), context 2 x 77 x 768. Prints the median wall-clock seconds per UNet
//! call of each, the median CPU seconds (user + system) per call, the ratios and each process's peak resident
//! memory (VmHWM). The CPU time is the steadier figure on a shared machine: other processes' load stretches
//! wall time but not it (torch's OpenMP threads spin while idle, which counts against diffusers there).
//!
//!     cargo bench -p likeness-engine --bench unet
//!
//! `LIKENESS_BENCH_LATENT` (default 32; 64 is a 512 px image) sets the latent size, `LIKENESS_BENCH_RUNS`
//! (default 3) the timed calls of each side after one warm-up. The reference side is
//! `tools/bench_unet_reference.py` with `$LIKENESS_BENCH_PYTHON` (default `.venv/bin/python`, else `python3`);
//! it needs torch and diffusers. It runs in its own process (so the two peaks are separate) and serves one
//! call per request: the timed calls alternate, theirs then ours, so both see the same machine load.
//! `LIKENESS_BENCH_OURS_ONLY=1` skips the reference and times ours alone (for profiling under `perf`).

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use likeness_engine::diffusion::unet::{Config, UNet2DConditionModel};

mod common;
use common::{median, python, root, RandomWeights};

fn vm_hwm_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok()))
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// This process's user + system CPU seconds (`/proc/self/stat` fields 14 and 15, in clock ticks of 1/100 s).
fn cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // Fields after the parenthesised command name; utime and stime are the 12th and 13th of them.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / 100.0)
        })
        .unwrap_or(f64::NAN)
}

/// The reference process: one JSON line per request (see `tools/bench_unet_reference.py`).
struct Reference {
    child: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
}

impl Reference {
    fn start(latent: usize) -> Self {
        let mut child = Command::new(python())
            .arg(root().join("tools/bench_unet_reference.py"))
            .args(["--latent", &latent.to_string(), "--threads", "2"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run tools/bench_unet_reference.py (set LIKENESS_BENCH_PYTHON to a Python with torch and diffusers)");
        let input = child.stdin.take().expect("reference stdin");
        let output = BufReader::new(child.stdout.take().expect("reference stdout"));
        Self { child, input, output }
    }

    fn reply(&mut self) -> serde_json::Value {
        let mut line = String::new();
        self.output.read_line(&mut line).expect("read the reference");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("reference said {line:?} ({e}); see its error above"))
    }

    fn request(&mut self, what: &str) -> serde_json::Value {
        writeln!(self.input, "{what}").and_then(|()| self.input.flush()).expect("write to the reference");
        self.reply()
    }
}

fn main() {
    let latent: usize = std::env::var("LIKENESS_BENCH_LATENT").ok().and_then(|s| s.parse().ok()).unwrap_or(32);
    let runs: usize = std::env::var("LIKENESS_BENCH_RUNS").ok().and_then(|s| s.parse().ok()).unwrap_or(3).max(1);

    let ours_only = std::env::var("LIKENESS_BENCH_OURS_ONLY").is_ok_and(|v| v == "1");
    // The reference loads and warms up first, so that its build-time peak does not overlap ours.
    let mut reference = (!ours_only).then(|| Reference::start(latent));
    let info = reference.as_mut().map(Reference::reply).unwrap_or_default();
    if reference.is_some() {
        assert_eq!(info["ready"].as_bool(), Some(true), "reference not ready: {info}");
    }

    let dev = Device::Cpu;
    let vb = VarBuilder::from_backend(Box::new(RandomWeights), DType::F32, dev.clone());
    let unet = UNet2DConditionModel::new(&Config::sd15(9), vb).expect("unet");
    let after_load = vm_hwm_mib();
    let x = Tensor::randn(0f32, 1.0, (2, 9, latent, latent), &dev).expect("sample");
    let ctx = Tensor::randn(0f32, 1.0, (2, 77, 768), &dev).expect("context");
    let y = unet.forward(&x, 500.0, &ctx, None).expect("warm-up");
    assert_eq!(y.dims(), &[2, 4, latent, latent]);

    // Calls alternate (theirs, ours, theirs, ...) so that both sides see the same load on a shared machine.
    let (mut times, mut cpu, mut ref_times, mut ref_cpu) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        if let Some(reference) = reference.as_mut() {
            let r = reference.request("run");
            ref_times.push(r["wall_s"].as_f64().expect("reference wall time"));
            ref_cpu.push(r["cpu_s"].as_f64().unwrap_or(f64::NAN));
        }
        let (t, c) = (Instant::now(), cpu_seconds());
        drop(unet.forward(&x, 500.0, &ctx, None).expect("forward"));
        times.push(t.elapsed().as_secs_f64());
        cpu.push(cpu_seconds() - c);
    }
    let ref_mib = match reference {
        Some(mut reference) => {
            let mib = reference.request("done")["peak_mib"].as_f64().unwrap_or(f64::NAN);
            drop(reference.input);
            let _ = reference.child.wait();
            mib
        }
        None => f64::NAN,
    };

    let (ours, ours_cpu, ref_s, ref_c) = (median(times.clone()), median(cpu), median(ref_times.clone()), median(ref_cpu));
    let ours_mib = vm_hwm_mib();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("SD 1.5 inpainting UNet, batch 2, latent {latent}x{latent} ({} px), f32 CPU, {runs} runs", latent * 8);
    println!("  ours      median {ours:.2} s/call  {times:.2?}  CPU {ours_cpu:.1} s/call  peak {ours_mib:.0} MiB (after loading {after_load:.0} MiB)");
    println!(
        "  diffusers median {ref_s:.2} s/call  {ref_times:.2?}  CPU {ref_c:.1} s/call  peak {ref_mib:.0} MiB (torch {}, {} threads)",
        info["torch"], info["threads"]
    );
    // Each call against the reference call just before it: steadier than the ratio of medians when the load drifts.
    let pairs = median(times.iter().zip(&ref_times).map(|(o, r)| o / r).collect());
    println!(
        "  ratio ours/diffusers: time {:.2}x (median of pairs {pairs:.2}x), CPU time {:.2}x, peak memory {:.2}x  (load average at the end: {})",
        ours / ref_s,
        ours_cpu / ref_c,
        ours_mib / ref_mib,
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
}
