//! Depthwise 3x3 stride-1 SAME convolution on small maps (up to 24 wide) with AVX-512, each plane
//! read as one flat run of pixels.
//!
//! Why: on a 12x12 map a row is 12 of a vector's 16 lanes, and [`super::dwcv`] (channels as the
//! lanes) spends more on its channel-interleaved copy and the transposes back than on the
//! multiply-adds: 18.6 us for a 12x12x128 layer on one core (18 GFLOPS), 8.5 us here; 6x6x128
//! 5.8 -> 2.8 us. Here 16 consecutive pixels of a plane, whatever rows they
//! span, are one vector: tap `(dy, dx)` of those outputs is the load 16 pixels from
//! `i + (dy - 1) * w + dx - 1`, with the lanes whose source falls outside the map (the padding:
//! left of column 0, right of column `w - 1`, above row 0, below row `h - 1`) masked off. No copy,
//! no per-row setup, no wasted lanes (144 pixels are 9 full vectors). The masks depend only on
//! the pixel position, so they are worked out once per vector and serve every channel; eight
//! channels run at once for eight independent accumulator chains.

use std::arch::x86_64::*;

use super::{Activation, Geom};

/// Widest map this kernel takes: at 24 (36 vectors a plane) it is level with the four-row
/// whole-row kernel (rows of 16 + 8 lanes, 17.4 us for 24x24x64 either way) and keeps the whole
/// plane in one pass; wider rows fill their vectors, and the row kernel loads less per tap.
const MAX_WIDTH: usize = 24;

/// Whether [`band`] takes the depthwise shape `g` on this CPU: 3x3, stride 1, one pixel of
/// padding all round (output the input's size), at most [`MAX_WIDTH`] wide, AVX-512F.
pub(super) fn takes(g: &Geom) -> bool {
    super::has_avx512()
        && g.kh == 3
        && g.kw == 3
        && g.stride == 1
        && g.pt == 1
        && g.pl == 1
        && g.oh == g.h
        && g.ow == g.w
        && (1..=MAX_WIDTH).contains(&g.w)
        && g.h > 0
}

/// Output rows `oy0..oy0 + rows` of every channel of one image `x` (`c` planes of `h x w`):
/// channel `ch`'s `rows * w` values at `out + ch * ostride`. `weight` is `[c][9]`, `bias` `[c]`.
/// `false`, nothing written, when a size disagrees or the shape is not [`takes`]'s.
///
/// # Safety
/// `out + ch * ostride .. + rows * w` must be writable for every channel `ch < c`.
pub(super) unsafe fn band(x: &[f32], g: &Geom, weight: &[f32], bias: &[f32], act: Activation, oy0: usize, rows: usize, out: *mut f32, ostride: usize) -> bool {
    let c = g.c_in;
    let plane = g.h * g.w;
    if !takes(g) || x.len() < c * plane || weight.len() < 9 * c || bias.len() < c || oy0 + rows > g.h || (c > 1 && ostride < rows * g.w) {
        return false;
    }
    // SAFETY: AVX-512F is present (`takes`); reads are masked to the planes of `x`, writes to
    // each channel's `rows * w` outputs, which the caller guarantees.
    unsafe { band_z(x.as_ptr(), g.h, g.w, c, weight, bias, act, oy0, rows, out, ostride) };
    true
}

/// See [`band`].
#[target_feature(enable = "avx512f,avx2,fma")]
#[allow(unsafe_op_in_unsafe_fn, clippy::too_many_arguments)]
unsafe fn band_z(x: *const f32, h: usize, w: usize, c: usize, weight: &[f32], bias: &[f32], act: Activation, oy0: usize, rows: usize, out: *mut f32, ostride: usize) {
    let plane = h * w;
    let (start, end) = (oy0 * w, (oy0 + rows) * w);
    // Source offsets of the nine taps from an output pixel (row-major within the plane).
    let offs: [isize; 9] = std::array::from_fn(|t| (t / 3) as isize * w as isize - w as isize + (t % 3) as isize - 1);
    let mut i = start;
    while i < end {
        let valid = super::lanes16(end - i);
        // Lanes whose pixel is not in the first / last column (they may read left / right).
        let (mut not_first, mut not_last) = (0u16, 0u16);
        let mut col = i % w;
        for l in 0..16 {
            if col != 0 {
                not_first |= 1 << l;
            }
            if col != w - 1 {
                not_last |= 1 << l;
            }
            col = if col + 1 == w { 0 } else { col + 1 };
        }
        // Lanes whose pixel has a row above / below inside the map.
        let above = !super::lanes16(w.saturating_sub(i));
        let below = super::lanes16((plane - w).saturating_sub(i));
        let masks: [__mmask16; 9] = std::array::from_fn(|t| {
            let rowm = match t / 3 {
                0 => above,
                1 => 0xffff,
                _ => below,
            };
            let colm = match t % 3 {
                0 => not_first,
                1 => 0xffff,
                _ => not_last,
            };
            valid & rowm & colm
        });
        let o = out.add(i - start);
        let mut ch = 0;
        while ch + 8 <= c {
            channels::<8>(x, plane, i, &offs, &masks, weight, bias, ch, act, valid, o, ostride);
            ch += 8;
        }
        while ch < c {
            channels::<1>(x, plane, i, &offs, &masks, weight, bias, ch, act, valid, o, ostride);
            ch += 1;
        }
        i += 16;
    }
}

/// One vector of outputs (pixels `i..i + 16`) for channels `ch..ch + C`.
#[inline(always)]
#[allow(unsafe_op_in_unsafe_fn, clippy::too_many_arguments)]
unsafe fn channels<const C: usize>(x: *const f32, plane: usize, i: usize, offs: &[isize; 9], masks: &[__mmask16; 9], weight: &[f32], bias: &[f32], ch: usize, act: Activation, valid: __mmask16, out: *mut f32, ostride: usize) {
    let wp = weight.as_ptr().add(9 * ch);
    let mut acc: [__m512; C] = std::array::from_fn(|q| _mm512_set1_ps(*bias.as_ptr().add(ch + q)));
    for t in 0..9 {
        for (q, a) in acc.iter_mut().enumerate() {
            // Masked-off lanes are never read, so the address may lie outside the plane (or
            // before the image: hence the wrapping arithmetic).
            let src = x.wrapping_add((ch + q) * plane + i).wrapping_offset(offs[t]);
            *a = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(masks[t], src), _mm512_set1_ps(*wp.add(9 * q + t)), *a);
        }
    }
    for (q, a) in acc.iter().enumerate() {
        _mm512_mask_storeu_ps(out.add((ch + q) * ostride), valid, super::act_z(act, *a));
    }
}
