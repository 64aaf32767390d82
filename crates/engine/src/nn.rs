//! Building blocks shared by the ported vision models (BlazeFace, face mesh, selfie segmentation):
//! convolutions with TensorFlow / ONNX padding rules, depthwise convolutions, transposed
//! convolutions, PReLU, hard-swish and pooling. All tensors are NCHW f32.
//!
//! Weight layout in our safetensors files (made by `tools/convert_models.py`):
//! * `weight`: `[out, in, kh, kw]` (depthwise: `[channels, 1, kh, kw]`; transposed: `[in, out, kh, kw]`)
//! * `bias`: `[out]`; PReLU `alpha`: `[channels]`.

use candle_core::{Module, Result, Tensor, D};
use candle_nn::VarBuilder;

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
                let out = input.div_ceil(stride);
                let total = ((out - 1) * stride + kernel).saturating_sub(input);
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

/// A 2-D convolution, dense or depthwise, with bias.
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    stride: usize,
    padding: Padding,
    depthwise: bool,
    kernel: (usize, usize),
}

impl Conv2d {
    /// Dense convolution; `vb` holds `weight` `[out, in, k, k]` and (if `bias`) `bias` `[out]`.
    pub fn new(vb: VarBuilder, in_c: usize, out_c: usize, k: usize, stride: usize, padding: Padding, bias: bool) -> Result<Self> {
        let weight = vb.get((out_c, in_c, k, k), "weight")?;
        let bias = if bias { Some(vb.get(out_c, "bias")?) } else { None };
        Ok(Self { weight, bias, stride, padding, depthwise: false, kernel: (k, k) })
    }

    /// Depthwise convolution (one filter per channel); `weight` is `[c, 1, k, k]`.
    pub fn depthwise(vb: VarBuilder, channels: usize, k: usize, stride: usize, padding: Padding, bias: bool) -> Result<Self> {
        let weight = vb.get((channels, 1, k, k), "weight")?;
        let bias = if bias { Some(vb.get(channels, "bias")?) } else { None };
        Ok(Self { weight, bias, stride, padding, depthwise: true, kernel: (k, k) })
    }

    /// Builds from tensors already in hand (tests, fused layers).
    pub fn from_tensors(weight: Tensor, bias: Option<Tensor>, stride: usize, padding: Padding, depthwise: bool) -> Result<Self> {
        let (_, _, kh, kw) = weight.dims4()?;
        Ok(Self { weight, bias, stride, padding, depthwise, kernel: (kh, kw) })
    }

    pub fn out_channels(&self) -> usize {
        self.weight.dim(0).unwrap_or(0)
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, c, h, w) = x.dims4()?;
        let (t, b, l, r) = self.padding.pads(h, w, self.kernel.0, self.kernel.1, self.stride);
        let x = pad2d(x, t, b, l, r)?;
        let groups = if self.depthwise { c } else { 1 };
        let y = x.conv2d(&self.weight, 0, self.stride, 1, groups)?;
        match &self.bias {
            Some(bias) => y.broadcast_add(&bias.reshape((1, (), 1, 1))?),
            None => Ok(y),
        }
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
}

impl ConvTranspose2d {
    /// `weight` `[in, out, k, k]`, `bias` `[out]`.
    pub fn new(vb: VarBuilder, in_c: usize, out_c: usize, k: usize, stride: usize) -> Result<Self> {
        let weight = vb.get((in_c, out_c, k, k), "weight")?;
        let bias = vb.get(out_c, "bias")?;
        Ok(Self { weight, bias, stride, kernel: k })
    }
}

impl Module for ConvTranspose2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
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
        let _ = self.kernel;
        y.broadcast_add(&self.bias.reshape((1, (), 1, 1))?)
    }
}

/// PReLU with one slope per channel: `max(x, 0) + alpha * min(x, 0)`.
#[derive(Debug, Clone)]
pub struct PRelu {
    alpha: Tensor,
}

impl PRelu {
    /// `vb` holds `alpha` `[channels]`.
    pub fn new(vb: VarBuilder, channels: usize) -> Result<Self> {
        Ok(Self { alpha: vb.get(channels, "alpha")?.reshape((1, channels, 1, 1))? })
    }
}

impl Module for PRelu {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let pos = x.relu()?;
        let neg = x.minimum(0f32)?.broadcast_mul(&self.alpha)?;
        pos + neg
    }
}

/// Hard swish: `x * relu6(x + 3) / 6`.
pub fn hard_swish(x: &Tensor) -> Result<Tensor> {
    let gate = ((x + 3.0)?.clamp(0f32, 6f32)? / 6.0)?;
    x * gate
}

/// Max pooling with TensorFlow "SAME" or "VALID" padding (padding never wins the max).
pub fn max_pool2d(x: &Tensor, k: usize, stride: usize, padding: Padding) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let (t, b, l, r) = padding.pads(h, w, k, k, stride);
    // Edge replication is exact for max pooling: every window that overlaps the padding also
    // contains the replicated edge pixel itself, so padding never changes a maximum.
    let x = if t + b > 0 { x.pad_with_same(2, t, b)? } else { x.clone() };
    let x = if l + r > 0 { x.pad_with_same(3, l, r)? } else { x };
    x.max_pool2d_with_stride(k, stride)
}

/// Global average pool over the spatial axes: `[n, c, h, w]` -> `[n, c, 1, 1]`.
pub fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    x.mean_keepdim(D::Minus1)?.mean_keepdim(D::Minus2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

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
