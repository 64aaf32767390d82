//! Face detection: BlazeFace on the whole (letterboxed) photo, anchors decoded, weighted NMS,
//! boxes and keypoints mapped back to the upright image's pixels.

use serde::Serialize;

/// Names of [`Face::keypoints`], in order. "Right" is the subject's right (the image's left side
/// for a photo facing the camera).
pub const KEYPOINT_NAMES: [&str; 6] = ["right_eye", "left_eye", "nose", "mouth", "right_ear", "left_ear"];

/// An axis-aligned box in pixels: top-left corner and size.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct FaceBox {
    pub x: f32,
    pub y: f32,
    pub w: f32,
    pub h: f32,
}

/// One detected face, in pixels of the upright (orientation-applied) image.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Face {
    /// Detector confidence in [0, 1].
    pub score: f32,
    pub bbox: FaceBox,
    /// See [`KEYPOINT_NAMES`].
    pub keypoints: [[f32; 2]; 6],
}

use candle_core::Device;
use image::RgbImage;

use crate::error::{EngineError, Result};
use crate::imgops::{box_downscale, warp_to_tensor, Affine, Border};
use crate::models::blazeface::{BlazeFace, Config};
use crate::weights::{model_err, var_builder};

impl FaceBox {
    fn area(&self) -> f32 {
        self.w.max(0.0) * self.h.max(0.0)
    }

    /// Intersection over union with `other` (0 when either box is empty or not finite).
    pub fn iou(&self, other: &FaceBox) -> f32 {
        let finite = |b: &FaceBox| b.x.is_finite() && b.y.is_finite() && b.w.is_finite() && b.h.is_finite();
        if !finite(self) || !finite(other) {
            return 0.0;
        }
        let iw = (self.x + self.w).min(other.x + other.w) - self.x.max(other.x);
        let ih = (self.y + self.h).min(other.y + other.h) - self.y.max(other.y);
        if iw <= 0.0 || ih <= 0.0 {
            return 0.0;
        }
        let inter = iw * ih;
        let union = self.area() + other.area() - inter;
        if union > 0.0 {
            inter / union
        } else {
            0.0
        }
    }
}

/// Anchor centres in [0, 1] of the square input, MediaPipe `SsdAnchorsCalculator` with
/// `fixed_anchor_size` (every anchor is 1 x 1, so only centres matter), offsets 0.5, aspect ratio
/// 1 plus the interpolated scale (2 anchors per layer); consecutive layers with the same stride
/// share a feature map. Ordered row, column, anchor: the order of the model's outputs.
pub fn ssd_anchors(cfg: &Config) -> Vec<[f32; 2]> {
    let mut out = Vec::with_capacity(cfg.num_anchors());
    let strides = cfg.anchor_strides;
    let mut layer = 0;
    while layer < strides.len() {
        let stride = strides[layer];
        let mut same = layer;
        while same < strides.len() && strides[same] == stride {
            same += 1;
        }
        let per_cell = 2 * (same - layer);
        let fm = cfg.input_size.div_ceil(stride.max(1));
        for y in 0..fm {
            for x in 0..fm {
                let c = [(x as f32 + 0.5) / fm as f32, (y as f32 + 0.5) / fm as f32];
                out.extend(std::iter::repeat_n(c, per_cell));
            }
        }
        layer = same;
    }
    out
}

/// MediaPipe's "WEIGHTED" non-maximum suppression: take the best remaining detection, gather every
/// remaining detection whose IoU with it exceeds `min_iou` (itself included), and keep one whose box
/// and keypoints are the score-weighted average of that cluster, with the best score. The
/// averaging steadies boxes that several anchors agree on.
pub fn weighted_nms(mut faces: Vec<Face>, min_iou: f32) -> Vec<Face> {
    faces.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut kept = Vec::new();
    let mut rest = faces.into_iter();
    while let Some(best) = rest.next() {
        let (mut cluster, others): (Vec<Face>, Vec<Face>) = rest.partition(|f| best.bbox.iou(&f.bbox) > min_iou);
        rest = others.into_iter();
        if cluster.is_empty() {
            kept.push(best);
            continue;
        }
        cluster.push(best.clone());
        let total: f32 = cluster.iter().map(|f| f.score).sum();
        if total <= 0.0 || !total.is_finite() {
            kept.push(best);
            continue;
        }
        let mut avg =
            Face { score: best.score, bbox: FaceBox { x: 0.0, y: 0.0, w: 0.0, h: 0.0 }, keypoints: [[0.0; 2]; 6] };
        for f in &cluster {
            let k = f.score / total;
            avg.bbox.x += k * f.bbox.x;
            avg.bbox.y += k * f.bbox.y;
            avg.bbox.w += k * f.bbox.w;
            avg.bbox.h += k * f.bbox.h;
            for (a, p) in avg.keypoints.iter_mut().zip(f.keypoints.iter()) {
                a[0] += k * p[0];
                a[1] += k * p[1];
            }
        }
        kept.push(avg);
    }
    kept
}

/// Decodes raw BlazeFace outputs for one image (`regs`: 16 values per anchor, `logits`: one per
/// anchor) into faces with score >= `threshold`, in [0, 1] coordinates of the square input.
/// MediaPipe `TensorsToDetectionsCalculator`: offsets are in input pixels relative to the anchor
/// centre; logits are clipped to +-100 before the sigmoid.
pub fn decode_anchors(
    regs: &[f32],
    logits: &[f32],
    anchors: &[[f32; 2]],
    input_size: usize,
    threshold: f32,
) -> Vec<Face> {
    let scale = 1.0 / input_size as f32;
    let mut out = Vec::new();
    for ((r, &logit), a) in regs.chunks_exact(16).zip(logits).zip(anchors) {
        let score = 1.0 / (1.0 + (-logit.clamp(-100.0, 100.0)).exp());
        // Non-finite regressors can only come from broken weights; such a box is no face.
        if score < threshold || !score.is_finite() || !r.iter().all(|v| v.is_finite()) {
            continue;
        }
        let (cx, cy) = (a[0] + r[0] * scale, a[1] + r[1] * scale);
        let (w, h) = (r[2] * scale, r[3] * scale);
        let mut keypoints = [[0f32; 2]; 6];
        for (k, p) in keypoints.iter_mut().zip(r[4..].chunks_exact(2)) {
            *k = [a[0] + p[0] * scale, a[1] + p[1] * scale];
        }
        out.push(Face { score, bbox: FaceBox { x: cx - w / 2.0, y: cy - h / 2.0, w, h }, keypoints });
    }
    out
}

/// One BlazeFace variant with its anchors.
#[derive(Debug)]
struct Detector {
    net: BlazeFace,
    anchors: Vec<[f32; 2]>,
}

impl Detector {
    fn load(model: &str, cfg: Config, bytes: Vec<u8>, device: &Device) -> Result<Self> {
        let vb = var_builder(model, bytes, device)?;
        let net = BlazeFace::new(&cfg, vb).map_err(model_err(model))?;
        Ok(Self { anchors: ssd_anchors(&cfg), net })
    }

    /// Candidates in image pixels (unclipped), before NMS.
    fn candidates(&self, img: &RgbImage, threshold: f32, device: &Device) -> Result<Vec<Face>> {
        let size = self.net.config().input_size;
        let (w, h) = (img.width() as f32, img.height() as f32);
        let side = w.max(h);
        // Box-average first when the photo is over twice the input size, so the bilinear
        // letterbox warp below never skips pixels (aliasing would cost detections).
        let factor = (img.width().max(img.height()) / (2 * size as u32)).max(1);
        let reduced;
        let src = if factor > 1 {
            reduced = box_downscale(img, factor);
            &reduced
        } else {
            img
        };
        // Letterbox: the photo centred in a `side x side` square, scaled to the input size.
        let (f, s) = (factor as f32, side / size as f32);
        let affine = Affine::scale_translate(s / f, s / f, (w - side) / (2.0 * f), (h - side) / (2.0 * f));
        let x = warp_to_tensor(src, &affine, size, size, (-1.0, 1.0), Border::Zero, device)?;
        let (regs, logits) = self.net.forward(&x)?;
        let regs = regs.flatten_all()?.to_vec1::<f32>()?;
        let logits = logits.flatten_all()?.to_vec1::<f32>()?;
        let mut faces = decode_anchors(&regs, &logits, &self.anchors, size, threshold);
        // [0, 1] of the square -> image pixels.
        let (ox, oy) = ((w - side) / 2.0, (h - side) / 2.0);
        for face in &mut faces {
            let b = &mut face.bbox;
            *b = FaceBox { x: b.x * side + ox, y: b.y * side + oy, w: b.w * side, h: b.h * side };
            for k in &mut face.keypoints {
                *k = [k[0] * side + ox, k[1] * side + oy];
            }
        }
        Ok(faces)
    }
}

/// Finds faces with BlazeFace: the front (selfie-distance) model first, and the back model, made
/// for smaller and several faces, when the front one finds none.
#[derive(Debug)]
pub struct FaceDetector {
    front: Detector,
    back: Option<Detector>,
    threshold: f32,
    device: Device,
}

impl FaceDetector {
    /// Minimum face score of the front model. On the test photos the real faces score 0.79
    /// (cameraman, 3/4 profile) to 0.92, at full, half and 4x size; the best non-face candidates
    /// score 0.37 (coffee), 0.17 (rocket) and up to 0.56 (the cat, half size). 0.65 sits in that
    /// gap with a margin of about 0.1 on both sides (MediaPipe ships 0.75 for this model, which
    /// would be only 0.04 above the cameraman).
    pub const DEFAULT_THRESHOLD: f32 = 0.65;
    /// How much surer (in logit) the back model must be than the front threshold. The back model
    /// is more easily fooled: it scores the cat 0.74-0.79 and the coffee cup 0.63, while small real
    /// faces it alone finds score 0.8-0.94; a margin of 0.9 puts its default bar at 0.82.
    pub const BACK_LOGIT_MARGIN: f32 = 0.9;
    /// IoU above which two detections are one face (MediaPipe's `min_suppression_threshold`).
    pub const NMS_IOU: f32 = 0.3;

    /// `front` / `back`: safetensors bytes of the bundled `blazeface-front-128` and
    /// `blazeface-back-256` models.
    pub fn new(front: Vec<u8>, back: Option<Vec<u8>>, device: &Device) -> Result<Self> {
        let front = Detector::load("blazeface-front-128", Config::front(), front, device)?;
        let back = back.map(|b| Detector::load("blazeface-back-256", Config::back(), b, device)).transpose()?;
        Ok(Self { front, back, threshold: Self::DEFAULT_THRESHOLD, device: device.clone() })
    }

    /// Sets the minimum face score (clamped to [0, 1]; the back model's bar moves with it).
    pub fn with_threshold(mut self, score: f32) -> Self {
        self.threshold = if score.is_nan() { Self::DEFAULT_THRESHOLD } else { score.clamp(0.0, 1.0) };
        self
    }

    pub fn threshold(&self) -> f32 {
        self.threshold
    }

    /// The back model's minimum score: the front threshold raised by [`Self::BACK_LOGIT_MARGIN`].
    pub fn back_threshold(&self) -> f32 {
        let t = self.threshold.clamp(1e-6, 1.0 - 1e-6);
        let logit = (t / (1.0 - t)).ln() + Self::BACK_LOGIT_MARGIN;
        1.0 / (1.0 + (-logit).exp())
    }

    /// All faces, most prominent first (prominence: size, score, closeness to centre), in pixels of
    /// `img`, boxes and keypoints clipped to the image.
    pub fn detect(&self, img: &RgbImage) -> Result<Vec<Face>> {
        if img.width() == 0 || img.height() == 0 {
            return Err(EngineError::TooSmall { width: img.width(), height: img.height(), min: 1 });
        }
        let mut candidates = self.front.candidates(img, self.threshold, &self.device)?;
        if candidates.is_empty() {
            if let Some(back) = &self.back {
                candidates.extend(back.candidates(img, self.back_threshold(), &self.device)?);
            }
        }
        let (w, h) = (img.width() as f32, img.height() as f32);
        let mut faces: Vec<Face> = weighted_nms(candidates, Self::NMS_IOU).into_iter().map(|f| clip(f, w, h)).collect();
        faces.retain(|f| f.bbox.w > 0.0 && f.bbox.h > 0.0);
        faces.sort_by(|a, b| prominence(b, w, h).total_cmp(&prominence(a, w, h)));
        Ok(faces)
    }
}

fn clip(mut f: Face, w: f32, h: f32) -> Face {
    let (x0, y0) = (f.bbox.x.clamp(0.0, w), f.bbox.y.clamp(0.0, h));
    let (x1, y1) = ((f.bbox.x + f.bbox.w).clamp(0.0, w), (f.bbox.y + f.bbox.h).clamp(0.0, h));
    f.bbox = FaceBox { x: x0, y: y0, w: x1 - x0, h: y1 - y0 };
    for k in &mut f.keypoints {
        *k = [k[0].clamp(0.0, w), k[1].clamp(0.0, h)];
    }
    f
}

/// Size relative to the photo, times score, times a centre bonus (1 at the centre, 0.5 in a corner):
/// the subject of a portrait is big, sure and central.
fn prominence(f: &Face, w: f32, h: f32) -> f32 {
    let size = f.bbox.area().sqrt() / w.min(h).max(1.0);
    let (cx, cy) = (f.bbox.x + f.bbox.w / 2.0, f.bbox.y + f.bbox.h / 2.0);
    let (dx, dy) = ((cx - w / 2.0) / (w / 2.0).max(1.0), (cy - h / 2.0) / (h / 2.0).max(1.0));
    let d = ((dx * dx + dy * dy).sqrt() / std::f32::consts::SQRT_2).min(1.0);
    size * f.score * (1.0 - 0.5 * d)
}
