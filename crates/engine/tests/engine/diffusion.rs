//! Stable Diffusion port: parity with diffusers / transformers on tiny seeded models (our UNet: SD 1.5 with 4
//! and 9 input channels, and SDXL with text_time, several transformer layers and linear projections)
//! (tools/fixtures/sd_parity.py, tolerance: relative error under 1e-4 in float32), the tokenizer against
//! transformers' CLIPTokenizer, and the inpainting loop on a whole tiny model (determinism, cancellation,
//! single-file layout == diffusers layout).

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use likeness_engine::diffusion::clip::ClipTextModel;
use likeness_engine::diffusion::config::{self, ScheduleConfig, Spacing};
use likeness_engine::diffusion::pipeline::{inpaint, DiffusionModel, InpaintRequest};
use likeness_engine::diffusion::scheduler::{SamplerKind, Scheduler};
use likeness_engine::diffusion::single_file::Configs;
use likeness_engine::diffusion::tokenizer::ClipTokenizer;
use likeness_engine::diffusion::unet::{AddedConditions, UNet2DConditionModel};
use likeness_engine::diffusion::vae::Vae;
use likeness_engine::diffusion::{Component, DiffusionFiles, TokenizerFiles};
use likeness_engine::imgops::Mask;
use likeness_engine::progress::CancelToken;
use likeness_engine::EngineError;

use crate::common::{fixture, rel_err};

const TOL: f32 = 1e-4;

fn sd_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sd")
}

/// A fixture file's bytes and its `config` metadata (the module's diffusers / transformers config).
fn with_config(name: &str) -> (Vec<u8>, Vec<u8>) {
    let bytes = std::fs::read(sd_dir().join(name)).expect("fixture");
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("header")) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).expect("header json");
    let cfg = header["__metadata__"]["config"].as_str().expect("config metadata").as_bytes().to_vec();
    (bytes, cfg)
}

fn vb(bytes: Vec<u8>) -> VarBuilder<'static> {
    VarBuilder::from_buffered_safetensors(bytes, DType::F32, &Device::Cpu).expect("vb")
}

#[test]
fn tokenizer_matches_transformers() {
    let tok = ClipTokenizer::bundled().expect("bundled tokenizer");
    let text = std::fs::read_to_string(sd_dir().join("tokenizer.json")).expect("fixture");
    let cases: Vec<serde_json::Value> = serde_json::from_str(&text).expect("json");
    assert!(cases.len() >= 6);
    for c in cases {
        let prompt = c["prompt"].as_str().expect("prompt");
        let want: Vec<u32> = c["ids"].as_array().expect("ids").iter().map(|v| v.as_u64().expect("id") as u32).collect();
        assert_eq!(tok.encode_padded(prompt), want, "prompt {prompt:?}");
    }
}

fn clip_parity(name: &str, projection: bool) {
    let (bytes, cfg) = with_config(name);
    let cfg = config::clip(&cfg).expect("config");
    let f = fixture(&format!("sd/{name}"));
    let model = ClipTextModel::new(&cfg, vb(bytes), projection).expect("model");
    let ids = f["in.ids"].to_dtype(DType::U32).expect("ids");
    let out = model.forward(&ids).expect("forward");
    for (key, got) in [("out.last", &out.last), ("out.penultimate", &out.penultimate), ("out.pooled", &out.pooled)] {
        let e = rel_err(got, &f[key]);
        println!("{name} {key}: rel err {e:.2e}");
        assert!(e < TOL, "{name} {key}: rel err {e}");
    }
}

#[test]
fn clip_text_encoder_matches_transformers() {
    clip_parity("clip.safetensors", false);
}

#[test]
fn sdxl_second_text_encoder_with_projection_matches_transformers() {
    clip_parity("clip2.safetensors", true);
}

/// Our UNet against stock diffusers (exact erf GELU in GEGLU): relative error under 1e-4 in f32.
fn unet_parity(name: &str) {
    let (bytes, cfg) = with_config(name);
    let cfg = config::unet(&cfg).expect("config");
    let f = fixture(&format!("sd/{name}"));
    let unet = UNet2DConditionModel::new(&cfg, vb(bytes)).expect("unet");
    let t = f["in.timestep"].to_vec1::<f32>().expect("t")[0] as f64;
    let added = f.get("in.text_embeds").map(|te| AddedConditions { text_embeds: te, time_ids: &f["in.time_ids"] });
    assert_eq!(added.is_some(), cfg.text_time.is_some(), "{name}: SDXL inputs iff a text_time UNet");
    let out = unet.forward(&f["in.sample"], t, &f["in.context"], added.as_ref()).expect("forward");
    let e = rel_err(&out, &f["out"]);
    println!("{name}: rel err {e:.2e} (stock diffusers)");
    assert!(e < TOL, "{name}: rel err {e}");
    // The 16x16 latent: enough tiles that the first level's 3x3 convolutions run on Winograd.
    if let Some(sample) = f.get("in.sample16") {
        let out = unet.forward(sample, t, &f["in.context"], added.as_ref()).expect("forward 16x16");
        let e = rel_err(&out, &f["out16"]);
        println!("{name}, 16x16 latent: rel err {e:.2e}");
        assert!(e < TOL, "{name} 16x16: rel err {e}");
    }
}

#[test]
fn unet_4_channel_matches_diffusers() {
    unet_parity("unet4.safetensors");
}

#[test]
fn unet_9_channel_inpainting_matches_diffusers() {
    unet_parity("unet9.safetensors");
}

#[test]
fn sdxl_unet_with_text_time_matches_diffusers() {
    unet_parity("unet_xl.safetensors");
}

#[test]
fn vae_encode_decode_match_diffusers() {
    let (bytes, cfg) = with_config("vae.safetensors");
    let cfg = config::vae(&cfg).expect("config");
    let f = fixture("sd/vae.safetensors");
    let vae = Vae::new(&cfg, vb(bytes)).expect("vae");
    let mean = vae.encode_mean(&f["in.image"]).expect("encode");
    let e = rel_err(&mean, &f["out.mean"]);
    println!("vae encode: rel err {e:.2e}");
    assert!(e < TOL, "encode: {e}");
    let img = vae.decode_whole(&f["in.latent"]).expect("decode");
    let e = rel_err(&img, &f["out.image"]);
    println!("vae decode: rel err {e:.2e}");
    assert!(e < TOL, "decode: {e}");
    // Tiled decoding (the blend itself is checked exactly in vae.rs's unit test): the right size, and
    // one tile covering everything is the whole decode.
    let big = Tensor::cat(&[&f["in.latent"], &f["in.latent"], &f["in.latent"]], 3).expect("cat");
    let whole = vae.decode_whole(&big).expect("whole");
    assert_eq!(vae.decode_tiled(&big, 10, 4).expect("tiled").dims(), whole.dims());
    assert!(rel_err(&vae.decode_tiled(&big, 24, 4).expect("one tile"), &whole) < 1e-6);
}

fn scheduler_case(name: &str, kind: SamplerKind, spacing: Option<Spacing>) {
    let f = fixture("sd/schedulers.safetensors");
    let get = |k: &str| f.get(&format!("{name}.{k}")).unwrap_or_else(|| panic!("{name}.{k}")).clone();
    let want_t = get("timesteps").to_vec1::<f32>().expect("t");
    let cfg = ScheduleConfig { spacing, ..ScheduleConfig::default() };
    let mut s = Scheduler::new(kind, &cfg, want_t.len()).expect("scheduler");
    let got_t: Vec<f32> = s.timesteps().iter().map(|&t| t as f32).collect();
    assert_eq!(got_t.len(), want_t.len(), "{name} timesteps");
    for (g, w) in got_t.iter().zip(&want_t) {
        assert!((g - w).abs() <= 1e-3, "{name} timesteps: {got_t:?} vs {want_t:?}");
    }
    let sigma = get("init_noise_sigma").to_vec1::<f32>().expect("sigma")[0];
    assert!((s.init_noise_sigma() as f32 - sigma).abs() <= 1e-4 * sigma.abs().max(1.0), "{name} init sigma");
    let mut sample = get("sample0");
    let mut worst = 0f32;
    for i in 0..want_t.len() {
        let scaled = s.scale_model_input(&sample, i).expect("scale");
        worst = worst.max(rel_err(&scaled, &get(&format!("{i}.scaled"))));
        let noise = get(&format!("{i}.noise"));
        let prev = s.step(&get(&format!("{i}.model_out")), i, &sample, Some(&noise)).expect("step");
        let e = rel_err(&prev, &get(&format!("{i}.prev")));
        worst = worst.max(e);
        // Continue from the reference so one step's error does not compound into the next.
        sample = get(&format!("{i}.prev"));
    }
    println!("{name}: worst rel err over steps {worst:.2e}");
    assert!(worst < TOL, "{name}: rel err {worst}");
}

#[test]
fn ddim_matches_diffusers() {
    scheduler_case("ddim", SamplerKind::Ddim, None);
}

#[test]
fn euler_ancestral_matches_diffusers() {
    scheduler_case("euler_a", SamplerKind::EulerAncestral, None);
    scheduler_case("euler_a_trailing", SamplerKind::EulerAncestral, Some(Spacing::Trailing));
}

#[test]
fn dpmpp_2m_matches_diffusers() {
    scheduler_case("dpmpp_2m", SamplerKind::DpmPp2m, None);
}

#[test]
fn lcm_matches_diffusers() {
    scheduler_case("lcm", SamplerKind::Lcm, None);
}

fn component(dir: &str, weights: &str) -> Component {
    let d = sd_dir().join("tiny").join(dir);
    Component {
        config: std::fs::read(d.join("config.json")).expect("config"),
        weights: std::fs::read(d.join(weights)).expect("weights"),
    }
}

pub fn tiny_files() -> DiffusionFiles {
    DiffusionFiles::Diffusers {
        unet: component("unet", "diffusion_pytorch_model.safetensors"),
        vae: component("vae", "diffusion_pytorch_model.safetensors"),
        text_encoder: component("text_encoder", "model.safetensors"),
        tokenizer: None,
        scheduler_config: Some(std::fs::read(sd_dir().join("tiny/scheduler/scheduler_config.json")).expect("scheduler")),
        text_encoder_2: None,
        tokenizer_2: None,
    }
}

fn tiny_single() -> DiffusionFiles {
    let DiffusionFiles::Diffusers { unet, vae, text_encoder, scheduler_config, .. } = tiny_files() else { unreachable!() };
    DiffusionFiles::SingleFile {
        checkpoint: std::fs::read(sd_dir().join("tiny_single.safetensors")).expect("single"),
        configs: Configs {
            unet: unet.config,
            vae: vae.config,
            text_encoder: text_encoder.config,
            scheduler: scheduler_config.expect("scheduler"),
            text_encoder_2: None,
        },
    }
}

/// The tiny SDXL single file (Stability's layout: `conditioner.embedders.0/1`, OpenCLIP names, `label_emb`)
/// maps onto exactly the tensor names and shapes of the same architecture's diffusers folder, and loads.
#[test]
fn sdxl_single_file_maps_onto_the_diffusers_names_and_runs() {
    use likeness_engine::diffusion::single_file;
    let DiffusionFiles::Diffusers { unet, vae, text_encoder, scheduler_config, text_encoder_2, .. } = sdxl_tiny_files() else {
        unreachable!()
    };
    let text_encoder_2 = text_encoder_2.expect("second encoder");
    let configs = Configs {
        unet: unet.config.clone(),
        vae: vae.config.clone(),
        text_encoder: text_encoder.config.clone(),
        scheduler: scheduler_config.expect("scheduler"),
        text_encoder_2: Some(text_encoder_2.config.clone()),
    };
    let checkpoint = std::fs::read(crate::common::repo_root().join("tests/fixtures/sd_import/sdxl_tiny.safetensors")).expect("single");
    let parts = single_file::split(
        &checkpoint,
        &config::unet(&configs.unet).expect("unet config"),
        &config::vae(&configs.vae).expect("vae config"),
    )
    .expect("split");
    for (what, got, folder) in [
        ("unet", &parts.unet, &unet.weights),
        ("vae", &parts.vae, &vae.weights),
        ("text_encoder", &parts.text_encoder, &text_encoder.weights),
        ("text_encoder_2", &parts.text_encoder_2, &text_encoder_2.weights),
    ] {
        let want = candle_core::safetensors::load_buffer(folder, &Device::Cpu).expect("folder weights");
        let mut a: Vec<_> = got.iter().map(|(k, t)| (k.clone(), t.dims().to_vec())).collect();
        let mut b: Vec<_> = want.iter().filter(|(k, _)| !k.ends_with("position_ids")).map(|(k, t)| (k.clone(), t.dims().to_vec())).collect();
        a.sort();
        b.sort();
        assert_eq!(a, b, "{what}: names and shapes");
    }
    // Every model builds from the mapped tensors. (It cannot be prompted: single files use the bundled
    // 49,408-token tokenizer, this tiny model has 64 tokens, which is refused as such.)
    let model = DiffusionModel::load(DiffusionFiles::SingleFile { checkpoint, configs }, &Device::Cpu).expect("single-file SDXL");
    assert!(model.is_sdxl());
    match model.encode_prompts(&["a photo"]) {
        Err(EngineError::Model { reason, .. }) => assert!(reason.contains("index"), "{reason}"),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("tokens beyond the vocabulary were embedded"),
    }
}

fn test_image(w: u32, h: u32) -> (image::RgbImage, Mask) {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 7) as u8, (y * 5) as u8, ((x + y) * 3) as u8]));
    let mask = Mask::from_fn(w, h, |x, _| image::Luma([if x >= w / 2 { 1.0 } else { 0.0 }]));
    (img, mask)
}

fn run(model: &DiffusionModel, sampler: SamplerKind, seed: u64, cancel: &CancelToken) -> Result<image::RgbImage, EngineError> {
    let (img, mask) = test_image(32, 24);
    let req = InpaintRequest {
        image: &img,
        mask: &mask,
        prompt: "a professional headshot, studio grey backdrop",
        negative_prompt: "blurry",
        steps: 4,
        guidance: 7.0,
        sampler,
        spacing: None,
        seed,
    };
    inpaint(model, &req, &|_, _| {}, cancel)
}

#[test]
fn inpainting_is_deterministic_per_seed_for_every_sampler() {
    let model = DiffusionModel::load(tiny_files(), &Device::Cpu).expect("tiny model");
    assert!(model.is_inpainting());
    for sampler in [SamplerKind::Ddim, SamplerKind::EulerAncestral, SamplerKind::DpmPp2m, SamplerKind::Lcm] {
        let a = run(&model, sampler, 7, &CancelToken::new()).expect("run");
        let b = run(&model, sampler, 7, &CancelToken::new()).expect("run");
        let c = run(&model, sampler, 8, &CancelToken::new()).expect("run");
        assert_eq!((a.width(), a.height()), (32, 24));
        assert_eq!(a, b, "{sampler:?}: same seed, same image");
        assert_ne!(a, c, "{sampler:?}: another seed, another image");
    }
}

#[test]
fn single_file_checkpoint_gives_the_same_image_as_the_diffusers_folder() {
    let a = DiffusionModel::load(tiny_files(), &Device::Cpu).expect("diffusers layout");
    let b = DiffusionModel::load(tiny_single(), &Device::Cpu).expect("single-file layout");
    let x = run(&a, SamplerKind::DpmPp2m, 3, &CancelToken::new()).expect("a");
    let y = run(&b, SamplerKind::DpmPp2m, 3, &CancelToken::new()).expect("b");
    assert_eq!(x, y);
}

#[test]
fn cancellation_stops_between_steps() {
    let model = DiffusionModel::load(tiny_files(), &Device::Cpu).expect("tiny model");
    let cancel = CancelToken::new();
    cancel.cancel();
    assert!(matches!(run(&model, SamplerKind::Ddim, 1, &cancel), Err(EngineError::Cancelled)));
    // Cancelled from the progress callback after the second step: no third step runs.
    let (img, mask) = test_image(32, 24);
    let cancel = CancelToken::new();
    let steps = std::sync::Mutex::new(Vec::new());
    let req = InpaintRequest {
        image: &img,
        mask: &mask,
        prompt: "x",
        negative_prompt: "",
        steps: 6,
        guidance: 7.0,
        sampler: SamplerKind::Ddim,
        spacing: None,
        seed: 1,
    };
    let on_step = |done: usize, _: usize| {
        steps.lock().expect("lock").push(done);
        if done == 2 {
            cancel.cancel();
        }
    };
    assert!(matches!(inpaint(&model, &req, &on_step, &cancel), Err(EngineError::Cancelled)));
    assert_eq!(*steps.lock().expect("lock"), vec![1, 2]);
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let model = DiffusionModel::load(tiny_files(), &Device::Cpu).expect("tiny model");
    let (img, mask) = test_image(30, 24);
    let req = InpaintRequest {
        image: &img,
        mask: &mask,
        prompt: "x",
        negative_prompt: "",
        steps: 2,
        guidance: 7.0,
        sampler: SamplerKind::Ddim,
        spacing: None,
        seed: 1,
    };
    assert!(matches!(inpaint(&model, &req, &|_, _| {}, &CancelToken::new()), Err(EngineError::InvalidOption(_))));
    let DiffusionFiles::Diffusers { unet, vae, mut text_encoder, tokenizer, scheduler_config, .. } = tiny_files() else { unreachable!() };
    text_encoder.weights.truncate(100);
    let broken = DiffusionFiles::Diffusers { unet, vae, text_encoder, tokenizer, scheduler_config, text_encoder_2: None, tokenizer_2: None };
    assert!(matches!(DiffusionModel::load(broken, &Device::Cpu), Err(EngineError::Model { .. })));
}

/// The tiny SDXL diffusers folder of the import fixtures (two text encoders with their own tokenizers,
/// a text_time UNet, float16 files).
fn sdxl_tiny_files() -> DiffusionFiles {
    let d = crate::common::repo_root().join("tests/fixtures/sd_import/sdxl_tiny");
    let comp = |dir: &str, weights: &str| Component {
        config: std::fs::read(d.join(dir).join("config.json")).expect("config"),
        weights: std::fs::read(d.join(dir).join(weights)).expect("weights"),
    };
    let tok = |dir: &str| TokenizerFiles {
        vocab_json: std::fs::read(d.join(dir).join("vocab.json")).expect("vocab"),
        merges: std::fs::read_to_string(d.join(dir).join("merges.txt")).expect("merges"),
    };
    DiffusionFiles::Diffusers {
        unet: comp("unet", "diffusion_pytorch_model.fp16.safetensors"),
        vae: comp("vae", "diffusion_pytorch_model.fp16.safetensors"),
        text_encoder: comp("text_encoder", "model.fp16.safetensors"),
        tokenizer: Some(tok("tokenizer")),
        scheduler_config: Some(std::fs::read(d.join("scheduler/scheduler_config.json")).expect("scheduler")),
        text_encoder_2: Some(comp("text_encoder_2", "model.fp16.safetensors")),
        tokenizer_2: Some(tok("tokenizer_2")),
    }
}

#[test]
fn sdxl_inpainting_runs_deterministically_and_conditions_on_the_prompt() {
    let model = DiffusionModel::load(sdxl_tiny_files(), &Device::Cpu).expect("tiny SDXL");
    assert!(model.is_sdxl() && !model.is_inpainting());
    let cond = model.encode_prompts(&["a photo", "photo"]).expect("encode");
    assert_eq!(cond.context.dims(), &[2, 77, 16 + 24], "both encoders' widths side by side");
    assert_eq!(cond.pooled.as_ref().expect("pooled").dims(), &[2, 24], "the second encoder's projection");
    // No negative prompt: SDXL's unconditional branch is zeros (diffusers' force_zeros_for_empty_prompt),
    // the conditional branch the prompt's own encoding.
    let g = model.guidance_conditioning("a photo", " ").expect("guidance");
    let pos = model.encode_prompts(&["a photo"]).expect("encode");
    let abs_sum = |t: &candle_core::Tensor| t.abs().and_then(|a| a.sum_all()).and_then(|s| s.to_scalar::<f32>()).expect("sum");
    assert_eq!(abs_sum(&g.context.narrow(0, 0, 1).expect("row")), 0.0);
    assert_eq!(abs_sum(&g.pooled.as_ref().expect("pooled").narrow(0, 0, 1).expect("row")), 0.0);
    let diff = (g.context.narrow(0, 1, 1).expect("row") - &pos.context).expect("diff");
    assert_eq!(abs_sum(&diff), 0.0);
    // A negative prompt is encoded, not zeroed.
    let n = model.guidance_conditioning("a photo", "blurry").expect("guidance");
    assert!(abs_sum(&n.context.narrow(0, 0, 1).expect("row")) > 0.0);
    let a = run(&model, SamplerKind::EulerAncestral, 7, &CancelToken::new()).expect("run");
    let b = run(&model, SamplerKind::EulerAncestral, 7, &CancelToken::new()).expect("run");
    let c = run(&model, SamplerKind::EulerAncestral, 8, &CancelToken::new()).expect("run");
    assert_eq!(a, b, "same seed, same image");
    assert_ne!(a, c, "another seed, another image");
    // Without the second text encoder the SDXL UNet is refused with what to do.
    let DiffusionFiles::Diffusers { unet, vae, text_encoder, tokenizer, scheduler_config, .. } = sdxl_tiny_files() else { unreachable!() };
    let half = DiffusionFiles::Diffusers { unet, vae, text_encoder, tokenizer, scheduler_config, text_encoder_2: None, tokenizer_2: None };
    match DiffusionModel::load(half, &Device::Cpu) {
        Err(EngineError::Model { model, reason }) => assert!(model.contains("text_encoder") && reason.contains("width"), "{model}: {reason}"),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("an SDXL UNet without its second encoder loaded"),
    }
}

/// The whole generative look on a real photo (bundled face / mesh / segmentation models, the tiny diffusion
/// model): inside the face oval (away from the seam) every output pixel is the framed photo's own pixel.
/// (SDXL's whole look is checked through the CLI, tests/cli/generative.rs.)
#[test]
fn generative_headshot_keeps_the_real_face_pixels() {
    keeps_the_real_face(tiny_files());
}

fn keeps_the_real_face(files: DiffusionFiles) {
    use likeness_engine::framing;
    use likeness_engine::generative::{generative_headshots, Attire, GenBackdrop, GenerativeStyle, Quality};
    use likeness_engine::imgops::{self, Border};
    use likeness_engine::pipeline::{analyze, face_geometry, HeadshotRequest, ModelBytes, StudioModels};

    let studio = StudioModels::load(
        ModelBytes {
            blazeface_front: crate::common::model_bytes("blazeface_front_128.safetensors"),
            blazeface_back: Some(crate::common::model_bytes("blazeface_back_256.safetensors")),
            face_mesh: crate::common::model_bytes("face_mesh_468.safetensors"),
            selfie: crate::common::model_bytes("selfie_segmentation_256.safetensors"),
        },
        &Device::Cpu,
    )
    .expect("studio models");
    let model = DiffusionModel::load(files, &Device::Cpu).expect("tiny model");
    let input = std::fs::read(crate::common::repo_root().join("assets/photos/grace_hopper_512x512.jpg")).expect("photo");
    let req = HeadshotRequest { max_short_side: 256, ..HeadshotRequest::default() };
    let style = GenerativeStyle {
        attire: Attire::Suit,
        backdrop: GenBackdrop::Office,
        quality: Quality::Draft,
        variants: 2,
        seed: 11,
        steps: Some(2),
        ..GenerativeStyle::default()
    };
    let shots = generative_headshots(&studio, &model, &input, &req, &style, &|_, _| {}, &CancelToken::new()).expect("generate");
    assert_eq!(shots.len(), 2);

    // The framed crop, computed the way the pipeline does.
    let a = analyze(&studio, &input, &req.limits, true).expect("analyze");
    let lm = a.landmarks.expect("landmarks");
    let fr = framing::frame(&face_geometry(&lm), a.image.width(), a.image.height(), req.preset, req.max_short_side).expect("frame");
    let crop = imgops::warp_rgb(&a.image, &fr.src_from_dst, fr.width, fr.height, Border::Replicate);
    let inv = fr.src_from_dst.invert().expect("invert");
    let oval: Vec<[f32; 2]> = lm.face_oval().into_iter().map(|p| inv.apply(p)).collect();
    // Shrink the oval towards its centre by 15% to stay clear of the feathered seam.
    let c = oval.iter().fold([0.0, 0.0], |s, p| [s[0] + p[0], s[1] + p[1]]).map(|v| v / oval.len() as f32);
    let inner: Vec<[f32; 2]> = oval.iter().map(|p| [c[0] + 0.85 * (p[0] - c[0]), c[1] + 0.85 * (p[1] - c[1])]).collect();
    let face = likeness_engine::composite::rasterize_polygon(&inner, fr.width, fr.height);
    let outs: Vec<image::RgbImage> =
        shots.iter().map(|s| image::load_from_memory(&s.encoded).expect("decode").to_rgb8()).collect();
    let (mut n_face, mut n_changed) = (0, 0);
    for (x, y, m) in face.enumerate_pixels() {
        if m[0] >= 0.99 {
            n_face += 1;
            for o in &outs {
                assert_eq!(o.get_pixel(x, y), crop.get_pixel(x, y), "face pixel ({x},{y}) changed");
            }
        }
    }
    for (p, q) in outs[0].pixels().zip(crop.pixels()) {
        n_changed += usize::from(p != q);
    }
    assert!(n_face > 2000, "face region too small: {n_face}");
    assert!(n_changed > 10_000, "the backdrop was not regenerated: {n_changed} pixels changed");
    assert_ne!(outs[0], outs[1], "variants differ");
}

/// SD 1.5 has no zeroed branch: an empty negative prompt is encoded like any other (as diffusers does).
#[test]
fn sd15_guidance_encodes_an_empty_negative_prompt() {
    let model = DiffusionModel::load(tiny_files(), &Device::Cpu).expect("tiny SD 1.5");
    let g = model.guidance_conditioning("a photo", "").expect("guidance");
    let pair = model.encode_prompts(&["", "a photo"]).expect("encode");
    assert!(g.pooled.is_none());
    let diff = (&g.context - &pair.context).and_then(|d| d.abs()).and_then(|d| d.max_all()).and_then(|m| m.to_scalar::<f32>());
    assert_eq!(diff.expect("diff"), 0.0);
    let empty = g.context.narrow(0, 0, 1).and_then(|r| r.abs()).and_then(|a| a.sum_all()).and_then(|s| s.to_scalar::<f32>());
    assert!(empty.expect("sum") > 0.0, "the empty prompt's encoding is not zeros");
}
