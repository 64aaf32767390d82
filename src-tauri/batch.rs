//! The Batch screen's commands over `likeness_core::batch`: a folder of photos, the same look for
//! all, a mirrored output tree, a report. Folders are chosen with the native folder picker here;
//! the page holds only an opaque token for each (and the folder's own name, to show).
//!
//! A batch is a job group: its jobs run on the app's one worker with the other jobs. Each headshot
//! is saved into the output folder as its job finishes; when none of the batch's jobs is left
//! unfinished, the report (CSV and JSON) is written next to them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use likeness_core::batch::{self, BatchSpec, Exporter, ReportRow, Scan, Skipped};
use likeness_core::worker::StudioSettings;
use likeness_core::{JobId, JobState};
use likeness_engine::image_io::DecodeLimits;
use serde::Serialize;
use tauri::{AppHandle, Emitter, Runtime, State};
use tauri_plugin_dialog::DialogExt;

use crate::commands::check_backdrop;
use crate::error::IpcError;
use crate::state::{assets_dir, lock, AppState};

type Res<T> = Result<T, IpcError>;

/// The event sent when a batch has finished (exported and reported).
pub const BATCH_EVENT: &str = "batch-event";
/// The default output name template (see `likeness_core::batch::BatchSpec::name_template`).
pub const DEFAULT_TEMPLATE: &str = "{stem}-{preset}";

/// A folder the person picked, known to the page only by its token.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FolderToken {
    pub token: String,
    /// The folder's own name (its last component), to show.
    pub name: String,
}

/// A batch that was started in this session.
pub struct BatchRun {
    pub input: PathBuf,
    pub output: PathBuf,
    pub scan: Scan,
    pub unreadable: Vec<Skipped>,
    pub started_at: i64,
    exporter: Exporter,
    /// Why a headshot could not be saved as its job finished (a full disk ...); the batch's end
    /// tries again and reports.
    pub export_error: Option<String>,
    pub report: Option<ReportView>,
}

/// The per-run state the shell keeps: picked folders and started batches.
#[derive(Default)]
pub struct Batches {
    folders: HashMap<String, PathBuf>,
    runs: HashMap<String, BatchRun>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FileView {
    /// The photo's path inside the input folder.
    pub name: String,
    /// queued, running, done, failed, cancelled, or not-processed (not a photo, unreadable, a link).
    pub state: String,
    pub progress: f32,
    pub stage: Option<String>,
    pub error: Option<String>,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Failure {
    pub file: String,
    pub reason: String,
}

/// The finished batch's report, for the summary on screen.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ReportView {
    pub done: usize,
    /// Done by an earlier run of the same batch (not exported again).
    pub earlier: usize,
    pub failed: usize,
    pub cancelled: usize,
    pub not_processed: usize,
    pub failures: Vec<Failure>,
    /// The report files' names, in the output folder.
    pub report_csv: String,
    pub report_json: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BatchView {
    pub id: String,
    pub input_name: String,
    pub output_name: String,
    pub started_at: i64,
    /// Photos to make (those taken into the run).
    pub total: usize,
    /// Photos finished (done, failed or cancelled).
    pub finished: usize,
    pub files: Vec<FileView>,
    /// A headshot that could not be saved as it finished (the batch's end tries again).
    pub warning: Option<String>,
    /// Set once the batch is exported and reported.
    pub report: Option<ReportView>,
}

fn folder_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| p.display().to_string())
}

/// Remembers a folder under a new token (what the folder picker does with its answer).
pub fn register_folder(state: &AppState, path: PathBuf) -> FolderToken {
    let token = state.new_id("f");
    let name = folder_name(&path);
    lock(&state.batches).folders.insert(token.clone(), path);
    FolderToken { token, name }
}

fn folder(state: &AppState, token: &str) -> Res<PathBuf> {
    lock(&state.batches)
        .folders
        .get(token)
        .cloned()
        .ok_or_else(|| IpcError::not_found(format!("folder {token} is not known; choose the folder again")))
}

/// Opens the native folder picker (on a worker thread) and returns the chosen folder's token.
#[tauri::command]
pub async fn pick_folder<R: Runtime>(purpose: String, app: AppHandle<R>, state: State<'_, AppState>) -> Res<Option<FolderToken>> {
    let title = match purpose.as_str() {
        "input" => "Choose the folder of photos",
        "output" => "Choose where the headshots go",
        other => return Err(IpcError::invalid(format!("unknown folder purpose '{other}' (input or output)"))),
    };
    let dialog = app.dialog().file().set_title(title);
    let picked = tauri::async_runtime::spawn_blocking(move || dialog.blocking_pick_folder())
        .await
        .map_err(|e| IpcError::new("internal", format!("the folder dialog failed: {e}")))?;
    let Some(picked) = picked else { return Ok(None) };
    let path = picked.into_path().map_err(|e| IpcError::new("io", format!("the chosen folder cannot be used: {e}")))?;
    Ok(Some(register_folder(&state, path)))
}

/// Scans the input folder and queues one job per photo (photos done by an earlier run of the same
/// batch are not made again), then wakes the worker.
pub fn start(state: &AppState, input: &str, output: &str, recursive: bool, settings: StudioSettings, template: Option<String>) -> Res<BatchView> {
    check_backdrop(&settings.backdrop)?;
    settings.request(assets_dir().as_deref())?;
    let name_template = template.filter(|t| !t.trim().is_empty()).unwrap_or_else(|| DEFAULT_TEMPLATE.to_string());
    batch::check_template(&name_template)?;
    let spec = BatchSpec { input_dir: folder(state, input)?, output_dir: folder(state, output)?, recursive, settings, name_template };
    let (input, output) = batch::check_folders(&spec)?;
    let scan = batch::scan(&input, recursive)?;
    let lib = state.library()?;
    let (group, _created, unreadable) = batch::queue(&mut lock(lib), &spec, &input, &output, &scan, DecodeLimits::default().max_bytes)?;
    let exporter = Exporter::new(&spec, &output, &group, &scan)?;
    let run = BatchRun { input, output, scan, unreadable, started_at: lock(lib).now(), exporter, export_error: None, report: None };
    lock(&state.batches).runs.insert(group.clone(), run);
    state.wake_worker();
    finish_ready(state);
    status(state, &group)
}

#[tauri::command]
pub async fn start_batch(
    input: String,
    output: String,
    recursive: bool,
    settings: StudioSettings,
    template: Option<String>,
    state: State<'_, AppState>,
) -> Res<BatchView> {
    let state = state.inner().clone();
    // Reading and hashing a folder of photos takes a while: off the IPC thread.
    tauri::async_runtime::spawn_blocking(move || start(&state, &input, &output, recursive, settings, template))
        .await
        .map_err(|e| IpcError::new("internal", format!("the batch could not start: {e}")))?
}

fn file_state(s: JobState) -> String {
    s.to_string()
}

/// The batch's files with their progress, and its report once finished.
pub fn status(state: &AppState, id: &str) -> Res<BatchView> {
    let jobs = lock(state.library()?).list_group(id)?;
    let batches = lock(&state.batches);
    let run = batches.runs.get(id).ok_or_else(|| IpcError::not_found(format!("batch {id} is not running in this session")))?;
    // The latest job of each photo (a re-run adds a new job for a changed or cancelled photo).
    let mut latest: HashMap<String, usize> = HashMap::new();
    for (i, j) in jobs.iter().enumerate() {
        if let Some(name) = j.inputs.first().map(|x| x.name.clone()) {
            latest.insert(name, i);
        }
    }
    let mut files = Vec::new();
    for found in &run.scan.photos {
        let rel = found.rel.to_string_lossy().replace('\\', "/");
        if let Some(s) = run.unreadable.iter().find(|s| s.rel == rel) {
            files.push(FileView { name: rel, state: "failed".into(), progress: 0.0, stage: None, error: Some(s.reason.clone()), started_at: None, finished_at: None });
            continue;
        }
        let view = match latest.get(&rel).and_then(|&i| jobs.get(i)) {
            Some(j) => FileView {
                name: rel,
                state: file_state(j.state),
                progress: j.progress,
                stage: j.stage.clone(),
                error: j.error.clone(),
                started_at: j.started_at,
                finished_at: j.finished_at,
            },
            None => FileView { name: rel, state: "queued".into(), progress: 0.0, stage: None, error: None, started_at: None, finished_at: None },
        };
        files.push(view);
    }
    let total = files.len();
    let finished = files.iter().filter(|f| matches!(f.state.as_str(), "done" | "failed" | "cancelled")).count();
    for s in &run.scan.skipped {
        files.push(FileView { name: s.rel.clone(), state: "not-processed".into(), progress: 0.0, stage: None, error: Some(s.reason.clone()), started_at: None, finished_at: None });
    }
    Ok(BatchView {
        id: id.to_string(),
        input_name: folder_name(&run.input),
        output_name: folder_name(&run.output),
        started_at: run.started_at,
        total,
        finished,
        files,
        warning: run.export_error.clone(),
        report: run.report.clone(),
    })
}

#[tauri::command]
pub fn batch_status(id: String, state: State<'_, AppState>) -> Res<BatchView> {
    status(&state, &id)
}

/// Cancels every photo of the batch not finished yet; what finished is still exported and reported.
pub fn cancel(state: &AppState, id: &str) -> Res<BatchView> {
    if !lock(&state.batches).runs.contains_key(id) {
        return Err(IpcError::not_found(format!("batch {id} is not running in this session")));
    }
    {
        let mut lib = lock(state.library()?);
        let open: Vec<JobId> = lib.list_group(id)?.into_iter().filter(|j| !j.state.is_finished()).map(|j| j.id).collect();
        for job in open {
            lib.cancel_job(&job)?;
        }
    }
    // Queued photos are cancelled at once; a running one stops at its next step (the worker then
    // finishes the batch).
    finish_ready(state);
    state.wake_worker();
    status(state, id)
}

#[tauri::command]
pub fn cancel_batch(id: String, state: State<'_, AppState>) -> Res<BatchView> {
    cancel(&state, &id)
}

fn report_view(rows: &[ReportRow], json: &Path, csv: &Path) -> ReportView {
    let count = |s: &str| rows.iter().filter(|r| r.status == s).count();
    let failures = rows
        .iter()
        .filter(|r| r.status == "failed" || r.status == "not-processed")
        .map(|r| Failure { file: r.input.clone(), reason: r.reason.clone().unwrap_or_else(|| "unknown reason".into()) })
        .collect();
    ReportView {
        done: count("done"),
        earlier: count("skipped"),
        failed: count("failed"),
        cancelled: count("cancelled") + count("queued"),
        not_processed: count("not-processed"),
        failures,
        report_csv: folder_name(csv),
        report_json: folder_name(json),
    }
}

/// Exports and reports every batch of this session whose jobs have all finished. Returns the ids
/// of the batches finished now. Errors are kept in the report's place so the page can show them.
pub fn finish_ready(state: &AppState) -> Vec<String> {
    let Ok(lib) = state.library() else { return vec![] };
    let mut batches = lock(&state.batches);
    let mut finished = Vec::new();
    for (id, run) in batches.runs.iter_mut().filter(|(_, r)| r.report.is_none()) {
        let lib = lock(lib);
        let Ok(jobs) = lib.list_group(id) else { continue };
        if jobs.iter().any(|j| !j.state.is_finished()) {
            continue;
        }
        let stamp = lib.now().to_string();
        let result = run
            .exporter
            .finish(&lib, &run.scan, &run.unreadable)
            .and_then(|rows| batch::write_report(&run.output, &stamp, &rows).map(|(j, c)| report_view(&rows, &j, &c)));
        run.report = Some(match result {
            Ok(r) => r,
            Err(e) => ReportView {
                done: 0,
                earlier: 0,
                failed: 0,
                cancelled: 0,
                not_processed: 0,
                failures: vec![Failure { file: folder_name(&run.output), reason: format!("the headshots could not be written: {e}") }],
                report_csv: String::new(),
                report_json: String::new(),
            },
        });
        finished.push(id.clone());
    }
    finished
}

/// Saves the headshot of a batch job that just finished into the batch's output folder (so the
/// folder fills while the batch runs). Called by the worker with the library unlocked.
pub fn job_finished(state: &AppState, job: &JobId) {
    let Ok(lib) = state.library() else { return };
    let mut batches = lock(&state.batches);
    for run in batches.runs.values_mut().filter(|r| r.report.is_none()) {
        match run.exporter.job_finished(&lock(lib), job) {
            Ok(Some(_)) => return,
            Ok(None) => {}
            Err(e) => {
                run.export_error = Some(e.to_string());
                return;
            }
        }
    }
}

/// Finishes ready batches and tells the page (called by the worker when the queue is empty).
pub fn finish_and_notify<R: Runtime>(app: &AppHandle<R>, state: &AppState) {
    for id in finish_ready(state) {
        let _ = app.emit(BATCH_EVENT, serde_json::json!({"kind": "finished", "batch": id}));
    }
}
