//! Geometric image operations shared by the models: affine warps into model input tensors.
//!
//! Coordinates are continuous pixel coordinates: pixel (i, j) covers [i, i+1) x [j, j+1), so its
//! centre is (i + 0.5, j + 0.5). An [`Affine`] maps destination coordinates to source coordinates.

use candle_core::{Device, Tensor};
use image::RgbImage;

use crate::error::Result;

/// `src = (a*x + b*y + c, d*x + e*y + f)` for a destination point `(x, y)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Affine {
    pub a: f32,
    pub b: f32,
    pub c: f32,
    pub d: f32,
    pub e: f32,
    pub f: f32,
}

impl Affine {
    pub const IDENTITY: Affine = Affine { a: 1.0, b: 0.0, c: 0.0, d: 0.0, e: 1.0, f: 0.0 };

    /// Scale then translate: `src = dst * s + t`.
    pub fn scale_translate(sx: f32, sy: f32, tx: f32, ty: f32) -> Self {
        Affine { a: sx, b: 0.0, c: tx, d: 0.0, e: sy, f: ty }
    }

    /// Rotation by `theta` (radians, counter-clockwise in image coordinates with y down means
    /// clockwise on screen) and uniform scale `s` about the origin, then translation.
    pub fn similarity(s: f32, theta: f32, tx: f32, ty: f32) -> Self {
        let (sin, cos) = theta.sin_cos();
        Affine { a: s * cos, b: -s * sin, c: tx, d: s * sin, e: s * cos, f: ty }
    }

    pub fn apply(&self, p: [f32; 2]) -> [f32; 2] {
        [self.a * p[0] + self.b * p[1] + self.c, self.d * p[0] + self.e * p[1] + self.f]
    }

    /// The inverse map, or `None` when degenerate.
    pub fn invert(&self) -> Option<Affine> {
        let det = self.a * self.e - self.b * self.d;
        if det.abs() < 1e-12 || !det.is_finite() {
            return None;
        }
        let (a, b, d, e) = (self.e / det, -self.b / det, -self.d / det, self.a / det);
        Some(Affine { a, b, c: -(a * self.c + b * self.f), d, e, f: -(d * self.c + e * self.f) })
    }

    /// `self ∘ other`: first `other`, then `self`.
    pub fn compose(&self, other: &Affine) -> Affine {
        Affine {
            a: self.a * other.a + self.b * other.d,
            b: self.a * other.b + self.b * other.e,
            c: self.a * other.c + self.b * other.f + self.c,
            d: self.d * other.a + self.e * other.d,
            e: self.d * other.b + self.e * other.e,
            f: self.d * other.c + self.e * other.f + self.f,
        }
    }
}

/// What a sample outside the source image reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Border {
    /// Black (value 0 before normalisation).
    Zero,
    /// The nearest edge pixel.
    Replicate,
}

/// Bilinear sample of channel values at continuous source coordinates (x, y).
#[inline]
fn sample(img: &RgbImage, x: f32, y: f32, border: Border) -> [f32; 3] {
    let (w, h) = (img.width() as i64, img.height() as i64);
    let fx = x - 0.5;
    let fy = y - 0.5;
    let x0 = fx.floor();
    let y0 = fy.floor();
    let tx = fx - x0;
    let ty = fy - y0;
    let (x0, y0) = (x0 as i64, y0 as i64);
    let raw = img.as_raw();
    let mut out = [0f32; 3];
    for (dy, wy) in [(0i64, 1.0 - ty), (1, ty)] {
        for (dx, wx) in [(0i64, 1.0 - tx), (1, tx)] {
            let wgt = wx * wy;
            if wgt == 0.0 {
                continue;
            }
            let (mut xi, mut yi) = (x0 + dx, y0 + dy);
            if xi < 0 || yi < 0 || xi >= w || yi >= h {
                match border {
                    Border::Zero => continue,
                    Border::Replicate => {
                        xi = xi.clamp(0, w - 1);
                        yi = yi.clamp(0, h - 1);
                    }
                }
            }
            let o = ((yi * w + xi) * 3) as usize;
            out[0] += wgt * raw[o] as f32;
            out[1] += wgt * raw[o + 1] as f32;
            out[2] += wgt * raw[o + 2] as f32;
        }
    }
    out
}

/// Warps `img` into a `[1, 3, out_h, out_w]` f32 tensor (RGB planes), mapping 0..255 to `range`.
/// `src_from_dst` maps destination coordinates to source coordinates.
pub fn warp_to_tensor(
    img: &RgbImage,
    src_from_dst: &Affine,
    out_w: usize,
    out_h: usize,
    range: (f32, f32),
    border: Border,
    device: &Device,
) -> Result<Tensor> {
    let plane = out_w * out_h;
    let mut data = vec![0f32; 3 * plane];
    let scale = (range.1 - range.0) / 255.0;
    for j in 0..out_h {
        for i in 0..out_w {
            let p = src_from_dst.apply([i as f32 + 0.5, j as f32 + 0.5]);
            let v = sample(img, p[0], p[1], border);
            let o = j * out_w + i;
            data[o] = v[0] * scale + range.0;
            data[plane + o] = v[1] * scale + range.0;
            data[2 * plane + o] = v[2] * scale + range.0;
        }
    }
    Ok(Tensor::from_vec(data, (1, 3, out_h, out_w), device)?)
}

/// Warps `img` into a new `out_w x out_h` RGB image.
pub fn warp_rgb(img: &RgbImage, src_from_dst: &Affine, out_w: u32, out_h: u32, border: Border) -> RgbImage {
    let mut out = RgbImage::new(out_w, out_h);
    for (i, j, px) in out.enumerate_pixels_mut() {
        let p = src_from_dst.apply([i as f32 + 0.5, j as f32 + 0.5]);
        let v = sample(img, p[0], p[1], border);
        px.0 = [v[0].round() as u8, v[1].round() as u8, v[2].round() as u8];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invert_round_trips() {
        let m = Affine::similarity(1.7, 0.3, 12.0, -4.0);
        let inv = m.invert().expect("invertible");
        let p = [33.0, 17.5];
        let q = inv.apply(m.apply(p));
        assert!((p[0] - q[0]).abs() < 1e-4 && (p[1] - q[1]).abs() < 1e-4);
        let id = m.compose(&inv);
        assert!((id.a - 1.0).abs() < 1e-5 && id.b.abs() < 1e-5 && id.c.abs() < 1e-3);
    }

    #[test]
    fn identity_warp_is_exact() {
        let mut img = RgbImage::new(5, 4);
        for (i, j, p) in img.enumerate_pixels_mut() {
            p.0 = [(i * 40) as u8, (j * 50) as u8, 7];
        }
        let out = warp_rgb(&img, &Affine::IDENTITY, 5, 4, Border::Zero);
        assert_eq!(out, img);
        let t = warp_to_tensor(&img, &Affine::IDENTITY, 5, 4, (0.0, 255.0), Border::Zero, &Device::Cpu)
            .and_then(|t| Ok(t.flatten_all()?.to_vec1::<f32>()?))
            .expect("tensor");
        assert_eq!(t[4], 160.0);
        assert_eq!(t[20 + 5], 50.0);
    }
}

/// A single-channel float image (masks, mattes, probabilities in [0, 1]).
pub type Mask = image::ImageBuffer<image::Luma<f32>, Vec<f32>>;

/// Averages `factor x factor` pixel blocks (edge blocks average the pixels they have), so output
/// pixel `(i, j)` covers source `[i*factor, (i+1)*factor)`. A cheap anti-aliasing reduction before
/// a bilinear warp shrinks a large photo many times (bilinear sampling alone would alias).
pub fn box_downscale(img: &RgbImage, factor: u32) -> RgbImage {
    let f = factor.max(1) as usize;
    let (w, h) = (img.width() as usize, img.height() as usize);
    if w == 0 || h == 0 {
        return RgbImage::new(0, 0);
    }
    let (ow, oh) = (w.div_ceil(f), h.div_ceil(f));
    let raw = img.as_raw();
    let mut out = vec![0u8; ow * oh * 3];
    let mut sums = vec![0u32; ow * 3];
    for (oy, out_row) in out.chunks_exact_mut(ow * 3).enumerate() {
        sums.iter_mut().for_each(|s| *s = 0);
        let rows = (oy * f..((oy + 1) * f).min(h)).len();
        for row in raw.chunks_exact(w * 3).skip(oy * f).take(rows) {
            for (ox, block) in row.chunks(f * 3).enumerate() {
                let (mut r, mut g, mut b) = (0u32, 0u32, 0u32);
                for px in block.chunks_exact(3) {
                    r += px[0] as u32;
                    g += px[1] as u32;
                    b += px[2] as u32;
                }
                if let Some(s) = sums.get_mut(ox * 3..ox * 3 + 3) {
                    s[0] += r;
                    s[1] += g;
                    s[2] += b;
                }
            }
        }
        for (ox, (o, s)) in out_row.chunks_exact_mut(3).zip(sums.chunks_exact(3)).enumerate() {
            let cols = (ox * f..((ox + 1) * f).min(w)).len();
            let n = (rows * cols).max(1) as u32;
            for c in 0..3 {
                o[c] = ((s[c] + n / 2) / n) as u8;
            }
        }
    }
    RgbImage::from_raw(ow as u32, oh as u32, out).unwrap_or_else(|| RgbImage::new(ow as u32, oh as u32))
}
