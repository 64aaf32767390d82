//! diffusers `config.json` files -> the configs of our UNet, candle's VAE and of our CLIP and schedulers.
//!
//! Parsed tolerantly from JSON values (diffusers writes many keys we do not need, and older folders omit
//! keys that now have defaults), so tiny test models and the official checkpoints load through one path.

use candle_transformers::models::stable_diffusion::vae::AutoEncoderKLConfig;
use serde_json::Value;

use crate::error::{EngineError, Result};

fn bad(what: &str, why: impl std::fmt::Display) -> EngineError {
    EngineError::Model { model: what.into(), reason: format!("its config.json is not usable ({why})") }
}

/// Parses a config.json's bytes.
pub fn parse(what: &str, bytes: &[u8]) -> Result<Value> {
    serde_json::from_slice(bytes).map_err(|e| bad(what, e))
}

fn usize_of(v: &Value, key: &str, default: usize) -> usize {
    v.get(key).and_then(Value::as_u64).map(|x| x as usize).unwrap_or(default)
}
fn f64_of(v: &Value, key: &str, default: f64) -> f64 {
    v.get(key).and_then(Value::as_f64).unwrap_or(default)
}
fn bool_of(v: &Value, key: &str, default: bool) -> bool {
    v.get(key).and_then(Value::as_bool).unwrap_or(default)
}
fn str_of<'a>(v: &'a Value, key: &str, default: &'a str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or(default)
}
/// A per-block list that diffusers also accepts as one number for all blocks.
fn per_block(v: &Value, key: &str, n: usize, default: usize) -> Vec<usize> {
    match v.get(key) {
        Some(Value::Array(a)) => a.iter().map(|x| x.as_u64().map(|x| x as usize).unwrap_or(default)).collect(),
        Some(x) => vec![x.as_u64().map(|x| x as usize).unwrap_or(default); n],
        None => vec![default; n],
    }
}
fn usize_list(what: &str, v: &Value, key: &str) -> Result<Vec<usize>> {
    let a = v.get(key).and_then(Value::as_array).ok_or_else(|| bad(what, format!("no `{key}` list")))?;
    a.iter().map(|x| x.as_u64().map(|x| x as usize).ok_or_else(|| bad(what, format!("`{key}` holds a non-number")))).collect()
}

/// The UNet's architecture (our own UNet's config; see `unet.rs`).
pub type UNetConfig = super::unet::Config;

fn block_kinds(v: &Value, key: &str) -> Vec<bool> {
    v.get(key)
        .and_then(Value::as_array)
        .map(|a| a.iter().map(|x| x.as_str().is_some_and(|t| t.contains("CrossAttn"))).collect())
        .unwrap_or_default()
}

pub fn unet(bytes: &[u8]) -> Result<UNetConfig> {
    let what = "unet";
    let v = parse(what, bytes)?;
    let channels = usize_list(what, &v, "block_out_channels")?;
    let n = channels.len();
    if n == 0 {
        return Err(bad(what, "`block_out_channels` is empty"));
    }
    let down_cross = block_kinds(&v, "down_block_types");
    if down_cross.len() != n {
        return Err(bad(what, "`down_block_types` and `block_out_channels` differ in length"));
    }
    // Older configs omit the up blocks: they mirror the down blocks.
    let mut up_cross = block_kinds(&v, "up_block_types");
    if up_cross.is_empty() {
        up_cross = down_cross.iter().rev().copied().collect();
    }
    if up_cross.len() != n {
        return Err(bad(what, "`up_block_types` and `block_out_channels` differ in length"));
    }
    // diffusers' `attention_head_dim` is (for these UNets) the number of heads; `num_attention_heads` wins.
    let heads = if v.get("num_attention_heads").is_some_and(|x| !x.is_null()) {
        per_block(&v, "num_attention_heads", n, 8)
    } else {
        per_block(&v, "attention_head_dim", n, 8)
    };
    if heads.len() != n || heads.iter().zip(&channels).any(|(h, c)| *h == 0 || c % h != 0) {
        return Err(bad(what, "the attention heads do not divide the block widths"));
    }
    let transformer_layers = per_block(&v, "transformer_layers_per_block", n, 1);
    if transformer_layers.len() != n {
        return Err(bad(what, "`transformer_layers_per_block` and `block_out_channels` differ in length"));
    }
    let groups = usize_of(&v, "norm_num_groups", 32);
    if groups == 0 || channels.iter().any(|c| c % groups != 0) {
        return Err(bad(what, "`norm_num_groups` does not divide the block widths"));
    }
    let cross = match v.get("cross_attention_dim") {
        Some(Value::Array(a)) => a.first().and_then(Value::as_u64).unwrap_or(768) as usize,
        Some(x) => x.as_u64().unwrap_or(768) as usize,
        None => 768,
    };
    let text_time = match str_of(&v, "addition_embed_type", "") {
        "" => None,
        "text_time" => Some(super::unet::TextTime {
            time_embed_dim: usize_of(&v, "addition_time_embed_dim", 256),
            input_dim: usize_of(&v, "projection_class_embeddings_input_dim", 2816),
        }),
        other => return Err(bad(what, format!("addition_embed_type `{other}` is not supported (text_time only)"))),
    };
    if !matches!(v.get("class_embed_type"), None | Some(Value::Null)) {
        return Err(bad(what, "class-conditioned UNets are not supported"));
    }
    Ok(UNetConfig {
        in_channels: usize_of(&v, "in_channels", 4),
        out_channels: usize_of(&v, "out_channels", 4),
        sample_size: usize_of(&v, "sample_size", 64),
        block_out_channels: channels,
        down_cross,
        up_cross,
        layers_per_block: usize_of(&v, "layers_per_block", 2),
        transformer_layers,
        heads,
        cross_attention_dim: cross,
        use_linear_projection: bool_of(&v, "use_linear_projection", false),
        norm_num_groups: groups,
        norm_eps: f64_of(&v, "norm_eps", 1e-5),
        flip_sin_to_cos: bool_of(&v, "flip_sin_to_cos", true),
        freq_shift: f64_of(&v, "freq_shift", 0.0),
        downsample_padding: usize_of(&v, "downsample_padding", 1),
        mid_block_scale_factor: f64_of(&v, "mid_block_scale_factor", 1.0),
        center_input_sample: bool_of(&v, "center_input_sample", false),
        text_time,
    })
}

/// The VAE's architecture and latent scaling.
#[derive(Debug, Clone)]
pub struct VaeConfig {
    pub candle: AutoEncoderKLConfig,
    pub scaling_factor: f64,
    pub in_channels: usize,
    pub out_channels: usize,
}

impl VaeConfig {
    /// Pixels per latent cell along each axis (8 for the official models).
    pub fn downscale(&self) -> usize {
        1 << self.candle.block_out_channels.len().saturating_sub(1)
    }
}

pub fn vae(bytes: &[u8]) -> Result<VaeConfig> {
    let what = "vae";
    let v = parse(what, bytes)?;
    let block_out_channels = usize_list(what, &v, "block_out_channels")?;
    if block_out_channels.is_empty() {
        return Err(bad(what, "`block_out_channels` is empty"));
    }
    Ok(VaeConfig {
        candle: AutoEncoderKLConfig {
            block_out_channels,
            layers_per_block: usize_of(&v, "layers_per_block", 2),
            latent_channels: usize_of(&v, "latent_channels", 4),
            norm_num_groups: usize_of(&v, "norm_num_groups", 32),
            use_quant_conv: bool_of(&v, "use_quant_conv", true),
            use_post_quant_conv: bool_of(&v, "use_post_quant_conv", true),
        },
        scaling_factor: f64_of(&v, "scaling_factor", 0.18215),
        in_channels: usize_of(&v, "in_channels", 3),
        out_channels: usize_of(&v, "out_channels", 3),
    })
}

/// The CLIP text encoder's hyper-parameters (transformers' `CLIPTextConfig`).
#[derive(Debug, Clone, PartialEq)]
pub struct ClipConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    /// `quick_gelu` (SD 1.5) or exact `gelu` (SD 2 / SDXL's second encoder).
    pub quick_gelu: bool,
    pub layer_norm_eps: f64,
    pub eos_token_id: u32,
    pub projection_dim: usize,
}

impl ClipConfig {
    /// OpenAI CLIP ViT-L/14's text encoder (SD 1.5, SDXL's first encoder).
    pub fn vit_l14() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            max_position_embeddings: 77,
            quick_gelu: true,
            layer_norm_eps: 1e-5,
            eos_token_id: 49407,
            projection_dim: 768,
        }
    }
}

pub fn clip(bytes: &[u8]) -> Result<ClipConfig> {
    let v = parse("text_encoder", bytes)?;
    // Some folders nest the text part (a full CLIPConfig); take it when present.
    let v = v.get("text_config").cloned().unwrap_or(v);
    let d = ClipConfig::vit_l14();
    let eos = usize_of(&v, "eos_token_id", 49407) as u32;
    Ok(ClipConfig {
        vocab_size: usize_of(&v, "vocab_size", d.vocab_size),
        hidden_size: usize_of(&v, "hidden_size", d.hidden_size),
        intermediate_size: usize_of(&v, "intermediate_size", d.intermediate_size),
        num_hidden_layers: usize_of(&v, "num_hidden_layers", d.num_hidden_layers),
        num_attention_heads: usize_of(&v, "num_attention_heads", d.num_attention_heads),
        max_position_embeddings: usize_of(&v, "max_position_embeddings", 77),
        quick_gelu: str_of(&v, "hidden_act", "quick_gelu") == "quick_gelu",
        layer_norm_eps: f64_of(&v, "layer_norm_eps", 1e-5),
        // transformers' legacy configs say 2 and then pool at the largest id (which is the end token).
        eos_token_id: if eos == 2 { u32::MAX } else { eos },
        projection_dim: usize_of(&v, "projection_dim", d.projection_dim),
    })
}

/// How inference timesteps are spread over the training schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spacing {
    Leading,
    Trailing,
    Linspace,
}

/// What the UNet predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prediction {
    Epsilon,
    V,
}

/// The noise schedule (diffusers' `scheduler_config.json`).
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleConfig {
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    /// `scaled_linear` (true, every SD model) or `linear`.
    pub scaled_linear: bool,
    pub steps_offset: usize,
    /// `None`: each sampler's diffusers default (leading for DDIM / LCM, linspace for Euler / DPM++).
    pub spacing: Option<Spacing>,
    pub prediction: Prediction,
    pub set_alpha_to_one: bool,
}

impl Default for ScheduleConfig {
    /// Stable Diffusion 1.x / 2.x / XL's training schedule.
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_start: 0.00085,
            beta_end: 0.012,
            scaled_linear: true,
            steps_offset: 1,
            spacing: None,
            prediction: Prediction::Epsilon,
            set_alpha_to_one: false,
        }
    }
}

pub fn schedule(bytes: &[u8]) -> Result<ScheduleConfig> {
    let what = "scheduler";
    let v = parse(what, bytes)?;
    let d = ScheduleConfig::default();
    let beta = str_of(&v, "beta_schedule", "scaled_linear");
    if beta != "scaled_linear" && beta != "linear" {
        return Err(bad(what, format!("beta_schedule `{beta}` is not supported (scaled_linear or linear)")));
    }
    Ok(ScheduleConfig {
        num_train_timesteps: usize_of(&v, "num_train_timesteps", 1000).max(2),
        beta_start: f64_of(&v, "beta_start", d.beta_start),
        beta_end: f64_of(&v, "beta_end", d.beta_end),
        scaled_linear: beta == "scaled_linear",
        steps_offset: usize_of(&v, "steps_offset", d.steps_offset),
        spacing: match v.get("timestep_spacing").and_then(Value::as_str) {
            Some("trailing") => Some(Spacing::Trailing),
            Some("linspace") => Some(Spacing::Linspace),
            Some("leading") => Some(Spacing::Leading),
            _ => None,
        },
        prediction: match str_of(&v, "prediction_type", "epsilon") {
            "v_prediction" => Prediction::V,
            "epsilon" => Prediction::Epsilon,
            other => return Err(bad(what, format!("prediction_type `{other}` is not supported"))),
        },
        set_alpha_to_one: bool_of(&v, "set_alpha_to_one", false),
    })
}
