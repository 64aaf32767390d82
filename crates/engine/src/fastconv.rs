//! A fast 3x3, stride-1, zero-padded ("same") dense convolution for f32 NCHW tensors on the CPU,
//! with the bias and an optional LeakyReLU / PReLU fused into its output pass. It carries the big
//! models (RRDBNet, SRVGGNetCompact, GFPGAN), where im2col + `gemm` reached a third of the speed of
//! oneDNN's direct convolution.
//!
//! # How
//! A direct convolution, no im2col matrix. The weights are packed once as
//! `[out / 4][in][ky*3+kx][4]` (output channels padded with zeros to a multiple of 4). One micro-kernel
//! call computes 4 output channels x up to 24 pixels of one output row (12 AVX2 registers of
//! accumulators, the pixels in the vector lanes, so results store straight into NCHW): for each input
//! channel and each of the 9 taps it loads the (shifted) input row segment once and multiplies it by
//! 4 broadcast weights. Input channels go in chunks of [`CI_CHUNK`] so that a strip's input rows stay
//! in L1 while every output-channel block reads them.
//!
//! Padding is never materialised for the whole tensor: each task (one image, [`band_rows`] output
//! rows) copies the rows it needs, with a zero border, into a per-thread buffer of
//! `in_c * (rows + 2) * width` floats; the input may be given as several tensors whose channels are
//! concatenated (RRDBNet's dense blocks) and may be read nearest-x2 upsampled (its up-convolutions),
//! so neither the concatenation nor the upsampled tensor is ever built. Memory beyond input and output
//! is therefore a few MB per thread whatever the image size.
//!
//! The AVX2 + FMA kernel is chosen at run time (installers never assume `target-cpu=native`); other
//! CPUs run a portable kernel with the same blocking. Tensors on CUDA / Metal, or of another dtype,
//! take candle's `conv2d` and ops. Threads: rayon's global pool, one task per row band.

use std::cell::RefCell;
use std::sync::Arc;

use candle_core::{bail, DType, Module, Result, Storage, Tensor};
use candle_nn::VarBuilder;
use rayon::prelude::*;

/// Output channels per micro-kernel call (weights broadcast from the packed block).
const OCB: usize = 4;
/// Most output pixels of one row per micro-kernel call (three 8-float vectors); the tile buffer's pitch.
const STRIP: usize = 24;
/// Input channels accumulated per micro-kernel call (about 10 KB of input rows per strip).
const CI_CHUNK: usize = 32;
/// Largest per-thread band buffer, in floats (16 MB); bands get fewer rows to stay under it.
const BAND_FLOATS: usize = 4 << 20;

/// What follows the convolution and its bias, in the same pass.
#[derive(Debug, Clone)]
pub enum Activation {
    Identity,
    /// `x` if `x > 0`, else `slope * x` (LeakyReLU).
    LeakyRelu(f32),
    /// Per-output-channel slopes `[out]` (PyTorch's `nn.PReLU(out)` weight).
    PRelu(Tensor),
}

/// Weights, bias and slopes packed for the CPU kernels.
#[derive(Debug)]
struct Packed {
    in_c: usize,
    out_c: usize,
    /// `[blocks][in_c][9][OCB]`.
    w: Vec<f32>,
    /// `[blocks * OCB]`, zero where padded.
    bias: Vec<f32>,
    /// Negative-side slopes `[blocks * OCB]`, or `None` for no activation.
    slope: Option<Vec<f32>>,
}

impl Packed {
    fn new(weight: &Tensor, bias: Option<&Tensor>, act: &Activation) -> Result<Self> {
        let (out_c, in_c, _, _) = weight.dims4()?;
        let blocks = out_c.div_ceil(OCB);
        let src = weight.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let mut w = vec![0f32; blocks * in_c * 9 * OCB];
        for (i, v) in src.iter().enumerate() {
            let (o, rest) = (i / (in_c * 9), i % (in_c * 9));
            let (ci, t) = (rest / 9, rest % 9);
            let at = (((o / OCB) * in_c + ci) * 9 + t) * OCB + o % OCB;
            if let Some(d) = w.get_mut(at) {
                *d = *v;
            }
        }
        let padded = |v: Vec<f32>, what: &str| -> Result<Vec<f32>> {
            if v.len() != out_c {
                bail!("3x3 conv: {what} has {} values, expected {out_c}", v.len());
            }
            let mut p = v;
            p.resize(blocks * OCB, 0.0);
            Ok(p)
        };
        let bias = match bias {
            Some(b) => padded(b.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?, "bias")?,
            None => vec![0.0; blocks * OCB],
        };
        let slope = match act {
            Activation::Identity => None,
            Activation::LeakyRelu(s) => Some(vec![*s; blocks * OCB]),
            Activation::PRelu(a) => Some(padded(a.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?, "PReLU slope")?),
        };
        Ok(Self { in_c, out_c, w, bias, slope })
    }
}

/// A 3x3, stride 1, padding 1 convolution with bias and a fused activation.
#[derive(Debug, Clone)]
pub struct Conv3x3 {
    weight: Tensor,
    bias: Option<Tensor>,
    act: Activation,
    /// `None` when the weights live on an accelerator.
    cpu: Option<Arc<Packed>>,
}

impl Conv3x3 {
    /// `vb` holds `weight` `[out, in, 3, 3]` and (if `bias`) `bias` `[out]`.
    pub fn new(vb: VarBuilder, in_c: usize, out_c: usize, bias: bool, act: Activation) -> Result<Self> {
        let weight = vb.get((out_c, in_c, 3, 3), "weight")?;
        let bias = if bias { Some(vb.get(out_c, "bias")?) } else { None };
        Self::from_tensors(weight, bias, act)
    }

    /// Builds from tensors in hand (per-sample weights such as StyleGAN2's modulated convs).
    pub fn from_tensors(weight: Tensor, bias: Option<Tensor>, act: Activation) -> Result<Self> {
        let (out_c, in_c, kh, kw) = weight.dims4()?;
        if (kh, kw) != (3, 3) || in_c == 0 || out_c == 0 {
            bail!("3x3 conv: weight must be [out, in, 3, 3] with out, in > 0, got {:?}", weight.dims());
        }
        let cpu = if weight.device().is_cpu() { Some(Arc::new(Packed::new(&weight, bias.as_ref(), &act)?)) } else { None };
        Ok(Self { weight, bias, act, cpu })
    }

    pub fn out_channels(&self) -> usize {
        self.weight.dim(0).unwrap_or(0)
    }

    /// The convolution of the channel concatenation of `xs` (all `[n, c_i, h, w]`), without
    /// building that concatenation on the CPU.
    pub fn forward_cat(&self, xs: &[&Tensor]) -> Result<Tensor> {
        self.run(xs, false)
    }

    /// The convolution of `x` upsampled x2 by nearest neighbour (PyTorch `interpolate(scale_factor=2)`),
    /// without building the upsampled tensor on the CPU.
    pub fn forward_up2(&self, x: &Tensor) -> Result<Tensor> {
        self.run(&[x], true)
    }

    fn run(&self, xs: &[&Tensor], up2: bool) -> Result<Tensor> {
        let Some(first) = xs.first() else { bail!("3x3 conv: no input") };
        let (n, _, h0, w0) = first.dims4()?;
        let mut c_total = 0;
        for x in xs {
            let (xn, c, xh, xw) = x.dims4()?;
            if (xn, xh, xw) != (n, h0, w0) {
                bail!("3x3 conv: inputs disagree in batch or size ({:?} vs {:?})", x.dims(), first.dims());
            }
            c_total += c;
        }
        if c_total != self.weight.dim(1)? {
            bail!("3x3 conv: input has {c_total} channels, the layer expects {}", self.weight.dim(1)?);
        }
        let fast = self.cpu.as_ref().filter(|_| xs.iter().all(|x| x.device().is_cpu() && x.dtype() == DType::F32));
        let Some(packed) = fast else {
            let x = if xs.len() == 1 { (*first).clone() } else { Tensor::cat(xs, 1)? };
            let x = if up2 { x.upsample_nearest2d(2 * h0, 2 * w0)? } else { x };
            return self.forward_candle(&x);
        };
        let (h, w) = if up2 { (2 * h0, 2 * w0) } else { (h0, w0) };
        let owned: Vec<Tensor> = xs.iter().map(|x| x.contiguous()).collect::<Result<_>>()?;
        let guards: Vec<_> = owned.iter().map(|t| t.storage_and_layout()).collect();
        let mut srcs: Vec<Src> = Vec::with_capacity(guards.len());
        for (t, (storage, layout)) in owned.iter().zip(&guards) {
            let Storage::Cpu(cpu) = &**storage else { bail!("3x3 conv: expected a CPU tensor") };
            let data = crate::nn::cpu_slice(cpu, layout, "3x3 conv")?;
            srcs.push(Src { data, c: t.dim(1)? });
        }
        let out = conv_cpu(packed, &srcs, Geom { n, h, w, up2 });
        drop(guards);
        Tensor::from_vec(out, (n, packed.out_c, h, w), first.device())
    }

    /// candle's own ops on `x` (the path for accelerators; the reference in tests and benches).
    pub fn forward_candle(&self, x: &Tensor) -> Result<Tensor> {
        let y = x.conv2d(&self.weight, 1, 1, 1, 1)?;
        let y = match &self.bias {
            Some(b) => y.broadcast_add(&b.reshape((1, (), 1, 1))?)?,
            None => y,
        };
        let slopes = match &self.act {
            Activation::Identity => return Ok(y),
            Activation::LeakyRelu(s) => Tensor::full(*s, self.out_channels(), y.device())?.to_dtype(y.dtype())?,
            Activation::PRelu(a) => a.to_dtype(y.dtype())?,
        };
        let pos = y.relu()?;
        pos.clone() + (y - pos)?.broadcast_mul(&slopes.reshape((1, (), 1, 1))?)?
    }
}

impl Module for Conv3x3 {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.run(&[x], false)
    }
}

/// One input tensor's data (`[n, c, h, w]`, contiguous).
struct Src<'a> {
    data: &'a [f32],
    c: usize,
}

/// Output geometry; with `up2` the inputs are `h/2 x w/2`.
#[derive(Clone, Copy)]
struct Geom {
    n: usize,
    h: usize,
    w: usize,
    up2: bool,
}

/// Output rows per task: enough tasks to balance the threads, a band buffer under [`BAND_FLOATS`].
fn band_rows(h: usize, n: usize, in_c: usize, wp: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    let want_tasks = 4 * threads;
    let balanced = (h * n).div_ceil(want_tasks).max(1);
    let fits = (BAND_FLOATS / (in_c * wp).max(1)).saturating_sub(2).max(1);
    balanced.min(8).min(fits).clamp(1, h.max(1))
}

thread_local! {
    /// Band buffer, reused across calls on the same thread.
    static BAND: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

fn with_band<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    crate::nn::with_buffer(&BAND, len, f)
}

/// The output pointer shared by the tasks; each writes only its own rows.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint output rows (one band of one image each), and the buffer outlives them.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// A method, so closures capture the whole (Sync) wrapper rather than its raw field.
    fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

fn conv_cpu(p: &Packed, srcs: &[Src], g: Geom) -> Vec<f32> {
    let Geom { n, h, w, .. } = g;
    let plane = h * w;
    let mut out = vec![0f32; n * p.out_c * plane];
    if plane == 0 || n == 0 {
        return out;
    }
    // Row pitch: the image at columns 1..=w, zeros around, room for the last strip's full vectors.
    let wp = w.next_multiple_of(8) + 8;
    let rows = band_rows(h, n, p.in_c, wp);
    let bands = h.div_ceil(rows);
    let ptr = OutPtr(out.as_mut_ptr());
    let task = |t: usize| {
        let (b, y0) = (t / bands, (t % bands) * rows);
        let nr = rows.min(h - y0);
        let rp = nr + 2;
        with_band(p.in_c * rp * wp, |buf| {
            fill_band(buf, srcs, g, b, y0, rp, wp);
            // SAFETY: this task's output rows (image b, rows y0..y0+nr) are written by no other task.
            unsafe { band_compute(p, buf, rp, wp, w, nr, ptr.at(b * p.out_c * plane + y0 * w), plane) };
        });
    };
    let tasks = n * bands;
    if tasks > 1 && rayon::current_num_threads() > 1 && p.in_c * p.out_c * plane >= 1 << 16 {
        (0..tasks).into_par_iter().for_each(task);
    } else {
        (0..tasks).for_each(task);
    }
    out
}

/// Copies input rows `y0-1 .. y0-1+rp` of image `b` (all channels, concatenated) into `buf`
/// (`[in_c][rp][wp]`, image columns at 1..=w), zeros outside the image.
fn fill_band(buf: &mut [f32], srcs: &[Src], g: Geom, b: usize, y0: usize, rp: usize, wp: usize) {
    buf.fill(0.0);
    let (sh, sw) = if g.up2 { (g.h / 2, g.w / 2) } else { (g.h, g.w) };
    let mut chans = buf.chunks_exact_mut(rp * wp);
    for src in srcs {
        let img = src.data.get(b * src.c * sh * sw..(b + 1) * src.c * sh * sw).unwrap_or(&[]);
        for splane in img.chunks_exact((sh * sw).max(1)).take(src.c) {
            let Some(dplane) = chans.next() else { return };
            for (r, drow) in dplane.chunks_exact_mut(wp).enumerate() {
                let Some(iy) = (y0 + r).checked_sub(1).filter(|&y| y < g.h) else { continue };
                let sy = if g.up2 { iy / 2 } else { iy };
                let Some(srow) = splane.get(sy * sw..(sy + 1) * sw) else { continue };
                let Some(d) = drow.get_mut(1..1 + g.w) else { continue };
                if g.up2 {
                    d.chunks_exact_mut(2).zip(srow).for_each(|(d, &v)| d.fill(v));
                } else {
                    d.copy_from_slice(srow);
                }
            }
        }
    }
}

/// One micro-kernel call: `OCB` output channels x `8 * V` pixels of one row.
struct Call {
    /// Input at (first channel of the chunk, padded row of the output row, column x0).
    inp: *const f32,
    /// Floats between input channels / rows.
    cs: usize,
    rs: usize,
    nci: usize,
    /// Packed weights at (block, first channel of the chunk).
    w: *const f32,
    /// Output at (first channel of the block, row, x0) and its channel stride.
    dst: *mut f32,
    ds: usize,
    bias: *const f32,
    /// Slopes of the block, or null for no activation (only read on the last chunk).
    slope: *const f32,
    first: bool,
    last: bool,
}

/// Runs every micro-kernel of one band. `out` points at the band's first output row of channel 0.
///
/// # Safety
/// `buf` is `[in_c][rp][wp]` as filled by [`fill_band`], and `out + o * plane + y * w + x` is
/// writable for every channel `o < out_c`, row `y < nr`, column `x < w`.
#[allow(clippy::too_many_arguments)]
unsafe fn band_compute(p: &Packed, buf: &[f32], rp: usize, wp: usize, w: usize, nr: usize, out: *mut f32, plane: usize) {
    let blocks = p.out_c.div_ceil(OCB);
    let mut tile = [0f32; OCB * STRIP];
    for y in 0..nr {
        let mut x0 = 0;
        while x0 < w {
            // Strips of 3 vectors, ending with 2 + 2 or 2 rather than a 1-vector strip (4 accumulators
            // are too few to hide the FMA latency).
            let nv = match (w - x0).div_ceil(8) {
                1 => 1,
                2 | 4 => 2,
                _ => 3,
            };
            let valid = (8 * nv).min(w - x0);
            let mut ci0 = 0;
            while ci0 < p.in_c {
                let nci = CI_CHUNK.min(p.in_c - ci0);
                let (first, last) = (ci0 == 0, ci0 + nci == p.in_c);
                for blk in 0..blocks {
                    let oc0 = blk * OCB;
                    let valid_oc = OCB.min(p.out_c - oc0);
                    let direct = valid == 8 * nv && valid_oc == OCB;
                    // SAFETY (all pointer arithmetic below): indices stay inside `buf`, `p.w`, `p.bias`,
                    // `p.slope`, `tile` and the output rows the caller gave (see the function's contract).
                    let o_at = unsafe { out.add(oc0 * plane + y * w + x0) };
                    let (dst, ds) = if direct { (o_at, plane) } else { (tile.as_mut_ptr(), STRIP) };
                    if !direct && !first {
                        for o in 0..valid_oc {
                            for x in 0..valid {
                                tile[o * STRIP + x] = unsafe { *o_at.add(o * plane + x) };
                            }
                        }
                    }
                    let call = Call {
                        inp: unsafe { buf.as_ptr().add(ci0 * rp * wp + y * wp + x0) },
                        cs: rp * wp,
                        rs: wp,
                        nci,
                        w: unsafe { p.w.as_ptr().add((blk * p.in_c + ci0) * 9 * OCB) },
                        dst,
                        ds,
                        bias: unsafe { p.bias.as_ptr().add(oc0) },
                        slope: p.slope.as_ref().map_or(std::ptr::null(), |s| unsafe { s.as_ptr().add(oc0) }),
                        first,
                        last,
                    };
                    unsafe { kernel(&call, nv) };
                    if !direct {
                        for o in 0..valid_oc {
                            for x in 0..valid {
                                unsafe { *o_at.add(o * plane + x) = tile[o * STRIP + x] };
                            }
                        }
                    }
                }
                ci0 += nci;
            }
            x0 += valid;
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn has_avx2_fma() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    #[cfg(test)]
    if tests::PORTABLE_ONLY.load(std::sync::atomic::Ordering::Relaxed) {
        return false;
    }
    *HAS.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
}

/// # Safety
/// The pointers of `c` cover what [`Call`] describes for `nv` vectors (`nv` in 1..=3).
unsafe fn kernel(c: &Call, nv: usize) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA; the pointers are the caller's contract.
        unsafe {
            match nv {
                1 => kernel_avx2::<1>(c),
                2 => kernel_avx2::<2>(c),
                _ => kernel_avx2::<3>(c),
            }
        }
        return;
    }
    // SAFETY: as above.
    unsafe {
        match nv {
            1 => kernel_portable::<1>(c),
            2 => kernel_portable::<2>(c),
            _ => kernel_portable::<3>(c),
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn kernel_avx2<const V: usize>(c: &Call) {
    use std::arch::x86_64::*;
    // SAFETY: the caller's contract (see `kernel`).
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); V]; OCB];
        for (o, acc) in acc.iter_mut().enumerate() {
            for (v, a) in acc.iter_mut().enumerate() {
                *a = if c.first { _mm256_broadcast_ss(&*c.bias.add(o)) } else { _mm256_loadu_ps(c.dst.add(o * c.ds + 8 * v)) };
            }
        }
        let mut wp = c.w;
        for ci in 0..c.nci {
            let chan = c.inp.add(ci * c.cs);
            for ky in 0..3 {
                let row = chan.add(ky * c.rs);
                for kx in 0..3 {
                    let mut xv = [_mm256_setzero_ps(); V];
                    for (v, x) in xv.iter_mut().enumerate() {
                        *x = _mm256_loadu_ps(row.add(kx + 8 * v));
                    }
                    for (o, acc) in acc.iter_mut().enumerate() {
                        let wv = _mm256_broadcast_ss(&*wp.add(o));
                        for (a, x) in acc.iter_mut().zip(&xv) {
                            *a = _mm256_fmadd_ps(*x, wv, *a);
                        }
                    }
                    wp = wp.add(OCB);
                }
            }
        }
        let act = c.last && !c.slope.is_null();
        let zero = _mm256_setzero_ps();
        for (o, acc) in acc.iter().enumerate() {
            let s = if act { _mm256_broadcast_ss(&*c.slope.add(o)) } else { zero };
            for (v, a) in acc.iter().enumerate() {
                let y = if act { _mm256_fmadd_ps(_mm256_min_ps(*a, zero), s, _mm256_max_ps(*a, zero)) } else { *a };
                _mm256_storeu_ps(c.dst.add(o * c.ds + 8 * v), y);
            }
        }
    }
}

/// The same blocking in plain Rust (other CPUs; LLVM vectorises the 8-wide inner loops).
unsafe fn kernel_portable<const V: usize>(c: &Call) {
    // SAFETY: the caller's contract (see `kernel`).
    unsafe {
        let mut acc = [[[0f32; 8]; V]; OCB];
        for (o, acc) in acc.iter_mut().enumerate() {
            for (v, a) in acc.iter_mut().enumerate() {
                for (l, a) in a.iter_mut().enumerate() {
                    *a = if c.first { *c.bias.add(o) } else { *c.dst.add(o * c.ds + 8 * v + l) };
                }
            }
        }
        let mut wp = c.w;
        for ci in 0..c.nci {
            let chan = c.inp.add(ci * c.cs);
            for ky in 0..3 {
                let row = chan.add(ky * c.rs);
                for kx in 0..3 {
                    let mut xv = [[0f32; 8]; V];
                    for (v, x) in xv.iter_mut().enumerate() {
                        for (l, x) in x.iter_mut().enumerate() {
                            *x = *row.add(kx + 8 * v + l);
                        }
                    }
                    for (o, acc) in acc.iter_mut().enumerate() {
                        let wv = *wp.add(o);
                        for (a, x) in acc.iter_mut().zip(&xv) {
                            for (a, x) in a.iter_mut().zip(x) {
                                *a = x.mul_add(wv, *a);
                            }
                        }
                    }
                    wp = wp.add(OCB);
                }
            }
        }
        let act = c.last && !c.slope.is_null();
        for (o, acc) in acc.iter().enumerate() {
            let s = if act { *c.slope.add(o) } else { 1.0 };
            for (v, a) in acc.iter().enumerate() {
                for (l, &y) in a.iter().enumerate() {
                    *c.dst.add(o * c.ds + 8 * v + l) = if y < 0.0 { s * y } else { y };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Makes the x86 build take the portable kernel (what aarch64 runs); results are the same either way.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(super) static PORTABLE_ONLY: AtomicBool = AtomicBool::new(false);

    /// Plain f64 reference: zero padding 1, bias, activation by per-channel slope.
    #[allow(clippy::too_many_arguments)]
    fn naive(x: &[f32], n: usize, c: usize, h: usize, w: usize, wt: &[f32], bias: &[f32], out_c: usize, slope: Option<&[f32]>) -> Vec<f32> {
        let mut y = vec![0f32; n * out_c * h * w];
        for b in 0..n {
            for o in 0..out_c {
                for oy in 0..h {
                    for ox in 0..w {
                        let mut s = bias[o] as f64;
                        for ci in 0..c {
                            for ky in 0..3 {
                                for kx in 0..3 {
                                    let (iy, ix) = (oy as isize + ky as isize - 1, ox as isize + kx as isize - 1);
                                    if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                        continue;
                                    }
                                    let xv = x[((b * c + ci) * h + iy as usize) * w + ix as usize] as f64;
                                    s += xv * wt[((o * c + ci) * 3 + ky) * 3 + kx] as f64;
                                }
                            }
                        }
                        if let Some(sl) = slope {
                            if s < 0.0 {
                                s *= sl[o] as f64;
                            }
                        }
                        y[((b * out_c + o) * h + oy) * w + ox] = s as f32;
                    }
                }
            }
        }
        y
    }

    fn max_rel(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
    }

    fn check(n: usize, c: usize, h: usize, w: usize, out_c: usize, act: u8) {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (n, c, h, w), &dev).unwrap();
        let wt = Tensor::randn(0f32, 0.3, (out_c, c, 3, 3), &dev).unwrap();
        let bias = Tensor::randn(0f32, 0.5, out_c, &dev).unwrap();
        let slopes = Tensor::rand(-0.5f32, 0.8, out_c, &dev).unwrap();
        let (activation, sl) = match act {
            0 => (Activation::Identity, None),
            1 => (Activation::LeakyRelu(0.2), Some(vec![0.2f32; out_c])),
            _ => (Activation::PRelu(slopes.clone()), Some(slopes.to_vec1::<f32>().unwrap())),
        };
        let conv = Conv3x3::from_tensors(wt.clone(), Some(bias.clone()), activation).unwrap();
        let y = conv.forward(&x).unwrap();
        assert_eq!(y.dims(), &[n, out_c, h, w]);
        let xs = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let want = naive(&xs, n, c, h, w, &wt.flatten_all().unwrap().to_vec1().unwrap(), &bias.to_vec1().unwrap(), out_c, sl.as_deref());
        let got = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let e = max_rel(&got, &want);
        assert!(e < 1e-5, "n{n} c{c} {h}x{w} out{out_c} act{act}: rel err {e}");
        // candle's path (accelerators) computes the same.
        let cand = conv.forward_candle(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let e = max_rel(&cand, &want);
        assert!(e < 1e-5, "candle path: rel err {e}");
    }

    #[test]
    fn matches_naive_reference_on_odd_shapes() {
        check(1, 3, 5, 7, 5, 0);
        check(2, 13, 9, 17, 9, 1);
        check(2, 33, 6, 31, 7, 2);
        check(1, 40, 11, 49, 33, 1);
        check(1, 1, 1, 1, 1, 2);
        check(1, 70, 4, 24, 12, 0);
        check(2, 8, 20, 3, 4, 1);
    }

    #[test]
    fn portable_kernel_matches_naive_reference() {
        PORTABLE_ONLY.store(true, Ordering::Relaxed);
        check(2, 13, 9, 17, 9, 1);
        check(1, 40, 5, 49, 33, 2);
        check(1, 3, 4, 6, 4, 0);
        PORTABLE_ONLY.store(false, Ordering::Relaxed);
    }

    #[test]
    fn concatenated_and_upsampled_inputs_match_explicit_ones() {
        let dev = Device::Cpu;
        let a = Tensor::randn(0f32, 1.0, (2, 5, 7, 11), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, (2, 36, 7, 11), &dev).unwrap();
        let wt = Tensor::randn(0f32, 0.2, (6, 41, 3, 3), &dev).unwrap();
        let conv = Conv3x3::from_tensors(wt, None, Activation::LeakyRelu(0.2)).unwrap();
        let cat = Tensor::cat(&[&a, &b], 1).unwrap();
        let want = conv.forward_candle(&cat).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let got = conv.forward_cat(&[&a, &b]).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(max_rel(&got, &want) < 1e-5);
        let up = cat.upsample_nearest2d(14, 22).unwrap();
        let want = conv.forward_candle(&up).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let got = conv.forward_up2(&cat).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(max_rel(&got, &want) < 1e-5);
        // A channel count the weight does not take is an error, not a panic.
        assert!(conv.forward(&a).is_err());
    }
}
