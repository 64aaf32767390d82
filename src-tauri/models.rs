//! The Models screen and the device preference: every model in the manifest with its state
//! (checked against its sha256), what it is for and its license text; CPU or GPU.

use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use likeness_core::import::{ImportError, ImportOptions, ImportOutcome, ModelListing};
use likeness_core::models::{ModelState, ModelStore};
use likeness_core::models_runtime::{self, DiffusionChoice, GenerativeChoices};
use serde::Serialize;
use tauri::{AppHandle, Emitter, Runtime, State};
use tauri_plugin_dialog::DialogExt;

use crate::error::IpcError;
use crate::state::{assets_dir, lock, AppState};

type Res<T> = Result<T, IpcError>;

/// The preference key of the device choice.
pub const DEVICE_PREF: &str = "device";
/// The largest license text shown.
const MAX_LICENSE_BYTES: u64 = 1 << 20;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ModelView {
    pub id: String,
    pub task: String,
    /// What the model does for the person, in plain words.
    pub purpose: String,
    pub description: String,
    pub bundled: bool,
    pub state: ModelState,
    /// Why a model is missing or corrupt, with what to do.
    pub detail: Option<String>,
    pub license: String,
    /// Whether the license text ships with the app (then `model_license` shows it).
    pub has_license_text: bool,
    /// Size on disk of its files, in bytes.
    pub bytes: u64,
    /// Imported by the user (then it can be removed).
    pub imported: bool,
    /// A Stable Diffusion model's architecture (sd15-inpaint, sd-turbo ...).
    pub arch: Option<String>,
    /// Whether the files' sha256 are those of a known official release (`false`: unknown files,
    /// accepted with a warning); `None` for models that have no such record.
    pub known: Option<bool>,
    /// Referenced where they are (a shared folder) rather than copied.
    pub linked: bool,
}

/// Plain words for a manifest task.
pub fn purpose(task: &str) -> &'static str {
    match task {
        "face-detection" => "Finds the face in your photo.",
        "face-landmarks" => "Maps the face's shape to frame the headshot and keep your real face.",
        "person-segmentation" => "Separates you from the background so the backdrop can change.",
        "face-restoration" => "Restores fine face detail in small or blurry photos (optional).",
        "upscale" | "super-resolution" => "Enlarges small photos to the output size (optional).",
        "diffusion" | "inpainting" => "Generates backgrounds and clothing for the generative look (optional).",
        _ => "Used by the headshot pipeline.",
    }
}

/// The license file of a manifest entry, only inside the bundled `assets/licenses` folder.
fn license_path(assets: &Path, license_file: &str) -> Option<std::path::PathBuf> {
    let rel = Path::new(license_file).strip_prefix("assets").ok()?;
    if !rel.starts_with("licenses") || rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return None;
    }
    let p = assets.join(rel);
    p.is_file().then_some(p)
}

fn store(state: &AppState) -> Res<ModelStore> {
    state.store()
}

/// Every model of the manifest with its verified state, and the imported ones.
pub fn list(state: &AppState) -> Res<Vec<ModelView>> {
    let store = state.store()?;
    let rows = store.list_models(false);
    Ok(rows.into_iter().map(|r| view(&store, r)).collect())
}

fn view(store: &ModelStore, r: ModelListing) -> ModelView {
    let assets = assets_dir();
    let entry = store.manifest().models.iter().find(|m| m.id == r.id);
    let detail = match (r.state, entry) {
        (ModelState::NotInstalled, Some(m)) => Some(format!(
            "Not installed. Get {} from {} and add it with \"Import a file\".",
            r.official.clone().unwrap_or_else(|| "its file".into()),
            m.source
        )),
        _ => r.detail.clone(),
    };
    let is_diffusion = r.arch.is_some();
    ModelView {
        purpose: purpose(if is_diffusion { "diffusion" } else { &r.task }).to_string(),
        description: match (entry, &r.arch) {
            (Some(m), _) => m.description.clone(),
            (None, Some(a)) => format!("Stable Diffusion model ({a}{})", r.dtype.as_deref().map(|d| format!(", {d}")).unwrap_or_default()),
            (None, None) => String::new(),
        },
        has_license_text: entry.is_some_and(|m| assets.as_deref().and_then(|a| license_path(a, &m.license_file)).is_some()),
        known: if r.imported && is_diffusion { Some(r.official.as_deref().is_some_and(|o| o != "unknown")) } else { None },
        linked: r.linked_source.is_some(),
        id: r.id,
        task: r.task,
        bundled: r.bundled,
        state: r.state,
        detail,
        license: r.license,
        bytes: r.bytes,
        imported: r.imported,
        arch: r.arch,
    }
}

#[tauri::command]
pub async fn list_models(state: State<'_, AppState>) -> Res<Vec<ModelView>> {
    let state = state.inner().clone();
    // Hashing every model file takes a moment: off the IPC thread.
    tauri::async_runtime::spawn_blocking(move || list(&state))
        .await
        .map_err(|e| IpcError::new("internal", format!("the models could not be checked: {e}")))?
}

/// Checks one model's files against their sha256 now (an imported model's too, which the list
/// checks only by size).
pub fn verify(state: &AppState, id: &str) -> Res<ModelView> {
    let store = state.store()?;
    let row = store.list_models(false).into_iter().find(|r| r.id == id).ok_or_else(|| IpcError::not_found(format!("no model '{id}'")))?;
    let mut row = row;
    if row.imported && row.state == ModelState::Ok {
        let checked = store.record(id).and_then(|rec| store.check_record(&rec, true));
        if let Err(e) = checked {
            row.state = if matches!(e, ImportError::Missing { .. }) { ModelState::Missing } else { ModelState::Corrupt };
            row.detail = Some(e.to_string());
        }
    }
    Ok(view(&store, row))
}

#[tauri::command]
pub async fn verify_model(id: String, state: State<'_, AppState>) -> Res<ModelView> {
    let state = state.inner().clone();
    tauri::async_runtime::spawn_blocking(move || verify(&state, &id))
        .await
        .map_err(|e| IpcError::new("internal", format!("the model could not be checked: {e}")))?
}

/// An import error in plain words, with a code the page can act on.
pub fn import_error(e: ImportError) -> IpcError {
    let code = match &e {
        ImportError::Cancelled => "cancelled",
        ImportError::DiskFull { .. } | ImportError::NoSpace { .. } => "disk_full",
        ImportError::NotSafetensors { .. } | ImportError::Truncated { .. } | ImportError::HashMismatch { .. } | ImportError::Changed { .. } | ImportError::BadRecord { .. } => "corrupt",
        ImportError::Pickle { .. }
        | ImportError::Detect { .. }
        | ImportError::AmbiguousSd2 { .. }
        | ImportError::ArchMismatch { .. }
        | ImportError::Unrecognised { .. }
        | ImportError::NotDiffusion { .. } => "unsupported",
        ImportError::NotFound { .. } | ImportError::NotImported { .. } | ImportError::Missing { .. } => "not_found",
        ImportError::IdTaken { .. } | ImportError::BadId { .. } | ImportError::Bundled { .. } => "invalid_input",
        ImportError::LinkOutside { .. } | ImportError::ChangedDuringImport { .. } | ImportError::Io { .. } | ImportError::Known { .. } => "io",
        ImportError::NoImportDir => "io",
    };
    IpcError::new(code, e.to_string())
}

/// The import progress event's name.
pub const IMPORT_EVENT: &str = "import-event";
/// Progress events closer together than this are dropped (the last one always goes).
const IMPORT_INTERVAL: Duration = Duration::from_millis(150);

/// Where an import is: bytes copied (and hashed) of the total, the file being read.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ImportEvent {
    /// `step`: what is being done ("Checking", "Copying"), `file` the file's name within the model.
    Progress { done: u64, total: u64, file: String },
    Finished { id: String },
    Failed { code: &'static str, message: String },
}

/// What an import did, without paths (the page never sees them).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ImportView {
    pub id: String,
    pub arch: Option<String>,
    /// The official file name when the sha256 is known, else "unknown".
    pub official: String,
    /// Whether the sha256 is a known official release (unknown files are imported with a warning).
    pub known: bool,
    pub files: usize,
    pub bytes: u64,
    pub already_imported: bool,
    pub warnings: Vec<String>,
}

fn import_view(o: ImportOutcome) -> ImportView {
    ImportView {
        known: o.official != "unknown",
        id: o.id,
        arch: o.arch,
        official: o.official,
        files: o.files,
        bytes: o.bytes,
        already_imported: o.already_imported,
        warnings: o.warnings,
    }
}

/// Imports the file or folder at `path` (chosen in a native dialog: the page never names a path),
/// one import at a time, checked against the machine policy; `on_event` gets throttled progress.
pub fn import_path(state: &AppState, path: &Path, on_event: &dyn Fn(ImportEvent)) -> Res<ImportView> {
    state.policy().check_import()?;
    let cancel = Arc::new(AtomicBool::new(false));
    {
        let mut running = lock(&state.import);
        if running.is_some() {
            return Err(IpcError::new("busy", "another model is being imported; wait for it to finish or cancel it"));
        }
        *running = Some(cancel.clone());
    }
    let result = (|| {
        let store = state.store()?;
        if store.imported_dir().is_none() {
            return Err(IpcError::new("io", "there is no data folder to import into"));
        }
        let mut last: Option<Instant> = None;
        let mut progress = |done: u64, total: u64, file: &str| {
            let now = Instant::now();
            if done >= total || last.is_none_or(|t| now.duration_since(t) >= IMPORT_INTERVAL) {
                last = Some(now);
                on_event(ImportEvent::Progress { done, total, file: file.to_string() });
            }
            !cancel.load(Ordering::SeqCst)
        };
        let out = store.import(path, &ImportOptions::default(), &mut progress).map_err(import_error)?;
        Ok(import_view(out))
    })();
    *lock(&state.import) = None;
    match &result {
        Ok(v) => {
            state.reset_diffusion();
            on_event(ImportEvent::Finished { id: v.id.clone() });
        }
        Err(e) => on_event(ImportEvent::Failed { code: e.code, message: e.message.clone() }),
    }
    result
}

/// Opens the native file or folder dialog, then imports what was chosen (see [`import_path`]).
/// `None`: the dialog was closed without a choice.
#[tauri::command]
pub async fn import_model<R: Runtime>(kind: String, app: AppHandle<R>, state: State<'_, AppState>) -> Res<Option<ImportView>> {
    state.policy().check_import()?;
    let dialog = app.dialog().file();
    let picked = match kind.as_str() {
        "file" => {
            let d = dialog.set_title("Choose a model file").add_filter("Model files", &["safetensors", "pth"]);
            tauri::async_runtime::spawn_blocking(move || d.blocking_pick_file()).await
        }
        "folder" => {
            let d = dialog.set_title("Choose a diffusers model folder");
            tauri::async_runtime::spawn_blocking(move || d.blocking_pick_folder()).await
        }
        other => return Err(IpcError::invalid(format!("unknown import kind '{other}' (file or folder)"))),
    }
    .map_err(|e| IpcError::new("internal", format!("the dialog failed: {e}")))?;
    let Some(picked) = picked else { return Ok(None) };
    let path: PathBuf = picked.into_path().map_err(|e| IpcError::new("io", format!("the chosen item cannot be used: {e}")))?;
    let state = state.inner().clone();
    tauri::async_runtime::spawn_blocking(move || {
        import_path(&state, &path, &|e| {
            let _ = app.emit(IMPORT_EVENT, e);
        })
    })
    .await
    .map_err(|e| IpcError::new("internal", format!("the import failed: {e}")))?
    .map(Some)
}

/// Asks the running import to stop; it removes what it copied. `false`: none was running.
#[tauri::command]
pub fn cancel_import(state: State<'_, AppState>) -> bool {
    match lock(&state.import).as_ref() {
        Some(flag) => {
            flag.store(true, Ordering::SeqCst);
            true
        }
        None => false,
    }
}

/// Removes an imported model (bundled ones cannot be removed; a linked model's own files stay).
pub fn remove(state: &AppState, id: &str) -> Res<()> {
    state.policy().check_import()?;
    let store = state.store()?;
    if lock(&state.import).is_some() {
        return Err(IpcError::new("busy", "a model is being imported; wait for it to finish first"));
    }
    models_runtime::remove_imported(&store, id).map_err(import_error)?;
    state.reset_diffusion();
    Ok(())
}

#[tauri::command]
pub fn remove_model(id: String, state: State<'_, AppState>) -> Res<()> {
    remove(&state, &id)
}

/// What the Create screen offers for the generative look, face restoration and upscaling.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CreateOptions {
    pub choices: GenerativeChoices,
    /// Imported Stable Diffusion models (those that can run first).
    pub models: Vec<DiffusionChoice>,
    /// Whether the generative look can be chosen, and if not why.
    pub generative_available: bool,
    pub generative_reason: Option<String>,
    /// Whether GFPGAN is installed (face restoration can be offered).
    pub restore_available: bool,
    /// Real-ESRGAN is bundled: larger outputs than the crop are upscaled.
    pub upscale_available: bool,
}

pub fn options(state: &AppState) -> Res<CreateOptions> {
    let store = state.store()?;
    let models = models_runtime::diffusion_models(&store);
    let policy = state.policy();
    let allowed = policy.allowed_looks.value.iter().any(|l| l == "generative");
    let usable = models.iter().any(|m| m.unusable.is_none());
    let generative_reason = if !allowed {
        Some("Your organisation's policy does not allow the generative look (managed).".to_string())
    } else if !usable {
        Some("Needs a Stable Diffusion model: import one on the Models screen.".to_string())
    } else {
        None
    };
    Ok(CreateOptions {
        choices: models_runtime::generative_choices(),
        models,
        generative_available: generative_reason.is_none(),
        generative_reason,
        restore_available: models_runtime::restorer_installed(&store),
        upscale_available: store.manifest().models.iter().any(|m| m.id == likeness_engine::upscale::REALESRGAN_X4PLUS),
    })
}

#[tauri::command]
pub async fn create_options(state: State<'_, AppState>) -> Res<CreateOptions> {
    let state = state.inner().clone();
    tauri::async_runtime::spawn_blocking(move || options(&state))
        .await
        .map_err(|e| IpcError::new("internal", format!("the options could not be read: {e}")))?
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LicenseText {
    pub id: String,
    pub license: String,
    pub text: String,
}

/// The license text of one model, from the bundled license files.
#[tauri::command]
pub fn model_license(id: String, state: State<'_, AppState>) -> Res<LicenseText> {
    let store = store(&state)?;
    let m = store
        .manifest()
        .models
        .iter()
        .find(|m| m.id == id)
        .ok_or_else(|| IpcError::not_found(format!("no model '{id}' in the manifest")))?;
    let path = assets_dir()
        .and_then(|a| license_path(&a, &m.license_file))
        .ok_or_else(|| IpcError::not_found(format!("the license text of '{id}' ({}) is not bundled; see {}", m.license, m.source)))?;
    let len = std::fs::metadata(&path).map(|md| md.len()).unwrap_or(0);
    if len > MAX_LICENSE_BYTES {
        return Err(IpcError::invalid(format!("{} is too large to show", path.display())));
    }
    let text = std::fs::read_to_string(&path).map_err(|e| IpcError::new("io", format!("cannot read {}: {e}", path.display())))?;
    Ok(LicenseText { id, license: m.license.clone(), text })
}

/// Whether this build can use a GPU, and if not why.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DeviceInfo {
    /// The stored choice: "cpu" or "gpu".
    pub choice: String,
    pub gpu_available: bool,
    pub gpu_reason: Option<String>,
    /// The device the models run on now (a changed choice applies at the next start).
    pub active: String,
}

/// Whether a GPU can be used: built with CUDA or Metal, and a device present.
pub fn gpu_status() -> (bool, Option<String>) {
    if !cfg!(any(feature = "cuda", feature = "metal")) {
        return (false, Some("This build of Likeness has no GPU support (it was built without CUDA or Metal); it runs on the CPU.".into()));
    }
    match likeness_engine::device::select(likeness_engine::device::DevicePref::Gpu) {
        Ok(_) => (true, None),
        Err(e) => (false, Some(e.to_string())),
    }
}

pub fn device_info(state: &AppState) -> Res<DeviceInfo> {
    let choice = lock(state.library()?).preference(DEVICE_PREF)?.unwrap_or_else(|| "cpu".into());
    let (gpu_available, gpu_reason) = gpu_status();
    Ok(DeviceInfo { choice, gpu_available, gpu_reason, active: state.active_device().to_string() })
}

/// Stores the CPU / GPU choice; GPU is refused (with the reason) where this build cannot use one.
#[tauri::command]
pub fn set_device(device: String, state: State<'_, AppState>) -> Res<DeviceInfo> {
    match device.as_str() {
        "cpu" => {}
        "gpu" => {
            let (ok, reason) = gpu_status();
            if !ok {
                return Err(IpcError::new("unsupported", reason.unwrap_or_else(|| "no usable GPU".into())));
            }
        }
        other => return Err(IpcError::invalid(format!("unknown device '{other}' (cpu or gpu)"))),
    }
    lock(state.library()?).set_preference(DEVICE_PREF, &device)?;
    device_info(&state)
}
