//! The studio pipeline: one photo in (encoded bytes), one finished headshot out.
//!
//! decode -> detect faces -> face mesh -> framing -> person segmentation -> [face restoration] ->
//! studio look -> upscale (only when an output size larger than the crop was asked for, or forced) -> encode.
//! Each stage is a pure function of its inputs; progress is reported at stage starts and
//! cancellation is checked between stages.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use candle_core::Device;
use image::RgbImage;
use rayon::prelude::*;
use serde::Serialize;

use crate::composite::{self, FaceRegions, StudioStyle};
use crate::error::{EngineError, Result};
use crate::faces::{Face, FaceDetector};
use crate::framing::{self, FaceGeometry, Framing, Preset};
use crate::image_io::{self, DecodeLimits, OutputFormat};
use crate::imgops::{self, Affine, Border, Mask};
use crate::landmarks::{FaceLandmarks, FaceMesh};
use crate::progress::{CancelToken, ProgressSink, Stage};
use crate::restore::FaceRestorer;
use crate::segment::Segmenter;
use crate::upscale::{Factor, UpscaleMode, Upscaler};

/// Safetensors bytes of the bundled models (the caller reads and verifies the files).
pub struct ModelBytes {
    pub blazeface_front: Vec<u8>,
    pub blazeface_back: Option<Vec<u8>>,
    pub face_mesh: Vec<u8>,
    pub selfie: Vec<u8>,
}

/// Loads the upscaler on first use (the caller reads and verifies its weights); `Err` is the
/// reason it is unavailable (for example, not installed).
pub type UpscalerSource = Box<dyn Fn() -> Result<Upscaler> + Send + Sync>;

/// The loaded models of the studio look. Load once, reuse for every photo.
pub struct StudioModels {
    pub detector: FaceDetector,
    pub mesh: FaceMesh,
    pub segmenter: Segmenter,
    /// GFPGAN, when the user imported it (see [`StudioModels::with_restorer`]).
    pub restorer: Option<FaceRestorer>,
    /// Real-ESRGAN, loaded the first time a headshot needs it (most never do).
    upscaler_source: Option<UpscalerSource>,
    upscaler: OnceLock<std::result::Result<Arc<Upscaler>, String>>,
}

impl StudioModels {
    pub fn load(bytes: ModelBytes, device: &Device) -> Result<Self> {
        Ok(Self {
            detector: FaceDetector::new(bytes.blazeface_front, bytes.blazeface_back, device)?,
            mesh: FaceMesh::new(bytes.face_mesh, device)?,
            segmenter: Segmenter::new(bytes.selfie, device)?,
            restorer: None,
            upscaler_source: None,
            upscaler: OnceLock::new(),
        })
    }

    /// Adds face restoration (GFPGAN, imported by the user) for requests that ask for it.
    pub fn with_restorer(mut self, restorer: FaceRestorer) -> Self {
        self.restorer = Some(restorer);
        self
    }

    /// The same models with an upscaler, loaded by `source` when a headshot first needs one.
    pub fn with_upscaler(mut self, source: UpscalerSource) -> Self {
        self.upscaler_source = Some(source);
        self.upscaler = OnceLock::new();
        self
    }

    /// The upscaler, loading it on first call; `Err` says why there is none.
    pub fn upscaler(&self) -> std::result::Result<Arc<Upscaler>, String> {
        self.upscaler
            .get_or_init(|| match &self.upscaler_source {
                Some(load) => load().map(Arc::new).map_err(|e| e.to_string()),
                None => Err("no upscaling model is installed".into()),
            })
            .clone()
    }
}

/// The warning of a headshot that asked for face restoration when GFPGAN is not installed.
pub const RESTORE_UNAVAILABLE: &str = "face restoration was skipped: the GFPGAN v1.4 model is not installed \
     (get GFPGANv1.4.pth from https://github.com/TencentARC/GFPGAN/releases and import it)";

/// What to make.
#[derive(Debug, Clone)]
pub struct HeadshotRequest {
    pub preset: Preset,
    pub style: StudioStyle,
    pub format: OutputFormat,
    /// Upper bound of the output's short side in pixels.
    pub max_short_side: u32,
    /// The output's short side exactly, when set (overrides `max_short_side`). A crop with fewer
    /// pixels than this is upscaled (`upscale` auto) or resized (off).
    pub size: Option<u32>,
    /// Super-resolution of the finished crop: auto (only when `size` exceeds the crop), off, or
    /// a forced 2x / 4x.
    pub upscale: UpscaleMode,
    pub limits: DecodeLimits,
    /// Face restoration strength in [0, 1] (`None`: off). Needs [`StudioModels::restorer`].
    pub restore: Option<f32>,
}

impl Default for HeadshotRequest {
    fn default() -> Self {
        Self {
            preset: Preset::Square,
            style: StudioStyle::default(),
            format: OutputFormat::Png,
            max_short_side: 2048,
            size: None,
            upscale: UpscaleMode::Auto,
            limits: DecodeLimits::default(),
            restore: None,
        }
    }
}

/// Wall time of each stage.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StageTimings {
    pub decode: Duration,
    pub detect: Duration,
    pub landmarks: Duration,
    pub framing: Duration,
    pub segment: Duration,
    pub composite: Duration,
    pub upscale: Duration,
    pub encode: Duration,
}

impl StageTimings {
    pub fn total(&self) -> Duration {
        self.decode + self.detect + self.landmarks + self.framing + self.segment + self.composite + self.upscale + self.encode
    }
}

/// A finished headshot.
pub struct Headshot {
    /// The encoded file (PNG / JPEG / WebP), without metadata.
    pub encoded: Vec<u8>,
    pub format: OutputFormat,
    pub width: u32,
    pub height: u32,
    /// Faces the detector found; the first was used.
    pub faces: Vec<Face>,
    /// Things the user should know (e.g. several faces found).
    pub warnings: Vec<String>,
    pub timings: StageTimings,
}

/// The analysis of a photo: its faces, most prominent first, and the subject's landmarks.
pub struct Analysis {
    pub image: RgbImage,
    pub faces: Vec<Face>,
    pub landmarks: Option<FaceLandmarks>,
}

/// Decodes `input` and detects faces (and the subject's landmarks when `with_landmarks`).
pub fn analyze(models: &StudioModels, input: &[u8], limits: &DecodeLimits, with_landmarks: bool) -> Result<Analysis> {
    let image = image_io::decode(input, limits)?.image;
    let faces = models.detector.detect(&image)?;
    let landmarks = match (with_landmarks, faces.first()) {
        (true, Some(face)) => Some(models.mesh.landmarks(&image, face)?),
        _ => None,
    };
    Ok(Analysis { image, faces, landmarks })
}

/// Makes one studio headshot from an encoded photo.
pub fn studio_headshot(
    models: &StudioModels,
    input: &[u8],
    req: &HeadshotRequest,
    progress: &dyn ProgressSink,
    cancel: &CancelToken,
) -> Result<Headshot> {
    let mut t = StageTimings::default();
    let mut warnings = Vec::new();
    let step = |stage: Stage| -> Result<Instant> {
        cancel.check()?;
        let i = Stage::ALL.iter().position(|s| *s == stage).unwrap_or(0);
        progress.stage(stage, i as f32 / Stage::ALL.len() as f32);
        Ok(Instant::now())
    };

    let s = step(Stage::Decode)?;
    let image = image_io::decode(input, &req.limits)?.image;
    t.decode = s.elapsed();

    let s = step(Stage::Detect)?;
    let faces = models.detector.detect(&image)?;
    let face = faces.first().ok_or(EngineError::NoFace)?;
    if faces.len() > 1 {
        warnings.push(format!(
            "{} faces found; used the most prominent one (largest and most central). Crop the photo to one person for a different choice.",
            faces.len()
        ));
    }
    t.detect = s.elapsed();

    let s = step(Stage::Landmarks)?;
    let lm = models.mesh.landmarks(&image, face)?;
    t.landmarks = s.elapsed();

    let s = step(Stage::Framing)?;
    let geometry = face_geometry(&lm);
    let plan = UpscalePlan::new(req)?;
    let framing = framing::frame(&geometry, image.width(), image.height(), req.preset, plan.frame_max)?;
    if framing.outside_fraction > 0.02 {
        warnings.push(format!(
            "the photo is cropped tightly: {:.0}% of the frame was extended beyond the photo",
            framing.outside_fraction * 100.0
        ));
    }
    let mut crop = imgops::warp_rgb(&image, &framing.src_from_dst, framing.width, framing.height, Border::Replicate);
    soften_extension(&mut crop, &framing, image.width(), image.height());
    let inside = inside_mask(&framing, image.width(), image.height());
    let regions = face_regions(&lm, &framing.src_from_dst)?;
    let crop_from_img = framing.src_from_dst.invert().unwrap_or(Affine::IDENTITY);
    t.framing = s.elapsed();

    let s = step(Stage::Segment)?;
    let person = models.segmenter.segment(&crop)?;
    t.segment = s.elapsed();

    let s = step(Stage::Composite)?;
    // Restoration works on the framed crop, before the look: the crop is the output's own pixels
    // (one resampling fewer than restoring the photo and framing again), and relight / retouch
    // then treat the restored face like the rest of the person, so the face matches its scene.
    {
        let base = Stage::ALL.iter().position(|s| *s == Stage::Composite).unwrap_or(0) as f32;
        let n = Stage::ALL.len() as f32;
        let sink = |stage: Stage, f: f32| progress.stage(stage, (base + 0.5 * f) / n);
        crop = restore_crop(models, crop, &lm, &crop_from_img, req.restore, &sink, cancel, &mut warnings)?;
    }
    let out = composite::studio(&crop, &inside, &person, &regions, &req.style)?;
    t.composite = s.elapsed();

    let out = match plan.factor(out.width().min(out.height())) {
        Resize::None => out,
        how => {
            let s = step(Stage::Upscale)?;
            // Upscale progress fills the share of the Upscale stage.
            let i = Stage::ALL.iter().position(|s| *s == Stage::Upscale).unwrap_or(0) as f32;
            let n = Stage::ALL.len() as f32;
            let sink = |stage: Stage, f: f32| progress.stage(stage, (i + f) / n);
            let up = upscale_crop(models, out, how, plan.size, &sink, cancel, &mut warnings)?;
            t.upscale = s.elapsed();
            up
        }
    };

    let s = step(Stage::Encode)?;
    let encoded = image_io::encode(&out, req.format)?;
    t.encode = s.elapsed();
    cancel.check()?;
    progress.stage(Stage::Encode, 1.0);

    Ok(Headshot {
        encoded,
        format: req.format,
        width: out.width(),
        height: out.height(),
        faces: faces.clone(),
        warnings,
        timings: t,
    })
}

/// Face restoration of the framed crop when the request asks for it (both looks): GFPGAN on the
/// face aligned from the mesh's five points, pasted back; one warning when GFPGAN is not installed.
#[allow(clippy::too_many_arguments)]
pub(crate) fn restore_crop(
    models: &StudioModels,
    crop: RgbImage,
    lm: &FaceLandmarks,
    crop_from_img: &Affine,
    strength: Option<f32>,
    progress: &dyn ProgressSink,
    cancel: &CancelToken,
    warnings: &mut Vec<String>,
) -> Result<RgbImage> {
    let Some(strength) = strength.filter(|s| *s > 0.0) else { return Ok(crop) };
    match &models.restorer {
        Some(restorer) => {
            let five = lm.five_point().map(|p| crop_from_img.apply(p));
            restorer.restore(&crop, &five, strength, progress, cancel)
        }
        None => {
            warnings.push(RESTORE_UNAVAILABLE.to_string());
            Ok(crop)
        }
    }
}

/// The few points framing needs, from the 468-point mesh.
pub fn face_geometry(lm: &FaceLandmarks) -> FaceGeometry {
    let (right_eye, left_eye) = lm.eye_centers();
    let five = lm.five_point();
    let mouth = [(five[3][0] + five[4][0]) * 0.5, (five[3][1] + five[4][1]) * 0.5];
    FaceGeometry { right_eye, left_eye, mouth, chin: lm.chin(), forehead_top: lm.forehead_top() }
}

/// 1 where an output pixel samples the photo, 0 where it lies beyond it (1-pixel soft edge).
pub(crate) fn inside_mask(framing: &Framing, img_w: u32, img_h: u32) -> Mask {
    let (w, h) = (img_w as f32, img_h as f32);
    let m = framing.src_from_dst;
    Mask::from_fn(framing.width, framing.height, |x, y| {
        let p = m.apply([x as f32 + 0.5, y as f32 + 0.5]);
        // Distance (in source pixels) inside the nearest photo edge, clamped to a soft [0, 1] ramp.
        let d = p[0].min(w - p[0]).min(p[1]).min(h - p[1]);
        image::Luma([d.clamp(0.0, 1.0)])
    })
}

/// Where the crop runs past the photo, the replicated edge pixels would show as streaks (the body
/// below a photo cut at the chest, say). Blur them along the edge, more the farther from the photo,
/// so the extension reads as smooth cloth and light.
pub(crate) fn soften_extension(crop: &mut RgbImage, framing: &Framing, img_w: u32, img_h: u32) {
    let w = crop.width() as usize;
    if framing.outside_fraction <= 0.0 || w == 0 {
        return;
    }
    let m = framing.src_from_dst;
    // Output pixels per source pixel (the warp has no shear, so one number will do).
    let px = {
        let a = m.apply([0.0, 0.0]);
        let b = m.apply([1.0, 0.0]);
        1.0 / (b[0] - a[0]).hypot(b[1] - a[1]).max(1e-6)
    };
    let (iw, ih) = (img_w as f32, img_h as f32);
    let max_r = (w / 5).max(1);
    crop.as_mut().par_chunks_mut(w * 3).enumerate().for_each(|(y, row)| {
        let radius: Vec<usize> = (0..w)
            .map(|x| {
                let p = m.apply([x as f32 + 0.5, y as f32 + 0.5]);
                let out = (-p[0]).max(p[0] - iw).max(-p[1]).max(p[1] - ih).max(0.0) * px;
                if out > 0.0 { ((out * 1.5 + 0.02 * w as f32) as usize).min(max_r) } else { 0 }
            })
            .collect();
        if radius.iter().all(|&r| r == 0) {
            return;
        }
        let mut sum = vec![[0u32; 3]; w + 1];
        for x in 0..w {
            for k in 0..3 {
                sum[x + 1][k] = sum[x][k] + u32::from(row[x * 3 + k]);
            }
        }
        for (x, &r) in radius.iter().enumerate() {
            if r == 0 {
                continue;
            }
            let (a, b) = (x.saturating_sub(r), (x + r + 1).min(w));
            let n = (b - a) as u32;
            for k in 0..3 {
                row[x * 3 + k] = ((sum[b][k] - sum[a][k] + n / 2) / n) as u8;
            }
        }
    });
}

/// The face mesh polygons in output (crop) coordinates.
pub(crate) fn face_regions(lm: &FaceLandmarks, src_from_dst: &Affine) -> Result<FaceRegions> {
    let dst_from_src = src_from_dst
        .invert()
        .ok_or_else(|| EngineError::InvalidOption("degenerate framing transform".into()))?;
    let map = |poly: Vec<[f32; 2]>| poly.into_iter().map(|p| dst_from_src.apply(p)).collect::<Vec<_>>();
    Ok(FaceRegions {
        face_oval: map(lm.face_oval()),
        right_eye: map(lm.right_eye()),
        left_eye: map(lm.left_eye()),
        lips: map(lm.lips()),
        right_brow: map(lm.right_brow()),
        left_brow: map(lm.left_brow()),
    })
}

/// How the output size is reached from the crop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resize {
    /// The crop is the output.
    None,
    /// Super-resolution by this factor (then resized to `size` if one was asked for).
    Upscale(Factor),
    /// Plain resampling to `size` (upscaling off).
    Resample,
}

/// What the request asks of the upscale stage.
pub(crate) struct UpscalePlan {
    /// The short-side cap handed to framing.
    pub(crate) frame_max: u32,
    pub(crate) size: Option<u32>,
    mode: UpscaleMode,
}

impl UpscalePlan {
    pub(crate) fn new(req: &HeadshotRequest) -> Result<Self> {
        let frame_max = match (req.size, req.upscale) {
            (Some(n), _) => n,
            // A forced factor without a size: the crop at its own resolution, capped so the
            // upscaled output still respects the largest size.
            (None, UpscaleMode::Force(f)) => (req.max_short_side / f.value()).max(MIN_SIZE),
            (None, _) => req.max_short_side,
        };
        if let Some(n) = req.size {
            if !(MIN_SIZE..=MAX_SIZE).contains(&n) {
                return Err(EngineError::InvalidOption(format!(
                    "output size {n}: use between {} and {MAX_SIZE} pixels",
                    MIN_SIZE
                )));
            }
        }
        Ok(Self { frame_max, size: req.size, mode: req.upscale })
    }

    /// How a crop whose short side is `crop` becomes the output.
    pub(crate) fn factor(&self, crop: u32) -> Resize {
        match (self.mode, self.size) {
            (UpscaleMode::Force(f), _) => Resize::Upscale(f),
            (_, Some(n)) if n <= crop => Resize::None,
            (UpscaleMode::Off, Some(_)) => Resize::Resample,
            (UpscaleMode::Auto, Some(n)) => Resize::Upscale(if n <= 2 * crop { Factor::X2 } else { Factor::X4 }),
            (_, None) => Resize::None,
        }
    }
}

/// Smallest and largest `size` a request may ask for.
pub const MIN_SIZE: u32 = 64;
pub const MAX_SIZE: u32 = 8192;

/// Upscales (or resamples) the finished crop and brings its short side to exactly `size`.
pub(crate) fn upscale_crop(
    models: &StudioModels,
    crop: RgbImage,
    how: Resize,
    size: Option<u32>,
    progress: &dyn ProgressSink,
    cancel: &CancelToken,
    warnings: &mut Vec<String>,
) -> Result<RgbImage> {
    let up = match how {
        Resize::None => return Ok(crop),
        Resize::Resample => crop,
        Resize::Upscale(f) => match models.upscaler() {
            Ok(u) => u.upscale(&crop, f, progress, cancel)?,
            // Auto upscaling degrades to resampling when the model is missing; a forced factor fails.
            Err(why) if size.is_some() => {
                warnings.push(format!("not upscaled with Real-ESRGAN ({why}); the crop was resized instead"));
                crop
            }
            Err(why) => return Err(EngineError::InvalidOption(format!("cannot upscale: {why}"))),
        },
    };
    let Some(n) = size else { return Ok(up) };
    let (w, h) = up.dimensions();
    let short = w.min(h).max(1);
    if short == n {
        return Ok(up);
    }
    let scale = |v: u32| ((v as f64) * n as f64 / short as f64).round().max(1.0) as u32;
    let (tw, th) = if w <= h { (n, scale(h)) } else { (scale(w), n) };
    // Lanczos3 to reduce (keeps the upscaler's detail), Catmull-Rom to enlarge (less ringing).
    let filter = if short > n { image::imageops::FilterType::Lanczos3 } else { image::imageops::FilterType::CatmullRom };
    Ok(image::imageops::resize(&up, tw, th, filter))
}
