//! The commands the page may call: each a thin adapter over `likeness_core`. The page passes ids
//! (jobs, outputs, staged photos), never paths; the native dialogs are opened here, so the paths
//! they return never reach the page.

use std::path::{Path, PathBuf};

use likeness_core::worker::StudioSettings;
use likeness_core::{JobId, JobInfo, JobState, NewInput, NewJob, OutputId, OutputInfo, Settings};
use likeness_engine::framing::{self, Preset};
use likeness_engine::image_io::DecodeLimits;
use likeness_engine::pipeline;
use likeness_engine::progress::Stage;
use serde::Serialize;
use tauri::ipc::{InvokeBody, Request};
use tauri::{AppHandle, Runtime, State};
use tauri_plugin_dialog::DialogExt;
use zeroize::Zeroizing;

use crate::error::IpcError;
use crate::state::{assets_dir, lock, AppState, Staged, MAX_PHOTOS, MAX_PHOTO_BYTES};

type Res<T> = Result<T, IpcError>;

/// The privacy notice's version: a changed notice is shown again.
const PRIVACY_FILE: &str = "privacy-notice-v1";
/// The header carrying a dropped photo's file name (URI-encoded) with its raw bytes.
pub const PHOTO_NAME_HEADER: &str = "x-photo-name";

#[derive(Debug, Serialize)]
pub struct Choice {
    pub value: String,
    pub label: String,
}

#[derive(Debug, Serialize)]
pub struct AppInfo {
    pub version: &'static str,
    /// Why the library could not be opened (then nothing else works; the page says what to do).
    pub library_error: Option<IpcError>,
    pub privacy_acknowledged: bool,
    pub retention_days: Option<u32>,
    pub key_kind: Option<&'static str>,
    /// Where the encrypted data lives, for Preferences (shown, never sent back).
    pub data_dir: Option<String>,
    pub presets: Vec<Choice>,
    pub backdrops: Vec<Choice>,
    pub formats: Vec<Choice>,
    pub max_photos: usize,
    pub max_photo_bytes: usize,
    /// The CPU / GPU choice and whether this build can use a GPU.
    pub device: Option<crate::models::DeviceInfo>,
    /// Which settings the organisation's machine policy decides.
    pub policy: PolicyView,
}

/// Whether a setting is decided by the machine policy, and where that policy lives.
#[derive(Debug, Serialize)]
pub struct ManagedView {
    pub managed: bool,
    pub source: Option<String>,
}

impl<T> From<&likeness_core::policy::Managed<T>> for ManagedView {
    fn from(m: &likeness_core::policy::Managed<T>) -> Self {
        ManagedView { managed: m.managed, source: m.source.clone() }
    }
}

/// The machine policy as the page shows it (no paths: only whether folders are managed).
#[derive(Debug, Serialize)]
pub struct PolicyView {
    pub retention_days: ManagedView,
    pub retention_min_days: u32,
    pub retention_max_days: u32,
    /// Whether the bounds come from the policy.
    pub retention_bounds: ManagedView,
    pub export_formats: Vec<String>,
    pub export_formats_managed: ManagedView,
    pub looks: Vec<String>,
    pub data_dir: ManagedView,
    pub models_dir: ManagedView,
    pub model_import_allowed: bool,
    pub model_import: ManagedView,
    /// Why the policy file was refused (the safe defaults apply).
    pub refused: Option<String>,
}

pub fn policy_view(p: &likeness_core::policy::Policy) -> PolicyView {
    use likeness_core::policy::PolicyStatus;
    let (min, max) = p.retention_bounds();
    let bounds_managed = p.retention_min_days.managed || p.retention_max_days.managed;
    PolicyView {
        retention_days: (&p.retention_days).into(),
        retention_min_days: min,
        retention_max_days: max,
        retention_bounds: ManagedView {
            managed: bounds_managed,
            source: p.retention_min_days.source.clone().or_else(|| p.retention_max_days.source.clone()),
        },
        export_formats: p.allowed_export_formats.value.clone(),
        export_formats_managed: (&p.allowed_export_formats).into(),
        looks: p.allowed_looks.value.clone(),
        data_dir: (&p.data_dir).into(),
        models_dir: (&p.models_dir).into(),
        model_import_allowed: p.allow_model_import.value,
        model_import: (&p.allow_model_import).into(),
        refused: match &p.status {
            PolicyStatus::Refused { reason } => Some(reason.clone()),
            _ => None,
        },
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StagedPhoto {
    pub id: String,
    pub name: String,
    pub size: usize,
}

#[derive(Debug, Serialize)]
pub struct OutputView {
    pub id: OutputId,
    pub format: String,
    pub width: u32,
    pub height: u32,
    pub size: u64,
    pub created_at: i64,
    pub expires_at: i64,
    pub favourite: bool,
}

#[derive(Debug, Serialize)]
pub struct JobView {
    pub id: JobId,
    /// The batch the job belongs to (its jobs show on the Batch screen, not in the Queue).
    pub group_id: Option<String>,
    pub state: JobState,
    pub stage: Option<String>,
    pub progress: f32,
    pub error: Option<String>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub cancel_requested: bool,
    pub inputs: Vec<String>,
    pub settings: serde_json::Value,
    pub outputs: Vec<OutputView>,
    /// A running generative job's denoising step, so a reloaded page shows "step 3 of 20" at once.
    pub step: Option<crate::worker::StepInfo>,
}

#[derive(Debug, Serialize)]
pub struct FaceView {
    pub x: f32,
    pub y: f32,
    pub w: f32,
    pub h: f32,
    pub score: f32,
}

#[derive(Debug, Serialize)]
pub struct Preview {
    pub width: u32,
    pub height: u32,
    pub faces: Vec<FaceView>,
    /// The crop's corners in photo pixels (top-left, top-right, bottom-right, bottom-left).
    pub crop: Option<[[f32; 2]; 4]>,
    /// What the person should know (no face, several faces, crop leaves the photo).
    pub notes: Vec<String>,
}

fn output_view(o: &OutputInfo) -> OutputView {
    OutputView {
        id: o.id.clone(),
        format: o.format.clone(),
        width: o.width,
        height: o.height,
        size: o.size,
        created_at: o.created_at,
        expires_at: o.expires_at,
        favourite: o.favourite,
    }
}

fn job_view(j: JobInfo, step: Option<crate::worker::StepInfo>) -> JobView {
    JobView {
        step,
        settings: serde_json::from_str(&j.settings_json).unwrap_or(serde_json::Value::Null),
        outputs: j.outputs.iter().map(output_view).collect(),
        inputs: j.inputs.into_iter().map(|i| i.name).collect(),
        id: j.id,
        group_id: j.group_id,
        state: j.state,
        stage: j.stage,
        progress: j.progress,
        error: j.error,
        created_at: j.created_at,
        started_at: j.started_at,
        finished_at: j.finished_at,
        cancel_requested: j.cancel_requested,
    }
}

fn choice(value: &str, label: &str) -> Choice {
    Choice { value: value.into(), label: label.into() }
}

fn preset_label(p: Preset) -> &'static str {
    match p {
        Preset::Square => "Square 1:1 (LinkedIn, profiles)",
        Preset::Portrait => "Portrait 4:5",
        Preset::PassportEu => "Passport 35x45 mm (EU)",
        Preset::UsPassport => "Passport 2x2 in (US)",
        Preset::Team => "Team page 1:1 (aligned eyes)",
    }
}

/// The backdrops offered: the studio looks plus every bundled backdrop image.
fn backdrops(assets: Option<&Path>) -> Vec<Choice> {
    let mut v = vec![
        choice("gradient", "Studio grey gradient"),
        choice("white", "White"),
        choice("light-grey", "Light grey"),
        choice("charcoal", "Charcoal"),
        choice("navy", "Navy"),
        choice("blur", "Blurred original"),
    ];
    let mut images: Vec<String> = assets
        .and_then(|a| std::fs::read_dir(a.join("backdrops")).ok())
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_suffix(".jpg")).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    images.sort();
    for name in images {
        let label = format!("Backdrop: {}", name.replace('-', " "));
        v.push(Choice { value: format!("image:{name}"), label });
    }
    v
}

fn privacy_file(state: &AppState) -> Res<PathBuf> {
    Ok(state.data_dir()?.join(PRIVACY_FILE))
}

#[tauri::command]
pub fn app_info(state: State<'_, AppState>) -> AppInfo {
    crate::startup::first_call();
    let (library_error, retention_days, key_kind) = match state.library() {
        Ok(lib) => {
            let lib = lock(lib);
            match lib.settings() {
                Ok(s) => (None, Some(s.retention_days), Some(lib.key_kind())),
                Err(e) => (Some(IpcError::from(e)), None, Some(lib.key_kind())),
            }
        }
        Err(e) => (Some(e), None, None),
    };
    let privacy_acknowledged = privacy_file(&state).map(|p| p.is_file()).unwrap_or(false);
    let data_dir = state.data_dir().ok().map(|d| d.display().to_string());
    AppInfo {
        data_dir,
        version: env!("CARGO_PKG_VERSION"),
        library_error,
        privacy_acknowledged,
        retention_days,
        key_kind,
        presets: Preset::ALL.iter().map(|p| choice(p.name(), preset_label(*p))).collect(),
        backdrops: backdrops(assets_dir().as_deref()),
        formats: vec![choice("png", "PNG (lossless)"), choice("jpg", "JPEG"), choice("webp", "WebP (lossless)")],
        max_photos: MAX_PHOTOS,
        max_photo_bytes: MAX_PHOTO_BYTES,
        device: crate::models::device_info(&state).ok(),
        policy: policy_view(&state.policy()),
    }
}

#[tauri::command]
pub fn acknowledge_privacy(state: State<'_, AppState>) -> Res<()> {
    let path = privacy_file(&state)?;
    std::fs::write(&path, b"acknowledged\n")
        .map_err(|e| IpcError::new("io", format!("could not record that the notice was read ({}): {e}", path.display())))
}

/// JPEG, PNG or WebP, by their first bytes (the engine decodes only these).
pub fn sniff_image(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some("image/jpeg")
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if bytes.len() >= 12 && bytes.starts_with(b"RIFF") && bytes.get(8..12) == Some(b"WEBP") {
        Some("image/webp")
    } else {
        None
    }
}

/// Checks a photo and keeps it in memory under a new id.
pub fn stage(state: &AppState, name: &str, bytes: Vec<u8>) -> Res<StagedPhoto> {
    let bytes = Zeroizing::new(bytes);
    let name = Path::new(name).file_name().and_then(|n| n.to_str()).unwrap_or("photo").to_string();
    if bytes.is_empty() {
        return Err(IpcError::invalid(format!("{name} is empty; choose another photo")));
    }
    if bytes.len() > MAX_PHOTO_BYTES {
        return Err(IpcError::invalid(format!(
            "{name} is larger than {} MB; choose a smaller photo or save it as JPEG first",
            MAX_PHOTO_BYTES / (1024 * 1024)
        )));
    }
    if sniff_image(&bytes).is_none() {
        return Err(IpcError::invalid(format!("{name} is not a JPEG, PNG or WebP photo; choose a photo in one of these formats")));
    }
    let mut staged = lock(&state.staged);
    if staged.len() >= MAX_PHOTOS {
        return Err(IpcError::invalid(format!("a job takes at most {MAX_PHOTOS} photos; remove one first")));
    }
    let id = state.new_id("s");
    let size = bytes.len();
    staged.insert(id.clone(), Staged { name: name.clone(), bytes });
    Ok(StagedPhoto { id, name, size })
}

/// Opens the native file dialog (on a worker thread: GTK dialogs must not block the main loop)
/// and stages the chosen photos.
#[tauri::command]
pub async fn pick_photos<R: Runtime>(app: AppHandle<R>, state: State<'_, AppState>) -> Res<Vec<StagedPhoto>> {
    let dialog = app.dialog().file().set_title("Choose 1 to 3 photos of yourself").add_filter("Photos", &["jpg", "jpeg", "png", "webp"]);
    let picked = tauri::async_runtime::spawn_blocking(move || dialog.blocking_pick_files())
        .await
        .map_err(|e| IpcError::new("internal", format!("the file dialog failed: {e}")))?;
    let mut out = Vec::new();
    for file in picked.unwrap_or_default() {
        let path = file.into_path().map_err(|e| IpcError::new("io", format!("the chosen file cannot be opened: {e}")))?;
        let meta = std::fs::metadata(&path).map_err(|e| IpcError::new("io", format!("cannot read {}: {e}", path.display())))?;
        if meta.len() > MAX_PHOTO_BYTES as u64 {
            return Err(IpcError::invalid(format!("{} is larger than {} MB; choose a smaller photo", path.display(), MAX_PHOTO_BYTES >> 20)));
        }
        let bytes = std::fs::read(&path).map_err(|e| IpcError::new("io", format!("cannot read {}: {e}", path.display())))?;
        out.push(stage(&state, &path.to_string_lossy(), bytes)?);
    }
    Ok(out)
}

/// Stages a photo dropped on the page: its raw bytes are the request body, its file name (URI
/// encoded) is the `x-photo-name` header.
#[tauri::command]
pub fn stage_photo(request: Request<'_>, state: State<'_, AppState>) -> Res<StagedPhoto> {
    let InvokeBody::Raw(bytes) = request.body() else {
        return Err(IpcError::invalid("send the photo's bytes as the request body"));
    };
    let name = request
        .headers()
        .get(PHOTO_NAME_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(percent_decode)
        .unwrap_or_else(|| "photo".to_string());
    stage(&state, &name, bytes.clone())
}

/// Decodes `%XX` escapes (encodeURIComponent); invalid escapes are kept as they are.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok()).and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tauri::command]
pub fn unstage_photo(id: String, state: State<'_, AppState>) -> Res<()> {
    lock(&state.staged).remove(&id).map(|_| ()).ok_or_else(|| IpcError::not_found(format!("photo {id} is no longer waiting; add it again")))
}

/// Queues one job for the staged photos (one headshot each) and wakes the worker.
#[tauri::command]
pub fn create_job(photos: Vec<String>, settings: StudioSettings, state: State<'_, AppState>) -> Res<JobId> {
    if photos.is_empty() || photos.len() > MAX_PHOTOS {
        return Err(IpcError::invalid(format!("choose 1 to {MAX_PHOTOS} photos (got {})", photos.len())));
    }
    // Every option is checked before anything is stored.
    check_backdrop(&settings.backdrop)?;
    settings.request(assets_dir().as_deref())?;
    check_model(&state, &settings)?;
    let lib = state.library()?;
    let (inputs, before) = {
        let staged = lock(&state.staged);
        let mut inputs = Vec::with_capacity(photos.len());
        let mut before = Vec::with_capacity(photos.len());
        for id in &photos {
            let s = staged.get(id).ok_or_else(|| IpcError::not_found(format!("photo {id} is no longer waiting; add it again")))?;
            inputs.push(NewInput { name: s.name.clone(), bytes: s.bytes.to_vec() });
            before.push(s.bytes.clone());
        }
        (inputs, before)
    };
    let id = lock(lib).create_job_with(NewJob { inputs, settings_json: settings.to_json(), group_id: None })?;
    state.remember_before(id.clone(), before);
    let mut staged = lock(&state.staged);
    for p in &photos {
        staged.remove(p);
    }
    drop(staged);
    state.wake_worker();
    Ok(id)
}

/// A generative job names an imported model by its id (the page never passes a path), and it
/// must be installed and runnable now.
pub fn check_model(state: &AppState, settings: &StudioSettings) -> Res<()> {
    if !settings.is_generative() {
        return Ok(());
    }
    let id = settings.model.as_deref().unwrap_or("");
    let store = state.store()?;
    match store.diffusion(id) {
        Ok(_) => state.diffusion()?.check(id).map_err(IpcError::from),
        Err(likeness_core::import::ImportError::NotImported { .. } | likeness_core::import::ImportError::NoImportDir) => Err(IpcError::not_found(format!(
            "no Stable Diffusion model '{id}' is installed; import one on the Models screen"
        ))),
        Err(e) => Err(crate::models::import_error(e)),
    }
}

/// The page names backdrops by id (`image:warm-beige`), never by path: a backdrop image from a
/// path is for the command line only.
pub fn check_backdrop(spec: &str) -> Res<()> {
    match spec.strip_prefix("image:") {
        Some(name) if name.is_empty() || name.contains(['/', '\\', '.', ':']) => {
            Err(IpcError::invalid(format!("backdrop '{spec}' is not one of the bundled backdrops; choose one from the list")))
        }
        _ => Ok(()),
    }
}

#[tauri::command]
pub fn list_jobs(state: State<'_, AppState>) -> Res<Vec<JobView>> {
    let jobs = lock(state.library()?).list_jobs()?;
    let plans = lock(&state.gen_steps).clone();
    Ok(jobs
        .into_iter()
        .map(|j| {
            let generating = j.state == JobState::Running && j.stage.as_deref() == Some(Stage::Generate.name());
            let step = plans.get(&j.id).filter(|_| generating).map(|p| crate::worker::step_info(*p, j.progress));
            job_view(j, step)
        })
        .collect())
}

#[tauri::command]
pub fn cancel_job(id: JobId, state: State<'_, AppState>) -> Res<JobState> {
    Ok(lock(state.library()?).cancel_job(&id)?)
}

#[tauri::command]
pub fn delete_job(id: JobId, state: State<'_, AppState>) -> Res<()> {
    lock(state.library()?).delete_job(&id)?;
    state.forget_before(Some(&id));
    Ok(())
}

#[tauri::command]
pub fn delete_output(id: OutputId, state: State<'_, AppState>) -> Res<()> {
    Ok(lock(state.library()?).delete_output(&id)?)
}

#[tauri::command]
pub fn set_retention_days(days: u32, state: State<'_, AppState>) -> Res<Settings> {
    let mut lib = lock(state.library()?);
    lib.set_retention_days(days)?;
    // A shorter period applies at once: outputs now past it go.
    lib.sweep()?;
    Ok(lib.settings()?)
}

/// Deletes every job, photo and output (and photos waiting to be used). Exported files stay.
#[tauri::command]
pub fn delete_all_data(state: State<'_, AppState>) -> Res<()> {
    lock(&state.staged).clear();
    state.forget_before(None);
    Ok(lock(state.library()?).delete_all_data()?)
}

/// The detected faces and the crop a preset would make, for the preview on the Create screen.
#[tauri::command]
pub async fn preview_photo(id: String, preset: String, state: State<'_, AppState>) -> Res<Preview> {
    let preset: Preset = preset.parse().map_err(|e: likeness_engine::error::EngineError| IpcError::invalid(e.to_string()))?;
    let bytes = lock(&state.staged)
        .get(&id)
        .map(|s| s.bytes.clone())
        .ok_or_else(|| IpcError::not_found(format!("photo {id} is no longer waiting; add it again")))?;
    let state = state.inner().clone();
    tauri::async_runtime::spawn_blocking(move || preview(&state, &bytes, preset))
        .await
        .map_err(|e| IpcError::new("internal", format!("the preview failed: {e}")))?
}

pub fn preview(state: &AppState, bytes: &[u8], preset: Preset) -> Res<Preview> {
    let models = state.models()?;
    let analysis = pipeline::analyze(models, bytes, &DecodeLimits::default(), true).map_err(|e| IpcError::invalid(e.to_string()))?;
    let (width, height) = analysis.image.dimensions();
    let faces: Vec<FaceView> = analysis
        .faces
        .iter()
        .map(|f| FaceView { x: f.bbox.x, y: f.bbox.y, w: f.bbox.w, h: f.bbox.h, score: f.score })
        .collect();
    let mut notes = Vec::new();
    match faces.len() {
        0 => notes.push("No face found: choose a photo where your face is clearly visible.".to_string()),
        1 => {}
        n => notes.push(format!("{n} faces found: the most prominent one will be used.")),
    }
    let crop = match &analysis.landmarks {
        Some(lm) => match framing::frame(&pipeline::face_geometry(lm), width, height, preset, 512) {
            Ok(f) => {
                if f.outside_fraction > 0.02 {
                    notes.push("The crop reaches past the photo's edge; the missing part will be filled in.".to_string());
                }
                let (w, h) = (f.width as f32, f.height as f32);
                let m = f.src_from_dst;
                Some([m.apply([0.0, 0.0]), m.apply([w, 0.0]), m.apply([w, h]), m.apply([0.0, h])])
            }
            Err(e) => {
                notes.push(e.to_string());
                None
            }
        },
        None => None,
    };
    Ok(Preview { width, height, faces, crop, notes })
}
