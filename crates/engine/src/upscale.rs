//! Super-resolution of whole images with bounded memory: Real-ESRGAN x4plus (bundled RRDBNet) or a
//! user-imported SRVGGNetCompact (`realesr-general-x4v3.pth`).
//!
//! The image is cut into core tiles of at most `tile` input pixels a side. Each tile is run with
//! `context` extra input pixels on every side that has image there (so the network sees what is
//! around the tile and its padding artefacts fall outside what is kept), and its output is kept
//! over the core plus `blend / 2` pixels into each neighbour, weighted by a linear ramp that falls
//! to zero across the `blend`-wide band around the core edge; overlapping tiles' ramps sum to one,
//! so seams are a cross-fade, not a cut. Output rows are written as soon as no later tile can touch
//! them, so the float working set is a few tile rows whatever the image size (the finished 8-bit
//! image is the only full-size buffer). x2 is the x4 result downscaled with a Lanczos3 filter.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Module, Tensor};
use image::RgbImage;

use crate::error::{EngineError, Result};
use crate::models::rrdbnet::{self, RrdbNet};
use crate::models::srvgg::{self, SrVggNetCompact};
use crate::progress::{CancelToken, ProgressSink, Stage};
use crate::weights::{model_err, var_builder};

/// The id of the bundled model in `models/manifest.toml`.
pub const REALESRGAN_X4PLUS: &str = "realesrgan-x4plus";
/// The id under which a user imports `realesr-general-x4v3.pth`.
pub const REALESR_GENERAL_X4V3: &str = "realesr-general-x4v3";

/// The network behind an [`Upscaler`].
#[derive(Debug, Clone)]
pub enum UpscaleNet {
    /// RealESRGAN_x4plus (RRDBNet, 16.7M parameters): the best quality, slow on the CPU.
    RealEsrgan(RrdbNet),
    /// SRVGGNetCompact (1.2M parameters for realesr-general-x4v3): fast, a little softer.
    Compact(SrVggNetCompact),
}

/// Largest output (at the network's own scale) [`Upscaler::upscale`] makes: 64 megapixels, an
/// 8192x8192 image (192 MB as 8-bit RGB).
pub const MAX_OUTPUT_PIXELS: u64 = 64 << 20;

/// How much to enlarge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Factor {
    X2,
    X4,
}

impl Factor {
    pub fn value(self) -> u32 {
        match self {
            Factor::X2 => 2,
            Factor::X4 => 4,
        }
    }
}

impl std::str::FromStr for Factor {
    type Err = EngineError;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().trim_start_matches(['x', 'X']) {
            "2" => Ok(Factor::X2),
            "4" => Ok(Factor::X4),
            _ => Err(EngineError::InvalidOption(format!("upscale factor '{s}' (use 2 or 4)"))),
        }
    }
}

/// Whether the studio pipeline upscales its crop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpscaleMode {
    /// Only when the requested output size is larger than the crop.
    #[default]
    Auto,
    /// Never (a larger requested size is reached by plain resampling).
    Off,
    /// Always by this factor.
    Force(Factor),
}

impl std::str::FromStr for UpscaleMode {
    type Err = EngineError;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" | "" => Ok(UpscaleMode::Auto),
            "off" | "none" => Ok(UpscaleMode::Off),
            other => other
                .parse::<Factor>()
                .map(UpscaleMode::Force)
                .map_err(|_| EngineError::InvalidOption(format!("upscale '{s}' (use auto, off, 2 or 4)"))),
        }
    }
}

/// Tiling parameters, in input pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tiling {
    /// Largest core tile side.
    pub tile: usize,
    /// Input pixels of context around each tile (dropped from the output).
    pub context: usize,
    /// Width of the cross-fade band centred on each core edge between tiles (even).
    pub blend: usize,
}

impl Default for Tiling {
    /// 128-pixel tiles: on the CPU the RRDBNet's 4x-resolution features of one tile are ~130 MB.
    fn default() -> Self {
        Self { tile: 128, context: 16, blend: 8 }
    }
}

/// A loaded upscaler. Load once, reuse for every image.
#[derive(Debug, Clone)]
pub struct Upscaler {
    net: UpscaleNet,
    scale: usize,
    device: Device,
    tiling: Tiling,
}

impl Upscaler {
    /// The bundled Real-ESRGAN x4plus from its safetensors bytes (f16 or f32; run in f32).
    pub fn realesrgan_x4plus(bytes: Vec<u8>, device: &Device) -> Result<Self> {
        let vb = var_builder(REALESRGAN_X4PLUS, bytes, device)?;
        let net = RrdbNet::new(&rrdbnet::Config::x4plus(), vb).map_err(model_err(REALESRGAN_X4PLUS))?;
        Ok(Self { net: UpscaleNet::RealEsrgan(net), scale: RrdbNet::SCALE, device: device.clone(), tiling: Tiling::default() })
    }

    /// An SRVGGNetCompact from the bytes of its PyTorch checkpoint (`params` or a plain state dict).
    pub fn compact_from_pth(model: &str, bytes: &[u8], device: &Device) -> Result<Self> {
        let err = |reason: String| EngineError::Model { model: model.into(), reason };
        let state = crate::pth::read_pth_or_root(model, bytes, "params", device)?;
        let cfg = srvgg::Config::from_state(&state).map_err(|e| err(e.to_string()))?;
        let vb = candle_nn::VarBuilder::from_tensors(state, DType::F32, device).pp("body");
        let net = SrVggNetCompact::new(&cfg, vb).map_err(model_err(model))?;
        Ok(Self { net: UpscaleNet::Compact(net), scale: cfg.upscale, device: device.clone(), tiling: Tiling::default() })
    }

    /// The same upscaler with other tile sizes (larger on a GPU, smaller to save memory).
    pub fn with_tiling(mut self, tiling: Tiling) -> Result<Self> {
        if tiling.tile < 8 || tiling.blend % 2 != 0 || tiling.blend > tiling.tile / 2 {
            return Err(EngineError::InvalidOption(format!(
                "tiling {tiling:?}: tiles need at least 8 pixels and an even blend of at most half a tile"
            )));
        }
        self.tiling = tiling;
        Ok(self)
    }

    pub fn tiling(&self) -> Tiling {
        self.tiling
    }

    /// The network's own factor (4 for both bundled and general models).
    pub fn scale(&self) -> usize {
        self.scale
    }

    pub fn net(&self) -> &UpscaleNet {
        &self.net
    }

    /// The network on one NCHW tensor in [0, 1], untiled.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_cancellable(x, None)
    }

    /// [`Upscaler::forward`] that stops inside the network once `cancel` is set (RRDBNet checks
    /// between its blocks; the compact net is a fraction of a second a tile and is not split).
    fn forward_cancellable(&self, x: &Tensor, cancel: Option<&CancelToken>) -> Result<Tensor> {
        match &self.net {
            UpscaleNet::RealEsrgan(n) => n.forward_cancellable(x, cancel).map_err(crate::models::engine_error),
            UpscaleNet::Compact(n) => Ok(n.forward(x)?),
        }
    }

    /// Enlarges `image` by `factor`. Progress goes to `progress` as [`Stage::Upscale`] with the
    /// fraction of tiles done; `cancel` is checked between tiles and inside RRDBNet between blocks.
    pub fn upscale(&self, image: &RgbImage, factor: Factor, progress: &dyn ProgressSink, cancel: &CancelToken) -> Result<RgbImage> {
        let (w, h) = (image.width() as usize, image.height() as usize);
        if w == 0 || h == 0 {
            return Err(EngineError::TooSmall { width: image.width(), height: image.height(), min: 1 });
        }
        let f = factor.value() as usize;
        if f > self.scale {
            return Err(EngineError::InvalidOption(format!("this model enlarges {}x; it cannot make {f}x", self.scale)));
        }
        let (ow, oh) = (w * self.scale, h * self.scale);
        if (ow as u64) * (oh as u64) > MAX_OUTPUT_PIXELS {
            return Err(EngineError::InvalidOption(format!(
                "the image is {w}x{h} pixels; upscaled {}x it would be {ow}x{oh}, more than the limit of {MAX_OUTPUT_PIXELS} pixels; crop or downscale it first",
                self.scale
            )));
        }
        let mut out = RgbImage::new(ow as u32, oh as u32);
        let buf: &mut [u8] = &mut out;
        self.run_tiled(image, progress, cancel, &mut |y, row| {
            if let Some(dst) = buf.get_mut(y * ow * 3..(y + 1) * ow * 3) {
                for (d, &v) in dst.iter_mut().zip(row) {
                    *d = (v.clamp(0.0, 1.0) * 255.0).round() as u8;
                }
            }
        })?;
        if f == self.scale {
            return Ok(out);
        }
        let (tw, th) = ((w * f) as u32, (h * f) as u32);
        Ok(image::imageops::resize(&out, tw, th, image::imageops::FilterType::Lanczos3))
    }

    /// The tiled network output as a float `[1, 3, s*h, s*w]` tensor (not clamped): for tests
    /// that compare tiling against [`Upscaler::forward`].
    pub fn upscale_float(&self, image: &RgbImage, cancel: &CancelToken) -> Result<Tensor> {
        let ow = image.width() as usize * self.scale;
        let oh = image.height() as usize * self.scale;
        let mut planes = vec![0f32; 3 * ow * oh];
        self.run_tiled(image, &crate::progress::NoProgress, cancel, &mut |y, row| {
            for (x, px) in row.chunks_exact(3).enumerate() {
                for (c, &v) in px.iter().enumerate() {
                    if let Some(d) = planes.get_mut((c * oh + y) * ow + x) {
                        *d = v;
                    }
                }
            }
        })?;
        Ok(Tensor::from_vec(planes, (1, 3, oh, ow), &Device::Cpu)?)
    }

    /// Runs the tiles row by row, handing each finished output row (interleaved RGB floats) to `emit`.
    fn run_tiled(
        &self,
        image: &RgbImage,
        progress: &dyn ProgressSink,
        cancel: &CancelToken,
        emit: &mut dyn FnMut(usize, &[f32]),
    ) -> Result<()> {
        let (w, h) = (image.width() as usize, image.height() as usize);
        let s = self.scale;
        let t = self.tiling;
        let cols = spans(w, t.tile);
        let rows = spans(h, t.tile);
        let total = (cols.len() * rows.len()).max(1) as f32;
        let ow = w * s;
        let half = t.blend / 2;
        // Accumulated (r, g, b, weight) per pixel of the output rows still open.
        let mut open: BTreeMap<usize, Vec<f32>> = BTreeMap::new();
        let mut done = 0usize;
        progress.stage(Stage::Upscale, 0.0);
        for (ri, &(cy0, cy1)) in rows.iter().enumerate() {
            // Kept extent (core + half the blend band where a neighbour exists) and input extent.
            let ky0 = if ri == 0 { 0 } else { cy0 - half };
            let ky1 = if ri + 1 == rows.len() { h } else { cy1 + half };
            let iy0 = ky0.saturating_sub(t.context);
            let iy1 = (ky1 + t.context).min(h);
            for (ci, &(cx0, cx1)) in cols.iter().enumerate() {
                cancel.check()?;
                let kx0 = if ci == 0 { 0 } else { cx0 - half };
                let kx1 = if ci + 1 == cols.len() { w } else { cx1 + half };
                let ix0 = kx0.saturating_sub(t.context);
                let ix1 = (kx1 + t.context).min(w);
                let x = tile_tensor(image, ix0, iy0, ix1 - ix0, iy1 - iy0, &self.device)?;
                let y = self.forward_cancellable(&x, Some(cancel))?.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
                let tw = (ix1 - ix0) * s;
                let y = y.flatten_all()?.to_vec1::<f32>()?;
                let plane = tw * (iy1 - iy0) * s;
                if y.len() != 3 * plane {
                    return Err(EngineError::InvalidOption("upscaler output has an unexpected size".into()));
                }
                // Blend weights along each axis, in output pixels.
                let wx: Vec<f32> = (kx0 * s..kx1 * s)
                    .map(|ox| ramp(ox, cx0 * s, cx1 * s, half * s, ci > 0, ci + 1 < cols.len()))
                    .collect();
                for oy in ky0 * s..ky1 * s {
                    let wy = ramp(oy, cy0 * s, cy1 * s, half * s, ri > 0, ri + 1 < rows.len());
                    let acc = open.entry(oy).or_insert_with(|| vec![0.0; ow * 4]);
                    let ty = oy - iy0 * s;
                    for (i, ox) in (kx0 * s..kx1 * s).enumerate() {
                        let wgt = wy * wx.get(i).copied().unwrap_or(0.0);
                        let tx = ox - ix0 * s;
                        let src = ty * tw + tx;
                        if let Some(a) = acc.get_mut(ox * 4..ox * 4 + 4) {
                            for c in 0..3 {
                                a[c] += wgt * y.get(c * plane + src).copied().unwrap_or(0.0);
                            }
                            a[3] += wgt;
                        }
                    }
                }
                done += 1;
                progress.stage(Stage::Upscale, done as f32 / total);
            }
            // Rows above the next tile row's kept extent are final.
            let next = rows.get(ri + 1).map(|&(ny0, _)| (ny0 - half) * s).unwrap_or(usize::MAX);
            let finished: Vec<usize> = open.range(..next).map(|(&k, _)| k).collect();
            for oy in finished {
                if let Some(acc) = open.remove(&oy) {
                    let row: Vec<f32> = acc
                        .chunks_exact(4)
                        .flat_map(|a| {
                            let n = if a[3] > 0.0 { 1.0 / a[3] } else { 0.0 };
                            [a[0] * n, a[1] * n, a[2] * n]
                        })
                        .collect();
                    emit(oy, &row);
                }
            }
        }
        Ok(())
    }
}

/// Splits `0..n` into `ceil(n / tile)` nearly equal spans.
fn spans(n: usize, tile: usize) -> Vec<(usize, usize)> {
    let k = n.div_ceil(tile.max(1)).max(1);
    (0..k).map(|i| (i * n / k, (i + 1) * n / k)).collect()
}

/// Weight of output coordinate `p` for a core `[c0, c1)`: 1 inside, a linear cross-fade over
/// `[c - half, c + half)` at each edge that has a neighbour (`lo` / `hi`), 0 beyond.
fn ramp(p: usize, c0: usize, c1: usize, half: usize, lo: bool, hi: bool) -> f32 {
    let p = p as f32 + 0.5;
    let band = (2 * half) as f32;
    let mut w = 1.0f32;
    if lo && half > 0 {
        w = w.min(((p - (c0 - half) as f32) / band).clamp(0.0, 1.0));
    }
    if hi && half > 0 {
        w = w.min((((c1 + half) as f32 - p) / band).clamp(0.0, 1.0));
    }
    w
}

/// `[1, 3, h, w]` in [0, 1] from a window of an RGB image.
fn tile_tensor(image: &RgbImage, x0: usize, y0: usize, w: usize, h: usize, device: &Device) -> Result<Tensor> {
    let mut v = vec![0f32; 3 * w * h];
    let raw: &[u8] = image.as_raw();
    let iw = image.width() as usize;
    for y in 0..h {
        let row = raw.get(((y0 + y) * iw + x0) * 3..((y0 + y) * iw + x0 + w) * 3).unwrap_or(&[]);
        for (x, px) in row.chunks_exact(3).enumerate() {
            for c in 0..3 {
                v[(c * h + y) * w + x] = f32::from(px[c]) / 255.0;
            }
        }
    }
    Ok(Tensor::from_vec(v, (1, 3, h, w), device)?)
}
