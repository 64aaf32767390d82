//! GFPGAN v1.3 / v1.4, the "clean" architecture (`GFPGANv1Clean`): blind face restoration with a
//! generative facial prior.
//!
//! Paper: Wang et al., "Towards Real-World Blind Face Restoration with Generative Facial Prior",
//! CVPR 2021. Reference code: TencentARC/GFPGAN `gfpgan/archs/gfpganv1_clean_arch.py` and
//! `stylegan2_clean_arch.py` (Apache-2.0). Weights: `GFPGANv1.4.pth` from the project's GitHub
//! releases, imported by the user and read here directly (`params_ema` of the checkpoint).
//!
//! The network: a U-Net encoder (ResBlocks with bilinear down/up sampling) turns the aligned
//! 512x512 face (RGB in [-1, 1]) into one style code per decoder layer and, at each resolution, a
//! scale and shift map; a StyleGAN2 decoder (modulated, demodulated 3x3 convolutions, ToRGB skips)
//! renders the face, its features modulated by those maps (SFT, on half of the channels).
//!
//! Noise: StyleGAN2 adds per-pixel Gaussian noise (scaled by a learnt weight) in every style conv;
//! upstream draws it afresh per call. We use zero noise, its expected value, so the same photo
//! always gives the same face; the parity fixture runs the reference with zero noise too.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};

use crate::fastconv::{Activation, Conv3x3};
use crate::models::cancel_point;
use crate::nn::{resize_bilinear, scale_add_in_place, Conv2d, Padding};
use crate::progress::CancelToken;

/// Hyper-parameters, named as upstream's `GFPGANv1Clean.__init__`.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Side of the square input and output (a power of two, 8..=1024).
    pub out_size: usize,
    pub num_style_feat: usize,
    pub channel_multiplier: usize,
    /// Channel narrowing of the decoder; the U-Net uses half of it.
    pub narrow: f64,
    /// SFT on half of the decoder channels (v1.3 / v1.4) or on all of them.
    pub sft_half: bool,
    /// One style code per decoder layer (v1.3 / v1.4) or one shared code.
    pub different_w: bool,
}

impl Config {
    /// The configuration of `GFPGANv1.3.pth` / `GFPGANv1.4.pth`.
    pub fn v1_4() -> Self {
        Self { out_size: 512, num_style_feat: 512, channel_multiplier: 2, narrow: 1.0, sft_half: true, different_w: true }
    }

    fn log_size(&self) -> usize {
        self.out_size.trailing_zeros() as usize
    }

    /// StyleGAN2 channels at `size` (upstream's `channels` dict), times `narrow`.
    fn base_channels(&self, size: usize, narrow: f64) -> usize {
        let cm = self.channel_multiplier;
        let base = match size {
            0..=32 => 512,
            64 => 256 * cm,
            128 => 128 * cm,
            256 => 64 * cm,
            512 => 32 * cm,
            _ => 16 * cm,
        };
        // Upstream truncates with int(); the same here.
        (base as f64 * narrow) as usize
    }

    fn decoder_channels(&self, size: usize) -> usize {
        self.base_channels(size, self.narrow)
    }

    fn unet_channels(&self, size: usize) -> usize {
        self.base_channels(size, self.narrow * 0.5)
    }

    /// Style codes the decoder reads (`num_latent`).
    fn num_latent(&self) -> usize {
        self.log_size() * 2 - 2
    }
}

const SLOPE: f32 = 0.2;
/// Largest im2col matrix of one convolution call, in floats (64 MiB): bigger layers run in bands
/// of output rows, so the full-size model's 512x512 layers stay within bounded memory.
const BAND_FLOATS: usize = 16 << 20;

/// Leaky ReLU over a layer's fresh output, in place (every call site passes one).
fn lrelu(x: Tensor) -> Result<Tensor> {
    crate::nn::leaky_relu_in_place(x, SLOPE)
}

/// A stride-1 "same" convolution (odd kernel `k`, padding `k / 2`) with `weight` `[out, in, k, k]`:
/// 3x3 through `crate::fastconv`, others run in horizontal bands when their im2col matrix would
/// exceed [`BAND_FLOATS`].
fn conv_same(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let (_, c_in, k, _) = weight.dims4()?;
    if k == 3 {
        // The direct kernel needs no im2col matrix (its scratch is bounded per thread); packing the
        // per-sample modulated weights costs one pass over them.
        return Conv3x3::from_tensors(weight.clone(), bias.cloned(), Activation::Identity)?.forward(x);
    }
    let (_, _, h, w) = x.dims4()?;
    let p = k / 2;
    let kdim = c_in * k * k;
    let rows = (BAND_FLOATS / (kdim * w).max(1)).max(1);
    if k == 1 || rows >= h {
        let pad = Padding::Explicit { top: p, bottom: p, left: p, right: p };
        return Conv2d::from_tensors(weight.clone(), bias.cloned(), 1, pad, false)?.forward(x);
    }
    let mut bands = Vec::with_capacity(h.div_ceil(rows));
    let mut r0 = 0;
    while r0 < h {
        let r1 = (r0 + rows).min(h);
        // Input rows r0-p .. r1+p, zero padding only where they leave the image.
        let (in0, in1) = (r0.saturating_sub(p), (r1 + p).min(h));
        let pad = Padding::Explicit { top: p - (r0 - in0), bottom: p - (in1 - r1), left: p, right: p };
        let conv = Conv2d::from_tensors(weight.clone(), bias.cloned(), 1, pad, false)?;
        bands.push(conv.forward(&x.narrow(2, in0, in1 - in0)?)?);
        r0 = r1;
    }
    Tensor::cat(&bands, 2)
}

/// A plain convolution with bias (`nn.Conv2d(c_in, c_out, k, 1, k // 2)`).
struct Conv {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Conv {
    fn new(vb: VarBuilder, c_in: usize, c_out: usize, k: usize, bias: bool) -> Result<Self> {
        let weight = vb.get((c_out, c_in, k, k), "weight")?;
        let bias = if bias { Some(vb.get(c_out, "bias")?) } else { None };
        Ok(Self { weight, bias })
    }
}

impl Module for Conv {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        conv_same(x, &self.weight, self.bias.as_ref())
    }
}

/// Resize by 2 (up) or 1/2 (down), bilinear, half-pixel centres (`align_corners=False`).
fn rescale(x: &Tensor, up: bool) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if up {
        resize_bilinear(x, h * 2, w * 2)
    } else {
        resize_bilinear(x, h / 2, w / 2)
    }
}

/// U-Net residual block: conv, resample, conv, plus a resampled 1x1 skip.
struct ResBlock {
    conv1: Conv,
    conv2: Conv,
    skip: Conv,
    up: bool,
}

impl ResBlock {
    fn new(vb: VarBuilder, c_in: usize, c_out: usize, up: bool) -> Result<Self> {
        Ok(Self {
            conv1: Conv::new(vb.pp("conv1"), c_in, c_in, 3, true)?,
            conv2: Conv::new(vb.pp("conv2"), c_in, c_out, 3, true)?,
            skip: Conv::new(vb.pp("skip"), c_in, c_out, 1, false)?,
            up,
        })
    }
}

impl Module for ResBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let out = lrelu(self.conv1.forward(x)?)?;
        let out = lrelu(self.conv2.forward(&rescale(&out, self.up)?)?)?;
        // The 1x1 skip commutes with the bilinear resample; run it at the smaller size.
        let skip = if self.up {
            rescale(&self.skip.forward(x)?, true)?
        } else {
            self.skip.forward(&rescale(x, false)?)?
        };
        // `out` is this block's own fresh tensor: add the skip over it.
        scale_add_in_place(out, None, Some(&skip))
    }
}

/// StyleGAN2 modulated convolution at batch 1: the style scales the weight's input channels,
/// demodulation renormalises each output filter, then it is an ordinary convolution.
struct ModulatedConv {
    /// `[out, in, k, k]` (upstream stores `[1, out, in, k, k]`).
    weight: Tensor,
    modulation: Linear,
    demodulate: bool,
}

impl ModulatedConv {
    fn new(vb: VarBuilder, c_in: usize, c_out: usize, k: usize, style: usize, demodulate: bool) -> Result<Self> {
        let weight = vb.get((1, c_out, c_in, k, k), "weight")?.squeeze(0)?;
        let modulation = candle_nn::linear(style, c_in, vb.pp("modulation"))?;
        Ok(Self { weight, modulation, demodulate })
    }

    /// The per-call weight for `style` (`[1, num_style_feat]`), times `gain`.
    fn weight_for(&self, style: &Tensor, gain: f64) -> Result<Tensor> {
        let c_in = self.weight.dim(1)?;
        let s = self.modulation.forward(style)?.reshape((1, c_in, 1, 1))?;
        let w = self.weight.broadcast_mul(&s)?;
        if !self.demodulate {
            return if gain == 1.0 { Ok(w) } else { w.affine(gain, 0.0) };
        }
        let demod = (w.sqr()?.sum_keepdim((1, 2, 3))? + 1e-8)?.sqrt()?.recip()?;
        w.broadcast_mul(&(demod * gain)?)
    }
}

/// Modulated 3x3 conv (optionally after a 2x upsample), zero noise, bias, leaky ReLU.
struct StyleConv {
    conv: ModulatedConv,
    bias: Tensor,
    upsample: bool,
}

impl StyleConv {
    fn new(vb: VarBuilder, c_in: usize, c_out: usize, style: usize, upsample: bool) -> Result<Self> {
        Ok(Self {
            conv: ModulatedConv::new(vb.pp("modulated_conv"), c_in, c_out, 3, style, true)?,
            bias: vb.get((1, c_out, 1, 1), "bias")?.flatten_all()?,
            upsample,
        })
    }

    fn forward(&self, x: &Tensor, style: &Tensor) -> Result<Tensor> {
        // Upstream multiplies the conv output by sqrt(2); folded into the weight.
        let w = self.conv.weight_for(style, std::f64::consts::SQRT_2)?;
        let x = if self.upsample { rescale(x, true)? } else { x.clone() };
        lrelu(conv_same(&x, &w, Some(&self.bias))?)
    }
}

/// Modulated 1x1 conv to RGB (no demodulation), plus the upsampled previous RGB.
struct ToRgb {
    conv: ModulatedConv,
    bias: Tensor,
    upsample: bool,
}

impl ToRgb {
    fn new(vb: VarBuilder, c_in: usize, style: usize, upsample: bool) -> Result<Self> {
        Ok(Self {
            conv: ModulatedConv::new(vb.pp("modulated_conv"), c_in, 3, 1, style, false)?,
            bias: vb.get((1, 3, 1, 1), "bias")?.flatten_all()?,
            upsample,
        })
    }

    fn forward(&self, x: &Tensor, style: &Tensor, skip: Option<&Tensor>) -> Result<Tensor> {
        let out = conv_same(x, &self.conv.weight_for(style, 1.0)?, Some(&self.bias))?;
        match skip {
            Some(s) if self.upsample => out + rescale(s, true)?,
            Some(s) => out + s,
            None => Ok(out),
        }
    }
}

/// `nn.Sequential(conv3x3, LeakyReLU, conv3x3)`: one SFT scale or shift head.
struct SftHead {
    conv0: Conv,
    conv2: Conv,
}

impl SftHead {
    fn new(vb: VarBuilder, c: usize, c_out: usize) -> Result<Self> {
        Ok(Self { conv0: Conv::new(vb.pp("0"), c, c, 3, true)?, conv2: Conv::new(vb.pp("2"), c, c_out, 3, true)? })
    }
}

impl Module for SftHead {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.conv2.forward(&lrelu(self.conv0.forward(x)?)?)
    }
}

/// The StyleGAN2 decoder with SFT (`StyleGAN2GeneratorCSFT`), latent codes given directly
/// (`input_is_latent=True`: its style MLP is not used by GFPGAN and not loaded).
struct Decoder {
    constant: Tensor,
    conv1: StyleConv,
    to_rgb1: ToRgb,
    /// Per resolution 8, 16, ...: (upsampling conv, conv, ToRGB).
    levels: Vec<(StyleConv, StyleConv, ToRgb)>,
    sft_half: bool,
}

impl Decoder {
    fn new(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        let style = cfg.num_style_feat;
        let c4 = cfg.decoder_channels(4);
        let mut levels = Vec::new();
        let mut c_in = c4;
        for (j, i) in (3..=cfg.log_size()).enumerate() {
            let c_out = cfg.decoder_channels(1 << i);
            levels.push((
                StyleConv::new(vb.pp(format!("style_convs.{}", 2 * j)), c_in, c_out, style, true)?,
                StyleConv::new(vb.pp(format!("style_convs.{}", 2 * j + 1)), c_out, c_out, style, false)?,
                ToRgb::new(vb.pp(format!("to_rgbs.{j}")), c_out, style, true)?,
            ));
            c_in = c_out;
        }
        Ok(Self {
            constant: vb.get((1, c4, 4, 4), "constant_input.weight")?,
            conv1: StyleConv::new(vb.pp("style_conv1"), c4, c4, style, false)?,
            to_rgb1: ToRgb::new(vb.pp("to_rgb1"), c4, style, false)?,
            levels,
            sft_half: cfg.sft_half,
        })
    }

    /// `latent`: `[num_latent, style]`; `conditions`: (scale, shift) per resolution from 8 up.
    fn forward(&self, latent: &Tensor, conditions: &[(Tensor, Tensor)], cancel: Option<&CancelToken>) -> Result<Tensor> {
        let code = |i: usize| latent.narrow(0, i, 1);
        let mut out = self.conv1.forward(&self.constant, &code(0)?)?;
        let mut skip = self.to_rgb1.forward(&out, &code(1)?, None)?;
        for (j, (up, conv, to_rgb)) in self.levels.iter().enumerate() {
            cancel_point(cancel)?;
            let i = 1 + 2 * j;
            out = up.forward(&out, &code(i)?)?;
            if let Some((scale, shift)) = conditions.get(j) {
                out = if self.sft_half {
                    let c = out.dim(1)?;
                    let half = c / 2;
                    let same = out.narrow(1, 0, half)?;
                    let sft = out.narrow(1, half, c - half)?.mul(scale)?.add(shift)?;
                    Tensor::cat(&[same, sft], 1)?
                } else {
                    out.mul(scale)?.add(shift)?
                };
            }
            out = conv.forward(&out, &code(i + 1)?)?;
            skip = to_rgb.forward(&out, &code(i + 2)?, Some(&skip))?;
        }
        Ok(skip)
    }
}

/// GFPGAN v1 clean: `[1, 3, S, S]` face in [-1, 1] -> restored face (roughly [-1, 1]).
pub struct Gfpgan {
    cfg: Config,
    conv_body_first: Conv,
    conv_body_down: Vec<ResBlock>,
    final_conv: Conv,
    conv_body_up: Vec<ResBlock>,
    final_linear: Linear,
    condition_scale: Vec<SftHead>,
    condition_shift: Vec<SftHead>,
    decoder: Decoder,
}

impl Gfpgan {
    /// `vb` mirrors the checkpoint's `params_ema` keys.
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        if !cfg.out_size.is_power_of_two() || !(8..=1024).contains(&cfg.out_size) {
            candle_core::bail!("gfpgan: out_size must be a power of two from 8 to 1024, got {}", cfg.out_size);
        }
        let log = cfg.log_size();
        let first = cfg.unet_channels(cfg.out_size);
        let conv_body_first = Conv::new(vb.pp("conv_body_first"), 3, first, 1, true)?;
        let mut conv_body_down = Vec::new();
        let mut c_in = first;
        for (n, i) in (3..=log).rev().enumerate() {
            let c_out = cfg.unet_channels(1 << (i - 1));
            conv_body_down.push(ResBlock::new(vb.pp(format!("conv_body_down.{n}")), c_in, c_out, false)?);
            c_in = c_out;
        }
        let c4 = cfg.unet_channels(4);
        let final_conv = Conv::new(vb.pp("final_conv"), c_in, c4, 3, true)?;
        let mut conv_body_up = Vec::new();
        let (mut condition_scale, mut condition_shift) = (Vec::new(), Vec::new());
        let mut c_in = c4;
        for (n, i) in (3..=log).enumerate() {
            let c_out = cfg.unet_channels(1 << i);
            conv_body_up.push(ResBlock::new(vb.pp(format!("conv_body_up.{n}")), c_in, c_out, true)?);
            let sft_out = if cfg.sft_half { c_out } else { c_out * 2 };
            condition_scale.push(SftHead::new(vb.pp(format!("condition_scale.{n}")), c_out, sft_out)?);
            condition_shift.push(SftHead::new(vb.pp(format!("condition_shift.{n}")), c_out, sft_out)?);
            c_in = c_out;
        }
        let linear_out = if cfg.different_w { cfg.num_latent() * cfg.num_style_feat } else { cfg.num_style_feat };
        let final_linear = candle_nn::linear(c4 * 16, linear_out, vb.pp("final_linear"))?;
        let decoder = Decoder::new(vb.pp("stylegan_decoder"), cfg)?;
        Ok(Self {
            cfg: cfg.clone(),
            conv_body_first,
            conv_body_down,
            final_conv,
            conv_body_up,
            final_linear,
            condition_scale,
            condition_shift,
            decoder,
        })
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Restores `x` (`[1, 3, S, S]`, RGB in [-1, 1]); checks `cancel` between resolutions.
    pub fn forward_cancellable(&self, x: &Tensor, cancel: Option<&CancelToken>) -> Result<Tensor> {
        let s = self.cfg.out_size;
        let (n, c, h, w) = x.dims4()?;
        if n != 1 || c != 3 || h != s || w != s {
            candle_core::bail!("gfpgan: expected a [1, 3, {s}, {s}] face, got {:?}", x.dims());
        }
        let x = x.to_dtype(DType::F32)?;
        let mut feat = lrelu(self.conv_body_first.forward(&x)?)?;
        let mut skips = Vec::with_capacity(self.conv_body_down.len());
        for block in &self.conv_body_down {
            cancel_point(cancel)?;
            feat = block.forward(&feat)?;
            skips.push(feat.clone());
        }
        feat = lrelu(self.final_conv.forward(&feat)?)?;

        let nsf = self.cfg.num_style_feat;
        let code = self.final_linear.forward(&feat.flatten_from(1)?)?;
        let latent = if self.cfg.different_w {
            code.reshape((self.cfg.num_latent(), nsf))?
        } else {
            code.broadcast_as((self.cfg.num_latent(), nsf))?.contiguous()?
        };

        let mut conditions = Vec::with_capacity(self.conv_body_up.len());
        for (i, block) in self.conv_body_up.iter().enumerate() {
            cancel_point(cancel)?;
            // Skips are added deepest first (upstream inserts them at the front of its list).
            if let Some(skip) = skips.get(skips.len().wrapping_sub(1 + i)) {
                // `feat` is a fresh output here (never one of the stored skips).
                feat = scale_add_in_place(feat, None, Some(skip))?;
            }
            feat = block.forward(&feat)?;
            let (Some(scale), Some(shift)) = (self.condition_scale.get(i), self.condition_shift.get(i)) else {
                candle_core::bail!("gfpgan: missing SFT heads at level {i}");
            };
            conditions.push((scale.forward(&feat)?, shift.forward(&feat)?));
        }
        self.decoder.forward(&latent, &conditions, cancel)
    }
}

impl Module for Gfpgan {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_cancellable(x, None)
    }
}
