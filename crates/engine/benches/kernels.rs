//! The small nets' layer kernels one at a time, on the face mesh's block shapes: the 1x1 conv
//! (residual + PReLU in its store), the depthwise 3x3 conv alone and both fused, median wall time
//! and GFLOPS (2 flops per multiply-add). Run with `RAYON_NUM_THREADS=1` for one core's speed,
//! without it for the pass's team of two, as the models run:
//!
//!     RAYON_NUM_THREADS=1 cargo bench -p likeness-engine --bench kernels
//!
//! The whole models against their reference runtimes are in the `headshot` bench.

use std::time::Instant;

use candle_core::{Device, Module, Result, Tensor};
use likeness_engine::nn::{max_pool2d, on_pool, Conv2d, FusedActivation, PRelu, Padding};

/// Median seconds of `n` calls after 20 warm-up calls, all inside one [`on_pool`] pass: with
/// more than one rayon thread the layers split over the pass's team, as in the models.
fn median<F: FnMut() -> Result<()> + Send>(f: F, n: usize) -> Result<f64> {
    on_pool(|| median_here(f, n))
}

fn median_here<F: FnMut() -> Result<()>>(mut f: F, n: usize) -> Result<f64> {
    for _ in 0..20 {
        f()?;
    }
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f()?;
        v.push(t.elapsed().as_secs_f64());
    }
    v.sort_by(f64::total_cmp);
    Ok(v[n / 2])
}

fn main() -> Result<()> {
    let dev = Device::Cpu;
    // (input channels, output channels, input side, depthwise stride): the face mesh's blocks.
    let shapes = [(16, 16, 96, 1), (16, 32, 96, 2), (32, 32, 48, 1), (32, 64, 48, 2), (64, 64, 24, 1), (64, 128, 24, 2), (128, 128, 12, 1), (128, 128, 12, 2), (128, 128, 6, 1)];
    let gf = |macs: usize, s: f64| 2.0 * macs as f64 / s / 1e9;
    println!("{:<24} {:>16} {:>16} {:>16}", "block (k, m, side, s)", "1x1 us (GF)", "depthwise us (GF)", "fused us (GF)");
    for (k, m, side, stride) in shapes {
        let os = side / stride;
        let x = Tensor::rand(-1f32, 1.0, (1, k, side, side), &dev)?;
        let xd = Tensor::rand(-1f32, 1.0, (1, k, os, os), &dev)?;
        let pw = Conv2d::from_tensors(Tensor::rand(-0.1f32, 0.1, (m, k, 1, 1), &dev)?, Some(Tensor::rand(-0.1f32, 0.1, m, &dev)?), 1, Padding::Valid, false)?;
        let dw = Conv2d::from_tensors(Tensor::rand(-0.1f32, 0.1, (k, 1, 3, 3), &dev)?, Some(Tensor::rand(-0.1f32, 0.1, k, &dev)?), stride, Padding::Same, true)?;
        let act = PRelu::from_tensor(Tensor::rand(0f32, 0.2, m, &dev)?)?;
        let skip = if stride == 1 { x.clone() } else { max_pool2d(&x, 2, 2, Padding::Valid)? };
        let t_pw = median(|| pw.forward_fused(&xd, Some(&skip), FusedActivation::PRelu(&act)).map(drop), 2000)?;
        let t_dw = median(|| dw.forward(&x).map(drop), 2000)?;
        let t_fused = median(|| dw.forward_dw_fused(&pw, &x, Some(&skip), FusedActivation::PRelu(&act)).map(drop), 2000)?;
        let (pw_macs, dw_macs) = (m * k * os * os, 9 * k * os * os);
        println!(
            "{:<24} {:>8.1} ({:>5.1}) {:>8.1} ({:>5.1}) {:>8.1} ({:>5.1})",
            format!("{k}, {m}, {side}, {stride}"),
            t_pw * 1e6,
            gf(pw_macs, t_pw),
            t_dw * 1e6,
            gf(dw_macs, t_dw),
            t_fused * 1e6,
            gf(pw_macs + dw_macs, t_fused)
        );
    }
    // The stems: dense KxK stride-2 convs on the RGB input (im2col in bands + the 1x1 kernel).
    println!("{:<24} {:>16}", "stem (k, m, side, kernel)", "conv us (GF)");
    for (k, m, side, kernel) in [(3, 16, 192, 3), (3, 24, 128, 5), (3, 16, 256, 3)] {
        let x = Tensor::rand(0f32, 1.0, (1, k, side, side), &dev)?;
        let conv = Conv2d::from_tensors(Tensor::rand(-0.1f32, 0.1, (m, k, kernel, kernel), &dev)?, Some(Tensor::rand(-0.1f32, 0.1, m, &dev)?), 2, Padding::Same, false)?;
        let act = PRelu::from_tensor(Tensor::rand(0f32, 0.2, m, &dev)?)?;
        let t = median(|| conv.forward_fused(&x, None, FusedActivation::PRelu(&act)).map(drop), 2000)?;
        let macs = m * k * kernel * kernel * (side / 2) * (side / 2);
        println!("{:<24} {:>8.1} ({:>5.1})", format!("{k}, {m}, {side}, {kernel}x{kernel}"), t * 1e6, gf(macs, t));
    }
    Ok(())
}
