//! Single-file checkpoints in the original Stable Diffusion (LDM / CompVis) layout, how most community
//! photo models ship: one safetensors with `model.diffusion_model.*` (UNet), `first_stage_model.*` (VAE)
//! and `cond_stage_model.transformer.*` (CLIP text encoder); SDXL's (Stability's generative-models layout)
//! keep the text encoders under `conditioner.embedders.0.transformer.*` (transformers' CLIP names) and
//! `conditioner.embedders.1.model.*` (OpenCLIP names: fused `in_proj` q/k/v, `resblocks`, a transposed
//! `text_projection`) and the add-embedding under `label_emb.0.{0,2}`. Mapped to diffusers' names at load, following
//! the layout of diffusers' `convert_original_stable_diffusion_to_diffusers.py` (Apache-2.0); the mapping is
//! checked by loading the same weights both ways (tests/engine/diffusion.rs, tools/fixtures/sd_parity.py).
//!
//! The architecture is not in the file; the caller passes the configs of the detected architecture
//! (`Configs::sd15`) or of a tiny test model.

use std::collections::HashMap;

use candle_core::{Device, Tensor};

use super::config::{UNetConfig, VaeConfig};
use crate::error::{EngineError, Result};

/// The diffusers configs (config.json bytes) describing a single-file checkpoint's architecture.
#[derive(Clone)]
pub struct Configs {
    pub unet: Vec<u8>,
    pub vae: Vec<u8>,
    pub text_encoder: Vec<u8>,
    pub scheduler: Vec<u8>,
    /// SDXL's second text encoder (OpenCLIP ViT-bigG/14 with projection).
    pub text_encoder_2: Option<Vec<u8>>,
}

const SD15_UNET: &str = r#"{"in_channels": 4, "out_channels": 4, "block_out_channels": [320, 640, 1280, 1280],
 "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
 "layers_per_block": 2, "attention_head_dim": 8, "cross_attention_dim": 768, "norm_num_groups": 32, "sample_size": 64}"#;
const SD15_VAE: &str = r#"{"block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "latent_channels": 4,
 "norm_num_groups": 32, "scaling_factor": 0.18215}"#;
const SD15_TEXT: &str = r#"{"hidden_act": "quick_gelu", "hidden_size": 768, "intermediate_size": 3072,
 "num_attention_heads": 12, "num_hidden_layers": 12, "vocab_size": 49408, "eos_token_id": 49407}"#;
const SD15_SCHEDULER: &str = r#"{"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
 "num_train_timesteps": 1000, "steps_offset": 1, "set_alpha_to_one": false}"#;

const SDXL_UNET: &str = r#"{"in_channels": 4, "out_channels": 4, "block_out_channels": [320, 640, 1280],
 "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
 "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
 "layers_per_block": 2, "attention_head_dim": [5, 10, 20], "transformer_layers_per_block": [1, 2, 10],
 "cross_attention_dim": 2048, "use_linear_projection": true, "addition_embed_type": "text_time",
 "addition_time_embed_dim": 256, "projection_class_embeddings_input_dim": 2816, "norm_num_groups": 32,
 "sample_size": 128}"#;
const SDXL_VAE: &str = r#"{"block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "latent_channels": 4,
 "norm_num_groups": 32, "scaling_factor": 0.13025}"#;
const SDXL_TEXT_2: &str = r#"{"hidden_act": "gelu", "hidden_size": 1280, "intermediate_size": 5120,
 "num_attention_heads": 20, "num_hidden_layers": 32, "vocab_size": 49408, "eos_token_id": 49407, "projection_dim": 1280}"#;

impl Configs {
    /// SDXL base (`inpainting`: the 9-channel SDXL inpainting UNet).
    pub fn sdxl(inpainting: bool) -> Self {
        let unet = if inpainting { SDXL_UNET.replace("\"in_channels\": 4", "\"in_channels\": 9") } else { SDXL_UNET.into() };
        Self {
            unet: unet.into_bytes(),
            vae: SDXL_VAE.as_bytes().to_vec(),
            text_encoder: SD15_TEXT.as_bytes().to_vec(),
            scheduler: SD15_SCHEDULER.as_bytes().to_vec(),
            text_encoder_2: Some(SDXL_TEXT_2.as_bytes().to_vec()),
        }
    }

    /// Stable Diffusion 1.5 (`inpainting`: the 9-channel inpainting UNet).
    pub fn sd15(inpainting: bool) -> Self {
        let unet = if inpainting { SD15_UNET.replace("\"in_channels\": 4", "\"in_channels\": 9") } else { SD15_UNET.into() };
        Self {
            unet: unet.into_bytes(),
            vae: SD15_VAE.as_bytes().to_vec(),
            text_encoder: SD15_TEXT.as_bytes().to_vec(),
            scheduler: SD15_SCHEDULER.as_bytes().to_vec(),
            text_encoder_2: None,
        }
    }
}

/// The three models' tensors under diffusers' names.
pub struct Parts {
    pub unet: HashMap<String, Tensor>,
    pub vae: HashMap<String, Tensor>,
    pub text_encoder: HashMap<String, Tensor>,
    /// SDXL's second text encoder (empty for SD 1.x).
    pub text_encoder_2: HashMap<String, Tensor>,
}

fn bad(why: impl std::fmt::Display) -> EngineError {
    EngineError::Model { model: "checkpoint".into(), reason: why.to_string() }
}

/// Splits a single-file checkpoint's tensors into UNet / VAE / text encoder under diffusers' names.
pub fn split(checkpoint: &[u8], unet: &UNetConfig, vae: &VaeConfig) -> Result<Parts> {
    let all = candle_core::safetensors::load_buffer(checkpoint, &Device::Cpu)
        .map_err(|e| bad(format!("not a valid safetensors file ({e})")))?;
    let mut parts =
        Parts { unet: HashMap::new(), vae: HashMap::new(), text_encoder: HashMap::new(), text_encoder_2: HashMap::new() };
    let layers = unet.layers_per_block;
    let vae_blocks = vae.candle.block_out_channels.len();
    for (k, t) in all {
        if let Some(rest) = k.strip_prefix("model.diffusion_model.") {
            if let Some(name) = unet_key(rest, layers) {
                parts.unet.insert(name, t);
            }
        } else if let Some(rest) = k.strip_prefix("first_stage_model.") {
            if let Some(name) = vae_key(rest, vae_blocks) {
                // Original attention projections are 1x1 convs; diffusers' are linear.
                let t = if name.contains("mid_block.attentions") && t.rank() == 4 { t.flatten_from(1)? } else { t };
                parts.vae.insert(name, t);
            }
        } else if let Some(rest) = k.strip_prefix("conditioner.embedders.1.model.") {
            open_clip(rest, t, &mut parts.text_encoder_2)?;
        } else if let Some(rest) =
            k.strip_prefix("cond_stage_model.transformer.").or_else(|| k.strip_prefix("conditioner.embedders.0.transformer."))
        {
            let name = if rest.starts_with("text_model.") { rest.to_owned() } else { format!("text_model.{rest}") };
            if !name.ends_with("position_ids") {
                parts.text_encoder.insert(name, t);
            }
        }
    }
    for (what, m) in [("UNet", &parts.unet), ("VAE", &parts.vae), ("text encoder", &parts.text_encoder)] {
        if m.is_empty() {
            return Err(bad(format!(
                "no {what} weights in the original layout; this is not a full Stable Diffusion checkpoint"
            )));
        }
    }
    Ok(parts)
}

/// OpenCLIP text-tower names (`conditioner.embedders.1.model.<rest>`) -> transformers' CLIPTextModelWithProjection.
fn open_clip(rest: &str, t: Tensor, out: &mut HashMap<String, Tensor>) -> Result<()> {
    let mut put = |k: String, t: Tensor| {
        out.insert(k, t);
    };
    match rest {
        "token_embedding.weight" => put("text_model.embeddings.token_embedding.weight".into(), t),
        "positional_embedding" => put("text_model.embeddings.position_embedding.weight".into(), t),
        "text_projection" => put("text_projection.weight".into(), t.t()?.contiguous()?),
        "logit_scale" => {}
        _ => {
            if let Some(r) = rest.strip_prefix("ln_final.") {
                put(format!("text_model.final_layer_norm.{r}"), t);
            } else if let Some(r) = rest.strip_prefix("transformer.resblocks.") {
                let (i, r) = r.split_once('.').ok_or_else(|| bad(format!("unexpected OpenCLIP tensor {rest}")))?;
                let layer = format!("text_model.encoder.layers.{i}");
                if let Some(kind) = r.strip_prefix("attn.in_proj_") {
                    // q, k and v stacked along the first axis.
                    let n = t.dim(0)? / 3;
                    for (j, name) in ["q_proj", "k_proj", "v_proj"].iter().enumerate() {
                        put(format!("{layer}.self_attn.{name}.{kind}"), t.narrow(0, j * n, n)?.contiguous()?);
                    }
                } else {
                    let map = [
                        ("ln_1.", "layer_norm1."),
                        ("ln_2.", "layer_norm2."),
                        ("attn.out_proj.", "self_attn.out_proj."),
                        ("mlp.c_fc.", "mlp.fc1."),
                        ("mlp.c_proj.", "mlp.fc2."),
                    ];
                    let name = map
                        .iter()
                        .find_map(|(f, to)| r.strip_prefix(f).map(|p| format!("{layer}.{to}{p}")))
                        .ok_or_else(|| bad(format!("unexpected OpenCLIP tensor {rest}")))?;
                    put(name, t);
                }
            }
        }
    }
    Ok(())
}

fn resnet(rest: &str) -> Option<String> {
    let map = [
        ("in_layers.0.", "norm1."),
        ("in_layers.2.", "conv1."),
        ("emb_layers.1.", "time_emb_proj."),
        ("out_layers.0.", "norm2."),
        ("out_layers.3.", "conv2."),
        ("skip_connection.", "conv_shortcut."),
    ];
    map.iter().find_map(|(from, to)| rest.strip_prefix(from).map(|r| format!("{to}{r}")))
}

/// `model.diffusion_model.<rest>` -> the diffusers UNet key.
fn unet_key(rest: &str, layers: usize) -> Option<String> {
    let simple = [
        ("time_embed.0.", "time_embedding.linear_1."),
        ("time_embed.2.", "time_embedding.linear_2."),
        ("input_blocks.0.0.", "conv_in."),
        ("out.0.", "conv_norm_out."),
        ("out.2.", "conv_out."),
        // SDXL's add-embedding (pooled text + time ids).
        ("label_emb.0.0.", "add_embedding.linear_1."),
        ("label_emb.0.2.", "add_embedding.linear_2."),
    ];
    if let Some(k) = simple.iter().find_map(|(f, t)| rest.strip_prefix(f).map(|r| format!("{t}{r}"))) {
        return Some(k);
    }
    let (block, idx, sub, tail) = {
        let mut it = rest.splitn(4, '.');
        let block = it.next()?;
        let idx: usize = if block == "middle_block" { 0 } else { it.next()?.parse().ok()? };
        let sub: usize = it.next()?.parse().ok()?;
        (block, idx, sub, it.next()?)
    };
    // The middle block has no index of its own: re-split.
    if block == "middle_block" {
        let mut it = rest.splitn(3, '.');
        it.next()?;
        let sub: usize = it.next()?.parse().ok()?;
        let tail = it.next()?;
        return match sub {
            0 => Some(format!("mid_block.resnets.0.{}", resnet(tail)?)),
            1 => Some(format!("mid_block.attentions.0.{tail}")),
            2 => Some(format!("mid_block.resnets.1.{}", resnet(tail)?)),
            _ => None,
        };
    }
    let per = layers + 1;
    match block {
        "input_blocks" => {
            let (i, j) = ((idx - 1) / per, (idx - 1) % per);
            if j == layers {
                // The downsampler sits alone in the block after the block's layers.
                let r = tail.strip_prefix("op.").or_else(|| tail.strip_prefix("conv."))?;
                return Some(format!("down_blocks.{i}.downsamplers.0.conv.{r}"));
            }
            match sub {
                0 => Some(format!("down_blocks.{i}.resnets.{j}.{}", resnet(tail)?)),
                1 => Some(format!("down_blocks.{i}.attentions.{j}.{tail}")),
                _ => None,
            }
        }
        "output_blocks" => {
            let (i, j) = (idx / per, idx % per);
            if let Some(r) = tail.strip_prefix("conv.") {
                // `output_blocks.k.{1|2}.conv`: the upsampler after the last layer of a block.
                return Some(format!("up_blocks.{i}.upsamplers.0.conv.{r}"));
            }
            match sub {
                0 => Some(format!("up_blocks.{i}.resnets.{j}.{}", resnet(tail)?)),
                1 => Some(format!("up_blocks.{i}.attentions.{j}.{tail}")),
                _ => None,
            }
        }
        _ => None,
    }
}

/// `first_stage_model.<rest>` -> the diffusers VAE key.
fn vae_key(rest: &str, blocks: usize) -> Option<String> {
    if rest.starts_with("quant_conv.") || rest.starts_with("post_quant_conv.") {
        return Some(rest.to_owned());
    }
    let (side, tail) = rest.split_once('.')?;
    if side != "encoder" && side != "decoder" {
        return None;
    }
    let res = |t: &str| -> String { t.replacen("nin_shortcut.", "conv_shortcut.", 1) };
    let out = if let Some(r) = tail.strip_prefix("norm_out.") {
        format!("conv_norm_out.{r}")
    } else if let Some(r) = tail.strip_prefix("mid.block_1.") {
        format!("mid_block.resnets.0.{}", res(r))
    } else if let Some(r) = tail.strip_prefix("mid.block_2.") {
        format!("mid_block.resnets.1.{}", res(r))
    } else if let Some(r) = tail.strip_prefix("mid.attn_1.") {
        let (m, p) = r.split_once('.')?;
        let m = match m {
            "norm" => "group_norm",
            "q" => "to_q",
            "k" => "to_k",
            "v" => "to_v",
            "proj_out" => "to_out.0",
            _ => return None,
        };
        format!("mid_block.attentions.0.{m}.{p}")
    } else if let Some(r) = tail.strip_prefix("down.").or_else(|| tail.strip_prefix("up.")) {
        let up = tail.starts_with("up.");
        let (i, r) = r.split_once('.')?;
        let i: usize = i.parse().ok()?;
        // The original decoder counts its blocks from the lowest resolution; diffusers from the highest.
        let i = if up { blocks.checked_sub(1 + i)? } else { i };
        let kind = if up { "up_blocks" } else { "down_blocks" };
        if let Some(r) = r.strip_prefix("block.") {
            let (j, r) = r.split_once('.')?;
            format!("{kind}.{i}.resnets.{j}.{}", res(r))
        } else if let Some(r) = r.strip_prefix("downsample.") {
            format!("{kind}.{i}.downsamplers.0.{r}")
        } else if let Some(r) = r.strip_prefix("upsample.") {
            format!("{kind}.{i}.upsamplers.0.{r}")
        } else {
            return None;
        }
    } else {
        tail.to_owned()
    };
    Some(format!("{side}.{out}"))
}
