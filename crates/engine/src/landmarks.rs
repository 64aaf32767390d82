//! Face landmarks: the 468-point MediaPipe face mesh run on a rotated, square crop around a detected
//! face, mapped back to image pixels, with the named regions (eyes, brows, lips, face oval) and the
//! 5-point set used for alignment.
//!
//! The crop follows MediaPipe's face-landmark front end: the detection box's centre, rotated so the
//! eyes are level (the right-eye -> left-eye keypoint vector), a square of 1.5 x the box's longer
//! side. A second pass re-crops from the first pass's own landmarks, which fixes the crop on tilted
//! or turned faces where the detector's six keypoints are coarse.

use candle_core::Device;
use image::RgbImage;

use crate::error::{EngineError, Result};
use crate::faces::Face;
use crate::imgops::{warp_to_tensor, Affine, Border};
use crate::models::facemesh::{Config, FaceMeshNet};
use crate::weights::{model_err, var_builder};

const MODEL: &str = "face-mesh-468";

/// How much larger than the face box (or the landmarks' extent) the square crop is.
const ROI_SCALE: f32 = 1.5;

/// Below this presence probability the first pass found no face, so there is nothing to refine.
const REFINE_MIN_PRESENCE: f32 = 0.5;

// Landmark indices of MediaPipe's canonical face mesh topology (the `FACEMESH_*` connection sets of
// mediapipe/python/solutions/face_mesh_connections.py, Apache-2.0), each written as one closed
// polygon in drawing order. "Right" is the subject's right (the image's left side).

/// Face silhouette, clockwise from the top of the forehead (10) through the chin (152).
pub const FACE_OVAL: [usize; 36] = [
    10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152, 148, 176, 149, 150,
    136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109,
];
/// Outer lip contour: lower lip from the right corner (61) to the left corner (291), upper lip back.
pub const LIPS_OUTER: [usize; 20] =
    [61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39, 40, 185];
/// Right eye: lower lid from the outer corner (33) to the inner corner (133), upper lid back.
pub const RIGHT_EYE: [usize; 16] = [33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246];
/// Left eye: lower lid from the outer corner (263) to the inner corner (362), upper lid back.
pub const LEFT_EYE: [usize; 16] = [263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466];
/// Right brow: upper edge outward-in, then lower edge back.
pub const RIGHT_BROW: [usize; 10] = [70, 63, 105, 66, 107, 55, 65, 52, 53, 46];
/// Left brow: upper edge outward-in, then lower edge back.
pub const LEFT_BROW: [usize; 10] = [300, 293, 334, 296, 336, 285, 295, 282, 283, 276];
pub const NOSE_TIP: usize = 1;
pub const MOUTH_RIGHT: usize = 61;
pub const MOUTH_LEFT: usize = 291;
pub const CHIN: usize = 152;
pub const FOREHEAD_TOP: usize = 10;
/// Outer eye corners, used to level the refinement crop.
const RIGHT_EYE_OUTER: usize = 33;
const LEFT_EYE_OUTER: usize = 263;

/// The face mesh of one face, in pixels of the image it was computed on.
#[derive(Debug, Clone, PartialEq)]
pub struct FaceLandmarks {
    /// 468 points (x, y, z); z is relative depth in the same scale as x (smaller is nearer the camera).
    /// A mesh built by hand with fewer points reads the missing ones as NaN.
    pub points: Vec<[f32; 3]>,
    /// Probability in [0, 1] that the crop holds a face.
    pub presence: f32,
}

impl FaceLandmarks {
    fn point(&self, i: usize) -> [f32; 2] {
        self.points.get(i).map_or([f32::NAN, f32::NAN], |p| [p[0], p[1]])
    }

    fn polygon(&self, indices: &[usize]) -> Vec<[f32; 2]> {
        indices.iter().map(|&i| self.point(i)).collect()
    }

    fn centroid(&self, indices: &[usize]) -> [f32; 2] {
        let n = indices.len().max(1) as f32;
        let s = indices.iter().fold([0f32; 2], |acc, &i| {
            let p = self.point(i);
            [acc[0] + p[0], acc[1] + p[1]]
        });
        [s[0] / n, s[1] / n]
    }

    /// Subject's right eye centre, left eye centre, nose tip, right mouth corner, left mouth corner
    /// (the order of the ArcFace / FFHQ 5-point templates; subject's right = image left).
    pub fn five_point(&self) -> [[f32; 2]; 5] {
        let (r, l) = self.eye_centers();
        [r, l, self.point(NOSE_TIP), self.point(MOUTH_RIGHT), self.point(MOUTH_LEFT)]
    }

    /// (right, left) eye centres: the mean of each eye's contour.
    pub fn eye_centers(&self) -> ([f32; 2], [f32; 2]) {
        (self.centroid(&RIGHT_EYE), self.centroid(&LEFT_EYE))
    }

    /// Face silhouette, a closed polygon in order.
    pub fn face_oval(&self) -> Vec<[f32; 2]> {
        self.polygon(&FACE_OVAL)
    }

    /// Outer lip contour, a closed polygon in order.
    pub fn lips(&self) -> Vec<[f32; 2]> {
        self.polygon(&LIPS_OUTER)
    }

    pub fn right_eye(&self) -> Vec<[f32; 2]> {
        self.polygon(&RIGHT_EYE)
    }

    pub fn left_eye(&self) -> Vec<[f32; 2]> {
        self.polygon(&LEFT_EYE)
    }

    pub fn right_brow(&self) -> Vec<[f32; 2]> {
        self.polygon(&RIGHT_BROW)
    }

    pub fn left_brow(&self) -> Vec<[f32; 2]> {
        self.polygon(&LEFT_BROW)
    }

    /// Bottom of the face oval.
    pub fn chin(&self) -> [f32; 2] {
        self.point(CHIN)
    }

    /// Top of the face oval (the hairline's middle, roughly).
    pub fn forehead_top(&self) -> [f32; 2] {
        self.point(FOREHEAD_TOP)
    }
}

/// A rotated square crop: centre, side and rotation (radians; the crop's x axis points along
/// `(cos, sin)` in the image).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Roi {
    cx: f32,
    cy: f32,
    size: f32,
    angle: f32,
}

impl Roi {
    fn is_usable(&self) -> bool {
        self.cx.is_finite() && self.cy.is_finite() && self.angle.is_finite() && self.size.is_finite() && self.size > 1.0
    }

    /// Maps crop pixels (`side` x `side`) to image pixels.
    fn image_from_crop(&self, side: usize) -> Affine {
        let s = self.size / side as f32;
        let half = side as f32 / 2.0;
        let (sin, cos) = self.angle.sin_cos();
        // image = centre + s * R(angle) * (crop - half)
        Affine::similarity(
            s,
            self.angle,
            self.cx - s * (cos * half - sin * half),
            self.cy - s * (sin * half + cos * half),
        )
    }

    /// From a detection: box centre, eyes level, 1.5 x the longer side.
    fn from_face(face: &Face) -> Self {
        let [re, le] = [face.keypoints[0], face.keypoints[1]];
        Roi {
            cx: face.bbox.x + face.bbox.w / 2.0,
            cy: face.bbox.y + face.bbox.h / 2.0,
            size: face.bbox.w.max(face.bbox.h) * ROI_SCALE,
            angle: (le[1] - re[1]).atan2(le[0] - re[0]),
        }
    }

    /// From a mesh: outer eye corners level, the landmarks' extent measured in that rotated frame
    /// (tighter than an axis-aligned box on a tilted face), 1.5 x its longer side.
    fn from_landmarks(lm: &FaceLandmarks) -> Self {
        let (re, le) = (lm.point(RIGHT_EYE_OUTER), lm.point(LEFT_EYE_OUTER));
        let angle = (le[1] - re[1]).atan2(le[0] - re[0]);
        let (sin, cos) = angle.sin_cos();
        let (mut u0, mut u1, mut v0, mut v1) = (f32::MAX, f32::MIN, f32::MAX, f32::MIN);
        for p in &lm.points {
            // Coordinates along the rotated axes.
            let u = cos * p[0] + sin * p[1];
            let v = -sin * p[0] + cos * p[1];
            u0 = u0.min(u);
            u1 = u1.max(u);
            v0 = v0.min(v);
            v1 = v1.max(v);
        }
        let (uc, vc) = ((u0 + u1) / 2.0, (v0 + v1) / 2.0);
        Roi { cx: cos * uc - sin * vc, cy: sin * uc + cos * vc, size: (u1 - u0).max(v1 - v0) * ROI_SCALE, angle }
    }
}

/// The face mesh model, loaded once and run per face.
pub struct FaceMesh {
    net: FaceMeshNet,
    device: Device,
}

impl FaceMesh {
    /// `weights`: the bytes of `face_mesh_468.safetensors`.
    pub fn new(weights: Vec<u8>, device: &Device) -> Result<Self> {
        let vb = var_builder(MODEL, weights, device)?;
        let net = FaceMeshNet::new(&Config::face_mesh_468(), vb).map_err(model_err(MODEL))?;
        Ok(Self { net, device: device.clone() })
    }

    /// Landmarks of the face found by the detector (`face`: box and 6 keypoints in `img` pixels).
    pub fn landmarks(&self, img: &RgbImage, face: &Face) -> Result<FaceLandmarks> {
        if img.width() == 0 || img.height() == 0 {
            return Err(EngineError::TooSmall { width: img.width(), height: img.height(), min: 1 });
        }
        let roi = Roi::from_face(face);
        if !roi.is_usable() {
            return Err(EngineError::InvalidOption(format!(
                "the face box {:?} with eye keypoints {:?} / {:?} is empty or not finite; pass a face from the detector",
                face.bbox, face.keypoints[0], face.keypoints[1]
            )));
        }
        let first = self.run(img, &roi)?;
        if first.presence < REFINE_MIN_PRESENCE {
            return Ok(first);
        }
        let refined = Roi::from_landmarks(&first);
        if !refined.is_usable() {
            return Ok(first);
        }
        self.run(img, &refined)
    }

    /// One pass of the network on a crop, mapped back to image pixels.
    fn run(&self, img: &RgbImage, roi: &Roi) -> Result<FaceLandmarks> {
        let side = self.net.config().input_size;
        let image_from_crop = roi.image_from_crop(side);
        let input = warp_to_tensor(img, &image_from_crop, side, side, (0.0, 1.0), Border::Replicate, &self.device)?;
        let (points, logit) = self.net.forward(&input)?;
        let raw = points.flatten_all()?.to_vec1::<f32>()?;
        let logit = logit.flatten_all()?.to_vec1::<f32>()?.first().copied().unwrap_or(f32::NEG_INFINITY);
        let z_scale = roi.size / side as f32;
        let points = raw
            .chunks_exact(3)
            .map(|p| {
                let [x, y] = image_from_crop.apply([p[0], p[1]]);
                [x, y, p[2] * z_scale]
            })
            .collect();
        Ok(FaceLandmarks { points, presence: 1.0 / (1.0 + (-logit).exp()) })
    }
}
