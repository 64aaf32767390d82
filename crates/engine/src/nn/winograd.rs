//! Winograd F(2x2, 3x3): a 3x3, stride-1, "same"-padded dense convolution as 16 matrix products over
//! 2x2 output tiles, with 2.25x fewer multiply-adds than im2col + `gemm`. It carries the big
//! convolutions of the diffusion UNet and VAE (hundreds of channels on 32x32 and larger maps), where
//! the time is in the products and the transforms are a few passes over memory.
//!
//! Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks" (2016): with 4x4 input tiles `d`
//! overlapping by 2, `Y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A`. The transforms use only ±1 and ½, so the
//! result differs from the direct sum by rounding alone (about 1e-6 relative; tests hold 1e-5).
//!
//! Per block of whole tile rows of one image (`t` tiles), the buffers are `U [c_out][16][c_in]`
//! (the weights, transformed per call: 16 values per filter pair, well under 1% of the products'
//! work at the sizes taken), `V [c_in][16][t]` and `M [c_out][16][t]`; product `k` is
//! `M[.., k, ..] = U[.., k, ..] · V[.., k, ..]`, strided views that `gemm` packs anyway. Blocks are
//! sized so that `V` and `M` stay under [`BLOCK_FLOATS`]. Bias, an optional residual and the
//! activation are applied in the output transform's single store. Threads: rayon's global pool,
//! over channels in the transforms and over the 16 products.

use std::cell::RefCell;
use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::{with_buffer, Activation, Geom};

/// Most floats of `V` plus `M` per block (96 MB).
const BLOCK_FLOATS: usize = 24 << 20;
/// Most floats of `U` at once (64 MB); wider layers go in blocks of output channels.
const U_FLOATS: usize = 16 << 20;
/// Fewest output tiles over the batch worth the transforms (one 16x16 map has 64; two 8x8 maps,
/// where the products are as fast as im2col's, have 32).
const MIN_TILES: usize = 64;
/// Fewest input and output channels worth the transforms.
const MIN_CHANNELS: usize = 32;

thread_local! {
    static U_BUF: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static V_BUF: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static M_BUF: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Whether this convolution is Winograd's: 3x3, stride 1, one pixel of padding on every side, enough
/// channels and tiles for the transforms to pay.
pub(super) fn takes(g: &Geom) -> bool {
    shape_fits(g) && g.c_in >= MIN_CHANNELS && g.c_out >= MIN_CHANNELS && g.n * g.h.div_ceil(2) * g.w.div_ceil(2) >= MIN_TILES
}

fn shape_fits(g: &Geom) -> bool {
    g.kh == 3 && g.kw == 3 && g.stride == 1 && g.pt == 1 && g.pl == 1 && g.oh == g.h && g.ow == g.w && g.h > 0 && g.w > 0
}

/// `out = act(conv(x) + bias + residual)` over the whole batch (`x` `[n, c_in, h, w]`, `weight`
/// `[c_out, c_in, 3, 3]`, `residual` and `out` `[n, c_out, h, w]`); every value of `out` is written.
/// `false` (nothing written) when the shape is not [`shape_fits`] or the sizes disagree.
pub(super) fn run(g: &Geom, x: &[f32], weight: &[f32], bias: &[f32], act: Activation, residual: Option<&[f32]>, out: &mut [MaybeUninit<f32>]) -> bool {
    run_blocked(g, x, weight, bias, act, residual, out, (BLOCK_FLOATS, U_FLOATS))
}

/// [`run`] with the block bounds (floats of `V` + `M`, of `U`) given; tests make them small to split.
#[allow(clippy::too_many_arguments)]
fn run_blocked(
    g: &Geom,
    x: &[f32],
    weight: &[f32],
    bias: &[f32],
    act: Activation,
    residual: Option<&[f32]>,
    out: &mut [MaybeUninit<f32>],
    (block_floats, u_floats): (usize, usize),
) -> bool {
    let (ci_n, co_n, hw) = (g.c_in, g.c_out, g.h * g.w);
    let sizes_ok = x.len() == g.n * ci_n * hw
        && weight.len() == co_n * ci_n * 9
        && bias.len() == co_n
        && out.len() == g.n * co_n * hw
        && residual.is_none_or(|r| r.len() == out.len());
    if !shape_fits(g) || !sizes_ok || out.is_empty() || ci_n == 0 {
        return false;
    }
    // Blocks are runs of whole tile rows counted over the batch (image `b`'s row `ty` is `b * ty_n + ty`),
    // so small maps of several images share one set of products.
    let (tx_n, ty_n) = (g.w.div_ceil(2), g.h.div_ceil(2));
    let all_rows = g.n * ty_n;
    let cb = (u_floats / (16 * ci_n)).clamp(1, co_n);
    let rows = (block_floats / (16 * (ci_n + cb) * tx_n)).clamp(1, all_rows);
    with_buffer(&U_BUF, cb * 16 * ci_n, |u| {
        with_buffer(&V_BUF, ci_n * 16 * rows * tx_n, |v| {
            with_buffer(&M_BUF, cb * 16 * rows * tx_n, |m| {
                for r0 in (0..all_rows).step_by(rows) {
                    let block = r0..(r0 + rows).min(all_rows);
                    let t = block.len() * tx_n;
                    let v = &mut v[..ci_n * 16 * t];
                    transform_input(g, x, block.clone(), v);
                    for c0 in (0..co_n).step_by(cb) {
                        let chans = c0..(c0 + cb).min(co_n);
                        let (u, m) = (&mut u[..chans.len() * 16 * ci_n], &mut m[..chans.len() * 16 * t]);
                        transform_weights(&weight[c0 * ci_n * 9..chans.end * ci_n * 9], ci_n, u);
                        products(u, v, m, ci_n, chans.len(), t);
                        transform_output(g, m, block.clone(), chans, bias, act, residual, out);
                    }
                }
            })
        })
    });
    true
}

/// `U = G g Gᵀ` for every filter pair, `G = [[1, 0, 0], [½, ½, ½], [½, -½, ½], [0, 0, 1]]`.
fn transform_weights(weight: &[f32], ci_n: usize, u: &mut [f32]) {
    u.par_chunks_mut(16 * ci_n).zip(weight.par_chunks(9 * ci_n)).for_each(|(uc, wc)| {
        for (ci, g) in wc.chunks_exact(9).enumerate() {
            // t = G g (4 x 3), then U = t Gᵀ (4 x 4).
            let mut t = [[0f32; 3]; 4];
            for c in 0..3 {
                let (g0, g1, g2) = (g[c], g[3 + c], g[6 + c]);
                t[0][c] = g0;
                t[1][c] = 0.5 * (g0 + g1 + g2);
                t[2][c] = 0.5 * (g0 - g1 + g2);
                t[3][c] = g2;
            }
            for (i, r) in t.iter().enumerate() {
                let row = [r[0], 0.5 * (r[0] + r[1] + r[2]), 0.5 * (r[0] - r[1] + r[2]), r[2]];
                for (j, val) in row.into_iter().enumerate() {
                    uc[(i * 4 + j) * ci_n + ci] = val;
                }
            }
        }
    });
}

/// `V = Bᵀ d B` for the tiles of the batch's tile rows `block`, every input channel;
/// `Bᵀ = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]`.
fn transform_input(g: &Geom, x: &[f32], block: std::ops::Range<usize>, v: &mut [f32]) {
    let (h, w, hw) = (g.h, g.w, g.h * g.w);
    let (tx_n, ty_n) = (w.div_ceil(2), h.div_ceil(2));
    let t = block.len() * tx_n;
    // Padded column `2c` (input column `2c - 1`) and `2c + 1` of a row, split into even and odd
    // halves of `e = tx_n + 1` values: every tile then reads runs, and each loop below vectorises.
    let e = tx_n + 1;
    v.par_chunks_mut(16 * t).enumerate().for_each_init(
        || vec![0f32; 16 * e],
        |buf, (ci, vc)| {
            let (d, r) = buf.split_at_mut(8 * e);
            for (k, row_id) in block.clone().enumerate() {
                let (b, ty) = (row_id / ty_n, row_id % ty_n);
                let plane = &x[(b * g.c_in + ci) * hw..(b * g.c_in + ci + 1) * hw];
                // d: rows 0..4 of the tile row, each as [even half | odd half].
                for (i, dr) in d.chunks_exact_mut(2 * e).enumerate() {
                    let (ev, od) = dr.split_at_mut(e);
                    match (2 * ty + i).checked_sub(1).filter(|&iy| iy < h) {
                        Some(iy) => {
                            let row = &plane[iy * w..(iy + 1) * w];
                            ev[0] = 0.0;
                            for (c, o) in ev.iter_mut().enumerate().skip(1) {
                                *o = row.get(2 * c - 1).copied().unwrap_or(0.0);
                            }
                            for (c, o) in od.iter_mut().enumerate() {
                                *o = row.get(2 * c).copied().unwrap_or(0.0);
                            }
                        }
                        None => dr.fill(0.0),
                    }
                }
                // r: the row combinations Bᵀ d, in the same [even | odd] layout.
                let (d0, rest) = d.split_at(2 * e);
                let (d1, rest) = rest.split_at(2 * e);
                let (d2, d3) = rest.split_at(2 * e);
                let (r0, rest) = r.split_at_mut(2 * e);
                let (r1, rest) = rest.split_at_mut(2 * e);
                let (r2, r3) = rest.split_at_mut(2 * e);
                for (((((a, b), c), dd), o0), ((o1, o2), o3)) in
                    d0.iter().zip(d1).zip(d2).zip(d3).zip(r0.iter_mut()).zip(r1.iter_mut().zip(r2.iter_mut()).zip(r3.iter_mut()))
                {
                    *o0 = a - c;
                    *o1 = b + c;
                    *o2 = c - b;
                    *o3 = b - dd;
                }
                // The column combinations (· B): four runs of `tx_n` values per row combination.
                let off = k * tx_n;
                for (i, ri) in [&*r0, &*r1, &*r2, &*r3].into_iter().enumerate() {
                    let (ev, od) = ri.split_at(e);
                    let (e0, e1, o0, o1) = (&ev[..tx_n], &ev[1..], &od[..tx_n], &od[1..]);
                    let at = |j: usize| (i * 4 + j) * t + off;
                    let diff = |o: &mut [f32], a: &[f32], b: &[f32]| o.iter_mut().zip(a.iter().zip(b)).for_each(|(o, (a, b))| *o = a - b);
                    diff(&mut vc[at(0)..at(0) + tx_n], e0, e1);
                    vc[at(1)..at(1) + tx_n].iter_mut().zip(o0.iter().zip(e1)).for_each(|(o, (a, b))| *o = a + b);
                    diff(&mut vc[at(2)..at(2) + tx_n], e1, o0);
                    diff(&mut vc[at(3)..at(3) + tx_n], o0, o1);
                }
            }
        },
    );
}

/// The 16 products `M[.., k, ..] = U[.., k, ..] · V[.., k, ..]`, shared out over rayon's threads.
fn products(u: &[f32], v: &[f32], m: &mut [f32], ci_n: usize, co_n: usize, t: usize) {
    // Raw addresses cross the thread boundary; product `k` writes only its own rows of `M`.
    let (up, vp, mp) = (u.as_ptr() as usize, v.as_ptr() as usize, m.as_mut_ptr() as usize);
    debug_assert!(u.len() >= co_n * 16 * ci_n && v.len() >= ci_n * 16 * t && m.len() >= co_n * 16 * t);
    (0..16usize).into_par_iter().for_each(|k| {
        // SAFETY: the three buffers hold `[co_n][16][ci_n]`, `[ci_n][16][t]` and `[co_n][16][t]`
        // floats (checked by the callers' sizes); the strided views of product `k` stay inside them,
        // and no two products write the same element of `M`.
        unsafe {
            gemm::gemm(
                co_n,
                t,
                ci_n,
                (mp as *mut f32).add(k * t),
                1,
                (16 * t) as isize,
                false,
                (up as *const f32).add(k * ci_n),
                1,
                (16 * ci_n) as isize,
                (vp as *const f32).add(k * t),
                1,
                (16 * t) as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    });
}

/// `Y = Aᵀ m A` per tile (`Aᵀ = [[1, 1, 1, 0], [0, 1, -1, -1]]`), then `act(y + bias + residual)`
/// into the output rows of the batch's tile rows `block`, output channels `chans` (`m` holds those).
#[allow(clippy::too_many_arguments)]
fn transform_output(
    g: &Geom,
    m: &[f32],
    block: std::ops::Range<usize>,
    chans: std::ops::Range<usize>,
    bias: &[f32],
    act: Activation,
    res: Option<&[f32]>,
    out: &mut [MaybeUninit<f32>],
) {
    let (h, w, hw) = (g.h, g.w, g.h * g.w);
    let (tx_n, ty_n) = (w.div_ceil(2), h.div_ceil(2));
    let t = block.len() * tx_n;
    // One task per output plane (image `b`, channel `co`); it finishes the block's rows of its image.
    out.par_chunks_mut(hw).enumerate().for_each_init(
        || vec![0f32; 6 * tx_n],
        |buf, (p, plane)| {
            let (img, co) = (p / g.c_out, p % g.c_out);
            let rows = block.start.max(img * ty_n)..block.end.min((img + 1) * ty_n);
            if rows.is_empty() || !chans.contains(&co) {
                return;
            }
            let b = bias[co];
            let mc = &m[(co - chans.start) * 16 * t..(co - chans.start + 1) * 16 * t];
            let rp = res.map(|r| &r[p * hw..(p + 1) * hw]);
            let (s, y) = buf.split_at_mut(4 * tx_n);
            for row_id in rows {
                let (ty, off) = (row_id % ty_n, (row_id - block.start) * tx_n);
                let ms: [&[f32]; 16] = std::array::from_fn(|i| &mc[i * t + off..i * t + off + tx_n]);
                for oy in 2 * ty..(2 * ty + 2).min(h) {
                    // s_j = (Aᵀ m)_row, j = 0..4: rows 0 + 1 + 2 (top output row) or 1 - 2 - 3 (bottom).
                    for (j, sj) in s.chunks_exact_mut(tx_n).enumerate() {
                        let (a, bb, c, d) = (ms[j], ms[4 + j], ms[8 + j], ms[12 + j]);
                        if oy % 2 == 0 {
                            sj.iter_mut().zip(a.iter().zip(bb).zip(c)).for_each(|(o, ((a, b), c))| *o = a + b + c);
                        } else {
                            sj.iter_mut().zip(bb.iter().zip(c).zip(d)).for_each(|(o, ((b, c), d))| *o = b - c - d);
                        }
                    }
                    // (· A): even output columns s0 + s1 + s2, odd ones s1 - s2 - s3.
                    let (s0, rest) = s.split_at(tx_n);
                    let (s1, rest) = rest.split_at(tx_n);
                    let (s2, s3) = rest.split_at(tx_n);
                    let (ye, yo) = y.split_at_mut(tx_n);
                    ye.iter_mut().zip(s0.iter().zip(s1).zip(s2)).for_each(|(o, ((a, b), c))| *o = a + b + c);
                    yo.iter_mut().zip(s1.iter().zip(s2).zip(s3)).for_each(|(o, ((a, b), c))| *o = a - b - c);
                    let row = &mut plane[oy * w..(oy + 1) * w];
                    // Interleave into the row with the bias, residual and activation in the one store.
                    let pairs = row.chunks_mut(2).zip(ye.iter().zip(yo.iter()));
                    match rp.map(|r| &r[oy * w..(oy + 1) * w]) {
                        Some(rr) => {
                            for ((o, (e, d)), r) in pairs.zip(rr.chunks(2)) {
                                for ((o, v), r) in o.iter_mut().zip([e, d]).zip(r) {
                                    *o = MaybeUninit::new(act.apply(v + b + r));
                                }
                            }
                        }
                        None => {
                            for (o, (e, d)) in pairs {
                                for (o, v) in o.iter_mut().zip([e, d]) {
                                    *o = MaybeUninit::new(act.apply(v + b));
                                }
                            }
                        }
                    }
                }
            }
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The direct sum, in f64.
    fn reference(g: &Geom, x: &[f32], wt: &[f32], bias: &[f32]) -> Vec<f64> {
        let (h, w) = (g.h as isize, g.w as isize);
        let mut out = vec![0f64; g.n * g.c_out * g.h * g.w];
        for b in 0..g.n {
            for co in 0..g.c_out {
                for oy in 0..h {
                    for ox in 0..w {
                        let mut s = bias[co] as f64;
                        for ci in 0..g.c_in {
                            for ky in 0..3isize {
                                for kx in 0..3isize {
                                    let (iy, ix) = (oy + ky - 1, ox + kx - 1);
                                    if iy >= 0 && iy < h && ix >= 0 && ix < w {
                                        let xv = x[((b * g.c_in + ci) as isize * h + iy) as usize * g.w + ix as usize] as f64;
                                        s += xv * wt[((co * g.c_in + ci) * 9) + (ky * 3 + kx) as usize] as f64;
                                    }
                                }
                            }
                        }
                        out[((b * g.c_out + co) as isize * h + oy) as usize * g.w + ox as usize] = s;
                    }
                }
            }
        }
        out
    }

    fn noise(len: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s as f32 / u32::MAX as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn geom(n: usize, c_in: usize, c_out: usize, h: usize, w: usize) -> Geom {
        Geom { n, c_in, h, w, c_out, kh: 3, kw: 3, stride: 1, pt: 1, pl: 1, oh: h, ow: w }
    }

    /// Odd and even sizes, a map smaller than a tile, one channel, batch 2, with and without a residual
    /// and an activation, whole and split into blocks (tile rows across images, output channels):
    /// within 1e-5 of the direct sum (relative to the output's largest value).
    #[test]
    fn winograd_matches_the_direct_sum() {
        let shapes = [(1, 1, 1, 1, 1), (2, 3, 5, 7, 6), (1, 8, 4, 2, 9), (2, 16, 12, 17, 15), (1, 40, 33, 10, 12)];
        for (case, &(n, c_in, c_out, h, w)) in shapes.iter().enumerate() {
            let g = geom(n, c_in, c_out, h, w);
            let x = noise(n * c_in * h * w, case as u32);
            let wt = noise(c_out * c_in * 9, 100 + case as u32);
            let bias = noise(c_out, 200 + case as u32);
            let res = noise(n * c_out * h * w, 300 + case as u32);
            let want = reference(&g, &x, &wt, &bias);
            // Whole, then split into blocks of one tile row and of 3 output channels.
            let split = (16 * (c_in + 3) * w.div_ceil(2), 16 * c_in * 3);
            for (residual, act, limits) in [
                (None, Activation::Identity, (BLOCK_FLOATS, U_FLOATS)),
                (Some(&res[..]), Activation::Relu, (BLOCK_FLOATS, U_FLOATS)),
                (Some(&res[..]), Activation::Identity, split),
            ] {
                let mut out = vec![MaybeUninit::new(f32::NAN); n * c_out * h * w];
                assert!(run_blocked(&g, &x, &wt, &bias, act, residual, &mut out, limits), "case {case} refused");
                let scale = want.iter().fold(1e-3f64, |m, v| m.max(v.abs()));
                for (i, (o, r)) in out.iter().zip(&want).enumerate() {
                    // SAFETY: `run` wrote every value (NaN would fail the comparison anyway).
                    let got = unsafe { o.assume_init() } as f64;
                    let r = act.apply((r + residual.map_or(0.0, |res| res[i] as f64)) as f32) as f64;
                    assert!((got - r).abs() <= 1e-5 * scale, "case {case}, value {i}: {got} vs {r}");
                }
            }
        }
    }

    /// Only 3x3, stride-1, same-padded convolutions are taken, and only where they pay; bad sizes are refused.
    #[test]
    fn winograd_takes_only_its_shapes() {
        assert!(takes(&geom(2, 320, 320, 64, 64)));
        assert!(takes(&geom(2, 1280, 1280, 16, 16)));
        assert!(!takes(&geom(2, 1280, 1280, 8, 8)), "too few tiles");
        assert!(!takes(&geom(1, 3, 32, 64, 64)), "too few channels");
        let strided = Geom { stride: 2, oh: 32, ow: 32, ..geom(1, 64, 64, 64, 64) };
        assert!(!takes(&strided));
        let valid = Geom { pt: 0, pl: 0, oh: 62, ow: 62, ..geom(1, 64, 64, 64, 64) };
        assert!(!takes(&valid));
        let g = geom(1, 2, 2, 4, 4);
        let mut out = vec![MaybeUninit::new(0f32); 2 * 16];
        assert!(!run(&g, &[0.0; 31], &[0.0; 36], &[0.0; 2], Activation::Identity, None, &mut out));
    }
}
