//! The VAE (Kingma & Welling; Rombach et al. 2022's KL autoencoder, diffusers `AutoencoderKL`): images <->
//! latents, with tiling for large crops.
//!
//! Both halves are ours, on the engine's CPU kernels (Winograd 3x3 convolutions with the resnet skip added in
//! the store, the fused group norm + SiLU, the fused attention for the mid block), which made a 512 px decode
//! several times faster than candle's `AutoEncoderKL`; other devices and dtypes take candle's ops through the
//! same layers. The encoder returns the latent distribution's mean: inpainting needs it (deterministic per
//! seed), where candle's `encode` samples from an unseeded RNG. Keys mirror diffusers (`encoder.*`,
//! `decoder.*`, `quant_conv`, `post_quant_conv`; the mid-block attention's older `query` / `proj_attn` names too).

use candle_core::{Module, Tensor};
use candle_nn::{Linear, VarBuilder};

use super::config::VaeConfig;
use super::unet::{attention, conv1x1, conv3x3, GroupNorm};
use crate::nn::{Conv2d, LeanConv2d, Padding};

type Result<T> = candle_core::Result<T>;

/// The autoencoders' norms (diffusers' `resnet_eps`).
const EPS: f64 = 1e-6;

/// `ResnetBlock2D` without a time embedding: `norm -> SiLU -> conv`, twice, plus the (1x1-projected) input.
struct Resnet {
    norm1: GroupNorm,
    conv1: LeanConv2d,
    norm2: GroupNorm,
    conv2: LeanConv2d,
    shortcut: Option<LeanConv2d>,
}

impl Resnet {
    fn new(vb: VarBuilder, groups: usize, i: usize, o: usize) -> Result<Self> {
        Ok(Self {
            norm1: GroupNorm::new(groups, i, EPS, vb.pp("norm1"))?,
            conv1: conv3x3(vb.pp("conv1"), i, o, 1, 1)?,
            norm2: GroupNorm::new(groups, o, EPS, vb.pp("norm2"))?,
            conv2: conv3x3(vb.pp("conv2"), o, o, 1, 1)?,
            shortcut: if i != o { Some(conv1x1(vb.pp("conv_shortcut"), i, o)?) } else { None },
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.conv1.forward(&self.norm1.forward_act(x, true)?)?;
        let skip = match &self.shortcut {
            Some(s) => s.forward(x)?,
            None => x.clone(),
        };
        self.conv2.forward_add(&self.norm2.forward_act(&h, true)?, &skip)
    }
}

/// A linear layer stored as `[o, i]` or as a 1x1 convolution `[o, i, 1, 1]` (older checkpoints).
fn linear(vb: VarBuilder, c: usize) -> Result<Linear> {
    let weight = match vb.get((c, c), "weight") {
        Ok(w) => w,
        Err(_) => vb.get((c, c, 1, 1), "weight")?.reshape((c, c))?,
    };
    Ok(Linear::new(weight, Some(vb.get(c, "bias")?)))
}

/// The mid block's single-head self-attention over all pixels, with its residual.
struct SelfAttention {
    norm: GroupNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
}

impl SelfAttention {
    fn new(vb: VarBuilder, groups: usize, c: usize) -> Result<Self> {
        // diffusers' names, or those of checkpoints converted before its attention rewrite.
        let [q, k, v, o] = if vb.contains_tensor("to_q.weight") {
            ["to_q", "to_k", "to_v", "to_out.0"]
        } else {
            ["query", "key", "value", "proj_attn"]
        };
        Ok(Self {
            norm: GroupNorm::new(groups, c, EPS, vb.pp("group_norm"))?,
            q: linear(vb.pp(q), c)?,
            k: linear(vb.pp(k), c)?,
            v: linear(vb.pp(v), c)?,
            out: linear(vb.pp(o), c)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let t = self.norm.forward_act(x, false)?.flatten_from(2)?.transpose(1, 2)?.contiguous()?;
        let a = attention(&self.q.forward(&t)?, &self.k.forward(&t)?, &self.v.forward(&t)?, 1)?;
        let y = self.out.forward(&a)?.transpose(1, 2)?.reshape((b, c, h, w))?;
        y + x
    }
}

/// `UNetMidBlock2D` without a time embedding: resnet, attention, resnet.
struct Mid {
    first: Resnet,
    attn: SelfAttention,
    second: Resnet,
}

impl Mid {
    fn new(vb: VarBuilder, groups: usize, c: usize) -> Result<Self> {
        Ok(Self {
            first: Resnet::new(vb.pp("resnets").pp(0), groups, c, c)?,
            attn: SelfAttention::new(vb.pp("attentions").pp(0), groups, c)?,
            second: Resnet::new(vb.pp("resnets").pp(1), groups, c, c)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.second.forward(&self.attn.forward(&self.first.forward(x)?)?)
    }
}

/// One encoder or decoder stage: its resnets, then the resampling convolution if any.
struct Stage {
    resnets: Vec<Resnet>,
    resample: Option<LeanConv2d>,
}

impl Stage {
    /// The resnets, then the resampling convolution (after a nearest x2 upsampling when `up`).
    fn forward(&self, x: &Tensor, up: bool) -> Result<Tensor> {
        let mut x = x.clone();
        for r in &self.resnets {
            x = r.forward(&x)?;
        }
        match &self.resample {
            Some(conv) if up => {
                let (_, _, h, w) = x.dims4()?;
                conv.forward(&x.upsample_nearest2d(2 * h, 2 * w)?)
            }
            Some(conv) => conv.forward(&x),
            None => Ok(x),
        }
    }
}

/// One stage per entry of `widths` (its output channels; a stage takes the previous one's, the first its
/// own), `layers` resnets each under `vb.<i>`, and `resample(stage's vb, width)` after all but the last.
fn stages(
    vb: VarBuilder,
    groups: usize,
    widths: &[usize],
    layers: usize,
    resample: impl Fn(VarBuilder, usize) -> Result<LeanConv2d>,
) -> Result<Vec<Stage>> {
    let mut inc = widths.first().copied().unwrap_or(0);
    let mut out = Vec::with_capacity(widths.len());
    for (i, &o) in widths.iter().enumerate() {
        let vb = vb.pp(i);
        let resnets = (0..layers)
            .map(|j| Resnet::new(vb.pp("resnets").pp(j), groups, if j == 0 { inc } else { o }, o))
            .collect::<Result<_>>()?;
        let resample = if i + 1 < widths.len() { Some(resample(vb, o)?) } else { None };
        out.push(Stage { resnets, resample });
        inc = o;
    }
    Ok(out)
}

/// The encoder (diffusers `Encoder` + `quant_conv`), giving the latent distribution's mean.
struct Encoder {
    conv_in: LeanConv2d,
    down: Vec<Stage>,
    mid: Mid,
    norm: GroupNorm,
    conv_out: LeanConv2d,
    quant_conv: Option<LeanConv2d>,
}

impl Encoder {
    fn new(c: &VaeConfig, vb: VarBuilder) -> Result<Self> {
        let k = &c.candle;
        let (ch, groups) = (&k.block_out_channels, k.norm_num_groups);
        let first = ch.first().copied().unwrap_or(128);
        let last = ch.last().copied().unwrap_or(512);
        let e = vb.pp("encoder");
        // Downsample2D with padding 0 pads right and bottom by one, then a stride-2 conv.
        let pad = Padding::Explicit { top: 0, bottom: 1, left: 0, right: 1 };
        let down = stages(e.pp("down_blocks"), groups, ch, k.layers_per_block, |vb, c| {
            LeanConv2d::new(Conv2d::new(vb.pp("downsamplers").pp(0).pp("conv"), c, c, 3, 2, pad, true)?)
        })?;
        let lc = 2 * k.latent_channels;
        Ok(Self {
            conv_in: conv3x3(e.pp("conv_in"), c.in_channels, first, 1, 1)?,
            down,
            mid: Mid::new(e.pp("mid_block"), groups, last)?,
            norm: GroupNorm::new(groups, last, EPS, e.pp("conv_norm_out"))?,
            conv_out: conv3x3(e.pp("conv_out"), last, lc, 1, 1)?,
            quant_conv: if k.use_quant_conv { Some(conv1x1(vb.pp("quant_conv"), lc, lc)?) } else { None },
        })
    }

    /// The latent distribution's mean (unscaled).
    fn mean(&self, xs: &Tensor) -> Result<Tensor> {
        let mut xs = self.conv_in.forward(xs)?;
        for stage in &self.down {
            xs = stage.forward(&xs, false)?;
        }
        let xs = self.norm.forward_act(&self.mid.forward(&xs)?, true)?;
        let mut xs = self.conv_out.forward(&xs)?;
        if let Some(q) = &self.quant_conv {
            xs = q.forward(&xs)?;
        }
        let half = xs.dim(1)? / 2;
        xs.narrow(1, 0, half)
    }
}

/// The decoder (`post_quant_conv` + diffusers `Decoder`).
struct Decoder {
    post_quant_conv: Option<LeanConv2d>,
    conv_in: LeanConv2d,
    mid: Mid,
    up: Vec<Stage>,
    norm: GroupNorm,
    conv_out: LeanConv2d,
}

impl Decoder {
    fn new(c: &VaeConfig, vb: VarBuilder) -> Result<Self> {
        let k = &c.candle;
        let groups = k.norm_num_groups;
        let rev: Vec<usize> = k.block_out_channels.iter().rev().copied().collect();
        let (last, first) = (rev.first().copied().unwrap_or(512), rev.last().copied().unwrap_or(128));
        let d = vb.pp("decoder");
        let up = stages(d.pp("up_blocks"), groups, &rev, k.layers_per_block + 1, |vb, c| {
            conv3x3(vb.pp("upsamplers").pp(0).pp("conv"), c, c, 1, 1)
        })?;
        let lc = k.latent_channels;
        Ok(Self {
            post_quant_conv: if k.use_post_quant_conv { Some(conv1x1(vb.pp("post_quant_conv"), lc, lc)?) } else { None },
            conv_in: conv3x3(d.pp("conv_in"), lc, last, 1, 1)?,
            mid: Mid::new(d.pp("mid_block"), groups, last)?,
            up,
            norm: GroupNorm::new(groups, first, EPS, d.pp("conv_norm_out"))?,
            conv_out: conv3x3(d.pp("conv_out"), first, c.out_channels, 1, 1)?,
        })
    }

    fn decode(&self, z: &Tensor) -> Result<Tensor> {
        let z = match &self.post_quant_conv {
            Some(p) => p.forward(z)?,
            None => z.clone(),
        };
        let mut xs = self.mid.forward(&self.conv_in.forward(&z)?)?;
        for stage in &self.up {
            xs = stage.forward(&xs, true)?;
        }
        self.conv_out.forward(&self.norm.forward_act(&xs, true)?)
    }
}

/// Latent tiles this size (in latent cells) or smaller are decoded in one piece.
const TILE: usize = 96;
/// Overlap of neighbouring tiles, blended linearly.
const OVERLAP: usize = 16;

/// The autoencoder: encode to / decode from the UNet's (scaled) latent space.
pub struct Vae {
    encoder: Encoder,
    decoder: Decoder,
    pub config: VaeConfig,
}

impl Vae {
    pub fn new(c: &VaeConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self { encoder: Encoder::new(c, vb.clone())?, decoder: Decoder::new(c, vb)?, config: c.clone() })
    }

    /// Pixels per latent cell.
    pub fn factor(&self) -> usize {
        self.config.downscale()
    }

    /// Image [B, 3, H, W] in [-1, 1] -> the latent mean (unscaled) [B, C, H/f, W/f].
    pub fn encode_mean(&self, image: &Tensor) -> candle_core::Result<Tensor> {
        let f = self.factor();
        tiled(image, TILE * f, OVERLAP * f, f, false, &|x| self.encoder.mean(x))
    }

    /// Latents [B, C, h, w] (unscaled) -> image [B, 3, h*f, w*f] in about [-1, 1].
    pub fn decode(&self, latents: &Tensor) -> candle_core::Result<Tensor> {
        tiled(latents, TILE, OVERLAP, self.factor(), true, &|x| self.decoder.decode(x))
    }

    /// Decode with explicit tile and overlap sizes (latent cells).
    pub fn decode_tiled(&self, latents: &Tensor, tile: usize, overlap: usize) -> candle_core::Result<Tensor> {
        if overlap >= tile {
            return Err(candle_core::Error::Msg("the tile overlap must be smaller than the tile".into()));
        }
        tiled(latents, tile, overlap, self.factor(), true, &|x| self.decoder.decode(x))
    }

    /// Direct (untiled) decode, for parity tests.
    pub fn decode_whole(&self, latents: &Tensor) -> candle_core::Result<Tensor> {
        self.decoder.decode(latents)
    }
}

/// Runs `f` over overlapping tiles of `x` (spatial size > `tile`) and blends the outputs, whose spatial
/// size is the input's times `scale` (`up`) or divided by it. Keeps peak memory bounded for large crops.
fn tiled(
    x: &Tensor,
    tile: usize,
    overlap: usize,
    scale: usize,
    up: bool,
    f: &dyn Fn(&Tensor) -> candle_core::Result<Tensor>,
) -> candle_core::Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if h <= tile && w <= tile {
        return f(x);
    }
    let starts = |n: usize| -> Vec<usize> {
        if n <= tile {
            return vec![0];
        }
        let stride = tile - overlap;
        let mut v: Vec<usize> = (0..).map(|i| i * stride).take_while(|&s| s + tile < n).collect();
        v.push(n - tile);
        v
    };
    let to_out = |v: usize| if up { v * scale } else { v / scale.max(1) };
    let (oh, ow) = (to_out(h), to_out(w));
    let ov = to_out(overlap).max(1);
    let mut acc: Option<Tensor> = None;
    let mut weight = vec![0f32; oh * ow];
    for &y in &starts(h) {
        for &xo in &starts(w) {
            let (th, tw) = (tile.min(h), tile.min(w));
            let out = f(&x.narrow(2, y, th)?.narrow(3, xo, tw)?)?.to_dtype(candle_core::DType::F32)?;
            let (_, _, eh, ew) = out.dims4()?;
            // Linear ramps over the overlap on inner edges, 1 elsewhere.
            let ramp = |i: usize, n: usize, inner_lo: bool, inner_hi: bool| -> f32 {
                let lo = if inner_lo { ((i + 1) as f32 / ov as f32).min(1.0) } else { 1.0 };
                let hi = if inner_hi { ((n - i) as f32 / ov as f32).min(1.0) } else { 1.0 };
                lo.min(hi)
            };
            let (oy, ox) = (to_out(y), to_out(xo));
            let mut m = vec![0f32; eh * ew];
            for r in 0..eh {
                for q in 0..ew {
                    let wv = ramp(r, eh, y > 0, y + th < h) * ramp(q, ew, xo > 0, xo + tw < w);
                    m[r * ew + q] = wv;
                    if let Some(slot) = weight.get_mut((oy + r) * ow + ox + q) {
                        *slot += wv;
                    }
                }
            }
            let mt = Tensor::from_vec(m, (1, 1, eh, ew), out.device())?;
            let placed = out.broadcast_mul(&mt)?.pad_with_zeros(2, oy, oh - oy - eh)?.pad_with_zeros(3, ox, ow - ox - ew)?;
            acc = Some(match acc {
                None => placed,
                Some(a) => (a + placed)?,
            });
        }
    }
    let acc = acc.ok_or_else(|| candle_core::Error::Msg("no tiles".into()))?;
    let wt = Tensor::from_vec(weight, (1, 1, oh, ow), acc.device())?;
    acc.broadcast_div(&wt.clamp(1e-6f32, f32::MAX)?)?.to_dtype(x.dtype())
}

#[cfg(test)]
mod tests {
    use super::tiled;
    use candle_core::{Device, Tensor};

    /// With a pointwise-in-space function (nearest 2x upsampling), tiles blended by their weights must
    /// reproduce the untiled result exactly: the ramps only ever mix equal values.
    #[test]
    fn tiles_blend_back_to_the_whole() {
        let x = Tensor::arange(0f32, 3.0 * 23.0 * 37.0, &Device::Cpu).and_then(|t| t.reshape((1, 3, 23, 37))).expect("x");
        let up = |t: &Tensor| t.upsample_nearest2d(t.dim(2)? * 2, t.dim(3)? * 2);
        let whole = up(&x).expect("whole");
        let tiles = tiled(&x, 10, 3, 2, true, &up).expect("tiled");
        let diff = (whole - tiles).and_then(|d| d.abs()).and_then(|d| d.max_all()).and_then(|d| d.to_scalar::<f32>()).expect("diff");
        assert!(diff < 1e-3, "max difference {diff}");
    }
}
