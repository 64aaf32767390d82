//! The generative look in the worker: a job's settings -> the engine's style, an imported model's files ->
//! bytes for the engine, and the runner that sends each job to the studio or the generative pipeline.
//!
//! Imported models live in `<data dir>/models/imported/<id>/` (written by `likeness models import`): a
//! diffusers folder (`unet/`, `vae/`, `text_encoder/`, optional `tokenizer/`, `scheduler/`) or one
//! single-file checkpoint. A path to such a folder or file is accepted as the model too.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use likeness_engine::diffusion::pipeline::DiffusionModel;
use likeness_engine::diffusion::single_file::Configs;
use likeness_engine::diffusion::{Component, DiffusionFiles, Device, TokenizerFiles};
use likeness_engine::error::EngineError;
use likeness_engine::generative::{self, Attire, GenBackdrop, GenerativeStyle, Lighting, Quality, Sampling};
use likeness_engine::progress::{CancelToken, ProgressSink};
use zeroize::Zeroizing;

use crate::error::{CoreError, Result};
use crate::import::{DiffusersComponent, DiffusionFiles as ImportedFiles, ImportError, InstalledDiffusion};
use crate::memory;
use crate::models::ModelStore;
use likeness_engine::diffusion::detect::Arch;
use crate::library::{ClaimedJob, NewOutput};
use crate::worker::{JobRunner, RunError, StudioRunner, StudioSettings};

pub use crate::import::imported_dir;

fn invalid(m: impl Into<String>) -> CoreError {
    CoreError::InvalidSettings(m.into())
}

impl StudioSettings {
    /// Whether the job uses the generative look.
    pub fn is_generative(&self) -> bool {
        self.look == "generative"
    }

    /// The generative style of these settings (checked; the model id is `self.model`).
    pub fn generative_style(&self) -> Result<GenerativeStyle> {
        let e = |e: EngineError| invalid(e.to_string());
        if !(1..=16).contains(&self.variants) {
            return Err(invalid(format!("{} variants requested; use 1 to 16", self.variants)));
        }
        // The studio look's default backdrop means "no preference": studio grey.
        let backdrop = match self.backdrop.as_str() {
            "gradient" | "light-grey" | "dark-grey" | "charcoal" => GenBackdrop::StudioGrey,
            b => GenBackdrop::parse(b).map_err(e)?,
        };
        Ok(GenerativeStyle {
            attire: Attire::parse(&self.attire).map_err(e)?,
            backdrop,
            lighting: Lighting::parse(&self.lighting).map_err(e)?,
            quality: Quality::parse(&self.gen_quality).map_err(e)?,
            sampling: Sampling::Standard,
            variants: self.variants,
            seed: self.seed,
            steps: self.steps.map(|s| s as usize),
        })
    }

    /// Checks the look's own options (the model's presence is checked when it is loaded).
    pub fn check_look(&self) -> Result<()> {
        Quality::parse(&self.gen_quality).map_err(|e| invalid(e.to_string()))?;
        match self.look.as_str() {
            "studio" => Ok(()),
            "generative" => {
                if self.model.as_deref().unwrap_or("").is_empty() {
                    return Err(invalid("the generative look needs a model: import one with `likeness models import` and pass --model ID"));
                }
                self.generative_style().map(|_| ())
            }
            other => Err(invalid(format!("unknown look '{other}'; use studio or generative"))),
        }
    }
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| CoreError::io("read the model file", path, e))
}

/// The weights file of a diffusers component folder (the fp16 variant when it is the only one).
fn weights_in(dir: &Path) -> Result<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| CoreError::io("read the model folder", dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    found.sort();
    // Prefer the full-precision file when both are present; either loads.
    found
        .iter()
        .find(|p| !p.to_string_lossy().contains(".fp16."))
        .or_else(|| found.first())
        .cloned()
        .ok_or_else(|| invalid(format!("{} holds no .safetensors weights; re-import the model", dir.display())))
}

/// A tokenizer folder's files, when both are there (else the bundled CLIP tokenizer is used).
fn tokenizer_in(dir: &Path) -> Option<TokenizerFiles> {
    match (std::fs::read(dir.join("vocab.json")), std::fs::read_to_string(dir.join("merges.txt"))) {
        (Ok(vocab_json), Ok(merges)) => Some(TokenizerFiles { vocab_json, merges }),
        _ => None,
    }
}

/// The weight files of a model given by path: a diffusers folder's components (`unet`, `vae`,
/// `text_encoder`, SDXL's `text_encoder_2`) or one checkpoint (`None`).
fn path_weights(path: &Path) -> Result<Vec<(Option<&'static str>, PathBuf)>> {
    if !path.join("unet").join("config.json").is_file() {
        return Ok(vec![(None, if path.is_file() { path.to_path_buf() } else { weights_in(path)? })]);
    }
    let mut found = Vec::new();
    for name in ["unet", "vae", "text_encoder", "text_encoder_2"] {
        let dir = path.join(name);
        if name == "text_encoder_2" && !dir.join("config.json").is_file() {
            continue;
        }
        found.push((Some(name), weights_in(&dir)?));
    }
    Ok(found)
}

/// Whether a single-file checkpoint is SDXL (its second text encoder under `conditioner.embedders.1`).
fn single_file_is_sdxl(bytes: &[u8]) -> bool {
    let n = bytes.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes).unwrap_or(0) as usize;
    bytes.get(8..8usize.saturating_add(n)).is_some_and(|h| h.windows(24).any(|w| w == b"conditioner.embedders.1."))
}

/// Whether a single-file checkpoint's UNet takes 9 input channels (inpainting), from its header only.
fn single_file_inpainting(bytes: &[u8]) -> Result<bool> {
    let bad = || invalid("the checkpoint is not a valid safetensors file; re-import it");
    let n = bytes.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes).ok_or_else(bad)? as usize;
    let header: serde_json::Value = serde_json::from_slice(bytes.get(8..8 + n).ok_or_else(bad)?).map_err(|_| bad())?;
    let shape = header
        .get("model.diffusion_model.input_blocks.0.0.weight")
        .and_then(|t| t.get("shape"))
        .and_then(|s| s.as_array())
        .and_then(|s| s.get(1))
        .and_then(|c| c.as_u64());
    Ok(shape == Some(9))
}

/// Reads a model given by path (diffusers folder or single-file checkpoint) into the engine's input.
pub fn read_model(path: &Path) -> Result<(DiffusionFiles, Sampling)> {
    let record = std::fs::read_to_string(path.join("likeness-model.toml")).unwrap_or_default();
    let sampling = if record.contains("sd-turbo") || record.contains("sdxl-turbo") {
        Sampling::Turbo
    } else if record.is_empty() && path.join("unet").join("config.json").is_file() {
        // Not imported: tell SD-Turbo from SD 2.1 as an import would (else a Turbo folder ran
        // 40 guided steps at 640 px, SD 2.1's settings, which it was never trained for).
        match crate::import::diffusers_arch_in_place(path) {
            Ok(Some(Arch::SdTurbo)) => Sampling::Turbo,
            Err(e @ ImportError::AmbiguousSd2 { .. }) => return Err(invalid(e.to_string())),
            // Shapes the import table does not know are left to the loader, which names what is wrong.
            Ok(_) | Err(_) => Sampling::Standard,
        }
    } else {
        Sampling::Standard
    };
    let mut weights = path_weights(path)?;
    if let [(None, file)] = weights.as_slice() {
        let checkpoint = read(file)?;
        let configs = if single_file_is_sdxl(&checkpoint) {
            Configs::sdxl(single_file_inpainting(&checkpoint)?)
        } else {
            Configs::sd15(single_file_inpainting(&checkpoint)?)
        };
        return Ok((DiffusionFiles::SingleFile { checkpoint, configs }, sampling));
    }
    let mut take = |name: &str| -> Result<Option<Component>> {
        let Some(i) = weights.iter().position(|(n, _)| *n == Some(name)) else { return Ok(None) };
        let (_, file) = weights.swap_remove(i);
        Ok(Some(Component { config: read(&path.join(name).join("config.json"))?, weights: read(&file)? }))
    };
    let missing = |name: &str| invalid(format!("{} has no {name}/ weights; re-import the model", path.display()));
    let (unet, vae, text_encoder) = (take("unet")?, take("vae")?, take("text_encoder")?);
    let text_encoder_2 = take("text_encoder_2")?;
    let sched = path.join("scheduler").join("scheduler_config.json");
    let files = DiffusionFiles::Diffusers {
        unet: unet.ok_or_else(|| missing("unet"))?,
        vae: vae.ok_or_else(|| missing("vae"))?,
        text_encoder: text_encoder.ok_or_else(|| missing("text_encoder"))?,
        tokenizer: tokenizer_in(&path.join("tokenizer")),
        scheduler_config: if sched.is_file() { Some(read(&sched)?) } else { None },
        text_encoder_2,
        tokenizer_2: tokenizer_in(&path.join("tokenizer_2")),
    };
    Ok((files, sampling))
}

/// Reads an imported model (checked by [`ModelStore::diffusion`]) into the engine's input.
pub fn read_installed(inst: &InstalledDiffusion) -> Result<(DiffusionFiles, Sampling)> {
    let sampling = if inst.arch == Arch::SdTurbo { Sampling::Turbo } else { Sampling::Standard };
    let files = match &inst.files {
        ImportedFiles::Diffusers { unet, vae, text_encoder, tokenizer, scheduler, text_encoder_2, tokenizer_2, .. } => {
            let comp = |c: &DiffusersComponent, name: &str| -> Result<Component> {
                let config = c.config.as_deref().ok_or_else(|| invalid(format!("model '{}': {name}/config.json is missing; import the model again", inst.id)))?;
                let [weights] = c.weights.as_slice() else {
                    return Err(invalid(format!(
                        "model '{}': {name} is split over {} weight files; merge it into one .safetensors (diffusers save_pretrained with max_shard_size large enough) and import it again",
                        inst.id,
                        c.weights.len()
                    )));
                };
                Ok(Component { config: read(config)?, weights: read(weights)? })
            };
            let tok = |t: &Option<PathBuf>| t.as_deref().and_then(tokenizer_in);
            let tokenizer = tok(tokenizer);
            let sched = scheduler.as_ref().map(|d| d.join("scheduler_config.json")).filter(|p| p.is_file());
            DiffusionFiles::Diffusers {
                unet: comp(unet, "unet")?,
                vae: comp(vae, "vae")?,
                text_encoder: comp(text_encoder, "text_encoder")?,
                tokenizer,
                scheduler_config: sched.map(|p| read(&p)).transpose()?,
                text_encoder_2: text_encoder_2.as_ref().map(|c| comp(c, "text_encoder_2")).transpose()?,
                tokenizer_2: tok(tokenizer_2),
            }
        }
        ImportedFiles::SingleFile { path } => {
            // The import already told the architecture (and inpainting) from the header: no second parse.
            let configs = match inst.arch {
                Arch::Sd15 | Arch::Sd15Inpaint => Configs::sd15(inst.arch == Arch::Sd15Inpaint),
                Arch::Sdxl | Arch::SdxlInpaint => Configs::sdxl(inst.arch == Arch::SdxlInpaint),
                Arch::SdTurbo => {
                    return Err(invalid(format!(
                        "model '{}' is a single-file {} checkpoint; SD 2.x-layout checkpoints do not run from one file: import its diffusers folder instead",
                        inst.id,
                        inst.arch.name()
                    )))
                }
            };
            DiffusionFiles::SingleFile { checkpoint: read(path)?, configs }
        }
    };
    Ok((files, sampling))
}

/// Where a diffusion model is.
enum Source {
    Imported(InstalledDiffusion),
    /// A diffusers folder or a single-file checkpoint given by path.
    Path(PathBuf),
}

impl Source {
    fn read(&self) -> Result<(DiffusionFiles, Sampling)> {
        match self {
            Source::Imported(inst) => read_installed(inst),
            Source::Path(p) => read_model(p),
        }
    }

    /// The weight files the model loads (nothing is read).
    fn weight_paths(&self) -> Result<Vec<PathBuf>> {
        Ok(match self {
            Source::Imported(inst) => match &inst.files {
                ImportedFiles::Diffusers { unet, vae, text_encoder, text_encoder_2, .. } => [Some(unet), Some(vae), Some(text_encoder), text_encoder_2.as_ref()]
                    .into_iter()
                    .flatten()
                    .flat_map(|c| c.weights.iter().cloned())
                    .collect(),
                ImportedFiles::SingleFile { path } => vec![path.clone()],
            },
            Source::Path(p) => path_weights(p)?.into_iter().map(|(_, file)| file).collect(),
        })
    }
}

/// Loads (once) and hands out diffusion models: an id imported with `likeness models import`
/// (through the store's record, sizes and link times checked), or the path of a diffusers folder
/// or single-file checkpoint.
pub struct DiffusionCache {
    store: Option<ModelStore>,
    device: Device,
    loaded: Mutex<HashMap<String, (Arc<DiffusionModel>, Sampling)>>,
}

impl DiffusionCache {
    /// `store` should know the imported-models folder ([`ModelStore::with_imported_dir`]).
    pub fn new(store: Option<ModelStore>, device: Device) -> Self {
        Self { store, device, loaded: Mutex::new(HashMap::new()) }
    }

    /// Where model `id` is: an imported model (its record checked) or a path to a model; fails with
    /// what to do when it is neither.
    fn source(&self, id: &str) -> Result<Source> {
        if let Some(store) = &self.store {
            match store.diffusion(id) {
                Ok(inst) => return Ok(Source::Imported(inst)),
                Err(ImportError::NotImported { .. } | ImportError::NoImportDir) => {}
                Err(e) => return Err(invalid(e.to_string())),
            }
        }
        if !id.is_empty() && Path::new(id).exists() {
            // A Hugging Face cache repository folder is used through its snapshot, as an import would.
            let snapshot = crate::import::hf_snapshot(Path::new(id)).map_err(|e| invalid(e.to_string()))?;
            return Ok(Source::Path(snapshot.unwrap_or_else(|| PathBuf::from(id))));
        }
        Err(invalid(format!(
            "no model '{id}' is installed; import it with `likeness models import PATH` (a diffusers folder or a .safetensors checkpoint)"
        )))
    }

    /// Model `id`'s files for the engine and how to sample it; fails with what to do when it is not installed.
    pub fn locate(&self, id: &str) -> Result<(DiffusionFiles, Sampling)> {
        self.source(id)?.read()
    }

    /// Checks that `id` can be found, without reading its weights.
    pub fn check(&self, id: &str) -> Result<()> {
        self.source(id).map(|_| ())
    }

    /// Refuses, before anything is read, a model this machine cannot hold (see [`crate::memory`]).
    fn check_memory(&self, id: &str, source: &Source) -> Result<()> {
        let paths = source.weight_paths()?;
        let refs: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
        let need = memory::estimate(&refs, self.device.is_cpu()).map_err(invalid)?;
        let available = memory::available().map_err(invalid)?;
        memory::check(id, &need, available.as_ref()).map_err(CoreError::NotEnoughMemory)
    }

    pub fn get(&self, id: &str) -> Result<(Arc<DiffusionModel>, Sampling)> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((m, s)) = loaded.get(id) {
            return Ok((m.clone(), *s));
        }
        let source = self.source(id)?;
        self.check_memory(id, &source)?;
        let (files, sampling) = source.read()?;
        let model = DiffusionModel::load(files, &self.device).map_err(|e| invalid(format!("model '{id}': {e}")))?;
        let model = Arc::new(model);
        loaded.insert(id.to_owned(), (model.clone(), sampling));
        Ok((model, sampling))
    }
}

/// Runs studio jobs through the studio runner and generative jobs through Stable Diffusion.
pub struct LookRunner<'a> {
    pub studio: StudioRunner<'a>,
    pub diffusion: &'a DiffusionCache,
}

impl JobRunner for LookRunner<'_> {
    fn run(
        &self,
        job: &ClaimedJob,
        inputs: &[(String, Zeroizing<Vec<u8>>)],
        progress: &dyn ProgressSink,
        cancel: &CancelToken,
    ) -> std::result::Result<Vec<NewOutput>, RunError> {
        let failed = |e: CoreError| RunError::Failed(e.to_string());
        let settings = StudioSettings::from_json(&job.settings_json).map_err(failed)?;
        if !settings.is_generative() {
            return self.studio.run(job, inputs, progress, cancel);
        }
        settings.check_look().map_err(failed)?;
        let req = settings.request(self.studio.assets.as_deref()).map_err(failed)?;
        let mut style = settings.generative_style().map_err(failed)?;
        let (model, sampling) = self.diffusion.get(settings.model.as_deref().unwrap_or("")).map_err(failed)?;
        style.sampling = sampling;
        if inputs.is_empty() {
            return Err(RunError::Failed("the job's photos were deleted before it ran".into()));
        }
        let n = inputs.len() as f32;
        let mut outputs = Vec::new();
        for (i, (name, bytes)) in inputs.iter().enumerate() {
            let sink = |stage, f: f32| progress.stage(stage, (i as f32 + f) / n);
            let shots = generative::generative_headshots(self.studio.models, &model, bytes, &req, &style, &sink, cancel)
                .map_err(|e| match e {
                    EngineError::Cancelled => RunError::Cancelled,
                    e => RunError::Failed(format!("{name}: {e}")),
                })?;
            outputs.extend(shots.into_iter().map(|shot| self.studio.output_of(job, name, shot)));
        }
        Ok(outputs)
    }
}
