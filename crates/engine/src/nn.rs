//! Building blocks shared by the ported vision models (BlazeFace, face mesh, selfie segmentation):
//! convolutions with TensorFlow / ONNX padding rules, depthwise convolutions, transposed
//! convolutions, PReLU, hard-swish and pooling. All tensors are NCHW f32.
//!
//! Weight layout in our safetensors files (made by `tools/convert_models.py`):
//! * `weight`: `[out, in, kh, kw]` (depthwise: `[channels, 1, kh, kw]`; transposed: `[in, out, kh, kw]`)
//! * `bias`: `[out]`; PReLU `alpha`: `[channels]`.
//!
//! # Speed
//! On the CPU with f32 tensors every layer here runs its own kernel (a candle `CustomOp1` over the
//! raw storage) instead of candle's generic ops, because these nets are many small layers where
//! candle's depthwise convolution (one conv call per channel) and its chains of elementwise ops
//! (each a fresh allocation and a pass over memory) cost 10-20x the arithmetic:
//! * depthwise 3x3 / 5x5 at stride 1 / 2 (any padding): register-blocked (all K*K taps in
//!   registers, 16 outputs per step, bias and activation before the one store, a whole plane per
//!   call), reading a zero-padded copy of the rows split into stride column phases so that every
//!   tap is a contiguous run (3x3 stride 1 with one pixel of padding reads the plane in place);
//!   AVX2+FMA chosen at run time (installers never assume `target-cpu=native`), a portable loop
//!   otherwise; other shapes take general row loops. Outputs are never zeroed first. With
//!   AVX-512F, 16 lanes, masked row ends, and 3x3 layers four output rows per pass (each source
//!   vector loaded once for all the rows that read it, 8 FMA chains in flight: one row's 9
//!   dependent FMAs per vector were bound by the FMA latency);
//! * 1x1 dense (AVX2 + FMA): a direct kernel, 6 output channels x 16 pixels in registers over
//!   L1-sized packed panels of the input, bias / activation (and in [`Conv2d::forward_fused`] a
//!   residual and a PReLU) applied before the one store into an output that is never zeroed;
//!   threads take bands of pixels (maps under two panels: blocks of output rows); maps under
//!   16 pixels (heads, squeeze-excite gates) as dot products along the input channels. With
//!   AVX-512F (Intel: twice AVX2's multiply-adds per cycle), 8 rows x 32 pixels, a map's last
//!   pixels as one masked panel, the input rows read in place unless many fall on one L1 set
//!   (then packed), 8-48 pixels (6x6, 3x3 maps) by an in-place kernel of up to 3 vectors. Without
//!   AVX2, one `gemm` call per image (`[out, in] x [in, h*w]`) and one bias+activation pass;
//! * depthwise 3x3 / 5x5 on maps up to 32 wide and at stride 2 (`dwcv`): the channels are the
//!   vector lanes instead, over a zero-padded channel-interleaved copy of the band's rows, 8
//!   pixels x 8 channels per register block (on a 12x12 or 6x6 map a row is too short for the
//!   row kernels, and each of 128 planes pays its own setup: 2-15 GFLOPS there before). With
//!   AVX-512 the 3x3 shapes go elsewhere, read in place: stride-1 SAME maps up to 24 wide to
//!   `dwflat` (each plane one flat run of pixels, padding taps masked), wider ones to the row
//!   kernels, stride 2 with no top / left padding to `dw3s2_rows_z` (columns split by permutes);
//! * depthwise (stride 1 or 2) then 1x1 ([`Conv2d::forward_dw_fused`], BlazeFace / face-mesh blocks):
//!   band of rows by band, the depthwise output kept in a cache-sized scratch and fed straight
//!   into the 1x1 kernel, so no feature map between them is written out or read back (a small
//!   map's single band: the depthwise output once, the 1x1 shared by blocks of output rows); a
//!   stride-2 block's max-pooled skip ([`Conv2d::forward_dw_fused_pooled`]) pooled band by band
//!   next to the product;
//! * 3x3 dense, stride 1, "same" padding, 32+ channels over 64+ output tiles of 2x2 (the UNet's
//!   and VAE's layers; the direct kernel's shapes go to it first): Winograd F(2x2, 3x3)
//!   ([`winograd`]), 16 `gemm` products on transformed tiles, 2.25x fewer multiply-adds;
//! * other KxK dense (the stems): im2col a band of output rows at a time (~64 KiB, still in cache
//!   when the kernel packs it; bands shared over threads), padding folded in, into the direct
//!   kernel; shapes it does not take: im2col of the whole map, then `gemm`;
//! * transposed conv with kernel == stride: one `gemm` and one scatter pass with the bias;
//! * PReLU, hard-swish, max pool (padding never copied), global average pool: one pass each; the
//!   in-place sigmoid 8 lanes at a time with a polynomial `exp`.
//!
//! Threads: the kernels use rayon's global pool, and `gemm` is given that same pool, never called
//! inside one of our parallel loops, so the two never oversubscribe the cores. Outside a small
//! net's pass the direct kernels split a layer into one band of pixels (or of rows) per thread,
//! and only layers of 2M+ multiply-adds. The small nets (BlazeFace, face mesh, selfie) run their
//! whole forward pass through [`on_pool`] on a pool thread with a team of two (`team`, at the
//! end): the pass's rayon sibling spins while the pass lasts and takes parts of every layer of
//! 64k+ multiply-adds (2-8 parts from an atomic counter), without rayon's wake-up per layer.
//! Fused blocks split into bands of at least ~96 pixels; small stride-2 outputs (12x12, 6x6)
//! split by channels for the depthwise conv, then by output rows for the 1x1.
//! Tensors on CUDA / Metal (or of another dtype) take candle's own ops, chosen by `x.device()`.

use std::cell::RefCell;
use std::mem::MaybeUninit;

use candle_core::{bail, CpuStorage, CustomOp1, DType, Layout, Module, Result, Shape, Tensor, D};
use candle_nn::VarBuilder;
use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use candle_core::CustomOp2;

/// How a convolution or pooling pads its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    /// No padding.
    Valid,
    /// TensorFlow "SAME": output = ceil(input / stride), the odd pixel of padding goes bottom/right.
    Same,
    /// Explicit zero padding (ONNX `pads`): top, bottom, left, right.
    Explicit { top: usize, bottom: usize, left: usize, right: usize },
}

impl Padding {
    /// (before, after) padding for one spatial axis.
    pub fn amounts(&self, input: usize, kernel: usize, stride: usize) -> (usize, usize) {
        match *self {
            Padding::Valid => (0, 0),
            Padding::Same => {
                let out = input.div_ceil(stride.max(1));
                let total = (out.saturating_sub(1) * stride + kernel).saturating_sub(input);
                (total / 2, total - total / 2)
            }
            Padding::Explicit { .. } => unreachable!("explicit padding is per-axis; use `pads`"),
        }
    }

    /// (top, bottom, left, right) for an input of `h x w`.
    pub fn pads(&self, h: usize, w: usize, kh: usize, kw: usize, stride: usize) -> (usize, usize, usize, usize) {
        match *self {
            Padding::Explicit { top, bottom, left, right } => (top, bottom, left, right),
            _ => {
                let (t, b) = self.amounts(h, kh, stride);
                let (l, r) = self.amounts(w, kw, stride);
                (t, b, l, r)
            }
        }
    }
}

/// Zero-pads the two spatial axes of an NCHW tensor (no copy when all pads are zero).
pub fn pad2d(x: &Tensor, top: usize, bottom: usize, left: usize, right: usize) -> Result<Tensor> {
    let x = if top + bottom > 0 { x.pad_with_zeros(2, top, bottom)? } else { x.clone() };
    if left + right > 0 {
        x.pad_with_zeros(3, left, right)
    } else {
        Ok(x)
    }
}

/// An activation applied in a layer's own output pass (no extra tensor op on the CPU).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Activation {
    #[default]
    Identity,
    Relu,
    /// `min(max(x, 0), 6)`
    Relu6,
    /// `x * relu6(x + 3) / 6`
    HardSwish,
}

impl Activation {
    #[inline(always)]
    fn apply(self, v: f32) -> f32 {
        match self {
            Activation::Identity => v,
            Activation::Relu => v.max(0.0),
            Activation::Relu6 => v.clamp(0.0, 6.0),
            Activation::HardSwish => v * ((v + 3.0).clamp(0.0, 6.0) * (1.0 / 6.0)),
        }
    }

    /// `v = act(v + bias)` over a slice; the `match` is outside the loop so each arm vectorises.
    #[inline(always)]
    fn bias_apply(self, out: &mut [f32], bias: f32) {
        match self {
            Activation::Identity => out.iter_mut().for_each(|v| *v += bias),
            Activation::Relu => out.iter_mut().for_each(|v| *v = (*v + bias).max(0.0)),
            Activation::Relu6 => out.iter_mut().for_each(|v| *v = (*v + bias).clamp(0.0, 6.0)),
            Activation::HardSwish => out.iter_mut().for_each(|v| *v = Activation::HardSwish.apply(*v + bias)),
        }
    }

    /// The same activation with candle's ops (devices without our kernels).
    fn on_tensor(self, x: Tensor) -> Result<Tensor> {
        match self {
            Activation::Identity => Ok(x),
            Activation::Relu => x.relu(),
            Activation::Relu6 => x.clamp(0f32, 6f32),
            Activation::HardSwish => hard_swish_candle(&x),
        }
    }
}

/// Whether this tensor runs on our CPU kernels (candle's ops otherwise).
fn fast_cpu(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32
}

/// Contiguous f32 view of a CPU storage under `layout`, or an error naming the op.
pub(crate) fn cpu_slice<'a>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> Result<&'a [f32]> {
    let data = match storage {
        CpuStorage::F32(v) => v.as_slice(),
        _ => bail!("{op}: expected an f32 tensor"),
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => match data.get(start..end) {
            Some(s) => Ok(s),
            None => bail!("{op}: storage shorter than its layout"),
        },
        None => bail!("{op}: expected a contiguous tensor"),
    }
}

/// [`cpu_slice`], writable (in-place ops).
pub(crate) fn cpu_slice_mut<'a>(storage: &'a mut CpuStorage, layout: &Layout, op: &str) -> Result<&'a mut [f32]> {
    let Some((start, end)) = layout.contiguous_offsets() else { bail!("{op}: expected a contiguous tensor") };
    match storage {
        CpuStorage::F32(v) => match v.get_mut(start..end) {
            Some(s) => Ok(s),
            None => bail!("{op}: storage shorter than its layout"),
        },
        _ => bail!("{op}: expected an f32 tensor"),
    }
}

/// Runs `f(index, chunk)` over `out.chunks_mut(chunk)`, on rayon when the whole job is big
/// enough to pay for the hand-off (a few microseconds), else on this thread.
fn for_chunks<T: Send>(out: &mut [T], chunk: usize, work: usize, f: impl Fn(usize, &mut [T]) + Sync + Send) {
    const PAR_MIN_WORK: usize = 1 << 18;
    if chunk == 0 {
        return;
    }
    if team::is_helper() || out.len() <= chunk {
        out.chunks_mut(chunk).enumerate().for_each(|(i, c)| f(i, c));
    } else if team::owned() {
        if work < TEAM_SPLIT_WORK {
            out.chunks_mut(chunk).enumerate().for_each(|(i, c)| f(i, c));
            return;
        }
        // Groups of whole chunks shared by this thread and the pass's helper.
        let chunks = out.len().div_ceil(chunk);
        let groups = (work / (TEAM_SPLIT_WORK / 2)).clamp(2, 8).min(chunks);
        let per = chunks.div_ceil(groups);
        let parts: Vec<std::sync::Mutex<&mut [T]>> = out.chunks_mut(per * chunk).map(std::sync::Mutex::new).collect();
        let f = &f;
        team::run(parts.len(), &|g| {
            if let Some(Ok(mut part)) = parts.get(g).map(|m| m.lock()) {
                part.chunks_mut(chunk).enumerate().for_each(|(i, c)| f(g * per + i, c));
            }
        });
    } else if work >= PAR_MIN_WORK && rayon::current_num_threads() > 1 {
        out.par_chunks_mut(chunk).enumerate().for_each(|(i, c)| f(i, c));
    } else {
        out.chunks_mut(chunk).enumerate().for_each(|(i, c)| f(i, c));
    }
}

fn gemm_parallelism(m: usize, n: usize, k: usize) -> gemm::Parallelism {
    let threads = rayon::current_num_threads();
    // Below ~64k multiply-adds a second thread costs more than it saves.
    if threads > 1 && m * n * k >= 1 << 20 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    }
}

/// `dst[m x n] = lhs[m x k] * rhs[k x n]`, all row-major and contiguous except `lhs`, whose
/// row / column strides are given (a transposed weight needs no copy).
fn matmul(dst: &mut [f32], lhs: &[f32], lhs_rs: usize, lhs_cs: usize, rhs: &[f32], m: usize, n: usize, k: usize) -> Result<()> {
    if dst.len() < m * n || rhs.len() < k * n || (m > 0 && k > 0 && lhs.len() <= (m - 1) * lhs_rs + (k - 1) * lhs_cs) {
        bail!("matmul: buffers too small for {m}x{k} * {k}x{n}");
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        dst[..m * n].fill(0.0);
        return Ok(());
    }
    // SAFETY: the bounds were checked above; `dst` does not alias the inputs (it is `&mut`).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            false,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            1,
            n as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm_parallelism(m, n, k),
        );
    }
    Ok(())
}

thread_local! {
    /// im2col scratch, reused across calls on the same thread.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with a scratch buffer of `len` floats (contents unspecified). The thread's buffer is
/// reused; if it is already in use (a nested call on a rayon worker), a fresh one is allocated.
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    with_buffer(&SCRATCH, len, f)
}

/// A thread's reusable buffer `key`, grown to `len` floats; a fresh one when already borrowed.
pub(crate) fn with_buffer<R>(key: &'static std::thread::LocalKey<RefCell<Vec<f32>>>, len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    key.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < len {
                buf.resize(len, 0.0);
            }
            f(&mut buf[..len])
        }
        Err(_) => f(&mut vec![0.0; len]),
    })
}

/// Shape of one convolution call.
#[derive(Debug, Clone, Copy)]
struct Geom {
    n: usize,
    c_in: usize,
    h: usize,
    w: usize,
    c_out: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    pt: usize,
    pl: usize,
    oh: usize,
    ow: usize,
}

impl Geom {
    /// Output columns `lo..hi` whose input column `ox * stride + kx - pl` is inside the image.
    #[inline(always)]
    fn col_range(&self, kx: usize) -> (usize, usize) {
        let s = self.stride;
        let lo = if kx >= self.pl { 0 } else { (self.pl - kx).div_ceil(s) };
        let hi = if self.w + self.pl > kx { ((self.w + self.pl - kx - 1) / s + 1).min(self.ow) } else { 0 };
        (lo.min(hi), hi)
    }

    /// Input row for output row `oy` and kernel row `ky`, if inside the image.
    #[inline(always)]
    fn in_row(&self, oy: usize, ky: usize) -> Option<usize> {
        let r = (oy * self.stride + ky).checked_sub(self.pt)?;
        (r < self.h).then_some(r)
    }
}

#[cfg(target_arch = "x86_64")]
fn has_avx2_fma() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
}

/// AVX-512F as well (the 16-lane 1x1, depthwise and stem kernels): twice the multiply-adds per
/// instruction and 32 registers, on Intel twice the FMA throughput of AVX2. `LIKENESS_NN_AVX512=0`
/// keeps the AVX2 kernels (for side-by-side benchmarks).
#[cfg(target_arch = "x86_64")]
fn has_avx512() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| has_avx2_fma() && is_x86_feature_detected!("avx512f") && std::env::var("LIKENESS_NN_AVX512").map_or(true, |v| v != "0"))
}

/// `o += w * i` over two equal-length slices (fused multiply-add when `FMA`).
#[inline(always)]
fn axpy<const FMA: bool>(o: &mut [f32], i: &[f32], w: f32) {
    if FMA {
        o.iter_mut().zip(i).for_each(|(o, &i)| *o = i.mul_add(w, *o));
    } else {
        o.iter_mut().zip(i).for_each(|(o, &i)| *o += i * w);
    }
}

/// One depthwise output plane. `src` is the input plane, or for stride > 1 the `stride`
/// column-phase planes (`phase_w` wide each, `h` rows) so that every tap reads a contiguous run.
#[inline(always)]
fn dw_plane_impl<const FMA: bool>(src: &[f32], phase_w: usize, k: &[f32], bias: f32, act: Activation, g: &Geom, oy0: usize, out: &mut [f32]) {
    let s = g.stride;
    for (i, orow) in out.chunks_exact_mut(g.ow).enumerate() {
        let oy = oy0 + i;
        orow.fill(bias);
        for ky in 0..g.kh {
            let Some(iy) = g.in_row(oy, ky) else { continue };
            for kx in 0..g.kw {
                let (lo, hi) = g.col_range(kx);
                if lo >= hi {
                    continue;
                }
                let Some(&wv) = k.get(ky * g.kw + kx) else { continue };
                // Input column of output `lo`, split into phase plane and column within it.
                let col = lo * s + kx - g.pl;
                let (phase, j) = (col % s, col / s);
                let base = (phase * g.h + iy) * phase_w + j;
                if let (Some(o), Some(i)) = (orow.get_mut(lo..hi), src.get(base..base + (hi - lo))) {
                    axpy::<FMA>(o, i, wv);
                }
            }
        }
        if act != Activation::Identity {
            act.bias_apply(orow, 0.0);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dw_plane_avx2(src: &[f32], phase_w: usize, k: &[f32], bias: f32, act: Activation, g: &Geom, oy0: usize, out: &mut [f32]) {
    dw_plane_impl::<true>(src, phase_w, k, bias, act, g, oy0, out)
}

/// Output rows `oy0..oy0 + out.len() / ow` of one depthwise plane.
fn dw_plane(src: &[f32], phase_w: usize, k: &[f32], bias: f32, act: Activation, g: &Geom, oy0: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU supports AVX2 and FMA (checked at run time).
        return unsafe { dw_plane_avx2(src, phase_w, k, bias, act, g, oy0, out) };
    }
    dw_plane_impl::<false>(src, phase_w, k, bias, act, g, oy0, out)
}

/// Splits a plane into `s` column-phase planes: phase p holds columns p, p+s, p+2s, ...
fn split_phases(plane: &[f32], h: usize, w: usize, s: usize, phase_w: usize, dst: &mut [f32]) {
    for (p, dplane) in dst.chunks_exact_mut(h * phase_w).take(s).enumerate() {
        for (drow, row) in dplane.chunks_exact_mut(phase_w).zip(plane.chunks_exact(w)) {
            let src = row.get(p..).unwrap_or(&[]).iter().step_by(s);
            let n = drow.iter_mut().zip(src).map(|(d, &v)| *d = v).count();
            drow.get_mut(n..).unwrap_or(&mut []).fill(0.0);
        }
    }
}

thread_local! {
    /// The depthwise kernels' zero-padded copy of the input rows, reused across calls.
    static PAD_SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// [`with_scratch`] on the depthwise kernels' own buffer, so a depthwise band can run inside a
/// caller that holds the im2col scratch (the fused depthwise + pointwise kernel).
fn with_pad_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    with_buffer(&PAD_SCRATCH, len, f)
}

/// The zero-padded input of output rows `oy0..oy0 + rows`, split into `stride` column phases:
/// phase `p`, padded row `r`, column `j` holds padded pixel `(oy0 * stride + r, j * stride + p)`
/// (zero outside the image). Every kernel tap of an output row is then one contiguous run of
/// `ow` values, whatever the padding or stride. Returns (padded rows, phase width).
fn pad_phase_dims(g: &Geom, rows: usize) -> (usize, usize) {
    let s = g.stride;
    ((rows.max(1) - 1) * s + g.kh, ((g.ow.max(1) - 1) * s + g.kw).div_ceil(s))
}

fn fill_pad_phases(plane: &[f32], g: &Geom, oy0: usize, rows: usize, dst: &mut [f32]) {
    let s = g.stride;
    let (prows, pw) = pad_phase_dims(g, rows);
    for (p, dplane) in dst.chunks_exact_mut(prows * pw).take(s).enumerate() {
        // Phase columns j with an image column j * s + p - pl inside 0..w.
        let lo = if g.pl > p { (g.pl - p).div_ceil(s) } else { 0 }.min(pw);
        let hi = (g.w + g.pl).saturating_sub(p).div_ceil(s).clamp(lo, pw);
        for (r, drow) in dplane.chunks_exact_mut(pw).enumerate() {
            let row = (oy0 * s + r).checked_sub(g.pt).filter(|&iy| iy < g.h).and_then(|iy| plane.get(iy * g.w..(iy + 1) * g.w));
            let Some(row) = row.filter(|_| lo < hi) else {
                drow.fill(0.0);
                continue;
            };
            drow[..lo].fill(0.0);
            drow[hi..].fill(0.0);
            let start = lo * s + p - g.pl;
            let src = row.get(start..).unwrap_or(&[]);
            if s == 1 {
                if let Some(src) = src.get(..hi - lo) {
                    drow[lo..hi].copy_from_slice(src);
                }
            } else if s == 2 {
                gather_stride2(&mut drow[lo..hi], src);
            } else {
                drow[lo..hi].iter_mut().zip(src.chunks(s)).for_each(|(d, c)| *d = c[0]);
            }
        }
    }
}

/// `dst[i] = src[2 * i]` (a stride-2 column phase of a row), as far as `src` reaches.
fn gather_stride2(dst: &mut [f32], src: &[f32]) {
    let n = dst.len().min(src.len().div_ceil(2));
    #[allow(unused_mut)]
    let mut i = 0;
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU has AVX2 (checked at run time).
        i = unsafe { gather_stride2_avx2(dst, src, n) };
    }
    let (Some(d), Some(src)) = (dst.get_mut(i..n), src.get(2 * i..)) else { return };
    d.iter_mut().zip(src.iter().step_by(2)).for_each(|(d, &v)| *d = v);
}

/// The body of [`gather_stride2`], 8 outputs from two loads and two shuffles; returns how many
/// outputs it wrote.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(unsafe_op_in_unsafe_fn)]
unsafe fn gather_stride2_avx2(dst: &mut [f32], src: &[f32], n: usize) -> usize {
    use std::arch::x86_64::*;
    let mut i = 0;
    // SAFETY: each load reads src[2i..2i + 16] and each store dst[i..i + 8], both checked.
    while i + 8 <= n.min(dst.len()) && 2 * i + 16 <= src.len() {
        let a = _mm256_loadu_ps(src.as_ptr().add(2 * i));
        let b = _mm256_loadu_ps(src.as_ptr().add(2 * i + 8));
        // Per 128-bit lane: a0 a2 b0 b2 | a4 a6 b4 b6; then 64-bit pieces 0, 2, 1, 3.
        let e = _mm256_shuffle_ps::<0x88>(a, b);
        let e = _mm256_castpd_ps(_mm256_permute4x64_pd::<0xD8>(_mm256_castps_pd(e)));
        _mm256_storeu_ps(dst.as_mut_ptr().add(i), e);
        i += 8;
    }
    i
}

/// `act(v)` on 8 lanes (AVX only; inlined into AVX2 callers).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
#[allow(unsafe_op_in_unsafe_fn)]
unsafe fn act_avx2(act: Activation, v: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    match act {
        Activation::Identity => v,
        Activation::Relu => _mm256_max_ps(v, _mm256_setzero_ps()),
        Activation::Relu6 => _mm256_min_ps(_mm256_max_ps(v, _mm256_setzero_ps()), _mm256_set1_ps(6.0)),
        Activation::HardSwish => {
            let g = _mm256_min_ps(_mm256_max_ps(_mm256_add_ps(v, _mm256_set1_ps(3.0)), _mm256_setzero_ps()), _mm256_set1_ps(6.0));
            _mm256_mul_ps(v, _mm256_mul_ps(g, _mm256_set1_ps(1.0 / 6.0)))
        }
    }
}

/// The first `n` of 16 lanes (all of them from 16 on): a row's or a panel's last vector.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn lanes16(n: usize) -> std::arch::x86_64::__mmask16 {
    if n >= 16 {
        0xffff
    } else {
        ((1u32 << n) - 1) as std::arch::x86_64::__mmask16
    }
}

/// A depthwise row kernel's activation, a const parameter (`A`) so that its `match` folds away
/// instead of running per vector.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
const fn const_act(a: u8) -> Activation {
    match a {
        0 => Activation::Identity,
        1 => Activation::Relu,
        2 => Activation::Relu6,
        _ => Activation::HardSwish,
    }
}

/// The three taps `(kx = 0, 1, 2)` of a 3x3 stride-2 window for 16 outputs from `row` (the
/// image row at their first input column), `avail` input columns left from there: the even,
/// the odd and the next even columns, split out of 33 loaded columns by permutes. Columns past
/// `avail` are zeros (the right padding) and never read.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
#[allow(unsafe_op_in_unsafe_fn)]
unsafe fn stride2_taps(row: *const f32, avail: usize) -> [std::arch::x86_64::__m512; 3] {
    use std::arch::x86_64::*;
    let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    let next = _mm512_setr_epi32(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16);
    let a = _mm512_maskz_loadu_ps(lanes16(avail), row);
    let b = _mm512_maskz_loadu_ps(lanes16(avail.saturating_sub(16)), row.add(16));
    let c = _mm512_maskz_loadu_ps(lanes16(avail.saturating_sub(32).min(1)), row.add(32));
    let e0 = _mm512_permutex2var_ps(a, even, b);
    [e0, _mm512_permutex2var_ps(a, odd, b), _mm512_permutex2var_ps(e0, next, c)]
}

/// `act(v)` on 16 lanes (AVX-512F; inlined into its callers).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
#[allow(unsafe_op_in_unsafe_fn)]
unsafe fn act_z(act: Activation, v: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let zero = _mm512_setzero_ps();
    match act {
        Activation::Identity => v,
        Activation::Relu => _mm512_max_ps(v, zero),
        Activation::Relu6 => _mm512_min_ps(_mm512_max_ps(v, zero), _mm512_set1_ps(6.0)),
        Activation::HardSwish => {
            let g = _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(v, _mm512_set1_ps(3.0)), zero), _mm512_set1_ps(6.0));
            _mm512_mul_ps(v, _mm512_mul_ps(g, _mm512_set1_ps(1.0 / 6.0)))
        }
    }
}

/// Whole groups of four output rows of a 3x3 depthwise layer for [`dw_rows_avx512`]: tap
/// `(ky, kx)` of output row `i` at `src[cols[kx] + (i * S + ky) * rs + x]`. Each source vector is
/// loaded once for every output row that reads it (stride 1: half the loads), and 8 accumulator
/// chains run at once where one row's 9 dependent FMAs per vector would wait on the FMA latency.
/// Returns the rows done (a multiple of 4). Safety: as [`dw_rows_avx512`].
#[cfg(target_arch = "x86_64")]
#[inline(always)]
#[allow(unsafe_op_in_unsafe_fn, clippy::too_many_arguments)]
unsafe fn dw3_rows4_z<const S: usize>(src: *const f32, cols: [usize; 3], rs: usize, rows: usize, n: usize, kv: &[std::arch::x86_64::__m512; 9], b: std::arch::x86_64::__m512, act: Activation, out: *mut f32, ostride: usize) -> usize {
    use std::arch::x86_64::*;
    let mut first = 0;
    while first + 4 <= rows {
        let o = out.add(first * ostride);
        let base: [*const f32; 3] = std::array::from_fn(|kx| src.add(cols[kx] + first * S * rs));
        let mut x = 0;
        while x + 32 <= n {
            let mut acc = [[b; 2]; 4];
            for r in 0..3 * S + 3 {
                for kx in 0..3 {
                    let row = base[kx].add(r * rs + x);
                    let v = [_mm512_loadu_ps(row), _mm512_loadu_ps(row.add(16))];
                    for (q, a) in acc.iter_mut().enumerate() {
                        if r >= q * S && r - q * S < 3 {
                            let w = kv[(r - q * S) * 3 + kx];
                            a[0] = _mm512_fmadd_ps(v[0], w, a[0]);
                            a[1] = _mm512_fmadd_ps(v[1], w, a[1]);
                        }
                    }
                }
            }
            for (q, a) in acc.iter().enumerate() {
                _mm512_storeu_ps(o.add(q * ostride + x), act_z(act, a[0]));
                _mm512_storeu_ps(o.add(q * ostride + x + 16), act_z(act, a[1]));
            }
            x += 32;
        }
        while x < n {
            // Lanes past `n` are neither read nor written.
            let mask = lanes16(n - x);
            let mut acc = [b; 4];
            for r in 0..3 * S + 3 {
                for kx in 0..3 {
                    let v = _mm512_maskz_loadu_ps(mask, base[kx].add(r * rs + x));
                    for (q, a) in acc.iter_mut().enumerate() {
                        if r >= q * S && r - q * S < 3 {
                            *a = _mm512_fmadd_ps(v, kv[(r - q * S) * 3 + kx], *a);
                        }
                    }
                }
            }
            for (q, a) in acc.iter().enumerate() {
                _mm512_mask_storeu_ps(o.add(q * ostride + x), mask, act_z(act, *a));
            }
            x += 16;
        }
        first += 4;
    }
    first
}

/// [`dw_rows_avx2`] on 16 lanes: 32 outputs per step, a row's last 1-16 outputs as one masked
/// step (no scalar or overlapping tail). Half the loads per output, which bound the 8-lane form.
/// Safety: AVX-512F + AVX2 + FMA present; bounds as [`dw_rows_avx2`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[allow(unsafe_op_in_unsafe_fn, clippy::too_many_arguments)]
unsafe fn dw_rows_avx512<const T: usize, const A: u8>(src: *const f32, offs: &[usize; T], stride: usize, rows: usize, n: usize, k: &[f32; T], bias: f32, out: *mut f32, ostride: usize) {
    use std::arch::x86_64::*;
    let act = const_act(A);
    let b = _mm512_set1_ps(bias);
    let mut first = 0;
    // 3x3 whose kernel rows are source rows `rs` apart and whose output rows are 1 or 2 source
    // rows apart (stride 1 in place, stride 2 on column phases): four output rows per pass.
    if T == 9 && rows >= 4 {
        let rs = offs[3].wrapping_sub(offs[0]);
        let tiled = rs > 0 && (0..9).all(|t| offs[t] == offs[t % 3] + (t / 3) * rs);
        let kv: [__m512; 9] = std::array::from_fn(|t| _mm512_set1_ps(k[t]));
        let cols = [offs[0], offs[1], offs[2]];
        if tiled && stride == rs {
            first = dw3_rows4_z::<1>(src, cols, rs, rows, n, &kv, b, act, out, ostride);
        } else if tiled && stride == 2 * rs {
            first = dw3_rows4_z::<2>(src, cols, rs, rows, n, &kv, b, act, out, ostride);
        }
    }
    for i in first..rows {
        let ptrs: [*const f32; T] = std::array::from_fn(|t| src.add(offs[t] + i * stride));
        let o = out.add(i * ostride);
        let mut x = 0;
        while x + 32 <= n {
            let (mut a0, mut a1) = (b, b);
            for t in 0..T {
                let w = _mm512_set1_ps(k[t]);
                a0 = _mm512_fmadd_ps(_mm512_loadu_ps(ptrs[t].add(x)), w, a0);
                a1 = _mm512_fmadd_ps(_mm512_loadu_ps(ptrs[t].add(x + 16)), w, a1);
            }
            _mm512_storeu_ps(o.add(x), act_z(act, a0));
            _mm512_storeu_ps(o.add(x + 16), act_z(act, a1));
            x += 32;
        }
        while x < n {
            // Lanes past `n` are neither read nor written.
            let mask = lanes16(n - x);
            let mut a0 = b;
            for t in 0..T {
                a0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, ptrs[t].add(x)), _mm512_set1_ps(k[t]), a0);
            }
            _mm512_mask_storeu_ps(o.add(x), mask, act_z(act, a0));
            x += 16;
        }
    }
}

/// `rows` depthwise output rows from a source where tap `t` of output row `i` at column `x` is
/// `src[offs[t] + i * stride + x]`, output row `i` being `out[i * ostride..][..n]`: all taps in
/// registers, 16 outputs at a time, each stored once with bias and activation applied. One call
/// per plane (or band), so the per-row cost is a few pointer adds.
/// Safety: AVX2 + FMA present; every tap run and output row in bounds (see [`dw_rows_taps`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(unsafe_op_in_unsafe_fn, clippy::too_many_arguments)]
unsafe fn dw_rows_avx2<const T: usize, const A: u8>(src: *const f32, offs: &[usize; T], stride: usize, rows: usize, n: usize, k: &[f32; T], bias: f32, out: *mut f32, ostride: usize) {
    use std::arch::x86_64::*;
    let act = const_act(A);
    let b = _mm256_set1_ps(bias);
    for i in 0..rows {
        let ptrs: [*const f32; T] = std::array::from_fn(|t| src.add(offs[t] + i * stride));
        let o = out.add(i * ostride);
        let mut x = 0;
        while x + 16 <= n {
            let (mut a0, mut a1) = (b, b);
            for t in 0..T {
                let w = _mm256_set1_ps(k[t]);
                a0 = _mm256_fmadd_ps(_mm256_loadu_ps(ptrs[t].add(x)), w, a0);
                a1 = _mm256_fmadd_ps(_mm256_loadu_ps(ptrs[t].add(x + 8)), w, a1);
            }
            _mm256_storeu_ps(o.add(x), act_avx2(act, a0));
            _mm256_storeu_ps(o.add(x + 8), act_avx2(act, a1));
            x += 16;
        }
        if x + 8 <= n {
            let mut a0 = b;
            for t in 0..T {
                a0 = _mm256_fmadd_ps(_mm256_loadu_ps(ptrs[t].add(x)), _mm256_set1_ps(k[t]), a0);
            }
            _mm256_storeu_ps(o.add(x), act_avx2(act, a0));
            x += 8;
        }
        if x < n && n >= 8 {
            // The last few outputs as one block ending at `n`, overlapping outputs already
            // stored (recomputed to the same values: outputs are written, never accumulated).
            let mut a0 = b;
            for t in 0..T {
                a0 = _mm256_fmadd_ps(_mm256_loadu_ps(ptrs[t].add(n - 8)), _mm256_set1_ps(k[t]), a0);
            }
            _mm256_storeu_ps(o.add(n - 8), act_avx2(act, a0));
            x = n;
        }
        while x < n {
            let mut v = bias;
            for t in 0..T {
                v = (*ptrs[t].add(x)).mul_add(k[t], v);
            }
            *o.add(x) = act.apply(v);
            x += 1;
        }
    }
}

/// [`dw_rows_avx2`] with its bounds checked, or the portable loop (`simd: false`, or no AVX2
/// build). `false`, nothing written, when a tap run or an output row would leave its slice.
#[allow(clippy::too_many_arguments)]
fn dw_rows_taps<const T: usize>(src: &[f32], offs: &[usize; T], stride: usize, rows: usize, n: usize, k: &[f32; T], bias: f32, act: Activation, out: &mut [MaybeUninit<f32>], ostride: usize, simd: bool) -> bool {
    if rows == 0 || n == 0 {
        return true;
    }
    let reach = offs.iter().copied().max().unwrap_or(0) + (rows - 1) * stride + n;
    if reach > src.len() || (rows - 1) * ostride + n > out.len() || n > ostride {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    if simd {
        let o = out.as_mut_ptr() as *mut f32;
        // SAFETY: the caller checked AVX2 + FMA (`simd`), AVX-512F is checked here; the bounds
        // were checked above.
        unsafe {
            if has_avx512() {
                match act {
                    Activation::Identity => dw_rows_avx512::<T, 0>(src.as_ptr(), offs, stride, rows, n, k, bias, o, ostride),
                    Activation::Relu => dw_rows_avx512::<T, 1>(src.as_ptr(), offs, stride, rows, n, k, bias, o, ostride),
                    Activation::Relu6 => dw_rows_avx512::<T, 2>(src.as_ptr(), offs, stride, rows, n, k, bias, o, ostride),
                    Activation::HardSwish => dw_rows_avx512::<T, 3>(src.as_ptr(), offs, stride, rows, n, k, bias, o, ostride),
                }
                return true;
            }
            match act {
                Activation::Identity => dw_rows_avx2::<T, 0>(src.as_ptr(), offs, stride, rows, n, k, bias, o, ostride),
                Activation::Relu => dw_rows_avx2::<T, 1>(src.as_ptr(), offs, stride, rows, n, k, bias, o, ostride),
                Activation::Relu6 => dw_rows_avx2::<T, 2>(src.as_ptr(), offs, stride, rows, n, k, bias, o, ostride),
                Activation::HardSwish => dw_rows_avx2::<T, 3>(src.as_ptr(), offs, stride, rows, n, k, bias, o, ostride),
            }
        }
        return true;
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = simd;
    for (i, orow) in out.chunks_mut(ostride).take(rows).enumerate() {
        for (x, o) in orow.iter_mut().take(n).enumerate() {
            let mut v = bias;
            for t in 0..T {
                v += src[offs[t] + i * stride + x] * k[t];
            }
            o.write(act.apply(v));
        }
    }
    true
}

/// Output rows `oy0..` (as many as `out` holds) of one depthwise plane with a `K x K` kernel
/// (`T = K * K` taps) at stride `S`, from the padded phase copy `pad` of those rows.
fn dw_rows_padded<const K: usize, const T: usize, const S: usize>(pad: &[f32], prows: usize, pw: usize, k: &[f32], bias: f32, act: Activation, ow: usize, out: &mut [MaybeUninit<f32>], simd: bool) -> bool {
    let Some(k) = k.get(..T).and_then(|k| <&[f32; T]>::try_from(k).ok()) else { return false };
    if ow == 0 || T != K * K {
        return false;
    }
    // Tap (ky, kx) of output row i, column x: phase kx % S, padded row i * S + ky, column x + kx / S.
    let offs: [usize; T] = std::array::from_fn(|t| ((t % K % S) * prows + t / K) * pw + t % K / S);
    dw_rows_taps::<T>(pad, &offs, S * pw, out.len() / ow, ow, k, bias, act, out, ow, simd)
}

/// Output rows `oy0..oy0 + out.len() / ow` of one depthwise plane (the unpadded input `plane`),
/// every value written: the register-blocked kernels for 3x3 / 5x5 at stride 1 / 2 (any
/// padding) on a zero-padded copy of the rows (so no tap needs an edge case and every row is
/// whole 8- / 16-lane blocks where the width allows), else the general loops. `simd: false`
/// forces the portable build.
fn dw_rows(plane: &[f32], k: &[f32], bias: f32, act: Activation, g: &Geom, oy0: usize, out: &mut [MaybeUninit<f32>], simd: bool) {
    let rows = out.len() / g.ow.max(1);
    let blocked = g.kh == g.kw && matches!((g.kh, g.stride), (3, 1) | (3, 2) | (5, 1) | (5, 2));
    if !blocked || rows == 0 {
        // The general loops accumulate into their output: give them initialised memory.
        out.iter_mut().for_each(|v| {
            v.write(0.0);
        });
        // SAFETY: every element was just initialised, and `MaybeUninit<f32>` has `f32`'s layout.
        let out = unsafe { &mut *(out as *mut [MaybeUninit<f32>] as *mut [f32]) };
        let phase_w = g.w.div_ceil(g.stride);
        if g.stride == 1 {
            return dw_plane(plane, g.w, k, bias, act, g, oy0, out);
        }
        return with_pad_scratch(g.stride * g.h * phase_w, |phases| {
            split_phases(plane, g.h, g.w, g.stride, phase_w, phases);
            dw_plane(phases, phase_w, k, bias, act, g, oy0, out)
        });
    }
    let same3 = g.kh == 3 && g.stride == 1 && g.pt == 1 && g.pl == 1 && g.oh == g.h && g.ow == g.w && g.w >= 3;
    if same3 && dw3x3_same_rows(plane, k, bias, act, g, oy0, out, simd) {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if simd && dw3s2_rows(plane, k, bias, act, g, oy0, out) {
        return;
    }
    let (prows, pw) = pad_phase_dims(g, rows);
    with_pad_scratch(g.stride * prows * pw, |pad| {
        fill_pad_phases(plane, g, oy0, rows, pad);
        let ow = g.ow;
        let done = match (g.kh, g.stride) {
            (3, 1) => dw_rows_padded::<3, 9, 1>(pad, prows, pw, k, bias, act, ow, out, simd),
            (3, 2) => dw_rows_padded::<3, 9, 2>(pad, prows, pw, k, bias, act, ow, out, simd),
            (5, 1) => dw_rows_padded::<5, 25, 1>(pad, prows, pw, k, bias, act, ow, out, simd),
            _ => dw_rows_padded::<5, 25, 2>(pad, prows, pw, k, bias, act, ow, out, simd),
        };
        if !done {
            // Unreachable by construction (the copy holds every tap); never leave memory unwritten.
            out.iter_mut().for_each(|v| {
                v.write(f32::NAN);
            });
        }
    });
}

/// Whether [`dw3s2_rows_z`] takes the depthwise shape `g`: 3x3 at stride 2 with no padding at the
/// top or left (TensorFlow's SAME on an even size: the odd pixel goes bottom / right), on a CPU
/// with AVX-512F. Narrow outputs (3-12 wide) are masked vectors: still 1.7-3x faster than
/// `dwcv`'s copy in and out (24x24x64 -> 12x12: 17.0 -> 5.5 us on one core).
fn dw3s2_direct(g: &Geom) -> bool {
    #[cfg(target_arch = "x86_64")]
    return has_avx512() && g.kh == 3 && g.kw == 3 && g.stride == 2 && g.pt == 0 && g.pl == 0 && g.ow >= 1;
    #[cfg(not(target_arch = "x86_64"))]
    return {
        let _ = g;
        false
    };
}

/// Output rows `oy0..oy0 + out.len() / ow` of a 3x3 stride-2 depthwise plane ([`dw3s2_direct`]
/// shapes) read in place: each source row's 16 even columns, 16 odd columns and the even columns
/// one further are split out of 33 loaded columns by permutes, once for every output row that
/// reads that source row (four output rows per pass). No column-phase copy of the plane (the
/// row kernels' way) and no channel-interleaved copy (`dwcv`'s), which cost more than the
/// multiply-adds on a 96x96 map. `false`, nothing written, when a size disagrees.
#[cfg(target_arch = "x86_64")]
fn dw3s2_rows(plane: &[f32], k: &[f32], bias: f32, act: Activation, g: &Geom, oy0: usize, out: &mut [MaybeUninit<f32>]) -> bool {
    let Some(k9) = k.get(..9).and_then(|k| <&[f32; 9]>::try_from(k).ok()) else { return false };
    let rows = out.len() / g.ow.max(1);
    if !dw3s2_direct(g) || plane.len() < g.h * g.w || oy0 + rows > g.oh || rows * g.ow != out.len() {
        return false;
    }
    // SAFETY: AVX-512F is present (`dw3s2_direct`); every read is masked to the plane's rows
    // and columns, every write to the `rows x ow` output.
    unsafe {
        match act {
            Activation::Identity => dw3s2_rows_z::<0>(plane, k9, bias, g, oy0, rows, out.as_mut_ptr() as *mut f32),
            Activation::Relu => dw3s2_rows_z::<1>(plane, k9, bias, g, oy0, rows, out.as_mut_ptr() as *mut f32),
            Activation::Relu6 => dw3s2_rows_z::<2>(plane, k9, bias, g, oy0, rows, out.as_mut_ptr() as *mut f32),
            Activation::HardSwish => dw3s2_rows_z::<3>(plane, k9, bias, g, oy0, rows, out.as_mut_ptr() as *mut f32),
        }
    }
    true
}

/// See [`dw3s2_rows`]. Safety: AVX-512F present; `plane` holds `h x w`, `out` `rows x ow`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[allow(unsafe_op_in_unsafe_fn)]
unsafe fn dw3s2_rows_z<const A: u8>(plane: &[f32], k: &[f32; 9], bias: f32, g: &Geom, oy0: usize, rows: usize, out: *mut f32) {
    let mut i = 0;
    while i < rows {
        let r = (rows - i).min(4);
        let o = out.add(i * g.ow);
        match r {
            4 => dw3s2_group_z::<4, A>(plane, k, bias, g, oy0 + i, o),
            3 => dw3s2_group_z::<3, A>(plane, k, bias, g, oy0 + i, o),
            2 => dw3s2_group_z::<2, A>(plane, k, bias, g, oy0 + i, o),
            _ => dw3s2_group_z::<1, A>(plane, k, bias, g, oy0 + i, o),
        }
        i += r;
    }
}

/// `R` output rows from `oy` of [`dw3s2_rows_z`] into `out` (rows `ow` apart).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
#[allow(unsafe_op_in_unsafe_fn)]
unsafe fn dw3s2_group_z<const R: usize, const A: u8>(plane: &[f32], k: &[f32; 9], bias: f32, g: &Geom, oy: usize, out: *mut f32) {
    use std::arch::x86_64::*;
    let act = const_act(A);
    let kv: [__m512; 9] = std::array::from_fn(|t| _mm512_set1_ps(k[t]));
    let (w, ow) = (g.w, g.ow);
    let src = plane.as_ptr();
    let mut x = 0;
    while x < ow {
        let c = 2 * x;
        let mut acc = [_mm512_set1_ps(bias); R];
        // Source rows 2 * oy .. 2 * oy + 2R (rows past the plane are the bottom padding).
        for sr in 0..2 * R + 1 {
            let iy = 2 * oy + sr;
            if iy >= g.h {
                break;
            }
            let taps = stride2_taps(src.add(iy * w + c), w.saturating_sub(c));
            for (q, a) in acc.iter_mut().enumerate() {
                if sr >= 2 * q && sr - 2 * q < 3 {
                    let ky = sr - 2 * q;
                    for (kx, &v) in taps.iter().enumerate() {
                        *a = _mm512_fmadd_ps(v, kv[3 * ky + kx], *a);
                    }
                }
            }
        }
        let mo = lanes16(ow - x);
        for (q, a) in acc.iter().enumerate() {
            _mm512_mask_storeu_ps(out.add(q * ow + x), mo, act_z(act, *a));
        }
        x += 16;
    }
}

/// 3x3, stride 1, one pixel of padding all round (most depthwise layers here), read in place:
/// the interior columns of each output row go through the register-blocked row kernel with the
/// three input rows (a zero row past the top / bottom edge) as taps, the two edge columns are
/// summed here. No padded copy of the input.
fn dw3x3_same_rows(plane: &[f32], k: &[f32], bias: f32, act: Activation, g: &Geom, oy0: usize, out: &mut [MaybeUninit<f32>], simd: bool) -> bool {
    let (h, w) = (g.h, g.w);
    let Some(k9) = k.get(..9).and_then(|k| <&[f32; 9]>::try_from(k).ok()) else { return false };
    let rows = out.len() / w;
    if w < 3 || plane.len() < h * w || oy0 + rows > h {
        return false;
    }
    let end = oy0 + rows;
    // Interior columns of the rows with both neighbours inside the image, straight from the plane.
    let (a, b) = (oy0.max(1), end.min(h - 1));
    #[cfg(target_arch = "x86_64")]
    let whole = simd && a < b && has_avx512() && w >= 16;
    #[cfg(not(target_arch = "x86_64"))]
    let whole = false;
    #[cfg(target_arch = "x86_64")]
    if whole {
        // Every column of those rows, the edge columns' missing taps masked off.
        let Some(o) = out.get_mut((a - oy0) * w..(b - oy0) * w) else { return false };
        // SAFETY: AVX-512F is present; rows `a - 1..b + 1` are inside the plane (`1 <= a`,
        // `b <= h - 1`, `plane.len() >= h * w`) and `o` holds rows `a..b`.
        unsafe { dw3x3_rows_z(plane.as_ptr(), w, a, b, k9, bias, act, o.as_mut_ptr() as *mut f32) };
    }
    if a < b && !whole {
        let offs: [usize; 9] = std::array::from_fn(|t| (a + t / 3 - 1) * w + t % 3);
        let Some(o) = out.get_mut((a - oy0) * w + 1..) else { return false };
        if !dw_rows_taps::<9>(plane, &offs, w, b - a, w - 2, k9, bias, act, o, w, simd) {
            return false;
        }
    }
    let row = |r: Option<usize>| r.filter(|&r| r < h).and_then(|r| plane.get(r * w..(r + 1) * w));
    // The top / bottom rows: their three input rows (zeros outside) copied together first.
    for oy in [0, h - 1] {
        if oy < oy0 || oy >= end || (oy > 0 && h == 1) {
            continue;
        }
        let ok = with_pad_scratch(3 * w, |tmp| {
            for (ky, dst) in tmp.chunks_exact_mut(w).enumerate() {
                match row((oy + ky).checked_sub(1)) {
                    Some(src) => dst.copy_from_slice(src),
                    None => dst.fill(0.0),
                }
            }
            let offs: [usize; 9] = std::array::from_fn(|t| (t / 3) * w + t % 3);
            out.get_mut((oy - oy0) * w + 1..).is_some_and(|o| dw_rows_taps::<9>(tmp, &offs, w, 1, w - 2, k9, bias, act, o, w, simd))
        });
        if !ok {
            return false;
        }
    }
    // The first and last column of every row (but those done whole above).
    for (i, orow) in out.chunks_exact_mut(w).enumerate() {
        let oy = oy0 + i;
        if whole && (a..b).contains(&oy) {
            continue;
        }
        let (mut l, mut r) = (bias, bias);
        for ky in 0..3 {
            if let Some(rw) = row((oy + ky).checked_sub(1)) {
                l += rw[0] * k9[3 * ky + 1] + rw[1] * k9[3 * ky + 2];
                r += rw[w - 2] * k9[3 * ky] + rw[w - 1] * k9[3 * ky + 1];
            }
        }
        orow[0].write(act.apply(l));
        orow[w - 1].write(act.apply(r));
    }
    true
}

/// Rows `a..b` of a 3x3 stride-1 depthwise plane `w` wide with one column of zero padding each
/// side, all `w` columns (rows `a - 1..b + 1` must be inside the plane): 32 columns x 4 rows per
/// step as in [`dw3_rows4_z`], the taps that fall left of column 0 or right of column `w - 1`
/// masked off, so the edge columns need no scalar pass. `out` holds rows `a..b`.
/// Safety: AVX-512F present; bounds as stated.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[allow(unsafe_op_in_unsafe_fn, clippy::too_many_arguments)]
unsafe fn dw3x3_rows_z(plane: *const f32, w: usize, a: usize, b: usize, k: &[f32; 9], bias: f32, act: Activation, out: *mut f32) {
    let mut y = a;
    while y < b {
        let r = (b - y).min(4);
        let o = out.add((y - a) * w);
        match r {
            4 => dw3x3_group_z::<4>(plane, w, y, k, bias, act, o),
            3 => dw3x3_group_z::<3>(plane, w, y, k, bias, act, o),
            2 => dw3x3_group_z::<2>(plane, w, y, k, bias, act, o),
            _ => dw3x3_group_z::<1>(plane, w, y, k, bias, act, o),
        }
        y += r;
    }
}

/// `R` rows from `y` of [`dw3x3_rows_z`].
#[cfg(target_arch = "x86_64")]
#[inline(always)]
#[allow(unsafe_op_in_unsafe_fn)]
unsafe fn dw3x3_group_z<const R: usize>(plane: *const f32, w: usize, y: usize, k: &[f32; 9], bias: f32, act: Activation, out: *mut f32) {
    use std::arch::x86_64::*;
    let kv: [__m512; 9] = std::array::from_fn(|t| _mm512_set1_ps(k[t]));
    let b = _mm512_set1_ps(bias);
    let mut x = 0;
    while x < w {
        // Per vector v (columns x + 16v ..): the output lanes, and for taps kx = 0 / 2 the lanes
        // whose source column x + 16v + i + kx - 1 is inside the row.
        let mut m = [[0 as __mmask16; 3]; 2];
        for (v, mv) in m.iter_mut().enumerate() {
            let c = x + 16 * v;
            let n = lanes16(w.saturating_sub(c));
            *mv = [if c == 0 { n & !1 } else { n }, n, n & lanes16((w - 1).saturating_sub(c))];
        }
        let mut acc = [[b; 2]; R];
        for r in 0..R + 2 {
            let row = plane.add((y + r - 1) * w + x);
            for kx in 0..3 {
                // Lane i reads column x + i + kx - 1 (masked off where that is outside the row,
                // so the address one before the row's start is never read).
                let src = row.wrapping_add(kx).wrapping_sub(1);
                let v0 = _mm512_maskz_loadu_ps(m[0][kx], src);
                let v1 = _mm512_maskz_loadu_ps(m[1][kx], src.wrapping_add(16));
                for (q, a) in acc.iter_mut().enumerate() {
                    if r >= q && r - q < 3 {
                        let wv = kv[(r - q) * 3 + kx];
                        a[0] = _mm512_fmadd_ps(v0, wv, a[0]);
                        a[1] = _mm512_fmadd_ps(v1, wv, a[1]);
                    }
                }
            }
        }
        for (q, a) in acc.iter().enumerate() {
            let o = out.add(q * w + x);
            _mm512_mask_storeu_ps(o, m[0][1], act_z(act, a[0]));
            _mm512_mask_storeu_ps(o.add(16), m[1][1], act_z(act, a[1]));
        }
        x += 32;
    }
}

/// `&mut [f32]` as the uninitialised-output form the depthwise kernels take (they only write).
fn as_uninit(s: &mut [f32]) -> &mut [MaybeUninit<f32>] {
    // SAFETY: same layout; every `f32` is a valid `MaybeUninit<f32>`, and the kernels only write
    // initialised `f32` values through it.
    unsafe { &mut *(s as *mut [f32] as *mut [MaybeUninit<f32>]) }
}

/// Whether the register-blocked depthwise kernels may use AVX2 + FMA on this CPU.
fn dw_simd() -> bool {
    #[cfg(target_arch = "x86_64")]
    return has_avx2_fma();
    #[cfg(not(target_arch = "x86_64"))]
    return false;
}

/// The depthwise kernel over the whole batch.
struct DepthwiseOp<'a> {
    weight: &'a [f32],
    bias: &'a [f32],
    /// [`dwcv::pack`]ed weights (empty: the row kernels only).
    packed: &'a [f32],
    act: Activation,
    g: Geom,
}

impl CustomOp1 for DepthwiseOp<'_> {
    fn name(&self) -> &'static str {
        "likeness-depthwise-conv2d"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.g;
        let x = cpu_slice(storage, layout, self.name())?;
        let (plane_in, plane_out, kk) = (g.h * g.w, g.oh * g.ow, g.kh * g.kw);
        if x.len() != g.n * g.c_in * plane_in || self.weight.len() != g.c_in * kk || self.bias.len() != g.c_in {
            bail!("depthwise conv: input / weight sizes disagree");
        }
        let len = g.n * g.c_in * plane_out;
        // Every value is written by `dw_rows`: no zeroing pass over a fresh map.
        let mut out: Vec<f32> = Vec::with_capacity(len);
        let Some(spare) = out.spare_capacity_mut().get_mut(..len) else { bail!("depthwise conv: allocation too small") };
        #[cfg(target_arch = "x86_64")]
        if dwflat::takes(&g) {
            dwflat_planes(x, &g, self.weight, self.bias, self.act, spare)?;
            // SAFETY: `dwflat_planes` wrote every value of every image (or failed above).
            unsafe { out.set_len(len) };
            return Ok((CpuStorage::F32(out), Shape::from((g.n, g.c_in, g.oh, g.ow))));
        }
        #[cfg(target_arch = "x86_64")]
        if !self.packed.is_empty() && dwcv::takes(&g) && dw_simd() {
            dwcv_planes(x, &g, self.packed, self.act, spare)?;
            // SAFETY: `dwcv_planes` wrote every value of every image (or failed above).
            unsafe { out.set_len(len) };
            return Ok((CpuStorage::F32(out), Shape::from((g.n, g.c_in, g.oh, g.ow))));
        }
        let simd = dw_simd();
        let run = |p: usize, o: &mut [MaybeUninit<f32>]| {
            let c = p % g.c_in;
            let (Some(plane), Some(k), Some(&b)) =
                (x.get(p * plane_in..(p + 1) * plane_in), self.weight.get(c * kk..(c + 1) * kk), self.bias.get(c))
            else {
                o.iter_mut().for_each(|v| {
                    v.write(0.0);
                });
                return;
            };
            dw_rows(plane, k, b, self.act, &g, 0, o, simd);
        };
        for_chunks(spare, plane_out, len * kk, run);
        // SAFETY: every value of each of the `n * c` planes was written (by `dw_rows`, or zeroed
        // in the `else` branch, which the size checks above make unreachable).
        unsafe { out.set_len(len) };
        Ok((CpuStorage::F32(out), Shape::from((g.n, g.c_in, g.oh, g.ow))))
    }
}

/// A whole depthwise layer in bands of `rows` output rows per image, the bands shared over
/// rayon's threads when the layer is big enough: `band(image, oy0, rows, out)` writes one band,
/// `out` at its first pixel of channel 0 (channels `oh * ow` apart), `false` when sizes disagree.
#[cfg(target_arch = "x86_64")]
fn depthwise_bands(x: &[f32], g: &Geom, out: &mut [MaybeUninit<f32>], rows: usize, band: &(dyn Fn(&[f32], usize, usize, *mut f32) -> bool + Sync)) -> Result<()> {
    let (c, p, img) = (g.c_in, g.oh * g.ow, g.c_in * g.h * g.w);
    if out.len() != g.n * c * p || x.len() != g.n * img || c == 0 || p == 0 {
        bail!("depthwise conv: output size disagrees");
    }
    let rows = rows.clamp(1, g.oh);
    let bands = g.oh.div_ceil(rows);
    let jobs = g.n * bands;
    let base = SendMut(out.as_mut_ptr());
    let ok = std::sync::atomic::AtomicBool::new(true);
    let job = |j: usize| {
        let (b, oy0) = (j / bands, (j % bands) * rows);
        let r = rows.min(g.oh - oy0);
        let xi = x.get(b * img..(b + 1) * img).unwrap_or(&[]);
        // Image `b`'s output is the `c * p` values from `b * c * p` (`out` holds `n * c * p`,
        // checked above); the job writes only its own band's pixels of each channel row,
        // disjoint from every other job's, and `out` outlives the jobs.
        if !band(xi, oy0, r, base.get().wrapping_add(b * c * p + oy0 * g.ow) as *mut f32) {
            ok.store(false, std::sync::atomic::Ordering::Relaxed);
        }
    };
    let parts = split_parts(g.n * c * p * g.kh * g.kw, jobs, 1 << 18);
    let per = jobs.div_ceil(parts.max(1));
    fork(parts, &|t| (t * per..((t + 1) * per).min(jobs)).for_each(job));
    if !ok.load(std::sync::atomic::Ordering::Relaxed) {
        bail!("depthwise conv: input / weight sizes disagree");
    }
    Ok(())
}

/// A whole depthwise layer through [`dwcv::band`], in bands of about 64 KiB of output.
#[cfg(target_arch = "x86_64")]
fn dwcv_planes(x: &[f32], g: &Geom, packed: &[f32], act: Activation, out: &mut [MaybeUninit<f32>]) -> Result<()> {
    let (c, p) = (g.c_in, g.oh * g.ow);
    let rows = 16384 / (dwcv::lanes(c) * g.ow).max(1);
    depthwise_bands(x, g, out, rows, &|xi, oy0, r, o| {
        // SAFETY: the band's `(c - 1) * p + r * ow` values from `o` are its own (see
        // `depthwise_bands`).
        with_pad_scratch(dwcv::input_len(g, r), |buf| unsafe { dwcv::band(xi, g, packed, act, oy0, r, buf, o, (c - 1) * p + r * g.ow, p) })
    })
}

/// A whole depthwise layer through [`dwflat::band`], in as many bands as the layer splits into.
#[cfg(target_arch = "x86_64")]
fn dwflat_planes(x: &[f32], g: &Geom, weight: &[f32], bias: &[f32], act: Activation, out: &mut [MaybeUninit<f32>]) -> Result<()> {
    let parts = split_parts(g.n * g.c_in * g.oh * g.ow * 9, g.n * g.oh, 1 << 18).max(1);
    let rows = g.oh.div_ceil(parts.div_ceil(g.n).max(1));
    depthwise_bands(x, g, out, rows, &|xi, oy0, r, o| {
        // SAFETY: rows `oy0..oy0 + r` of each channel from `o` (`oh * ow` apart) are this band's
        // own (see `depthwise_bands`).
        unsafe { dwflat::band(xi, g, weight, bias, act, oy0, r, o, g.oh * g.ow) }
    })
}

/// A buffer pointer shared by parallel jobs that write disjoint parts of it (or only read it).
#[derive(Clone, Copy)]
struct SendMut<T>(*mut T);
// SAFETY: users write disjoint elements (or none) and keep the buffer alive for the jobs (see uses).
unsafe impl<T> Send for SendMut<T> {}
unsafe impl<T> Sync for SendMut<T> {}

impl<T> SendMut<T> {
    /// The pointer (a method, so that closures capture the whole wrapper, not its field).
    fn get(self) -> *mut T {
        self.0
    }
}

/// Direct 1x1 convolution (also the product of a KxK conv's im2col matrix): `out[m, p] =
/// act(bias[m] + sum_k w[m, k] * x[k, p])` with bias and activation applied in registers, so
/// each output is stored once and nothing is zeroed first. gemm packs its operands and is tuned
/// for large `k`; these nets' layers have 3-128 input channels over maps of 64-16k pixels, where
/// the packing and its threading cost more than the arithmetic.
#[cfg(target_arch = "x86_64")]
// The kernel is raw-pointer code throughout: its `unsafe fn`s share one contract (sizes checked by
// `run`), so per-call `unsafe` blocks inside them would only repeat it.
#[allow(unsafe_op_in_unsafe_fn, clippy::too_many_arguments)]
mod pointwise {
    use super::Activation;
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;

    /// Output rows per register block: 6 rows x 16 pixels = 12 accumulators, plus two input
    /// vectors and one broadcast weight, fits AVX2's 16 registers.
    const MR: usize = 6;
    const NR: usize = 16;
    /// Floats of the packed input tile (32 KiB: the L1 data cache).
    const PACK: usize = 8192;
    /// Fewest output pixels of a band of [`run_dw`] / [`run_banded`] split over threads.
    const MIN_BAND_PIXELS: usize = 96;
    /// Largest output map (pixels) of a depthwise + 1x1 pair split over threads by channels
    /// (see [`run_dw`]).
    const SMALL_MAP: usize = 144;
    /// Multiply-adds of a layer before splitting it over threads pays: a hand-off costs tens of
    /// microseconds on a busy machine, as much as ~2M multiply-adds on one core.
    const SPLIT_WORK: usize = 1 << 21;

    /// What happens to `conv + bias` before the store: an optional residual added (`add`, rows
    /// `[add_rows, p]`; rows past it add nothing, as a residual zero-padded in channels), then a
    /// per-row PReLU (`alpha`) or else the activation.
    #[derive(Clone, Copy)]
    pub(super) struct Post<'a> {
        pub act: Activation,
        pub add: Option<(&'a [f32], usize)>,
        pub alpha: Option<&'a [f32]>,
    }

    /// [`Post`] as raw pointers for the kernel, shifted to start at output row `r`.
    #[derive(Clone, Copy)]
    struct PostPtr {
        act: Activation,
        add: *const f32,
        add_rows: usize,
        alpha: *const f32,
    }

    impl PostPtr {
        #[inline(always)]
        unsafe fn at_row(self, r: usize, p: usize) -> Self {
            PostPtr {
                act: self.act,
                add: if r < self.add_rows { self.add.add(r * p) } else { self.add },
                add_rows: self.add_rows.saturating_sub(r),
                alpha: if self.alpha.is_null() { self.alpha } else { self.alpha.add(r) },
            }
        }

        /// Row `r`'s value `v` at pixel offset `j` (from this row block's first output).
        #[inline(always)]
        unsafe fn apply_v(self, r: usize, p: usize, j: usize, mut v: __m256) -> __m256 {
            if r < self.add_rows {
                v = _mm256_add_ps(v, _mm256_loadu_ps(self.add.add(r * p + j)));
            }
            if !self.alpha.is_null() {
                let a = _mm256_broadcast_ss(&*self.alpha.add(r));
                let zero = _mm256_setzero_ps();
                return _mm256_add_ps(_mm256_max_ps(v, zero), _mm256_mul_ps(a, _mm256_min_ps(v, zero)));
            }
            match self.act {
                Activation::Identity => v,
                Activation::Relu => _mm256_max_ps(v, _mm256_setzero_ps()),
                Activation::Relu6 => _mm256_min_ps(_mm256_max_ps(v, _mm256_setzero_ps()), _mm256_set1_ps(6.0)),
                Activation::HardSwish => {
                    let g = _mm256_min_ps(_mm256_max_ps(_mm256_add_ps(v, _mm256_set1_ps(3.0)), _mm256_setzero_ps()), _mm256_set1_ps(6.0));
                    _mm256_mul_ps(v, _mm256_mul_ps(g, _mm256_set1_ps(1.0 / 6.0)))
                }
            }
        }

        /// [`Self::apply_v`] on 16 lanes, the residual read only in the lanes of `mask` (a
        /// partial panel's end may be the end of the map).
        #[inline(always)]
        #[allow(unsafe_op_in_unsafe_fn)]
        unsafe fn apply_z(self, r: usize, p: usize, j: usize, mut v: __m512, mask: __mmask16) -> __m512 {
            if r < self.add_rows {
                v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, self.add.add(r * p + j)));
            }
            if !self.alpha.is_null() {
                let (a, zero) = (_mm512_set1_ps(*self.alpha.add(r)), _mm512_setzero_ps());
                return _mm512_add_ps(_mm512_max_ps(v, zero), _mm512_mul_ps(a, _mm512_min_ps(v, zero)));
            }
            super::act_z(self.act, v)
        }

        /// The scalar form of [`Self::apply_v`].
        #[inline(always)]
        unsafe fn apply(self, r: usize, p: usize, j: usize, mut v: f32) -> f32 {
            if r < self.add_rows {
                v += *self.add.add(r * p + j);
            }
            if !self.alpha.is_null() {
                let a = *self.alpha.add(r);
                return v.max(0.0) + a * v.min(0.0);
            }
            self.act.apply(v)
        }
    }

    /// `R` rows (`R <= MR`) x 16 pixels. `panel` is the 16 pixels' input packed `[k][16]`
    /// (sequential loads; the rows of `x` itself are often a multiple of 4 KiB apart, and k of them
    /// would compete for one L1 set), `w` points at the block's first weight row (`k` apart),
    /// `out` at the block's first output (rows `p` apart), pixel offset `j` within the rows.
    #[inline(always)]
    unsafe fn block<const R: usize>(panel: *const f32, p: usize, k: usize, w: *const f32, bias: *const f32, post: PostPtr, out: *mut f32, j: usize) {
        let mut acc0 = [_mm256_setzero_ps(); R];
        let mut acc1 = [_mm256_setzero_ps(); R];
        for r in 0..R {
            acc0[r] = _mm256_broadcast_ss(&*bias.add(r));
            acc1[r] = acc0[r];
        }
        for i in 0..k {
            let a = _mm256_loadu_ps(panel.add(i * NR));
            let b = _mm256_loadu_ps(panel.add(i * NR + 8));
            for r in 0..R {
                let wv = _mm256_broadcast_ss(&*w.add(r * k + i));
                acc0[r] = _mm256_fmadd_ps(wv, a, acc0[r]);
                acc1[r] = _mm256_fmadd_ps(wv, b, acc1[r]);
            }
        }
        for r in 0..R {
            let o = out.add(r * p + j);
            _mm256_storeu_ps(o, post.apply_v(r, p, j, acc0[r]));
            _mm256_storeu_ps(o.add(8), post.apply_v(r, p, j + 8, acc1[r]));
        }
    }

    /// Rows `R` over the packed panels of pixels `j0..j0 + 16 * panels`.
    #[inline(always)]
    unsafe fn rows_panels<const R: usize>(packed: *const f32, panels: usize, p: usize, k: usize, w: *const f32, bias: *const f32, post: PostPtr, out: *mut f32, j0: usize) {
        for jb in 0..panels {
            block::<R>(packed.add(jb * k * NR), p, k, w, bias, post, out, j0 + jb * NR);
        }
    }

    /// Pixels `js..je` of `out` (`[m, p]` at `op`) for weight rows `w` `[m, k]` (`m =
    /// bias.len()`) and the input at `xin`: `k` rows `xs` apart, pixel `j` at column `j - xoff`.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run_avx2(xin: (*const f32, usize, usize), p: usize, k: usize, w: &[f32], bias: &[f32], post: PostPtr, op: *mut f32, js: usize, je: usize) {
        let (xp, xs, xoff) = xin;
        let m = bias.len();
        // Not zeroed (a 32 KiB memset per call, and there are hundreds of calls in a pass): every
        // packed value is written before the block kernels or the dot products read it.
        let mut packed = [MaybeUninit::<f32>::uninit(); PACK];
        // Pixel tiles whose packed input (`k x tile`) stays in L1 across all the row blocks.
        let tile = ((PACK / k.max(1)) / NR * NR).max(NR);
        let (wp, bp) = (w.as_ptr(), bias.as_ptr());
        let full = js + (je - js) / NR * NR;
        let mut j0 = js;
        while j0 < full {
            let j1 = (j0 + tile).min(full);
            let panels = (j1 - j0) / NR;
            let pk = packed.as_mut_ptr() as *mut f32;
            for jb in 0..panels {
                for i in 0..k {
                    let src = xp.add(i * xs + j0 + jb * NR - xoff);
                    let dst = pk.add((jb * k + i) * NR);
                    _mm256_storeu_ps(dst, _mm256_loadu_ps(src));
                    _mm256_storeu_ps(dst.add(8), _mm256_loadu_ps(src.add(8)));
                }
            }
            let mut r = 0;
            while r < m {
                let (wr, br, or, po) = (wp.add(r * k), bp.add(r), op.add(r * p), post.at_row(r, p));
                match m - r {
                    1 => rows_panels::<1>(pk, panels, p, k, wr, br, po, or, j0),
                    2 => rows_panels::<2>(pk, panels, p, k, wr, br, po, or, j0),
                    3 => rows_panels::<3>(pk, panels, p, k, wr, br, po, or, j0),
                    4 => rows_panels::<4>(pk, panels, p, k, wr, br, po, or, j0),
                    5 => rows_panels::<5>(pk, panels, p, k, wr, br, po, or, j0),
                    _ => rows_panels::<MR>(pk, panels, p, k, wr, br, po, or, j0),
                }
                r += MR;
            }
            j0 = j1;
        }
        // Pixels past the last whole panel (all of a map under 16 pixels, such as the face mesh's
        // 3x3 heads or a squeeze-excite gate): each output is a dot product along `k`, 8 lanes
        // at a time, over the tail's inputs transposed to `[pixel][k]` (at most 15 x 512 floats).
        if j0 < je {
            dot_tail(xin, p, k, w, bias, post, op, j0, je, packed.as_mut_ptr() as *mut f32);
        }
    }

    /// Pixels `j0..je` (under 16 of them) as dot products along `k`, through `pk` (room for
    /// `PACK` floats) holding their inputs transposed. Safety: as [`run_avx2`].
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn dot_tail(xin: (*const f32, usize, usize), p: usize, k: usize, w: &[f32], bias: &[f32], post: PostPtr, op: *mut f32, j0: usize, je: usize, pk: *mut f32) {
        let (xp, xs, xoff) = xin;
        let (m, wp, bp) = (bias.len(), w.as_ptr(), bias.as_ptr());
        let tail = je - j0;
        for t in 0..tail {
            for i in 0..k {
                *pk.add(t * k + i) = *xp.add(i * xs + j0 + t - xoff);
            }
        }
        for r in 0..m {
            let mut t = 0;
            while t < tail {
                let q = match tail - t {
                    1 => dots::<1>(pk, k, wp.add(r * k), *bp.add(r), post, r, p, op, j0, t),
                    2 => dots::<2>(pk, k, wp.add(r * k), *bp.add(r), post, r, p, op, j0, t),
                    3 => dots::<3>(pk, k, wp.add(r * k), *bp.add(r), post, r, p, op, j0, t),
                    _ => dots::<4>(pk, k, wp.add(r * k), *bp.add(r), post, r, p, op, j0, t),
                };
                t += q;
            }
        }
    }

    /// Pixels of the AVX-512 kernel's panels: two 16-lane vectors.
    const NZ: usize = 32;

    /// `R` rows (`R <= 8`) x `V` vectors of 16 pixels from a panel packed `[k][NZ]`: the AVX-512
    /// form of [`block`]. 8 rows x 2 vectors is 16 accumulators; each step loads 2 vectors and
    /// 8 broadcast weights (folded into the FMAs) for 16 FMAs, so the FMA units, not the loads,
    /// set the pace. `MASK`: the panel ends early, only the lanes of `m0` / `m1` are stored.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn block_z<const R: usize, const V: usize, const MASK: bool>(panel: *const f32, rs: usize, p: usize, k: usize, w: *const f32, bias: *const f32, post: PostPtr, out: *mut f32, j: usize, masks: [__mmask16; 3]) {
        let mut acc = [[_mm512_setzero_ps(); V]; R];
        for (r, a) in acc.iter_mut().enumerate() {
            *a = [_mm512_set1_ps(*bias.add(r)); V];
        }
        for i in 0..k {
            // Input row `i` of the panel `rs` apart (a packed panel's, or the map's own rows);
            // a partial panel read in place is masked to its pixels.
            let x: [__m512; V] = std::array::from_fn(|v| {
                let src = panel.add(i * rs + 16 * v);
                if MASK {
                    _mm512_maskz_loadu_ps(masks[v], src)
                } else {
                    _mm512_loadu_ps(src)
                }
            });
            for (r, a) in acc.iter_mut().enumerate() {
                let wv = _mm512_set1_ps(*w.add(r * k + i));
                for v in 0..V {
                    a[v] = _mm512_fmadd_ps(wv, x[v], a[v]);
                }
            }
        }
        for (r, a) in acc.iter().enumerate() {
            for (v, &mask) in masks.iter().enumerate().take(V) {
                let o = out.add(r * p + j + 16 * v);
                if MASK {
                    _mm512_mask_storeu_ps(o, mask, post.apply_z(r, p, j + 16 * v, a[v], mask));
                } else {
                    _mm512_storeu_ps(o, post.apply_z(r, p, j + 16 * v, a[v], 0xffff));
                }
            }
        }
    }

    /// Rows `R` over the packed panels of pixels `j0..j0 + px`, the last panel possibly partial.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn rows_panels_z<const R: usize>(src: *const f32, (rs, step): (usize, usize), px: usize, p: usize, k: usize, w: *const f32, bias: *const f32, post: PostPtr, out: *mut f32, j0: usize) {
        let mut jb = 0;
        while jb * NZ < px {
            let (panel, j) = (src.add(jb * step), j0 + jb * NZ);
            match px - jb * NZ {
                NZ.. => block_z::<R, 2, false>(panel, rs, p, k, w, bias, post, out, j, [0xffff; 3]),
                n @ 17.. => block_z::<R, 2, true>(panel, rs, p, k, w, bias, post, out, j, panel_masks(n)),
                n => block_z::<R, 1, true>(panel, rs, p, k, w, bias, post, out, j, panel_masks(n)),
            }
            jb += 1;
        }
    }

    /// How many of input `rows` (`xs` floats apart) start within `within` bytes of a multiple of
    /// 4 KiB from row 0: rows that compete with it for the same L1 sets.
    fn rows_near_4k(xs: usize, rows: std::ops::Range<usize>, within: usize) -> usize {
        rows.filter(|&i| {
            let o = (i * xs * 4) % 4096;
            o < within || o > 4096 - within
        })
        .count()
    }

    /// Every output row (`bias.len()`, 8 per register block) over the panels of pixels `j0..j0
    /// + px` at `src` (rows `rs` apart, panels `step` apart: packed or the map's own rows).
    #[inline(always)]
    unsafe fn all_rows_z(src: *const f32, (rs, step): (usize, usize), px: usize, p: usize, k: usize, w: &[f32], bias: &[f32], post: PostPtr, op: *mut f32, j0: usize) {
        const RZ: usize = 8;
        let (m, wp, bp) = (bias.len(), w.as_ptr(), bias.as_ptr());
        let mut r = 0;
        while r < m {
            let (wr, br, or, po) = (wp.add(r * k), bp.add(r), op.add(r * p), post.at_row(r, p));
            let pan = (rs, step);
            match m - r {
                1 => rows_panels_z::<1>(src, pan, px, p, k, wr, br, po, or, j0),
                2 => rows_panels_z::<2>(src, pan, px, p, k, wr, br, po, or, j0),
                3 => rows_panels_z::<3>(src, pan, px, p, k, wr, br, po, or, j0),
                4 => rows_panels_z::<4>(src, pan, px, p, k, wr, br, po, or, j0),
                5 => rows_panels_z::<5>(src, pan, px, p, k, wr, br, po, or, j0),
                6 => rows_panels_z::<6>(src, pan, px, p, k, wr, br, po, or, j0),
                7 => rows_panels_z::<7>(src, pan, px, p, k, wr, br, po, or, j0),
                _ => rows_panels_z::<RZ>(src, pan, px, p, k, wr, br, po, or, j0),
            }
            r += RZ;
        }
    }

    /// The lanes of a panel's vectors that hold its first `n` pixels.
    #[inline(always)]
    fn panel_masks(n: usize) -> [__mmask16; 3] {
        [super::lanes16(n), super::lanes16(n.saturating_sub(16)), super::lanes16(n.saturating_sub(32))]
    }

    /// [`run_avx2`] with 16-lane vectors: panels of 32 pixels, 8 output rows per register block,
    /// and a map's last few pixels (8 to 31) as one masked panel instead of dot products. Same
    /// contract; inputs deeper than a 32-pixel panel's packing allows go to [`run_avx2`].
    #[target_feature(enable = "avx512f,avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn run_avx512(xin: (*const f32, usize, usize), p: usize, k: usize, w: &[f32], bias: &[f32], post: PostPtr, op: *mut f32, js: usize, je: usize) {
        if (8..=48).contains(&(je - js)) {
            return run_small_z(xin, p, k, w, bias, post, op, js, je);
        }
        if k * NZ > PACK {
            return run_avx2(xin, p, k, w, bias, post, op, js, je);
        }
        // Input rows a multiple of 4 KiB apart (or nearly) share L1 sets: read in place, a
        // block's k rows would evict each other, so those are packed as below.
        if rows_near_4k(xin.1, 1..k.min(64), 256) == 0 {
            match bias.len() {
                16 => return run_rows_z::<16>(xin, p, k, w, bias, post, op, js, je),
                8 => return run_rows_z::<8>(xin, p, k, w, bias, post, op, js, je),
                _ => {}
            }
        }
        let (xp, xs, xoff) = xin;
        let tile = ((PACK / k.max(1)) / NZ * NZ).max(NZ);
        // Read in place unless many of the k rows land on one L1 set (rows a multiple of 4 KiB
        // apart: the 96x96 maps); where only every few rows fall 4 KiB apart (48x48: every
        // fourth) or a small contiguous matrix, packing costs more than it saves (the 96 -> 48
        // block's 48x48 16 -> 32 1x1: 29 -> 25 us, the 5x5 stem 223 -> 199 us on one core).
        if rows_near_4k(xs, 1..k, 128) < 8 {
            let mut j0 = js;
            while j0 < je {
                let j1 = (j0 + tile).min(je);
                all_rows_z(xp.add(j0 - xoff), (xs, NZ), j1 - j0, p, k, w, bias, post, op, j0);
                j0 = j1;
            }
            return;
        }
        let mut packed = [MaybeUninit::<f32>::uninit(); PACK];
        let pk = packed.as_mut_ptr() as *mut f32;
        // Whole panels, then the rest as one masked panel when it fills at least half a vector
        // (fewer pixels are cheaper as dot products along `k`, below).
        let rest = (je - js) % NZ;
        let end = if rest >= 8 { je } else { je - rest };
        let mut j0 = js;
        while j0 < end {
            // Tiles are whole panels: only the map's last tile can end in a partial one.
            let j1 = (j0 + tile).min(end);
            let px = j1 - j0;
            for jb in 0..px.div_ceil(NZ) {
                let [m0, m1, _] = panel_masks(px - jb * NZ);
                for i in 0..k {
                    let src = xp.add(i * xs + j0 + jb * NZ - xoff);
                    let dst = pk.add((jb * k + i) * NZ);
                    // Masked-off lanes are neither read nor left unwritten (zeroed).
                    _mm512_storeu_ps(dst, _mm512_maskz_loadu_ps(m0, src));
                    _mm512_storeu_ps(dst.add(16), _mm512_maskz_loadu_ps(m1, src.add(16)));
                }
            }
            all_rows_z(pk, (NZ, k * NZ), px, p, k, w, bias, post, op, j0);
            j0 = j1;
        }
        if end < je {
            dot_tail(xin, p, k, w, bias, post, op, end, je, pk);
        }
    }

    /// Pixels `js..je`, 8 to 48 of them (a 6x6 or 3x3 map, a band of a 12x12 one), every output
    /// row, read in place: 8 rows x up to 3 vectors (the last masked) per register block, each
    /// input vector loaded once per block. Packing such a sliver into 32-pixel panels (each part
    /// of a row split packing it again) and its last few pixels as dot products cost as much as
    /// the product: 6x6x128 -> 128 took 10.6 us on one core.
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn run_small_z(xin: (*const f32, usize, usize), p: usize, k: usize, w: &[f32], bias: &[f32], post: PostPtr, op: *mut f32, js: usize, je: usize) {
        let n = je - js;
        let masks = panel_masks(n);
        let x = xin.0.add(js - xin.2);
        let (m, wp, bp) = (bias.len(), w.as_ptr(), bias.as_ptr());
        let mut r = 0;
        while r < m {
            let (wr, br, or, po) = (wp.add(r * k), bp.add(r), op.add(r * p), post.at_row(r, p));
            let rows = (m - r).min(8);
            match n.div_ceil(16) {
                1 => small_rows_z::<1>(rows, x, xin.1, k, wr, br, po, or, p, js, masks),
                2 => small_rows_z::<2>(rows, x, xin.1, k, wr, br, po, or, p, js, masks),
                _ => small_rows_z::<3>(rows, x, xin.1, k, wr, br, po, or, p, js, masks),
            }
            r += 8;
        }
    }

    /// `rows` (1-8) output rows of [`run_small_z`]: [`block_z`] over its `V` masked vectors read
    /// in place (`x` at pixel `j`, rows `xs` apart; `out` at the block's first output row).
    #[inline(always)]
    unsafe fn small_rows_z<const V: usize>(rows: usize, x: *const f32, xs: usize, k: usize, w: *const f32, bias: *const f32, post: PostPtr, out: *mut f32, p: usize, j: usize, masks: [__mmask16; 3]) {
        match rows {
            1 => block_z::<1, V, true>(x, xs, p, k, w, bias, post, out, j, masks),
            2 => block_z::<2, V, true>(x, xs, p, k, w, bias, post, out, j, masks),
            3 => block_z::<3, V, true>(x, xs, p, k, w, bias, post, out, j, masks),
            4 => block_z::<4, V, true>(x, xs, p, k, w, bias, post, out, j, masks),
            5 => block_z::<5, V, true>(x, xs, p, k, w, bias, post, out, j, masks),
            6 => block_z::<6, V, true>(x, xs, p, k, w, bias, post, out, j, masks),
            7 => block_z::<7, V, true>(x, xs, p, k, w, bias, post, out, j, masks),
            _ => block_z::<8, V, true>(x, xs, p, k, w, bias, post, out, j, masks),
        }
    }

    /// All `R` output rows (a layer with at most 16 outputs) x 16 pixels per register block,
    /// straight from the input rows without packing: each input vector is loaded once for all
    /// the rows, where 8-row blocks over packed panels spent as much on the packing as on the
    /// product. 17 loads (16 of them broadcasts folded into the FMAs) per 16 FMAs.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn run_rows_z<const R: usize>(xin: (*const f32, usize, usize), p: usize, k: usize, w: &[f32], bias: &[f32], post: PostPtr, op: *mut f32, js: usize, je: usize) {
        let (xp, xs, xoff) = xin;
        let (wp, bp) = (w.as_ptr(), bias.as_ptr());
        let mut j = js;
        while j < je {
            let mask = super::lanes16(je - j);
            let mut acc: [__m512; R] = std::array::from_fn(|r| _mm512_set1_ps(*bp.add(r)));
            let x = xp.add(j - xoff);
            for i in 0..k {
                let v = _mm512_maskz_loadu_ps(mask, x.add(i * xs));
                for (r, a) in acc.iter_mut().enumerate() {
                    *a = _mm512_fmadd_ps(_mm512_set1_ps(*wp.add(r * k + i)), v, *a);
                }
            }
            for (r, a) in acc.iter().enumerate() {
                _mm512_mask_storeu_ps(op.add(r * p + j), mask, post.apply_z(r, p, j, *a, mask));
            }
            j += 16;
        }
    }

    /// The fastest kernel this CPU has for [`run_avx2`]'s contract.
    /// Safety: as [`run_avx2`] (AVX2 + FMA present).
    #[allow(clippy::too_many_arguments)]
    unsafe fn kernel(xin: (*const f32, usize, usize), p: usize, k: usize, w: &[f32], bias: &[f32], post: PostPtr, op: *mut f32, js: usize, je: usize) {
        if super::has_avx512() {
            run_avx512(xin, p, k, w, bias, post, op, js, je)
        } else {
            run_avx2(xin, p, k, w, bias, post, op, js, je)
        }
    }

    /// Output row `r` at the `Q` tail pixels `j0 + t..`: dot products of the weight row `w`
    /// with the transposed inputs `xt` (`[pixel][k]`), bias and post-op applied. Returns `Q`.
    #[inline(always)]
    unsafe fn dots<const Q: usize>(xt: *const f32, k: usize, w: *const f32, bias: f32, post: PostPtr, r: usize, p: usize, op: *mut f32, j0: usize, t: usize) -> usize {
        // Two accumulators per pixel (alternate 8-lane chunks of `k`) so that even one pixel
        // keeps two FMA chains in flight.
        let mut acc = [_mm256_setzero_ps(); Q];
        let mut acc2 = [_mm256_setzero_ps(); Q];
        let mut i = 0;
        while i + 16 <= k {
            let (wv, wv2) = (_mm256_loadu_ps(w.add(i)), _mm256_loadu_ps(w.add(i + 8)));
            for q in 0..Q {
                acc[q] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(xt.add((t + q) * k + i)), acc[q]);
                acc2[q] = _mm256_fmadd_ps(wv2, _mm256_loadu_ps(xt.add((t + q) * k + i + 8)), acc2[q]);
            }
            i += 16;
        }
        if i + 8 <= k {
            let wv = _mm256_loadu_ps(w.add(i));
            for q in 0..Q {
                acc[q] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(xt.add((t + q) * k + i)), acc[q]);
            }
            i += 8;
        }
        for q in 0..Q {
            let a = _mm256_add_ps(acc[q], acc2[q]);
            let h = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps::<1>(a));
            let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
            let h = _mm_add_ss(h, _mm_shuffle_ps::<1>(h, h));
            let mut v = bias + _mm_cvtss_f32(h);
            for ii in i..k {
                v = (*xt.add((t + q) * k + ii)).mul_add(*w.add(ii), v);
            }
            let j = j0 + t + q;
            *op.add(r * p + j) = post.apply(r, p, j, v);
        }
        Q
    }

    /// Whether [`run`] takes this shape on this CPU: AVX2 + FMA, at least one whole panel of
    /// pixels, and 16 pixels' inputs fitting the packed tile (deeper products are gemm's).
    pub(super) fn fits(k: usize, p: usize) -> bool {
        super::has_avx2_fma() && p > 0 && k > 0 && k * NR <= PACK
    }

    /// Writes every value of `out` (`bias.len() x p`), splitting the rows over rayon's threads
    /// when there is enough work. `false` (nothing written) when the sizes disagree or the shape
    /// does not [`fits`].
    pub(super) fn run(x: &[f32], p: usize, k: usize, w: &[f32], bias: &[f32], post: Post, out: &mut [MaybeUninit<f32>]) -> bool {
        let m = bias.len();
        let add_ok = post.add.is_none_or(|(a, rows)| rows <= m && a.len() >= rows * p);
        if !fits(k, p) || x.len() < k * p || w.len() < m * k || out.len() != m * p || !add_ok || post.alpha.is_some_and(|a| a.len() < m) {
            return false;
        }
        let (add, add_rows) = post.add.map_or((std::ptr::null(), 0), |(a, rows)| (a.as_ptr(), rows));
        let ptrs = PostPtr { act: post.act, add, add_rows, alpha: post.alpha.map_or(std::ptr::null(), |a| a.as_ptr()) };
        let op = out.as_mut_ptr() as *mut f32;
        if p < 2 * NR {
            // Maps of under two panels (the face mesh's 3x3 heads and its 1404-channel output,
            // squeeze-excite gates): split over blocks of output rows instead of pixels.
            // SAFETY: AVX2 + FMA are present; the sizes were checked above.
            unsafe { run_row_split((x.as_ptr(), p, 0), p, k, w, bias, ptrs, op) };
            return true;
        }
        let parts = super::split_parts(m * k * p, p / NR, SPLIT_WORK);
        if parts <= 1 {
            // SAFETY: AVX2 + FMA are present; the sizes were checked above.
            unsafe { kernel((x.as_ptr(), p, 0), p, k, w, bias, ptrs, op, 0, p) };
            return true;
        }
        // Each task takes a band of whole pixel panels across all the rows (the split stays even
        // however few rows there are); the last one also takes the tail.
        let panels = (p / NR).div_ceil(parts);
        let shared = SendPost(ptrs, op);
        let band = |t: usize| ((t * panels * NR).min(p), if t + 1 == parts { p } else { ((t + 1) * panels * NR).min(p) });
        super::fork(parts, &|t| {
            let shared = shared;
            let (js, je) = band(t);
            // SAFETY: as above; tasks write disjoint pixel columns of `out`, which the `&mut`
            // borrow keeps alive and unaliased until `fork` returns.
            unsafe { kernel((x.as_ptr(), p, 0), p, k, w, bias, shared.0, shared.1, js, je) };
        });
        true
    }

    /// All `p` pixels of `out` (`[m, p]` at `op`, `m = bias.len()`) from the input `xin` (as in
    /// [`run_avx2`]), split over threads by blocks of output rows: the split for maps too small
    /// to share by pixels. Safety: as [`run_avx2`], over all of `0..p`.
    unsafe fn run_row_split(xin: (*const f32, usize, usize), p: usize, k: usize, w: &[f32], bias: &[f32], ptrs: PostPtr, op: *mut f32) {
        let m = bias.len();
        // Parts of whole register blocks (8 rows with AVX-512): an 18-row part ran a 2-row
        // block, a quarter of the FMA chains in flight.
        let mr = if super::has_avx512() { 8 } else { MR };
        let blocks = m.div_ceil(mr);
        let parts = super::split_parts(m * k * p, blocks, SPLIT_WORK);
        if parts <= 1 {
            kernel(xin, p, k, w, bias, ptrs, op, 0, p);
            return;
        }
        let per = blocks.div_ceil(parts) * mr;
        let shared = SendPost(ptrs, op);
        let input = super::SendMut(xin.0 as *mut f32);
        let (xs, xoff) = (xin.1, xin.2);
        super::fork(parts, &|t| {
            let shared = shared;
            let (r0, r1) = ((t * per).min(m), ((t + 1) * per).min(m));
            if let (Some(wr), Some(br)) = (w.get(r0 * k..r1 * k), bias.get(r0..r1)) {
                // SAFETY: as the caller's; rows `r0..r1` of the output (and of the residual and
                // slopes, shifted by `at_row`) belong to this task alone, the input is only read.
                unsafe { kernel((input.get() as *const f32, xs, xoff), p, k, wr, br, shared.0.at_row(r0, p), shared.1.add(r0 * p), 0, p) };
            }
        });
    }

    /// A 3x3 stride-2 conv with 16 outputs and no top / left padding (the face mesh's and the
    /// selfie segmenter's stems: TensorFlow SAME on an even size) on AVX-512: the taps of 16
    /// output pixels are split out of the input rows by permutes (even, odd and next-even
    /// columns) straight into the FMAs, no im2col matrix. `false` (nothing written) for any other
    /// shape or CPU, or when the sizes disagree.
    pub(super) fn run_stem(x: &[f32], g: &super::Geom, w: &[f32], bias: &[f32], post: Post, out: &mut [MaybeUninit<f32>]) -> bool {
        let (m, p, k) = (bias.len(), g.oh * g.ow, g.c_in * 9);
        let shape = g.kh == 3 && g.kw == 3 && g.stride == 2 && g.pt == 0 && g.pl == 0 && m == 16 && g.c_out == 16 && g.ow > 0;
        let add_ok = post.add.is_none_or(|(a, rows)| rows <= m && a.len() >= rows * p);
        if !super::has_avx512() || !shape || x.len() != g.c_in * g.h * g.w || w.len() < m * k || out.len() != m * p || !add_ok || post.alpha.is_some_and(|a| a.len() < m) {
            return false;
        }
        let (add, add_rows) = post.add.map_or((std::ptr::null(), 0), |(a, rows)| (a.as_ptr(), rows));
        let ptrs = PostPtr { act: post.act, add, add_rows, alpha: post.alpha.map_or(std::ptr::null(), |a| a.as_ptr()) };
        let shared = SendPost(ptrs, out.as_mut_ptr() as *mut f32);
        let parts = super::split_parts(m * k * p, g.oh, SPLIT_WORK).max(1);
        let rows = g.oh.div_ceil(parts);
        super::fork(parts, &|t| {
            let shared = shared;
            let (r0, r1) = ((t * rows).min(g.oh), ((t + 1) * rows).min(g.oh));
            // SAFETY: AVX-512F is present; `x` holds the `c_in x h x w` image and `out` the
            // `16 x oh*ow` output (checked above); parts write disjoint output rows.
            unsafe { stem_rows_z(x, g, w, bias, shared.0, shared.1, r0, r1) };
        });
        true
    }

    /// Output rows `r0..r1` of [`run_stem`]. Safety: AVX-512F present, sizes as checked there.
    #[target_feature(enable = "avx512f,avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn stem_rows_z(x: &[f32], g: &super::Geom, w: &[f32], bias: &[f32], post: PostPtr, op: *mut f32, r0: usize, r1: usize) {
        const R: usize = 16;
        let (p, k, ow, iw) = (g.oh * g.ow, g.c_in * 9, g.ow, g.w);
        let (xp, wp, bp) = (x.as_ptr(), w.as_ptr(), bias.as_ptr());
        for oy in r0..r1 {
            let mut ox = 0;
            while ox < ow {
                let c = 2 * ox;
                let mut acc: [__m512; R] = std::array::from_fn(|r| _mm512_set1_ps(*bp.add(r)));
                for ci in 0..g.c_in {
                    for ky in 0..3 {
                        let iy = 2 * oy + ky;
                        if iy >= g.h {
                            // The bottom padding row.
                            continue;
                        }
                        let taps = super::stride2_taps(xp.add((ci * g.h + iy) * iw + c), iw.saturating_sub(c));
                        let t = ci * 9 + ky * 3;
                        for (kx, v) in taps.into_iter().enumerate() {
                            for (r, a) in acc.iter_mut().enumerate() {
                                *a = _mm512_fmadd_ps(_mm512_set1_ps(*wp.add(r * k + t + kx)), v, *a);
                            }
                        }
                    }
                }
                let mo = super::lanes16(ow - ox);
                let j = oy * ow + ox;
                for (r, a) in acc.iter().enumerate() {
                    _mm512_mask_storeu_ps(op.add(r * p + j), mo, post.apply_z(r, p, j, *a, mo));
                }
                ox += 16;
            }
        }
    }

    /// `post(w x col)` for a map of `oh x ow` outputs whose `k x oh*ow` input matrix is made a
    /// band of output rows at a time by `fill(oy0, rows, scratch)` (`k` rows of `rows * ow`
    /// values, every one written): im2col in cache-sized pieces, bands shared over threads.
    /// Writes every value of `out`; `false` (nothing written) when the sizes disagree or the
    /// shape does not [`fits`].
    #[allow(clippy::too_many_arguments)]
    pub(super) fn run_banded(oh: usize, ow: usize, k: usize, w: &[f32], bias: &[f32], post: Post, out: &mut [MaybeUninit<f32>], fill: &(dyn Fn(usize, usize, &mut [f32]) + Sync)) -> bool {
        let (m, p) = (bias.len(), oh * ow);
        let add_ok = post.add.is_none_or(|(a, rows)| rows <= m && a.len() >= rows * p);
        if !fits(k, p) || ow == 0 || w.len() < m * k || out.len() != m * p || !add_ok || post.alpha.is_some_and(|a| a.len() < m) {
            return false;
        }
        let band = band_rows(oh, ow, k, NZ, m * k * p);
        let bands = oh.div_ceil(band);
        let (add, add_rows) = post.add.map_or((std::ptr::null(), 0), |(a, rows)| (a.as_ptr(), rows));
        let ptrs = PostPtr { act: post.act, add, add_rows, alpha: post.alpha.map_or(std::ptr::null(), |a| a.as_ptr()) };
        if p < 2 * NR {
            // A map of a few pixels (the face mesh's 3x3 -> 1x1 output convs): its whole matrix,
            // then the product split by blocks of output rows, as for a 1x1 conv on such a map
            // (its weights, 1.6 MB for the 1404 mesh outputs, are what takes the time: each
            // thread streams half of them).
            super::with_scratch(k * p, |col| {
                fill(0, oh, col);
                // SAFETY: AVX2 + FMA are present (`fits`); `col` holds the `k x p` matrix; the
                // sizes were checked above.
                unsafe { run_row_split((col.as_ptr(), p, 0), p, k, w, bias, ptrs, out.as_mut_ptr() as *mut f32) };
            });
            return true;
        }
        let shared = SendPost(ptrs, out.as_mut_ptr() as *mut f32);
        let run_bands = |b0: usize, b1: usize| {
            let shared = shared;
            for bi in b0..b1 {
                let (oy0, rows) = (bi * band, band.min(oh - bi * band));
                let bpx = rows * ow;
                super::with_scratch(k * bpx, |col| {
                    fill(oy0, rows, col);
                    // SAFETY: AVX2 + FMA are present (`fits`); `col` holds the band's `k` rows of
                    // `bpx` pixels from pixel `oy0 * ow`; bands write disjoint output pixels.
                    unsafe { kernel((col.as_ptr(), bpx, oy0 * ow), p, k, w, bias, shared.0, shared.1, oy0 * ow, oy0 * ow + bpx) };
                });
            }
        };
        if super::split_parts(m * k * p, bands, SPLIT_WORK) <= 1 {
            run_bands(0, bands);
            return true;
        }
        // One part per band (taken in turn by whichever thread is free).
        super::fork(bands, &|t| run_bands(t, t + 1));
        true
    }

    /// A depthwise conv feeding the 1x1 conv: its weights and geometry.
    pub(super) struct Depthwise<'a> {
        pub weight: &'a [f32],
        pub bias: &'a [f32],
        /// [`super::dwcv::pack`]ed weights (empty: the row kernels only).
        pub packed: &'a [f32],
        pub act: Activation,
        pub g: super::Geom,
        /// The residual is the 2x2 stride-2 max pool of the input itself (a stride-2 block's
        /// skip), pooled band by band next to the conv instead of as a layer of its own:
        /// `post.add` is then ignored.
        pub pool_skip: bool,
    }

    /// `post(pw(dw(x)))` for one image `x` (`[k, h, w]`), band of output rows by band: the
    /// depthwise output of a band goes to a thread-local scratch that stays in cache and feeds
    /// the 1x1 product straight away, instead of a whole feature map written out and read back.
    /// Writes every value of `out` (`bias.len() x oh*ow`); `false` (nothing written) when the
    /// sizes disagree or the shape does not [`fits`].
    pub(super) fn run_dw(x: &[f32], dw: &Depthwise, w: &[f32], bias: &[f32], post: Post, out: &mut [MaybeUninit<f32>]) -> bool {
        let g = &dw.g;
        let (k, m, ow, oh, p) = (g.c_in, bias.len(), g.ow, g.oh, g.oh * g.ow);
        let kk = g.kh * g.kw;
        let add_ok = post.add.is_none_or(|(a, rows)| rows <= m && a.len() >= rows * p);
        let sizes = x.len() == k * g.h * g.w && dw.weight.len() == k * kk && dw.bias.len() == k && w.len() >= m * k && out.len() == m * p;
        if !fits(k, p) || ow == 0 || !sizes || !add_ok || post.alpha.is_some_and(|a| a.len() < m) {
            return false;
        }
        if dw.pool_skip && (g.h != 2 * oh || g.w != 2 * ow || k > m) {
            return false;
        }
        // A small map (6x6, 3x3) is one band: see below.
        let band = if p < 4 * NR { oh } else { band_rows(oh, ow, k, NR, (m + kk) * k * p) };
        let bands = oh.div_ceil(band);
        // The pooled skip's `k x p` values, each band's rows written by the thread that runs the
        // band just before its 1x1 product reads them.
        let mut pooled: Vec<f32> = Vec::with_capacity(if dw.pool_skip { k * p } else { 0 });
        let pool = super::SendMut(pooled.as_mut_ptr());
        let (add, add_rows) = if dw.pool_skip { (pooled.as_ptr(), k) } else { post.add.map_or((std::ptr::null(), 0), |(a, rows)| (a.as_ptr(), rows)) };
        let ptrs = PostPtr { act: post.act, add, add_rows, alpha: post.alpha.map_or(std::ptr::null(), |a| a.as_ptr()) };
        let pool_band = move |oy0: usize, rows: usize| {
            if !dw.pool_skip {
                return;
            }
            let pool = pool;
            // SAFETY: `x` holds `k` planes of `h x w = 2oh x 2ow` (checked above); `pooled` holds
            // `k x p` values, rows `oy0..oy0 + rows` of each channel belong to this band alone,
            // and `pooled` outlives every band.
            unsafe { super::max_pool_band(x, k, g.w, ow, oy0, rows, pool.get(), p) };
        };
        let op = out.as_mut_ptr() as *mut f32;
        let flat = super::dwflat::takes(g);
        // (`dwcv::takes` leaves the flat kernel's shapes to it.)
        let cv = !dw.packed.is_empty() && super::dwcv::takes(g);
        // The depthwise output of rows `oy0..oy0 + rows` into `scratch` (`k` rows of
        // `rows * ow` values): the flat small-map kernel, the channel-vector kernel or the row
        // kernels.
        let dw_band = |oy0: usize, rows: usize, scratch: &mut [f32]| {
            let bpx = rows * ow;
            let done = if flat {
                // SAFETY: the scratch holds `k` rows of `bpx` values, written by this thread only.
                scratch.len() >= k * bpx && unsafe { super::dwflat::band(x, g, dw.weight, dw.bias, dw.act, oy0, rows, scratch.as_mut_ptr(), bpx) }
            } else if cv {
                // SAFETY: the scratch holds `k` rows of `bpx` values, written by this thread only.
                super::with_pad_scratch(super::dwcv::input_len(g, rows), |buf| unsafe {
                    super::dwcv::band(x, g, dw.packed, dw.act, oy0, rows, buf, scratch.as_mut_ptr(), k * bpx, bpx)
                })
            } else {
                scratch.chunks_exact_mut(bpx).enumerate().all(|(c, dst)| {
                    match (x.get(c * g.h * g.w..(c + 1) * g.h * g.w), dw.weight.get(c * kk..(c + 1) * kk), dw.bias.get(c)) {
                        (Some(plane), Some(kw), Some(&b)) => {
                            super::dw_rows(plane, kw, b, dw.act, g, oy0, super::as_uninit(dst), true);
                            true
                        }
                        _ => false,
                    }
                })
            };
            if !done {
                // Unreachable by construction (sizes checked above); never feed stale values on.
                scratch.fill(f32::NAN);
            }
        };
        let run_bands = move |b0: usize, b1: usize, shared: SendPost| {
            for bi in b0..b1 {
                let oy0 = bi * band;
                let rows = band.min(oh - oy0);
                let bpx = rows * ow;
                super::with_scratch(k * bpx, |scratch| {
                    dw_band(oy0, rows, scratch);
                    pool_band(oy0, rows);
                    // SAFETY: AVX2 + FMA are present (`fits`); the scratch holds `k` rows of
                    // `bpx` pixels starting at pixel `oy0 * ow`; the sizes were checked above.
                    unsafe { kernel((scratch.as_ptr(), bpx, oy0 * ow), p, k, w, bias, shared.0, shared.1, oy0 * ow, oy0 * ow + bpx) };
                });
            }
        };
        let parts = super::split_parts((m + kk) * k * p, bands, SPLIT_WORK);
        let shared = SendPost(ptrs, op);
        if !cv && p <= SMALL_MAP && (g.stride > 1 || p < 4 * NR) && super::split_parts(2 * kk * k * p, 2, SPLIT_WORK) > 1 {
            // A small stride-2 output (12x12, 6x6) or a map of one band, shared by channels
            // instead of rows: each thread takes groups of 8 channels of the depthwise conv (and
            // of the pooled skip) over the whole map, then blocks of the 1x1's output rows. A
            // stride-2 band re-reads its input rows' neighbours and every weight for a few rows
            // of output, and a small map of one band ran its depthwise conv on one thread (face
            // mesh on two threads, medians of 4 alternating runs against bands of 96+ pixels:
            // 24 -> 12 block 31 -> 27 us, 12 -> 6 23 -> 18 us, 6x6 blocks 17 -> 15 us). Stride-1
            // 12x12 and larger maps stay in row bands: there the depthwise output and the next
            // layer's input stay in the core that wrote them, where this split sends every
            // channel across (12x12x128 30 -> 45 us this way).
            let mut mid: Vec<f32> = Vec::with_capacity(k * p);
            let midp = super::SendMut(mid.as_mut_ptr());
            let groups = k.div_ceil(8);
            let dparts = super::split_parts(kk * k * p, groups, SPLIT_WORK).clamp(2, groups.max(2));
            let per = groups.div_ceil(dparts) * 8;
            let plane = g.h * g.w;
            super::fork(dparts, &|t| {
                let (c0, c1) = ((t * per).min(k), ((t + 1) * per).min(k));
                if c0 >= c1 {
                    return;
                }
                let midp = midp;
                // SAFETY: `mid` holds `k x p` values; channels `c0..c1` belong to this part.
                let dst = unsafe { std::slice::from_raw_parts_mut(midp.get().add(c0 * p), (c1 - c0) * p) };
                let xs = &x[c0 * plane..c1 * plane];
                let sub = super::Geom { c_in: c1 - c0, c_out: c1 - c0, ..*g };
                // SAFETY: `dst` holds the `c1 - c0` channels' `p` outputs, `p` apart.
                let done = (flat && unsafe { super::dwflat::band(xs, &sub, &dw.weight[c0 * kk..c1 * kk], &dw.bias[c0..c1], dw.act, 0, oh, dst.as_mut_ptr(), p) })
                    || dst.chunks_exact_mut(p).zip(xs.chunks_exact(plane)).zip(dw.weight[c0 * kk..c1 * kk].chunks_exact(kk)).zip(&dw.bias[c0..c1]).all(|(((o, pl), kw), &b)| {
                        super::dw_rows(pl, kw, b, dw.act, g, 0, super::as_uninit(o), true);
                        true
                    });
                if !done {
                    dst.fill(f32::NAN);
                }
                if dw.pool_skip {
                    let pool = pool;
                    // SAFETY: as for `pool_band`, for channels `c0..c1` (all of their rows).
                    unsafe { super::max_pool_band(xs, c1 - c0, g.w, ow, 0, oh, pool.get().add(c0 * p), p) };
                }
            });
            // SAFETY: AVX2 + FMA are present (`fits`); every value of `mid` was written above;
            // the sizes were checked above.
            unsafe { run_row_split((mid.as_ptr(), p, 0), p, k, w, bias, ptrs, op) };
            return true;
        }
        if bands == 1 && p < 4 * NR {
            // One band of a small map (6x6, 3x3): the depthwise output once, then the 1x1
            // product shared by blocks of output rows.
            super::with_scratch(k * p, |scratch| {
                dw_band(0, oh, scratch);
                pool_band(0, oh);
                // SAFETY: AVX2 + FMA are present (`fits`); the scratch holds the `k x p` input;
                // the sizes were checked above.
                unsafe { run_row_split((scratch.as_ptr(), p, 0), p, k, w, bias, ptrs, op) };
            });
            return true;
        }
        if parts <= 1 {
            run_bands(0, bands, shared);
            return true;
        }
        // One part per band (taken in turn by whichever thread is free: a fixed share of 10
        // bands per part left one thread 3 bands to the other's 2); parts write disjoint pixels.
        super::fork(bands, &|t| run_bands(t, t + 1, shared));
        true
    }

    /// Output rows per band of [`run_dw`] / [`run_banded`]: about 64 KiB of band input (`k` rows
    /// of `band * ow` values), a whole number of `panel`-pixel panels where the row width allows
    /// it without adding a band, and, when a layer of `work` multiply-adds is split over
    /// threads, about as many bands as parts (at least two), so that the threads' shares come
    /// out even, but none under [`MIN_BAND_PIXELS`].
    fn band_rows(oh: usize, ow: usize, k: usize, panel: usize, work: usize) -> usize {
        let q = panel / gcd(ow, panel);
        let mut band = (16384 / (k * ow).max(1)).max(1);
        let parts = super::split_parts(work, usize::MAX, SPLIT_WORK);
        if parts > 1 {
            // Bands of at least ~96 pixels: a 12x12 map in two bands of 6 rows, not six of 2
            // (each band re-reads every weight and ends in a partial vector: 12x12x128 block
            // 31 -> 26 us, 48 -> 24 stride 2 22 -> 17 us on two threads).
            let bands = (oh * ow / MIN_BAND_PIXELS).clamp(2, parts.max(2));
            band = band.min(oh.div_ceil(bands));
        }
        if band >= q && oh.div_ceil(band / q * q) == oh.div_ceil(band) {
            band = band / q * q;
        }
        band.clamp(1, oh.max(1))
    }

    fn gcd(a: usize, b: usize) -> usize {
        if b == 0 {
            a.max(1)
        } else {
            gcd(b, a % b)
        }
    }

    #[cfg(test)]
    mod kernel_tests {
        use super::*;

        fn vals(len: usize, seed: u64) -> Vec<f32> {
            let mut st = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (0..len)
                .map(|_| {
                    st = st.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    ((st >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
                })
                .collect()
        }

        /// Both register kernels (8 and 16 lanes) against a plain loop, over pixel counts that
        /// leave every kind of tail (dot products, a masked 1- or 2-vector panel, whole panels,
        /// several L1 tiles), row counts with every remainder, inputs too deep for the 16-lane
        /// packing, a sub-range of the pixels, and each post-op.
        #[test]
        fn register_kernels_match_a_plain_loop() {
            if !super::super::has_avx2_fma() {
                return;
            }
            let z = is_x86_feature_detected!("avx512f");
            let mut case = 0u64;
            for &k in &[1usize, 3, 27, 64, 300] {
                // Pixel counts: the small-map kernel's 8-48, rows read in place (63, 100, 577)
                // and packed (1024: rows 4 KiB apart).
                for &m in &[1usize, 5, 8, 13, 16, 40] {
                    for &p in &[1usize, 7, 8, 9, 15, 16, 17, 31, 33, 40, 63, 100, 577, 1024] {
                        case += 1;
                        let (x, w, bias) = (vals(k * p, case), vals(m * k, case + 100), vals(m, case + 200));
                        let (add, alpha) = (vals((m - m / 3) * p, case + 300), vals(m, case + 400));
                        let (js, je) = if case % 3 == 0 { (p / 3, p) } else { (0, p) };
                        let post = match case % 4 {
                            0 => PostPtr { act: Activation::Identity, add: std::ptr::null(), add_rows: 0, alpha: std::ptr::null() },
                            1 => PostPtr { act: Activation::HardSwish, add: std::ptr::null(), add_rows: 0, alpha: std::ptr::null() },
                            2 => PostPtr { act: Activation::Relu6, add: add.as_ptr(), add_rows: m - m / 3, alpha: std::ptr::null() },
                            _ => PostPtr { act: Activation::Identity, add: add.as_ptr(), add_rows: m - m / 3, alpha: alpha.as_ptr() },
                        };
                        let mut want = vec![0f32; m * p];
                        for r in 0..m {
                            for j in js..je {
                                let v = (0..k).fold(bias[r], |a, i| a + w[r * k + i] * x[i * p + j]);
                                // SAFETY: `r < m`, `j < p`, the post-op's buffers hold `m x p`.
                                want[r * p + j] = unsafe { post.apply(r, p, j, v) };
                            }
                        }
                        let runs: &[(&str, unsafe fn((*const f32, usize, usize), usize, usize, &[f32], &[f32], PostPtr, *mut f32, usize, usize))] =
                            if z { &[("avx2", run_avx2), ("avx512", run_avx512)] } else { &[("avx2", run_avx2)] };
                        for (name, run) in runs {
                            let mut got = vec![f32::NAN; m * p];
                            // SAFETY: the features were checked above; every buffer holds its shape.
                            unsafe { run((x.as_ptr(), p, 0), p, k, &w, &bias, post, got.as_mut_ptr(), js, je) };
                            for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                                let (r, j) = (i / p, i % p);
                                if j < js || j >= je {
                                    assert!(g.is_nan(), "{name} k={k} m={m} p={p}: wrote outside {js}..{je} at ({r}, {j})");
                                } else {
                                    assert!((g - e).abs() <= 1e-4 * (1.0 + e.abs()), "{name} k={k} m={m} p={p} ({r}, {j}): {g} vs {e}");
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// The post-op's and the output's pointers cross to rayon's threads: they point into slices
    /// borrowed for the whole of [`run`] (the output written at disjoint columns per task).
    #[derive(Clone, Copy)]
    struct SendPost(PostPtr, *mut f32);
    // SAFETY: see above; the pointers outlive the scope that uses them.
    unsafe impl Send for SendPost {}
    unsafe impl Sync for SendPost {}
}

mod winograd;

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_op_in_unsafe_fn)]
mod dwcv;

#[cfg(target_arch = "x86_64")]
mod dwflat;

/// Dense convolution: the direct kernel, Winograd (big 3x3 "same" layers), or `gemm` on the input
/// (1x1, stride 1, no padding) or on its im2col matrix.
struct DenseOp<'a> {
    weight: &'a [f32],
    bias: &'a [f32],
    act: Activation,
    g: Geom,
}

impl DenseOp<'_> {
    /// The whole batch on the direct kernel, `None` when the shape is not its (gemm's then):
    /// `post(conv + bias + residual)` where `residual` (`[n, c, oh, ow]`, `c <= c_out`) is
    /// zero-padded in channels and `post` is a PReLU with these slopes, else the activation.
    #[cfg(target_arch = "x86_64")]
    fn direct(&self, x: &[f32], residual: Option<(&[f32], usize)>, alpha: Option<&[f32]>) -> Result<Option<Vec<f32>>> {
        let g = self.g;
        let (plane_in, plane_out) = (g.h * g.w, g.oh * g.ow);
        let (kdim, out_img) = (g.c_in * g.kh * g.kw, g.c_out * plane_out);
        if !pointwise::fits(kdim, plane_out) || out_img == 0 {
            return Ok(None);
        }
        let len = g.n * out_img;
        let mut out: Vec<f32> = Vec::with_capacity(len);
        let Some(spare) = out.spare_capacity_mut().get_mut(..len) else { bail!("conv2d: allocation too small") };
        for (b, y) in spare.chunks_exact_mut(out_img).enumerate() {
            let img = x.get(b * g.c_in * plane_in..(b + 1) * g.c_in * plane_in).unwrap_or(&[]);
            let add = residual.map(|(r, c)| (r.get(b * c * plane_out..(b + 1) * c * plane_out).unwrap_or(&[]), c));
            let post = pointwise::Post { act: self.act, add, alpha };
            let done = if self.pointwise() {
                pointwise::run(img, plane_out, kdim, self.weight, self.bias, post, y)
            } else {
                // A 3x3 stride-2 stem straight from the image where the CPU allows; else im2col a
                // band of output rows at a time, each band's columns still in cache when the
                // kernel packs them (a whole stem's matrix is a megabyte written out and read back).
                pointwise::run_stem(img, &g, self.weight, self.bias, post, y)
                    || pointwise::run_banded(g.oh, g.ow, kdim, self.weight, self.bias, post, y, &|oy0, rows, col| self.im2col_rows(img, oy0, rows, col))
            };
            if !done {
                bail!("conv2d: input / weight / residual sizes disagree");
            }
        }
        // SAFETY: `pointwise::run` wrote all `out_img` values of each of the `n` images.
        unsafe { out.set_len(len) };
        Ok(Some(out))
    }

    /// The whole batch on Winograd, `act(conv + bias + residual)` (`residual` of the output's shape);
    /// `None` when [`winograd::run`] refuses the shape or sizes.
    fn winograd(&self, x: &[f32], residual: Option<&[f32]>) -> Result<Option<Vec<f32>>> {
        let g = self.g;
        let len = g.n * g.c_out * g.oh * g.ow;
        let mut out: Vec<f32> = Vec::with_capacity(len);
        let Some(spare) = out.spare_capacity_mut().get_mut(..len) else { bail!("conv2d: allocation too small") };
        if !winograd::run(&g, x, self.weight, self.bias, self.act, residual, spare) {
            return Ok(None);
        }
        // SAFETY: `winograd::run` wrote all `len` values.
        unsafe { out.set_len(len) };
        Ok(Some(out))
    }

    fn pointwise(&self) -> bool {
        let g = &self.g;
        g.kh == 1 && g.kw == 1 && g.stride == 1 && g.oh == g.h && g.ow == g.w
    }

    /// Row `r` (tap `(ci, ky, kx)`) of one image's im2col matrix for output rows `oy0..` (as many
    /// as `dst` holds, `ow` values each), every value written (zeros where the tap falls in the
    /// padding).
    fn im2col_row(&self, x: &[f32], r: usize, oy0: usize, dst: &mut [f32]) {
        let g = self.g;
        let kk = g.kh * g.kw;
        let (ci, ky, kx) = (r / kk, (r % kk) / g.kw, r % g.kw);
        let (lo, hi) = g.col_range(kx);
        let plane = x.get(ci * g.h * g.w..(ci + 1) * g.h * g.w).unwrap_or(&[]);
        for (i, drow) in dst.chunks_exact_mut(g.ow).enumerate() {
            let row = g.in_row(oy0 + i, ky).and_then(|iy| plane.get(iy * g.w..(iy + 1) * g.w));
            match row {
                Some(row) if lo < hi => {
                    drow[..lo].fill(0.0);
                    drow[hi..].fill(0.0);
                    let src = row.get(lo * g.stride + kx - g.pl..).unwrap_or(&[]);
                    match g.stride {
                        1 => drow[lo..hi].iter_mut().zip(src).for_each(|(d, &v)| *d = v),
                        2 => gather_stride2(&mut drow[lo..hi], src),
                        s => drow[lo..hi].iter_mut().zip(src.iter().step_by(s)).for_each(|(d, &v)| *d = v),
                    }
                }
                _ => drow.fill(0.0),
            }
        }
    }

    /// Rows `oy0..oy0 + rows` of the im2col matrix of one image `x`: `col` holds `kdim` rows of
    /// `rows * ow` values, every one written.
    fn im2col_rows(&self, x: &[f32], oy0: usize, rows: usize, col: &mut [f32]) {
        let bpx = rows * self.g.ow;
        if bpx == 0 {
            return;
        }
        for (r, dst) in col.chunks_exact_mut(bpx).enumerate() {
            self.im2col_row(x, r, oy0, dst);
        }
    }

    /// Fills `col` (`[c_in*kh*kw, oh*ow]`) from one image, zeros where the window leaves it.
    fn im2col(&self, x: &[f32], col: &mut [f32]) {
        let g = self.g;
        let (plane_out, kk) = (g.oh * g.ow, g.kh * g.kw);
        if g.stride > 1 && g.ow > 0 {
            // Strided (the nets' stems): each input plane is split into zero-padded column
            // phases once, after which every row of `col` is a run of contiguous copies.
            let s = g.stride;
            let (prows, pw) = pad_phase_dims(&g, g.oh);
            let chan = s * prows * pw;
            return with_pad_scratch(g.c_in * chan, |pad| {
                // One channel per task (a stem's 3 channels of a 192x192 or 256x256 input).
                for_chunks(&mut pad[..g.c_in * chan], chan, g.c_in * chan, |ci, dst| {
                    fill_pad_phases(x.get(ci * g.h * g.w..(ci + 1) * g.h * g.w).unwrap_or(&[]), &g, 0, g.oh, dst);
                });
                let pad = &*pad;
                for_chunks(col, plane_out, col.len(), |r, dst| {
                    let (ci, ky, kx) = (r / kk, (r % kk) / g.kw, r % g.kw);
                    for (oy, drow) in dst.chunks_exact_mut(g.ow).enumerate() {
                        let off = ci * chan + ((kx % s) * prows + oy * s + ky) * pw + kx / s;
                        match pad.get(off..off + g.ow) {
                            Some(src) => drow.copy_from_slice(src),
                            None => drow.fill(0.0),
                        }
                    }
                });
            });
        }
        for_chunks(col, plane_out, col.len(), |r, dst| self.im2col_row(x, r, 0, dst));
    }
}

impl CustomOp1 for DenseOp<'_> {
    fn name(&self) -> &'static str {
        "likeness-conv2d"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.g;
        let x = cpu_slice(storage, layout, self.name())?;
        let (plane_in, plane_out) = (g.h * g.w, g.oh * g.ow);
        let kdim = g.c_in * g.kh * g.kw;
        if x.len() != g.n * g.c_in * plane_in || self.weight.len() != g.c_out * kdim || self.bias.len() != g.c_out {
            bail!("conv2d: input / weight sizes disagree");
        }
        let out_img = g.c_out * plane_out;
        #[cfg(target_arch = "x86_64")]
        if let Some(out) = self.direct(x, None, None)? {
            return Ok((CpuStorage::F32(out), Shape::from((g.n, g.c_out, g.oh, g.ow))));
        }
        if winograd::takes(&g) {
            if let Some(out) = self.winograd(x, None)? {
                return Ok((CpuStorage::F32(out), Shape::from((g.n, g.c_out, g.oh, g.ow))));
            }
        }
        let mut out = vec![0f32; g.n * g.c_out * plane_out];
        for (b, y) in out.chunks_exact_mut(out_img.max(1)).enumerate().take(g.n) {
            let img = x.get(b * g.c_in * plane_in..(b + 1) * g.c_in * plane_in).unwrap_or(&[]);
            if self.pointwise() {
                matmul(y, self.weight, kdim, 1, img, g.c_out, plane_out, kdim)?;
            } else {
                with_scratch(kdim * plane_out, |col| {
                    self.im2col(img, col);
                    matmul(y, self.weight, kdim, 1, col, g.c_out, plane_out, kdim)
                })?;
            }
            let (bias, act) = (self.bias, self.act);
            if act != Activation::Identity || bias.iter().any(|&v| v != 0.0) {
                for_chunks(y, plane_out, y.len(), |o, row| act.bias_apply(row, bias.get(o).copied().unwrap_or(0.0)));
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((g.n, g.c_out, g.oh, g.ow))))
    }
}

/// Weights copied out of the tensors once, for the CPU kernels.
#[derive(Debug, Clone)]
struct CpuWeights {
    weight: Vec<f32>,
    bias: Vec<f32>,
    /// A depthwise 3x3 / 5x5 layer's weights and bias for the channel-vector kernel
    /// ([`dwcv::pack`]); empty for other layers.
    dw_packed: Vec<f32>,
}

impl CpuWeights {
    /// `None` when the weights live on an accelerator (candle's ops are used there).
    fn of(weight: &Tensor, bias: Option<&Tensor>, bias_len: usize) -> Result<Option<Self>> {
        if !fast_cpu(weight) {
            return Ok(None);
        }
        let w = weight.flatten_all()?.to_vec1::<f32>()?;
        let b = match bias {
            Some(b) => b.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?,
            None => vec![0.0; bias_len],
        };
        if b.len() != bias_len {
            bail!("bias has {} values, expected {bias_len}", b.len());
        }
        Ok(Some(Self { weight: w, bias: b, dw_packed: Vec::new() }))
    }
}

/// A 2-D convolution, dense or depthwise, with bias.
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    stride: usize,
    padding: Padding,
    depthwise: bool,
    kernel: (usize, usize),
    activation: Activation,
    cpu: Option<std::sync::Arc<CpuWeights>>,
}

impl Conv2d {
    /// Dense convolution; `vb` holds `weight` `[out, in, k, k]` and (if `bias`) `bias` `[out]`.
    pub fn new(vb: VarBuilder, in_c: usize, out_c: usize, k: usize, stride: usize, padding: Padding, bias: bool) -> Result<Self> {
        let weight = vb.get((out_c, in_c, k, k), "weight")?;
        let bias = if bias { Some(vb.get(out_c, "bias")?) } else { None };
        Self::from_tensors(weight, bias, stride, padding, false)
    }

    /// Depthwise convolution (one filter per channel); `weight` is `[c, 1, k, k]`.
    pub fn depthwise(vb: VarBuilder, channels: usize, k: usize, stride: usize, padding: Padding, bias: bool) -> Result<Self> {
        let weight = vb.get((channels, 1, k, k), "weight")?;
        let bias = if bias { Some(vb.get(channels, "bias")?) } else { None };
        Self::from_tensors(weight, bias, stride, padding, true)
    }

    /// Builds from tensors already in hand (tests, fused layers).
    pub fn from_tensors(weight: Tensor, bias: Option<Tensor>, stride: usize, padding: Padding, depthwise: bool) -> Result<Self> {
        let (out_c, in_c, kh, kw) = weight.dims4()?;
        if stride == 0 {
            bail!("conv2d: stride must be at least 1");
        }
        if depthwise && in_c != 1 {
            bail!("depthwise conv2d: weight must be [c, 1, kh, kw], got {:?}", weight.dims());
        }
        let mut cpu = CpuWeights::of(&weight, bias.as_ref(), out_c)?;
        #[cfg(target_arch = "x86_64")]
        if let Some(c) = cpu.as_mut().filter(|_| depthwise && kh == kw && matches!(kh, 3 | 5)) {
            c.dw_packed = dwcv::pack(&c.weight, &c.bias, out_c, kh * kw);
        }
        let cpu = cpu.map(std::sync::Arc::new);
        Ok(Self { weight, bias, stride, padding, depthwise, kernel: (kh, kw), activation: Activation::Identity, cpu })
    }

    /// The same convolution with `act` applied to its output in the same pass.
    pub fn with_activation(mut self, act: Activation) -> Self {
        self.activation = act;
        self
    }

    pub fn out_channels(&self) -> usize {
        self.weight.dim(0).unwrap_or(0)
    }

    /// candle's own ops: the path for accelerators, and the reference the fast kernels are tested against.
    pub fn forward_candle(&self, x: &Tensor) -> Result<Tensor> {
        let (_, c, h, w) = x.dims4()?;
        let (t, b, l, r) = self.padding.pads(h, w, self.kernel.0, self.kernel.1, self.stride);
        let x = pad2d(x, t, b, l, r)?;
        let groups = if self.depthwise { c } else { 1 };
        let y = x.conv2d(&self.weight, 0, self.stride, 1, groups)?;
        let y = match &self.bias {
            Some(bias) => y.broadcast_add(&bias.reshape((1, (), 1, 1))?)?,
            None => y,
        };
        self.activation.on_tensor(y)
    }

    fn geometry(&self, x: &Tensor) -> Result<Geom> {
        let (n, c, h, w) = x.dims4()?;
        let (out_c, w_in, kh, kw) = self.weight.dims4()?;
        let expect_c = if self.depthwise { out_c } else { w_in };
        if c != expect_c {
            bail!("conv2d: input has {c} channels, the layer expects {expect_c}");
        }
        let (pt, pb, pl, pr) = self.padding.pads(h, w, kh, kw, self.stride);
        let (hp, wp) = (h + pt + pb, w + pl + pr);
        if hp < kh || wp < kw {
            bail!("conv2d: input {h}x{w} is smaller than the {kh}x{kw} kernel");
        }
        let (oh, ow) = ((hp - kh) / self.stride + 1, (wp - kw) / self.stride + 1);
        Ok(Geom { n, c_in: c, h, w, c_out: out_c, kh, kw, stride: self.stride, pt, pl, oh, ow })
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let Some(cpu) = self.cpu.as_deref().filter(|_| fast_cpu(x)) else {
            return self.forward_candle(x);
        };
        let g = self.geometry(x)?;
        let x = x.contiguous()?;
        let (weight, bias, act) = (cpu.weight.as_slice(), cpu.bias.as_slice(), self.activation);
        if self.depthwise {
            x.apply_op1_no_bwd(&DepthwiseOp { weight, bias, packed: &cpu.dw_packed, act, g })
        } else {
            x.apply_op1_no_bwd(&DenseOp { weight, bias, act, g })
        }
    }
}

/// Transposed conv with kernel == stride: `gemm` to `[out*k*k, h*w]`, then one scatter pass.
struct TransposeOp<'a> {
    weight: &'a [f32],
    bias: &'a [f32],
    n: usize,
    c_in: usize,
    c_out: usize,
    k: usize,
    h: usize,
    w: usize,
}

impl CustomOp1 for TransposeOp<'_> {
    fn name(&self) -> &'static str {
        "likeness-conv-transpose2d"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (k, h, w) = (self.k, self.h, self.w);
        let x = cpu_slice(storage, layout, self.name())?;
        let (hw, rows) = (h * w, self.c_out * k * k);
        if x.len() != self.n * self.c_in * hw || self.weight.len() != self.c_in * rows || self.bias.len() != self.c_out {
            bail!("transposed conv: input / weight sizes disagree");
        }
        let (oh, ow) = (h * k, w * k);
        let mut out = vec![0f32; self.n * self.c_out * oh * ow];
        let mut t = vec![0f32; rows * hw];
        for (b, y) in out.chunks_exact_mut((self.c_out * oh * ow).max(1)).enumerate().take(self.n) {
            let img = x.get(b * self.c_in * hw..(b + 1) * self.c_in * hw).unwrap_or(&[]);
            // weight is [in, out*k*k] row-major; read it as its transpose [out*k*k, in].
            matmul(&mut t, self.weight, 1, rows, img, rows, hw, self.c_in)?;
            let t = &t;
            for_chunks(y, ow, y.len(), |r, orow| {
                let (o, oy) = (r / oh, r % oh);
                let (i, ky) = (oy / k, oy % k);
                let bias = self.bias.get(o).copied().unwrap_or(0.0);
                for kx in 0..k {
                    let src = t.get(((o * k + ky) * k + kx) * hw + i * w..).unwrap_or(&[]);
                    orow.iter_mut().skip(kx).step_by(k).zip(src.iter().take(w)).for_each(|(d, &v)| *d = v + bias);
                }
            });
        }
        Ok((CpuStorage::F32(out), Shape::from((self.n, self.c_out, oh, ow))))
    }
}

/// A transposed convolution with bias (the TFLite custom op `Convolution2DTransposeBias`:
/// kernel k, stride s, "SAME" = output exactly `s` times the input).
#[derive(Debug, Clone)]
pub struct ConvTranspose2d {
    weight: Tensor,
    bias: Tensor,
    stride: usize,
    kernel: usize,
    cpu: Option<std::sync::Arc<CpuWeights>>,
}

impl ConvTranspose2d {
    /// `weight` `[in, out, k, k]`, `bias` `[out]`.
    pub fn new(vb: VarBuilder, in_c: usize, out_c: usize, k: usize, stride: usize) -> Result<Self> {
        let weight = vb.get((in_c, out_c, k, k), "weight")?;
        let bias = vb.get(out_c, "bias")?;
        Self::from_tensors(weight, bias, stride)
    }

    /// Builds from tensors already in hand: `weight` `[in, out, k, k]`, `bias` `[out]`.
    pub fn from_tensors(weight: Tensor, bias: Tensor, stride: usize) -> Result<Self> {
        let (_, out_c, k, kw) = weight.dims4()?;
        if k != kw || stride == 0 {
            bail!("transposed conv: square kernel and stride >= 1 expected, got {:?} stride {stride}", weight.dims());
        }
        let cpu = if k == stride { CpuWeights::of(&weight, Some(&bias), out_c)?.map(std::sync::Arc::new) } else { None };
        Ok(Self { weight, bias, stride, kernel: k, cpu })
    }

    /// candle's own ops (accelerators, kernels larger than the stride, and the tests' reference).
    pub fn forward_candle(&self, x: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let y = x.conv_transpose2d(&self.weight, 0, 0, self.stride, 1)?;
        // "SAME": keep exactly stride * input; crop what a kernel larger than the stride adds.
        let (oh, ow) = (h * self.stride, w * self.stride);
        let (_, _, yh, yw) = y.dims4()?;
        let y = if yh != oh || yw != ow {
            let (ph, pw) = ((yh - oh) / 2, (yw - ow) / 2);
            y.narrow(2, ph, oh)?.narrow(3, pw, ow)?
        } else {
            y
        };
        y.broadcast_add(&self.bias.reshape((1, (), 1, 1))?)
    }
}

impl Module for ConvTranspose2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let Some(cpu) = self.cpu.as_deref().filter(|_| fast_cpu(x)) else {
            return self.forward_candle(x);
        };
        let (n, c, h, w) = x.dims4()?;
        let (c_in, c_out, _, _) = self.weight.dims4()?;
        if c != c_in {
            bail!("transposed conv: input has {c} channels, the layer expects {c_in}");
        }
        let op = TransposeOp { weight: &cpu.weight, bias: &cpu.bias, n, c_in, c_out, k: self.kernel, h, w };
        x.contiguous()?.apply_op1_no_bwd(&op)
    }
}

/// Elementwise ops with per-channel parameters, one pass over a contiguous NCHW tensor.
struct ChannelOp<'a> {
    kind: ChannelKind<'a>,
    channels: usize,
    plane: usize,
}

enum ChannelKind<'a> {
    PRelu(&'a [f32]),
    HardSwish,
}

impl CustomOp1 for ChannelOp<'_> {
    fn name(&self) -> &'static str {
        "likeness-channel-op"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = cpu_slice(storage, layout, self.name())?;
        let mut out = vec![0f32; x.len()];
        let plane = self.plane.max(1);
        for_chunks(&mut out, plane, x.len(), |p, o| {
            let src = x.get(p * plane..(p + 1) * plane).unwrap_or(&[]);
            match self.kind {
                ChannelKind::PRelu(alpha) => {
                    let a = alpha.get(p % self.channels.max(1)).copied().unwrap_or(0.0);
                    o.iter_mut().zip(src).for_each(|(o, &v)| *o = v.max(0.0) + a * v.min(0.0));
                }
                ChannelKind::HardSwish => {
                    o.iter_mut().zip(src).for_each(|(o, &v)| *o = Activation::HardSwish.apply(v));
                }
            }
        });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

/// (channels, h*w) of an NCHW tensor, or (1, len) for any other rank.
fn channel_plane(x: &Tensor) -> (usize, usize) {
    match x.dims() {
        [_, c, rest @ ..] if !rest.is_empty() => (*c, rest.iter().product()),
        [_, c] => (*c, 1),
        _ => (1, x.elem_count()),
    }
}

/// PReLU with one slope per channel: `max(x, 0) + alpha * min(x, 0)`.
#[derive(Debug, Clone)]
pub struct PRelu {
    alpha: Tensor,
    cpu: Option<std::sync::Arc<Vec<f32>>>,
}

impl PRelu {
    /// `vb` holds `alpha` `[channels]`.
    pub fn new(vb: VarBuilder, channels: usize) -> Result<Self> {
        Self::from_tensor(vb.get(channels, "alpha")?)
    }

    /// From the slopes `[channels]` in hand.
    pub fn from_tensor(alpha: Tensor) -> Result<Self> {
        let channels = alpha.elem_count();
        let cpu = if fast_cpu(&alpha) { Some(std::sync::Arc::new(alpha.flatten_all()?.to_vec1::<f32>()?)) } else { None };
        Ok(Self { alpha: alpha.reshape((1, channels, 1, 1))?, cpu })
    }
}

impl Module for PRelu {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (channels, plane) = channel_plane(x);
        match self.cpu.as_deref().filter(|a| fast_cpu(x) && a.len() == channels && x.rank() == 4) {
            Some(alpha) => x.contiguous()?.apply_op1_no_bwd(&ChannelOp { kind: ChannelKind::PRelu(alpha), channels, plane }),
            None => {
                let pos = x.relu()?;
                let neg = x.minimum(0f32)?.broadcast_mul(&self.alpha)?;
                pos + neg
            }
        }
    }
}

fn hard_swish_candle(x: &Tensor) -> Result<Tensor> {
    let gate = ((x + 3.0)?.clamp(0f32, 6f32)? / 6.0)?;
    x * gate
}

/// Hard swish: `x * relu6(x + 3) / 6`.
pub fn hard_swish(x: &Tensor) -> Result<Tensor> {
    if !fast_cpu(x) {
        return hard_swish_candle(x);
    }
    let (channels, plane) = channel_plane(x);
    x.contiguous()?.apply_op1_no_bwd(&ChannelOp { kind: ChannelKind::HardSwish, channels, plane })
}

/// Max pooling over the valid part of each window (the padding never wins).
struct MaxPoolOp {
    g: Geom,
}

impl CustomOp1 for MaxPoolOp {
    fn name(&self) -> &'static str {
        "likeness-max-pool2d"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.g;
        let x = cpu_slice(storage, layout, self.name())?;
        let (plane_in, plane_out) = (g.h * g.w, g.oh * g.ow);
        // 2x2 stride 2 inside the image (the blocks' pooled skips): two rows in, pairwise maxima.
        let pairs = g.kh == 2 && g.kw == 2 && g.stride == 2 && g.pt == 0 && g.pl == 0 && 2 * g.oh <= g.h && 2 * g.ow <= g.w;
        let planes = g.n * g.c_in;
        if pairs && x.len() >= planes * plane_in && g.ow > 0 {
            // Split by bands of rows across all the channels (not by channels): the layers
            // around it are split by rows, so each thread pools the rows it wrote and the
            // fused layer after it reads the rows it pools, all in its own cache.
            let len = planes * plane_out;
            let mut out: Vec<f32> = Vec::with_capacity(len);
            let base = SendMut(out.as_mut_ptr());
            let parts = split_parts(len * 4, g.oh, 1 << 18);
            let rows = g.oh.div_ceil(parts.max(1));
            let x = &x[..planes * plane_in];
            fork(parts, &|t| {
                let (r0, r1) = ((t * rows).min(g.oh), ((t + 1) * rows).min(g.oh));
                // SAFETY: `x` holds the planes' rows up to `2 * oh <= h`; `out` holds `planes *
                // plane_out` values, output rows `r0..r1` of every plane belong to this part alone,
                // and `out` outlives `fork`.
                unsafe { max_pool_band(x, planes, g.w, g.ow, r0, r1 - r0, base.get(), plane_out) };
            });
            // SAFETY: every output row of every plane was written by exactly one part.
            unsafe { out.set_len(len) };
            return Ok((CpuStorage::F32(out), Shape::from((g.n, g.c_in, g.oh, g.ow))));
        }
        let mut out = vec![f32::NEG_INFINITY; planes * plane_out];
        for_chunks(&mut out, plane_out, g.n * g.c_in * plane_out * g.kh * g.kw, |p, o| {
            let plane = x.get(p * plane_in..(p + 1) * plane_in).unwrap_or(&[]);
            for (oy, orow) in o.chunks_exact_mut(g.ow).enumerate() {
                for ky in 0..g.kh {
                    let Some(row) = g.in_row(oy, ky).and_then(|iy| plane.get(iy * g.w..(iy + 1) * g.w)) else { continue };
                    for kx in 0..g.kw {
                        let (lo, hi) = g.col_range(kx);
                        if lo >= hi {
                            continue;
                        }
                        let src = row.get(lo * g.stride + kx - g.pl..).unwrap_or(&[]).iter().step_by(g.stride);
                        orow[lo..hi].iter_mut().zip(src).for_each(|(d, &v)| *d = d.max(v));
                    }
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((g.n, g.c_in, g.oh, g.ow))))
    }
}

/// `out[i] = max(r0[2i], r0[2i + 1], r1[2i], r1[2i + 1])` (a 2x2 stride-2 pool of two rows), 8
/// outputs per step with AVX2 (the stride-2 skips of BlazeFace and the face mesh), as far as the
/// rows reach.
fn max_pool_pairs(out: &mut [MaybeUninit<f32>], r0: &[f32], r1: &[f32]) {
    let n = out.len().min(r0.len() / 2).min(r1.len() / 2);
    #[allow(unused_mut)]
    let mut i = 0;
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: AVX-512F is present; the body reads `r*[..2n]` and writes `out[..n]`, masked.
        unsafe { max_pool_pairs_z(out.as_mut_ptr() as *mut f32, r0.as_ptr(), r1.as_ptr(), n) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU has AVX2 (checked at run time); the body reads `r*[2i..2i + 16]` and
        // writes `out[i..i + 8]` only while `i + 8 <= n`.
        i = unsafe { max_pool_pairs_avx2(out.as_mut_ptr() as *mut f32, r0, r1, n) };
    }
    for j in i..n {
        out[j].write(r0[2 * j].max(r0[2 * j + 1]).max(r1[2 * j].max(r1[2 * j + 1])));
    }
}

/// Output rows `oy0..oy0 + rows` of the 2x2 stride-2 max pool of `c` planes of `2 * ow` wide
/// (`2 * oh` high, `oh >= oy0 + rows`) in `x`: channel `ch`'s rows at `out + ch * ostride + oy *
/// ow`. One call for all the rows and channels (a call per row cost more than its pooling on
/// the 3-12 wide maps).
/// Safety: `x` holds the `c` planes' rows up to `2 * (oy0 + rows)`; `out` as described is writable.
#[allow(clippy::too_many_arguments)]
unsafe fn max_pool_band(x: &[f32], c: usize, w: usize, ow: usize, oy0: usize, rows: usize, out: *mut f32, ostride: usize) {
    let plane = x.len() / c.max(1);
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: AVX-512F is present; bounds as the caller's.
        unsafe { max_pool_band_z(x.as_ptr(), c, plane, w, ow, oy0, rows, out, ostride) };
        return;
    }
    for ch in 0..c {
        for oy in oy0..oy0 + rows {
            let (top, bottom) = x[ch * plane + 2 * oy * w..ch * plane + (2 * oy + 2) * w].split_at(w);
            // SAFETY: as the caller's.
            let orow = unsafe { std::slice::from_raw_parts_mut(out.add(ch * ostride + oy * ow) as *mut MaybeUninit<f32>, ow) };
            max_pool_pairs(orow, top, bottom);
        }
    }
}

/// See [`max_pool_band`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[allow(unsafe_op_in_unsafe_fn, clippy::too_many_arguments)]
unsafe fn max_pool_band_z(x: *const f32, c: usize, plane: usize, w: usize, ow: usize, oy0: usize, rows: usize, out: *mut f32, ostride: usize) {
    for ch in 0..c {
        for oy in oy0..oy0 + rows {
            let r0 = x.add(ch * plane + 2 * oy * w);
            max_pool_pairs_z(out.add(ch * ostride + oy * ow), r0, r0.add(w), ow);
        }
    }
}

/// [`max_pool_pairs`] on 16 lanes, all `n` outputs (the last vector masked: rows of the small
/// maps, 3-12 outputs, are one step). Safety: AVX-512F present; `r0`, `r1` hold `2n` values,
/// `out` `n`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
#[allow(unsafe_op_in_unsafe_fn)]
unsafe fn max_pool_pairs_z(out: *mut f32, r0: *const f32, r1: *const f32, n: usize) {
    use std::arch::x86_64::*;
    let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    let mut i = 0;
    while i < n {
        let (m0, m1) = (lanes16(2 * (n - i)), lanes16((2 * (n - i)).saturating_sub(16)));
        let a = _mm512_max_ps(_mm512_maskz_loadu_ps(m0, r0.add(2 * i)), _mm512_maskz_loadu_ps(m0, r1.add(2 * i)));
        let b = _mm512_max_ps(_mm512_maskz_loadu_ps(m1, r0.add(2 * i + 16)), _mm512_maskz_loadu_ps(m1, r1.add(2 * i + 16)));
        let m = _mm512_max_ps(_mm512_permutex2var_ps(a, even, b), _mm512_permutex2var_ps(a, odd, b));
        _mm512_mask_storeu_ps(out.add(i), lanes16(n - i), m);
        i += 16;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(unsafe_op_in_unsafe_fn)]
unsafe fn max_pool_pairs_avx2(out: *mut f32, r0: &[f32], r1: &[f32], n: usize) -> usize {
    use std::arch::x86_64::*;
    let mut i = 0;
    while i + 8 <= n {
        let a = _mm256_max_ps(_mm256_loadu_ps(r0.as_ptr().add(2 * i)), _mm256_loadu_ps(r1.as_ptr().add(2 * i)));
        let b = _mm256_max_ps(_mm256_loadu_ps(r0.as_ptr().add(2 * i + 8)), _mm256_loadu_ps(r1.as_ptr().add(2 * i + 8)));
        // Even and odd columns per 128-bit lane (a0 a2 b0 b2 | a4 a6 b4 b6 and the odd ones),
        // their maximum, then 64-bit pieces 0, 2, 1, 3 for the order.
        let m = _mm256_max_ps(_mm256_shuffle_ps::<0x88>(a, b), _mm256_shuffle_ps::<0xDD>(a, b));
        let m = _mm256_castpd_ps(_mm256_permute4x64_pd::<0xD8>(_mm256_castps_pd(m)));
        _mm256_storeu_ps(out.add(i), m);
        i += 8;
    }
    i
}

/// Max pooling with TensorFlow "SAME" or "VALID" padding (padding never wins the max).
pub fn max_pool2d(x: &Tensor, k: usize, stride: usize, padding: Padding) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    if k == 0 || stride == 0 {
        bail!("max pool: kernel and stride must be at least 1");
    }
    let (t, b, l, r) = padding.pads(h, w, k, k, stride);
    if !fast_cpu(x) || t >= k || b >= k || l >= k || r >= k {
        return max_pool2d_candle(x, k, stride, padding);
    }
    let (hp, wp) = (h + t + b, w + l + r);
    if hp < k || wp < k {
        bail!("max pool: input {h}x{w} is smaller than the {k}x{k} window");
    }
    let (oh, ow) = ((hp - k) / stride + 1, (wp - k) / stride + 1);
    let g = Geom { n, c_in: c, h, w, c_out: c, kh: k, kw: k, stride, pt: t, pl: l, oh, ow };
    x.contiguous()?.apply_op1_no_bwd(&MaxPoolOp { g })
}

/// candle's max pooling with edge replication (accelerators; the tests' reference).
pub fn max_pool2d_candle(x: &Tensor, k: usize, stride: usize, padding: Padding) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let (t, b, l, r) = padding.pads(h, w, k, k, stride);
    // Edge replication is exact for max pooling: every window that overlaps the padding also
    // contains the replicated edge pixel itself, so padding never changes a maximum.
    let x = if t + b > 0 { x.pad_with_same(2, t, b)? } else { x.clone() };
    let x = if l + r > 0 { x.pad_with_same(3, l, r)? } else { x };
    x.max_pool2d_with_stride(k, stride)
}

/// Mean of a plane: 8 f32 lanes over blocks of 256 values, blocks summed in f64. A plain sequential
/// f32 sum over a 128x128 plane is both slow (one dependent add per value) and off by ~1e-5
/// relative, enough to move a squeeze-excite gate visibly away from TFLite's.
fn plane_mean(p: &[f32]) -> f32 {
    let mut total = 0f64;
    for block in p.chunks(256) {
        let mut acc = [0f32; 8];
        let mut lanes = block.chunks_exact(8);
        for v in &mut lanes {
            acc.iter_mut().zip(v).for_each(|(a, &v)| *a += v);
        }
        total += acc.iter().map(|&a| a as f64).sum::<f64>() + lanes.remainder().iter().map(|&v| v as f64).sum::<f64>();
    }
    (total / p.len().max(1) as f64) as f32
}

struct AvgPoolOp {
    plane: usize,
}

impl CustomOp1 for AvgPoolOp {
    fn name(&self) -> &'static str {
        "likeness-global-avg-pool"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = cpu_slice(storage, layout, self.name())?;
        let plane = self.plane.max(1);
        let out: Vec<f32> = x.chunks_exact(plane).map(plane_mean).collect();
        let (n, c) = match layout.dims() {
            [n, c, ..] => (*n, *c),
            _ => bail!("global average pool: expected an NCHW tensor"),
        };
        Ok((CpuStorage::F32(out), Shape::from((n, c, 1, 1))))
    }
}

/// Global average pool over the spatial axes: `[n, c, h, w]` -> `[n, c, 1, 1]`.
pub fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if !fast_cpu(x) || h * w == 0 {
        return x.mean_keepdim(D::Minus1)?.mean_keepdim(D::Minus2);
    }
    x.contiguous()?.apply_op1_no_bwd(&AvgPoolOp { plane: h * w })
}

/// Half-pixel bilinear taps along one axis: for each output index, the two input indices and the
/// weight of the second (TFLite RESIZE_BILINEAR with `half_pixel_centers`, PyTorch
/// `align_corners=False`: source = (out + 0.5) * in / out - 0.5, clamped to the edges).
fn half_pixel_taps(input: usize, output: usize) -> Vec<(usize, usize, f32)> {
    let scale = input as f64 / output.max(1) as f64;
    let last = input.saturating_sub(1);
    (0..output)
        .map(|o| {
            let src = ((o as f64 + 0.5) * scale - 0.5).max(0.0);
            let i0 = (src.floor() as usize).min(last);
            (i0, (i0 + 1).min(last), (src - i0 as f64).clamp(0.0, 1.0) as f32)
        })
        .collect()
}

struct ResizeBilinearOp {
    planes: usize,
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
}

impl CustomOp1 for ResizeBilinearOp {
    fn name(&self) -> &'static str {
        "likeness-resize-bilinear"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (h, w, oh, ow) = (self.h, self.w, self.oh, self.ow);
        let x = cpu_slice(storage, layout, self.name())?;
        if x.len() != self.planes * h * w || h == 0 || w == 0 {
            bail!("resize bilinear: input size disagrees with its shape");
        }
        let (rows, cols) = (half_pixel_taps(h, oh), half_pixel_taps(w, ow));
        let len = self.planes * oh * ow;
        // Every value is written below (a row whose taps were missing is zeroed): no zeroing pass.
        let mut out: Vec<f32> = Vec::with_capacity(len);
        let Some(spare) = out.spare_capacity_mut().get_mut(..len) else { bail!("resize bilinear: allocation too small") };
        // One output row per task: blend the two source rows, then gather along the row.
        for_chunks(spare, ow, len * 4, |r, orow| {
            let (p, oy) = (r / oh.max(1), r % oh.max(1));
            let plane = x.get(p * h * w..(p + 1) * h * w).unwrap_or(&[]);
            let src = rows.get(oy).and_then(|&(y0, y1, wy)| Some((plane.get(y0 * w..(y0 + 1) * w)?, plane.get(y1 * w..(y1 + 1) * w)?, wy)));
            let Some((a, b, wy)) = src else {
                orow.iter_mut().for_each(|v| {
                    v.write(0.0);
                });
                return;
            };
            let mut line = [0f32; 512];
            let mut heap;
            let line: &mut [f32] = if w <= line.len() {
                &mut line[..w]
            } else {
                heap = vec![0f32; w];
                &mut heap
            };
            line.iter_mut().zip(a.iter().zip(b)).for_each(|(l, (&a, &b))| *l = a * (1.0 - wy) + b * wy);
            let line = &*line;
            if ow == 2 * w {
                // Exact 2x (the decoders' case): fixed weights 3/4 and 1/4, the edges copied; the
                // same arithmetic as the general taps, in a loop LLVM vectorises.
                if let (Some(first), Some(last)) = (line.first(), line.last()) {
                    orow[0].write(*first);
                    orow[ow - 1].write(*last);
                }
                for (pair, win) in orow[1..ow - 1].chunks_exact_mut(2).zip(line.windows(2)) {
                    pair[0].write(win[0] * 0.75 + win[1] * 0.25);
                    pair[1].write(win[0] * 0.25 + win[1] * 0.75);
                }
                return;
            }
            // Taps index below `w` by construction (`half_pixel_taps` clamps to the last pixel).
            for (o, &(x0, x1, wx)) in orow.iter_mut().zip(&cols) {
                o.write(line[x0.min(w - 1)] * (1.0 - wx) + line[x1.min(w - 1)] * wx);
            }
        });
        // SAFETY: every row wrote all `ow` values: the 2x branch its two edges and `w - 1` pairs
        // (`ow - 2` values), the general branch one per tap (`cols` has `ow` entries).
        unsafe { out.set_len(len) };
        let (n, c) = match layout.dims() {
            [n, c, _, _] => (*n, *c),
            _ => bail!("resize bilinear: expected an NCHW tensor"),
        };
        Ok((CpuStorage::F32(out), Shape::from((n, c, oh, ow))))
    }
}

/// Bilinear resize of an NCHW tensor to `oh x ow` with half-pixel centres (TFLite
/// `RESIZE_BILINEAR(half_pixel_centers=true)`, PyTorch `align_corners=False`, no antialiasing).
pub fn resize_bilinear(x: &Tensor, oh: usize, ow: usize) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    if h == 0 || w == 0 {
        bail!("resize bilinear: empty input {h}x{w}");
    }
    if !fast_cpu(x) {
        return x.upsample_bilinear2d(oh, ow, false);
    }
    x.contiguous()?.apply_op1_no_bwd(&ResizeBilinearOp { planes: n * c, h, w, oh, ow })
}

/// `y = x * scale[n, c] + add` over a contiguous NCHW tensor in one pass (squeeze-excite gating,
/// gated skips, residual sums) instead of candle's broadcast ops, each a separate allocation.
struct ScaleAddOp<'a> {
    scale: Option<&'a [f32]>,
    add: Option<&'a [f32]>,
    plane: usize,
}

impl CustomOp1 for ScaleAddOp<'_> {
    fn name(&self) -> &'static str {
        "likeness-scale-add"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = cpu_slice(storage, layout, self.name())?;
        let plane = self.plane.max(1);
        if self.add.is_some_and(|a| a.len() != x.len()) || self.scale.is_some_and(|s| s.len() * plane != x.len()) {
            bail!("scale-add: operand sizes disagree");
        }
        let mut out = vec![0f32; x.len()];
        for_chunks(&mut out, plane, x.len(), |p, o| {
            let src = x.get(p * plane..(p + 1) * plane).unwrap_or(&[]);
            let s = self.scale.and_then(|s| s.get(p).copied()).unwrap_or(1.0);
            match self.add.and_then(|a| a.get(p * plane..(p + 1) * plane)) {
                Some(a) => o.iter_mut().zip(src.iter().zip(a)).for_each(|(o, (&v, &a))| *o = v * s + a),
                None => o.iter_mut().zip(src).for_each(|(o, &v)| *o = v * s),
            }
        });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

/// `x * scale + add` for NCHW `x`, a per-channel `scale` `[n, c, 1, 1]` and `add` shaped like `x`
/// (either optional): one pass on the CPU, candle's broadcast ops elsewhere.
pub fn scale_add(x: &Tensor, scale: Option<&Tensor>, add: Option<&Tensor>) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    if let Some(s) = scale {
        if s.dims() != [n, c, 1, 1] {
            bail!("scale-add: scale {:?} for input {:?}", s.dims(), x.dims());
        }
    }
    if let Some(a) = add {
        if a.dims() != x.dims() {
            bail!("scale-add: addend {:?} for input {:?}", a.dims(), x.dims());
        }
    }
    let all_cpu = fast_cpu(x) && scale.is_none_or(fast_cpu) && add.is_none_or(fast_cpu);
    if !all_cpu {
        let y = match scale {
            Some(s) => x.broadcast_mul(s)?,
            None => x.clone(),
        };
        return match add {
            Some(a) => y + a,
            None => Ok(y),
        };
    }
    let scale_v = scale.map(|s| s.flatten_all().and_then(|s| s.to_vec1::<f32>())).transpose()?;
    let add_t = add.map(|a| a.contiguous()).transpose()?;
    let add_guard = add_t.as_ref().map(|a| a.storage_and_layout());
    let add_v = match &add_guard {
        Some((storage, layout)) => match &**storage {
            candle_core::Storage::Cpu(cpu) => Some(cpu_slice(cpu, layout, "scale-add")?),
            _ => bail!("scale-add: addend not on the CPU"),
        },
        None => None,
    };
    x.contiguous()?.apply_op1_no_bwd(&ScaleAddOp { scale: scale_v.as_deref(), add: add_v, plane: h * w })
}

/// The in-place form of [`ScaleAddOp`]: `x = x * scale[n, c] + add`, or with `scale_addend`
/// `x = x + add * scale[n, c]`; the addend (if any) is the second operand.
struct ScaleAddInPlace<'a> {
    scale: Option<&'a [f32]>,
    scale_addend: bool,
    plane: usize,
}

impl ScaleAddInPlace<'_> {
    fn run(&self, storage: &mut CpuStorage, layout: &Layout, add: Option<&[f32]>) -> Result<()> {
        let x = cpu_slice_mut(storage, layout, "scale-add in place")?;
        let plane = self.plane.max(1);
        if add.is_some_and(|a| a.len() != x.len()) || self.scale.is_some_and(|s| s.len() * plane != x.len()) {
            bail!("scale-add in place: operand sizes disagree");
        }
        let work = x.len();
        for_chunks(x, plane, work, |p, o| {
            let s = self.scale.and_then(|s| s.get(p).copied()).unwrap_or(1.0);
            match add.and_then(|a| a.get(p * plane..(p + 1) * plane)) {
                Some(a) if self.scale_addend => o.iter_mut().zip(a).for_each(|(o, &a)| *o += a * s),
                Some(a) => o.iter_mut().zip(a).for_each(|(o, &a)| *o = *o * s + a),
                None => o.iter_mut().for_each(|o| *o *= s),
            }
        });
        Ok(())
    }
}

impl candle_core::InplaceOp1 for ScaleAddInPlace<'_> {
    fn name(&self) -> &'static str {
        "likeness-scale-add-in-place"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> Result<()> {
        self.run(storage, layout, None)
    }
}

impl candle_core::InplaceOp2 for ScaleAddInPlace<'_> {
    fn name(&self) -> &'static str {
        "likeness-scale-add-in-place"
    }

    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<()> {
        self.run(s1, l1, Some(cpu_slice(s2, l2, "scale-add in place")?))
    }
}

/// [`scale_add`] that, on the CPU, writes the result over `x` and returns it (no new buffer: these
/// nets allocate a fresh tensor per layer, and the page faults of those allocations cost as much
/// as the arithmetic of an elementwise pass). Only for an `x` that nothing else reads afterwards,
/// such as a layer's fresh output; other devices, layouts or dtypes fall back to [`scale_add`].
pub fn scale_add_in_place(x: Tensor, scale: Option<&Tensor>, add: Option<&Tensor>) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let plain = x.layout().contiguous_offsets().is_some_and(|(start, _)| start == 0);
    let all_cpu = fast_cpu(&x) && scale.is_none_or(fast_cpu) && add.is_none_or(fast_cpu);
    if !plain || !all_cpu || scale.is_some_and(|s| s.dims() != [n, c, 1, 1]) || add.is_some_and(|a| a.dims() != x.dims()) {
        return scale_add(&x, scale, add);
    }
    let scale_v = scale.map(|s| s.flatten_all().and_then(|s| s.to_vec1::<f32>())).transpose()?;
    let op = ScaleAddInPlace { scale: scale_v.as_deref(), scale_addend: false, plane: h * w };
    match add {
        Some(a) => x.inplace_op2(&a.contiguous()?, &op)?,
        None => x.inplace_op1(&op)?,
    }
    Ok(x)
}

/// `x + add * scale` (per-channel `scale` `[n, c, 1, 1]` applied to the addend), written over `x`
/// on the CPU under the same rule as [`scale_add_in_place`]: `x` must be a tensor nothing else
/// reads afterwards.
pub fn add_scaled_in_place(x: Tensor, add: &Tensor, scale: &Tensor) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let plain = x.layout().contiguous_offsets().is_some_and(|(start, _)| start == 0);
    if !plain || !fast_cpu(&x) || !fast_cpu(add) || !fast_cpu(scale) || scale.dims() != [n, c, 1, 1] || add.dims() != x.dims() {
        return scale_add(add, Some(scale), Some(&x));
    }
    let scale_v = scale.flatten_all()?.to_vec1::<f32>()?;
    let op = ScaleAddInPlace { scale: Some(&scale_v), scale_addend: true, plane: h * w };
    x.inplace_op2(&add.contiguous()?, &op)?;
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Deterministic values in [-1, 1) (a 64-bit LCG), so failures reproduce.
    fn rand_vec(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..len)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn rand_tensor(shape: &[usize], seed: u64) -> Result<Tensor> {
        Tensor::from_vec(rand_vec(shape.iter().product(), seed), shape, &Device::Cpu)
    }

    /// max |a - b| / max(|b|max, 1e-6)
    fn rel(a: &Tensor, b: &Tensor) -> Result<f32> {
        assert_eq!(a.dims(), b.dims());
        let d = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
        let s = b.abs()?.max_all()?.to_scalar::<f32>()?;
        Ok(d / s.max(1e-6))
    }

    /// Plain loops: the definition of a zero-padded (grouped) convolution.
    #[allow(clippy::too_many_arguments)]
    fn naive_conv(x: &Tensor, w: &Tensor, b: Option<&Tensor>, stride: usize, pads: (usize, usize, usize, usize), depthwise: bool, act: Activation) -> Result<Tensor> {
        let (n, c, h, wd) = x.dims4()?;
        let (oc, ic, kh, kw) = w.dims4()?;
        let (pt, pb, pl, pr) = pads;
        let (oh, ow) = ((h + pt + pb - kh) / stride + 1, (wd + pl + pr - kw) / stride + 1);
        let xv = x.flatten_all()?.to_vec1::<f32>()?;
        let wv = w.flatten_all()?.to_vec1::<f32>()?;
        let bv = match b {
            Some(b) => b.to_vec1::<f32>()?,
            None => vec![0.0; oc],
        };
        let mut out = vec![0f32; n * oc * oh * ow];
        for bi in 0..n {
            for o in 0..oc {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut acc = bv[o] as f64;
                        for i in 0..ic {
                            let ci = if depthwise { o } else { i };
                            for ky in 0..kh {
                                for kx in 0..kw {
                                    let iy = (oy * stride + ky) as isize - pt as isize;
                                    let ix = (ox * stride + kx) as isize - pl as isize;
                                    if iy < 0 || ix < 0 || iy >= h as isize || ix >= wd as isize {
                                        continue;
                                    }
                                    let xi = ((bi * c + ci) * h + iy as usize) * wd + ix as usize;
                                    acc += (xv[xi] * wv[((o * ic + i) * kh + ky) * kw + kx]) as f64;
                                }
                            }
                        }
                        out[((bi * oc + o) * oh + oy) * ow + ox] = act.apply(acc as f32);
                    }
                }
            }
        }
        Tensor::from_vec(out, (n, oc, oh, ow), &Device::Cpu)
    }

    const ACTS: [Activation; 4] = [Activation::Identity, Activation::Relu, Activation::Relu6, Activation::HardSwish];

    #[test]
    fn fast_convs_match_naive_reference() -> Result<()> {
        let explicit = |top, bottom, left, right| Padding::Explicit { top, bottom, left, right };
        // (n, c_in, c_out, h, w, k, stride, padding, depthwise)
        let cases = [
            (1, 24, 24, 64, 64, 3, 1, explicit(1, 1, 1, 1), true),
            (2, 28, 28, 17, 13, 3, 2, explicit(0, 1, 0, 1), true),
            (2, 7, 7, 11, 9, 5, 1, Padding::Same, true),
            (1, 5, 5, 12, 15, 5, 2, Padding::Same, true),
            (2, 3, 3, 10, 7, 5, 2, explicit(2, 0, 1, 3), true),
            (1, 4, 4, 9, 8, 3, 2, Padding::Valid, true),
            (1, 3, 3, 6, 6, 3, 3, explicit(1, 2, 0, 1), true),
            (2, 9, 6, 13, 11, 1, 1, Padding::Valid, false),
            (1, 24, 28, 64, 64, 1, 1, Padding::Same, false),
            (1, 7, 5, 9, 9, 1, 2, Padding::Same, false),
            (2, 3, 24, 33, 31, 5, 2, explicit(1, 2, 1, 2), false),
            (1, 3, 16, 20, 19, 3, 2, Padding::Same, false),
            (1, 32, 40, 3, 3, 3, 3, Padding::Valid, false),
            (2, 4, 6, 7, 10, 3, 1, explicit(0, 2, 3, 0), false),
            (1, 6, 8, 1, 1, 1, 1, Padding::Valid, false),
            // 3x3 stride-2 stems with 16 outputs (the AVX-512 stem kernel): a masked last
            // vector, VALID, the odd padding row at the bottom.
            (2, 3, 16, 40, 66, 3, 2, Padding::Same, false),
            (1, 4, 16, 21, 37, 3, 2, Padding::Valid, false),
            (1, 3, 16, 33, 32, 3, 2, explicit(0, 1, 0, 1), false),
        ];
        for (i, &(n, ci, co, h, w, k, stride, padding, dw)) in cases.iter().enumerate() {
            let seed = i as u64 * 10;
            let x = rand_tensor(&[n, ci, h, w], seed)?;
            let wt = rand_tensor(&[co, if dw { 1 } else { ci }, k, k], seed + 1)?;
            let b = rand_tensor(&[co], seed + 2)?;
            let pads = padding.pads(h, w, k, k, stride);
            for (j, act) in ACTS.into_iter().enumerate() {
                let bias = (j % 2 == 0).then(|| b.clone());
                let conv = Conv2d::from_tensors(wt.clone(), bias.clone(), stride, padding, dw)?.with_activation(act);
                let want = naive_conv(&x, &wt, bias.as_ref(), stride, pads, dw, act)?;
                let fast = conv.forward(&x)?;
                let candle = conv.forward_candle(&x)?;
                let (ef, ec) = (rel(&fast, &want)?, rel(&candle, &want)?);
                assert!(ef < 1e-5, "case {i} {act:?}: fast rel err {ef}");
                assert!(ec < 1e-5, "case {i} {act:?}: candle rel err {ec}");
            }
        }
        Ok(())
    }

    /// The same kernels with their layers split over a pass's spinning team (`on_pool` engages
    /// it; a test holding it elsewhere leaves these on rayon, also correct).
    #[test]
    fn convs_on_a_team_match_naive_reference() -> Result<()> {
        on_pool(fast_convs_match_naive_reference)?;
        on_pool(fused_depthwise_pointwise_matches_separate_ops)?;
        on_pool(fused_conv_matches_separate_ops)?;
        #[cfg(target_arch = "x86_64")]
        on_pool(channel_vector_depthwise_matches_naive_reference)?;
        on_pool(blocked_depthwise_matches_naive_reference)
    }

    #[test]
    fn team_runs_every_part_once() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        for parts in [1, 2, 3, 8, 33] {
            let hits: Vec<AtomicUsize> = (0..parts).map(|_| AtomicUsize::new(0)).collect();
            on_pool(|| {
                fork(parts, &|i| {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                })
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1), "{parts} parts");
            let (a, b) = on_pool(|| join(|| parts + 1, || parts * 2));
            assert_eq!((a, b), (parts + 1, parts * 2));
        }
        // A panicking part reaches the pass's caller, and the team is free for the next pass.
        let r = std::panic::catch_unwind(|| on_pool(|| fork(4, &|i| assert!(i != 3, "part 3 fails"))));
        assert!(r.is_err());
        let hits: Vec<AtomicUsize> = (0..8).map(|_| AtomicUsize::new(0)).collect();
        on_pool(|| {
            fork(8, &|i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            })
        });
        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
    }

    /// A pass whose helper never comes (the sibling worker busy elsewhere) with splits nested in
    /// the heads' join: the owner runs every part itself and returns. (A nested post used to
    /// replace the join's still-waiting slot, and taking the join back then waited forever.)
    #[test]
    fn team_without_its_helper_finishes_nested_splits() {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let Ok(pool) = rayon::ThreadPoolBuilder::new().num_threads(2).build() else { return };
            let (busy, release) = (AtomicBool::new(false), AtomicBool::new(false));
            let hits: Vec<AtomicUsize> = (0..6).map(|_| AtomicUsize::new(0)).collect();
            let r = pool.scope(|s| {
                // Occupy the sibling until the pass is over.
                s.spawn(|_| {
                    busy.store(true, Ordering::Release);
                    while !release.load(Ordering::Acquire) {
                        std::thread::yield_now();
                    }
                });
                while !busy.load(Ordering::Acquire) {
                    std::thread::yield_now();
                }
                let r = on_pool(|| {
                    join(
                        || {
                            fork(4, &|i| {
                                hits[i].fetch_add(1, Ordering::Relaxed);
                            });
                            1
                        },
                        || {
                            fork(2, &|i| {
                                hits[4 + i].fetch_add(1, Ordering::Relaxed);
                            });
                            2
                        },
                    )
                });
                release.store(true, Ordering::Release);
                r
            });
            let once = hits.iter().all(|h| h.load(Ordering::Relaxed) == 1);
            let _ = tx.send((r, once));
        });
        let got = rx.recv_timeout(std::time::Duration::from_secs(60));
        assert_eq!(got, Ok(((1, 2), true)), "the pass did not finish, or ran a part twice or never");
    }

    #[test]
    fn fused_conv_matches_separate_ops() -> Result<()> {
        // (n, c_in, c_out, residual channels, h, w, k, stride): pixel tails, channel-padded
        // residuals, im2col products and a layer big enough to be split over threads.
        let cases = [
            (1, 24, 24, 24, 128, 128, 1, 1),
            (2, 9, 14, 9, 13, 11, 1, 1),
            (1, 28, 32, 28, 9, 7, 1, 1),
            (1, 3, 16, 0, 33, 31, 3, 2),
            (1, 3, 16, 16, 64, 96, 3, 2),
            (2, 32, 32, 32, 6, 6, 1, 1),
            // Maps under 16 pixels (the dot-product tail): face-mesh heads, squeeze-excite gates.
            (1, 128, 128, 128, 3, 3, 1, 1),
            (2, 20, 13, 7, 3, 5, 1, 1),
            (1, 9, 30, 0, 1, 1, 1, 1),
            (1, 32, 1404, 0, 3, 3, 3, 3),
            // Split over blocks of output rows on a team, the residual ending mid-way.
            (1, 96, 130, 64, 3, 3, 1, 1),
        ];
        for (i, &(n, ci, co, rc, h, w, k, stride)) in cases.iter().enumerate() {
            let seed = 900 + i as u64 * 10;
            let x = rand_tensor(&[n, ci, h, w], seed)?;
            let conv = Conv2d::from_tensors(rand_tensor(&[co, ci, k, k], seed + 1)?, Some(rand_tensor(&[co], seed + 2)?), stride, Padding::Same, false)?;
            let plain = conv.forward_candle(&x)?;
            let (_, _, oh, ow) = plain.dims4()?;
            let r = rand_tensor(&[n, rc, oh, ow], seed + 3)?;
            let summed = if rc > 0 { (&plain + r.pad_with_zeros(1, 0, co - rc)?)? } else { plain.clone() };
            let prelu = PRelu::from_tensor(rand_tensor(&[co], seed + 4)?)?;
            let residual = (rc > 0).then_some(&r);
            let relu = conv.forward_fused(&x, residual, FusedActivation::Relu)?;
            assert!(rel(&relu, &summed.relu()?)? < 1e-5, "case {i} relu");
            let pr = conv.forward_fused(&x, residual, FusedActivation::PRelu(&prelu))?;
            let want = (summed.relu()? + summed.minimum(0f32)?.broadcast_mul(&prelu.alpha)?)?;
            assert!(rel(&pr, &want)? < 1e-5, "case {i} prelu");
        }
        Ok(())
    }

    #[test]
    fn fused_depthwise_pointwise_matches_separate_ops() -> Result<()> {
        // (n, c, c_out, residual channels, h, w, dw kernel, dw activation): bands of whole and
        // partial panels, widths that are not a multiple of 16, deep inputs, threads.
        // Stride 2 with the face mesh's / BlazeFace's widening blocks (16 -> 32 at 96x96 -> 48x48).
        let cases = [
            (1, 24, 24, 24, 128, 128, 3, 1, Activation::Identity),
            (2, 16, 16, 16, 96, 96, 3, 1, Activation::Identity),
            (1, 128, 128, 128, 12, 12, 3, 1, Activation::Relu),
            (1, 28, 32, 28, 17, 13, 3, 1, Activation::Identity),
            (2, 8, 12, 0, 20, 7, 5, 1, Activation::HardSwish),
            (1, 32, 32, 32, 6, 6, 3, 1, Activation::Identity),
            (1, 16, 32, 16, 96, 96, 3, 2, Activation::Identity),
            (2, 24, 20, 11, 33, 37, 3, 2, Activation::Relu),
            (1, 12, 16, 12, 40, 38, 5, 2, Activation::HardSwish),
            (1, 64, 128, 64, 12, 12, 3, 2, Activation::Identity),
            (1, 128, 128, 128, 6, 6, 3, 2, Activation::Identity),
            (2, 32, 32, 32, 3, 3, 3, 1, Activation::Relu),
            // One band of a small map, the 1x1 split by output rows on a team (a residual
            // ending mid-way, channels off the 8-lane blocks, a 5x5 kernel).
            (1, 128, 130, 100, 6, 6, 3, 1, Activation::Identity),
            (1, 128, 128, 128, 6, 6, 3, 2, Activation::Relu),
            (1, 90, 96, 0, 5, 7, 5, 1, Activation::HardSwish),
            (1, 4, 160, 4, 6, 6, 3, 1, Activation::Identity),
        ];
        for (i, &(n, c, co, rc, h, w, k, stride, dw_act)) in cases.iter().enumerate() {
            let seed = 1900 + i as u64 * 10;
            let x = rand_tensor(&[n, c, h, w], seed)?;
            let dw = Conv2d::from_tensors(rand_tensor(&[c, 1, k, k], seed + 1)?, Some(rand_tensor(&[c], seed + 5)?), stride, Padding::Same, true)?.with_activation(dw_act);
            let pw = Conv2d::from_tensors(rand_tensor(&[co, c, 1, 1], seed + 2)?, Some(rand_tensor(&[co], seed + 6)?), 1, Padding::Valid, false)?;
            assert!(dw.fuses_with(&pw, &x) || !has_avx2_fma(), "case {i} should take the fused kernel");
            let plain = pw.forward_candle(&dw.forward_candle(&x)?)?;
            let (_, _, oh, ow) = plain.dims4()?;
            let r = rand_tensor(&[n, rc, oh, ow], seed + 3)?;
            let summed = if rc > 0 { (&plain + r.pad_with_zeros(1, 0, co - rc)?)? } else { plain.clone() };
            let prelu = PRelu::from_tensor(rand_tensor(&[co], seed + 4)?)?;
            let residual = (rc > 0).then_some(&r);
            let relu = dw.forward_dw_fused(&pw, &x, residual, FusedActivation::Relu)?;
            assert!(rel(&relu, &summed.relu()?)? < 1e-5, "case {i} relu");
            // On a pass's team of two (row bands, or channel groups on small maps).
            let team = rayon::ThreadPoolBuilder::new().num_threads(2).build().map_err(candle_core::Error::wrap)?;
            let relu = team.install(|| on_pool(|| dw.forward_dw_fused(&pw, &x, residual, FusedActivation::Relu)))?;
            assert!(rel(&relu, &summed.relu()?)? < 1e-5, "case {i} relu, two threads");
            let pr = dw.forward_dw_fused(&pw, &x, residual, FusedActivation::PRelu(&prelu))?;
            let want = (summed.relu()? + summed.minimum(0f32)?.broadcast_mul(&prelu.alpha)?)?;
            assert!(rel(&pr, &want)? < 1e-5, "case {i} prelu");
            if stride == 2 && h % 2 == 0 && w % 2 == 0 && c <= co {
                // The stride-2 blocks' skip: the input's 2x2 max pool, pooled inside the bands.
                let pooled = (&plain + max_pool2d_candle(&x, 2, 2, Padding::Valid)?.pad_with_zeros(1, 0, co - c)?)?;
                let got = dw.forward_dw_fused_pooled(&pw, &x, FusedActivation::PRelu(&prelu))?;
                let want = (pooled.relu()? + pooled.minimum(0f32)?.broadcast_mul(&prelu.alpha)?)?;
                assert!(rel(&got, &want)? < 1e-5, "case {i} pooled skip");
                for pool in [1, 2] {
                    let got = rayon::ThreadPoolBuilder::new().num_threads(pool).build().map_err(candle_core::Error::wrap)?.install(|| {
                        on_pool(|| dw.forward_dw_fused_pooled(&pw, &x, FusedActivation::Relu))
                    })?;
                    assert!(rel(&got, &pooled.relu()?)? < 1e-5, "case {i} pooled skip, {pool} thread(s)");
                }
            }
        }
        Ok(())
    }

    /// The register-blocked depthwise kernels (3x3 / 5x5, stride 1 / 2), on the AVX2 build and the
    /// forced portable one, whole planes and bands of rows, against the plain-loop definition.
    #[test]
    fn blocked_depthwise_matches_naive_reference() -> Result<()> {
        let explicit = |top, bottom, left, right| Padding::Explicit { top, bottom, left, right };
        // (c, h, w, k, stride, padding): odd sizes, widths around the 8 / 16 lane blocks, maps
        // smaller than the kernel's reach, asymmetric explicit pads.
        let cases = [
            (3, 17, 13, 3, 2, Padding::Same),
            (5, 12, 15, 5, 2, Padding::Same),
            (7, 11, 9, 5, 1, Padding::Same),
            (9, 20, 19, 3, 1, explicit(0, 2, 1, 0)),
            (2, 7, 10, 5, 2, explicit(2, 0, 1, 3)),
            (10, 33, 35, 3, 2, Padding::Same),
            (4, 16, 16, 3, 2, Padding::Valid),
            (3, 6, 6, 3, 1, Padding::Same),
            (6, 64, 64, 5, 2, Padding::Same),
            (5, 16, 16, 5, 1, Padding::Same),
            (1, 3, 2, 5, 1, Padding::Same),
            (3, 40, 41, 3, 1, Padding::Same),
            (4, 1, 9, 3, 1, Padding::Same),
            (2, 2, 3, 3, 1, Padding::Same),
            (3, 5, 24, 3, 1, Padding::Same),
            // 3x3 stride 2 without top / left padding, 16+ outputs wide (read in place with
            // AVX-512): whole vectors, a masked last vector, VALID, an odd number of rows.
            (3, 34, 64, 3, 2, Padding::Same),
            (2, 20, 50, 3, 2, Padding::Same),
            (2, 9, 33, 3, 2, Padding::Valid),
            (2, 19, 36, 3, 2, explicit(0, 0, 0, 1)),
        ];
        for (i, &(c, h, w, k, stride, padding)) in cases.iter().enumerate() {
            let (x, wt, b) = depthwise_case(1, c, h, w, k, 3100 + i as u64 * 10)?;
            let g = Conv2d::from_tensors(wt.clone(), Some(b.clone()), stride, padding, true)?.geometry(&x)?;
            let (xv, wv, bv) = (x.flatten_all()?.to_vec1::<f32>()?, wt.flatten_all()?.to_vec1::<f32>()?, b.to_vec1::<f32>()?);
            let (pin, pout) = (h * w, g.oh * g.ow);
            for act in ACTS {
                let want = naive_conv(&x, &wt, Some(&b), stride, padding.pads(h, w, k, k, stride), true, act)?;
                for simd in [false, dw_simd()] {
                    let mut out = vec![0f32; c * pout];
                    for (ch, o) in out.chunks_exact_mut(pout).enumerate() {
                        let (plane, kw) = (&xv[ch * pin..(ch + 1) * pin], &wv[ch * k * k..(ch + 1) * k * k]);
                        // Two bands: the second starts mid-plane (its padded copy starts there).
                        let split = g.oh / 2 * g.ow;
                        let (top, bottom) = o.split_at_mut(split);
                        dw_rows(plane, kw, bv[ch], act, &g, 0, as_uninit(top), simd);
                        dw_rows(plane, kw, bv[ch], act, &g, g.oh / 2, as_uninit(bottom), simd);
                    }
                    let got = Tensor::from_vec(out, (1, c, g.oh, g.ow), &Device::Cpu)?;
                    let e = rel(&got, &want)?;
                    assert!(e < 1e-5, "case {i} {act:?} simd {simd}: rel err {e}");
                }
            }
        }
        Ok(())
    }

    /// A depthwise test case's input `[n, c, h, w]`, weights `[c, 1, k, k]` and bias, seeded.
    fn depthwise_case(n: usize, c: usize, h: usize, w: usize, k: usize, seed: u64) -> Result<(Tensor, Tensor, Tensor)> {
        Ok((rand_tensor(&[n, c, h, w], seed)?, rand_tensor(&[c, 1, k, k], seed + 1)?, rand_tensor(&[c], seed + 2)?))
    }

    /// The channel-vector depthwise kernel (small and strided maps), whole layers through
    /// `Conv2d::forward` and fused with a 1x1 conv, against the naive reference: channel counts
    /// off the 8-lane blocks, maps narrower than 8 pixels (groups spanning rows), odd sizes,
    /// asymmetric pads, two images.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn channel_vector_depthwise_matches_naive_reference() -> Result<()> {
        let explicit = |top, bottom, left, right| Padding::Explicit { top, bottom, left, right };
        let cases = [
            (8, 12, 12, 3, 1, Padding::Same),
            (13, 6, 6, 3, 1, Padding::Same),
            (16, 3, 3, 3, 1, Padding::Same),
            (24, 24, 24, 3, 2, Padding::Same),
            (9, 13, 11, 5, 2, Padding::Same),
            (20, 7, 5, 5, 1, Padding::Same),
            (16, 33, 35, 3, 2, Padding::Same),
            (12, 10, 9, 3, 1, explicit(0, 2, 1, 0)),
            (17, 16, 16, 5, 2, explicit(2, 0, 1, 3)),
            (8, 4, 4, 3, 2, Padding::Valid),
            (40, 2, 3, 3, 1, Padding::Same),
            (64, 96, 96, 3, 2, Padding::Same),
            // The flat AVX-512 kernel's edge cases: one column, one row, 24 wide, vectors
            // spanning several rows, channels off its 8-channel groups.
            (11, 7, 1, 3, 1, Padding::Same),
            (9, 1, 20, 3, 1, Padding::Same),
            (19, 24, 24, 3, 1, Padding::Same),
            (10, 5, 17, 3, 1, Padding::Same),
        ];
        for (i, &(c, h, w, k, stride, padding)) in cases.iter().enumerate() {
            let seed = 5100 + i as u64 * 10;
            let (x, wt, b) = depthwise_case(2, c, h, w, k, seed)?;
            let conv = Conv2d::from_tensors(wt.clone(), Some(b.clone()), stride, padding, true)?;
            let g = conv.geometry(&x)?;
            // (Stride-2 maps with no top / left padding go to the in-place AVX-512 kernel, small
            // stride-1 3x3 SAME maps to the flat one.)
            assert!(dwcv::takes(&g) || dw3s2_direct(&g) || dwflat::takes(&g) || !has_avx2_fma(), "case {i} should take the channel-vector kernel");
            for act in ACTS {
                let want = naive_conv(&x, &wt, Some(&b), stride, padding.pads(h, w, k, k, stride), true, act)?;
                let got = conv.clone().with_activation(act).forward(&x)?;
                let e = rel(&got, &want)?;
                assert!(e < 1e-5, "case {i} {act:?}: rel err {e}");
            }
            // Fused with a 1x1 conv (bands of rows fed to the pointwise kernel), ReLU after.
            let m = 2 * c + 3;
            let pw = Conv2d::from_tensors(rand_tensor(&[m, c, 1, 1], seed + 3)?, Some(rand_tensor(&[m], seed + 4)?), 1, Padding::Valid, false)?;
            if conv.fuses_with(&pw, &x) {
                let want = pw.forward(&naive_conv(&x, &wt, Some(&b), stride, padding.pads(h, w, k, k, stride), true, Activation::Identity)?)?.relu()?;
                let got = conv.forward_dw_fused(&pw, &x, None, FusedActivation::Relu)?;
                let e = rel(&got, &want)?;
                assert!(e < 1e-5, "case {i} fused: rel err {e}");
            }
        }
        Ok(())
    }

    #[test]
    fn fast_conv_accepts_strided_input() -> Result<()> {
        // A transposed view is not contiguous: the kernel must see the logical values.
        let x = rand_tensor(&[1, 6, 9, 8], 7)?.transpose(2, 3)?;
        let w = rand_tensor(&[6, 1, 3, 3], 8)?;
        let conv = Conv2d::from_tensors(w, None, 2, Padding::Same, true)?;
        assert!(rel(&conv.forward(&x)?, &conv.forward_candle(&x)?)? < 1e-5);
        Ok(())
    }

    #[test]
    fn conv_rejects_wrong_channels_and_tiny_inputs() -> Result<()> {
        let conv = Conv2d::from_tensors(rand_tensor(&[4, 3, 3, 3], 1)?, None, 1, Padding::Valid, false)?;
        assert!(conv.forward(&rand_tensor(&[1, 5, 8, 8], 2)?).is_err());
        assert!(conv.forward(&rand_tensor(&[1, 3, 2, 8], 2)?).is_err());
        Ok(())
    }

    #[test]
    fn transposed_conv_matches_naive_reference() -> Result<()> {
        for (i, &(n, ci, co, h, w, k)) in [(1, 16, 1, 12, 10, 2), (2, 5, 3, 7, 9, 2), (1, 4, 2, 5, 6, 3)].iter().enumerate() {
            let x = rand_tensor(&[n, ci, h, w], 100 + i as u64)?;
            let wt = rand_tensor(&[ci, co, k, k], 200 + i as u64)?;
            let b = rand_tensor(&[co], 300 + i as u64)?;
            let xv = x.flatten_all()?.to_vec1::<f32>()?;
            let wv = wt.flatten_all()?.to_vec1::<f32>()?;
            let bv = b.to_vec1::<f32>()?;
            let (oh, ow) = (h * k, w * k);
            let mut want = vec![0f32; n * co * oh * ow];
            for bi in 0..n {
                for o in 0..co {
                    for oy in 0..oh {
                        for ox in 0..ow {
                            let mut acc = bv[o];
                            for c in 0..ci {
                                acc += xv[((bi * ci + c) * h + oy / k) * w + ox / k] * wv[((c * co + o) * k + oy % k) * k + ox % k];
                            }
                            want[((bi * co + o) * oh + oy) * ow + ox] = acc;
                        }
                    }
                }
            }
            let want = Tensor::from_vec(want, (n, co, oh, ow), &Device::Cpu)?;
            let conv = ConvTranspose2d::from_tensors(wt, b, k)?;
            assert!(rel(&conv.forward(&x)?, &want)? < 1e-5, "case {i}");
            assert!(rel(&conv.forward_candle(&x)?, &want)? < 1e-5, "case {i} (candle)");
        }
        Ok(())
    }

    #[test]
    fn elementwise_and_pooling_match_candle() -> Result<()> {
        for (i, shape) in [[1usize, 16, 96, 96], [2, 5, 7, 3], [1, 128, 3, 3], [1, 3, 10, 38]].iter().enumerate() {
            let x = (rand_tensor(shape, 400 + i as u64)? * 5.0)?;
            let alpha = rand_tensor(&[shape[1]], 500 + i as u64)?;
            let prelu = PRelu::from_tensor(alpha.clone())?;
            let want = (x.relu()? + x.minimum(0f32)?.broadcast_mul(&alpha.reshape((1, (), 1, 1))?)?)?;
            assert!(rel(&prelu.forward(&x)?, &want)? < 1e-6);
            assert!(rel(&hard_swish(&x)?, &hard_swish_candle(&x)?)? < 1e-6);
            let avg = x.mean_keepdim(3)?.mean_keepdim(2)?;
            assert!(rel(&global_avg_pool(&x)?, &avg)? < 1e-5);
            for (k, s, p) in [(2, 2, Padding::Same), (2, 2, Padding::Valid), (3, 2, Padding::Same), (3, 1, Padding::Same), (2, 1, Padding::Valid)] {
                if shape[2] < k || shape[3] < k {
                    continue;
                }
                let fast = max_pool2d(&x, k, s, p)?;
                assert_eq!(rel(&fast, &max_pool2d_candle(&x, k, s, p)?)?, 0.0, "{shape:?} k{k} s{s} {p:?}");
            }
        }
        Ok(())
    }

    #[test]
    fn same_padding_matches_tensorflow() {
        assert_eq!(Padding::Same.amounts(128, 5, 1), (2, 2));
        assert_eq!(Padding::Same.amounts(128, 5, 2), (1, 2));
        assert_eq!(Padding::Same.amounts(128, 2, 2), (0, 0));
        assert_eq!(Padding::Same.amounts(7, 3, 2), (1, 1));
    }

    #[test]
    fn depthwise_equals_per_channel_conv() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::arange(0f32, 2.0 * 5.0 * 5.0, &dev)?.reshape((1, 2, 5, 5))?;
        let w = Tensor::new(&[1f32, 0.5, -1.0, 2.0, 0.0, 1.0, 3.0, 1.0, 0.25], &dev)?.reshape((1, 1, 3, 3))?;
        let w2 = Tensor::cat(&[&w, &(&w * 2.0)?], 0)?;
        let conv = Conv2d::from_tensors(w2, None, 1, Padding::Same, true)?;
        let y = conv.forward(&x)?;
        let y0 = pad2d(&x.narrow(1, 0, 1)?, 1, 1, 1, 1)?.conv2d(&w, 0, 1, 1, 1)?;
        let diff = (y.narrow(1, 0, 1)? - y0)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-4);
        Ok(())
    }

    #[test]
    fn max_pool_same_ignores_padding() -> Result<()> {
        let x = (Tensor::ones((1, 1, 3, 3), candle_core::DType::F32, &Device::Cpu)? * -5.0)?;
        let y = max_pool2d(&x, 2, 2, Padding::Same)?;
        assert_eq!(y.dims4()?, (1, 1, 2, 2));
        assert_eq!(y.flatten_all()?.to_vec1::<f32>()?, vec![-5.0; 4]);
        Ok(())
    }
}

/// Leaky ReLU in one pass over a contiguous f32 tensor.
struct LeakyReluOp(f32);

impl CustomOp1 for LeakyReluOp {
    fn name(&self) -> &'static str {
        "likeness-leaky-relu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = cpu_slice(storage, layout, self.name())?;
        let mut out = vec![0f32; x.len()];
        let slope = self.0;
        const CHUNK: usize = 1 << 16;
        for_chunks(&mut out, CHUNK, x.len(), |i, o| {
            let src = x.get(i * CHUNK..i * CHUNK + o.len()).unwrap_or(&[]);
            o.iter_mut().zip(src).for_each(|(o, &v)| *o = if v >= 0.0 { v } else { v * slope });
        });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

/// Leaky ReLU `max(x, 0) + slope * min(x, 0)` (GFPGAN / StyleGAN2): one pass on the CPU instead
/// of candle_nn's five (zeros, max, min, scale, add), which matter on 512x512x64 feature maps.
pub fn leaky_relu(x: &Tensor, slope: f32) -> Result<Tensor> {
    if !fast_cpu(x) {
        return x.relu()? + (x.minimum(0f32)? * slope as f64)?;
    }
    x.contiguous()?.apply_op1_no_bwd(&LeakyReluOp(slope))
}

impl candle_core::InplaceOp1 for LeakyReluOp {
    fn name(&self) -> &'static str {
        "likeness-leaky-relu-in-place"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> Result<()> {
        let x = cpu_slice_mut(storage, layout, "leaky relu in place")?;
        let slope = self.0;
        let work = x.len();
        for_chunks(x, 1 << 16, work, |_, o| o.iter_mut().for_each(|v| *v = if *v >= 0.0 { *v } else { *v * slope }));
        Ok(())
    }
}

/// [`leaky_relu`] written over `x` on the CPU (no new buffer), under the rule of
/// [`scale_add_in_place`]: only for an `x` nothing else reads afterwards, such as a layer's fresh
/// output. Other devices, layouts or dtypes fall back to [`leaky_relu`].
pub fn leaky_relu_in_place(x: Tensor, slope: f32) -> Result<Tensor> {
    let plain = x.layout().contiguous_offsets().is_some_and(|(start, _)| start == 0);
    if !plain || !fast_cpu(&x) {
        return leaky_relu(&x, slope);
    }
    x.inplace_op1(&LeakyReluOp(slope))?;
    Ok(x)
}

/// A [`Conv2d`] that holds its weights once. On the CPU in f32 the kernels read their own copy of the
/// weights, so the layer's candle tensor is a second copy that only candle's path uses: big models (the
/// Stable Diffusion UNet: 2 GB of conv weights) drop it for a zero-stride view of the same shape and rebuild
/// it from the kernels' copy only if an input ever needs candle's path (another device or dtype).
#[derive(Debug, Clone)]
pub struct LeanConv2d {
    inner: Conv2d,
    lean: bool,
}

impl LeanConv2d {
    pub fn new(conv: Conv2d) -> Result<Self> {
        if conv.cpu.is_none() {
            return Ok(Self { inner: conv, lean: false });
        }
        let placeholder = Tensor::zeros((), conv.weight.dtype(), conv.weight.device())?.broadcast_as(conv.weight.shape())?;
        Ok(Self { inner: Conv2d { weight: placeholder, ..conv }, lean: true })
    }
}

impl LeanConv2d {
    /// `conv(x) + residual` (see [`Conv2d::forward_add`]).
    pub fn forward_add(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        if self.lean && !fast_cpu(x) {
            return self.forward(x)? + residual;
        }
        self.inner.forward_add(x, residual)
    }
}

impl Module for LeanConv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self.inner.cpu.as_deref() {
            Some(cpu) if self.lean && !fast_cpu(x) => {
                let weight = Tensor::from_slice(&cpu.weight, self.inner.weight.shape(), x.device())?.to_dtype(x.dtype())?;
                let bias = match &self.inner.bias {
                    Some(b) => Some(b.to_device(x.device())?.to_dtype(x.dtype())?),
                    None => None,
                };
                Conv2d { weight, bias, cpu: None, ..self.inner.clone() }.forward_candle(x)
            }
            _ => self.inner.forward(x),
        }
    }
}

#[cfg(test)]
mod lean_conv_tests {
    use super::*;
    use candle_core::Device;

    /// `forward_add` is `forward + residual`: on Winograd (a 3x3 layer of 40 channels on a 16x16 map,
    /// where the sum is fused), on the other kernels (a 5x5 map) and on candle's path (f16).
    #[test]
    fn forward_add_is_the_conv_plus_the_residual() -> Result<()> {
        let dev = Device::Cpu;
        let pad = Padding::Explicit { top: 1, bottom: 1, left: 1, right: 1 };
        let w = Tensor::randn(0f32, 0.1, (40, 40, 3, 3), &dev)?;
        let b = Tensor::randn(0f32, 0.1, 40, &dev)?;
        let lean = LeanConv2d::new(Conv2d::from_tensors(w, Some(b), 1, pad, false)?)?;
        for (size, dtype, tol) in [(16, DType::F32, 1e-5), (5, DType::F32, 1e-5), (16, DType::F16, 3e-2)] {
            let x = Tensor::randn(0f32, 1.0, (1, 40, size, size), &dev)?.to_dtype(dtype)?;
            let r = Tensor::randn(0f32, 1.0, (1, 40, size, size), &dev)?.to_dtype(dtype)?;
            let want = (lean.forward(&x)? + &r)?.to_dtype(DType::F32)?;
            let got = lean.forward_add(&x, &r)?.to_dtype(DType::F32)?;
            let err = (got - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(err < tol, "{size}x{size} {dtype:?}: {err}");
        }
        let x = Tensor::randn(0f32, 1.0, (1, 40, 16, 16), &dev)?;
        assert!(lean.forward_add(&x, &Tensor::zeros((1, 40, 8, 8), DType::F32, &dev)?).is_err(), "a residual of another shape");
        Ok(())
    }

    /// The lean layer gives the dense layer's output, on the kernels' path and (f16 input) on candle's.
    #[test]
    fn lean_conv_matches_the_dense_layer_on_both_paths() -> Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 0.3, (5, 3, 3, 3), &dev)?;
        let b = Tensor::randn(0f32, 0.3, 5, &dev)?;
        let pad = Padding::Explicit { top: 1, bottom: 1, left: 1, right: 1 };
        let dense = Conv2d::from_tensors(w.clone(), Some(b.clone()), 1, pad, false)?;
        let lean = LeanConv2d::new(dense.clone())?;
        let x = Tensor::randn(0f32, 1.0, (2, 3, 7, 6), &dev)?;
        let err = (lean.forward(&x)? - dense.forward(&x)?)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(err < 1e-6, "kernels: {err}");
        let want = dense.forward_candle(&x)?;
        let got = lean.forward(&x.to_dtype(DType::F16)?)?.to_dtype(DType::F32)?;
        let err = (got - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(err < 2e-2, "candle's path (f16): {err}");
        Ok(())
    }
}

/// What ends [`Conv2d::forward_fused`]: after the residual sum, a ReLU or a PReLU.
#[derive(Debug, Clone, Copy)]
pub enum FusedActivation<'a> {
    Relu,
    PRelu(&'a PRelu),
}

/// `post(conv(x) + residual)` on the direct kernel: one CPU op, the sum and activation done in
/// registers before the one store.
#[cfg(target_arch = "x86_64")]
struct FusedOp<'a> {
    dense: DenseOp<'a>,
    alpha: Option<&'a [f32]>,
}

#[cfg(target_arch = "x86_64")]
impl CustomOp2 for FusedOp<'_> {
    fn name(&self) -> &'static str {
        "likeness-conv2d-fused"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.dense.g;
        let x = cpu_slice(s1, l1, self.name())?;
        let r = cpu_slice(s2, l2, self.name())?;
        let (rn, rc, rh, rw) = l2.shape().dims4()?;
        if x.len() != g.n * g.c_in * g.h * g.w || rn != g.n || rc > g.c_out || rh != g.oh || rw != g.ow {
            bail!("conv2d fused: residual {:?} does not fit the output", l2.shape());
        }
        if let Some(out) = self.dense.direct(x, Some((r, rc)), self.alpha)? {
            return Ok((CpuStorage::F32(out), Shape::from((g.n, g.c_out, g.oh, g.ow))));
        }
        bail!("conv2d fused: shape not supported by the direct kernel")
    }
}

/// `act(conv(x) + bias + residual)` by Winograd, the residual added in the output transform's store.
struct WinogradAddOp<'a>(DenseOp<'a>);

impl CustomOp2 for WinogradAddOp<'_> {
    fn name(&self) -> &'static str {
        "likeness-conv2d-winograd-add"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (op, g) = (&self.0, self.0.g);
        let x = cpu_slice(s1, l1, self.name())?;
        let r = cpu_slice(s2, l2, self.name())?;
        if l2.shape().dims() != [g.n, g.c_out, g.oh, g.ow] {
            bail!("conv2d + residual: residual {:?} is not the output's shape", l2.shape());
        }
        match op.winograd(x, Some(r))? {
            Some(out) => Ok((CpuStorage::F32(out), Shape::from((g.n, g.c_out, g.oh, g.ow)))),
            None => bail!("conv2d + residual: input / weight sizes disagree"),
        }
    }
}

impl Conv2d {
    /// `conv(x) + residual` for a residual of the output's shape (a resnet's skip). Where the
    /// convolution is Winograd's (big 3x3 layers on the CPU) the sum happens in its store, with no
    /// extra pass or tensor; elsewhere it is the convolution followed by candle's add.
    pub fn forward_add(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        if let Some(cpu) = self.cpu.as_deref().filter(|_| fast_cpu(x) && fast_cpu(residual) && !self.depthwise) {
            let g = self.geometry(x)?;
            if winograd::takes(&g) && residual.dims() == [g.n, g.c_out, g.oh, g.ow] {
                let op = WinogradAddOp(DenseOp { weight: &cpu.weight, bias: &cpu.bias, act: self.activation, g });
                return x.contiguous()?.apply_op2_no_bwd(&residual.contiguous()?, &op);
            }
        }
        self.forward(x)? + residual
    }
}

impl Conv2d {
    /// `act(conv(x) + residual)`, where `residual` (`[n, c, oh, ow]`, `c <=` output channels) is
    /// zero-padded in channels (the skip of BlazeFace / face-mesh blocks) and may be `None`; the
    /// layer's own activation, if any, comes before the sum. On the CPU (AVX2 + FMA) the sum and
    /// `act` happen in the convolution's store: no extra pass or tensor per op; elsewhere, and
    /// for shapes the direct kernel does not take, candle's ops / the other kernels.
    pub fn forward_fused(&self, x: &Tensor, residual: Option<&Tensor>, act: FusedActivation) -> Result<Tensor> {
        #[cfg(target_arch = "x86_64")]
        {
            let alpha = match act {
                FusedActivation::Relu => None,
                FusedActivation::PRelu(p) => Some(p.cpu.as_deref().map(|a| a.as_slice())),
            };
            let cpu = self.cpu.as_deref().filter(|_| fast_cpu(x) && residual.is_none_or(fast_cpu));
            if let (Some(cpu), true) = (cpu, alpha.is_none_or(|a| a.is_some())) {
                let g = self.geometry(x)?;
                let kdim = g.c_in * g.kh * g.kw;
                if !self.depthwise && Self::direct_fits(kdim, g.oh * g.ow) {
                    let alpha = alpha.flatten();
                    let act_in = match act {
                        FusedActivation::Relu => Activation::Relu,
                        FusedActivation::PRelu(_) => Activation::Identity,
                    };
                    if self.activation == Activation::Identity && alpha.is_none_or(|a| a.len() == g.c_out) {
                        let dense = DenseOp { weight: &cpu.weight, bias: &cpu.bias, act: act_in, g };
                        let x = x.contiguous()?;
                        let r = match residual {
                            Some(r) => r.contiguous()?,
                            None => Tensor::zeros((g.n, 0, g.oh, g.ow), DType::F32, x.device())?,
                        };
                        return x.apply_op2_no_bwd(&r, &FusedOp { dense, alpha });
                    }
                }
            }
        }
        let y = self.forward(x)?;
        let y = match residual {
            Some(r) => {
                let extra = y.dim(1)?.saturating_sub(r.dim(1)?);
                let r = if extra > 0 { r.pad_with_zeros(1, 0, extra)? } else { r.clone() };
                (y + r)?
            }
            None => y,
        };
        match act {
            FusedActivation::Relu => y.relu(),
            FusedActivation::PRelu(p) => p.forward(&y),
        }
    }

    /// Whether [`Self::forward_fused`] runs as one kernel on `x` (a CPU f32 tensor, a dense conv
    /// the direct kernel takes, no activation of its own); otherwise it falls back to separate ops
    /// and a caller may have a cheaper fused tail of its own.
    pub fn fuses(&self, x: &Tensor) -> bool {
        let Ok(g) = self.geometry(x) else { return false };
        self.cpu.is_some() && fast_cpu(x) && !self.depthwise && self.activation == Activation::Identity
            && Self::direct_fits(g.c_in * g.kh * g.kw, g.oh * g.ow)
    }

    /// Whether the direct kernel takes a product of depth `k` over `p` pixels on this machine.
    fn direct_fits(k: usize, p: usize) -> bool {
        #[cfg(target_arch = "x86_64")]
        return pointwise::fits(k, p);
        #[cfg(not(target_arch = "x86_64"))]
        return false;
    }
}

/// A depthwise conv feeding a 1x1 conv, fused (see [`Conv2d::forward_dw_fused`]).
#[cfg(target_arch = "x86_64")]
struct DwPwOp<'a> {
    dw: pointwise::Depthwise<'a>,
    weight: &'a [f32],
    bias: &'a [f32],
    act: Activation,
    alpha: Option<&'a [f32]>,
}

#[cfg(target_arch = "x86_64")]
impl CustomOp2 for DwPwOp<'_> {
    fn name(&self) -> &'static str {
        "likeness-dw-pw-fused"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.dw.g;
        let m = self.bias.len();
        let x = cpu_slice(s1, l1, self.name())?;
        let r = cpu_slice(s2, l2, self.name())?;
        let (rn, rc, rh, rw) = l2.shape().dims4()?;
        let (img, p) = (g.c_in * g.h * g.w, g.oh * g.ow);
        // A pooled skip is the input itself (`run_dw` pools it); a residual has the output's size.
        let (sh, sw) = if self.dw.pool_skip { (g.h, g.w) } else { (g.oh, g.ow) };
        if x.len() != g.n * img || rn != g.n || rc > m || rh != sh || rw != sw || m * p == 0 {
            bail!("depthwise + pointwise: residual {:?} does not fit the output", l2.shape());
        }
        let len = g.n * m * p;
        let mut out: Vec<f32> = Vec::with_capacity(len);
        let Some(spare) = out.spare_capacity_mut().get_mut(..len) else { bail!("depthwise + pointwise: allocation too small") };
        for (b, y) in spare.chunks_exact_mut(m * p).enumerate() {
            let xi = x.get(b * img..(b + 1) * img).unwrap_or(&[]);
            let add = Some((r.get(b * rc * sh * sw..(b + 1) * rc * sh * sw).unwrap_or(&[]), rc));
            let post = pointwise::Post { act: self.act, add, alpha: self.alpha };
            if !pointwise::run_dw(xi, &self.dw, self.weight, self.bias, post, y) {
                bail!("depthwise + pointwise: input / weight sizes disagree");
            }
        }
        // SAFETY: `run_dw` wrote all `m * p` values of each of the `n` images.
        unsafe { out.set_len(len) };
        Ok((CpuStorage::F32(out), Shape::from((g.n, m, g.oh, g.ow))))
    }
}

impl Conv2d {
    /// Whether [`Self::forward_dw_fused`] runs as one kernel: `self` a depthwise conv (any stride)
    /// and `pw` a 1x1 conv without activation, on a CPU f32 `x`, shapes the direct kernel takes.
    pub fn fuses_with(&self, pw: &Conv2d, x: &Tensor) -> bool {
        let Ok(g) = self.geometry(x) else { return false };
        let pw_1x1 = pw.kernel == (1, 1) && pw.stride == 1 && !pw.depthwise && pw.weight.dims4().is_ok_and(|(_, i, _, _)| i == g.c_out);
        self.depthwise && self.cpu.is_some() && pw.cpu.is_some() && fast_cpu(x) && pw_1x1
            && pw.activation == Activation::Identity && Self::direct_fits(g.c_out, g.oh * g.ow)
    }

    /// `act(pw(self(x)) + residual)` for a depthwise conv `self` followed by the 1x1 conv `pw`,
    /// the residual zero-padded in channels as in [`Self::forward_fused`]. Where
    /// [`Self::fuses_with`] holds, one pass over bands of rows with the depthwise output kept
    /// in cache; otherwise the two convs one after the other.
    pub fn forward_dw_fused(&self, pw: &Conv2d, x: &Tensor, residual: Option<&Tensor>, act: FusedActivation) -> Result<Tensor> {
        #[cfg(target_arch = "x86_64")]
        if let Some(y) = self.dw_fused_op(pw, x, residual, false, act)? {
            return Ok(y);
        }
        pw.forward_fused(&self.forward(x)?, residual, act)
    }

    /// [`Self::forward_dw_fused`] with the residual the 2x2 stride-2 max pool of `x` (a
    /// stride-2 block's skip; `self` must be stride 2 with SAME padding on an even-sized `x`,
    /// where the pool and the conv outputs agree in size). Where the convs fuse, each band's
    /// skip is pooled by the thread that runs the band, next to its product: no pooled map as a
    /// layer of its own, which on two threads read rows the other core had written.
    pub fn forward_dw_fused_pooled(&self, pw: &Conv2d, x: &Tensor, act: FusedActivation) -> Result<Tensor> {
        #[cfg(target_arch = "x86_64")]
        if let Some(y) = self.dw_fused_op(pw, x, Some(x), true, act)? {
            return Ok(y);
        }
        let skip = max_pool2d(x, 2, 2, Padding::Valid)?;
        self.forward_dw_fused(pw, x, Some(&skip), act)
    }

    /// The fused kernel's answer, `None` where it does not take the shapes.
    #[cfg(target_arch = "x86_64")]
    fn dw_fused_op(&self, pw: &Conv2d, x: &Tensor, residual: Option<&Tensor>, pool_skip: bool, act: FusedActivation) -> Result<Option<Tensor>> {
        if self.fuses_with(pw, x) && residual.is_none_or(fast_cpu) {
            let alpha = match act {
                FusedActivation::Relu => None,
                FusedActivation::PRelu(p) => p.cpu.as_deref().map(|a| a.as_slice()),
            };
            if let (Some(dwc), Some(pwc), true) = (self.cpu.as_deref(), pw.cpu.as_deref(), matches!(act, FusedActivation::Relu) || alpha.is_some()) {
                let g = self.geometry(x)?;
                if pool_skip && (g.h != 2 * g.oh || g.w != 2 * g.ow) {
                    return Ok(None);
                }
                let op = DwPwOp {
                    dw: pointwise::Depthwise { weight: &dwc.weight, bias: &dwc.bias, packed: &dwc.dw_packed, act: self.activation, g, pool_skip },
                    weight: &pwc.weight,
                    bias: &pwc.bias,
                    act: if alpha.is_some() { Activation::Identity } else { Activation::Relu },
                    alpha,
                };
                let r = match residual {
                    Some(r) => r.contiguous()?,
                    None => Tensor::zeros((g.n, 0, g.oh, g.ow), DType::F32, x.device())?,
                };
                return Ok(Some(x.contiguous()?.apply_op2_no_bwd(&r, &op)?));
            }
        }
        Ok(None)
    }
}

/// Runs `f` (a small network's whole forward pass on CPU tensors) on one of rayon's pool threads
/// (this one, if it is one) with the pass's team of two engaged (see `team`) when rayon has more
/// than one thread: one hand-off per forward pass instead of one per layer, and each layer's
/// parts taken by a spinning sibling instead of a worker woken per layer. A pass that finds the
/// team held by another pass splits its layers over rayon's pool as before.
pub fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_num_threads() <= 1 {
        return f();
    }
    if rayon::current_thread_index().is_some() {
        return team::engaged(f);
    }
    rayon::scope(|_| team::engaged(f))
}

/// The logistic sigmoid `1 / (1 + exp(-x))` written over a contiguous f32 tensor.
struct SigmoidInPlace;

impl candle_core::InplaceOp1 for SigmoidInPlace {
    fn name(&self) -> &'static str {
        "likeness-sigmoid-in-place"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> Result<()> {
        let x = cpu_slice_mut(storage, layout, "sigmoid in place")?;
        let work = x.len() * 8;
        for_chunks(x, 1 << 14, work, |_, o| sigmoid_slice(o));
        Ok(())
    }
}

/// `v = 1 / (1 + exp(-v))` over `o`: 8 lanes at a time with AVX2 + FMA (a segmentation map's
/// 65k logits; libm's scalar `expf` also takes its slow error path on every logit past +-88),
/// the scalar formula for the rest.
fn sigmoid_slice(o: &mut [f32]) {
    #[allow(unused_mut)]
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU has AVX2 + FMA (checked at run time).
        done = unsafe { sigmoid_avx2(o) };
    }
    o.iter_mut().skip(done).for_each(|v| *v = 1.0 / (1.0 + (-*v).exp()));
}

/// The body of [`sigmoid_slice`]; returns how many values it wrote (whole 8-lane blocks).
/// `exp` by Cody-Waite range reduction and Cephes' degree-6 polynomial (about 1 ulp), the
/// argument clamped to where `exp` is finite and normal.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(unsafe_op_in_unsafe_fn)]
unsafe fn sigmoid_avx2(o: &mut [f32]) -> usize {
    use std::arch::x86_64::*;
    let n = o.len() / 8 * 8;
    let p = o.as_mut_ptr();
    let one = _mm256_set1_ps(1.0);
    let mut i = 0;
    // SAFETY: every load and store is of `o[i..i + 8]` with `i + 8 <= n <= o.len()`.
    while i < n {
        let x = _mm256_sub_ps(_mm256_setzero_ps(), _mm256_loadu_ps(p.add(i)));
        let x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3)), _mm256_set1_ps(88.3));
        let fx = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)));
        let r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693_359_4), x);
        let r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.121_944_4e-4), r);
        let mut y = _mm256_set1_ps(1.987_569_1e-4);
        for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 5.000_000_1e-1] {
            y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(c));
        }
        let y = _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), _mm256_add_ps(r, one));
        let pow2n = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(127))));
        let e = _mm256_mul_ps(y, pow2n);
        _mm256_storeu_ps(p.add(i), _mm256_div_ps(one, _mm256_add_ps(one, e)));
        i += 8;
    }
    n
}

/// The logistic sigmoid (candle_nn's formula), written over `x` on the CPU under the rule of
/// [`scale_add_in_place`]: only for an `x` nothing else reads afterwards, such as a network's fresh
/// output (no second map allocated). Other devices, layouts or dtypes use candle_nn's op.
pub fn sigmoid_in_place(x: Tensor) -> Result<Tensor> {
    let plain = x.layout().contiguous_offsets().is_some_and(|(start, _)| start == 0);
    if !plain || !fast_cpu(&x) {
        return candle_nn::ops::sigmoid(&x);
    }
    x.inplace_op1(&SigmoidInPlace)?;
    Ok(x)
}

#[cfg(test)]
mod sigmoid_tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn sigmoid_in_place_matches_candle() -> Result<()> {
        // Logits far past where exp overflows (+-88) too, and a length off the 8-lane blocks.
        for scale in [8.0, 60.0] {
            let x = (Tensor::randn(0f32, 1.0, (1, 3, 17, 19), &Device::Cpu)? * scale)?;
            let want = candle_nn::ops::sigmoid(&x)?;
            let got = sigmoid_in_place(x.copy()?)?;
            let err = (got - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(err < 1e-6, "sigmoid (scale {scale}): {err}");
        }
        // Relative error where the values are tiny, and the exact ends.
        let xs: Vec<f32> = (-1040..=1040).map(|i| i as f32 / 10.0).collect();
        let mut got = xs.clone();
        sigmoid_slice(&mut got);
        for (&x, &g) in xs.iter().zip(&got) {
            let want = 1.0 / (1.0 + (-(x as f64)).exp());
            let err = ((g as f64 - want) / want.max(1e-30)).abs();
            assert!(err < 2e-6 || (x < -87.0 && g < 2e-38), "sigmoid({x}) = {g}, want {want}");
        }
        Ok(())
    }
}

/// A team of two for one forward pass: the rayon worker running a small network's pass and its
/// sibling worker, which spins for the length of the pass waiting for the other half of a layer.
/// Rayon's workers sleep between jobs and take several microseconds to wake, a cost paid at each
/// of a pass's ~100 layers (most of them 0.05-2M multiply-adds, a few microseconds of work
/// each); a spinning helper picks a part up within a fraction of a microsecond. The helper is a
/// rayon job of the pass itself (not a thread of its own), so the pass never has more runnable
/// threads than rayon has workers, and nothing spins between passes. If the sibling is busy
/// (another job, a busy machine), nobody takes the posted parts and the owner runs them all:
/// a missing helper never delays a layer.
mod team {
    use std::any::Any;
    use std::cell::Cell;
    use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
    use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};
    use std::sync::Mutex;

    /// One posted job: `f(0..n)`, its lifetime erased. The poster takes parts from the front and
    /// the helper from the back until they meet, so a helper slowed down mid-layer costs at most
    /// its one part, and consecutive layers split alike give each thread the same end of the map:
    /// the rows a thread wrote are still in its own cache when the next layer reads them (parts
    /// taken in turn from one counter landed on either core at random).
    struct Slot {
        f: *const (dyn Fn(usize) + Sync + 'static),
        n: usize,
        /// The next front part (high 32 bits) and one past the next back part (low 32 bits).
        ends: AtomicU64,
        /// The helper took the slot and has finished with it.
        left: AtomicBool,
        panic: Mutex<Option<Box<dyn Any + Send>>>,
    }

    impl Slot {
        fn new(f: *const (dyn Fn(usize) + Sync + 'static), n: usize) -> Self {
            // More parts than 32 bits can count are never posted (a layer splits into at most a
            // few hundred); clamp rather than wrap.
            let n = n.min(u32::MAX as usize);
            Slot { f, n, ends: AtomicU64::new(n as u64), left: AtomicBool::new(false), panic: Mutex::new(None) }
        }

        /// The next part from the front (`back: false`) or the back, `None` when none is left.
        fn take(&self, back: bool) -> Option<usize> {
            let mut s = self.ends.load(Ordering::Acquire);
            loop {
                let (f, b) = (s >> 32, s & 0xffff_ffff);
                if f >= b {
                    return None;
                }
                let (next, part) = if back { ((f << 32) | (b - 1), b - 1) } else { (((f + 1) << 32) | b, f) };
                match self.ends.compare_exchange_weak(s, next, Ordering::AcqRel, Ordering::Acquire) {
                    Ok(_) => return Some(part as usize),
                    Err(now) => s = now,
                }
            }
        }

        /// Runs parts from one end until none is left (or one panics: the payload is kept for
        /// the poster).
        fn work(&self, back: bool) {
            // SAFETY: the poster keeps `f` and its borrows alive until the slot is taken back or
            // the helper has `left` it (see `run`).
            let f = unsafe { &*self.f };
            let r = catch_unwind(AssertUnwindSafe(|| {
                while let Some(i) = self.take(back) {
                    f(i);
                }
            }));
            if let Err(e) = r {
                // No part left for either thread.
                self.ends.store((self.n as u64) << 32, Ordering::Release);
                if let Ok(mut g) = self.panic.lock() {
                    *g = Some(e);
                }
            }
        }
    }

    /// The pass holding the team (0: none). A helper serves the pass it was started for and
    /// leaves when that pass ends.
    static PASS: AtomicU64 = AtomicU64::new(0);
    static NEXT_PASS: AtomicU64 = AtomicU64::new(1);
    /// The slot waiting for the helper (null when none); the helper swaps it out to join in,
    /// or the poster swaps it back once all parts are taken.
    static POSTED: AtomicPtr<Slot> = AtomicPtr::new(std::ptr::null_mut());

    thread_local! {
        /// This thread holds the team (it engaged it for its pass).
        static OWNER: Cell<bool> = const { Cell::new(false) };
        /// This thread is the helper: whatever it runs stays on it.
        static IS_HELPER: Cell<bool> = const { Cell::new(false) };
    }

    /// The helper's side of pass `pass`: take posted slots until the pass ends.
    fn help(pass: u64) {
        if PASS.load(Ordering::Acquire) != pass {
            // Not stolen: the owner runs this after its pass, and there is nothing left to do.
            return;
        }
        IS_HELPER.with(|h| h.set(true));
        loop {
            // Read before swapping: a spinning read-modify-write would take the mailbox's cache
            // line from the owner on every turn.
            let p = if POSTED.load(Ordering::Relaxed).is_null() { std::ptr::null_mut() } else { POSTED.swap(std::ptr::null_mut(), Ordering::AcqRel) };
            if !p.is_null() {
                // SAFETY: the poster keeps the slot alive until it sees `left` (it cannot take
                // it back: the swap above took it); the slot is not used after that.
                let slot = unsafe { &*p };
                slot.work(true);
                slot.left.store(true, Ordering::Release);
                continue;
            }
            if PASS.load(Ordering::Acquire) != pass {
                break;
            }
            std::hint::spin_loop();
        }
        IS_HELPER.with(|h| h.set(false));
    }

    /// Whether this thread holds the team (splits of its layers go to the helper).
    pub(super) fn owned() -> bool {
        OWNER.with(|o| o.get())
    }

    /// Whether this thread is the helper (it runs what it is given whole).
    pub(super) fn is_helper() -> bool {
        IS_HELPER.with(|h| h.get())
    }

    /// Runs `f` (on a rayon worker) with the team engaged when rayon has more than one thread
    /// and no other pass holds the team; else just runs `f`.
    pub(super) fn engaged<R: Send>(f: impl FnOnce() -> R + Send) -> R {
        if rayon::current_num_threads() < 2 || rayon::current_thread_index().is_none() || owned() || is_helper() {
            return f();
        }
        let pass = NEXT_PASS.fetch_add(1, Ordering::Relaxed);
        if PASS.compare_exchange(0, pass, Ordering::AcqRel, Ordering::Acquire).is_err() {
            return f();
        }
        OWNER.with(|o| o.set(true));
        let (r, ()) = rayon::join(
            || {
                let r = catch_unwind(AssertUnwindSafe(f));
                OWNER.with(|o| o.set(false));
                PASS.store(0, Ordering::Release);
                r
            },
            || help(pass),
        );
        match r {
            Ok(v) => v,
            Err(e) => resume_unwind(e),
        }
    }

    /// Runs `f(0..n)`, each part once, on this thread and (when this thread holds the team) the
    /// helper; returns when all have run, re-raising a panic of either thread.
    pub(super) fn run(n: usize, f: &(dyn Fn(usize) + Sync)) {
        if !owned() || n <= 1 {
            (0..n).for_each(f);
            return;
        }
        let f: *const (dyn Fn(usize) + Sync + '_) = f;
        // SAFETY: only the lifetime is erased; this function returns only after the slot was
        // taken back untouched or the helper has left it, so `f` outlives every use.
        let f: *const (dyn Fn(usize) + Sync + 'static) = unsafe { std::mem::transmute(f) };
        let slot = Slot::new(f, n);
        let sp = &slot as *const Slot as *mut Slot;
        // Posted only into an empty mailbox: a slot still waiting there is an outer part of this
        // pass (the heads' join around a head's layers) and must stay findable, or taking it back
        // below would fail as if the helper had it, and wait for a helper that never came.
        if POSTED.compare_exchange(std::ptr::null_mut(), sp, Ordering::AcqRel, Ordering::Acquire).is_err() {
            slot.work(false);
            if let Some(e) = slot.panic.lock().ok().and_then(|mut g| g.take()) {
                resume_unwind(e);
            }
            return;
        }
        slot.work(false);
        if POSTED.compare_exchange(sp, std::ptr::null_mut(), Ordering::AcqRel, Ordering::Acquire).is_err() {
            // The helper joined in: wait for its last part.
            let mut spins = 0u32;
            while !slot.left.load(Ordering::Acquire) {
                spins = spins.wrapping_add(1);
                if spins < 1 << 14 {
                    std::hint::spin_loop();
                } else {
                    std::thread::yield_now();
                }
            }
        }
        if let Some(e) = slot.panic.lock().ok().and_then(|mut g| g.take()) {
            resume_unwind(e);
        }
    }

    /// `(a(), b())`, `b` offered to the helper (see [`run`]).
    pub(super) fn join<A: Send, B: Send>(a: impl FnOnce() -> A + Send, b: impl FnOnce() -> B + Send) -> (A, B) {
        let (fa, fb) = (Mutex::new(Some(a)), Mutex::new(Some(b)));
        let (ra, rb) = (Mutex::new(None), Mutex::new(None));
        run(2, &|i| {
            if i == 0 {
                if let Some(a) = fa.lock().ok().and_then(|mut g| g.take()) {
                    let v = a();
                    if let Ok(mut g) = ra.lock() {
                        *g = Some(v);
                    }
                }
            } else if let Some(b) = fb.lock().ok().and_then(|mut g| g.take()) {
                let v = b();
                if let Ok(mut g) = rb.lock() {
                    *g = Some(v);
                }
            }
        });
        match (ra.into_inner().ok().flatten(), rb.into_inner().ok().flatten()) {
            (Some(a), Some(b)) => (a, b),
            // Unreachable: `run` ran both parts or re-raised their panic.
            _ => resume_unwind(Box::new("team join: a part did not run")),
        }
    }
}

/// Splits `parts` tasks `f(0..parts)` over threads: over the pass's team (two halves) when this
/// thread holds one, else on rayon's pool (this thread taking task 0 itself).
fn fork(parts: usize, f: &(dyn Fn(usize) + Sync)) {
    if parts <= 1 || team::is_helper() {
        (0..parts).for_each(f);
        return;
    }
    if team::owned() {
        team::run(parts, f);
        return;
    }
    rayon::in_place_scope(|s| {
        for t in 1..parts {
            s.spawn(move |_| f(t));
        }
        f(0);
    });
}

/// How many parts a layer of `work` multiply-adds is split into, at most `max` (its bands): two
/// over a pass's spinning team from [`TEAM_SPLIT_WORK`], one per rayon thread from `rayon_min`.
fn split_parts(work: usize, max: usize, rayon_min: usize) -> usize {
    if team::is_helper() {
        return 1;
    }
    if team::owned() {
        // Parts of at least half the threshold: small enough that the two threads finish
        // together, big enough that taking one (an atomic add) costs nothing.
        return if work >= TEAM_SPLIT_WORK { (work / (TEAM_SPLIT_WORK / 2)).clamp(2, 8).min(max).max(1) } else { 1 };
    }
    let threads = rayon::current_num_threads();
    if threads > 1 && work >= rayon_min {
        // At least one part: a caller that forks what this returns still runs its work.
        threads.min(max).max(1)
    } else {
        1
    }
}

/// Multiply-adds of a layer from which a split over the team pays (a hand-off to a spinning
/// helper costs well under a microsecond; this is a few microseconds of one core's work).
const TEAM_SPLIT_WORK: usize = 1 << 16;

/// `(a(), b())`, `b` on the pass's helper when this thread holds a team, else on rayon's pool.
pub(crate) fn join<A: Send, B: Send>(a: impl FnOnce() -> A + Send, b: impl FnOnce() -> B + Send) -> (A, B) {
    if team::owned() {
        team::join(a, b)
    } else if team::is_helper() {
        let ra = a();
        (ra, b())
    } else {
        rayon::join(a, b)
    }
}
