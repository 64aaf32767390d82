//! Which Stable Diffusion a set of weights is, from tensor names and shapes only.
//!
//! The caller reads the safetensors JSON headers (never the data) and passes every tensor's name
//! and shape. Two layouts are understood:
//!
//! - **single file**, the original Stable Diffusion (LDM / SGM) layout most community checkpoints
//!   ship in: `model.diffusion_model.*` (UNet), `first_stage_model.*` (VAE), `cond_stage_model.*`
//!   (SD 1.x / 2.x text encoder) or `conditioner.embedders.N.*` (SDXL's two text encoders);
//! - **diffusers**, a folder with one safetensors per component: the caller prefixes each tensor name
//!   with its component folder (`unet/conv_in.weight`, `vae/...`, `text_encoder/...`,
//!   `text_encoder_2/...`).
//!
//! The decision uses shape *relationships* as well as the published sizes, so the tiny
//! random-weight models of the tests are classified like the real ones:
//!
//! - UNet input channels (`conv_in` / `input_blocks.0.0`): 4 = text-to-image, 9 = inpainting
//!   (latents + mask + masked-image latents); anything else is refused;
//! - the UNet's cross-attention width (`attn2.to_k` input size) must equal the text encoder's hidden
//!   size (SDXL: the two encoders' sum); the real models use 768 (SD 1.x), 1024 (SD 2.x / Turbo),
//!   2048 (SDXL);
//! - SDXL has a second text encoder and the UNet's `add_embedding` (`label_emb` in the single file);
//! - SD 2.x (and SD-Turbo, a distilled SD 2.1) uses linear `proj_in` layers (2-D weights) and an
//!   OpenCLIP text encoder (`cond_stage_model.model.*` in the single file); SD 1.x uses 1x1
//!   convolutions (4-D) and OpenAI CLIP (`cond_stage_model.transformer.*`).
//!
//! SD-Turbo and SD 2.1 base have the same names and shapes: `detect` says so
//! ([`Detected::ambiguous_sd2`]) and the caller decides from what else it knows (the known sha256 of
//! the official file, the folder's `model_index.json`, the user's explicit choice).

use std::collections::HashMap;
use std::fmt;

use thiserror::Error;

/// The Stable Diffusion variants Likeness runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arch {
    Sd15,
    Sd15Inpaint,
    Sdxl,
    SdxlInpaint,
    SdTurbo,
}

impl Arch {
    pub const ALL: [Arch; 5] = [Arch::Sd15, Arch::Sd15Inpaint, Arch::Sdxl, Arch::SdxlInpaint, Arch::SdTurbo];

    /// The stable name used in records, JSON and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Sd15 => "sd15",
            Arch::Sd15Inpaint => "sd15-inpaint",
            Arch::Sdxl => "sdxl",
            Arch::SdxlInpaint => "sdxl-inpaint",
            Arch::SdTurbo => "sd-turbo",
        }
    }

    /// The UNet takes the 9-channel inpainting input.
    pub fn is_inpaint(self) -> bool {
        matches!(self, Arch::Sd15Inpaint | Arch::SdxlInpaint)
    }

    /// SDXL family: two text encoders, pooled embedding and micro-conditioning.
    pub fn is_sdxl(self) -> bool {
        matches!(self, Arch::Sdxl | Arch::SdxlInpaint)
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Arch {
    type Err = DetectError;
    fn from_str(s: &str) -> Result<Self, DetectError> {
        Arch::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| DetectError::UnknownArchName(s.to_string()))
    }
}

/// How the weights are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layout {
    /// A diffusers folder (unet/, vae/, text_encoder/ ...).
    Diffusers,
    /// One file in the original Stable Diffusion layout.
    SingleFile,
}

impl Layout {
    pub fn name(self) -> &'static str {
        match self {
            Layout::Diffusers => "diffusers",
            Layout::SingleFile => "single-file",
        }
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What `detect` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Detected {
    pub arch: Arch,
    pub layout: Layout,
    /// The SD 2.x family: SD-Turbo and SD 2.1 cannot be told apart by shapes. `arch` is then
    /// `SdTurbo` (the only SD 2.x model Likeness runs) and the caller must confirm it.
    pub ambiguous_sd2: bool,
    /// UNet cross-attention width (768 / 1024 / 2048 for the real models).
    pub context_dim: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DetectError {
    #[error("no Stable Diffusion UNet, VAE or text encoder in it ({0}); import a full Stable Diffusion model (a diffusers folder or a single .safetensors checkpoint)")]
    NotStableDiffusion(String),
    #[error("this is only {what}, not a full Stable Diffusion model; import the whole model (a diffusers folder or a single-file checkpoint with UNet, VAE and text encoder)")]
    Partial { what: &'static str },
    #[error("the model is incomplete: {missing} is missing; import the whole model")]
    Missing { missing: String },
    #[error("the tensor {name} has shape {shape:?}, which does not fit a Stable Diffusion model ({why})")]
    BadShape { name: String, shape: Vec<usize>, why: String },
    #[error("{0} is not supported; Likeness runs SD 1.5, SD 1.5 inpainting, SDXL, SDXL inpainting and SD-Turbo")]
    Unsupported(String),
    #[error("unknown architecture '{0}'; use one of sd15, sd15-inpaint, sdxl, sdxl-inpaint, sd-turbo")]
    UnknownArchName(String),
}

/// Classifies a model from its tensors' names and shapes (see the module doc for the layouts).
pub fn detect(tensors: &[(String, Vec<usize>)]) -> Result<Detected, DetectError> {
    let t: HashMap<&str, &[usize]> = tensors.iter().map(|(n, s)| (n.as_str(), s.as_slice())).collect();
    let any = |p: &str| tensors.iter().any(|(n, _)| n.starts_with(p));
    let diffusers = any("unet/") || any("vae/") || any("text_encoder/") || any("text_encoder_2/");
    let single = any("model.diffusion_model.") || any("first_stage_model.") || any("cond_stage_model.") || any("conditioner.");
    if diffusers && single {
        return Err(DetectError::NotStableDiffusion("it mixes the diffusers and the single-file layout".into()));
    }
    if diffusers {
        let p = Parts {
            unet: "unet/",
            conv_in: "unet/conv_in.weight",
            add_emb: "unet/add_embedding.linear_1.weight",
            vae: ["vae/encoder.conv_in.weight", "vae/decoder.conv_out.weight"],
            te1: te_hf("text_encoder/"),
            te1_openclip: None,
            te2: te_hf("text_encoder_2/"),
            layout: Layout::Diffusers,
        };
        return classify(&t, tensors, &p);
    }
    if single {
        // SDXL keeps its encoders under conditioner.embedders; SD 1.x / 2.x under cond_stage_model.
        let sgm = any("conditioner.embedders.");
        if sgm && any("conditioner.embedders.0.model.") && !any("conditioner.embedders.1.") {
            return Err(DetectError::Unsupported("the SDXL refiner (one OpenCLIP text encoder)".into()));
        }
        let p = Parts {
            unet: "model.diffusion_model.",
            conv_in: "model.diffusion_model.input_blocks.0.0.weight",
            add_emb: "model.diffusion_model.label_emb.0.0.weight",
            vae: ["first_stage_model.encoder.conv_in.weight", "first_stage_model.decoder.conv_out.weight"],
            te1: if sgm { te_hf("conditioner.embedders.0.transformer.") } else { te_hf("cond_stage_model.transformer.") },
            te1_openclip: if sgm { None } else { Some("cond_stage_model.model.token_embedding.weight") },
            te2: if sgm { te_openclip("conditioner.embedders.1.model.") } else { TextEncoder::none() },
            layout: Layout::SingleFile,
        };
        return classify(&t, tensors, &p);
    }
    Err(not_sd(tensors))
}

/// Where a text encoder's token embedding may be (transformers renamed `embeddings` into
/// `text_model.embeddings` in 2022; old checkpoints have both spellings).
struct TextEncoder {
    embeddings: Vec<String>,
}

impl TextEncoder {
    fn none() -> Self {
        TextEncoder { embeddings: Vec::new() }
    }
    fn hidden(&self, t: &HashMap<&str, &[usize]>) -> Option<(String, Vec<usize>)> {
        self.embeddings.iter().find_map(|n| t.get(n.as_str()).map(|s| (n.clone(), s.to_vec())))
    }
}

fn te_hf(prefix: &str) -> TextEncoder {
    TextEncoder {
        embeddings: vec![
            format!("{prefix}text_model.embeddings.token_embedding.weight"),
            format!("{prefix}embeddings.token_embedding.weight"),
        ],
    }
}

fn te_openclip(prefix: &str) -> TextEncoder {
    TextEncoder { embeddings: vec![format!("{prefix}token_embedding.weight")] }
}

struct Parts {
    unet: &'static str,
    conv_in: &'static str,
    add_emb: &'static str,
    vae: [&'static str; 2],
    te1: TextEncoder,
    /// SD 2.x single files: the OpenCLIP encoder under cond_stage_model.model.
    te1_openclip: Option<&'static str>,
    te2: TextEncoder,
    layout: Layout,
}

fn classify(t: &HashMap<&str, &[usize]>, tensors: &[(String, Vec<usize>)], p: &Parts) -> Result<Detected, DetectError> {
    let unet = tensors.iter().any(|(n, _)| n.starts_with(p.unet));
    let vae = p.vae.iter().all(|n| t.contains_key(n));
    let te1 = p.te1.hidden(t);
    let te1_oc = p.te1_openclip.and_then(|n| t.get(n).map(|s| (n.to_string(), s.to_vec())));
    let te2 = p.te2.hidden(t);
    let any_te = te1.is_some() || te1_oc.is_some() || te2.is_some();
    if !unet {
        return Err(match (vae, any_te) {
            (true, false) => DetectError::Partial { what: "a VAE" },
            (false, true) => DetectError::Partial { what: "a text encoder" },
            (true, true) => DetectError::Partial { what: "a VAE and a text encoder (no UNet)" },
            (false, false) => not_sd(tensors),
        });
    }
    if !vae {
        return Err(DetectError::Missing { missing: format!("the VAE ({})", p.vae.join(", ")) });
    }

    // UNet input: 4 latent channels, or 9 for inpainting.
    let conv_in = get(t, p.conv_in, "the UNet input convolution")?;
    let in_ch = match conv_in.as_slice() {
        [_, c, 3, 3] => *c,
        s => return Err(bad(p.conv_in, s, "expected a 3x3 convolution weight [out, in, 3, 3]")),
    };
    let inpaint = match in_ch {
        4 => false,
        9 => true,
        8 => return Err(DetectError::Unsupported("an 8-channel UNet (InstructPix2Pix-style editing model)".into())),
        c => return Err(bad(p.conv_in, &conv_in, &format!("{c} input channels; Stable Diffusion has 4, or 9 for inpainting"))),
    };

    // Cross-attention width: every attn2.to_k must agree.
    let mut ctx = None;
    for (n, s) in tensors {
        if n.starts_with(p.unet) && n.ends_with("attn2.to_k.weight") {
            let c = match s.as_slice() {
                [_, c] => *c,
                _ => return Err(bad(n, s, "a cross-attention key projection is a 2-D matrix")),
            };
            match ctx {
                None => ctx = Some(c),
                Some(prev) if prev != c => return Err(bad(n, s, &format!("other cross-attention layers take width {prev}"))),
                Some(_) => {}
            }
        }
    }
    let ctx = ctx.ok_or_else(|| DetectError::Missing { missing: "the UNet's cross-attention layers (attn2.to_k)".into() })?;

    // SD 2.x and SDXL project attention inputs with linear layers; SD 1.x with 1x1 convolutions.
    let linear_proj = tensors
        .iter()
        .find(|(n, _)| n.starts_with(p.unet) && n.ends_with("proj_in.weight"))
        .map(|(_, s)| s.len() == 2);

    let add_emb = t.get(p.add_emb).map(|s| s.to_vec());
    let xl = add_emb.is_some() || te2.is_some();
    if xl {
        let Some(add) = add_emb else {
            return Err(DetectError::Missing { missing: "the SDXL UNet's add_embedding (label_emb)".into() });
        };
        let Some((n1, s1)) = te1 else {
            return Err(DetectError::Missing { missing: "the first text encoder (CLIP ViT-L)".into() });
        };
        let Some((n2, s2)) = te2 else {
            return Err(DetectError::Missing { missing: "the second text encoder (OpenCLIP ViT-bigG)".into() });
        };
        let (h1, h2) = (hidden_of(&n1, &s1)?, hidden_of(&n2, &s2)?);
        if h1 + h2 != ctx {
            return Err(bad(
                p.conv_in,
                &conv_in,
                &format!("the UNet attends to width {ctx} but the text encoders give {h1} + {h2}"),
            ));
        }
        if !matches!(add.as_slice(), [_, _]) {
            return Err(bad(p.add_emb, &add, "the add embedding is a 2-D matrix"));
        }
        // Published SDXL: 2048 = 768 + 1280. Other standard widths mean another model.
        if is_standard(ctx) && (ctx != 2048 || h1 != 768) {
            return Err(DetectError::Unsupported(format!("an SDXL-like model with text widths {h1} + {h2}")));
        }
        let arch = if inpaint { Arch::SdxlInpaint } else { Arch::Sdxl };
        return Ok(Detected { arch, layout: p.layout, ambiguous_sd2: false, context_dim: ctx });
    }

    // SD 1.x / 2.x: one text encoder.
    let (te_name, te_shape, openclip) = match (te1, te1_oc) {
        (Some((n, s)), _) => (n, s, false),
        (None, Some((n, s))) => (n, s, true),
        (None, None) => return Err(DetectError::Missing { missing: "the text encoder".into() }),
    };
    let h = hidden_of(&te_name, &te_shape)?;
    if h != ctx {
        return Err(bad(&te_name, &te_shape, &format!("the UNet attends to width {ctx} but the text encoder gives {h}")));
    }
    let sd2 = match ctx {
        768 => false,
        1024 => true,
        2048 => return Err(DetectError::Missing { missing: "the SDXL UNet's add_embedding and second text encoder".into() }),
        // Non-standard widths (tiny test models): decide by structure.
        _ => openclip || linear_proj == Some(true),
    };
    if sd2 && linear_proj == Some(false) {
        return Err(DetectError::Unsupported("an SD 2.x-width model with SD 1.x attention layers".into()));
    }
    if sd2 {
        if inpaint {
            return Err(DetectError::Unsupported("SD 2.x inpainting".into()));
        }
        return Ok(Detected { arch: Arch::SdTurbo, layout: p.layout, ambiguous_sd2: true, context_dim: ctx });
    }
    let arch = if inpaint { Arch::Sd15Inpaint } else { Arch::Sd15 };
    Ok(Detected { arch, layout: p.layout, ambiguous_sd2: false, context_dim: ctx })
}

fn is_standard(ctx: usize) -> bool {
    matches!(ctx, 768 | 1024 | 1280 | 2048)
}

/// A token embedding is [vocab, hidden].
fn hidden_of(name: &str, shape: &[usize]) -> Result<usize, DetectError> {
    match shape {
        [_, h] => Ok(*h),
        s => Err(bad(name, s, "a token embedding is [vocab, hidden]")),
    }
}

fn get(t: &HashMap<&str, &[usize]>, name: &str, what: &str) -> Result<Vec<usize>, DetectError> {
    t.get(name).map(|s| s.to_vec()).ok_or_else(|| DetectError::Missing { missing: format!("{what} ({name})") })
}

fn bad(name: &str, shape: &[usize], why: &str) -> DetectError {
    DetectError::BadShape { name: name.to_string(), shape: shape.to_vec(), why: why.to_string() }
}

/// Names a few things a wrong file commonly is.
fn not_sd(tensors: &[(String, Vec<usize>)]) -> DetectError {
    let any = |p: &str| tensors.iter().any(|(n, _)| n.starts_with(p) || n.contains(p));
    if tensors.is_empty() {
        return DetectError::NotStableDiffusion("it holds no tensors".into());
    }
    if any("lora_unet_") || any("lora_te") || tensors.iter().any(|(n, _)| n.contains(".lora_")) {
        return DetectError::Partial { what: "a LoRA (a small add-on to a model)" };
    }
    let vae_only = ["encoder.conv_in.weight", "decoder.conv_out.weight"].iter().all(|k| tensors.iter().any(|(n, _)| n == k));
    if vae_only {
        return DetectError::Partial { what: "a VAE" };
    }
    if any("text_model.embeddings.") {
        return DetectError::Partial { what: "a text encoder" };
    }
    if tensors.iter().any(|(n, _)| n == "conv_in.weight") && any("down_blocks.") {
        return DetectError::Partial { what: "a bare UNet (put it in a diffusers folder with its VAE and text encoder)" };
    }
    let first = tensors.iter().map(|(n, _)| n.as_str()).take(3).collect::<Vec<_>>().join(", ");
    DetectError::NotStableDiffusion(format!("its tensors are named like {first}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sd15_single(in_ch: usize, ctx: usize) -> Vec<(String, Vec<usize>)> {
        vec![
            ("model.diffusion_model.input_blocks.0.0.weight".into(), vec![320, in_ch, 3, 3]),
            ("model.diffusion_model.input_blocks.1.1.proj_in.weight".into(), vec![320, 320, 1, 1]),
            ("model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight".into(), vec![320, ctx]),
            ("model.diffusion_model.output_blocks.11.1.transformer_blocks.0.attn2.to_k.weight".into(), vec![320, ctx]),
            ("first_stage_model.encoder.conv_in.weight".into(), vec![128, 3, 3, 3]),
            ("first_stage_model.decoder.conv_out.weight".into(), vec![3, 128, 3, 3]),
            ("cond_stage_model.transformer.text_model.embeddings.token_embedding.weight".into(), vec![49408, ctx]),
        ]
    }

    #[test]
    fn sd15_and_inpainting_by_input_channels() {
        let d = detect(&sd15_single(4, 768)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((d.arch, d.layout, d.ambiguous_sd2), (Arch::Sd15, Layout::SingleFile, false));
        let d = detect(&sd15_single(9, 768)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(d.arch, Arch::Sd15Inpaint);
        assert!(matches!(detect(&sd15_single(5, 768)), Err(DetectError::BadShape { .. })));
    }

    #[test]
    fn mismatched_text_width_is_refused() {
        let mut t = sd15_single(4, 768);
        t[6].1 = vec![49408, 1024];
        assert!(matches!(detect(&t), Err(DetectError::BadShape { .. })));
    }

    #[test]
    fn vae_only_and_unrelated_files() {
        let vae = vec![("encoder.conv_in.weight".to_string(), vec![128, 3, 3, 3]), ("decoder.conv_out.weight".to_string(), vec![3, 128, 3, 3])];
        assert_eq!(detect(&vae), Err(DetectError::Partial { what: "a VAE" }));
        let face = vec![("backbone.0.weight".to_string(), vec![24, 3, 5, 5])];
        assert!(matches!(detect(&face), Err(DetectError::NotStableDiffusion(_))));
        assert!(matches!(detect(&[]), Err(DetectError::NotStableDiffusion(_))));
    }

    fn named(v: &[(&str, &[usize])]) -> Vec<(String, Vec<usize>)> {
        v.iter().map(|(n, s)| (n.to_string(), s.to_vec())).collect()
    }

    /// The published SDXL base single file's shapes (conv_in, attention widths, label_emb, encoders).
    #[test]
    fn real_sdxl_single_file_shapes() {
        let mut t = named(&[
            ("model.diffusion_model.input_blocks.0.0.weight", &[320, 4, 3, 3]),
            ("model.diffusion_model.input_blocks.4.1.proj_in.weight", &[640, 640]),
            ("model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight", &[640, 2048]),
            ("model.diffusion_model.label_emb.0.0.weight", &[1280, 2816]),
            ("first_stage_model.encoder.conv_in.weight", &[128, 3, 3, 3]),
            ("first_stage_model.decoder.conv_out.weight", &[3, 128, 3, 3]),
            ("conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight", &[49408, 768]),
            ("conditioner.embedders.1.model.token_embedding.weight", &[49408, 1280]),
        ]);
        let d = detect(&t).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((d.arch, d.layout, d.context_dim), (Arch::Sdxl, Layout::SingleFile, 2048));
        t[0].1 = vec![320, 9, 3, 3];
        assert_eq!(detect(&t).map(|d| d.arch), Ok(Arch::SdxlInpaint));
        // Without the second encoder it is not a usable SDXL.
        t.pop();
        assert!(matches!(detect(&t), Err(DetectError::Missing { .. })));
        // The refiner: only the OpenCLIP encoder, as embedders.0.
        t.pop();
        t.push(("conditioner.embedders.0.model.token_embedding.weight".into(), vec![49408, 1280]));
        assert!(matches!(detect(&t), Err(DetectError::Unsupported(_))));
    }

    /// SD 2.1 / SD-Turbo (diffusers names): the same shapes, so the caller must confirm.
    #[test]
    fn sd2_family_is_flagged_ambiguous() {
        let t = named(&[
            ("unet/conv_in.weight", &[320, 4, 3, 3]),
            ("unet/down_blocks.0.attentions.0.proj_in.weight", &[320, 320]),
            ("unet/down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight", &[320, 1024]),
            ("vae/encoder.conv_in.weight", &[128, 3, 3, 3]),
            ("vae/decoder.conv_out.weight", &[3, 128, 3, 3]),
            ("text_encoder/text_model.embeddings.token_embedding.weight", &[49408, 1024]),
        ]);
        let d = detect(&t).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((d.arch, d.layout, d.ambiguous_sd2), (Arch::SdTurbo, Layout::Diffusers, true));
        let mut inpaint = t.clone();
        inpaint[0].1 = vec![320, 9, 3, 3];
        assert!(matches!(detect(&inpaint), Err(DetectError::Unsupported(_))));
        // An SD 2.x single file keeps its OpenCLIP encoder under cond_stage_model.model.
        let single = named(&[
            ("model.diffusion_model.input_blocks.0.0.weight", &[320, 4, 3, 3]),
            ("model.diffusion_model.input_blocks.1.1.proj_in.weight", &[320, 320]),
            ("model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight", &[320, 1024]),
            ("first_stage_model.encoder.conv_in.weight", &[128, 3, 3, 3]),
            ("first_stage_model.decoder.conv_out.weight", &[3, 128, 3, 3]),
            ("cond_stage_model.model.token_embedding.weight", &[49408, 1024]),
        ]);
        assert_eq!(detect(&single).map(|d| (d.arch, d.ambiguous_sd2)), Ok((Arch::SdTurbo, true)));
    }

    #[test]
    fn lora_and_bare_unet_are_named() {
        let lora = named(&[("lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight", &[4, 320, 1, 1])]);
        assert!(matches!(detect(&lora), Err(DetectError::Partial { .. })));
        let unet = named(&[("conv_in.weight", &[320, 4, 3, 3]), ("down_blocks.0.resnets.0.conv1.weight", &[320, 320, 3, 3])]);
        assert!(matches!(detect(&unet), Err(DetectError::Partial { .. })));
    }

    #[test]
    fn arch_names_round_trip() {
        for a in Arch::ALL {
            assert_eq!(a.name().parse::<Arch>(), Ok(a));
        }
        assert!("sd21".parse::<Arch>().is_err());
    }
}
