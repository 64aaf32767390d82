//! Exporting headshots: the person's choice of format, size and file name, through the native save
//! dialog (one headshot) or folder picker (several). The page sends output ids and options; the
//! chosen place stays on this side, and only the written file names go back.

use std::path::Path;

use likeness_core::files;
use likeness_core::worker::StudioSettings;
use likeness_core::OutputId;
use likeness_engine::image_io::{self, DecodeLimits, OutputFormat};
use serde::{Deserialize, Serialize};
use tauri::{AppHandle, Runtime, State};
use tauri_plugin_dialog::DialogExt;

use crate::error::IpcError;
use crate::state::{lock, AppState};

type Res<T> = Result<T, IpcError>;

/// The default file name template (`{preset}`, `{id}`, `{n}`, `{photo}`, `{date}`, `{size}`).
pub const DEFAULT_TEMPLATE: &str = "likeness-{preset}-{id}";
/// The most headshots one export writes.
pub const MAX_EXPORT: usize = 500;
/// The largest custom size (longest side, pixels).
pub const MAX_SIDE: u32 = 8192;

/// How to export, as chosen in the gallery's export options.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ExportOptions {
    /// `original` (as stored), `png`, `jpg` or `webp`.
    pub format: String,
    /// Longest side in pixels; `None` keeps the original size. Never enlarges.
    pub max_side: Option<u32>,
    /// JPEG quality, 1-100.
    pub jpeg_quality: u8,
    /// File name template, without extension.
    pub template: String,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions { format: "original".into(), max_side: None, jpeg_quality: 92, template: DEFAULT_TEMPLATE.into() }
    }
}

impl ExportOptions {
    /// Every option checked before any dialog opens.
    pub fn check(&self) -> Res<()> {
        self.output_format("png")?;
        if let Some(s) = self.max_side {
            if !(64..=MAX_SIDE).contains(&s) {
                return Err(IpcError::invalid(format!("choose a size between 64 and {MAX_SIDE} pixels (got {s})")));
            }
        }
        self.stem(&Names::example()).map(|_| ())
    }

    fn output_format(&self, stored: &str) -> Res<OutputFormat> {
        let f = if self.format == "original" { stored } else { self.format.as_str() };
        match f.parse::<OutputFormat>().map_err(|e| IpcError::invalid(e.to_string()))? {
            OutputFormat::Jpeg { .. } => {
                if !(1..=100).contains(&self.jpeg_quality) {
                    return Err(IpcError::invalid("JPEG quality must be between 1 and 100"));
                }
                Ok(OutputFormat::Jpeg { quality: self.jpeg_quality })
            }
            other => Ok(other),
        }
    }

    fn stem(&self, n: &Names) -> Res<String> {
        let template = if self.template.trim().is_empty() { DEFAULT_TEMPLATE } else { self.template.as_str() };
        files::fill_template(
            template,
            &[("preset", &n.preset), ("id", &n.id), ("n", &n.n), ("photo", &n.photo), ("date", &n.date), ("size", &n.size)],
        )
        .map_err(IpcError::from)
    }
}

/// The values a name template may use for one headshot.
struct Names {
    preset: String,
    id: String,
    n: String,
    photo: String,
    date: String,
    size: String,
}

impl Names {
    fn example() -> Names {
        Names { preset: "square".into(), id: "ab12cd34".into(), n: "1".into(), photo: "me".into(), date: "2026-01-01".into(), size: "1024x1024".into() }
    }
}

/// `YYYY-MM-DD` (UTC) of a Unix time.
pub fn date_of(secs: i64) -> String {
    // Civil-from-days (Howard Hinnant's algorithm): no date crate needed for one format.
    let z = secs.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// One headshot made ready to write: its file stem, extension and bytes.
pub struct Rendered {
    pub stem: String,
    pub ext: &'static str,
    pub bytes: Vec<u8>,
}

/// Decrypts an output and converts it as the options say (format, size); unchanged bytes when
/// nothing is to change. The re-encoders write pixels only (no metadata).
pub fn render(state: &AppState, id: &OutputId, n: usize, options: &ExportOptions) -> Res<Rendered> {
    let (info, bytes, settings, photo) = {
        let lib = lock(state.library()?);
        let info = lib.output_info(id)?;
        let bytes = lib.get_output(id)?;
        let job = lib.get_job(&info.job_id).ok();
        let settings = job.as_ref().and_then(|j| StudioSettings::from_json(&j.settings_json).ok());
        let position = job.as_ref().and_then(|j| j.outputs.iter().position(|o| o.id == *id)).unwrap_or(0);
        let photo = job.and_then(|j| j.inputs.get(position).or(j.inputs.first()).map(|i| i.name.clone()));
        (info, bytes, settings, photo)
    };
    let format = options.output_format(&info.format)?;
    // The organisation may allow only some formats (an export of an existing headshot too).
    state.policy().check_export_format(format.extension())?;
    let (w, h) = (info.width, info.height);
    let target = options.max_side.filter(|&s| s < w.max(h));
    let stored_ext = info.format.parse::<OutputFormat>().ok().map(|f| f.extension());
    let same_format = options.format == "original" || stored_ext == Some(format.extension());
    let (out, (ow, oh)) = if target.is_none() && same_format {
        (bytes.to_vec(), (w, h))
    } else {
        let img = image_io::decode(&bytes, &DecodeLimits::default()).map_err(|e| IpcError::new("internal", format!("the stored headshot could not be read ({e})")))?.image;
        let img = match target {
            Some(side) => {
                let scale = f64::from(side) / f64::from(img.width().max(img.height()));
                let nw = ((f64::from(img.width()) * scale).round() as u32).max(1);
                let nh = ((f64::from(img.height()) * scale).round() as u32).max(1);
                image::imageops::resize(&img, nw, nh, image::imageops::FilterType::Lanczos3)
            }
            None => img,
        };
        let dims = img.dimensions();
        (image_io::encode(&img, format).map_err(|e| IpcError::new("internal", format!("the headshot could not be converted ({e})")))?, dims)
    };
    let names = Names {
        preset: settings.map(|s| s.preset).unwrap_or_else(|| "headshot".into()),
        id: id.0.chars().filter(|c| c.is_ascii_alphanumeric()).take(8).collect(),
        n: (n + 1).to_string(),
        photo: photo.as_deref().and_then(|p| Path::new(p).file_stem()).map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "photo".into()),
        date: date_of(info.created_at),
        size: format!("{ow}x{oh}"),
    };
    Ok(Rendered { stem: options.stem(&names)?, ext: format.extension(), bytes: out })
}

#[derive(Debug, Serialize, PartialEq)]
pub struct ExportResult {
    /// False when the person closed the dialog without choosing a place.
    pub saved: bool,
    /// The file names written (the folder stays on this side).
    pub files: Vec<String>,
}

/// Writes one rendered headshot to the exact path the save dialog chose (the dialog asked about
/// replacing an existing file).
pub fn write_to(state: &AppState, id: &OutputId, options: &ExportOptions, path: &Path) -> Res<ExportResult> {
    let r = render(state, id, 0, options)?;
    std::fs::write(path, &r.bytes).map_err(|e| IpcError::new("io", format!("could not write {}: {e}; choose another folder", path.display())))?;
    Ok(ExportResult { saved: true, files: path.file_name().map(|n| n.to_string_lossy().into_owned()).into_iter().collect() })
}

/// Writes several headshots into `dir`, each under a free name (never replacing a file).
pub fn write_into(state: &AppState, ids: &[OutputId], options: &ExportOptions, dir: &Path) -> Res<ExportResult> {
    let mut files_written = Vec::with_capacity(ids.len());
    for (n, id) in ids.iter().enumerate() {
        let r = render(state, id, n, options)?;
        let path = files::write_new(dir, &r.stem, r.ext, &r.bytes)?;
        files_written.push(path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
    }
    Ok(ExportResult { saved: true, files: files_written })
}

/// Exports one headshot through the native save dialog, suggesting the templated name.
#[tauri::command]
pub async fn export_output<R: Runtime>(id: OutputId, options: Option<ExportOptions>, app: AppHandle<R>, state: State<'_, AppState>) -> Res<ExportResult> {
    let options = options.unwrap_or_default();
    options.check()?;
    // The name shown in the dialog (also checks the output exists before the dialog opens).
    let state = state.inner().clone();
    let (st, i, o) = (state.clone(), id.clone(), options.clone());
    let suggested = tauri::async_runtime::spawn_blocking(move || render(&st, &i, 0, &o).map(|r| format!("{}.{}", r.stem, r.ext)))
        .await
        .map_err(|e| IpcError::new("internal", format!("the export failed: {e}")))??;
    let dialog = app.dialog().file().set_title("Export headshot").set_file_name(&suggested);
    let chosen = tauri::async_runtime::spawn_blocking(move || dialog.blocking_save_file())
        .await
        .map_err(|e| IpcError::new("internal", format!("the save dialog failed: {e}")))?;
    let Some(chosen) = chosen else { return Ok(ExportResult { saved: false, files: vec![] }) };
    let path = chosen.into_path().map_err(|e| IpcError::new("io", format!("the chosen place cannot be written: {e}")))?;
    tauri::async_runtime::spawn_blocking(move || write_to(&state, &id, &options, &path))
        .await
        .map_err(|e| IpcError::new("internal", format!("the export failed: {e}")))?
}

/// Exports several headshots into a folder chosen with the native folder picker.
#[tauri::command]
pub async fn export_outputs<R: Runtime>(ids: Vec<OutputId>, options: Option<ExportOptions>, app: AppHandle<R>, state: State<'_, AppState>) -> Res<ExportResult> {
    let options = options.unwrap_or_default();
    options.check()?;
    if ids.is_empty() || ids.len() > MAX_EXPORT {
        return Err(IpcError::invalid(format!("choose 1 to {MAX_EXPORT} headshots to export (got {})", ids.len())));
    }
    {
        let lib = lock(state.library()?);
        for id in &ids {
            lib.output_info(id)?;
        }
    }
    let dialog = app.dialog().file().set_title("Export headshots to a folder");
    let chosen = tauri::async_runtime::spawn_blocking(move || dialog.blocking_pick_folder())
        .await
        .map_err(|e| IpcError::new("internal", format!("the folder dialog failed: {e}")))?;
    let Some(chosen) = chosen else { return Ok(ExportResult { saved: false, files: vec![] }) };
    let dir = chosen.into_path().map_err(|e| IpcError::new("io", format!("the chosen folder cannot be used: {e}")))?;
    let state = state.inner().clone();
    tauri::async_runtime::spawn_blocking(move || write_into(&state, &ids, &options, &dir))
        .await
        .map_err(|e| IpcError::new("internal", format!("the export failed: {e}")))?
}

/// Stars or unstars a headshot (favourites sort first; they still expire).
#[tauri::command]
pub fn set_favourite(id: OutputId, favourite: bool, state: State<'_, AppState>) -> Res<()> {
    Ok(lock(state.library()?).set_favourite(&id, favourite)?)
}
