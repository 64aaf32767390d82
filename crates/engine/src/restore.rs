//! Face restoration: align the face to the FFHQ template from its 5 landmarks, restore the aligned
//! crop with GFPGAN, and paste the change back through the inverse transform with a feathered mask,
//! scaled by a strength so the person's own face is never replaced outright.
//!
//! Paste-back adds the restoration's *change* (restored minus the aligned input, warped back) to
//! the original pixels instead of replacing them with the twice-resampled crop: where the network
//! changes nothing the photo keeps its own pixels exactly (no blur from the round trip through the
//! crop), and strength 0 returns the photo untouched.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use image::RgbImage;
use rayon::prelude::*;

use crate::error::{EngineError, Result};
use crate::imgops::{self, Affine, Border};
use crate::models::gfpgan::{Config, Gfpgan};
use crate::progress::{CancelToken, ProgressSink, Stage};
use crate::pth;

/// The manifest id of the imported model.
pub const MODEL_ID: &str = "gfpgan-v1.4";

/// The FFHQ 5-point template of a 512x512 aligned face (subject's right eye, left eye, nose tip,
/// right and left mouth corner; image-left first), as used by GFPGAN's face helper (facexlib).
/// facexlib's coordinates put pixel centres on integers; ours at +0.5.
pub const FFHQ_TEMPLATE_512: [[f32; 2]; 5] = [
    [192.981_38, 239.947_08],
    [318.902_77, 240.193_6],
    [256.634_16, 314.019_35],
    [201.261_17, 371.410_43],
    [313.089_05, 371.151_18],
];

/// The template for a `size x size` crop, in our pixel convention.
pub fn template(size: usize) -> [[f32; 2]; 5] {
    let s = size as f32 / 512.0;
    FFHQ_TEMPLATE_512.map(|[x, y]| [(x + 0.5) * s, (y + 0.5) * s])
}

/// The least-squares similarity (rotation, uniform scale, translation) taking `from` onto `to`.
pub fn similarity_fit(from: &[[f32; 2]; 5], to: &[[f32; 2]; 5]) -> Result<Affine> {
    if from.iter().chain(to).any(|p| !p[0].is_finite() || !p[1].is_finite()) {
        return Err(EngineError::InvalidOption("face landmarks are not finite; no face to restore".into()));
    }
    let n = from.len() as f64;
    let mean = |ps: &[[f32; 2]; 5]| {
        let s = ps.iter().fold([0f64; 2], |a, p| [a[0] + p[0] as f64, a[1] + p[1] as f64]);
        [s[0] / n, s[1] / n]
    };
    let (mf, mt) = (mean(from), mean(to));
    let (mut sa, mut sb, mut norm) = (0f64, 0f64, 0f64);
    for (p, q) in from.iter().zip(to) {
        let (px, py) = (p[0] as f64 - mf[0], p[1] as f64 - mf[1]);
        let (qx, qy) = (q[0] as f64 - mt[0], q[1] as f64 - mt[1]);
        sa += px * qx + py * qy;
        sb += px * qy - py * qx;
        norm += px * px + py * py;
    }
    if norm < 1e-6 {
        return Err(EngineError::InvalidOption("face landmarks coincide; no face to restore".into()));
    }
    let (a, b) = (sa / norm, sb / norm);
    let c = mt[0] - (a * mf[0] - b * mf[1]);
    let f = mt[1] - (b * mf[0] + a * mf[1]);
    Ok(Affine { a: a as f32, b: -b as f32, c: c as f32, d: b as f32, e: a as f32, f: f as f32 })
}

/// The crop's feathered paste mask at crop coordinates `(x, y)`: 1 inside, easing to 0 over the
/// outer eighth of the crop (upstream pastes the whole crop with an eroded, blurred box).
fn paste_mask(x: f32, y: f32, size: f32) -> f32 {
    let d = x.min(y).min(size - x).min(size - y);
    let (inset, feather) = (size / 32.0, size / 8.0);
    let t = ((d - inset) / feather).clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

/// Bilinear sample of plane `c` of a `[3, size, size]` buffer at continuous `(x, y)`; 0 outside.
fn sample_plane(data: &[f32], size: usize, c: usize, x: f32, y: f32) -> f32 {
    let (fx, fy) = (x - 0.5, y - 0.5);
    let (x0, y0) = (fx.floor(), fy.floor());
    let (tx, ty) = (fx - x0, fy - y0);
    let plane = data.get(c * size * size..(c + 1) * size * size).unwrap_or(&[]);
    let at = |xi: f32, yi: f32| -> f32 {
        if xi < 0.0 || yi < 0.0 || xi >= size as f32 || yi >= size as f32 {
            0.0
        } else {
            plane.get(yi as usize * size + xi as usize).copied().unwrap_or(0.0)
        }
    };
    at(x0, y0) * (1.0 - tx) * (1.0 - ty) + at(x0 + 1.0, y0) * tx * (1.0 - ty) + at(x0, y0 + 1.0) * (1.0 - tx) * ty
        + at(x0 + 1.0, y0 + 1.0) * tx * ty
}

/// Aligns the face given by `five` (the 5 landmarks, in `img` pixels) to a `size x size` crop,
/// runs `restore` on it (`[1, 3, size, size]` RGB in [-1, 1] in and out) and blends the change
/// back with `strength` in [0, 1]. The network is a parameter so the geometry can be tested alone.
pub fn restore_with(
    img: &RgbImage,
    five: &[[f32; 2]; 5],
    strength: f32,
    size: usize,
    device: &Device,
    restore: impl FnOnce(&Tensor) -> Result<Tensor>,
) -> Result<RgbImage> {
    if !strength.is_finite() || !(0.0..=1.0).contains(&strength) {
        return Err(EngineError::InvalidOption(format!("restore strength {strength} must be between 0 and 1")));
    }
    if strength == 0.0 || img.width() == 0 || img.height() == 0 {
        return Ok(img.clone());
    }
    let crop_from_img = similarity_fit(five, &template(size))?;
    let img_from_crop = crop_from_img
        .invert()
        .ok_or_else(|| EngineError::InvalidOption("face landmarks are degenerate; no face to restore".into()))?;
    let aligned = imgops::warp_to_tensor(img, &img_from_crop, size, size, (-1.0, 1.0), Border::Replicate, device)?;
    let restored = restore(&aligned)?;
    if restored.dims() != aligned.dims() {
        return Err(EngineError::Model {
            model: MODEL_ID.into(),
            reason: format!("the network returned {:?} for a {:?} face", restored.dims(), aligned.dims()),
        });
    }
    // The change in 0..255 units, on the CPU.
    let diff = ((restored.clamp(-1f32, 1f32)? - &aligned)? * 127.5)?.flatten_all()?.to_vec1::<f32>()?;

    // Only pixels whose crop position can carry a change: the crop's bounding box in the photo.
    let corners = [[0.0, 0.0], [size as f32, 0.0], [0.0, size as f32], [size as f32, size as f32]].map(|p| img_from_crop.apply(p));
    let (w, h) = (img.width() as usize, img.height() as usize);
    let clampx = |v: f32| (v.max(0.0) as usize).min(w);
    let clampy = |v: f32| (v.max(0.0) as usize).min(h);
    let x0 = clampx(corners.iter().map(|p| p[0]).fold(f32::INFINITY, f32::min).floor());
    let x1 = clampx(corners.iter().map(|p| p[0]).fold(f32::NEG_INFINITY, f32::max).ceil() + 1.0);
    let y0 = clampy(corners.iter().map(|p| p[1]).fold(f32::INFINITY, f32::min).floor());
    let y1 = clampy(corners.iter().map(|p| p[1]).fold(f32::NEG_INFINITY, f32::max).ceil() + 1.0);

    let mut out = img.clone();
    let sz = size as f32;
    out.as_mut().par_chunks_mut(w * 3).enumerate().skip(y0).take(y1.saturating_sub(y0)).for_each(|(y, row)| {
        for x in x0..x1 {
            let c = crop_from_img.apply([x as f32 + 0.5, y as f32 + 0.5]);
            let m = paste_mask(c[0], c[1], sz) * strength;
            if m <= 0.0 {
                continue;
            }
            for ch in 0..3 {
                let d = sample_plane(&diff, size, ch, c[0], c[1]);
                if let Some(px) = row.get_mut(x * 3 + ch) {
                    *px = (*px as f32 + m * d).round().clamp(0.0, 255.0) as u8;
                }
            }
        }
    });
    Ok(out)
}

/// Infers the GFPGAN configuration from a checkpoint's tensor shapes (GFPGAN v1.3 / v1.4 at full
/// size, or a smaller model of the same architecture).
fn infer_config(t: &HashMap<String, Tensor>) -> Result<Config> {
    let bad = |what: &str| EngineError::Model {
        model: MODEL_ID.into(),
        reason: format!("not a GFPGAN v1 clean checkpoint ({what}); import GFPGANv1.4.pth from the GFPGAN releases"),
    };
    let dims = |k: &str| t.get(k).map(|x| x.dims().to_vec()).ok_or_else(|| bad(&format!("no {k}")));
    let downs = (0..).take_while(|i| t.contains_key(&format!("conv_body_down.{i}.conv1.weight"))).count();
    if downs == 0 || downs > 8 {
        return Err(bad("no encoder blocks"));
    }
    let out_size = 1usize << (downs + 2);
    let c4 = *dims("stylegan_decoder.constant_input.weight")?.get(1).ok_or_else(|| bad("constant input"))?;
    let narrow = c4 as f64 / 512.0;
    let num_style_feat = *dims("stylegan_decoder.style_conv1.modulated_conv.modulation.weight")?.get(1).ok_or_else(|| bad("modulation"))?;
    // Channels at 64x64 are 256 * channel_multiplier * narrow (level 3 of the decoder).
    let channel_multiplier = match dims("stylegan_decoder.style_convs.6.modulated_conv.weight") {
        Ok(d) => ((*d.get(1).unwrap_or(&0) as f64 / (256.0 * narrow)).round() as usize).max(1),
        Err(_) => 2,
    };
    let lin_out = *dims("final_linear.weight")?.first().ok_or_else(|| bad("final_linear"))?;
    let different_w = lin_out != num_style_feat;
    let scale = dims("condition_scale.0.2.weight")?;
    let sft_half = scale.first() == scale.get(1);
    Ok(Config { out_size, num_style_feat, channel_multiplier, narrow, sft_half, different_w })
}

/// GFPGAN loaded from an imported `.pth`, ready to restore faces.
pub struct FaceRestorer {
    model: Gfpgan,
    device: Device,
}

impl FaceRestorer {
    /// Loads the `params_ema` weights of a GFPGAN v1.3 / v1.4 `.pth` (bytes read and verified by the
    /// caller).
    pub fn new(pth_bytes: &[u8], device: &Device) -> Result<Self> {
        let tensors = pth::read_pth(MODEL_ID, pth_bytes, Some("params_ema"), device)?;
        let cfg = infer_config(&tensors)?;
        let vb = candle_nn::VarBuilder::from_tensors(tensors, candle_core::DType::F32, device);
        let model = Gfpgan::new(&cfg, vb).map_err(crate::weights::model_err(MODEL_ID))?;
        Ok(Self { model, device: device.clone() })
    }

    /// Wraps a model already built (tests, benchmarks).
    pub fn from_model(model: Gfpgan, device: &Device) -> Self {
        Self { model, device: device.clone() }
    }

    /// The side of the aligned crop the model works on (512 for v1.4).
    pub fn size(&self) -> usize {
        self.model.config().out_size
    }

    /// Restores the face at `five` (5 landmarks in `img` pixels, [`crate::landmarks::FaceLandmarks::five_point`]
    /// order) with `strength` in [0, 1] (0 = the photo unchanged). Progress is reported under
    /// [`Stage::Composite`] (restoration is part of the look); `cancel` is checked between the
    /// network's resolutions.
    pub fn restore(
        &self,
        img: &RgbImage,
        five: &[[f32; 2]; 5],
        strength: f32,
        progress: &dyn ProgressSink,
        cancel: &CancelToken,
    ) -> Result<RgbImage> {
        cancel.check()?;
        progress.stage(Stage::Composite, 0.0);
        let out = restore_with(img, five, strength, self.size(), &self.device, |x| {
            self.model.forward_cancellable(x, Some(cancel)).map_err(crate::models::engine_error)
        })?;
        cancel.check()?;
        progress.stage(Stage::Composite, 1.0);
        Ok(out)
    }
}
