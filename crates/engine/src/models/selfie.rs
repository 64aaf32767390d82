//! MediaPipe selfie segmentation: person-vs-background probability for a 256x256 RGB frame.
//!
//! Provenance: the MediaPipe Selfie Segmentation model card ("Selfie Segmentation", Google, 2021)
//! and `selfie_segmentation.tflite` from npm `@mediapipe/selfie_segmentation@0.1.1675465747`
//! (Apache-2.0), converted by `tools/convert/selfie.py` (float16 weights widened to float32).
//! Tensor names keep the TFLite layer names (`conv2d_5`, `depthwise_conv2d_1`, `segment`), numbered
//! in graph order, so this port can be read side by side with the graph.
//!
//! The network is a MobileNetV3-style encoder (inverted residual blocks with ReLU or hard-swish,
//! some with squeeze-excite) down to 16x16, an LR-ASPP-like head (a 1x1 branch gated by a pooled
//! sigmoid branch), and a decoder that climbs back to 128x128 with half-pixel bilinear 2x upsampling.
//! Each decoder stage fuses a skip from the encoder through a pooled sigmoid gate and refines with a
//! 1x1 + depthwise 3x3 residual. The last layer is MediaPipe's custom `Convolution2DTransposeBias`
//! (2x2, stride 2, "SAME" = exactly twice the input) to 256x256 logits.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::nn::{
    add_scaled_in_place, global_avg_pool, resize_bilinear, scale_add_in_place, Activation, Conv2d, ConvTranspose2d,
    Padding,
};

/// The nonlinearity of an encoder block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockActivation {
    Relu,
    HardSwish,
}

impl BlockActivation {
    fn activation(self) -> Activation {
        match self {
            BlockActivation::Relu => Activation::Relu,
            BlockActivation::HardSwish => Activation::HardSwish,
        }
    }
}

/// One inverted residual block: 1x1 expansion, depthwise `kernel` x `kernel` at `stride`,
/// optional squeeze-excite, 1x1 linear projection; a residual when the shape is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSpec {
    pub expand_channels: usize,
    pub out_channels: usize,
    pub kernel: usize,
    pub stride: usize,
    /// Squeeze-excite bottleneck channels, if the block has one.
    pub se_channels: Option<usize>,
    pub activation: BlockActivation,
}

const fn block(
    expand_channels: usize,
    out_channels: usize,
    kernel: usize,
    stride: usize,
    se: usize,
    activation: BlockActivation,
) -> BlockSpec {
    BlockSpec {
        expand_channels,
        out_channels,
        kernel,
        stride,
        se_channels: if se == 0 { None } else { Some(se) },
        activation,
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Square input side in pixels.
    pub input_size: usize,
    /// Channels of the stem convolution (3x3, stride 2, hard-swish).
    pub stem_channels: usize,
    /// Encoder blocks after the stem.
    pub blocks: Vec<BlockSpec>,
    /// Channels of the head's 1x1 branch and of its pooled gate.
    pub head_channels: usize,
    /// Output channels of each decoder stage's entry projection (after each 2x upsampling), from
    /// the coarsest stage to the finest. Each stage's skip is the last encoder map at its size.
    pub decoder_channels: Vec<usize>,
}

impl Config {
    /// The released `selfie_segmentation.tflite` (general model, 256x256 input).
    pub fn selfie_segmentation_256() -> Self {
        use BlockActivation::{HardSwish as H, Relu as R};
        Self {
            input_size: 256,
            stem_channels: 16,
            blocks: vec![
                block(16, 16, 3, 2, 8, R),
                block(72, 24, 3, 2, 0, R),
                block(88, 24, 3, 1, 0, R),
                block(96, 32, 5, 2, 24, H),
                block(128, 32, 5, 1, 32, H),
                block(128, 32, 5, 1, 32, H),
                block(96, 32, 5, 1, 24, H),
                block(96, 32, 5, 1, 24, H),
            ],
            head_channels: 128,
            decoder_channels: vec![24, 16, 16],
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self::selfie_segmentation_256()
    }
}

/// Hands out TFLite's default layer names in graph order: `conv2d`, `conv2d_1`, ...
struct Names {
    conv: usize,
    depthwise: usize,
}

impl Names {
    fn numbered(base: &str, index: usize) -> String {
        if index == 0 {
            base.to_string()
        } else {
            format!("{base}_{index}")
        }
    }

    fn conv(&mut self) -> String {
        self.conv += 1;
        Self::numbered("conv2d", self.conv - 1)
    }

    fn depthwise(&mut self) -> String {
        self.depthwise += 1;
        Self::numbered("depthwise_conv2d", self.depthwise - 1)
    }
}

fn conv1x1(vb: &VarBuilder, names: &mut Names, in_c: usize, out_c: usize, act: Activation) -> Result<Conv2d> {
    Ok(Conv2d::new(vb.pp(names.conv()), in_c, out_c, 1, 1, Padding::Valid, true)?.with_activation(act))
}

/// The pooled gate shared by squeeze-excite and the decoder: global average pool -> 1x1 + ReLU ->
/// 1x1 -> sigmoid, one weight per channel.
#[derive(Debug, Clone)]
struct Gate {
    squeeze: Conv2d,
    excite: Conv2d,
}

impl Gate {
    fn new(vb: &VarBuilder, names: &mut Names, channels: usize, squeeze: usize, out: usize) -> Result<Self> {
        Ok(Self {
            squeeze: conv1x1(vb, names, channels, squeeze, Activation::Relu)?,
            excite: conv1x1(vb, names, squeeze, out, Activation::Identity)?,
        })
    }

    /// The gate of already pooled features `[n, c, 1, 1]` -> `[n, out, 1, 1]` in (0, 1).
    fn of_pooled(&self, pooled: &Tensor) -> Result<Tensor> {
        candle_nn::ops::sigmoid(&self.excite.forward(&self.squeeze.forward(pooled)?)?)
    }
}

impl Module for Gate {
    /// `[n, c, h, w]` -> `[n, out, 1, 1]` in (0, 1).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.of_pooled(&global_avg_pool(x)?)
    }
}

#[derive(Debug, Clone)]
struct InvertedResidual {
    expand: Conv2d,
    depthwise: Conv2d,
    se: Option<Gate>,
    project: Conv2d,
    residual: bool,
}

impl InvertedResidual {
    fn new(vb: &VarBuilder, names: &mut Names, in_c: usize, spec: &BlockSpec) -> Result<Self> {
        let act = spec.activation.activation();
        let e = spec.expand_channels;
        let expand = conv1x1(vb, names, in_c, e, act)?;
        let depthwise = Conv2d::depthwise(vb.pp(names.depthwise()), e, spec.kernel, spec.stride, Padding::Same, true)?
            .with_activation(act);
        let se = spec.se_channels.map(|s| Gate::new(vb, names, e, s, e)).transpose()?;
        let project = conv1x1(vb, names, e, spec.out_channels, Activation::Identity)?;
        Ok(Self { expand, depthwise, se, project, residual: spec.stride == 1 && in_c == spec.out_channels })
    }
}

impl Module for InvertedResidual {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.depthwise.forward(&self.expand.forward(x)?)?;
        let h = match &self.se {
            Some(se) => {
                let g = se.forward(&h)?;
                scale_add_in_place(h, Some(&g), None)?
            }
            None => h,
        };
        let h = self.project.forward(&h)?;
        if self.residual {
            scale_add_in_place(h, None, Some(x))
        } else {
            Ok(h)
        }
    }
}

/// LR-ASPP-style head: a 1x1 + ReLU branch scaled per channel by a pooled 1x1 + sigmoid branch.
#[derive(Debug, Clone)]
struct Head {
    features: Conv2d,
    gate: Conv2d,
}

impl Module for Head {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let f = self.features.forward(x)?;
        let g = candle_nn::ops::sigmoid(&self.gate.forward(&global_avg_pool(x)?)?)?;
        scale_add_in_place(f, Some(&g), None)
    }
}

/// One decoder stage at the skip's resolution. `up` is the coarser map, already upsampled and
/// projected to the skip's channels:
/// `x = skip * gate(skip + up) + up`, `r = relu(1x1(x))`, output `r + relu(dw3x3(r))`.
#[derive(Debug, Clone)]
struct DecoderStage {
    gate: Gate,
    refine: Conv2d,
    depthwise: Conv2d,
}

impl DecoderStage {
    fn new(vb: &VarBuilder, names: &mut Names, channels: usize) -> Result<Self> {
        let gate = Gate::new(vb, names, channels, channels, channels)?;
        let refine = conv1x1(vb, names, channels, channels, Activation::Relu)?;
        let depthwise = Conv2d::depthwise(vb.pp(names.depthwise()), channels, 3, 1, Padding::Same, true)?
            .with_activation(Activation::Relu);
        Ok(Self { gate, refine, depthwise })
    }

    /// `up` is consumed: its buffer is reused for the gated sum.
    fn forward(&self, skip: &Tensor, up: Tensor) -> Result<Tensor> {
        // mean(skip + up) = mean(skip) + mean(up): pool each instead of materialising the sum.
        let g = self.gate.of_pooled(&(global_avg_pool(skip)? + global_avg_pool(&up)?)?)?;
        let x = add_scaled_in_place(up, skip, &g)?;
        let r = self.refine.forward(&x)?;
        let d = self.depthwise.forward(&r)?;
        scale_add_in_place(d, None, Some(&r))
    }
}

/// The selfie segmentation network.
#[derive(Debug, Clone)]
pub struct SelfieSegNet {
    stem: Conv2d,
    blocks: Vec<InvertedResidual>,
    head: Head,
    /// Per decoder stage: the 1x1 projection of the coarser map (the graph applies it after the 2x
    /// upsampling; see `forward_logits`), then the stage.
    decoder: Vec<(Conv2d, DecoderStage)>,
    segment: ConvTranspose2d,
    config: Config,
}

impl SelfieSegNet {
    pub fn new(config: &Config, vb: VarBuilder) -> Result<Self> {
        let mut names = Names { conv: 0, depthwise: 0 };
        let stem = Conv2d::new(vb.pp(names.conv()), 3, config.stem_channels, 3, 2, Padding::Same, true)?
            .with_activation(Activation::HardSwish);
        // Channels of every encoder output in order (the stem first), for the decoder's skips.
        let mut channels = vec![config.stem_channels];
        let mut blocks = Vec::with_capacity(config.blocks.len());
        for spec in &config.blocks {
            let in_c = channels.last().copied().unwrap_or(config.stem_channels);
            blocks.push(InvertedResidual::new(&vb, &mut names, in_c, spec)?);
            channels.push(spec.out_channels);
        }
        let enc_c = channels.last().copied().unwrap_or(config.stem_channels);
        let head = Head {
            features: conv1x1(&vb, &mut names, enc_c, config.head_channels, Activation::Relu)?,
            gate: conv1x1(&vb, &mut names, enc_c, config.head_channels, Activation::Identity)?,
        };
        let mut decoder = Vec::with_capacity(config.decoder_channels.len());
        let mut c = config.head_channels;
        for &out_c in &config.decoder_channels {
            let project = conv1x1(&vb, &mut names, c, out_c, Activation::Identity)?;
            let stage = DecoderStage::new(&vb, &mut names, out_c)?;
            decoder.push((project, stage));
            c = out_c;
        }
        let segment = ConvTranspose2d::new(vb.pp("segment"), c, 1, 2, 2)?;
        Ok(Self { stem, blocks, head, decoder, segment, config: config.clone() })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// `x`: `[n, 3, 256, 256]` RGB in [0, 1]. Returns the person logits `[n, 1, 256, 256]`.
    pub fn forward_logits(&self, x: &Tensor) -> Result<Tensor> {
        if x.device().is_cpu() {
            return crate::nn::on_pool(|| self.logits_here(x));
        }
        self.logits_here(x)
    }

    fn logits_here(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = self.stem.forward(x)?;
        let mut features = vec![h.clone()];
        for block in &self.blocks {
            h = block.forward(&h)?;
            features.push(h.clone());
        }
        let mut h = self.head.forward(&h)?;
        for (project, stage) in &self.decoder {
            let (_, _, fh, fw) = h.dims4()?;
            let (th, tw) = (fh * 2, fw * 2);
            // The skip is the last (deepest) encoder map at the stage's resolution.
            let skip = features
                .iter()
                .rev()
                .find(|f| f.dims4().map(|(_, _, sh, sw)| sh == th && sw == tw).unwrap_or(false))
                .ok_or_else(|| candle_core::Error::Msg(format!("selfie decoder: no encoder map at {th}x{tw}")))?;
            // The graph upsamples, then projects; a 1x1 convolution commutes with bilinear
            // resizing (its weights sum to one), so projecting first does the same math on a
            // quarter of the pixels (and, for the head, a fifth of the channels).
            let up = resize_bilinear(&project.forward(&h)?, th, tw)?;
            h = stage.forward(skip, up)?;
        }
        self.segment.forward(&h)
    }

    /// `x`: `[n, 3, 256, 256]` RGB in [0, 1]. Returns person probabilities `[n, 1, 256, 256]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // The logits are this call's own fresh map: the sigmoid goes over them in place.
        crate::nn::sigmoid_in_place(self.forward_logits(x)?)
    }
}
