//! The VAE (Kingma & Welling; Rombach et al. 2022's KL autoencoder, diffusers `AutoencoderKL`): images <->
//! latents, with tiling for large crops.
//!
//! Decoding is candle's `AutoEncoderKL`. Encoding uses our own encoder built from candle's public blocks,
//! because candle's `encode` only returns a distribution that samples from an unseeded RNG and hides its
//! mean; inpainting needs the mean (deterministic per seed). Keys mirror diffusers (`encoder.*`, `quant_conv`).

use candle_core::{Module, Tensor};
use candle_nn::{conv2d, group_norm, Conv2d, Conv2dConfig, GroupNorm, VarBuilder};
use candle_transformers::models::stable_diffusion::unet_2d_blocks::{
    DownEncoderBlock2D, DownEncoderBlock2DConfig, UNetMidBlock2D, UNetMidBlock2DConfig,
};
use candle_transformers::models::stable_diffusion::vae::AutoEncoderKL;

use super::config::VaeConfig;

struct Encoder {
    conv_in: Conv2d,
    down: Vec<DownEncoderBlock2D>,
    mid: UNetMidBlock2D,
    norm: GroupNorm,
    conv_out: Conv2d,
    quant_conv: Option<Conv2d>,
}

impl Encoder {
    fn new(c: &VaeConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let k = &c.candle;
        let ch = &k.block_out_channels;
        let first = ch.first().copied().unwrap_or(128);
        let last = ch.last().copied().unwrap_or(512);
        let pad1 = Conv2dConfig { padding: 1, ..Default::default() };
        let e = vb.pp("encoder");
        let down = ch
            .iter()
            .enumerate()
            .map(|(i, &out)| {
                let cfg = DownEncoderBlock2DConfig {
                    num_layers: k.layers_per_block,
                    resnet_eps: 1e-6,
                    resnet_groups: k.norm_num_groups,
                    add_downsample: i + 1 < ch.len(),
                    downsample_padding: 0,
                    ..Default::default()
                };
                let inc = if i == 0 { first } else { ch.get(i - 1).copied().unwrap_or(out) };
                DownEncoderBlock2D::new(e.pp("down_blocks").pp(i), inc, out, cfg)
            })
            .collect::<candle_core::Result<_>>()?;
        let mid_cfg = UNetMidBlock2DConfig {
            resnet_eps: 1e-6,
            output_scale_factor: 1.0,
            attn_num_head_channels: None,
            resnet_groups: Some(k.norm_num_groups),
            ..Default::default()
        };
        let lc = 2 * k.latent_channels;
        Ok(Self {
            conv_in: conv2d(c.in_channels, first, 3, pad1, e.pp("conv_in"))?,
            down,
            mid: UNetMidBlock2D::new(e.pp("mid_block"), last, None, mid_cfg)?,
            norm: group_norm(k.norm_num_groups, last, 1e-6, e.pp("conv_norm_out"))?,
            conv_out: conv2d(last, lc, 3, pad1, e.pp("conv_out"))?,
            quant_conv: if k.use_quant_conv { Some(conv2d(lc, lc, 1, Default::default(), vb.pp("quant_conv"))?) } else { None },
        })
    }

    /// The latent distribution's mean (unscaled).
    fn mean(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let mut xs = self.conv_in.forward(xs)?;
        for b in &self.down {
            xs = b.forward(&xs)?;
        }
        let xs = self.norm.forward(&self.mid.forward(&xs, None)?)?;
        let mut xs = self.conv_out.forward(&candle_nn::ops::silu(&xs)?)?;
        if let Some(q) = &self.quant_conv {
            xs = q.forward(&xs)?;
        }
        let half = xs.dim(1)? / 2;
        xs.narrow(1, 0, half)
    }
}

/// Latent tiles this size (in latent cells) or smaller are decoded in one piece.
const TILE: usize = 96;
/// Overlap of neighbouring tiles, blended linearly.
const OVERLAP: usize = 16;

/// The autoencoder: encode to / decode from the UNet's (scaled) latent space.
pub struct Vae {
    encoder: Encoder,
    decoder: AutoEncoderKL,
    pub config: VaeConfig,
}

impl Vae {
    pub fn new(c: &VaeConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            encoder: Encoder::new(c, vb.clone())?,
            decoder: AutoEncoderKL::new(vb, c.in_channels, c.out_channels, c.candle.clone())?,
            config: c.clone(),
        })
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
