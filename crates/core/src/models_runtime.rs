//! Loading the models a job runs with, in one place for the command line and the desktop app:
//! the bundled studio models (with Real-ESRGAN read on first use), the optional GFPGAN face
//! restorer (an import, else a verified file in the models folder), the Stable Diffusion cache,
//! and the generative look's choices as both front ends offer them.
//!
//! Optional models never stop a job: a restorer asked for but not installed leaves the job to run
//! without it (the pipeline warns with [`likeness_engine::pipeline::RESTORE_UNAVAILABLE`]); one that
//! is installed but unusable is reported once, by name, through the returned notice.

use std::path::Path;

use candle_core::Device;
use likeness_engine::generative::{self as gen, Attire, GenBackdrop, Lighting, Quality, Sampling};
use likeness_engine::pipeline::StudioModels;
use likeness_engine::restore::{self, FaceRestorer};
use serde::Serialize;

use crate::generative::DiffusionCache;
use crate::import::{imported_dir, Arch, ImportError, RecordKind};
use crate::models::{ModelError, ModelStore};

/// The models folder (`explicit`, else discovered), knowing the imported models of the data
/// folder `data_root` when there is one.
pub fn model_store(explicit: Option<&Path>, data_root: Option<&Path>) -> std::result::Result<ModelStore, ModelError> {
    let store = ModelStore::discover(explicit)?;
    Ok(match data_root {
        Some(root) => store.with_imported_dir(imported_dir(root)),
        None => store,
    })
}

/// Why the bundled studio models could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("the bundled models could not be loaded ({0}); reinstall Likeness")]
    Engine(#[from] likeness_engine::error::EngineError),
}

/// The bundled studio models, sha256-checked, with Real-ESRGAN x4plus loaded only when a headshot
/// first needs upscaling.
pub fn studio_models(store: &ModelStore, device: &Device) -> std::result::Result<StudioModels, LoadError> {
    let bytes = store.studio_model_bytes()?;
    let models = StudioModels::load(bytes, device)?;
    let source = crate::worker::upscaler_source(store.clone(), likeness_engine::upscale::REALESRGAN_X4PLUS, device.clone());
    Ok(models.with_upscaler(source))
}

/// GFPGAN v1.4 as installed: `Ok(None)` when it is not installed, `Err` (what is wrong with it and
/// what to do) when it is installed but cannot be used.
pub fn load_restorer(store: &ModelStore, device: &Device) -> std::result::Result<Option<FaceRestorer>, String> {
    // An import was sha256-checked then, and its size (and a link's time) is checked now;
    // otherwise the file may sit in the models folder, checked against the manifest.
    let bytes = match store.imported_file(restore::MODEL_ID) {
        Ok(path) => std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?,
        Err(ImportError::NotImported { .. } | ImportError::NoImportDir) => match store.read_verified(restore::MODEL_ID) {
            Ok(bytes) => bytes,
            Err(ModelError::Missing { .. } | ModelError::UnknownModel { .. }) => return Ok(None),
            Err(e) => return Err(e.to_string()),
        },
        Err(e) => return Err(e.to_string()),
    };
    FaceRestorer::new(&bytes, device).map(Some).map_err(|e| format!("{}: {e}", restore::MODEL_ID))
}

/// Whether GFPGAN is installed (imported, or present in the models folder); its content is
/// checked when it is loaded.
pub fn restorer_installed(store: &ModelStore) -> bool {
    if store.imported_file(restore::MODEL_ID).is_ok() {
        return true;
    }
    let Some(entry) = store.manifest().models.iter().find(|m| m.id == restore::MODEL_ID) else { return false };
    !entry.files.is_empty() && entry.files.iter().all(|f| store.dir().join(&f.path).is_file())
}

/// `models` with face restoration when `wanted` and GFPGAN is installed and loads. The notice
/// (`Some`) names an installed restorer that could not be used; a missing one gives none here
/// (each headshot that asked for it says so).
pub fn with_restorer(models: StudioModels, store: &ModelStore, device: &Device, wanted: bool) -> (StudioModels, Option<String>) {
    if !wanted {
        return (models, None);
    }
    match load_restorer(store, device) {
        Ok(Some(r)) => (models.with_restorer(r), None),
        Ok(None) => (models, None),
        Err(e) => (models, Some(format!("face restoration is off: {e}"))),
    }
}

/// The Stable Diffusion models of `store` (imported ones, by id), loaded on first use on `device`.
pub fn diffusion_cache(store: ModelStore, device: Device) -> DiffusionCache {
    DiffusionCache::new(Some(store), device)
}

/// One imported Stable Diffusion model as a front end offers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DiffusionChoice {
    pub id: String,
    /// The architecture's name (sd15, sd15-inpaint, sdxl, sdxl-inpaint, sd-turbo).
    pub arch: String,
    /// Why it cannot run in this build (`None`: it can).
    pub unusable: Option<String>,
}

/// The imported diffusion models, those that can run first.
pub fn diffusion_models(store: &ModelStore) -> Vec<DiffusionChoice> {
    let mut out: Vec<DiffusionChoice> = store
        .imported_records()
        .into_iter()
        .filter_map(|(id, rec)| rec.ok().filter(|r| r.kind == RecordKind::Diffusion).map(|r| (id, r)))
        .map(|(id, rec)| {
            let arch = rec.arch.clone().unwrap_or_default();
            let unusable = match store.diffusion(&id) {
                Err(e) => Some(e.to_string()),
                Ok(inst) if inst.arch.is_sdxl() => {
                    Some(format!("{} models cannot run yet; use an SD 1.5 (inpainting) or SD-Turbo model", inst.arch.name()))
                }
                Ok(_) => None,
            };
            DiffusionChoice { id, arch, unusable }
        })
        .collect();
    out.sort_by(|a, b| (a.unusable.is_some(), &a.id).cmp(&(b.unusable.is_some(), &b.id)));
    out
}

/// The record of imported model `id`, the one [`remove_imported`] would remove; a bundled model is
/// refused by name (front ends show what will go before asking to confirm).
pub fn removable(store: &ModelStore, id: &str) -> std::result::Result<crate::import::ModelRecord, ImportError> {
    if store.manifest().models.iter().any(|m| m.id == id && m.bundled) {
        return Err(ImportError::Bundled { id: id.into() });
    }
    store.record(id)
}

/// Removes imported model `id` (its folder; a linked model's own files stay where they are).
/// The record goes first, so an interrupted removal leaves no model that looks installed.
pub fn remove_imported(store: &ModelStore, id: &str) -> std::result::Result<(), ImportError> {
    removable(store, id)?;
    let root = store.imported_dir().ok_or(ImportError::NoImportDir)?;
    let folder = root.join(id);
    let io = |action: &'static str, path: &Path, err: std::io::Error| ImportError::Io { action, path: path.to_path_buf(), err };
    let record = folder.join(crate::import::RECORD_FILE);
    std::fs::remove_file(&record).map_err(|e| io("remove", &record, e))?;
    std::fs::remove_dir_all(&folder).map_err(|e| io("remove", &folder, e))
}

/// A value a front end offers, with its label.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Choice {
    pub value: &'static str,
    pub label: &'static str,
}

/// A quality level with what it costs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QualityChoice {
    pub value: &'static str,
    pub label: &'static str,
    /// Denoising steps of an ordinary model / of a Turbo model.
    pub steps: usize,
    pub turbo_steps: usize,
    /// The working resolution's short side in pixels (SD 1.5's 8x VAE).
    pub resolution: usize,
}

/// The generative look's choices: the values `likeness generate --attire/--lighting/--backdrop/--quality` take.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GenerativeChoices {
    pub attires: Vec<Choice>,
    pub lightings: Vec<Choice>,
    pub backdrops: Vec<Choice>,
    pub qualities: Vec<QualityChoice>,
    pub max_variants: u32,
}

/// The most variants a front end offers (the engine takes up to 16).
pub const MAX_VARIANTS: u32 = 4;

/// The generative look's choices (each value is accepted by the settings check).
pub fn generative_choices() -> GenerativeChoices {
    GenerativeChoices {
        attires: Attire::ALL.iter().map(|a| Choice { value: a.value(), label: a.label() }).collect(),
        lightings: Lighting::ALL.iter().map(|l| Choice { value: l.value(), label: l.label() }).collect(),
        backdrops: GenBackdrop::NAMED.iter().filter_map(|b| Some(Choice { value: b.name()?, label: b.label() })).collect(),
        qualities: Quality::ALL
            .iter()
            .map(|&q| {
                let s = gen::settings(q, Sampling::Standard);
                let turbo_steps = gen::settings(q, Sampling::Turbo).steps;
                QualityChoice { value: q.value(), label: q.label(), steps: s.steps, turbo_steps, resolution: s.latent_short_side * 8 }
            })
            .collect(),
        max_variants: MAX_VARIANTS,
    }
}

/// Denoising steps per variant of a generative job with these settings and a model of `arch`.
pub fn steps_per_variant(quality: &str, steps: Option<u32>, arch: Option<Arch>) -> Option<usize> {
    if let Some(s) = steps {
        return Some(s.max(1) as usize);
    }
    let q = Quality::parse(quality).ok()?;
    let sampling = if arch == Some(Arch::SdTurbo) { Sampling::Turbo } else { Sampling::Standard };
    Some(gen::settings(q, sampling).steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_offered_choice_is_accepted_by_the_engine() {
        let c = generative_choices();
        assert!(c.attires.iter().all(|a| Attire::parse(a.value).is_ok()));
        assert!(c.lightings.iter().all(|a| Lighting::parse(a.value).is_ok()));
        assert!(c.backdrops.iter().all(|a| GenBackdrop::parse(a.value).is_ok()));
        let values = |v: &[Choice]| v.iter().map(|c| c.value).collect::<Vec<_>>();
        assert_eq!(values(&c.attires), ["keep", "suit", "blazer", "business-casual", "smart-shirt"]);
        assert_eq!(values(&c.lightings), ["soft-studio", "natural-window", "dramatic"]);
        assert_eq!(values(&c.backdrops), ["studio-grey", "white", "office", "bookshelf", "outdoor"]);
        assert_eq!(c.attires[0].label, "Keep my clothes");
        assert_eq!(c.qualities.iter().map(|q| q.steps).collect::<Vec<_>>(), vec![12, 25, 40]);
        assert_eq!(c.qualities.iter().map(|q| q.resolution).collect::<Vec<_>>(), vec![384, 512, 640]);
        assert_eq!(steps_per_variant("high", None, Some(Arch::SdTurbo)), Some(4));
        assert_eq!(steps_per_variant("draft", Some(3), None), Some(3));
        assert_eq!(steps_per_variant("ultra", None, None), None);
    }
}
