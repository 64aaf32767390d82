//! The inpainting loop (after diffusers' `pipeline_stable_diffusion_inpaint.py`, Apache-2.0): inputs checked
//! up front, prompts encoded once, then an explicit numbered denoising loop with classifier-free guidance,
//! progress after every step and cancellation between steps.
//!
//! SDXL (after `pipeline_stable_diffusion_xl_inpaint.py`): two text encoders whose penultimate hidden states
//! are concatenated, the second one's projected end-token state as the pooled embedding, and the time ids
//! (original size, crop top-left (0, 0), target size) of the working resolution.
//!
//! 9-channel inpainting UNets get `[latents, mask, masked-image latents]`; ordinary 4-channel models use the
//! blended-latent approach (after every step the kept region is replaced by the original image's latents
//! noised to the next step's level), so any imported model can repaint a region.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use image::RgbImage;

use super::clip::ClipTextModel;
use super::config::{self, ClipConfig, ScheduleConfig, Spacing, UNetConfig, VaeConfig};
use super::rng::NoiseRng;
use super::scheduler::{SamplerKind, Scheduler};
use super::tokenizer::ClipTokenizer;
use super::unet::{AddedConditions, UNet2DConditionModel};
use super::vae::Vae;
use super::{single_file, DiffusionFiles};
use crate::error::{EngineError, Result};
use crate::imgops::Mask;
use crate::progress::CancelToken;

/// A loaded Stable Diffusion model. Load once per job (it is large), reuse for every photo and variant.
pub struct DiffusionModel {
    unet: UNet2DConditionModel,
    pub unet_config: UNetConfig,
    vae: Vae,
    text: ClipTextModel,
    pub text_config: ClipConfig,
    tokenizer: ClipTokenizer,
    /// SDXL's second text encoder (with projection) and its tokenizer.
    text_2: Option<(ClipTextModel, ClipTokenizer)>,
    pub text_2_config: Option<ClipConfig>,
    pub schedule: ScheduleConfig,
    dtype: DType,
    device: Device,
}

/// Maps a candle error to the engine's, turning allocation failures into a clear out-of-memory message.
pub fn map_err(model: &str) -> impl Fn(candle_core::Error) -> EngineError + '_ {
    move |e| {
        // The first line only: with RUST_BACKTRACE set, candle appends a backtrace (full of `alloc::`).
        let msg = e.to_string().lines().next().unwrap_or_default().to_owned();
        let low = msg.to_lowercase();
        if low.contains("out of memory") || low.contains("alloc") || low.contains("oom") {
            EngineError::Device(format!(
                "not enough memory to run '{model}' ({msg}); choose a lower quality, close other programs or use the CPU"
            ))
        } else {
            EngineError::Model { model: model.into(), reason: format!("weights do not match the architecture ({msg})") }
        }
    }
}

fn vb_from_bytes(part: &str, bytes: Vec<u8>, dtype: DType, device: &Device) -> Result<VarBuilder<'static>> {
    if bytes.is_empty() {
        return Err(EngineError::Model { model: part.into(), reason: "the weights file is empty".into() });
    }
    VarBuilder::from_buffered_safetensors(bytes, dtype, device).map_err(|e| EngineError::Model {
        model: part.into(),
        reason: format!("not a valid safetensors file ({e})"),
    })
}

/// f16 on a GPU (half the memory, tensor cores), f32 on the CPU (candle's f16 CPU kernels are slower).
pub fn default_dtype(device: &Device) -> DType {
    if device.is_cpu() {
        DType::F32
    } else {
        DType::F16
    }
}

impl DiffusionModel {
    pub fn load(files: DiffusionFiles, device: &Device) -> Result<Self> {
        let dtype = default_dtype(device);
        match files {
            DiffusionFiles::Diffusers { unet, vae, text_encoder, tokenizer, scheduler_config, text_encoder_2, tokenizer_2 } => {
                let uc = config::unet(&unet.config)?;
                let vc = config::vae(&vae.config)?;
                let tc = config::clip(&text_encoder.config)?;
                let sc = match scheduler_config {
                    Some(b) => config::schedule(&b)?,
                    None => ScheduleConfig::default(),
                };
                let tok = match tokenizer {
                    Some(t) => ClipTokenizer::from_files(&t.vocab_json, &t.merges)?,
                    None => ClipTokenizer::bundled()?,
                };
                let ub = vb_from_bytes("unet", unet.weights, dtype, device)?;
                // The VAE runs in f32 everywhere: SD's VAE overflows in f16 (diffusers' `force_upcast`).
                let vb = vb_from_bytes("vae", vae.weights, DType::F32, device)?;
                let tb = vb_from_bytes("text_encoder", text_encoder.weights, dtype, device)?;
                let second = match text_encoder_2 {
                    Some(c) => {
                        let tok = match tokenizer_2 {
                            Some(t) => ClipTokenizer::from_files(&t.vocab_json, &t.merges)?,
                            None => ClipTokenizer::bundled()?,
                        };
                        // SDXL's second tokenizer pads with `!` (id 0), not the end token.
                        let tok = tok.with_pad(0);
                        Some((config::clip(&c.config)?, vb_from_bytes("text_encoder_2", c.weights, dtype, device)?, tok))
                    }
                    None => None,
                };
                Self::build(uc, vc, tc, sc, tok, ub, vb, tb, second, dtype, device)
            }
            DiffusionFiles::SingleFile { checkpoint, configs } => {
                let uc = config::unet(&configs.unet)?;
                let vc = config::vae(&configs.vae)?;
                let tc = config::clip(&configs.text_encoder)?;
                let sc = config::schedule(&configs.scheduler)?;
                let parts = single_file::split(&checkpoint, &uc, &vc)?;
                let to_vb = |m, dt| VarBuilder::from_tensors(m, dt, device);
                let ub = to_vb(parts.unet, dtype);
                let vb = to_vb(parts.vae, DType::F32);
                let tb = to_vb(parts.text_encoder, dtype);
                let second = match &configs.text_encoder_2 {
                    Some(c) => Some((config::clip(c)?, to_vb(parts.text_encoder_2, dtype), ClipTokenizer::bundled()?.with_pad(0))),
                    None => None,
                };
                Self::build(uc, vc, tc, sc, ClipTokenizer::bundled()?, ub, vb, tb, second, dtype, device)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn build(
        uc: UNetConfig,
        vc: VaeConfig,
        tc: ClipConfig,
        sc: ScheduleConfig,
        tokenizer: ClipTokenizer,
        ub: VarBuilder<'static>,
        vb: VarBuilder<'static>,
        tb: VarBuilder<'static>,
        second: Option<(ClipConfig, VarBuilder<'static>, ClipTokenizer)>,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let unet_err = |reason: String| EngineError::Model { model: "unet".into(), reason };
        if uc.in_channels != 4 && uc.in_channels != 9 {
            return Err(unet_err(format!(
                "a UNet with {} input channels is neither a text-to-image (4) nor an inpainting (9) model",
                uc.in_channels
            )));
        }
        // SDXL's context is both encoders' hidden states side by side.
        let width = tc.hidden_size + second.as_ref().map_or(0, |(c, _, _)| c.hidden_size);
        if uc.cross_attention_dim != width {
            return Err(EngineError::Model {
                model: "text_encoder".into(),
                reason: format!(
                    "the text encoders' width {width} does not match the UNet's cross-attention width {}",
                    uc.cross_attention_dim
                ),
            });
        }
        match (&uc.text_time, &second) {
            (Some(tt), Some((c2, _, _))) => {
                if tt.input_dim != c2.projection_dim + 6 * tt.time_embed_dim {
                    return Err(unet_err(format!(
                        "its add_embedding takes {} values, but the second text encoder's projection ({}) and six time ids ({} each) make {}",
                        tt.input_dim,
                        c2.projection_dim,
                        tt.time_embed_dim,
                        c2.projection_dim + 6 * tt.time_embed_dim
                    )));
                }
            }
            (Some(_), None) => {
                return Err(EngineError::Model {
                    model: "text_encoder_2".into(),
                    reason: "this SDXL UNet needs the second text encoder (text_encoder_2/); import the whole diffusers folder".into(),
                })
            }
            (None, Some(_)) => {
                return Err(unet_err("the model has a second text encoder but its UNet takes no pooled text embedding".into()))
            }
            (None, None) => {}
        }
        let unet = UNet2DConditionModel::new(&uc, ub).map_err(map_err("unet"))?;
        let vae = Vae::new(&vc, vb).map_err(map_err("vae"))?;
        let text = ClipTextModel::new(&tc, tb, false).map_err(map_err("text_encoder"))?;
        let (text_2, text_2_config) = match second {
            Some((c2, vb2, tok2)) => {
                let m = ClipTextModel::new(&c2, vb2, true).map_err(map_err("text_encoder_2"))?;
                (Some((m, tok2)), Some(c2))
            }
            None => (None, None),
        };
        Ok(Self {
            unet,
            unet_config: uc,
            vae,
            text,
            text_config: tc,
            tokenizer,
            text_2,
            text_2_config,
            schedule: sc,
            dtype,
            device: device.clone(),
        })
    }

    /// Pixels per latent cell (8 for real models).
    pub fn vae_factor(&self) -> usize {
        self.vae.factor()
    }

    /// Working sizes must be multiples of this (VAE factor times the UNet's downsampling).
    pub fn size_multiple(&self) -> usize {
        self.vae.factor() * self.unet_config.downscale()
    }

    /// Whether this is a 9-channel inpainting model.
    pub fn is_inpainting(&self) -> bool {
        self.unet_config.in_channels == 9
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// How many times SD 1.5's working resolution this model wants: SDXL was trained at 1024 px (128 latent
    /// cells), twice SD 1.5's 512, and degrades well below it.
    pub fn resolution_scale(&self) -> usize {
        if self.is_sdxl() {
            2
        } else {
            1
        }
    }

    /// Whether this is an SDXL model (two text encoders, micro-conditioning).
    pub fn is_sdxl(&self) -> bool {
        self.text_2.is_some()
    }

    /// The text conditioning of prompts (one row each): SD 1.5 takes the last layer; SDXL both encoders'
    /// penultimate layers concatenated, and the second encoder's projected end token as the pooled embedding.
    pub fn encode_prompts(&self, prompts: &[&str]) -> Result<Conditioning> {
        let ids = |tok: &ClipTokenizer| -> Result<Tensor> {
            let rows: Vec<u32> = prompts.iter().flat_map(|p| tok.encode_padded(p)).collect();
            let n = rows.len() / prompts.len().max(1);
            Ok(Tensor::from_vec(rows, (prompts.len(), n), &self.device)?)
        };
        let e = self.text.forward(&ids(&self.tokenizer)?).map_err(map_err("text_encoder"))?;
        match &self.text_2 {
            None => Ok(Conditioning { context: e.last, pooled: None }),
            Some((m, tok)) => {
                let e2 = m.forward(&ids(tok)?).map_err(map_err("text_encoder_2"))?;
                let context = Tensor::cat(&[&e.penultimate, &e2.penultimate.to_dtype(e.penultimate.dtype())?], 2)?;
                Ok(Conditioning { context, pooled: Some(e2.pooled) })
            }
        }
    }

    /// The classifier-free guidance pair `[unconditional, conditional]`. With no negative prompt, SDXL's
    /// unconditional branch is conditioned on zeros (context and pooled), as diffusers' SDXL pipelines do
    /// (`force_zeros_for_empty_prompt`); SD 1.5 encodes the empty string, as diffusers does.
    pub fn guidance_conditioning(&self, prompt: &str, negative: &str) -> Result<Conditioning> {
        if self.is_sdxl() && negative.trim().is_empty() {
            let c = self.encode_prompts(&[prompt])?;
            let context = Tensor::cat(&[&c.context.zeros_like()?, &c.context], 0)?;
            let pooled = c.pooled.map(|p| Tensor::cat(&[&p.zeros_like()?, &p], 0)).transpose()?;
            return Ok(Conditioning { context, pooled });
        }
        self.encode_prompts(&[negative, prompt])
    }

    /// The VAE's scaled latents of an image tensor [1, 3, H, W] in [-1, 1].
    fn encode_image(&self, image: &Tensor) -> Result<Tensor> {
        let m = self.vae.encode_mean(image).map_err(map_err("vae"))?;
        Ok((m * self.vae.config.scaling_factor)?)
    }
}

/// What the prompts condition the UNet on.
pub struct Conditioning {
    /// `[B, 77, cross-attention width]`.
    pub context: Tensor,
    /// SDXL: the pooled text embedding `[B, projection]`.
    pub pooled: Option<Tensor>,
}

/// One inpainting call.
pub struct InpaintRequest<'a> {
    /// The image at working resolution (both sides multiples of `size_multiple()`).
    pub image: &'a RgbImage,
    /// 1 where new content is generated, 0 where the image is kept; same size as `image`.
    pub mask: &'a Mask,
    pub prompt: &'a str,
    pub negative_prompt: &'a str,
    pub steps: usize,
    /// Classifier-free guidance scale; <= 1 runs the conditional branch only (Turbo / LCM).
    pub guidance: f64,
    pub sampler: SamplerKind,
    /// Overrides the model's timestep spacing (Turbo models want trailing).
    pub spacing: Option<Spacing>,
    pub seed: u64,
}

fn image_tensor(img: &RgbImage, device: &Device) -> Result<Tensor> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let data: Vec<f32> = img.as_raw().iter().map(|&v| f32::from(v) / 127.5 - 1.0).collect();
    Ok(Tensor::from_vec(data, (h, w, 3), device)?.permute((2, 0, 1))?.unsqueeze(0)?)
}

fn tensor_image(t: &Tensor) -> Result<RgbImage> {
    let t = t.squeeze(0)?.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
    let (_, h, w) = t.dims3()?;
    let data = ((t.clamp(-1f32, 1f32)? + 1.0)? * 127.5)?.round()?.permute((1, 2, 0))?.flatten_all()?.to_vec1::<f32>()?;
    let bytes = data.into_iter().map(|v| v.clamp(0.0, 255.0) as u8).collect();
    RgbImage::from_raw(w as u32, h as u32, bytes).ok_or_else(|| EngineError::InvalidOption("decoded image has a wrong size".into()))
}

/// The mask averaged down to latent cells, then thresholded as diffusers does (>= 0.5 repaints).
fn latent_mask(mask: &Mask, f: usize, device: &Device) -> Result<Tensor> {
    let (w, h) = (mask.width() as usize / f, mask.height() as usize / f);
    let mut v = vec![0f32; w * h];
    for (i, slot) in v.iter_mut().enumerate() {
        let (cx, cy) = (i % w, i / w);
        let mut s = 0.0;
        for y in cy * f..(cy + 1) * f {
            for x in cx * f..(cx + 1) * f {
                s += mask.get_pixel(x as u32, y as u32)[0];
            }
        }
        *slot = if s / (f * f) as f32 >= 0.5 { 1.0 } else { 0.0 };
    }
    Ok(Tensor::from_vec(v, (1, 1, h, w), device)?)
}

/// Runs one inpainting generation. `on_step(done, total)` is called after every denoising step;
/// `cancel` is checked before every step.
pub fn inpaint(
    model: &DiffusionModel,
    req: &InpaintRequest,
    on_step: &dyn Fn(usize, usize),
    cancel: &CancelToken,
) -> Result<RgbImage> {
    let (w, h) = (req.image.width() as usize, req.image.height() as usize);
    let mult = model.size_multiple();
    if w == 0 || h == 0 || w % mult != 0 || h % mult != 0 {
        return Err(EngineError::InvalidOption(format!("the working size {w}x{h} is not a multiple of {mult}")));
    }
    if req.mask.width() as usize != w || req.mask.height() as usize != h {
        return Err(EngineError::InvalidOption("the mask and the image differ in size".into()));
    }
    if req.steps == 0 || req.steps > 200 {
        return Err(EngineError::InvalidOption(format!("{} steps requested; use 1 to 200", req.steps)));
    }
    cancel.check()?;
    let dev = &model.device;
    let f = model.vae_factor();
    let cfg = req.guidance > 1.0;

    let cond = if cfg {
        model.guidance_conditioning(req.prompt, req.negative_prompt)?
    } else {
        model.encode_prompts(&[req.prompt])?
    };
    let context = cond.context.to_dtype(model.dtype)?;
    let rows = context.dim(0)?;
    // SDXL's micro-conditioning: generated at the working size, uncropped, for the working size.
    let time_ids = Tensor::from_vec(
        [h, w, 0, 0, h, w].iter().cycle().take(6 * rows).map(|&v| v as f32).collect::<Vec<f32>>(),
        (rows, 6),
        dev,
    )?
    .to_dtype(model.dtype)?;
    let pooled = cond.pooled.map(|p| p.to_dtype(model.dtype)).transpose()?;
    let added = pooled.as_ref().map(|p| AddedConditions { text_embeds: p, time_ids: &time_ids });

    let image = image_tensor(req.image, dev)?;
    let mask_px = Tensor::from_vec(req.mask.as_raw().clone(), (1, 1, h, w), dev)?.ge(0.5f32)?.to_dtype(DType::F32)?;
    let lmask = latent_mask(req.mask, f, dev)?;
    let (lh, lw) = (h / f, w / f);
    let lc = model.vae.config.candle.latent_channels;

    let mut schedule = model.schedule.clone();
    if let Some(s) = req.spacing {
        schedule.spacing = Some(s);
    }
    let mut scheduler = Scheduler::new(req.sampler, &schedule, req.steps)?;
    let mut rng = NoiseRng::new(req.seed);
    let noise = rng.randn((1, lc, lh, lw), dev)?;
    let mut latents = (&noise * scheduler.init_noise_sigma())?;

    // 9 channels: the mask and the masked image's latents go in beside the noise; 4: the image's latents
    // are blended back after every step.
    let masked_latents = if model.is_inpainting() {
        let keep = (1.0 - &mask_px)?;
        Some(model.encode_image(&image.broadcast_mul(&keep)?)?)
    } else {
        None
    };
    let image_latents = if model.is_inpainting() { None } else { Some(model.encode_image(&image)?) };

    let n = scheduler.timesteps().len();
    for i in 0..n {
        cancel.check()?;
        let t = scheduler.timesteps().get(i).copied().unwrap_or(0.0);
        let x = scheduler.scale_model_input(&latents, i)?;
        let x = match &masked_latents {
            Some(ml) => Tensor::cat(&[&x, &lmask, ml], 1)?,
            None => x,
        };
        let x = if cfg { Tensor::cat(&[&x, &x], 0)? } else { x };
        let out = model
            .unet
            .forward(&x.to_dtype(model.dtype)?, t, &context, added.as_ref())
            .map_err(map_err("unet"))?
            .to_dtype(DType::F32)?;
        let out = if cfg {
            let u = out.narrow(0, 0, 1)?;
            let c = out.narrow(0, 1, 1)?;
            (&u + ((c - &u)? * req.guidance)?)?
        } else {
            out
        };
        let step_noise = if scheduler.needs_noise() { Some(rng.randn((1, lc, lh, lw), dev)?) } else { None };
        latents = scheduler.step(&out, i, &latents, step_noise.as_ref())?;
        if let Some(il) = &image_latents {
            let proper = scheduler.add_noise(il, &noise, i + 1)?;
            latents = ((&proper * (1.0 - &lmask)?.broadcast_as(proper.shape())?)?
                + (&latents * lmask.broadcast_as(latents.shape())?)?)?;
        }
        on_step(i + 1, n);
    }
    cancel.check()?;
    let decoded = model.vae.decode(&(latents / model.vae.config.scaling_factor)?).map_err(map_err("vae"))?;
    tensor_image(&decoded)
}
