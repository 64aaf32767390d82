//! The studio pipeline: one photo in (encoded bytes), one finished headshot out.
//!
//! decode -> detect faces -> face mesh -> framing -> person segmentation -> studio look -> encode.
//! Each stage is a pure function of its inputs; progress is reported at stage starts and
//! cancellation is checked between stages.

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
use crate::segment::Segmenter;

/// Safetensors bytes of the bundled models (the caller reads and verifies the files).
pub struct ModelBytes {
    pub blazeface_front: Vec<u8>,
    pub blazeface_back: Option<Vec<u8>>,
    pub face_mesh: Vec<u8>,
    pub selfie: Vec<u8>,
}

/// The loaded models of the studio look. Load once, reuse for every photo.
pub struct StudioModels {
    pub detector: FaceDetector,
    pub mesh: FaceMesh,
    pub segmenter: Segmenter,
}

impl StudioModels {
    pub fn load(bytes: ModelBytes, device: &Device) -> Result<Self> {
        Ok(Self {
            detector: FaceDetector::new(bytes.blazeface_front, bytes.blazeface_back, device)?,
            mesh: FaceMesh::new(bytes.face_mesh, device)?,
            segmenter: Segmenter::new(bytes.selfie, device)?,
        })
    }
}

/// What to make.
#[derive(Debug, Clone)]
pub struct HeadshotRequest {
    pub preset: Preset,
    pub style: StudioStyle,
    pub format: OutputFormat,
    /// Upper bound of the output's short side in pixels.
    pub max_short_side: u32,
    pub limits: DecodeLimits,
}

impl Default for HeadshotRequest {
    fn default() -> Self {
        Self {
            preset: Preset::Square,
            style: StudioStyle::default(),
            format: OutputFormat::Png,
            max_short_side: 2048,
            limits: DecodeLimits::default(),
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
    pub encode: Duration,
}

impl StageTimings {
    pub fn total(&self) -> Duration {
        self.decode + self.detect + self.landmarks + self.framing + self.segment + self.composite + self.encode
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
    let framing = framing::frame(&geometry, image.width(), image.height(), req.preset, req.max_short_side)?;
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
    t.framing = s.elapsed();

    let s = step(Stage::Segment)?;
    let person = models.segmenter.segment(&crop)?;
    t.segment = s.elapsed();

    let s = step(Stage::Composite)?;
    let out = composite::studio(&crop, &inside, &person, &regions, &req.style)?;
    t.composite = s.elapsed();

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
