//! SRVGGNetCompact: Real-ESRGAN's small photo upscaler (`realesr-general-x4v3.pth`).
//!
//! From Wang et al., Real-ESRGAN (ICCV 2021 workshops); architecture as in
//! `realesrgan/archs/srvgg_arch.py` (BSD-3-Clause, xinntao/Real-ESRGAN). Our own code. The user
//! imports the `.pth` (it is not in any package registry); its bytes are read by `crate::pth`:
//! a PyTorch zip checkpoint whose `params` (or top-level) dict holds the state.
//!
//! `body.0` conv 3 -> F, `body.1` PReLU, then `num_conv` x (conv F -> F, PReLU), a last conv
//! F -> 3 * s * s, pixel shuffle by s, plus the nearest-upsampled input (the net learns a residual).
//! The configuration is read from the checkpoint's own shapes.

use std::collections::HashMap;

use candle_core::{bail, Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::fastconv::{Activation, Conv3x3};

/// Hyper-parameters, as `SRVGGNetCompact.__init__` names them (PReLU activation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub num_in_ch: usize,
    pub num_out_ch: usize,
    pub num_feat: usize,
    pub num_conv: usize,
    pub upscale: usize,
}

impl Config {
    /// realesr-general-x4v3.
    pub fn general_x4v3() -> Self {
        Self { num_in_ch: 3, num_out_ch: 3, num_feat: 64, num_conv: 32, upscale: 4 }
    }

    /// The configuration a state dict was trained with (its `body.N.weight` shapes).
    pub fn from_state(state: &HashMap<String, Tensor>) -> Result<Self> {
        let shape = |k: &str| -> Result<Vec<usize>> {
            match state.get(k) {
                Some(t) => Ok(t.dims().to_vec()),
                None => bail!("no tensor '{k}' (not an SRVGGNetCompact checkpoint)"),
            }
        };
        let first = shape("body.0.weight")?;
        let convs = state.keys().filter(|k| k.starts_with("body.") && k.ends_with(".weight")).count();
        // body holds conv + PReLU pairs (both with a `.weight`), then the last conv.
        if convs < 3 || convs % 2 == 0 || first.len() != 4 {
            bail!("unexpected layer count ({convs}) for SRVGGNetCompact");
        }
        let last = shape(&format!("body.{}.weight", convs - 1))?;
        let (num_feat, num_in_ch) = (first[0], first[1]);
        let out = last.first().copied().unwrap_or(0);
        let num_out_ch = num_in_ch;
        let upscale = (1..=8).find(|s| s * s * num_out_ch == out);
        match upscale {
            Some(upscale) => Ok(Self { num_in_ch, num_out_ch, num_feat, num_conv: (convs - 3) / 2, upscale }),
            None => bail!("last conv has {out} channels: not 3 x scale^2"),
        }
    }
}

/// The network. `forward`: `[n, 3, h, w]` in [0, 1] -> `[n, 3, s*h, s*w]` (not clamped).
#[derive(Debug, Clone)]
pub struct SrVggNetCompact {
    /// Each conv with the PReLU after it fused (none after the last conv).
    layers: Vec<Conv3x3>,
    upscale: usize,
}

impl SrVggNetCompact {
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let f = cfg.num_feat;
        let mut layers = Vec::with_capacity(cfg.num_conv + 2);
        for i in 0..=cfg.num_conv {
            let in_c = if i == 0 { cfg.num_in_ch } else { f };
            // PyTorch's PReLU names its slopes `weight`.
            let prelu = Activation::PRelu(vb.pp((2 * i + 1).to_string()).get(f, "weight")?);
            layers.push(Conv3x3::new(vb.pp((2 * i).to_string()), in_c, f, true, prelu)?);
        }
        let out = cfg.num_out_ch * cfg.upscale * cfg.upscale;
        layers.push(Conv3x3::new(vb.pp((2 * cfg.num_conv + 2).to_string()), f, out, true, Activation::Identity)?);
        Ok(Self { layers, upscale: cfg.upscale })
    }

    pub fn scale(&self) -> usize {
        self.upscale
    }
}

impl Module for SrVggNetCompact {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut y = x.clone();
        for conv in &self.layers {
            y = conv.forward(&y)?;
        }
        let y = candle_nn::ops::pixel_shuffle(&y, self.upscale)?;
        let (_, _, h, w) = x.dims4()?;
        let base = x.upsample_nearest2d(h * self.upscale, w * self.upscale)?;
        y + base
    }
}
