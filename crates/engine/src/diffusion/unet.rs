//! The Stable Diffusion denoising UNet (Rombach et al. 2022, "High-Resolution Image Synthesis with Latent
//! Diffusion Models"; SDXL: Podell et al. 2023), written after diffusers' `UNet2DConditionModel`,
//! `Transformer2DModel`, `BasicTransformerBlock` and `TimestepEmbedding` (Apache-2.0). Model weights are the
//! user's (CreativeML OpenRAIL-M for SD 1.5, OpenRAIL++-M for SDXL); none ship with the app.
//!
//! Ours rather than candle's `stable_diffusion::unet_2d` because that one uses the tanh-approximated GELU
//! (diffusers: exact erf), ignores SDXL's `text_time` add-embedding (micro-conditioning and the pooled text
//! embedding), fixes its blocks' norm groups at 32 and materialises the whole attention score matrix.
//!
//! Keys mirror diffusers' names (`down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight` ...), so
//! diffusers folders and the single-file mapping (`single_file.rs`) load unchanged.
//!
//! Attention never holds the full `[batch * heads, 4096, 4096]` score matrix of a 64x64 latent: on the CPU in
//! f32 it is the fused flash-style kernel of `attention.rs` (a key block of scores per task); other devices
//! and dtypes process queries in chunks (`ATTN_CHUNK_BYTES` / `_GPU` of scores at a time) with candle's ops.
//! Speed on the CPU in f32: the convolutions run on `nn::Conv2d`'s im2col + gemm kernels, group norms and
//! GEGLU in one fused pass each.

use candle_core::{bail, CpuStorage, CustomOp1, DType, Device, Layout, Module, Result, Shape, Tensor, D};
use candle_nn::{layer_norm, linear, linear_no_bias, LayerNorm, Linear, VarBuilder};
use rayon::prelude::*;

use crate::nn::{Conv2d, LeanConv2d, Padding};

/// SDXL's micro-conditioning (`addition_embed_type = "text_time"`).
#[derive(Debug, Clone, PartialEq)]
pub struct TextTime {
    /// Sinusoidal width of each time id (`addition_time_embed_dim`, 256).
    pub time_embed_dim: usize,
    /// Input width of `add_embedding` (`projection_class_embeddings_input_dim`: pooled width + 6 x 256).
    pub input_dim: usize,
}

/// The UNet's architecture as diffusers' `config.json` describes it (parsed by `config::unet`).
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub in_channels: usize,
    pub out_channels: usize,
    pub sample_size: usize,
    pub block_out_channels: Vec<usize>,
    /// Per down block: whether it has transformers (`CrossAttnDownBlock2D`).
    pub down_cross: Vec<bool>,
    /// Per up block, in up order: whether it has transformers (`CrossAttnUpBlock2D`).
    pub up_cross: Vec<bool>,
    pub layers_per_block: usize,
    /// Per down block (the up blocks use it reversed, the mid block the last).
    pub transformer_layers: Vec<usize>,
    /// Attention heads per down block (diffusers' `num_attention_heads`, or its misnamed `attention_head_dim`).
    pub heads: Vec<usize>,
    pub cross_attention_dim: usize,
    pub use_linear_projection: bool,
    pub norm_num_groups: usize,
    pub norm_eps: f64,
    pub flip_sin_to_cos: bool,
    pub freq_shift: f64,
    pub downsample_padding: usize,
    pub mid_block_scale_factor: f64,
    pub center_input_sample: bool,
    pub text_time: Option<TextTime>,
}

impl Config {
    /// Stable Diffusion 1.5's UNet (`in_channels` 4, or 9 for inpainting).
    pub fn sd15(in_channels: usize) -> Self {
        Self {
            in_channels,
            out_channels: 4,
            sample_size: 64,
            block_out_channels: vec![320, 640, 1280, 1280],
            down_cross: vec![true, true, true, false],
            up_cross: vec![false, true, true, true],
            layers_per_block: 2,
            transformer_layers: vec![1; 4],
            heads: vec![8; 4],
            cross_attention_dim: 768,
            use_linear_projection: false,
            norm_num_groups: 32,
            norm_eps: 1e-5,
            flip_sin_to_cos: true,
            freq_shift: 0.0,
            downsample_padding: 1,
            mid_block_scale_factor: 1.0,
            center_input_sample: false,
            text_time: None,
        }
    }

    /// Spatial downsampling of the latent (2 per down block but the last).
    pub fn downscale(&self) -> usize {
        1 << self.block_out_channels.len().saturating_sub(1)
    }

    fn channels(&self, i: usize) -> usize {
        self.block_out_channels.get(i).copied().unwrap_or(320)
    }
    fn heads_of(&self, i: usize) -> usize {
        self.heads.get(i).copied().unwrap_or(8).max(1)
    }
    fn layers_of(&self, i: usize) -> usize {
        self.transformer_layers.get(i).copied().unwrap_or(1)
    }
}

/// SDXL's extra conditioning: the pooled text embedding and the six time ids per batch row.
pub struct AddedConditions<'a> {
    /// `[B, pooled width]` (the second text encoder's projected end-token state).
    pub text_embeds: &'a Tensor,
    /// `[B, 6]`: original size (h, w), crop top-left (y, x), target size (h, w).
    pub time_ids: &'a Tensor,
}

/// Scores held at once per attention call on the CPU (queries are processed in chunks below this).
const ATTN_CHUNK_BYTES: usize = 64 << 20;
/// The same bound on accelerators, where bigger matmuls pay and memory is dearer to waste.
const ATTN_CHUNK_BYTES_GPU: usize = 512 << 20;

// ---------------------------------------------------------------------------------------------------------
// Group norm: one fused pass on the CPU (statistics in f64, then scale, shift and the optional SiLU).

struct GroupNormOp<'a> {
    groups: usize,
    eps: f64,
    weight: &'a [f32],
    bias: &'a [f32],
    silu: bool,
}

impl CustomOp1 for GroupNormOp<'_> {
    fn name(&self) -> &'static str {
        "unet-group-norm"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let dims = layout.shape().dims();
        let (Some(&n), Some(&c)) = (dims.first(), dims.get(1)) else { bail!("group norm: rank below 2") };
        let hw: usize = dims.iter().skip(2).product();
        let src = crate::nn::cpu_slice(storage, layout, "group norm")?;
        if self.groups == 0 || c % self.groups != 0 || self.weight.len() != c || self.bias.len() != c {
            bail!("group norm: {c} channels do not split into {} groups", self.groups);
        }
        let per = c / self.groups * hw;
        let mut out = vec![0f32; n * c * hw];
        let (cg, eps, silu) = (c / self.groups, self.eps, self.silu);
        out.par_chunks_mut(per.max(1)).zip(src.par_chunks(per.max(1))).enumerate().for_each(|(gi, (o, x))| {
            let g = gi % self.groups;
            let (mut s, mut s2) = (0f64, 0f64);
            for &v in x {
                s += f64::from(v);
            }
            let mean = s / per as f64;
            for &v in x {
                let d = f64::from(v) - mean;
                s2 += d * d;
            }
            let inv = 1.0 / (s2 / per as f64 + eps).sqrt();
            for ci in 0..cg {
                let ch = g * cg + ci;
                let (w, b) = (self.weight.get(ch).copied().unwrap_or(1.0), self.bias.get(ch).copied().unwrap_or(0.0));
                let a = (f64::from(w) * inv) as f32;
                let sh = (f64::from(b) - mean * f64::from(w) * inv) as f32;
                let (os, xs) = (&mut o[ci * hw..(ci + 1) * hw], &x[ci * hw..(ci + 1) * hw]);
                if silu {
                    os.iter_mut().zip(xs).for_each(|(o, &v)| {
                        let y = v * a + sh;
                        *o = y / (1.0 + (-y).exp());
                    });
                } else {
                    os.iter_mut().zip(xs).for_each(|(o, &v)| *o = v * a + sh);
                }
            }
        });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

pub(super) struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    cpu: Option<(Vec<f32>, Vec<f32>)>,
    groups: usize,
    eps: f64,
}

impl GroupNorm {
    pub(super) fn new(groups: usize, channels: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        if groups == 0 || channels % groups != 0 {
            bail!("group norm: {channels} channels do not split into {groups} groups");
        }
        let weight = vb.get(channels, "weight")?;
        let bias = vb.get(channels, "bias")?;
        let cpu = if weight.device().is_cpu() && weight.dtype() == DType::F32 {
            Some((weight.to_vec1::<f32>()?, bias.to_vec1::<f32>()?))
        } else {
            None
        };
        Ok(Self { weight, bias, cpu, groups, eps })
    }

    /// The norm, followed by SiLU when `silu` (the resnets' and the output's `norm -> SiLU`).
    pub(super) fn forward_act(&self, x: &Tensor, silu: bool) -> Result<Tensor> {
        if let Some((w, b)) = self.cpu.as_ref().filter(|_| x.device().is_cpu() && x.dtype() == DType::F32) {
            let op = GroupNormOp { groups: self.groups, eps: self.eps, weight: w, bias: b, silu };
            return x.contiguous()?.apply_op1_no_bwd(&op);
        }
        let dims = x.dims().to_vec();
        let (n, c) = x.dims4().map(|(n, c, _, _)| (n, c))?;
        let dtype = x.dtype();
        let xs = x.reshape((n, self.groups, ()))?.to_dtype(DType::F32)?;
        let mean = xs.mean_keepdim(2)?;
        let xs = xs.broadcast_sub(&mean)?;
        let var = xs.sqr()?.mean_keepdim(2)?;
        let xs = xs.broadcast_div(&(var + self.eps)?.sqrt()?)?.to_dtype(dtype)?.reshape(dims)?;
        let y = xs
            .broadcast_mul(&self.weight.reshape((1, c, 1, 1))?)?
            .broadcast_add(&self.bias.reshape((1, c, 1, 1))?)?;
        if silu {
            y.silu()
        } else {
            Ok(y)
        }
    }
}

pub(super) fn conv3x3(vb: VarBuilder, i: usize, o: usize, stride: usize, pad: usize) -> Result<LeanConv2d> {
    LeanConv2d::new(Conv2d::new(vb, i, o, 3, stride, Padding::Explicit { top: pad, bottom: pad, left: pad, right: pad }, true)?)
}

pub(super) fn conv1x1(vb: VarBuilder, i: usize, o: usize) -> Result<LeanConv2d> {
    LeanConv2d::new(Conv2d::new(vb, i, o, 1, 1, Padding::Valid, true)?)
}

// ---------------------------------------------------------------------------------------------------------
// Timestep embeddings.

/// diffusers' `get_timestep_embedding`: `[N] -> [N, dim]` sinusoids (computed on the CPU in f64).
fn sinusoidal(values: &[f64], dim: usize, flip_sin_to_cos: bool, shift: f64, device: &Device) -> Result<Tensor> {
    let half = dim / 2;
    let denom = half as f64 - shift;
    let mut out = Vec::with_capacity(values.len() * dim);
    for &t in values {
        let args: Vec<f64> = (0..half).map(|i| t * (-(10000f64.ln()) * i as f64 / denom).exp()).collect();
        let (sin, cos): (Vec<f32>, Vec<f32>) = args.iter().map(|a| (a.sin() as f32, a.cos() as f32)).unzip();
        if flip_sin_to_cos {
            out.extend(cos);
            out.extend(sin);
        } else {
            out.extend(sin);
            out.extend(cos);
        }
        if dim % 2 == 1 {
            out.push(0.0);
        }
    }
    Tensor::from_vec(out, (values.len(), dim), device)
}

/// `linear_1 -> SiLU -> linear_2` (diffusers' `TimestepEmbedding`).
struct TimestepEmbedding {
    linear_1: Linear,
    linear_2: Linear,
}

impl TimestepEmbedding {
    fn new(vb: VarBuilder, input: usize, dim: usize) -> Result<Self> {
        Ok(Self { linear_1: linear(input, dim, vb.pp("linear_1"))?, linear_2: linear(dim, dim, vb.pp("linear_2"))? })
    }
}

impl Module for TimestepEmbedding {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.linear_2.forward(&self.linear_1.forward(x)?.silu()?)
    }
}

// ---------------------------------------------------------------------------------------------------------
// Resnet block.

struct ResnetBlock {
    norm1: GroupNorm,
    conv1: LeanConv2d,
    time_emb_proj: Linear,
    norm2: GroupNorm,
    conv2: LeanConv2d,
    conv_shortcut: Option<LeanConv2d>,
    output_scale: f64,
}

impl ResnetBlock {
    fn new(vb: VarBuilder, c: &Config, i: usize, o: usize, temb: usize, output_scale: f64) -> Result<Self> {
        let g = c.norm_num_groups;
        Ok(Self {
            norm1: GroupNorm::new(g, i, c.norm_eps, vb.pp("norm1"))?,
            conv1: conv3x3(vb.pp("conv1"), i, o, 1, 1)?,
            time_emb_proj: linear(temb, o, vb.pp("time_emb_proj"))?,
            norm2: GroupNorm::new(g, o, c.norm_eps, vb.pp("norm2"))?,
            conv2: conv3x3(vb.pp("conv2"), o, o, 1, 1)?,
            conv_shortcut: if i != o { Some(conv1x1(vb.pp("conv_shortcut"), i, o)?) } else { None },
            output_scale,
        })
    }

    /// `temb_silu` is SiLU(time embedding), shared by every resnet of a call.
    fn forward(&self, x: &Tensor, temb_silu: &Tensor) -> Result<Tensor> {
        let h = self.conv1.forward(&self.norm1.forward_act(x, true)?)?;
        let t = self.time_emb_proj.forward(temb_silu)?.unsqueeze(2)?.unsqueeze(3)?;
        let h = h.broadcast_add(&t)?;
        let skip = match &self.conv_shortcut {
            Some(s) => s.forward(x)?,
            None => x.clone(),
        };
        // The skip is added in conv2's store where the kernel allows (no extra pass over the output).
        let y = self.conv2.forward_add(&self.norm2.forward_act(&h, true)?, &skip)?;
        if self.output_scale == 1.0 {
            Ok(y)
        } else {
            y / self.output_scale
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Attention and the transformer.

/// Scaled dot-product attention over `[B, N, heads * d]` queries and `[B, M, heads * d]` keys / values,
/// queries in chunks so at most about `ATTN_CHUNK_BYTES` of scores exist at once.
pub(super) fn attention(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Result<Tensor> {
    if q.device().is_cpu() && q.dtype() == DType::F32 {
        return super::attention::fused(&q.contiguous()?, &k.contiguous()?, &v.contiguous()?, heads);
    }
    let budget = if q.device().is_cpu() { ATTN_CHUNK_BYTES } else { ATTN_CHUNK_BYTES_GPU };
    attention_chunked(q, k, v, heads, budget)
}

fn attention_chunked(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize, budget: usize) -> Result<Tensor> {
    let (b, n, c) = q.dims3()?;
    let m = k.dim(1)?;
    let d = c / heads;
    let split = |t: &Tensor, len: usize| t.reshape((b, len, heads, d))?.transpose(1, 2)?.reshape((b * heads, len, d));
    let q = (split(q, n)? * (d as f64).powf(-0.5))?;
    let kt = split(k, m)?.transpose(1, 2)?.contiguous()?;
    let v = split(v, m)?.contiguous()?;
    let row = b * heads * m * q.dtype().size_in_bytes();
    let chunk = (budget / row.max(1)).clamp(1, n.max(1));
    let mut outs = Vec::with_capacity(n.div_ceil(chunk));
    let mut start = 0;
    while start < n {
        let len = chunk.min(n - start);
        let qc = q.narrow(1, start, len)?.contiguous()?;
        let w = candle_nn::ops::softmax_last_dim(&qc.matmul(&kt)?)?;
        outs.push(w.matmul(&v)?);
        start += len;
    }
    let o = if outs.len() == 1 { outs.pop().unwrap_or(q) } else { Tensor::cat(&outs, 1)? };
    o.reshape((b, heads, n, d))?.transpose(1, 2)?.reshape((b, n, c))
}

struct Attention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
}

impl Attention {
    fn new(vb: VarBuilder, dim: usize, context_dim: usize, heads: usize) -> Result<Self> {
        Ok(Self {
            to_q: linear_no_bias(dim, dim, vb.pp("to_q"))?,
            to_k: linear_no_bias(context_dim, dim, vb.pp("to_k"))?,
            to_v: linear_no_bias(context_dim, dim, vb.pp("to_v"))?,
            to_out: linear(dim, dim, vb.pp("to_out").pp("0"))?,
            heads,
        })
    }

    fn forward(&self, x: &Tensor, context: Option<&Tensor>) -> Result<Tensor> {
        let ctx = context.unwrap_or(x);
        let o = attention(&self.to_q.forward(x)?, &self.to_k.forward(ctx)?, &self.to_v.forward(ctx)?, self.heads)?;
        self.to_out.forward(&o)
    }
}

/// `erf` in f32 by Abramowitz & Stegun 7.1.26 (absolute error below 1.5e-7; 1e-6 relative on GELU's output).
fn erf_f32(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t * (0.254_829_6 + t * (-0.284_496_74 + t * (1.421_413_8 + t * (-1.453_152_1 + t * 1.061_405_4))));
    (1.0 - poly * (-a * a).exp()).copysign(x)
}

/// GEGLU in one pass on the CPU: `[.., 2 * inner]` -> `[.., inner]`, `hidden * GELU(gate)` with the exact
/// (erf) GELU, instead of two strided views, a GELU pass and a product pass.
struct GegluOp {
    inner: usize,
}

impl CustomOp1 for GegluOp {
    fn name(&self) -> &'static str {
        "unet-geglu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let inner = self.inner;
        let dims = layout.shape().dims();
        if inner == 0 || dims.last() != Some(&(2 * inner)) {
            bail!("geglu: expected a last dimension of {}, got {dims:?}", 2 * inner);
        }
        let src = crate::nn::cpu_slice(storage, layout, "geglu")?;
        let mut out = vec![0f32; src.len() / 2];
        out.par_chunks_mut(inner).zip(src.par_chunks(2 * inner)).for_each(|(o, h)| {
            let (hidden, gate) = h.split_at(inner);
            for ((o, &x), &g) in o.iter_mut().zip(hidden).zip(gate) {
                *o = x * (0.5 * g * (1.0 + erf_f32(g * std::f32::consts::FRAC_1_SQRT_2)));
            }
        });
        let mut shape = dims.to_vec();
        if let Some(last) = shape.last_mut() {
            *last = inner;
        }
        Ok((CpuStorage::F32(out), Shape::from(shape)))
    }
}

/// `Linear(dim, 2 * inner)` -> `hidden * GELU(gate)` (exact erf GELU, as diffusers' GEGLU) -> `Linear(inner, dim)`.
struct FeedForward {
    proj: Linear,
    out: Linear,
    inner: usize,
}

impl FeedForward {
    fn new(vb: VarBuilder, dim: usize) -> Result<Self> {
        let inner = dim * 4;
        Ok(Self {
            proj: linear(dim, inner * 2, vb.pp("net").pp("0").pp("proj"))?,
            out: linear(inner, dim, vb.pp("net").pp("2"))?,
            inner,
        })
    }
}

impl Module for FeedForward {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.proj.forward(x)?;
        if h.device().is_cpu() && h.dtype() == DType::F32 {
            return self.out.forward(&h.contiguous()?.apply_op1_no_bwd(&GegluOp { inner: self.inner })?);
        }
        let hidden = h.narrow(D::Minus1, 0, self.inner)?;
        let gate = h.narrow(D::Minus1, self.inner, self.inner)?.gelu_erf()?;
        self.out.forward(&(hidden * gate)?)
    }
}

struct BasicTransformerBlock {
    norm1: LayerNorm,
    attn1: Attention,
    norm2: LayerNorm,
    attn2: Attention,
    norm3: LayerNorm,
    ff: FeedForward,
}

impl BasicTransformerBlock {
    fn new(vb: VarBuilder, dim: usize, context_dim: usize, heads: usize) -> Result<Self> {
        Ok(Self {
            norm1: layer_norm(dim, 1e-5, vb.pp("norm1"))?,
            attn1: Attention::new(vb.pp("attn1"), dim, dim, heads)?,
            norm2: layer_norm(dim, 1e-5, vb.pp("norm2"))?,
            attn2: Attention::new(vb.pp("attn2"), dim, context_dim, heads)?,
            norm3: layer_norm(dim, 1e-5, vb.pp("norm3"))?,
            ff: FeedForward::new(vb.pp("ff"), dim)?,
        })
    }

    fn forward(&self, x: &Tensor, context: &Tensor) -> Result<Tensor> {
        let x = (self.attn1.forward(&self.norm1.forward(x)?, None)? + x)?;
        let x = (self.attn2.forward(&self.norm2.forward(&x)?, Some(context))? + &x)?;
        self.ff.forward(&self.norm3.forward(&x)?)? + x
    }
}

/// A 1x1 convolution or a linear layer (`use_linear_projection`), both applied to `[B, HW, C]` tokens.
fn projection(vb: VarBuilder, i: usize, o: usize, linear_proj: bool) -> Result<Linear> {
    if linear_proj {
        linear(i, o, vb)
    } else {
        let w = vb.get((o, i, 1, 1), "weight")?.reshape((o, i))?;
        Ok(Linear::new(w, Some(vb.get(o, "bias")?)))
    }
}

struct Transformer2D {
    norm: GroupNorm,
    proj_in: Linear,
    blocks: Vec<BasicTransformerBlock>,
    proj_out: Linear,
}

impl Transformer2D {
    fn new(vb: VarBuilder, c: &Config, channels: usize, heads: usize, layers: usize) -> Result<Self> {
        let lin = c.use_linear_projection;
        Ok(Self {
            norm: GroupNorm::new(c.norm_num_groups, channels, 1e-6, vb.pp("norm"))?,
            proj_in: projection(vb.pp("proj_in"), channels, channels, lin)?,
            blocks: (0..layers)
                .map(|i| BasicTransformerBlock::new(vb.pp("transformer_blocks").pp(i), channels, c.cross_attention_dim, heads))
                .collect::<Result<_>>()?,
            proj_out: projection(vb.pp("proj_out"), channels, channels, lin)?,
        })
    }

    fn forward(&self, x: &Tensor, context: &Tensor) -> Result<Tensor> {
        let (b, ch, h, w) = x.dims4()?;
        let t = self.norm.forward_act(x, false)?;
        let t = t.flatten_from(2)?.transpose(1, 2)?.contiguous()?;
        let mut t = self.proj_in.forward(&t)?;
        for block in &self.blocks {
            t = block.forward(&t, context)?;
        }
        let t = self.proj_out.forward(&t)?;
        let t = t.transpose(1, 2)?.reshape((b, ch, h, w))?;
        t + x
    }
}

// ---------------------------------------------------------------------------------------------------------
// Down, mid and up blocks.

struct DownBlock {
    resnets: Vec<ResnetBlock>,
    attentions: Vec<Transformer2D>,
    downsample: Option<LeanConv2d>,
}

impl DownBlock {
    fn new(vb: VarBuilder, c: &Config, i: usize, temb: usize) -> Result<Self> {
        let out = c.channels(i);
        let input = if i == 0 { c.channels(0) } else { c.channels(i - 1) };
        let cross = c.down_cross.get(i).copied().unwrap_or(false);
        let mut resnets = Vec::new();
        let mut attentions = Vec::new();
        for j in 0..c.layers_per_block {
            resnets.push(ResnetBlock::new(vb.pp("resnets").pp(j), c, if j == 0 { input } else { out }, out, temb, 1.0)?);
            if cross {
                attentions.push(Transformer2D::new(vb.pp("attentions").pp(j), c, out, c.heads_of(i), c.layers_of(i))?);
            }
        }
        let last = i + 1 == c.block_out_channels.len();
        let downsample = if last {
            None
        } else {
            Some(conv3x3(vb.pp("downsamplers").pp("0").pp("conv"), out, out, 2, c.downsample_padding)?)
        };
        Ok(Self { resnets, attentions, downsample })
    }

    fn forward(&self, x: &Tensor, temb: &Tensor, context: &Tensor, skips: &mut Vec<Tensor>) -> Result<Tensor> {
        let mut x = x.clone();
        for (j, r) in self.resnets.iter().enumerate() {
            x = r.forward(&x, temb)?;
            if let Some(a) = self.attentions.get(j) {
                x = a.forward(&x, context)?;
            }
            skips.push(x.clone());
        }
        if let Some(d) = &self.downsample {
            x = d.forward(&x)?;
            skips.push(x.clone());
        }
        Ok(x)
    }
}

struct MidBlock {
    first: ResnetBlock,
    rest: Vec<(Transformer2D, ResnetBlock)>,
}

impl MidBlock {
    fn new(vb: VarBuilder, c: &Config, temb: usize) -> Result<Self> {
        let last = c.block_out_channels.len().saturating_sub(1);
        let ch = c.channels(last);
        let s = c.mid_block_scale_factor;
        Ok(Self {
            first: ResnetBlock::new(vb.pp("resnets").pp("0"), c, ch, ch, temb, s)?,
            rest: vec![(
                Transformer2D::new(vb.pp("attentions").pp("0"), c, ch, c.heads_of(last), c.layers_of(last))?,
                ResnetBlock::new(vb.pp("resnets").pp("1"), c, ch, ch, temb, s)?,
            )],
        })
    }

    fn forward(&self, x: &Tensor, temb: &Tensor, context: &Tensor) -> Result<Tensor> {
        let mut x = self.first.forward(x, temb)?;
        for (a, r) in &self.rest {
            x = r.forward(&a.forward(&x, context)?, temb)?;
        }
        Ok(x)
    }
}

struct UpBlock {
    resnets: Vec<ResnetBlock>,
    attentions: Vec<Transformer2D>,
    upsample: Option<LeanConv2d>,
}

impl UpBlock {
    /// Up block `i` (0 = the deepest), mirroring down block `n - 1 - i`.
    fn new(vb: VarBuilder, c: &Config, i: usize, temb: usize) -> Result<Self> {
        let n = c.block_out_channels.len();
        let rev = |k: usize| c.channels(n - 1 - k.min(n - 1));
        let out = rev(i);
        let prev = rev(i.saturating_sub(1));
        let input = rev(i + 1);
        let down = n - 1 - i;
        let cross = c.up_cross.get(i).copied().unwrap_or(false);
        let layers = c.layers_per_block + 1;
        let mut resnets = Vec::new();
        let mut attentions = Vec::new();
        for j in 0..layers {
            let skip = if j + 1 == layers { input } else { out };
            let res_in = if j == 0 { prev } else { out };
            resnets.push(ResnetBlock::new(vb.pp("resnets").pp(j), c, res_in + skip, out, temb, 1.0)?);
            if cross {
                attentions.push(Transformer2D::new(vb.pp("attentions").pp(j), c, out, c.heads_of(down), c.layers_of(down))?);
            }
        }
        let upsample =
            if i + 1 == n { None } else { Some(conv3x3(vb.pp("upsamplers").pp("0").pp("conv"), out, out, 1, 1)?) };
        Ok(Self { resnets, attentions, upsample })
    }

    fn forward(&self, x: &Tensor, temb: &Tensor, context: &Tensor, skips: &mut Vec<Tensor>) -> Result<Tensor> {
        let mut x = x.clone();
        for (j, r) in self.resnets.iter().enumerate() {
            let Some(skip) = skips.pop() else { bail!("unet: fewer skip connections than up-block resnets") };
            x = r.forward(&Tensor::cat(&[&x, &skip], 1)?, temb)?;
            if let Some(a) = self.attentions.get(j) {
                x = a.forward(&x, context)?;
            }
        }
        if let Some(u) = &self.upsample {
            let (_, _, h, w) = x.dims4()?;
            x = u.forward(&x.upsample_nearest2d(h * 2, w * 2)?)?;
        }
        Ok(x)
    }
}

// ---------------------------------------------------------------------------------------------------------
// The model.

/// The conditional denoising UNet (diffusers' `UNet2DConditionModel`).
pub struct UNet2DConditionModel {
    conv_in: LeanConv2d,
    time_embedding: TimestepEmbedding,
    add_embedding: Option<TimestepEmbedding>,
    down: Vec<DownBlock>,
    mid: MidBlock,
    up: Vec<UpBlock>,
    conv_norm_out: GroupNorm,
    conv_out: LeanConv2d,
    config: Config,
}

impl UNet2DConditionModel {
    pub fn new(c: &Config, vb: VarBuilder) -> Result<Self> {
        let n = c.block_out_channels.len();
        if n == 0 || c.down_cross.len() != n || c.up_cross.len() != n {
            bail!("unet: the block lists differ in length ({n} channels, {} down, {} up)", c.down_cross.len(), c.up_cross.len());
        }
        let c0 = c.channels(0);
        let temb = c0 * 4;
        let add_embedding = match &c.text_time {
            Some(tt) => Some(TimestepEmbedding::new(vb.pp("add_embedding"), tt.input_dim, temb)?),
            None => None,
        };
        Ok(Self {
            conv_in: conv3x3(vb.pp("conv_in"), c.in_channels, c0, 1, 1)?,
            time_embedding: TimestepEmbedding::new(vb.pp("time_embedding"), c0, temb)?,
            add_embedding,
            down: (0..n).map(|i| DownBlock::new(vb.pp("down_blocks").pp(i), c, i, temb)).collect::<Result<_>>()?,
            mid: MidBlock::new(vb.pp("mid_block"), c, temb)?,
            up: (0..n).map(|i| UpBlock::new(vb.pp("up_blocks").pp(i), c, i, temb)).collect::<Result<_>>()?,
            conv_norm_out: GroupNorm::new(c.norm_num_groups, c0, c.norm_eps, vb.pp("conv_norm_out"))?,
            conv_out: conv3x3(vb.pp("conv_out"), c0, c.out_channels, 1, 1)?,
            config: c.clone(),
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Predicts the noise (or v) of `sample` `[B, in, h, w]` at `timestep` under `context` `[B, tokens, cross]`;
    /// SDXL models also need `added` (the pooled text embedding and the time ids).
    pub fn forward(&self, sample: &Tensor, timestep: f64, context: &Tensor, added: Option<&AddedConditions>) -> Result<Tensor> {
        let c = &self.config;
        let (b, _, h, w) = sample.dims4()?;
        let m = c.downscale();
        if h % m != 0 || w % m != 0 {
            bail!("unet: the latent {h}x{w} is not a multiple of {m}");
        }
        let (dev, dtype) = (sample.device(), sample.dtype());
        let x = if c.center_input_sample { ((sample * 2.0)? - 1.0)? } else { sample.clone() };

        let t = sinusoidal(&vec![timestep; b], c.channels(0), c.flip_sin_to_cos, c.freq_shift, dev)?.to_dtype(dtype)?;
        let mut emb = self.time_embedding.forward(&t)?;
        match (&self.add_embedding, &c.text_time, added) {
            (Some(add), Some(tt), Some(a)) => {
                // f32 holds every size id exactly (Metal has no f64).
                let ids: Vec<f64> =
                    a.time_ids.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?.into_iter().map(f64::from).collect();
                let n_ids = ids.len() / b.max(1);
                let te = sinusoidal(&ids, tt.time_embed_dim, c.flip_sin_to_cos, c.freq_shift, dev)?
                    .reshape((b, n_ids * tt.time_embed_dim))?
                    .to_dtype(dtype)?;
                let input = Tensor::cat(&[&a.text_embeds.to_dtype(dtype)?, &te], 1)?;
                emb = (emb + add.forward(&input)?)?;
            }
            (Some(_), _, None) => bail!("unet: this SDXL UNet needs the pooled text embedding and the time ids"),
            _ => {}
        }
        let temb = emb.silu()?;

        let mut x = self.conv_in.forward(&x)?;
        let mut skips = vec![x.clone()];
        for d in &self.down {
            x = d.forward(&x, &temb, context, &mut skips)?;
        }
        x = self.mid.forward(&x, &temb, context)?;
        for u in &self.up {
            x = u.forward(&x, &temb, context, &mut skips)?;
        }
        let x = self.conv_norm_out.forward_act(&x, true)?;
        self.conv_out.forward(&x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Chunked attention equals the whole-matrix softmax(QK^T / sqrt(d)) V, whatever the chunk size.
    #[test]
    fn chunked_attention_matches_the_whole_matrix() -> Result<()> {
        let dev = Device::Cpu;
        let (b, n, m, heads, d) = (2, 37, 11, 3, 4);
        let q = Tensor::randn(0f32, 1.0, (b, n, heads * d), &dev)?;
        let k = Tensor::randn(0f32, 1.0, (b, m, heads * d), &dev)?;
        let v = Tensor::randn(0f32, 1.0, (b, m, heads * d), &dev)?;
        let split = |t: &Tensor, len: usize| t.reshape((b, len, heads, d))?.transpose(1, 2)?.contiguous();
        let w = (split(&q, n)?.matmul(&split(&k, m)?.t()?)? / (d as f64).sqrt())?;
        let want = candle_nn::ops::softmax_last_dim(&w)?.matmul(&split(&v, m)?)?.transpose(1, 2)?.reshape((b, n, heads * d))?;
        // One query row's scores per chunk, a few rows, and everything at once.
        for budget in [1, b * heads * m * 4 * 5, usize::MAX / 2] {
            let got = attention_chunked(&q, &k, &v, heads, budget)?;
            let err = (got - &want)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(err < 1e-5, "budget {budget}: {err}");
        }
        Ok(())
    }

    /// The fused group norm (+ SiLU) equals candle's ops.
    #[test]
    fn fused_group_norm_matches_candle_ops() -> Result<()> {
        let dev = Device::Cpu;
        let x = ((Tensor::randn(0f32, 1.0, (2, 8, 5, 3), &dev)? * 3.0)? + 1.0)?;
        let w = Tensor::randn(1f32, 0.2, 8, &dev)?;
        let b = Tensor::randn(0f32, 0.2, 8, &dev)?;
        let gn = GroupNorm { weight: w.clone(), bias: b.clone(), cpu: None, groups: 4, eps: 1e-5 };
        let fast = GroupNorm { cpu: Some((w.to_vec1()?, b.to_vec1()?)), ..gn.clone_tensors() };
        for silu in [false, true] {
            let want = gn.forward_act(&x, silu)?;
            let got = fast.forward_act(&x, silu)?;
            let err = (got - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(err < 1e-5, "silu {silu}: {err}");
        }
        Ok(())
    }

    /// The fused GEGLU equals candle's `hidden * gelu_erf(gate)` (erf within 1.5e-7).
    #[test]
    fn fused_geglu_matches_candle_ops() -> Result<()> {
        let dev = Device::Cpu;
        let inner = 37;
        let h = (Tensor::randn(0f32, 1.0, (2, 5, 2 * inner), &dev)? * 3.0)?;
        let want = (h.narrow(D::Minus1, 0, inner)? * h.narrow(D::Minus1, inner, inner)?.gelu_erf()?)?;
        let got = h.apply_op1_no_bwd(&GegluOp { inner })?;
        assert_eq!(got.dims(), want.dims());
        let err = (got - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(err < 5e-6, "{err}");
        Ok(())
    }

    impl GroupNorm {
        fn clone_tensors(&self) -> Self {
            Self { weight: self.weight.clone(), bias: self.bias.clone(), cpu: None, groups: self.groups, eps: self.eps }
        }
    }
}
