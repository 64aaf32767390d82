//! Depthwise 3x3 / 5x5 convolution with the channels as the vector lanes, for the small and the
//! strided maps of the small nets (24x24 down to 3x3, and every stride-2 layer).
//!
//! Why: the row kernels in `nn.rs` vectorise along a plane's row. On a 12x12 map a row is one
//! 8-lane block and a tail, and every one of 128 planes pays its own setup, edge columns and
//! padding; a stride-2 layer first splits its rows into column phases. Measured on the face
//! mesh's shapes (one thread): 2-15 GFLOPS on those layers against 44 on a 96x96 map. Here the
//! band's input rows are copied once into a zero-padded, channel-interleaved buffer (`[row][column]
//! [channel]`, 8x8 register transposes), each tap of 8 output pixels is then one 8-channel load
//! per pixel with the tap's weights in a register, and the 8x8 results are transposed back and
//! stored as 8-pixel runs of the planar output. No edge cases per plane, no per-row setup.
//!
//! With AVX-512 the 3x3 shapes of the face mesh and BlazeFace go elsewhere (stride 1 SAME up to
//! 24 wide: `dwflat`; stride 2 without top / left padding: `dw3s2_rows_z`), both reading the
//! planes in place; this kernel keeps 5x5, other paddings, and CPUs with AVX2 only.

use std::arch::x86_64::*;

use super::{Activation, Geom};

/// Widest output map this kernel takes at stride 1 (wider rows are the row kernels' best case).
const MAX_STRIDE1_WIDTH: usize = 32;
/// The same for 3x3 with AVX-512, whose row kernel takes whole 3x3 rows four at a time: a 24x24x64 layer
/// 36 -> 17.5 us there on one core; a 12x12 one was faster here (19 against 34 us). Only paddings
/// other than one pixel all round reach this now (`dwflat` takes those maps up to 24 wide).
const MAX_STRIDE1_WIDTH_Z: usize = 16;

/// Channels rounded up to a whole number of 8-lane blocks.
pub(super) fn lanes(c: usize) -> usize {
    c.div_ceil(8) * 8
}

/// Whether this kernel takes the depthwise shape `g` on this CPU: AVX2 + FMA, 3x3 or 5x5, stride
/// 1 on maps up to 32 wide (3x3 with AVX-512: 16) or stride 2, and at least 8 channels.
pub(super) fn takes(g: &Geom) -> bool {
    super::has_avx2_fma()
        && g.c_in >= 8
        && g.kh == g.kw
        && matches!(g.kh, 3 | 5)
        && (g.stride == 2 || (g.stride == 1 && g.ow <= if g.kh == 3 && super::has_avx512() { MAX_STRIDE1_WIDTH_Z } else { MAX_STRIDE1_WIDTH }))
        // Wide stride-2 maps read in place by the AVX-512 kernel, where it takes them.
        && !super::dw3s2_direct(g)
        // Small stride-1 3x3 maps read flat by the AVX-512 kernel.
        && !super::dwflat::takes(g)
        && g.oh > 0
        && g.ow > 0
}

/// The weights `[c, 1, k, k]` and bias `[c]` repacked as `[k * k][lanes(c)]` then `[lanes(c)]`
/// (zero past `c`): tap `t`'s weights for 8 channels are one load.
pub(super) fn pack(weight: &[f32], bias: &[f32], c: usize, taps: usize) -> Vec<f32> {
    let l = lanes(c);
    let mut out = vec![0.0; (taps + 1) * l];
    for ch in 0..c.min(bias.len()) {
        for t in 0..taps {
            out[t * l + ch] = weight.get(ch * taps + t).copied().unwrap_or(0.0);
        }
        out[taps * l + ch] = bias[ch];
    }
    out
}

/// Floats of the channel-interleaved input of output rows `oy0..oy0 + rows`.
pub(super) fn input_len(g: &Geom, rows: usize) -> usize {
    let (prows, pwid) = padded_dims(g, rows);
    prows * pwid * lanes(g.c_in)
}

/// Padded input rows and columns that output rows `rows` (any `oy0`) read.
fn padded_dims(g: &Geom, rows: usize) -> (usize, usize) {
    ((rows.max(1) - 1) * g.stride + g.kh, (g.ow - 1) * g.stride + g.kw)
}

/// Output rows `oy0..oy0 + rows` of one image `x` (`[c, h, w]`): channel `ch`, band pixel `q`
/// (`q = (oy - oy0) * ow + ox`) is written to `out[ch * ors + q]`. `packed` is [`pack`]'s
/// output, `buf` a scratch of at least [`input_len`] floats. `false`, nothing written, when the
/// sizes disagree or the shape is not one [`takes`] accepts.
///
/// # Safety
/// `out` is valid for writes of `out_len` floats, and nothing else reads or writes the values
/// this call writes (`out[ch * ors + q]`, `q < rows * ow`) while it runs. Other values of that
/// range are neither read nor written.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn band(x: &[f32], g: &Geom, packed: &[f32], act: Activation, oy0: usize, rows: usize, buf: &mut [f32], out: *mut f32, out_len: usize, ors: usize) -> bool {
    let (c, l) = (g.c_in, lanes(g.c_in));
    let taps = g.kh * g.kw;
    let npx = rows * g.ow;
    let need_out = if npx == 0 { 0 } else { (c - 1) * ors + npx };
    if !takes(g) || x.len() < c * g.h * g.w || packed.len() < (taps + 1) * l || buf.len() < input_len(g, rows) || out_len < need_out || npx > ors || oy0 + rows > g.oh {
        return false;
    }
    if npx == 0 {
        return true;
    }
    let (_, pwid) = padded_dims(g, rows);
    // SAFETY: AVX2 + FMA are present (`takes`); `buf` holds the padded input (checked above),
    // every tap of every output pixel reads inside it (the padded dims cover the last output's
    // window), and every store lands in `out` (channel rows `ors` apart, `npx <= ors`, within
    // `out_len`: the caller's contract).
    unsafe {
        fill(x, g, oy0, rows, l, buf);
        let o = out;
        let (xt, w) = (buf.as_ptr(), packed.as_ptr());
        let s = g.stride;
        macro_rules! go {
            ($k:literal, $t:literal) => {{
                let toff: [usize; $t] = std::array::from_fn(|t| ((t / $k) * pwid + t % $k) * l);
                match act {
                    Activation::Identity => run::<$t, 0>(xt, &toff, w, l, c, s, pwid, g.ow, npx, o, ors),
                    Activation::Relu => run::<$t, 1>(xt, &toff, w, l, c, s, pwid, g.ow, npx, o, ors),
                    Activation::Relu6 => run::<$t, 2>(xt, &toff, w, l, c, s, pwid, g.ow, npx, o, ors),
                    Activation::HardSwish => run::<$t, 3>(xt, &toff, w, l, c, s, pwid, g.ow, npx, o, ors),
                }
            }};
        }
        if g.kh == 3 {
            go!(3, 9)
        } else {
            go!(5, 25)
        }
    }
    true
}

/// The 8x8 transpose of `r` (row `i` becomes column `i`).
#[inline(always)]
unsafe fn transpose8(r: &mut [__m256; 8]) {
    let t0 = _mm256_unpacklo_ps(r[0], r[1]);
    let t1 = _mm256_unpackhi_ps(r[0], r[1]);
    let t2 = _mm256_unpacklo_ps(r[2], r[3]);
    let t3 = _mm256_unpackhi_ps(r[2], r[3]);
    let t4 = _mm256_unpacklo_ps(r[4], r[5]);
    let t5 = _mm256_unpackhi_ps(r[4], r[5]);
    let t6 = _mm256_unpacklo_ps(r[6], r[7]);
    let t7 = _mm256_unpackhi_ps(r[6], r[7]);
    let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
    let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
    let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
    let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
    let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
    let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
    let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
    let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
    r[0] = _mm256_permute2f128_ps::<0x20>(u0, u4);
    r[1] = _mm256_permute2f128_ps::<0x20>(u1, u5);
    r[2] = _mm256_permute2f128_ps::<0x20>(u2, u6);
    r[3] = _mm256_permute2f128_ps::<0x20>(u3, u7);
    r[4] = _mm256_permute2f128_ps::<0x31>(u0, u4);
    r[5] = _mm256_permute2f128_ps::<0x31>(u1, u5);
    r[6] = _mm256_permute2f128_ps::<0x31>(u2, u6);
    r[7] = _mm256_permute2f128_ps::<0x31>(u3, u7);
}

/// Copies input rows `oy0 * s - pt ..` of the image into `dst` as `[padded row][padded column]
/// [l channels]`, zero outside the image and past channel `c`.
#[target_feature(enable = "avx2,fma")]
unsafe fn fill(x: &[f32], g: &Geom, oy0: usize, rows: usize, l: usize, dst: &mut [f32]) {
    let (c, h, w) = (g.c_in, g.h, g.w);
    let (prows, pwid) = padded_dims(g, rows);
    // Padded columns lo..hi hold image columns 0..hi - lo.
    let lo = g.pl.min(pwid);
    let hi = (g.pl + w).min(pwid);
    let cols = hi - lo;
    let xp = x.as_ptr();
    for r in 0..prows {
        let drow = &mut dst[r * pwid * l..(r + 1) * pwid * l];
        let iy = (oy0 * g.stride + r).checked_sub(g.pt).filter(|&iy| iy < h);
        let Some(iy) = iy.filter(|_| cols > 0) else {
            drow.fill(0.0);
            continue;
        };
        drow[..lo * l].fill(0.0);
        drow[hi * l..].fill(0.0);
        let dp = drow.as_mut_ptr().add(lo * l);
        let src = xp.add(iy * w);
        let full_c = c / 8 * 8;
        let full_x = cols / 8 * 8;
        let mut c0 = 0;
        while c0 < full_c {
            let mut x0 = 0;
            while x0 < full_x {
                let mut v: [__m256; 8] = std::array::from_fn(|j| _mm256_loadu_ps(src.add((c0 + j) * h * w + x0)));
                transpose8(&mut v);
                for (i, vi) in v.iter().enumerate() {
                    _mm256_storeu_ps(dp.add((x0 + i) * l + c0), *vi);
                }
                x0 += 8;
            }
            for xi in full_x..cols {
                for j in 0..8 {
                    *dp.add(xi * l + c0 + j) = *src.add((c0 + j) * h * w + xi);
                }
            }
            c0 += 8;
        }
        if full_c < l {
            for xi in 0..cols {
                for ch in full_c..l {
                    *dp.add(xi * l + ch) = if ch < c { *src.add(ch * h * w + xi) } else { 0.0 };
                }
            }
        }
    }
}

/// `act` (0 identity, 1 ReLU, 2 ReLU6, 3 hard-swish) on 8 lanes, chosen at compile time.
#[inline(always)]
unsafe fn act_v<const A: u8>(v: __m256) -> __m256 {
    match A {
        1 => _mm256_max_ps(v, _mm256_setzero_ps()),
        2 => _mm256_min_ps(_mm256_max_ps(v, _mm256_setzero_ps()), _mm256_set1_ps(6.0)),
        3 => {
            let g = _mm256_min_ps(_mm256_max_ps(_mm256_add_ps(v, _mm256_set1_ps(3.0)), _mm256_setzero_ps()), _mm256_set1_ps(6.0));
            _mm256_mul_ps(v, _mm256_mul_ps(g, _mm256_set1_ps(1.0 / 6.0)))
        }
        _ => v,
    }
}

/// The band's outputs, 8 pixels x 8 channels at a time (see [`band`]); `toff[t]` is tap `t`'s
/// offset from a pixel's window origin in the interleaved input.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn run<const T: usize, const A: u8>(xt: *const f32, toff: &[usize; T], w: *const f32, l: usize, c: usize, s: usize, pwid: usize, ow: usize, npx: usize, out: *mut f32, ors: usize) {
    let bias = w.add(T * l);
    let mut q0 = 0;
    while q0 < npx {
        // The last group repeats the band's last pixel in its unused lanes (not stored).
        let base: [usize; 8] = std::array::from_fn(|i| {
            let q = (q0 + i).min(npx - 1);
            ((q / ow) * s * pwid + (q % ow) * s) * l
        });
        let valid = (npx - q0).min(8);
        let mut cb = 0;
        while cb < c {
            let b = _mm256_loadu_ps(bias.add(cb));
            let mut acc = [b; 8];
            for (t, &off) in toff.iter().enumerate() {
                let wv = _mm256_loadu_ps(w.add(t * l + cb));
                let p = xt.add(off + cb);
                for i in 0..8 {
                    acc[i] = _mm256_fmadd_ps(_mm256_loadu_ps(p.add(base[i])), wv, acc[i]);
                }
            }
            for a in acc.iter_mut() {
                *a = act_v::<A>(*a);
            }
            transpose8(&mut acc);
            for (j, a) in acc.iter().enumerate().take(c - cb) {
                let o = out.add((cb + j) * ors + q0);
                if valid == 8 {
                    _mm256_storeu_ps(o, *a);
                } else {
                    let mut tmp = [0f32; 8];
                    _mm256_storeu_ps(tmp.as_mut_ptr(), *a);
                    std::ptr::copy_nonoverlapping(tmp.as_ptr(), o, valid);
                }
            }
            cb += 8;
        }
        q0 += 8;
    }
}
