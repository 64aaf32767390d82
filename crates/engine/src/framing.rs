//! Framing presets: where the head goes in the output, computed from face landmarks.
//!
//! Every preset levels the eyes (removes head roll), centres the head horizontally and fixes the
//! head's height as a fraction of the output height and its vertical position (headroom above the
//! crown, or the eye line for the presets whose rules are stated that way).
//!
//! The passport presets follow the published photo rules:
//! - EU (ICAO 9303 as used by Schengen states): 35x45 mm, chin to crown 32-36 mm (71-80% of the
//!   height); we aim for 34 mm with about 4 mm above the crown.
//! - US (travel.state.gov): 2x2 in, head 1 to 1 3/8 in (50-69%), eyes 1 1/8 to 1 3/8 in from the
//!   bottom; we aim for a 1 3/16 in head with the eyes 1 1/4 in from the bottom.
//!
//! The face mesh's oval stops at the upper forehead, below the hair, so the crown (top of the
//! head, hair included as the passport rules measure it) is estimated from the eye-to-chin
//! distance and the forehead point together.

use std::fmt;
use std::str::FromStr;

use crate::error::{EngineError, Result};
use crate::imgops::Affine;

/// A framing preset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Preset {
    /// 1:1 head and shoulders (profile pictures).
    Square,
    /// 4:5 head and shoulders.
    Portrait,
    /// 35x45 mm passport photo (EU / ICAO).
    PassportEu,
    /// 2x2 in passport photo (United States).
    UsPassport,
    /// 1:1 (team pages commonly show 600x600) with a fixed head size and eye line, so a team
    /// page's portraits line up.
    Team,
}

impl Preset {
    pub const ALL: [Preset; 5] = [Preset::Square, Preset::Portrait, Preset::PassportEu, Preset::UsPassport, Preset::Team];

    pub fn name(&self) -> &'static str {
        match self {
            Preset::Square => "square",
            Preset::Portrait => "portrait",
            Preset::PassportEu => "passport-eu",
            Preset::UsPassport => "us-passport",
            Preset::Team => "team",
        }
    }

    /// Output aspect ratio as (width, height).
    pub fn aspect(&self) -> (u32, u32) {
        match self {
            Preset::Square | Preset::UsPassport | Preset::Team => (1, 1),
            Preset::Portrait => (4, 5),
            Preset::PassportEu => (35, 45),
        }
    }

    fn spec(&self) -> Spec {
        match self {
            Preset::Square => Spec { head: 0.48, anchor: Anchor::Crown(0.12) },
            Preset::Portrait => Spec { head: 0.40, anchor: Anchor::Crown(0.11) },
            Preset::PassportEu => Spec { head: 34.0 / 45.0, anchor: Anchor::Crown(4.0 / 45.0) },
            // Eyes 1.25 in from the bottom of 2 in = 0.375 from the top.
            Preset::UsPassport => Spec { head: 1.1875 / 2.0, anchor: Anchor::Eyes(0.375) },
            Preset::Team => Spec { head: 0.40, anchor: Anchor::Eyes(0.36) },
        }
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Preset {
    type Err = EngineError;

    fn from_str(s: &str) -> Result<Self> {
        let key = s.trim().to_ascii_lowercase().replace('_', "-");
        Preset::ALL.into_iter().find(|p| p.name() == key).ok_or_else(|| {
            let names: Vec<&str> = Preset::ALL.iter().map(|p| p.name()).collect();
            EngineError::InvalidOption(format!("unknown framing preset '{s}'; use one of {}", names.join(", ")))
        })
    }
}

/// Vertical placement of the head in the output, as a fraction of the output height from the top.
#[derive(Debug, Clone, Copy)]
enum Anchor {
    Crown(f32),
    Eyes(f32),
}

#[derive(Debug, Clone, Copy)]
struct Spec {
    /// Chin-to-crown height / output height.
    head: f32,
    anchor: Anchor,
}

/// The face landmarks framing needs, in source pixel coordinates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FaceGeometry {
    /// The subject's right eye centre (on the image's left).
    pub right_eye: [f32; 2],
    pub left_eye: [f32; 2],
    pub mouth: [f32; 2],
    /// Bottom of the face oval.
    pub chin: [f32; 2],
    /// Top of the face oval (upper forehead, below the hair).
    pub forehead_top: [f32; 2],
}

/// A computed crop: warp the source with `src_from_dst` into `width x height`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Framing {
    pub src_from_dst: Affine,
    pub width: u32,
    pub height: u32,
    /// The head roll that was removed, in degrees (positive: the subject's left eye was lower).
    pub roll_degrees: f32,
    /// Fraction of output pixels whose source lies outside the photo (to be filled).
    pub outside_fraction: f32,
}

/// Crown-to-eye distance as a multiple of eye-to-chin (adult head proportions, hair included).
const CROWN_OVER_CHIN: f32 = 0.95;
/// Crown above the forehead point, as a multiple of eye-to-chin.
const CROWN_OVER_FOREHEAD: f32 = 0.40;
/// The smallest output short side worth producing, and the smallest face crop (in source pixels)
/// worth framing: the same 64 px the decoder's default limits ask of a whole photo. A face whose
/// crop is smaller than this is a distant face in a crowd, not a headshot.
const MIN_OUTPUT_SIDE: u32 = 64;

/// Upright-frame measurements of a face (rotated so the eyes are level).
#[derive(Debug, Clone, Copy)]
struct Upright {
    theta: f32,
    centre_x: f32,
    eye_y: f32,
    chin_y: f32,
    crown_y: f32,
}

fn rot(theta: f32, p: [f32; 2]) -> [f32; 2] {
    let (s, c) = theta.sin_cos();
    [c * p[0] - s * p[1], s * p[0] + c * p[1]]
}

fn upright(face: &FaceGeometry) -> Result<Upright> {
    let pts = [face.right_eye, face.left_eye, face.mouth, face.chin, face.forehead_top];
    if pts.iter().flatten().any(|v| !v.is_finite()) {
        return Err(EngineError::NoFace);
    }
    let (dx, dy) = (face.left_eye[0] - face.right_eye[0], face.left_eye[1] - face.right_eye[1]);
    if dx.hypot(dy) < 1.0 {
        return Err(EngineError::NoFace);
    }
    let theta = dy.atan2(dx);
    let u = |p: [f32; 2]| rot(-theta, p);
    let (re, le, mouth, chin, fh) = (u(face.right_eye), u(face.left_eye), u(face.mouth), u(face.chin), u(face.forehead_top));
    let eye_mid = [(re[0] + le[0]) * 0.5, (re[1] + le[1]) * 0.5];
    let d = chin[1] - eye_mid[1];
    // The chin must be below the eyes by a sensible amount (an upside-down or collapsed mesh is not a face).
    if d < 1.0 || d < 0.3 * (le[0] - re[0]) {
        return Err(EngineError::NoFace);
    }
    let from_chin = eye_mid[1] - CROWN_OVER_CHIN * d;
    // The forehead point is trusted only within plausible bounds of the eye line.
    let fh_y = fh[1].clamp(eye_mid[1] - 0.9 * d, eye_mid[1] - 0.3 * d);
    let from_forehead = fh_y - CROWN_OVER_FOREHEAD * d;
    let crown_y = 0.5 * (from_chin + from_forehead);
    let centre_x = 0.5 * eye_mid[0] + 0.25 * mouth[0] + 0.25 * chin[0];
    Ok(Upright { theta, centre_x, eye_y: eye_mid[1], chin_y: chin[1], crown_y })
}

/// The estimated crown (top of the head, hair included) in source pixel coordinates.
pub fn estimate_crown(face: &FaceGeometry) -> Result<[f32; 2]> {
    let up = upright(face)?;
    Ok(rot(up.theta, [up.centre_x, up.crown_y]))
}

/// Frames `face` in an `img_w x img_h` photo for `preset`.
///
/// The output's short side is the crop's own resolution in source pixels, capped at
/// `max_short_side` (no upscaling here; the caller upscales small crops). A face whose crop
/// spans fewer than 64 source pixels is refused with [`EngineError::TooSmall`] (reporting the
/// crop's size), as is a `max_short_side` below 64 with [`EngineError::InvalidOption`].
pub fn frame(face: &FaceGeometry, img_w: u32, img_h: u32, preset: Preset, max_short_side: u32) -> Result<Framing> {
    if max_short_side < MIN_OUTPUT_SIDE {
        return Err(EngineError::InvalidOption(format!(
            "output size {max_short_side} is too small; use at least {MIN_OUTPUT_SIDE} pixels"
        )));
    }
    if img_w == 0 || img_h == 0 {
        return Err(EngineError::TooSmall { width: img_w, height: img_h, min: MIN_OUTPUT_SIDE });
    }
    let up = upright(face)?;
    let spec = preset.spec();
    let (aw, ah) = preset.aspect();
    let aspect = aw as f32 / ah as f32;
    let head_src = up.chin_y - up.crown_y;
    // Crop size in source pixels.
    let crop_h = head_src / spec.head;
    let crop_w = crop_h * aspect;
    let short_src = crop_w.min(crop_h);
    if !(short_src >= MIN_OUTPUT_SIDE as f32) {
        return Err(EngineError::TooSmall { width: crop_w as u32, height: crop_h as u32, min: MIN_OUTPUT_SIDE });
    }
    let out_short = (short_src.floor() as u32).min(max_short_side);
    let (width, height) = if aw <= ah {
        (out_short, ((out_short as f32) * ah as f32 / aw as f32).round() as u32)
    } else {
        (((out_short as f32) * aspect).round() as u32, out_short)
    };
    // Source pixels per output pixel, exact in the vertical so the head fraction is exact.
    let s = head_src / (spec.head * height as f32);
    let top = match spec.anchor {
        Anchor::Crown(f) => up.crown_y - f * height as f32 * s,
        Anchor::Eyes(f) => up.eye_y - f * height as f32 * s,
    };
    let left = up.centre_x - 0.5 * width as f32 * s;
    let t = rot(up.theta, [left, top]);
    let src_from_dst = Affine::similarity(s, up.theta, t[0], t[1]);
    let outside_fraction = outside_fraction(&src_from_dst, width, height, img_w, img_h);
    Ok(Framing { src_from_dst, width, height, roll_degrees: up.theta.to_degrees(), outside_fraction })
}

/// Fraction of output pixels (sampled on a 64x64 grid) whose source point is outside the photo.
fn outside_fraction(m: &Affine, width: u32, height: u32, img_w: u32, img_h: u32) -> f32 {
    const N: u32 = 64;
    let mut outside = 0u32;
    for j in 0..N {
        for i in 0..N {
            let x = (i as f32 + 0.5) / N as f32 * width as f32;
            let y = (j as f32 + 0.5) / N as f32 * height as f32;
            let p = m.apply([x, y]);
            if p[0] < 0.0 || p[1] < 0.0 || p[0] >= img_w as f32 || p[1] >= img_h as f32 {
                outside += 1;
            }
        }
    }
    outside as f32 / (N * N) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn face() -> FaceGeometry {
        FaceGeometry {
            right_eye: [460.0, 500.0],
            left_eye: [540.0, 500.0],
            mouth: [500.0, 580.0],
            chin: [500.0, 630.0],
            forehead_top: [500.0, 420.0],
        }
    }

    #[test]
    fn names_round_trip() {
        for p in Preset::ALL {
            assert_eq!(p.to_string().parse::<Preset>().ok(), Some(p));
        }
        assert!(matches!("wide".parse::<Preset>(), Err(EngineError::InvalidOption(_))));
    }

    #[test]
    fn degenerate_faces_are_refused() {
        let mut f = face();
        f.left_eye = f.right_eye;
        assert!(matches!(frame(&f, 1000, 1000, Preset::Square, 1024), Err(EngineError::NoFace)));
        let mut f = face();
        f.chin = [500.0, 400.0];
        assert!(matches!(frame(&f, 1000, 1000, Preset::Square, 1024), Err(EngineError::NoFace)));
        let mut f = face();
        f.mouth[0] = f32::NAN;
        assert!(matches!(frame(&f, 1000, 1000, Preset::Square, 1024), Err(EngineError::NoFace)));
    }

    #[test]
    fn never_upscales() {
        let fr = frame(&face(), 1000, 1000, Preset::Portrait, 4096).expect("frame");
        // Head ~ 250 px in the source, 40% of the height: ~625 px tall crop.
        assert!(fr.height < 700 && (fr.height as f32 / fr.width as f32 - 1.25).abs() < 0.01, "{}x{}", fr.width, fr.height);
        assert!((fr.src_from_dst.a - 1.0).abs() < 0.01);
    }
}
