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
