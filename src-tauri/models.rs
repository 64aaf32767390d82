//! The Models screen and the device preference: every model in the manifest with its state
//! (checked against its sha256), what it is for and its license text; CPU or GPU.

use std::path::{Component, Path};

use likeness_core::models::{ModelState, ModelStore};
use serde::Serialize;
use tauri::State;

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
    ModelStore::discover(state.config.models_dir.as_deref()).map_err(|e| IpcError::new("models_missing", e.to_string()))
}

/// Every model of the manifest with its verified state.
pub fn list(state: &AppState) -> Res<Vec<ModelView>> {
    let store = store(state)?;
    let assets = assets_dir();
    let statuses = store.verify_all();
    Ok(store
        .manifest()
        .models
        .iter()
        .zip(statuses)
        .map(|(m, s)| ModelView {
            id: m.id.clone(),
            purpose: purpose(&m.task).to_string(),
            task: m.task.clone(),
            description: m.description.clone(),
            bundled: m.bundled,
            state: s.state,
            detail: s.detail,
            license: m.license.clone(),
            has_license_text: assets.as_deref().and_then(|a| license_path(a, &m.license_file)).is_some(),
            bytes: m.files.iter().map(|f| f.bytes).sum(),
        })
        .collect())
}

#[tauri::command]
pub async fn list_models(state: State<'_, AppState>) -> Res<Vec<ModelView>> {
    let state = state.inner().clone();
    // Hashing every model file takes a moment: off the IPC thread.
    tauri::async_runtime::spawn_blocking(move || list(&state))
        .await
        .map_err(|e| IpcError::new("internal", format!("the models could not be checked: {e}")))?
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
