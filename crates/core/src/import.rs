//! `likeness models import`: Stable Diffusion models and other user-supplied weights, copied (or
//! linked) into the user's models folder, checked, and recorded.
//!
//! Accepted:
//! - a **diffusers folder** (`model_index.json`, `unet/`, `vae/`, `text_encoder/` [`text_encoder_2/`],
//!   `tokenizer/` [`tokenizer_2/`], `scheduler/`) with `*.safetensors` weights (the `*.fp16.safetensors`
//!   variant is preferred when both are present: half the size, and the engine upcasts on CPU);
//! - a **single-file checkpoint** in the original Stable Diffusion layout (`.safetensors`);
//! - a **weights file of a non-bundled manifest model** (GFPGANv1.4.pth, realesr-general-x4v3.pth),
//!   recognised by its sha256 only.
//!
//! PyTorch pickles (`.ckpt`, `.bin`, `.pt`, `.pth`) are refused unless their sha256 is in the
//! manifest: unpickling can run code hidden in the file.
//!
//! The architecture comes from the safetensors JSON headers alone (names and shapes; the weights
//! are never loaded for it): [`likeness_engine::diffusion::detect`]. Known official files (sha256 in
//! `models/known_diffusion.toml`) are named in the record; unknown files are accepted with a warning.
//!
//! Layout under the data folder:
//!
//! ```text
//! models/imported/<id>/likeness-model.toml   the record: id, arch, layout, dtype, files (sha256 + bytes), official name, link
//! models/imported/<id>/...                   the copied files (not for --link: those stay where they are)
//! models/imported/.tmp-<pid>-<n>/            an import in progress; renamed to <id>/ only when complete
//! ```
//!
//! An import is copied into a temporary folder beside its final place (hashing while copying, every
//! file fsynced), then renamed: a failed, interrupted or killed import leaves no model behind, and
//! a temporary folder whose process is gone is removed by the next start ([`ModelStore::remove_import_leftovers`]).

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

pub use likeness_engine::diffusion::detect::{detect, Arch, DetectError, Detected, Layout};

use crate::error::is_disk_full;
use crate::models::{ModelEntry, ModelState, ModelStore};

/// The record of one imported model, inside its folder.
pub const RECORD_FILE: &str = "likeness-model.toml";
/// Known official diffusion files, next to the manifest.
pub const KNOWN_FILE: &str = "known_diffusion.toml";
/// Prefix of an import in progress inside the imported-models folder.
pub const TEMP_PREFIX: &str = ".tmp-";
/// The largest safetensors JSON header read (the real SDXL single file's is about 1 MB).
const MAX_HEADER: u64 = 100 << 20;
/// The largest config / tokenizer file copied with a diffusers folder.
const MAX_SIDE_FILE: u64 = 64 << 20;
/// Room kept free beyond the files themselves (the record, file system overhead).
const SPACE_MARGIN: u64 = 16 << 20;

/// `<data dir>/models/imported`: where imported models live.
pub fn imported_dir(data_root: &Path) -> PathBuf {
    data_root.join("models").join("imported")
}

// ----------------------------------------------------------------------------------------------
// The engine-facing API.

/// One diffusers component folder (`unet/`, `vae/`, `text_encoder/`, `text_encoder_2/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiffusersComponent {
    pub dir: PathBuf,
    /// `config.json` of the component, when the folder has one.
    pub config: Option<PathBuf>,
    /// The safetensors weights; more than one when the component is sharded.
    pub weights: Vec<PathBuf>,
}

/// Where an installed diffusion model's files are.
// Made once per model load: the size difference between the variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiffusionFiles {
    Diffusers {
        root: PathBuf,
        unet: DiffusersComponent,
        vae: DiffusersComponent,
        text_encoder: DiffusersComponent,
        text_encoder_2: Option<DiffusersComponent>,
        /// Tokenizer folders (`vocab.json`, `merges.txt`); `None` means: use the bundled CLIP tokenizer.
        tokenizer: Option<PathBuf>,
        tokenizer_2: Option<PathBuf>,
        /// `scheduler/` (with `scheduler_config.json`), when present.
        scheduler: Option<PathBuf>,
    },
    /// One checkpoint in the original Stable Diffusion layout.
    SingleFile { path: PathBuf },
}

/// An imported diffusion model, checked (files present, sizes and, for links, modification times
/// as recorded) and ready to be read by the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstalledDiffusion {
    pub id: String,
    pub arch: Arch,
    pub layout: Layout,
    /// "f16", "f32", "bf16" or "mixed": the stored weights' type.
    pub dtype: String,
    pub files: DiffusionFiles,
}

// ----------------------------------------------------------------------------------------------
// Records.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordKind {
    /// A Stable Diffusion model.
    Diffusion,
    /// The weights file of a non-bundled manifest model (GFPGAN, Real-ESRGAN general).
    Weights,
}

/// `likeness-model.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelRecord {
    pub id: String,
    pub kind: RecordKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtype: Option<String>,
    /// The official file name when the sha256 is known, else "unknown".
    pub official: String,
    pub task: String,
    pub license: String,
    /// `--link`: the absolute folder the files are in (they were not copied).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linked_source: Option<PathBuf>,
    pub imported_at: i64,
    pub files: Vec<RecordFile>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordFile {
    /// Relative to the model's folder (or to `linked_source`), `/`-separated.
    pub path: String,
    pub sha256: String,
    pub bytes: u64,
    /// Modification time (ns since 1970) of a linked file when imported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime_ns: Option<i64>,
}

impl ModelRecord {
    fn base(&self, folder: &Path) -> PathBuf {
        self.linked_source.clone().unwrap_or_else(|| folder.to_path_buf())
    }
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.bytes).sum()
    }
}

/// `models/known_diffusion.toml`: official files with their published sha256.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct KnownTable {
    #[serde(default)]
    pub known: Vec<KnownFile>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct KnownFile {
    pub name: String,
    pub sha256: String,
    pub arch: String,
    #[serde(default)]
    pub bytes: Option<u64>,
    #[serde(default)]
    pub license: String,
    #[serde(default)]
    pub source: String,
}

// ----------------------------------------------------------------------------------------------
// Errors.

#[derive(Debug, Error)]
pub enum ImportError {
    #[error("could not {action} {path}: {err}")]
    Io { action: &'static str, path: PathBuf, err: std::io::Error },
    #[error("not enough free space for {path}: the import needs {needed} bytes and {available} are free; free some space and try again (nothing was imported)")]
    DiskFull { path: PathBuf, needed: u64, available: u64 },
    #[error("the disk holding {path} is full; free some space and try again (nothing was imported)")]
    NoSpace { path: PathBuf },
    #[error("{path} does not exist or is not a file or folder")]
    NotFound { path: PathBuf },
    #[error("{path} is a PyTorch pickle ({ext}): loading it can run code hidden in the file, so Likeness does not open it; convert it to .safetensors (for example with the diffusers or kohya conversion scripts) and import that")]
    Pickle { path: PathBuf, ext: String },
    #[error("{path} is not a valid safetensors file ({reason}); the file is damaged or not a model: download or copy it again")]
    NotSafetensors { path: PathBuf, reason: String },
    #[error("{path} is truncated: its header describes {expected} bytes but the file has {actual}; the download or copy did not finish: download or copy it again")]
    Truncated { path: PathBuf, expected: u64, actual: u64 },
    #[error("{path}: {err}")]
    Detect { path: PathBuf, err: DetectError },
    #[error("{path} is an SD 2.x-family model: SD-Turbo and SD 2.1 have identical tensor shapes and this is not a known SD-Turbo file; if it is SD-Turbo, import it again with --arch sd-turbo (SD 2.0 / 2.1 are not supported)")]
    AmbiguousSd2 { path: PathBuf },
    #[error("{path}: --arch {given} does not fit the weights, which are {found}")]
    ArchMismatch { path: PathBuf, given: Arch, found: Arch },
    #[error("{path} is not a model Likeness can import ({reason})")]
    Unrecognised { path: PathBuf, reason: String },
    #[error("{path} has the name of {name} but not its content (sha256 {actual}, published {expected}); the file is damaged or another version: get it again from {source_hint}")]
    HashMismatch { path: PathBuf, name: String, expected: String, actual: String, source_hint: String },
    #[error("{path} is a symbolic link to {target}, outside the folder being imported ({folder}); import the folder the link points into, or copy the real files there (cp -L)")]
    LinkOutside { path: PathBuf, target: PathBuf, folder: PathBuf },
    #[error("{path} changed while it was being imported; import it again when nothing is writing to it")]
    ChangedDuringImport { path: PathBuf },
    #[error("a different model is already imported as '{id}'; choose another name with --id")]
    IdTaken { id: String },
    #[error("'{id}' is not a usable model id: use 1-64 letters, digits, '-', '_' or '.', not starting with '.'")]
    BadId { id: String },
    #[error("no folder for imported models is set (no data folder); set LIKENESS_DATA_DIR or pass --data-dir")]
    NoImportDir,
    #[error("no imported model '{id}'; see `likeness models list`, or import it with `likeness models import PATH`")]
    NotImported { id: String },
    #[error("'{id}' comes with Likeness and cannot be removed")]
    Bundled { id: String },
    #[error("model '{id}' is a {kind}, not a Stable Diffusion model")]
    NotDiffusion { id: String, kind: String },
    #[error("model '{id}': {path} is missing; import the model again (`likeness models import`)")]
    Missing { id: String, path: PathBuf },
    #[error("model '{id}': {path} {what}; run `likeness models verify {id}`, and import the model again")]
    Changed { id: String, path: PathBuf, what: String },
    #[error("model '{id}': the record {path} is damaged ({reason}); import the model again")]
    BadRecord { id: String, path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    Known { path: PathBuf, reason: String },
    #[error("import cancelled; nothing was imported")]
    Cancelled,
}

impl ImportError {
    fn io(action: &'static str, path: impl Into<PathBuf>, err: std::io::Error) -> Self {
        let path = path.into();
        if is_disk_full(&err) {
            ImportError::NoSpace { path }
        } else {
            ImportError::Io { action, path, err }
        }
    }
}

type IResult<T> = std::result::Result<T, ImportError>;

// ----------------------------------------------------------------------------------------------
// Options, progress, outcome.

/// A step of the copy at which tests inject failures (like the vault's fault hook).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportStep {
    /// Before each chunk written.
    Write,
    /// Before the finished temporary folder is renamed into place.
    Rename,
}

pub type ImportFault = Arc<dyn Fn(ImportStep) -> std::io::Result<()> + Send + Sync>;

#[derive(Clone, Default)]
pub struct ImportOptions {
    /// Reference the files where they are (a read-only shared folder) instead of copying them.
    pub link: bool,
    /// The model id (default: from the file or folder name).
    pub id: Option<String>,
    /// The user's word for the architecture; needed only where shapes cannot tell (SD-Turbo vs SD 2.1).
    pub arch: Option<Arch>,
    pub fault: Option<ImportFault>,
}

/// Progress of a long import: bytes read so far of the total; return `false` to cancel.
pub trait ImportProgress {
    fn bytes(&mut self, done: u64, total: u64, file: &str) -> bool;
}

impl<F: FnMut(u64, u64, &str) -> bool> ImportProgress for F {
    fn bytes(&mut self, done: u64, total: u64, file: &str) -> bool {
        self(done, total, file)
    }
}

/// What an import did.
#[derive(Debug, Clone, Serialize)]
pub struct ImportOutcome {
    pub id: String,
    pub kind: RecordKind,
    pub arch: Option<String>,
    pub layout: Option<String>,
    pub dtype: Option<String>,
    pub official: String,
    pub linked_source: Option<PathBuf>,
    pub folder: PathBuf,
    pub files: usize,
    pub bytes: u64,
    /// The same files were imported before (as `id`): nothing was copied again.
    pub already_imported: bool,
    pub warnings: Vec<String>,
}

/// One row of `models list` / `models verify`.
#[derive(Debug, Clone, Serialize)]
pub struct ModelListing {
    pub id: String,
    pub task: String,
    pub license: String,
    pub bundled: bool,
    pub imported: bool,
    pub state: ModelState,
    pub detail: Option<String>,
    pub arch: Option<String>,
    pub layout: Option<String>,
    pub dtype: Option<String>,
    pub official: Option<String>,
    pub linked_source: Option<PathBuf>,
    pub bytes: u64,
}

// ----------------------------------------------------------------------------------------------
// Safetensors headers.

/// One tensor of a safetensors header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<usize>,
}

fn dtype_size(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "F64" | "I64" | "U64" => 8,
        "F32" | "I32" | "U32" => 4,
        "F16" | "BF16" | "I16" | "U16" => 2,
        "I8" | "U8" | "BOOL" | "F8_E4M3" | "F8_E5M2" => 1,
        _ => return None,
    })
}

/// Reads and checks a safetensors header: every tensor's extent fits the file and its shape.
/// Only the header is read, never the tensor data.
pub fn read_safetensors_header(path: &Path) -> IResult<Vec<TensorInfo>> {
    let bad = |reason: String| ImportError::NotSafetensors { path: path.to_path_buf(), reason };
    let mut f = File::open(path).map_err(|e| ImportError::io("open", path, e))?;
    let len = f.metadata().map_err(|e| ImportError::io("read", path, e))?.len();
    if len < 8 {
        return Err(ImportError::Truncated { path: path.into(), expected: 8, actual: len });
    }
    let mut n8 = [0u8; 8];
    f.read_exact(&mut n8).map_err(|e| ImportError::io("read", path, e))?;
    let n = u64::from_le_bytes(n8);
    if !(2..=MAX_HEADER).contains(&n) {
        // A zip (PyTorch's format) starts with "PK": a pickle renamed to .safetensors.
        if n8.starts_with(b"PK") || n8.first() == Some(&0x80) {
            return Err(bad("it is a PyTorch pickle renamed to .safetensors".into()));
        }
        return Err(bad(format!("header length {n} is not plausible")));
    }
    if 8 + n > len {
        return Err(ImportError::Truncated { path: path.into(), expected: 8 + n, actual: len });
    }
    let mut buf = vec![0u8; n as usize];
    f.read_exact(&mut buf).map_err(|e| ImportError::io("read", path, e))?;
    let json: serde_json::Value = serde_json::from_slice(&buf).map_err(|e| bad(format!("header is not JSON: {e}")))?;
    let obj = json.as_object().ok_or_else(|| bad("header is not a JSON object".into()))?;
    let data_len = len - 8 - n;
    let mut tensors = Vec::with_capacity(obj.len());
    let mut end_max = 0u64;
    for (name, v) in obj {
        if name == "__metadata__" {
            continue;
        }
        let dtype = v.get("dtype").and_then(|d| d.as_str()).ok_or_else(|| bad(format!("tensor {name} has no dtype")))?;
        let size = dtype_size(dtype).ok_or_else(|| bad(format!("tensor {name} has unknown dtype {dtype}")))?;
        let shape = v
            .get("shape")
            .and_then(|s| s.as_array())
            .and_then(|a| a.iter().map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok())).collect::<Option<Vec<usize>>>())
            .ok_or_else(|| bad(format!("tensor {name} has no valid shape")))?;
        let offs = v
            .get("data_offsets")
            .and_then(|s| s.as_array())
            .and_then(|a| a.iter().map(|d| d.as_u64()).collect::<Option<Vec<u64>>>())
            .ok_or_else(|| bad(format!("tensor {name} has no data offsets")))?;
        let [start, end] = offs.as_slice() else {
            return Err(bad(format!("tensor {name} has {} data offsets, not 2", offs.len())));
        };
        let elems = shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d as u64));
        let expected = elems.and_then(|e| e.checked_mul(size));
        if end < start || Some(end - start) != expected {
            return Err(bad(format!("tensor {name}: offsets {start}..{end} do not match shape {shape:?} of {dtype}")));
        }
        end_max = end_max.max(*end);
        tensors.push(TensorInfo { name: name.clone(), dtype: dtype.to_string(), shape });
    }
    if end_max > data_len {
        return Err(ImportError::Truncated { path: path.into(), expected: 8 + n + end_max, actual: len });
    }
    Ok(tensors)
}

/// "f16", "f32", "bf16" or "mixed" over the floating-point tensors.
fn weights_dtype(tensors: &[TensorInfo]) -> String {
    let set: BTreeSet<&str> =
        tensors.iter().map(|t| t.dtype.as_str()).filter(|d| d.starts_with('F') || *d == "BF16").collect();
    match set.iter().copied().collect::<Vec<_>>().as_slice() {
        [one] => one.to_ascii_lowercase(),
        [] => "none".into(),
        _ => "mixed".into(),
    }
}

// ----------------------------------------------------------------------------------------------
// Scanning what is imported.

/// One file to bring in: absolute source, path relative to the model folder.
#[derive(Debug, Clone)]
struct SourceFile {
    src: PathBuf,
    rel: String,
    bytes: u64,
}

struct Plan {
    kind: RecordKind,
    /// The folder the files are relative to (canonical).
    base: PathBuf,
    files: Vec<SourceFile>,
    arch: Option<Arch>,
    layout: Option<Layout>,
    dtype: Option<String>,
    /// The SD 2.x family not yet confirmed as SD-Turbo: the known sha256 table decides.
    sd2_pending: bool,
    /// A manifest model (weights kind): its entry.
    entry: Option<ModelEntry>,
    default_id: String,
    warnings: Vec<String>,
}

const PICKLE_EXTS: [&str; 5] = ["ckpt", "pt", "pth", "bin", "pkl"];

fn ext_of(p: &Path) -> String {
    p.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default()
}

fn canonical(p: &Path) -> IResult<PathBuf> {
    p.canonicalize().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            ImportError::NotFound { path: p.into() }
        } else {
            ImportError::io("resolve", p, e)
        }
    })
}

/// The file `p` (inside `folder`, canonical) as a regular file whose real location stays inside.
fn file_inside(p: &Path, folder: &Path) -> IResult<PathBuf> {
    let real = canonical(p)?;
    if !real.starts_with(folder) {
        return Err(ImportError::LinkOutside { path: p.into(), target: real, folder: folder.into() });
    }
    let meta = std::fs::metadata(&real).map_err(|e| ImportError::io("read", &real, e))?;
    if !meta.is_file() {
        return Err(ImportError::Unrecognised { path: p.into(), reason: "not a regular file".into() });
    }
    Ok(real)
}

fn sanitize_id(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' { c.to_ascii_lowercase() } else { '-' })
        .collect();
    s = s.trim_matches(|c| c == '-' || c == '.').to_string();
    s.truncate(64);
    if s.is_empty() {
        "model".into()
    } else {
        s
    }
}

fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && !id.starts_with('.')
        && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}

fn scan_single(path: &Path, store: &ModelStore, opts: &ImportOptions) -> IResult<Plan> {
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let folder = canonical(parent)?;
    let real = file_inside(path, &hf_repo_of_snapshot(&folder).unwrap_or_else(|| folder.clone()))?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let bytes = std::fs::metadata(&real).map_err(|e| ImportError::io("read", &real, e))?.len();
    let ext = ext_of(path);
    let file = SourceFile { src: real.clone(), rel: name.clone(), bytes };

    // A non-bundled manifest model (GFPGAN, ...) is recognised by size, then sha256.
    let candidates: Vec<&ModelEntry> = store
        .manifest()
        .models
        .iter()
        .filter(|m| !m.bundled && m.files.len() == 1 && m.files.iter().any(|f| f.bytes == bytes))
        .collect();
    let named: Vec<&ModelEntry> = store
        .manifest()
        .models
        .iter()
        .filter(|m| !m.bundled && m.files.iter().any(|f| file_name(&f.path) == name))
        .collect();
    if !candidates.is_empty() || (!named.is_empty() && ext != "safetensors") {
        let sha = hash_file(&real, &mut |_, _, _: &str| true, 0, bytes)?;
        if let Some(entry) = store.manifest().models.iter().find(|m| {
            !m.bundled && m.files.len() == 1 && m.files.iter().any(|f| f.sha256.eq_ignore_ascii_case(&sha))
        }) {
            let rel = entry.files.first().map(|f| f.path.clone()).unwrap_or_else(|| name.clone());
            return Ok(Plan {
                kind: RecordKind::Weights,
                base: folder,
                // A copy takes the official name; a link keeps the file where and as it is.
                files: vec![SourceFile { rel: if opts.link { name } else { file_name(&rel).to_string() }, ..file }],
                arch: None,
                layout: None,
                dtype: None,
                sd2_pending: false,
                entry: Some(entry.clone()),
                default_id: entry.id.clone(),
                warnings: Vec::new(),
            });
        }
        if let Some(entry) = named.first() {
            let f = entry.files.iter().find(|f| file_name(&f.path) == name);
            return Err(ImportError::HashMismatch {
                path: path.into(),
                name: name.clone(),
                expected: f.map(|f| f.sha256.clone()).unwrap_or_default(),
                actual: sha,
                source_hint: entry.source.clone(),
            });
        }
    }
    if PICKLE_EXTS.contains(&ext.as_str()) {
        return Err(ImportError::Pickle { path: path.into(), ext: format!(".{ext}") });
    }
    if ext != "safetensors" {
        return Err(ImportError::Unrecognised {
            path: path.into(),
            reason: "expected a .safetensors checkpoint, a diffusers folder, or a model file listed in the manifest".into(),
        });
    }
    let header = read_safetensors_header(&real)?;
    let shapes: Vec<(String, Vec<usize>)> = header.iter().map(|t| (t.name.clone(), t.shape.clone())).collect();
    let det = detect(&shapes).map_err(|err| ImportError::Detect { path: path.into(), err })?;
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let mut plan = Plan {
        kind: RecordKind::Diffusion,
        base: folder,
        files: vec![file],
        arch: Some(det.arch),
        layout: Some(det.layout),
        dtype: Some(weights_dtype(&header)),
        sd2_pending: false,
        entry: None,
        default_id: sanitize_id(&stem),
        warnings: Vec::new(),
    };
    resolve_arch(&mut plan, &det, path, opts, stem.to_ascii_lowercase().contains("turbo"))?;
    Ok(plan)
}

fn file_name(p: &str) -> &str {
    p.rsplit(['/', '\\']).next().unwrap_or(p)
}

/// Applies `--arch` and the SD-Turbo decision.
fn resolve_arch(plan: &mut Plan, det: &Detected, path: &Path, opts: &ImportOptions, named_turbo: bool) -> IResult<()> {
    if let Some(given) = opts.arch {
        let fits = given == det.arch;
        if !fits {
            return Err(ImportError::ArchMismatch { path: path.into(), given, found: det.arch });
        }
        return Ok(());
    }
    if det.ambiguous_sd2 {
        if named_turbo {
            plan.warnings.push(format!(
                "{}: SD-Turbo and SD 2.1 have the same shapes; taken as SD-Turbo because of its name (pass --arch sd-turbo to say so explicitly)",
                path.display()
            ));
        } else {
            plan.sd2_pending = true;
        }
    }
    Ok(())
}

/// Component folders of a diffusers model: (folder, holds weights, required).
const COMPONENTS: [(&str, bool, bool); 7] = [
    ("unet", true, true),
    ("vae", true, true),
    ("text_encoder", true, true),
    ("text_encoder_2", true, false),
    ("tokenizer", false, false),
    ("tokenizer_2", false, false),
    ("scheduler", false, false),
];

/// The Hugging Face cache keeps a downloaded repository as `models--ORG--NAME/` with the files in
/// `blobs/` and each revision as `snapshots/REV/`, a tree of symbolic links into `../../blobs/`.
/// For a snapshot folder this is its `models--...` folder: links may lead there (into its own
/// blobs), nowhere else.
fn hf_repo_of_snapshot(folder: &Path) -> Option<PathBuf> {
    let snapshots = folder.parent()?;
    let repo = snapshots.parent()?;
    let is_repo = repo.file_name()?.to_str()?.starts_with("models--");
    (snapshots.file_name()? == "snapshots" && is_repo && repo.join("blobs").is_dir()).then(|| repo.to_path_buf())
}

/// A Hugging Face cache repository folder (`models--ORG--NAME/`) chosen for import: the snapshot
/// `refs/main` names, or its only snapshot. `None` for any other path.
pub fn hf_snapshot(path: &Path) -> IResult<Option<PathBuf>> {
    let is_repo = path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("models--"));
    let snapshots = path.join("snapshots");
    if !is_repo || !snapshots.is_dir() {
        return Ok(None);
    }
    let unusable = |reason: String| ImportError::Unrecognised { path: path.into(), reason };
    if let Ok(rev) = std::fs::read_to_string(path.join("refs").join("main")) {
        let rev = rev.trim();
        // A revision is one plain folder name, the rule a model id follows (no '/', no "..").
        let dir = snapshots.join(rev);
        if !valid_id(rev) || !dir.is_dir() {
            return Err(unusable(format!("its refs/main names snapshot '{rev}', which is not in snapshots/; download the model again or import a snapshot folder")));
        }
        return Ok(Some(dir));
    }
    let mut revs: Vec<PathBuf> = std::fs::read_dir(&snapshots)
        .map_err(|e| ImportError::io("list", &snapshots, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    revs.sort();
    match revs.as_slice() {
        [one] => Ok(Some(one.clone())),
        [] => Err(unusable("a Hugging Face cache folder with no downloaded snapshot".into())),
        many => Err(unusable(format!(
            "a Hugging Face cache folder with {} snapshots and no refs/main; import one of its snapshots/ folders",
            many.len()
        ))),
    }
}

fn scan_diffusers(dir: &Path, opts: &ImportOptions) -> IResult<Plan> {
    let folder = canonical(dir)?;
    // Where the files may really be: the folder, or for a Hugging Face cache snapshot its repository.
    let hf_repo = hf_repo_of_snapshot(&folder);
    let within = hf_repo.clone().unwrap_or_else(|| folder.clone());
    let mut files = Vec::new();
    let mut shapes: Vec<(String, Vec<usize>)> = Vec::new();
    let mut all_tensors: Vec<TensorInfo> = Vec::new();
    let side = |rel: String, p: &Path, files: &mut Vec<SourceFile>| -> IResult<()> {
        let real = file_inside(p, &within)?;
        let bytes = std::fs::metadata(&real).map_err(|e| ImportError::io("read", &real, e))?.len();
        if bytes > MAX_SIDE_FILE {
            return Err(ImportError::Unrecognised { path: p.into(), reason: format!("a {bytes}-byte config file is not plausible") });
        }
        files.push(SourceFile { src: real, rel, bytes });
        Ok(())
    };
    let index = dir.join("model_index.json");
    if index.exists() {
        side("model_index.json".into(), &index, &mut files)?;
    }
    for (comp, weights, required) in COMPONENTS {
        let cdir = dir.join(comp);
        if !cdir.is_dir() {
            if required {
                return Err(ImportError::Detect {
                    path: dir.into(),
                    err: DetectError::Missing { missing: format!("the {comp}/ folder") },
                });
            }
            continue;
        }
        let mut names: Vec<String> = std::fs::read_dir(&cdir)
            .map_err(|e| ImportError::io("list", &cdir, e))?
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect();
        names.sort();
        let is_side = |n: &str| {
            let e = ext_of(Path::new(n));
            (e == "json" || e == "txt" || e == "model") && !n.starts_with('.')
        };
        for n in names.iter().filter(|n| is_side(n)) {
            side(format!("{comp}/{n}"), &cdir.join(n), &mut files)?;
        }
        if !weights {
            continue;
        }
        let chosen = pick_weights(&names);
        if chosen.is_empty() {
            let pickles: Vec<&String> = names.iter().filter(|n| PICKLE_EXTS.contains(&ext_of(Path::new(n)).as_str())).collect();
            if let Some(p) = pickles.first() {
                return Err(ImportError::Pickle { path: cdir.join(p), ext: format!(".{}", ext_of(Path::new(p))) });
            }
            return Err(ImportError::Detect {
                path: cdir.clone(),
                err: DetectError::Missing { missing: format!("the {comp} weights (*.safetensors)") },
            });
        }
        for n in chosen {
            let p = cdir.join(&n);
            let real = file_inside(&p, &within)?;
            let bytes = std::fs::metadata(&real).map_err(|e| ImportError::io("read", &real, e))?.len();
            let header = read_safetensors_header(&real)?;
            shapes.extend(header.iter().map(|t| (format!("{comp}/{}", t.name), t.shape.clone())));
            all_tensors.extend(header);
            files.push(SourceFile { src: real, rel: format!("{comp}/{n}"), bytes });
        }
    }
    let det = detect(&shapes).map_err(|err| ImportError::Detect { path: dir.into(), err })?;
    // A snapshot's own name is a commit hash: name it after the repository (`models--ORG--NAME`: NAME).
    let name = match &hf_repo {
        Some(repo) => repo.file_name().map(|n| n.to_string_lossy().rsplit("--").next().unwrap_or_default().to_string()).unwrap_or_default(),
        None => folder.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
    };
    let index_name = std::fs::read_to_string(&index)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v.get("_name_or_path").and_then(|n| n.as_str()).map(str::to_ascii_lowercase))
        .unwrap_or_default();
    let mut plan = Plan {
        kind: RecordKind::Diffusion,
        base: folder,
        files,
        arch: Some(det.arch),
        layout: Some(det.layout),
        dtype: Some(weights_dtype(&all_tensors)),
        sd2_pending: false,
        entry: None,
        default_id: sanitize_id(&name),
        warnings: Vec::new(),
    };
    let turbo = name.to_ascii_lowercase().contains("turbo") || index_name.contains("turbo");
    resolve_arch(&mut plan, &det, dir, opts, turbo)?;
    Ok(plan)
}

/// The architecture of a diffusers folder used where it is (`generate --model PATH`, not imported),
/// told as an import tells it but without hashing: an SD 2.x-family folder is SD-Turbo only by its
/// name (folder or `_name_or_path`), else [`ImportError::AmbiguousSd2`] (import it with `--arch`).
pub fn diffusers_arch_in_place(dir: &Path) -> IResult<Option<Arch>> {
    let plan = scan_diffusers(dir, &ImportOptions::default())?;
    if plan.sd2_pending {
        return Err(ImportError::AmbiguousSd2 { path: dir.into() });
    }
    Ok(plan.arch)
}

/// The weight files of one component: the fp16 variant when present, else the plain files
/// (sharded `-0000N-of-0000M` parts count as plain); `.non_ema` / `.ema` variants are skipped.
fn pick_weights(names: &[String]) -> Vec<String> {
    let st: Vec<&String> = names.iter().filter(|n| n.ends_with(".safetensors") && !n.starts_with('.')).collect();
    let variant = |n: &str| -> Option<String> {
        let stem = n.trim_end_matches(".safetensors");
        stem.split_once('.').map(|(_, v)| v.to_string())
    };
    let fp16: Vec<String> = st.iter().filter(|n| variant(n).as_deref() == Some("fp16")).map(|s| s.to_string()).collect();
    if !fp16.is_empty() {
        return fp16;
    }
    st.iter().filter(|n| variant(n).is_none()).map(|s| s.to_string()).collect()
}

// ----------------------------------------------------------------------------------------------
// Copying.

fn hash_file(path: &Path, progress: &mut dyn ImportProgress, done0: u64, total: u64) -> IResult<String> {
    let mut f = File::open(path).map_err(|e| ImportError::io("open", path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut done = done0;
    let label = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    loop {
        let n = f.read(&mut buf).map_err(|e| ImportError::io("read", path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        done += n as u64;
        if !progress.bytes(done, total, &label) {
            return Err(ImportError::Cancelled);
        }
    }
    Ok(hex::encode(h.finalize()))
}

/// Copies `src` to a new file `dst`, hashing what is copied, then fsyncs it. Returns the sha256.
fn copy_hashed(
    src: &SourceFile,
    dst: &Path,
    progress: &mut dyn ImportProgress,
    done: &mut u64,
    total: u64,
    fault: Option<&ImportFault>,
) -> IResult<String> {
    let mut input = File::open(&src.src).map_err(|e| ImportError::io("open", &src.src, e))?;
    if let Some(parent) = dst.parent() {
        std::fs::create_dir_all(parent).map_err(|e| ImportError::io("create", parent, e))?;
    }
    let mut out = std::fs::OpenOptions::new().write(true).create_new(true).open(dst).map_err(|e| ImportError::io("create", dst, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 4 << 20];
    let mut copied = 0u64;
    loop {
        let n = input.read(&mut buf).map_err(|e| ImportError::io("read", &src.src, e))?;
        if n == 0 {
            break;
        }
        let chunk = buf.get(..n).unwrap_or(&[]);
        h.update(chunk);
        if let Some(f) = fault {
            f(ImportStep::Write).map_err(|e| ImportError::io("write", dst, e))?;
        }
        out.write_all(chunk).map_err(|e| ImportError::io("write", dst, e))?;
        copied += n as u64;
        *done += n as u64;
        if !progress.bytes(*done, total, &src.rel) {
            return Err(ImportError::Cancelled);
        }
    }
    if copied != src.bytes {
        return Err(ImportError::ChangedDuringImport { path: src.src.clone() });
    }
    out.sync_all().map_err(|e| ImportError::io("write", dst, e))?;
    Ok(hex::encode(h.finalize()))
}

fn sync_dir(dir: &Path) {
    // Directory fsync makes the rename durable; not every platform / file system allows it.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Free bytes on the file system holding `dir`.
pub fn available_space(dir: &Path) -> std::io::Result<u64> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: `c` is a valid NUL-terminated path and `st` a properly sized out-parameter.
        let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(u64::MAX)
    }
}

/// Checks that `needed` bytes (plus a margin) fit in `available`.
pub fn check_space(dir: &Path, needed: u64, available: u64) -> IResult<()> {
    let needed = needed.saturating_add(SPACE_MARGIN);
    if needed > available {
        return Err(ImportError::DiskFull { path: dir.into(), needed, available });
    }
    Ok(())
}

/// Removes the temporary folder unless the import completed.
struct TempDir {
    path: PathBuf,
    keep: bool,
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn pid_alive(pid: u32) -> bool {
    #[cfg(unix)]
    {
        let Ok(pid) = libc::pid_t::try_from(pid) else { return false };
        // SAFETY: kill with signal 0 only checks that the process exists.
        let rc = unsafe { libc::kill(pid, 0) };
        rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        true
    }
}

fn now_secs() -> i64 {
    std::time::SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

fn mtime_ns(meta: &std::fs::Metadata) -> Option<i64> {
    meta.modified().ok()?.duration_since(UNIX_EPOCH).ok().and_then(|d| i64::try_from(d.as_nanos()).ok())
}

fn rel_path(base: &Path, rel: &str) -> Option<PathBuf> {
    let p = Path::new(rel);
    if p.components().all(|c| matches!(c, Component::Normal(_))) {
        Some(base.join(p))
    } else {
        None
    }
}

// ----------------------------------------------------------------------------------------------
// The store's side.

impl ModelStore {
    fn import_root(&self) -> IResult<&Path> {
        self.imported_dir().ok_or(ImportError::NoImportDir)
    }

    /// The known official diffusion files (`known_diffusion.toml` beside the manifest; empty if absent).
    pub fn known_diffusion(&self) -> IResult<KnownTable> {
        let path = self.dir().join(KNOWN_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text).map_err(|e| ImportError::Known { path, reason: e.to_string() }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(KnownTable::default()),
            Err(e) => Err(ImportError::io("read", path, e)),
        }
    }

    /// Records of every imported model, sorted by id (unreadable records are reported as errors).
    pub fn imported_records(&self) -> Vec<(String, IResult<ModelRecord>)> {
        let Some(root) = self.imported_dir() else { return Vec::new() };
        let Ok(rd) = std::fs::read_dir(root) else { return Vec::new() };
        let mut ids: Vec<String> = rd
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect();
        ids.sort();
        ids.into_iter().map(|id| (id.clone(), self.record(&id))).collect()
    }

    /// The record of imported model `id`.
    pub fn record(&self, id: &str) -> IResult<ModelRecord> {
        let root = self.import_root()?;
        if !valid_id(id) {
            return Err(ImportError::NotImported { id: id.into() });
        }
        let path = root.join(id).join(RECORD_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(ImportError::NotImported { id: id.into() }),
            Err(e) => return Err(ImportError::io("read", path, e)),
        };
        let rec: ModelRecord =
            toml::from_str(&text).map_err(|e| ImportError::BadRecord { id: id.into(), path: path.clone(), reason: e.to_string() })?;
        if rec.id != id {
            return Err(ImportError::BadRecord { id: id.into(), path, reason: format!("it names model '{}'", rec.id) });
        }
        Ok(rec)
    }

    /// Checks the files of a record: present and of the recorded size (and, for links, unmodified
    /// since the import); with `full`, their sha256 too. Returns the absolute paths.
    pub fn check_record(&self, rec: &ModelRecord, full: bool) -> IResult<Vec<PathBuf>> {
        let folder = self.import_root()?.join(&rec.id);
        let base = rec.base(&folder);
        let mut out = Vec::with_capacity(rec.files.len());
        for f in &rec.files {
            let path = rel_path(&base, &f.path).ok_or_else(|| ImportError::BadRecord {
                id: rec.id.clone(),
                path: folder.join(RECORD_FILE),
                reason: format!("file path {} leaves the model folder", f.path),
            })?;
            let meta = match std::fs::metadata(&path) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(ImportError::Missing { id: rec.id.clone(), path }),
                Err(e) => return Err(ImportError::io("read", path, e)),
            };
            if meta.len() != f.bytes {
                let what = format!("has {} bytes, {} when imported (truncated or replaced)", meta.len(), f.bytes);
                return Err(ImportError::Changed { id: rec.id.clone(), path, what });
            }
            if rec.linked_source.is_some() && !full && f.mtime_ns.is_some() && mtime_ns(&meta) != f.mtime_ns {
                let what = "was modified since it was imported".to_string();
                return Err(ImportError::Changed { id: rec.id.clone(), path, what });
            }
            if full {
                let sha = hash_file(&path, &mut |_, _, _: &str| true, 0, f.bytes)?;
                if !sha.eq_ignore_ascii_case(&f.sha256) {
                    let what = format!("is corrupt (sha256 {sha}, {} when imported)", f.sha256);
                    return Err(ImportError::Changed { id: rec.id.clone(), path, what });
                }
            }
            out.push(path);
        }
        Ok(out)
    }

    /// An imported diffusion model for the engine, checked (presence, sizes, link mtimes).
    pub fn diffusion(&self, id: &str) -> IResult<InstalledDiffusion> {
        let rec = self.record(id)?;
        if rec.kind != RecordKind::Diffusion {
            return Err(ImportError::NotDiffusion { id: id.into(), kind: format!("{:?}", rec.kind).to_lowercase() });
        }
        let record_path = self.import_root()?.join(id).join(RECORD_FILE);
        let bad = |reason: String| ImportError::BadRecord { id: id.into(), path: record_path.clone(), reason };
        let arch: Arch = rec.arch.as_deref().unwrap_or("").parse().map_err(|e: DetectError| bad(e.to_string()))?;
        let layout = match rec.layout.as_deref() {
            Some("diffusers") => Layout::Diffusers,
            Some("single-file") => Layout::SingleFile,
            other => return Err(bad(format!("unknown layout {other:?}"))),
        };
        let paths = self.check_record(&rec, false)?;
        let base = rec.base(&self.import_root()?.join(id));
        let files = match layout {
            Layout::SingleFile => {
                let path = paths.into_iter().next().ok_or_else(|| bad("it lists no file".into()))?;
                DiffusionFiles::SingleFile { path }
            }
            Layout::Diffusers => {
                let comp = |name: &str| -> Option<DiffusersComponent> {
                    let prefix = format!("{name}/");
                    let weights: Vec<PathBuf> = rec
                        .files
                        .iter()
                        .filter(|f| f.path.starts_with(&prefix) && f.path.ends_with(".safetensors"))
                        .map(|f| base.join(&f.path))
                        .collect();
                    if weights.is_empty() {
                        return None;
                    }
                    let config = rec.files.iter().any(|f| f.path == format!("{prefix}config.json")).then(|| base.join(name).join("config.json"));
                    Some(DiffusersComponent { dir: base.join(name), config, weights })
                };
                let dir_if = |name: &str| -> Option<PathBuf> {
                    let prefix = format!("{name}/");
                    rec.files.iter().any(|f| f.path.starts_with(&prefix)).then(|| base.join(name))
                };
                DiffusionFiles::Diffusers {
                    root: base.clone(),
                    unet: comp("unet").ok_or_else(|| bad("no unet weights".into()))?,
                    vae: comp("vae").ok_or_else(|| bad("no vae weights".into()))?,
                    text_encoder: comp("text_encoder").ok_or_else(|| bad("no text_encoder weights".into()))?,
                    text_encoder_2: comp("text_encoder_2"),
                    tokenizer: dir_if("tokenizer"),
                    tokenizer_2: dir_if("tokenizer_2"),
                    scheduler: dir_if("scheduler"),
                }
            }
        };
        Ok(InstalledDiffusion { id: rec.id, arch, layout, dtype: rec.dtype.unwrap_or_default(), files })
    }

    /// The path of an imported weights file (a non-bundled manifest model such as `gfpgan-v1.4`),
    /// checked for presence and size; its sha256 was checked against the manifest at import.
    pub fn imported_file(&self, id: &str) -> IResult<PathBuf> {
        let rec = self.record(id)?;
        let paths = self.check_record(&rec, false)?;
        paths.into_iter().next().ok_or_else(|| ImportError::Missing { id: id.into(), path: self.import_root().map(|r| r.join(id)).unwrap_or_default() })
    }

    /// Removes temporary folders of imports whose process is gone (killed or crashed). Returns how many.
    pub fn remove_import_leftovers(&self) -> usize {
        let Some(root) = self.imported_dir() else { return 0 };
        let Ok(rd) = std::fs::read_dir(root) else { return 0 };
        let mut n = 0;
        for e in rd.filter_map(|e| e.ok()) {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(TEMP_PREFIX) else { continue };
            let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
            let stale = match pid {
                Some(pid) => pid != std::process::id() && !pid_alive(pid),
                None => true,
            };
            if stale && std::fs::remove_dir_all(e.path()).is_ok() {
                n += 1;
            }
        }
        n
    }

    /// Imports `path` (see the module doc). The model appears under its id only when complete.
    pub fn import(&self, path: &Path, opts: &ImportOptions, progress: &mut dyn ImportProgress) -> IResult<ImportOutcome> {
        let root = self.import_root()?.to_path_buf();
        std::fs::create_dir_all(&root).map_err(|e| ImportError::io("create", &root, e))?;
        self.remove_import_leftovers();
        if let Some(id) = &opts.id {
            if !valid_id(id) {
                return Err(ImportError::BadId { id: id.clone() });
            }
        }
        let snapshot = hf_snapshot(path)?;
        let path = snapshot.as_deref().unwrap_or(path);
        let meta = std::fs::metadata(path).map_err(|_| ImportError::NotFound { path: path.into() })?;
        let mut plan = if meta.is_dir() {
            scan_diffusers(path, opts)?
        } else if meta.is_file() {
            scan_single(path, self, opts)?
        } else {
            return Err(ImportError::NotFound { path: path.into() });
        };
        let total: u64 = plan.files.iter().map(|f| f.bytes).sum();

        // The same files imported before: nothing to do. Sizes first, sha256 only on a size match.
        let records: Vec<ModelRecord> = self.imported_records().into_iter().filter_map(|(_, r)| r.ok()).collect();
        let src_sizes = sorted_sizes(plan.files.iter().map(|f| f.bytes));
        let same_size: Vec<&ModelRecord> = records
            .iter()
            .filter(|r| r.kind == plan.kind && sorted_sizes(r.files.iter().map(|f| f.bytes)) == src_sizes)
            .collect();
        let mut hashes: Option<Vec<String>> = None;
        if !same_size.is_empty() || plan.sd2_pending {
            let mut done = 0u64;
            let mut v = Vec::with_capacity(plan.files.len());
            for f in &plan.files {
                v.push(hash_file(&f.src, progress, done, total)?);
                done += f.bytes;
            }
            let mut sorted = v.clone();
            sorted.sort();
            for r in &same_size {
                let mut theirs: Vec<String> = r.files.iter().map(|f| f.sha256.to_ascii_lowercase()).collect();
                theirs.sort();
                if theirs == sorted {
                    // Nothing is imported twice; say what of the request that leaves unused.
                    let mut warnings = plan.warnings;
                    if let Some(id) = opts.id.as_deref().filter(|id| *id != r.id) {
                        warnings.push(format!(
                            "these files are already imported as '{}', so --id {id} was not used; remove '{}' first (`likeness models remove {}`) to import them under another id",
                            r.id, r.id, r.id
                        ));
                    }
                    if opts.link != r.linked_source.is_some() {
                        let (was, asked) = if opts.link { ("a copy", "--link was not used") } else { ("a link to its folder", "no copy was made") };
                        warnings.push(format!("these files are already imported as '{}', {was}; {asked}", r.id));
                    }
                    return Ok(outcome(r, &root, true, warnings));
                }
            }
            hashes = Some(v);
        }

        let known = self.known_diffusion()?;
        if plan.sd2_pending {
            let turbo = hashes.iter().flatten().any(|h| {
                known.known.iter().any(|k| k.sha256.eq_ignore_ascii_case(h) && k.arch == Arch::SdTurbo.name())
            });
            if !turbo {
                return Err(ImportError::AmbiguousSd2 { path: path.into() });
            }
        }

        let id = match &opts.id {
            Some(id) => {
                if root.join(id).exists() {
                    return Err(ImportError::IdTaken { id: id.clone() });
                }
                id.clone()
            }
            None => {
                let mut id = plan.default_id.clone();
                let mut n = 2;
                while root.join(&id).exists() {
                    id = format!("{}-{n}", plan.default_id);
                    n += 1;
                }
                id
            }
        };

        if !opts.link {
            let available = available_space(&root).map_err(|e| ImportError::io("check free space on", &root, e))?;
            check_space(&root, total, available)?;
        }
        let tmp_path = root.join(format!("{TEMP_PREFIX}{}-{}", std::process::id(), TEMP_COUNTER.fetch_add(1, Ordering::SeqCst)));
        std::fs::create_dir(&tmp_path).map_err(|e| ImportError::io("create", &tmp_path, e))?;
        let mut tmp = TempDir { path: tmp_path, keep: false };

        let mut files = Vec::with_capacity(plan.files.len());
        let mut done = 0u64;
        for (i, f) in plan.files.iter().enumerate() {
            let dst = rel_path(&tmp.path, &f.rel).ok_or_else(|| ImportError::Unrecognised {
                path: f.src.clone(),
                reason: format!("unusable file name {}", f.rel),
            })?;
            let (sha, mtime) = if opts.link {
                let before = std::fs::metadata(&f.src).map_err(|e| ImportError::io("read", &f.src, e))?;
                let sha = match hashes.as_ref().and_then(|h| h.get(i)) {
                    Some(h) => h.clone(),
                    None => hash_file(&f.src, progress, done, total)?,
                };
                let after = std::fs::metadata(&f.src).map_err(|e| ImportError::io("read", &f.src, e))?;
                if after.len() != f.bytes || mtime_ns(&before) != mtime_ns(&after) {
                    return Err(ImportError::ChangedDuringImport { path: f.src.clone() });
                }
                done += f.bytes;
                (sha, mtime_ns(&after))
            } else {
                let sha = copy_hashed(f, &dst, progress, &mut done, total, opts.fault.as_ref())?;
                if let Some(h) = hashes.as_ref().and_then(|h| h.get(i)) {
                    if !h.eq_ignore_ascii_case(&sha) {
                        return Err(ImportError::ChangedDuringImport { path: f.src.clone() });
                    }
                }
                (sha, None)
            };
            files.push(RecordFile { path: f.rel.clone(), sha256: sha, bytes: f.bytes, mtime_ns: mtime });
        }

        // Official or not: a manifest entry (weights) must match; a known diffusion file names itself.
        let mut official = "unknown".to_string();
        let (mut task, mut license) = ("image-generation".to_string(), "unknown".to_string());
        if let Some(entry) = &plan.entry {
            let expected = entry.files.first().map(|f| f.sha256.as_str()).unwrap_or("");
            let got = files.first().map(|f| f.sha256.as_str()).unwrap_or("");
            if !expected.eq_ignore_ascii_case(got) {
                return Err(ImportError::ChangedDuringImport { path: path.into() });
            }
            official = entry.files.first().map(|f| file_name(&f.path).to_string()).unwrap_or_default();
            task = entry.task.clone();
            license = entry.license.clone();
        } else {
            if plan.arch.is_some_and(Arch::is_inpaint) {
                task = "inpainting".into();
            }
            let hit = files.iter().find_map(|f| known.known.iter().find(|k| k.sha256.eq_ignore_ascii_case(&f.sha256)));
            match hit {
                Some(k) => {
                    if let (Some(a), Ok(ka)) = (plan.arch, k.arch.parse::<Arch>()) {
                        if a != ka {
                            let reason = format!("its sha256 is the official {} ({ka}), but its tensors say {a}; the known-files table or the file is wrong", k.name);
                            return Err(ImportError::Known { path: path.into(), reason });
                        }
                        plan.arch = Some(ka);
                    }
                    official = k.name.clone();
                    if !k.license.is_empty() {
                        license = k.license.clone();
                    }
                }
                None => {
                    let named = plan.files.iter().find_map(|f| known.known.iter().find(|k| file_name(&f.rel) == k.name));
                    plan.warnings.push(match named {
                        Some(k) => format!(
                            "{} is named like the official {} but its sha256 differs: a modified or re-saved copy; imported as an unverified model",
                            path.display(),
                            k.name
                        ),
                        None => format!("{} is not a known official file (its sha256 is not in {KNOWN_FILE}); imported as an unverified model", path.display()),
                    });
                }
            }
        }

        let rec = ModelRecord {
            id: id.clone(),
            kind: plan.kind,
            arch: plan.arch.map(|a| a.name().to_string()),
            layout: plan.layout.map(|l| l.name().to_string()),
            dtype: plan.dtype.clone(),
            official,
            task,
            license,
            linked_source: opts.link.then(|| plan.base.clone()),
            imported_at: now_secs(),
            files,
        };
        let text = toml::to_string(&rec).map_err(|e| ImportError::BadRecord { id: id.clone(), path: tmp.path.join(RECORD_FILE), reason: e.to_string() })?;
        let rec_path = tmp.path.join(RECORD_FILE);
        {
            let mut f = File::create(&rec_path).map_err(|e| ImportError::io("create", &rec_path, e))?;
            f.write_all(text.as_bytes()).map_err(|e| ImportError::io("write", &rec_path, e))?;
            f.sync_all().map_err(|e| ImportError::io("write", &rec_path, e))?;
        }
        for d in subdirs(&tmp.path) {
            sync_dir(&d);
        }
        sync_dir(&tmp.path);
        if let Some(f) = &opts.fault {
            f(ImportStep::Rename).map_err(|e| ImportError::io("rename", &tmp.path, e))?;
        }
        let final_dir = root.join(&id);
        if final_dir.exists() {
            return Err(ImportError::IdTaken { id });
        }
        std::fs::rename(&tmp.path, &final_dir).map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists | std::io::ErrorKind::DirectoryNotEmpty => ImportError::IdTaken { id: id.clone() },
            _ => ImportError::io("rename", &tmp.path, e),
        })?;
        tmp.keep = true;
        sync_dir(&root);
        Ok(outcome(&rec, &root, false, plan.warnings))
    }

    /// Bundled models (sha256-verified), non-bundled manifest models (imported or not) and imported
    /// diffusion models. `full`: check imported files' sha256 too (slow for large models).
    pub fn list_models(&self, full: bool) -> Vec<ModelListing> {
        self.remove_import_leftovers();
        let mut out = Vec::new();
        let records = self.imported_records();
        for m in &self.manifest().models {
            let mut row = ModelListing {
                id: m.id.clone(),
                task: m.task.clone(),
                license: m.license.clone(),
                bundled: m.bundled,
                imported: false,
                state: ModelState::Ok,
                detail: None,
                arch: None,
                layout: None,
                dtype: None,
                official: m.files.first().map(|f| file_name(&f.path).to_string()),
                linked_source: None,
                bytes: m.files.iter().map(|f| f.bytes).sum(),
            };
            if m.bundled {
                if let Err(e) = self.read_verified(&m.id) {
                    row.state = if matches!(e, crate::models::ModelError::Missing { .. }) { ModelState::Missing } else { ModelState::Corrupt };
                    row.detail = Some(e.to_string());
                }
            } else {
                match records.iter().find(|(id, _)| id == &m.id) {
                    Some((_, Ok(rec))) => {
                        row.imported = true;
                        row.linked_source = rec.linked_source.clone();
                        self.fill_state(&mut row, rec, full);
                    }
                    Some((_, Err(e))) => {
                        row.imported = true;
                        row.state = ModelState::Corrupt;
                        row.detail = Some(e.to_string());
                    }
                    None => {
                        row.state = ModelState::NotInstalled;
                        row.detail = Some(format!("not installed; get {} from {} and run `likeness models import FILE`", row.official.clone().unwrap_or_default(), m.source));
                    }
                }
            }
            out.push(row);
        }
        for (id, rec) in records {
            if self.manifest().models.iter().any(|m| m.id == id) {
                continue;
            }
            let mut row = ModelListing {
                id: id.clone(),
                task: String::new(),
                license: String::new(),
                bundled: false,
                imported: true,
                state: ModelState::Ok,
                detail: None,
                arch: None,
                layout: None,
                dtype: None,
                official: None,
                linked_source: None,
                bytes: 0,
            };
            match rec {
                Ok(rec) => {
                    row.task = rec.task.clone();
                    row.license = rec.license.clone();
                    row.arch = rec.arch.clone();
                    row.layout = rec.layout.clone();
                    row.dtype = rec.dtype.clone();
                    row.official = Some(rec.official.clone());
                    row.linked_source = rec.linked_source.clone();
                    row.bytes = rec.bytes();
                    self.fill_state(&mut row, &rec, full);
                }
                Err(e) => {
                    row.state = ModelState::Corrupt;
                    row.detail = Some(e.to_string());
                }
            }
            out.push(row);
        }
        out
    }

    fn fill_state(&self, row: &mut ModelListing, rec: &ModelRecord, full: bool) {
        if let Err(e) = self.check_record(rec, full) {
            row.state = if matches!(e, ImportError::Missing { .. }) { ModelState::Missing } else { ModelState::Corrupt };
            row.detail = Some(e.to_string());
        }
    }
}

fn sorted_sizes(it: impl Iterator<Item = u64>) -> Vec<u64> {
    let mut v: Vec<u64> = it.collect();
    v.sort_unstable();
    v
}

fn subdirs(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.filter_map(|e| e.ok()) {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(subdirs(&e.path()));
                out.push(e.path());
            }
        }
    }
    out
}

fn outcome(rec: &ModelRecord, root: &Path, already: bool, warnings: Vec<String>) -> ImportOutcome {
    ImportOutcome {
        id: rec.id.clone(),
        kind: rec.kind,
        arch: rec.arch.clone(),
        layout: rec.layout.clone(),
        dtype: rec.dtype.clone(),
        official: rec.official.clone(),
        linked_source: rec.linked_source.clone(),
        folder: root.join(&rec.id),
        files: rec.files.len(),
        bytes: rec.bytes(),
        already_imported: already,
        warnings,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_sanitised() {
        assert_eq!(sanitize_id("My Model (v2)"), "my-model--v2");
        assert_eq!(sanitize_id("..."), "model");
        assert!(valid_id("sd15-inpaint_1.0"));
        assert!(!valid_id(".tmp-1"));
        assert!(!valid_id("a/b"));
        assert!(!valid_id(""));
    }

    #[test]
    fn weights_variant_choice() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let both = names(&["config.json", "diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.safetensors"]);
        assert_eq!(pick_weights(&both), vec!["diffusion_pytorch_model.fp16.safetensors"]);
        let plain = names(&["diffusion_pytorch_model.non_ema.safetensors", "diffusion_pytorch_model.safetensors"]);
        assert_eq!(pick_weights(&plain), vec!["diffusion_pytorch_model.safetensors"]);
        let sharded = names(&["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "model.safetensors.index.json"]);
        assert_eq!(pick_weights(&sharded).len(), 2);
        assert!(pick_weights(&names(&["diffusion_pytorch_model.bin"])).is_empty());
    }

    #[test]
    fn space_check_keeps_a_margin() {
        assert!(check_space(Path::new("/x"), 100, 100 + SPACE_MARGIN).is_ok());
        assert!(matches!(check_space(Path::new("/x"), 101, 100 + SPACE_MARGIN), Err(ImportError::DiskFull { .. })));
    }
}
