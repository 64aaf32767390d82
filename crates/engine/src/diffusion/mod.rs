//! Stable Diffusion in candle: loading imported models (diffusers folders and single-file checkpoints),
//! text conditioning, schedulers and the inpainting loop behind the generative look.
//!
//! Reuses `candle_transformers::models::stable_diffusion` for the VAE decoder and writes what it lacks:
//! our own UNet (`unet`: exact GELU, SDXL's micro-conditioning, chunked attention), config.json -> configs
//! (so any size loads, tiny test models included), the original-layout key mapping (`single_file`), a configurable CLIP text encoder with pooled output (`clip`), a deterministic VAE
//! encoder and tiling (`vae`), seeded schedulers incl. DPM++ 2M and LCM (`scheduler`), CLIP's tokenizer
//! (`tokenizer`) and inpainting with classifier-free guidance, progress and cancellation (`pipeline`).
//!
//! Like the rest of the engine it never opens a file: the caller reads (or maps) the weights and hands over bytes.

pub mod attention;
pub mod clip;
pub mod config;
pub mod detect;
pub mod pipeline;
pub mod rng;
pub mod scheduler;
pub mod single_file;
pub mod tokenizer;
pub mod unet;
pub mod vae;

/// One component of a diffusers folder: its `config.json` and its safetensors weights.
#[derive(Clone)]
pub struct Component {
    pub config: Vec<u8>,
    pub weights: Vec<u8>,
}

/// A diffusers folder's tokenizer files (`tokenizer/vocab.json`, `tokenizer/merges.txt`).
#[derive(Clone)]
pub struct TokenizerFiles {
    pub vocab_json: Vec<u8>,
    pub merges: String,
}

/// The files of an installed diffusion model, read by the caller.
#[derive(Clone)]
pub enum DiffusionFiles {
    /// A diffusers folder (`unet/`, `vae/`, `text_encoder/`, optional `tokenizer/`, `scheduler/`).
    Diffusers {
        unet: Component,
        vae: Component,
        text_encoder: Component,
        tokenizer: Option<TokenizerFiles>,
        scheduler_config: Option<Vec<u8>>,
        /// SDXL's second text encoder (`text_encoder_2/`, a CLIP text model with projection).
        text_encoder_2: Option<Component>,
        /// SDXL's second tokenizer (`tokenizer_2/`); the bundled one (padding with `!`) when absent.
        tokenizer_2: Option<TokenizerFiles>,
    },
    /// One checkpoint in the original Stable Diffusion layout (`model.diffusion_model.*`,
    /// `first_stage_model.*`, `cond_stage_model.transformer.*`) with the architecture's configs.
    SingleFile { checkpoint: Vec<u8>, configs: single_file::Configs },
}

/// The device type models load onto (re-exported so callers need not depend on candle).
pub use candle_core::Device;
