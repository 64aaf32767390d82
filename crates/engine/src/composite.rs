//! The studio look: the person cut out with a clean matte and placed on a new backdrop, gently
//! relit toward it, with a subtle skin retouch that keeps the real face.
//!
//! No model runs here; everything is linear-time image filtering:
//! - matte refinement: a colour guided filter (He, Sun and Tang, "Guided Image Filtering", TPAMI
//!   2013), computed at reduced resolution and applied at full resolution (He and Sun, "Fast Guided
//!   Filter", 2015), which pulls the segmentation's soft edge onto the photo's real edges and keeps
//!   fractional alpha in hair;
//! - alpha re-estimation and foreground colours in the soft band: the local person and background
//!   colours are confidence-weighted means (in the spirit of "blur fusion", Forte and Pitié,
//!   "Approximate Fast Foreground Colour Estimation", ICIP 2021, but weighting by a^4 and (1-a)^4
//!   so a mis-estimated band does not feed itself); alpha is re-solved from the compositing
//!   equation where those colours differ, and the old background's local colour is subtracted
//!   from the foreground, so it does not survive as a halo;
//! - relight: colour-temperature and luminance matching toward the backdrop, a soft key light on
//!   the face, a light wrap at the edges;
//! - retouch: edge-preserving smoothing (a luminance-guided filter) of mid-frequency skin detail
//!   inside the face oval minus eyes, brows and lips, fine texture kept.
//!
//! Images are processed as interleaved f32 in [0, 1]; row-parallel with rayon, and every
//! reduction is summed in a fixed order so the output is deterministic.

use image::{Luma, RgbImage};
use rayon::prelude::*;

use crate::error::{EngineError, Result};
use crate::imgops::Mask;

/// What goes behind the person.
#[derive(Debug, Clone, PartialEq)]
pub enum Backdrop {
    Color([u8; 3]),
    /// A vertical gradient from `top` to `bottom`.
    Gradient { top: [u8; 3], bottom: [u8; 3] },
    /// A heavily blurred copy of the photo's own background.
    Blur,
    /// An image, scaled to cover the output and centred.
    Image(RgbImage),
}

/// The default studio grey gradient: lighter behind the head, darker toward the bottom.
const STUDIO_TOP: [u8; 3] = [0xA4, 0xA7, 0xAB];
const STUDIO_BOTTOM: [u8; 3] = [0x5C, 0x5F, 0x64];

const NAMED: [(&str, [u8; 3]); 8] = [
    ("white", [0xFF, 0xFF, 0xFF]),
    ("lightgrey", [0xD8, 0xD9, 0xDB]),
    ("grey", [0x8E, 0x90, 0x93]),
    ("darkgrey", [0x4B, 0x4D, 0x50]),
    ("charcoal", [0x2D, 0x2F, 0x33]),
    ("black", [0x00, 0x00, 0x00]),
    ("navy", [0x1E, 0x2A, 0x45]),
    ("beige", [0xD9, 0xCC, 0xB8]),
];

fn parse_color(spec: &str) -> Result<[u8; 3]> {
    let s = spec.trim();
    if let Some(hex) = s.strip_prefix('#') {
        let valid = hex.len() == 6 && hex.bytes().all(|b| b.is_ascii_hexdigit());
        let channel = |i: usize| hex.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok());
        if let (true, Some(r), Some(g), Some(b)) = (valid, channel(0), channel(2), channel(4)) {
            return Ok([r, g, b]);
        }
        return Err(EngineError::InvalidOption(format!("'{s}' is not a colour; write it as #RRGGBB, e.g. #808080")));
    }
    let key: String = s.to_ascii_lowercase().replace("gray", "grey").chars().filter(|c| c.is_ascii_alphanumeric()).collect();
    NAMED.iter().find(|(n, _)| *n == key).map(|(_, c)| *c).ok_or_else(|| {
        EngineError::InvalidOption(format!(
            "unknown backdrop colour '{s}'; use #RRGGBB or one of white, light-grey, grey, dark-grey, charcoal, black, navy, beige"
        ))
    })
}

impl Backdrop {
    /// Parses a backdrop spec: a colour (`#RRGGBB` or a name such as `white`, `light-grey`,
    /// `charcoal`, `navy`), `gradient` (studio grey) or `gradient:#RRGGBB:#RRGGBB` (top, bottom),
    /// or `blur`. `image:NAME` specs name a file the caller reads (see [`Backdrop::image_name`]).
    pub fn parse(spec: &str) -> Result<Backdrop> {
        let s = spec.trim();
        let lower = s.to_ascii_lowercase();
        if lower == "blur" {
            return Ok(Backdrop::Blur);
        }
        if lower == "gradient" {
            return Ok(Backdrop::Gradient { top: STUDIO_TOP, bottom: STUDIO_BOTTOM });
        }
        if let Some(rest) = lower.strip_prefix("gradient:") {
            let mut parts = rest.split(':');
            return match (parts.next(), parts.next(), parts.next()) {
                (Some(t), Some(b), None) => Ok(Backdrop::Gradient { top: parse_color(t)?, bottom: parse_color(b)? }),
                _ => Err(EngineError::InvalidOption(format!(
                    "'{s}' is not a gradient; write gradient:#RRGGBB:#RRGGBB (top, bottom)"
                ))),
            };
        }
        if Backdrop::image_name(s).is_some() {
            return Err(EngineError::InvalidOption(format!(
                "'{s}' names an image backdrop; load the image and pass Backdrop::Image"
            )));
        }
        Ok(Backdrop::Color(parse_color(s)?))
    }

    /// For `image:NAME` specs, the image's name (e.g. a file in `assets/backdrops/`).
    pub fn image_name(spec: &str) -> Option<&str> {
        let s = spec.trim();
        let head = s.get(..6)?;
        if !head.eq_ignore_ascii_case("image:") {
            return None;
        }
        s.get(6..).map(str::trim).filter(|n| !n.is_empty())
    }
}

/// The look's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct StudioStyle {
    pub backdrop: Backdrop,
    /// Relight and harmonisation strength in [0, 1].
    pub relight: f32,
    /// Skin retouch strength in [0, 1].
    pub retouch: f32,
}

impl Default for StudioStyle {
    fn default() -> Self {
        StudioStyle { backdrop: Backdrop::Gradient { top: STUDIO_TOP, bottom: STUDIO_BOTTOM }, relight: 0.5, retouch: 0.35 }
    }
}

/// Face outlines from the face mesh, in crop pixel coordinates.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FaceRegions {
    pub face_oval: Vec<[f32; 2]>,
    pub right_eye: Vec<[f32; 2]>,
    pub left_eye: Vec<[f32; 2]>,
    pub lips: Vec<[f32; 2]>,
    pub right_brow: Vec<[f32; 2]>,
    pub left_brow: Vec<[f32; 2]>,
}

// ---------------------------------------------------------------------------------------------
// Linear-time filters on interleaved f32 buffers.

/// Horizontal bands the vertical pass is split into; fixed so results do not depend on threads.
const BANDS: usize = 8;

/// Mean over a (2r+1) x (2r+1) window with clamp-to-edge borders, in place; `c` interleaved channels.
///
/// Running sums in f32 (two passes, each through a scratch buffer so no pass copies its input);
/// the order of operations is fixed, so results do not depend on the thread count.
fn box_blur(data: &mut [f32], w: usize, h: usize, c: usize, r: usize) {
    if r == 0 || w == 0 || h == 0 || c == 0 || data.len() != w * h * c {
        return;
    }
    let norm = 1.0 / (2 * r + 1) as f32;
    let stride = w * c;
    let mut tmp = vec![0f32; data.len()];
    // Horizontal pass: data -> tmp, one row at a time, all channels together.
    tmp.par_chunks_mut(stride).zip(data.par_chunks(stride)).for_each(|(out, row)| {
        let mut sum = vec![0f32; c];
        for (k, s) in sum.iter_mut().enumerate() {
            *s = row[k] * (r + 1) as f32;
            for x in 1..=r {
                *s += row[x.min(w - 1) * c + k];
            }
        }
        for (x, o) in out.chunks_exact_mut(c).enumerate() {
            let (ai, si) = ((x + r + 1).min(w - 1) * c, x.saturating_sub(r) * c);
            for (k, (ov, s)) in o.iter_mut().zip(sum.iter_mut()).enumerate() {
                *ov = *s * norm;
                *s += row[ai + k] - row[si + k];
            }
        }
    });
    // Vertical pass: tmp -> data, in fixed horizontal bands, each keeping running column sums.
    let band_rows = h.div_ceil(BANDS).max(1);
    let row_at = |y: isize| {
        let y = y.clamp(0, h as isize - 1) as usize;
        &tmp[y * stride..(y + 1) * stride]
    };
    data.par_chunks_mut(band_rows * stride).enumerate().for_each(|(band, out)| {
        let y0 = (band * band_rows) as isize;
        let ri = r as isize;
        let mut sums = vec![0f32; stride];
        for y in (y0 - ri)..=(y0 + ri) {
            for (s, v) in sums.iter_mut().zip(row_at(y)) {
                *s += *v;
            }
        }
        for (dy, orow) in out.chunks_mut(stride).enumerate() {
            let y = y0 + dy as isize;
            let (add, sub) = (row_at(y + ri + 1), row_at(y - ri));
            for (((o, s), a), b) in orow.iter_mut().zip(sums.iter_mut()).zip(add).zip(sub) {
                *o = *s * norm;
                *s += *a - *b;
            }
        }
    });
}

/// Three box passes: close to a Gaussian with sigma ~ r.
fn soft_blur(data: &mut [f32], w: usize, h: usize, c: usize, r: usize) {
    let rb = ((r as f32) * 0.6).round().max(1.0) as usize;
    for _ in 0..3 {
        box_blur(data, w, h, c, rb);
    }
}

/// Block-average downsample by `f` (edge blocks are partial).
fn downsample(data: &[f32], w: usize, h: usize, c: usize, f: usize) -> (Vec<f32>, usize, usize) {
    let (lw, lh) = (w.div_ceil(f), h.div_ceil(f));
    let mut out = vec![0f32; lw * lh * c];
    out.par_chunks_mut(lw * c).enumerate().for_each(|(ly, orow)| {
        let ys = ly * f..((ly + 1) * f).min(h);
        for lx in 0..lw {
            let xs = lx * f..((lx + 1) * f).min(w);
            let n = (ys.len() * xs.len()) as f32;
            for k in 0..c {
                let mut s = 0f32;
                for y in ys.clone() {
                    for x in xs.clone() {
                        s += data[(y * w + x) * c + k];
                    }
                }
                orow[lx * c + k] = s / n;
            }
        }
    });
    (out, lw, lh)
}

/// Bilinear taps (low index, next index, weight of the next) from each of `n` full-resolution
/// positions onto a grid of `n_low` cells of `f` pixels each; computed once per axis so per-pixel
/// sampling is a few multiply-adds.
type Taps = Vec<(usize, usize, f32)>;

fn taps(n: usize, n_low: usize, f: usize) -> Taps {
    let last = n_low.saturating_sub(1);
    (0..n)
        .map(|x| {
            let fx = ((x as f32 + 0.5) / f as f32 - 0.5).clamp(0.0, last as f32);
            let x0 = (fx.floor() as usize).min(last);
            (x0, (x0 + 1).min(last), fx - x0 as f32)
        })
        .collect()
}

/// Bilinear sample of the `c`-channel grid `low` (`lw` cells wide) at taps `tx`, `ty`.
#[inline]
fn bilerp(low: &[f32], lw: usize, c: usize, tx: (usize, usize, f32), ty: (usize, usize, f32), out: &mut [f32]) {
    let (x0, x1, fx) = tx;
    let (y0, y1, fy) = ty;
    let (r0, r1) = (y0 * lw, y1 * lw);
    for (k, o) in out.iter_mut().enumerate().take(c) {
        let top = low[(r0 + x0) * c + k] * (1.0 - fx) + low[(r0 + x1) * c + k] * fx;
        let bot = low[(r1 + x0) * c + k] * (1.0 - fx) + low[(r1 + x1) * c + k] * fx;
        *o = top * (1.0 - fy) + bot * fy;
    }
}

/// Colour guided filter of `p` (one channel) with RGB guide `guide`, radius `r` and regulariser
/// `eps`, with the coefficients computed at 1/`sub` resolution.
fn guided_filter_rgb(guide: &[f32], p: &[f32], w: usize, h: usize, r: usize, eps: f32, sub: usize) -> Vec<f32> {
    let sub = sub.max(1);
    let (g_low, lw, lh) = downsample(guide, w, h, 3, sub);
    let (p_low, _, _) = downsample(p, w, h, 1, sub);
    let rl = (r / sub).max(1);
    const C: usize = 13;
    let mut m = vec![0f32; lw * lh * C];
    m.par_chunks_mut(C).zip(g_low.par_chunks(3)).zip(p_low.par_iter()).for_each(|((o, g), &pv)| {
        let (r_, g_, b_) = (g[0], g[1], g[2]);
        o.copy_from_slice(&[r_, g_, b_, pv, r_ * r_, r_ * g_, r_ * b_, g_ * g_, g_ * b_, b_ * b_, r_ * pv, g_ * pv, b_ * pv]);
    });
    box_blur(&mut m, lw, lh, C, rl);
    let mut ab = vec![0f32; lw * lh * 4];
    ab.par_chunks_mut(4).zip(m.par_chunks(C)).for_each(|(o, s)| {
        let (mr, mg, mb, mp) = (s[0], s[1], s[2], s[3]);
        // Covariance of the guide (+ eps on the diagonal) and guide-target covariance.
        let (srr, srg, srb) = (s[4] - mr * mr + eps, s[5] - mr * mg, s[6] - mr * mb);
        let (sgg, sgb, sbb) = (s[7] - mg * mg + eps, s[8] - mg * mb, s[9] - mb * mb + eps);
        let (cr, cg, cb) = (s[10] - mr * mp, s[11] - mg * mp, s[12] - mb * mp);
        // Symmetric 3x3 inverse by cofactors.
        let i00 = sgg * sbb - sgb * sgb;
        let i01 = srb * sgb - srg * sbb;
        let i02 = srg * sgb - srb * sgg;
        let i11 = srr * sbb - srb * srb;
        let i12 = srb * srg - srr * sgb;
        let i22 = srr * sgg - srg * srg;
        let det = srr * i00 + srg * i01 + srb * i02;
        let (ar, ag, ab_) = if det.abs() > 1e-20 {
            (
                (i00 * cr + i01 * cg + i02 * cb) / det,
                (i01 * cr + i11 * cg + i12 * cb) / det,
                (i02 * cr + i12 * cg + i22 * cb) / det,
            )
        } else {
            (0.0, 0.0, 0.0)
        };
        o.copy_from_slice(&[ar, ag, ab_, mp - ar * mr - ag * mg - ab_ * mb]);
    });
    box_blur(&mut ab, lw, lh, 4, rl);
    let (xt, yt) = (taps(w, lw, sub), taps(h, lh, sub));
    let mut q = vec![0f32; w * h];
    q.par_chunks_mut(w).enumerate().for_each(|(y, row)| {
        let mut c = [0f32; 4];
        for (x, o) in row.iter_mut().enumerate() {
            bilerp(&ab, lw, 4, xt[x], yt[y], &mut c);
            let g = &guide[(y * w + x) * 3..(y * w + x) * 3 + 3];
            *o = c[0] * g[0] + c[1] * g[1] + c[2] * g[2] + c[3];
        }
    });
    q
}

/// Guided filter of `p` (`c` channels) with a one-channel guide at full resolution.
fn guided_filter_grey(guide: &[f32], p: &[f32], c: usize, w: usize, h: usize, r: usize, eps: f32) -> Vec<f32> {
    let n = 2 + 2 * c;
    let mut m = vec![0f32; w * h * n];
    m.par_chunks_mut(n).zip(guide.par_iter()).zip(p.par_chunks(c)).for_each(|((o, &g), pv)| {
        o[0] = g;
        o[1] = g * g;
        for k in 0..c {
            o[2 + k] = pv[k];
            o[2 + c + k] = g * pv[k];
        }
    });
    box_blur(&mut m, w, h, n, r);
    let mut ab = vec![0f32; w * h * 2 * c];
    ab.par_chunks_mut(2 * c).zip(m.par_chunks(n)).for_each(|(o, s)| {
        let var = s[1] - s[0] * s[0];
        for k in 0..c {
            let a = (s[2 + c + k] - s[0] * s[2 + k]) / (var + eps);
            o[k] = a;
            o[c + k] = s[2 + k] - a * s[0];
        }
    });
    box_blur(&mut ab, w, h, 2 * c, r);
    let mut q = vec![0f32; w * h * c];
    q.par_chunks_mut(c).zip(ab.par_chunks(2 * c)).zip(guide.par_iter()).for_each(|((o, s), &g)| {
        for k in 0..c {
            o[k] = s[k] * g + s[c + k];
        }
    });
    q
}

// ---------------------------------------------------------------------------------------------
// Polygons.

/// Anti-aliased coverage of a polygon (even-odd rule) on a `w x h` pixel grid, 4 sub-scanlines
/// per row with exact horizontal coverage. Non-finite points give an empty mask.
pub fn rasterize_polygon(poly: &[[f32; 2]], w: u32, h: u32) -> Mask {
    let mut mask = Mask::new(w, h);
    if poly.len() < 3 || w == 0 || h == 0 || poly.iter().flatten().any(|v| !v.is_finite()) {
        return mask;
    }
    let (ymin, ymax) = poly.iter().fold((f32::MAX, f32::MIN), |(a, b), p| (a.min(p[1]), b.max(p[1])));
    let y0 = ymin.floor().max(0.0) as usize;
    let y1 = (ymax.ceil().max(0.0) as usize).min(h as usize);
    let wu = w as usize;
    const S: usize = 4;
    let mut xs: Vec<f32> = Vec::with_capacity(poly.len());
    let buf: &mut [f32] = &mut mask;
    for y in y0..y1 {
        let row = &mut buf[y * wu..(y + 1) * wu];
        for s in 0..S {
            let ys = y as f32 + (s as f32 + 0.5) / S as f32;
            xs.clear();
            for (i, p) in poly.iter().enumerate() {
                let q = &poly[(i + 1) % poly.len()];
                if (p[1] <= ys) != (q[1] <= ys) {
                    xs.push(p[0] + (ys - p[1]) * (q[0] - p[0]) / (q[1] - p[1]));
                }
            }
            xs.sort_by(f32::total_cmp);
            for span in xs.chunks_exact(2) {
                add_span(row, span[0], span[1], 1.0 / S as f32);
            }
        }
        for v in row.iter_mut() {
            *v = v.min(1.0);
        }
    }
    mask
}

fn add_span(row: &mut [f32], a: f32, b: f32, weight: f32) {
    let wf = row.len() as f32;
    let (a, b) = (a.clamp(0.0, wf), b.clamp(0.0, wf));
    if b <= a {
        return;
    }
    let (ia, ib) = (a.floor() as usize, b.floor() as usize);
    if ia == ib {
        if let Some(v) = row.get_mut(ia) {
            *v += (b - a) * weight;
        }
        return;
    }
    if let Some(v) = row.get_mut(ia) {
        *v += (ia as f32 + 1.0 - a) * weight;
    }
    for v in row.iter_mut().take(ib).skip(ia + 1) {
        *v += weight;
    }
    if let Some(v) = row.get_mut(ib) {
        *v += (b - ib as f32) * weight;
    }
}

/// `poly` scaled by `k` about its vertex centroid, shifted by `-off`.
fn scaled(poly: &[[f32; 2]], k: f32, off: [f32; 2]) -> Vec<[f32; 2]> {
    if poly.is_empty() {
        return Vec::new();
    }
    let n = poly.len() as f32;
    let c = poly.iter().fold([0.0, 0.0], |a, p| [a[0] + p[0] / n, a[1] + p[1] / n]);
    poly.iter().map(|p| [c[0] + (p[0] - c[0]) * k - off[0], c[1] + (p[1] - c[1]) * k - off[1]]).collect()
}

fn bounds(poly: &[[f32; 2]]) -> Option<[f32; 4]> {
    if poly.len() < 3 || poly.iter().flatten().any(|v| !v.is_finite()) {
        return None;
    }
    Some(poly.iter().fold([f32::MAX, f32::MAX, f32::MIN, f32::MIN], |b, p| {
        [b[0].min(p[0]), b[1].min(p[1]), b[2].max(p[0]), b[3].max(p[1])]
    }))
}

// ---------------------------------------------------------------------------------------------
// The studio steps.

fn to_f32(img: &RgbImage) -> Vec<f32> {
    img.as_raw().par_iter().map(|&v| f32::from(v) / 255.0).collect()
}

fn rgb_f32(c: [u8; 3]) -> [f32; 3] {
    [f32::from(c[0]) / 255.0, f32::from(c[1]) / 255.0, f32::from(c[2]) / 255.0]
}

fn luma(c: [f32; 3]) -> f32 {
    0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2]
}

/// The refined matte: guided filter on the photo, snapped near 0 and 1.
fn refine_matte(img: &[f32], person: &[f32], w: usize, h: usize) -> Vec<f32> {
    let short = w.min(h);
    let r = (short / 80).max(2);
    // The coefficients are smooth, so they are computed on a coarser grid as the crop grows.
    let sub = match short {
        768.. => 4,
        384.. => 2,
        _ => 1,
    };
    let mut a = guided_filter_rgb(img, person, w, h, r, 2e-3, sub);
    a.par_iter_mut().for_each(|v| *v = ((*v - 0.04) / 0.92).clamp(0.0, 1.0));
    a
}

/// Alpha where the crop left the photo: the person continues downward from the photo's last row
/// (shoulders cut by the bottom edge), fades out sideways, and the top is backdrop.
fn extend_alpha(alpha: &mut [f32], inside: &[f32], w: usize, h: usize) {
    // The usual case: the crop lies wholly inside the photo.
    if inside.iter().all(|&i| i >= 1.0) {
        return;
    }
    let mut ext = vec![0f32; w * h];
    let mut filled = vec![false; w * h];
    // Downward, row by row, carrying each column's last value inside the photo.
    let mut last: Vec<Option<f32>> = vec![None; w];
    for y in 0..h {
        for (x, l) in last.iter_mut().enumerate() {
            let i = y * w + x;
            if inside[i] >= 0.5 {
                *l = Some(alpha[i]);
            } else if let Some(a) = *l {
                ext[i] = a;
                filled[i] = true;
            }
        }
    }
    let decay = (w as f32 * 0.06).max(1.0);
    ext.par_chunks_mut(w).zip(filled.par_chunks(w)).enumerate().for_each(|(y, (erow, frow))| {
        let ins = &inside[y * w..(y + 1) * w];
        let al = &alpha[y * w..(y + 1) * w];
        let mut side = vec![0f32; w];
        let mut last: Option<(usize, f32)> = None;
        for x in 0..w {
            if ins[x] >= 0.5 {
                last = Some((x, al[x]));
            } else if let Some((lx, a)) = last {
                side[x] = a * (-((x - lx) as f32) / decay).exp();
            }
        }
        last = None;
        for x in (0..w).rev() {
            if ins[x] >= 0.5 {
                last = Some((x, al[x]));
            } else if let Some((lx, a)) = last {
                side[x] = side[x].max(a * (-((lx - x) as f32) / decay).exp());
            }
        }
        for x in 0..w {
            if !frow[x] && ins[x] < 0.5 {
                erow[x] = side[x];
            }
        }
    });
    alpha.par_iter_mut().zip(ext.par_iter()).zip(inside.par_iter()).for_each(|((a, &e), &i)| {
        let i = i.clamp(0.0, 1.0);
        *a = i * *a + (1.0 - i) * e;
    });
}

/// Local person and background colours around every pixel: means of the photo weighted by
/// confidence (a^4 for the person, (1-a)^4 for the background, so pixels whose alpha is doubtful
/// hardly count), over a (2r+1)^2 window, computed at reduced resolution (they are smooth) and
/// sampled bilinearly. Where a window holds few confident pixels (a stray strand of hair far from
/// the head) the mean leans on a 4x wider window, and past that on the whole crop's mean.
struct LocalColours {
    /// Per low-resolution pixel: person RGB, 1, background RGB, 1.
    m: Vec<f32>,
    lw: usize,
    /// Full-resolution columns and rows onto the low-resolution grid.
    xt: Taps,
    yt: Taps,
}

/// Mean confidence weight below which a window's own colour gives way to the wider one.
const LOCAL_FALLBACK: f32 = 0.02;

/// Normalises weighted sums (`s[0..3]` by `s[3]`, `s[4..7]` by `s[7]`), leaning on `fallback`
/// (normalised, same layout) in proportion to `k` where the weight is small.
fn lean_on(s: &mut [f32], fallback: &[f32], k: f32) {
    for (k0, kw) in [(0, 3), (4, 7)] {
        let den = s[kw] + k;
        for j in k0..k0 + 3 {
            s[j] = (s[j] + k * fallback[j]) / den;
        }
        s[kw] = 1.0;
    }
}

impl LocalColours {
    fn new(img: &[f32], alpha: &[f32], w: usize, h: usize, r: usize) -> LocalColours {
        let sub = match w.min(h) {
            768.. => 4,
            256.. => 2,
            _ => 1,
        };
        // Weighted colours, block-averaged straight into the low-resolution grid.
        let (lw, lh) = (w.div_ceil(sub), h.div_ceil(sub));
        let mut m = vec![0f32; lw * lh * 8];
        m.par_chunks_mut(lw * 8).enumerate().for_each(|(ly, orow)| {
            let ys = ly * sub..((ly + 1) * sub).min(h);
            let rows = ys.len();
            for y in ys {
                for x in 0..w {
                    let i = y * w + x;
                    let (a, p) = (alpha[i], &img[i * 3..i * 3 + 3]);
                    let (a2, b2) = (a * a, (1.0 - a) * (1.0 - a));
                    let (wf, wb) = (a2 * a2, b2 * b2);
                    let o = &mut orow[(x / sub) * 8..(x / sub) * 8 + 8];
                    for k in 0..3 {
                        o[k] += p[k] * wf;
                        o[4 + k] += p[k] * wb;
                    }
                    o[3] += wf;
                    o[7] += wb;
                }
            }
            for (lx, o) in orow.chunks_exact_mut(8).enumerate() {
                let cols = ((lx + 1) * sub).min(w) - lx * sub;
                let inv = 1.0 / (rows * cols) as f32;
                for v in o.iter_mut() {
                    *v *= inv;
                }
            }
        });
        let rl = (r / sub).max(1);
        // The wider level: the same radius on a 4x coarser grid.
        let (mut c, cw, ch) = downsample(&m, lw, lh, 8, 4);
        box_blur(&mut m, lw, lh, 8, rl);
        box_blur(&mut c, cw, ch, 8, rl);
        // The crop's overall means, in a fixed summation order.
        let mut total = [0f64; 8];
        for px in c.chunks_exact(8) {
            for (t, v) in total.iter_mut().zip(px) {
                *t += f64::from(*v);
            }
        }
        let mut global = [0f32; 8];
        for (k0, kw) in [(0, 3), (4, 7)] {
            for j in k0..k0 + 3 {
                global[j] = if total[kw] > 1e-9 { (total[j] / total[kw]) as f32 } else { 0.5 };
            }
        }
        c.par_chunks_mut(8).for_each(|s| lean_on(s, &global, 1e-3));
        let (cxt, cyt) = (taps(lw, cw, 4), taps(lh, ch, 4));
        m.par_chunks_mut(8 * lw).enumerate().for_each(|(y, row)| {
            let mut fb = [0f32; 8];
            for (x, s) in row.chunks_exact_mut(8).enumerate() {
                bilerp(&c, cw, 8, cxt[x], cyt[y], &mut fb);
                lean_on(s, &fb, LOCAL_FALLBACK);
            }
        });
        LocalColours { m, lw, xt: taps(w, lw, sub), yt: taps(h, lh, sub) }
    }

    /// (person colour, background colour) at full-resolution pixel (x, y).
    #[inline]
    fn at(&self, x: usize, y: usize) -> ([f32; 3], [f32; 3]) {
        let mut s = [0f32; 8];
        bilerp(&self.m, self.lw, 8, self.xt[x], self.yt[y], &mut s);
        ([s[0], s[1], s[2]], [s[4], s[5], s[6]])
    }
}

/// Radius of the local colour windows: wide enough to reach confident pixels across the
/// segmenter's soft edge.
fn local_radius(w: usize, h: usize) -> usize {
    (w.min(h) / 40).max(3)
}

/// How far apart the local person and background colours are (squared RGB distance `d2`, RGB in
/// [0, 1]), as a trust in [0, 1]: none below 0.08, full from 0.25.
fn separation(d2: f32) -> f32 {
    let t = ((d2.sqrt() - 0.08) / (0.25 - 0.08)).clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

/// Alpha re-estimated in the matte's soft band from the colours around each pixel.
///
/// The segmenter's edge is blurred (it runs at low resolution), so the matte can be fractional over
/// pure background; any foreground estimate that trusts such an alpha must explain the pixel as part
/// person and so brings the old background's colour along (a halo on the new backdrop). Here each
/// band pixel's alpha is its projection on the line from the local background colour `B` to the
/// local person colour `F` (the compositing equation I = aF + (1-a)B solved for a). The projection
/// is trusted in proportion to how far apart `F` and `B` are, fully from a distance of 0.25 (RGB in
/// [0, 1]); where they are alike (dark hair on a dark wall) the matte stands. Pixels outside the
/// photo keep their extended alpha.
fn unmix_alpha(img: &[f32], alpha: &[f32], inside: &[f32], local: &LocalColours, w: usize) -> Vec<f32> {
    let mut out = alpha.to_vec();
    out.par_chunks_mut(w).enumerate().for_each(|(y, row)| {
        for (x, o) in row.iter_mut().enumerate() {
            let i = y * w + x;
            let a = alpha[i];
            // Only the soft band: opaque and empty pixels stay (up to the blur's rounding), with a
            // smooth hand-over at the band's ends.
            let band = (12.0 * a * (1.0 - a)).min(1.0) * inside[i];
            if band <= 0.025 {
                continue;
            }
            let (f, b) = local.at(x, y);
            let (mut d2, mut dot) = (0f32, 0f32);
            for k in 0..3 {
                d2 += (f[k] - b[k]) * (f[k] - b[k]);
                dot += (img[i * 3 + k] - b[k]) * (f[k] - b[k]);
            }
            let conf = separation(d2) * band;
            let proj = (dot / d2.max(1e-6)).clamp(0.0, 1.0);
            // Lowering a nearly opaque matte is trusted less: a person pixel darker or lighter
            // than the local person mean (a dark lapel beside a white collar) also projects low,
            // and a hole in the person is worse than a faint person-coloured haze.
            let conf = if proj < a { conf * (2.5 * (1.0 - a)).min(1.0) } else { conf };
            *o = a + conf * (proj - a);
        }
    });
    out
}

/// Foreground colours with the old background removed from fractional-alpha pixels.
///
/// With the local background colour `B` and person colour `F0` (confidence-weighted, so the soft
/// band does not feed its own mixed colours back in), F = F0 + r where r = I - a F0 - (1-a) B is
/// what the pixel holds beyond that mix. The old background enters F only through r, i.e. only as
/// far as the real background differs from its local mean (texture), scaled by a in the composite;
/// its mean colour is gone, so no halo. The part of r along `F0 - B` is an alpha error rather than
/// a colour in the soft band (after [`unmix_alpha`] it is left only where the colours could not be
/// trusted) and is dropped there; toward opaque pixels it is kept, so F meets the photo at a = 1.
fn estimate_foreground(img: &[f32], alpha: &[f32], local: &LocalColours, w: usize) -> Vec<f32> {
    let mut fg = img.to_vec();
    fg.par_chunks_mut(w * 3).enumerate().for_each(|(y, row)| {
        for (x, f) in row.chunks_exact_mut(3).enumerate() {
            let i = y * w + x;
            let a = alpha[i];
            // Opaque pixels keep the photo exactly; empty ones are never seen.
            if !(0.001..0.999).contains(&a) {
                continue;
            }
            let (f0, b) = local.at(x, y);
            let r: [f32; 3] = std::array::from_fn(|k| img[i * 3 + k] - a * f0[k] - (1.0 - a) * b[k]);
            let d: [f32; 3] = std::array::from_fn(|k| f0[k] - b[k]);
            let d2 = d[0] * d[0] + d[1] * d[1] + d[2] * d[2];
            let along = if d2 > 1e-6 { (r[0] * d[0] + r[1] * d[1] + r[2] * d[2]) / d2 } else { 0.0 };
            // As in `unmix_alpha`: the direction F0 - B means something only where they differ.
            let a2 = a * a;
            let drop = along * (1.0 - a2 * a2) * separation(d2);
            for k in 0..3 {
                f[k] = (f0[k] + r[k] - drop * d[k]).clamp(0.0, 1.0);
            }
        }
    });
    fg
}

/// Person colours outside the photo: the crop there holds copies of the photo's edge pixels, which
/// would run on as streaks (a medal on the jacket's last row becomes a stripe to the bottom). They
/// fade, over a distance of about 1/12 of the crop's short side, into a wide blur (sigma ~ 1/8 of
/// the short side) of the person's colours inside the photo, so cut-off shoulders continue as
/// smooth cloth.
fn smooth_outside(fg: &mut [f32], alpha: &[f32], inside: &[f32], w: usize, h: usize) {
    if inside.iter().all(|&i| i >= 1.0) {
        return;
    }
    let short = w.min(h);
    let f = (short / 192).max(1);
    // Channels: person colour * weight (3), weight, inside. Block-averaged into the coarse grid.
    let (lw, lh) = (w.div_ceil(f), h.div_ceil(f));
    let mut low = vec![0f32; lw * lh * 5];
    low.par_chunks_mut(lw * 5).enumerate().for_each(|(ly, orow)| {
        let ys = ly * f..((ly + 1) * f).min(h);
        let rows = ys.len();
        for y in ys {
            for x in 0..w {
                let i = y * w + x;
                let wt = alpha[i] * inside[i];
                let o = &mut orow[(x / f) * 5..(x / f) * 5 + 5];
                for k in 0..3 {
                    o[k] += fg[i * 3 + k] * wt;
                }
                o[3] += wt;
                o[4] += inside[i];
            }
        }
        for (lx, o) in orow.chunks_exact_mut(5).enumerate() {
            let inv = 1.0 / (rows * (((lx + 1) * f).min(w) - lx * f)) as f32;
            for v in o.iter_mut() {
                *v *= inv;
            }
        }
    });
    // The colour needs a wide reach (it must cover the whole extension and average out stripes);
    // the hand-over from the edge copies a narrow one.
    let mut ins: Vec<f32> = low.chunks_exact(5).map(|c| c[4]).collect();
    let mut col: Vec<f32> = low.chunks_exact(5).flat_map(|c| [c[0], c[1], c[2], c[3]]).collect();
    soft_blur(&mut col, lw, lh, 4, (short / 8 / f).max(1));
    soft_blur(&mut ins, lw, lh, 1, (short / 24 / f).max(1));
    let (xt, yt) = (taps(w, lw, f), taps(h, lh, f));
    fg.par_chunks_mut(w * 3).enumerate().for_each(|(y, row)| {
        let (mut s, mut ib) = ([0f32; 4], [0f32; 1]);
        for (x, px) in row.chunks_exact_mut(3).enumerate() {
            let out = 1.0 - inside[y * w + x];
            if out <= 0.0 {
                continue;
            }
            bilerp(&col, lw, 4, xt[x], yt[y], &mut s);
            if s[3] < 1e-5 {
                continue;
            }
            bilerp(&ins, lw, 1, xt[x], yt[y], &mut ib);
            // The blurred inside mask is 1/2 on the photo's edge and falls off outside it.
            let t = ((0.5 - ib[0]) * 2.0).clamp(0.0, 1.0);
            let m = out * t * t * (3.0 - 2.0 * t);
            for k in 0..3 {
                px[k] += m * (s[k] / s[3] - px[k]);
            }
        }
    });
}

/// Area-average (downscale) or bilinear (upscale) resize of `img` to cover `w x h`, centred.
fn resize_cover(img: &RgbImage, w: usize, h: usize) -> Vec<f32> {
    let (iw, ih) = (img.width() as usize, img.height() as usize);
    let scale = (w as f32 / iw as f32).max(h as f32 / ih as f32);
    let (x0, y0) = ((iw as f32 - w as f32 / scale) * 0.5, (ih as f32 - h as f32 / scale) * 0.5);
    let raw = img.as_raw();
    let px = |x: usize, y: usize, k: usize| f32::from(raw[(y.min(ih - 1) * iw + x.min(iw - 1)) * 3 + k]) / 255.0;
    let mut out = vec![0f32; w * h * 3];
    out.par_chunks_mut(w * 3).enumerate().for_each(|(y, row)| {
        for x in 0..w {
            let o = &mut row[x * 3..x * 3 + 3];
            if scale < 1.0 {
                let sx0 = (x0 + x as f32 / scale).max(0.0) as usize;
                let sx1 = ((x0 + (x + 1) as f32 / scale) as usize).max(sx0 + 1).min(iw);
                let sy0 = (y0 + y as f32 / scale).max(0.0) as usize;
                let sy1 = ((y0 + (y + 1) as f32 / scale) as usize).max(sy0 + 1).min(ih);
                let n = ((sx1.saturating_sub(sx0)) * (sy1.saturating_sub(sy0))).max(1) as f32;
                for (k, ok) in o.iter_mut().enumerate() {
                    let mut s = 0f32;
                    for sy in sy0..sy1 {
                        for sx in sx0..sx1 {
                            s += px(sx, sy, k);
                        }
                    }
                    *ok = s / n;
                }
            } else {
                let fx = (x0 + (x as f32 + 0.5) / scale - 0.5).clamp(0.0, (iw - 1) as f32);
                let fy = (y0 + (y as f32 + 0.5) / scale - 0.5).clamp(0.0, (ih - 1) as f32);
                let (ix, iy) = (fx.floor() as usize, fy.floor() as usize);
                let (tx, ty) = (fx - ix as f32, fy - iy as f32);
                for (k, ok) in o.iter_mut().enumerate() {
                    let top = px(ix, iy, k) * (1.0 - tx) + px(ix + 1, iy, k) * tx;
                    let bot = px(ix, iy + 1, k) * (1.0 - tx) + px(ix + 1, iy + 1, k) * tx;
                    *ok = top * (1.0 - ty) + bot * ty;
                }
            }
        }
    });
    out
}

fn render_backdrop(b: &Backdrop, img: &[f32], alpha: &[f32], inside: &[f32], w: usize, h: usize) -> Result<Vec<f32>> {
    Ok(match b {
        Backdrop::Color(c) => {
            let c = rgb_f32(*c);
            (0..w * h).flat_map(|_| c).collect()
        }
        Backdrop::Gradient { top, bottom } => {
            let (t, bt) = (rgb_f32(*top), rgb_f32(*bottom));
            let mut out = vec![0f32; w * h * 3];
            out.par_chunks_mut(w * 3).enumerate().for_each(|(y, row)| {
                let v = (y as f32 + 0.5) / h as f32;
                let s = v * v * (3.0 - 2.0 * v);
                let c = [t[0] + (bt[0] - t[0]) * s, t[1] + (bt[1] - t[1]) * s, t[2] + (bt[2] - t[2]) * s];
                for px in row.chunks_exact_mut(3) {
                    px.copy_from_slice(&c);
                }
            });
            out
        }
        Backdrop::Image(im) => {
            if im.width() == 0 || im.height() == 0 {
                return Err(EngineError::InvalidOption("the backdrop image is empty".into()));
            }
            resize_cover(im, w, h)
        }
        Backdrop::Blur => {
            // Normalised convolution of the background part (inside the photo only), so the
            // person's place and the area outside the photo fill from the surrounding background.
            // The blur is wide (sigma ~ short side / 14), so it runs on a grid ~192 px across
            // (filled straight from the photo, block means) and is sampled back bilinearly.
            let short = w.min(h);
            let f = (short / 192).max(1);
            let (lw, lh) = (w.div_ceil(f), h.div_ceil(f));
            let mut low = vec![0f32; lw * lh * 4];
            low.par_chunks_mut(lw * 4).enumerate().for_each(|(ly, orow)| {
                let ys = ly * f..((ly + 1) * f).min(h);
                let rows = ys.len();
                for y in ys {
                    for x in 0..w {
                        let i = y * w + x;
                        let wt = (1.0 - alpha[i]).powi(2) * inside[i].clamp(0.0, 1.0);
                        let o = &mut orow[(x / f) * 4..(x / f) * 4 + 4];
                        for k in 0..3 {
                            o[k] += img[i * 3 + k] * wt;
                        }
                        o[3] += wt;
                    }
                }
                for (lx, o) in orow.chunks_exact_mut(4).enumerate() {
                    let inv = 1.0 / (rows * (((lx + 1) * f).min(w) - lx * f)) as f32;
                    for v in o.iter_mut() {
                        *v *= inv;
                    }
                }
            });
            // The background's mean colour (over the grid's cells, in a fixed order) fills where
            // no background is in reach.
            let tot = low.chunks_exact(4).fold([0f64; 4], |a, p| {
                [a[0] + f64::from(p[0]), a[1] + f64::from(p[1]), a[2] + f64::from(p[2]), a[3] + f64::from(p[3])]
            });
            let mean = if tot[3] * (f * f) as f64 > 1.0 {
                [(tot[0] / tot[3]) as f32, (tot[1] / tot[3]) as f32, (tot[2] / tot[3]) as f32]
            } else {
                rgb_f32(STUDIO_TOP)
            };
            soft_blur(&mut low, lw, lh, 4, (short / 14 / f).max(2));
            let k = 2e-3;
            let (xt, yt) = (taps(w, lw, f), taps(h, lh, f));
            let mut out = vec![0f32; w * h * 3];
            out.par_chunks_mut(w * 3).enumerate().for_each(|(y, row)| {
                let mut s = [0f32; 4];
                for (x, o) in row.chunks_exact_mut(3).enumerate() {
                    bilerp(&low, lw, 4, xt[x], yt[y], &mut s);
                    for c in 0..3 {
                        o[c] = (s[c] + k * mean[c]) / (s[3] + k);
                    }
                }
            });
            out
        }
    })
}

/// Additive change of the skin retouch, over the face's bounding box `(x0, y0, bw, bh)`.
struct Retouch {
    x0: usize,
    y0: usize,
    bw: usize,
    bh: usize,
    delta: Vec<f32>,
}

fn retouch(img: &[f32], w: usize, h: usize, face: &FaceRegions, strength: f32) -> Option<Retouch> {
    let b = bounds(&face.face_oval)?;
    if strength <= 0.0 {
        return None;
    }
    let fw = (b[2] - b[0]).max(b[3] - b[1]);
    if fw < 24.0 {
        return None;
    }
    let pad = (fw * 0.05).ceil();
    let x0 = (b[0] - pad).floor().clamp(0.0, w as f32) as usize;
    let y0 = (b[1] - pad).floor().clamp(0.0, h as f32) as usize;
    let x1 = (b[2] + pad).ceil().clamp(0.0, w as f32) as usize;
    let y1 = (b[3] + pad).ceil().clamp(0.0, h as f32) as usize;
    let (bw, bh) = (x1.checked_sub(x0)?, y1.checked_sub(y0)?);
    if bw < 8 || bh < 8 {
        return None;
    }
    let off = [x0 as f32, y0 as f32];
    let raster = |poly: &[[f32; 2]], k: f32| -> Vec<f32> {
        if poly.len() < 3 {
            return vec![0.0; bw * bh];
        }
        rasterize_polygon(&scaled(poly, k, off), bw as u32, bh as u32).into_raw()
    };
    // Skin weight: the (slightly shrunk) oval, feathered, minus eyes, brows and lips, feathered.
    let mut skin = raster(&face.face_oval, 0.96);
    soft_blur(&mut skin, bw, bh, 1, (fw / 40.0) as usize);
    let mut keep = vec![0f32; bw * bh];
    for (poly, k) in [(&face.right_eye, 1.6), (&face.left_eye, 1.6), (&face.right_brow, 1.3), (&face.left_brow, 1.3), (&face.lips, 1.25)] {
        for (a, v) in keep.iter_mut().zip(raster(poly, k)) {
            *a = a.max(v);
        }
    }
    soft_blur(&mut keep, bw, bh, 1, (fw / 70.0) as usize);
    // The eyes themselves (with a margin) are never touched.
    let mut fence = raster(&face.right_eye, 1.2);
    for (a, v) in fence.iter_mut().zip(raster(&face.left_eye, 1.2)) {
        *a = a.max(v);
    }
    for ((s, k), f) in skin.iter_mut().zip(&keep).zip(&fence) {
        *s = if *f > 0.0 { 0.0 } else { *s * (1.0 - (k * 1.5).min(1.0)) };
    }

    let mut sub = vec![0f32; bw * bh * 3];
    for y in 0..bh {
        let src = &img[((y0 + y) * w + x0) * 3..((y0 + y) * w + x0 + bw) * 3];
        sub[y * bw * 3..(y + 1) * bw * 3].copy_from_slice(src);
    }
    let lum: Vec<f32> = sub.chunks_exact(3).map(|p| luma([p[0], p[1], p[2]])).collect();
    let smooth = guided_filter_grey(&lum, &sub, 3, bw, bh, ((fw / 28.0) as usize).max(2), 0.03 * 0.03);
    let mut low = sub.clone();
    box_blur(&mut low, bw, bh, 3, ((fw / 260.0) as usize).max(1));
    // Remove mid-frequency blemish detail (low - smooth) and a little of the finest texture.
    let delta: Vec<f32> = (0..bw * bh * 3)
        .map(|i| {
            let m = skin[i / 3] * strength;
            if m <= 0.0 {
                0.0
            } else {
                -m * ((low[i] - smooth[i]) * 0.9 + (sub[i] - low[i]) * 0.2)
            }
        })
        .collect();
    Some(Retouch { x0, y0, bw, bh, delta })
}

/// Per-channel gains that move the person's colour temperature and brightness toward the backdrop.
fn harmonise_gains(img: &[f32], alpha: &[f32], backdrop: &[f32], w: usize, strength: f32) -> [f32; 3] {
    let rows: Vec<[f64; 7]> = img
        .par_chunks(w * 3)
        .zip(alpha.par_chunks(w))
        .zip(backdrop.par_chunks(w * 3))
        .map(|((ir, ar), br)| {
            let mut s = [0f64; 7];
            for x in 0..ar.len() {
                let a = f64::from(ar[x]);
                for k in 0..3 {
                    s[k] += a * f64::from(ir[x * 3 + k]);
                    s[4 + k] += f64::from(br[x * 3 + k]);
                }
                s[3] += a;
            }
            s
        })
        .collect();
    let t = rows.iter().fold([0f64; 7], |mut a, r| {
        for k in 0..7 {
            a[k] += r[k];
        }
        a
    });
    let n = (img.len() / 3).max(1) as f64;
    if t[3] < 1.0 || strength <= 0.0 {
        return [1.0; 3];
    }
    let p = [(t[0] / t[3]) as f32, (t[1] / t[3]) as f32, (t[2] / t[3]) as f32];
    let b = [(t[4] / n) as f32, (t[5] / n) as f32, (t[6] / n) as f32];
    let (lp, lb) = (luma(p) + 0.02, luma(b) + 0.02);
    let mut g = [1f32; 3];
    for k in 0..3 {
        let ratio = ((b[k] + 0.02) / lb) / ((p[k] + 0.02) / lp);
        g[k] = ratio.powf(0.12 * strength).clamp(0.94, 1.06);
    }
    // Chroma gains keep the person's luminance; brightness moves separately and less.
    let norm = luma([p[0] * g[0], p[1] * g[1], p[2] * g[2]]) / luma(p).max(1e-4);
    let lg = ((lb + 0.03) / (lp + 0.03)).powf(0.08 * strength).clamp(0.94, 1.06);
    [g[0] / norm * lg, g[1] / norm * lg, g[2] / norm * lg]
}

const BAYER4: [f32; 16] = [0., 8., 2., 10., 12., 4., 14., 6., 3., 11., 1., 9., 15., 7., 13., 5.];

/// The studio look on a framed crop. `inside` is 1 where the crop came from the photo, `person`
/// the segmentation probability; both at the crop's size.
pub fn studio(crop: &RgbImage, inside: &Mask, person: &Mask, face: &FaceRegions, style: &StudioStyle) -> Result<RgbImage> {
    let (wu, hu) = crop.dimensions();
    if inside.dimensions() != (wu, hu) || person.dimensions() != (wu, hu) {
        return Err(EngineError::InvalidOption(format!(
            "studio inputs differ in size: crop {wu}x{hu}, inside {:?}, person {:?}",
            inside.dimensions(),
            person.dimensions()
        )));
    }
    if wu < 8 || hu < 8 {
        return Err(EngineError::TooSmall { width: wu, height: hu, min: 8 });
    }
    let (w, h) = (wu as usize, hu as usize);
    let relight = if style.relight.is_finite() { style.relight.clamp(0.0, 1.0) } else { 0.0 };
    let retouch_strength = if style.retouch.is_finite() { style.retouch.clamp(0.0, 1.0) } else { 0.0 };
    let img = to_f32(crop);
    let inside_v: Vec<f32> = inside.as_raw().iter().map(|v| if v.is_finite() { v.clamp(0.0, 1.0) } else { 0.0 }).collect();
    let person_v: Vec<f32> = person.as_raw().iter().map(|v| if v.is_finite() { v.clamp(0.0, 1.0) } else { 0.0 }).collect();

    // 1. Matte: edge-aware refinement, extension beyond the photo, a one-pixel feather, then alpha
    //    re-estimated from the local colours where they tell person and background apart.
    let mut alpha = refine_matte(&img, &person_v, w, h);
    extend_alpha(&mut alpha, &inside_v, w, h);
    box_blur(&mut alpha, w, h, 1, 1);
    let local = LocalColours::new(&img, &alpha, w, h, local_radius(w, h));
    let alpha = unmix_alpha(&img, &alpha, &inside_v, &local, w);

    // 2. Foreground colours without the old background, then the retouch on top.
    let mut fg = estimate_foreground(&img, &alpha, &local, w);
    if let Some(rt) = retouch(&img, w, h, face, retouch_strength) {
        for y in 0..rt.bh {
            let row = &mut fg[((rt.y0 + y) * w + rt.x0) * 3..((rt.y0 + y) * w + rt.x0 + rt.bw) * 3];
            for (f, d) in row.iter_mut().zip(&rt.delta[y * rt.bw * 3..(y + 1) * rt.bw * 3]) {
                *f = (*f + d).clamp(0.0, 1.0);
            }
        }
    }

    smooth_outside(&mut fg, &alpha, &inside_v, w, h);

    // 3. Backdrop.
    let backdrop = render_backdrop(&style.backdrop, &img, &alpha, &inside_v, w, h)?;

    // 4. Relight: harmonised gains, a soft key light on the face from the image's left, the body
    //    falling off slightly toward the bottom, and a light wrap of the backdrop at the edges.
    let gains = harmonise_gains(&img, &alpha, &backdrop, w, relight);
    let (fc, fwid, chin) = match bounds(&face.face_oval) {
        Some(b) => ([(b[0] + b[2]) * 0.5, (b[1] + b[3]) * 0.5], (b[2] - b[0]).max(1.0), b[3]),
        None => ([w as f32 * 0.5, h as f32 * 0.4], w as f32 / 3.0, h as f32 * 0.6),
    };
    let key = [fc[0] - 0.3 * fwid, fc[1] - 0.2 * fwid];
    let sigma2 = 2.0 * (0.9 * fwid).powi(2);
    // The wrap is a soft falloff, so its blur runs on a grid 4x coarser (sampled back bilinearly).
    let wf = if w.min(h) >= 256 { 4 } else { 1 };
    let (mut wrap_low, wlw, wlh) = downsample(&alpha, w, h, 1, wf);
    box_blur(&mut wrap_low, wlw, wlh, 1, (w.min(h) / 100 / wf).max(1));
    let (wxt, wyt) = (taps(w, wlw, wf), taps(h, wlh, wf));

    // The key light's Gaussian is separable: exp(-(dx^2 + dy^2)/s) = exp(-dx^2/s) exp(-dy^2/s).
    let gauss = |d: f32| (-d * d / sigma2).exp();
    let gx: Vec<f32> = (0..w).map(|x| gauss(x as f32 + 0.5 - key[0])).collect();
    let mut out = RgbImage::new(wu, hu);
    out.as_mut().par_chunks_mut(w * 3).enumerate().for_each(|(y, orow)| {
        let yf = y as f32 + 0.5;
        let gy = gauss(yf - key[1]);
        let fall = ((yf - chin) / (h as f32 - chin).max(1.0)).clamp(0.0, 1.0);
        let fall = fall * fall * (3.0 - 2.0 * fall);
        let mut wrap = [0f32; 1];
        for x in 0..w {
            let i = y * w + x;
            let a = alpha[i];
            bilerp(&wrap_low, wlw, 1, wxt[x], wyt[y], &mut wrap);
            let light = 1.0 + relight * (0.10 * gx[x] * gy - 0.08 * fall);
            let wr = relight * 0.35 * (1.0 - wrap[0]).clamp(0.0, 1.0);
            let dither = (BAYER4[(y % 4) * 4 + x % 4] + 0.5) / 16.0 - 0.5;
            for k in 0..3 {
                let bk = backdrop[i * 3 + k];
                let mut f = fg[i * 3 + k] * gains[k] * light;
                f += wr * (bk - f);
                let v = a * f + (1.0 - a) * bk;
                // Round half up by truncation (non-negative after the clamp); `round()` is a libm call.
                orow[x * 3 + k] = (v * 255.0 + dither + 0.5).clamp(0.0, 255.0) as u8;
            }
        }
    });
    Ok(out)
}

/// A mask with every value `v`, the size of `img` (handy for callers and tests).
pub fn full_mask(w: u32, h: u32, v: f32) -> Mask {
    Mask::from_pixel(w, h, Luma([v]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_backdrops() {
        assert_eq!(Backdrop::parse("#1a2B3c").ok(), Some(Backdrop::Color([0x1a, 0x2b, 0x3c])));
        assert_eq!(Backdrop::parse("Light-Gray").ok(), Some(Backdrop::Color([0xD8, 0xD9, 0xDB])));
        assert_eq!(Backdrop::parse("blur").ok(), Some(Backdrop::Blur));
        assert_eq!(
            Backdrop::parse("gradient:#000000:#ffffff").ok(),
            Some(Backdrop::Gradient { top: [0; 3], bottom: [255; 3] })
        );
        assert!(matches!(Backdrop::parse("gradient"), Ok(Backdrop::Gradient { .. })));
        assert!(matches!(Backdrop::parse("#12345"), Err(EngineError::InvalidOption(_))));
        assert!(matches!(Backdrop::parse("mauve"), Err(EngineError::InvalidOption(_))));
        assert!(matches!(Backdrop::parse("image:mottled-grey"), Err(EngineError::InvalidOption(_))));
        assert_eq!(Backdrop::image_name(" image:mottled-grey "), Some("mottled-grey"));
        assert_eq!(Backdrop::image_name("grey"), None);
    }

    #[test]
    fn box_blur_keeps_constants_and_mean() {
        let (w, h) = (37, 23);
        let mut d = vec![0.25f32; w * h * 2];
        box_blur(&mut d, w, h, 2, 5);
        assert!(d.iter().all(|v| (v - 0.25).abs() < 1e-6));
        let mut d: Vec<f32> = (0..w * h).map(|i| (i % 7) as f32).collect();
        let before = d.clone();
        box_blur(&mut d, w, h, 1, 1);
        // Interior pixel (10, 10): the 3x3 mean.
        let mut s = 0.0;
        for y in 9..12 {
            for x in 9..12 {
                s += before[y * w + x];
            }
        }
        assert!((d[10 * w + 10] - s / 9.0).abs() < 1e-5);
    }

    #[test]
    fn box_blur_matches_a_naive_clamped_mean() {
        // Sizes around the radius and the band count, borders included.
        for (w, h, c, r) in [(9usize, 5usize, 3usize, 2usize), (4, 17, 2, 6), (31, 12, 1, 3)] {
            let src: Vec<f32> = (0..w * h * c).map(|i| ((i * 7919) % 101) as f32 / 101.0).collect();
            let mut d = src.clone();
            box_blur(&mut d, w, h, c, r);
            let ri = r as isize;
            for y in 0..h {
                for x in 0..w {
                    for k in 0..c {
                        let mut s = 0.0;
                        for dy in -ri..=ri {
                            for dx in -ri..=ri {
                                let yy = (y as isize + dy).clamp(0, h as isize - 1) as usize;
                                let xx = (x as isize + dx).clamp(0, w as isize - 1) as usize;
                                s += src[(yy * w + xx) * c + k];
                            }
                        }
                        let want = s / ((2 * r + 1) * (2 * r + 1)) as f32;
                        let got = d[(y * w + x) * c + k];
                        assert!((got - want).abs() < 1e-5, "{w}x{h}x{c} r{r} at ({x},{y},{k}): {got} vs {want}");
                    }
                }
            }
        }
    }

    #[test]
    fn polygon_coverage_is_area() {
        let sq = [[2.0, 2.0], [6.5, 2.0], [6.5, 5.25], [2.0, 5.25]];
        let m = rasterize_polygon(&sq, 10, 8);
        let area: f32 = m.as_raw().iter().sum();
        assert!((area - 4.5 * 3.25).abs() < 0.05, "{area}");
        assert_eq!(m.get_pixel(3, 3).0[0], 1.0);
        assert_eq!(m.get_pixel(8, 3).0[0], 0.0);
        assert!((m.get_pixel(6, 3).0[0] - 0.5).abs() < 1e-5);
        assert_eq!(rasterize_polygon(&[[0.0, 0.0], [f32::NAN, 1.0], [2.0, 2.0]], 4, 4).as_raw().iter().sum::<f32>(), 0.0);
    }
}
