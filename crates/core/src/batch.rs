//! Batch folders: every photo under a folder, the same look for all, an output tree that mirrors
//! the input, resumable, nothing overwritten, and a report.
//!
//! A batch is a job group in the library. Its id is derived from the input folder, the output
//! folder and the settings, so running the same command again finds the same group: finished
//! photos are skipped, interrupted ones resume, and a photo whose bytes changed is done again.
//! Which output file each job was exported to is kept in `<out>/.likeness-batch.json`, a file
//! Likeness owns, so a re-run never exports twice.
//!
//! Safety rules: symbolic links are never followed (a linked file or folder is listed as skipped),
//! hidden files and folders are skipped, every output path is `out` joined with plain relative
//! components taken from the walk, and an output folder inside the input folder is refused when
//! the walk would enter it.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{CoreError, Result};
use crate::files;
use crate::library::{JobInfo, JobState, Library};
use crate::worker::StudioSettings;

/// File extensions a batch picks up (compared case-insensitively).
pub const PHOTO_EXTENSIONS: [&str; 6] = ["jpg", "jpeg", "png", "webp", "heic", "heif"];
/// The batch's own state file inside the output folder.
pub const STATE_FILE: &str = ".likeness-batch.json";

/// What to run.
#[derive(Debug, Clone)]
pub struct BatchSpec {
    pub input_dir: PathBuf,
    pub output_dir: PathBuf,
    pub recursive: bool,
    pub settings: StudioSettings,
    /// Output name template: {stem} (the photo's name without extension), {preset}, {n} (a
    /// running number in this batch). The extension is added.
    pub name_template: String,
}

/// One file the walk found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Relative to the input folder, plain components only.
    pub rel: PathBuf,
    pub path: PathBuf,
}

/// A file or folder the walk did not take, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    pub rel: String,
    pub reason: String,
}

/// The photos of a folder and what was left out.
#[derive(Debug, Clone, Default)]
pub struct Scan {
    pub photos: Vec<Found>,
    pub skipped: Vec<Skipped>,
}

fn is_hidden(name: &str) -> bool {
    name.starts_with('.')
}

fn is_photo(name: &str) -> bool {
    Path::new(name)
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| PHOTO_EXTENSIONS.iter().any(|p| p.eq_ignore_ascii_case(e)))
}

fn rel_string(rel: &Path) -> String {
    rel.to_string_lossy().replace('\\', "/")
}

/// Checks the two folders: the input exists and is a folder, the output is not the input and, for
/// a recursive walk, not inside it.
pub fn check_folders(spec: &BatchSpec) -> Result<(PathBuf, PathBuf)> {
    let input = fs::canonicalize(&spec.input_dir).map_err(|e| CoreError::io("open the folder", &spec.input_dir, e))?;
    if !input.is_dir() {
        return Err(CoreError::InvalidInput(format!("{} is not a folder", spec.input_dir.display())));
    }
    // The output folder may not exist yet: resolve its nearest existing ancestor.
    let mut existing = spec.output_dir.clone();
    let mut tail = Vec::new();
    let output = loop {
        match fs::canonicalize(&existing) {
            Ok(p) => break tail.iter().rev().fold(p, |acc: PathBuf, c: &std::ffi::OsString| acc.join(c)),
            Err(_) => {
                let Some(name) = existing.file_name().map(|n| n.to_os_string()) else {
                    return Err(CoreError::InvalidInput(format!("{}: cannot resolve the output folder", spec.output_dir.display())));
                };
                tail.push(name);
                existing = match existing.parent() {
                    Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                    _ => PathBuf::from("."),
                };
            }
        }
    };
    if output == input {
        return Err(CoreError::InvalidInput("the output folder is the input folder; choose another output folder".into()));
    }
    if spec.recursive && output.starts_with(&input) {
        return Err(CoreError::InvalidInput(format!(
            "the output folder {} is inside the input folder {}; a recursive batch would read its own outputs - choose an output folder outside it",
            spec.output_dir.display(),
            spec.input_dir.display()
        )));
    }
    check_writable(&output)?;
    Ok((input, output))
}

/// Fails before any photo is processed when the output folder can't take files (a read-only
/// disk or share, no permission), instead of after the first headshot is made.
fn check_writable(output: &Path) -> Result<()> {
    let refuse = |e: std::io::Error| {
        let err = CoreError::io("write into", output, e);
        match err {
            CoreError::DiskFull { .. } => err,
            _ => CoreError::InvalidInput(format!("{}: Likeness cannot write there ({err}); choose an output folder you can write to", output.display())),
        }
    };
    fs::create_dir_all(output).map_err(refuse)?;
    let probe = output.join(format!(".likeness-probe-{}.tmp", std::process::id()));
    fs::OpenOptions::new().write(true).create_new(true).open(&probe).map_err(refuse)?;
    fs::remove_file(&probe).map_err(refuse)
}

/// Walks the input folder without following any symbolic link.
pub fn scan(input: &Path, recursive: bool) -> Result<Scan> {
    let mut scan = Scan::default();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel_dir) = stack.pop() {
        let dir = input.join(&rel_dir);
        let mut entries: Vec<_> = match fs::read_dir(&dir) {
            Ok(rd) => rd.filter_map(|e| e.ok()).collect(),
            Err(e) => {
                scan.skipped.push(Skipped { rel: rel_string(&rel_dir), reason: format!("cannot list the folder: {e}") });
                continue;
            }
        };
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let name_os = entry.file_name();
            let rel = rel_dir.join(&name_os);
            let Some(name) = name_os.to_str() else {
                scan.skipped.push(Skipped { rel: rel_string(&rel), reason: "the name is not valid Unicode".into() });
                continue;
            };
            if is_hidden(name) {
                continue;
            }
            // symlink_metadata: the entry itself, never what a link points to.
            let Ok(meta) = fs::symlink_metadata(entry.path()) else {
                scan.skipped.push(Skipped { rel: rel_string(&rel), reason: "cannot read its details".into() });
                continue;
            };
            let ft = meta.file_type();
            if ft.is_symlink() {
                scan.skipped.push(Skipped { rel: rel_string(&rel), reason: "a symbolic link (not followed)".into() });
            } else if ft.is_dir() {
                if recursive {
                    stack.push(rel);
                } else {
                    scan.skipped.push(Skipped { rel: rel_string(&rel), reason: "a folder (use --recursive)".into() });
                }
            } else if !ft.is_file() {
                scan.skipped.push(Skipped { rel: rel_string(&rel), reason: "not a regular file".into() });
            } else if !is_photo(name) {
                scan.skipped.push(Skipped { rel: rel_string(&rel), reason: "not a photo (JPEG, PNG, WebP or HEIC)".into() });
            } else {
                scan.photos.push(Found { path: entry.path(), rel });
            }
        }
    }
    scan.photos.sort_by(|a, b| a.rel.cmp(&b.rel));
    scan.skipped.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(scan)
}

/// The batch's group id: the same folders and settings give the same group.
pub fn group_id(input: &Path, output: &Path, spec: &BatchSpec) -> String {
    let mut h = Sha256::new();
    for part in [input.to_string_lossy().as_bytes(), output.to_string_lossy().as_bytes(), spec.settings.to_json().as_bytes(), spec.name_template.as_bytes()] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    format!("batch-{}", &hex::encode(h.finalize())[..24])
}

/// What a batch job's settings carry besides the look.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct BatchMark {
    rel: String,
    sha256: String,
}

fn mark_of(job: &JobInfo) -> Option<BatchMark> {
    let v: serde_json::Value = serde_json::from_str(&job.settings_json).ok()?;
    serde_json::from_value(v.get("batch")?.clone()).ok()
}

/// `<out>/.likeness-batch.json`: which job went to which file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BatchState {
    pub group: String,
    /// job id -> output path relative to the output folder.
    pub exported: BTreeMap<String, String>,
}

impl BatchState {
    pub fn load(output: &Path, group: &str) -> Result<BatchState> {
        let path = output.join(STATE_FILE);
        match fs::read(&path) {
            Ok(bytes) => {
                let st: BatchState = serde_json::from_slice(&bytes).map_err(|e| {
                    CoreError::InvalidInput(format!("{}: damaged batch state ({e}); move it away to start the batch afresh", path.display()))
                })?;
                // Another batch (other settings) into the same folder keeps its own records.
                Ok(if st.group == group { st } else { BatchState { group: group.into(), exported: BTreeMap::new() } })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BatchState { group: group.into(), exported: BTreeMap::new() }),
            Err(e) => Err(CoreError::io("read", path, e)),
        }
    }

    pub fn save(&self, output: &Path) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| CoreError::InvalidInput(e.to_string()))?;
        files::replace_own_file(&output.join(STATE_FILE), &bytes)
    }
}

/// What happened to one photo of the batch.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReportRow {
    pub input: String,
    pub output: Option<String>,
    /// done, skipped (done by an earlier run), failed, cancelled, queued (not run yet), not-a-photo ...
    pub status: String,
    pub reason: Option<String>,
    pub job: Option<String>,
    /// Seconds from start to finish of the job, when it ran.
    pub seconds: Option<i64>,
}

/// Queues the batch: one job per photo not already done (or queued) with the same bytes.
/// Returns the group id and how many jobs were created.
pub fn queue(lib: &mut Library, spec: &BatchSpec, input: &Path, output: &Path, scan: &Scan, max_bytes: u64) -> Result<(String, usize, Vec<Skipped>)> {
    let group = group_id(input, output, spec);
    let existing = lib.list_group(&group)?;
    let mut latest: HashMap<String, (JobInfo, BatchMark)> = HashMap::new();
    for job in existing {
        if let Some(mark) = mark_of(&job) {
            latest.insert(mark.rel.clone(), (job, mark));
        }
    }
    let mut created = 0;
    let mut unreadable = Vec::new();
    for found in &scan.photos {
        let rel = rel_string(&found.rel);
        let bytes = match files::read_photo(&found.path, max_bytes) {
            Ok(b) => b,
            Err(e) => {
                unreadable.push(Skipped { rel, reason: e.to_string() });
                continue;
            }
        };
        if bytes.is_empty() {
            unreadable.push(Skipped { rel, reason: "the file is empty".into() });
            continue;
        }
        let sha = hex::encode(Sha256::digest(&bytes));
        if let Some((job, mark)) = latest.get(&rel) {
            // Same bytes: done, failed, waiting or running already; a cancelled one is redone.
            if mark.sha256 == sha && job.state != JobState::Cancelled {
                continue;
            }
        }
        let mut settings = serde_json::to_value(&spec.settings).map_err(|e| CoreError::InvalidSettings(e.to_string()))?;
        settings["batch"] = serde_json::json!({"rel": rel, "sha256": sha});
        lib.create_job_with(crate::library::NewJob {
            inputs: vec![crate::library::NewInput { name: rel, bytes }],
            settings_json: settings.to_string(),
            group_id: Some(group.clone()),
        })?;
        created += 1;
    }
    Ok((group, created, unreadable))
}

fn output_ext(format: &str) -> &str {
    match format {
        "jpeg" => "jpg",
        f => f,
    }
}

fn fill(template: &str, rel: &Path, preset: &str, n: usize) -> Result<String> {
    let stem = rel.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "headshot".into());
    let n = n.to_string();
    files::fill_template(template, &[("stem", &stem), ("input", &stem), ("preset", preset), ("n", &n)])
}

/// Checks a name template before anything runs.
pub fn check_template(template: &str) -> Result<()> {
    fill(template, Path::new("photo.jpg"), "square", 1).map(|_| ())
}

/// Creates `output/rel_dir`, refusing to pass through a symbolic link or a file.
fn output_subdir(output: &Path, rel_dir: &Path) -> Result<PathBuf> {
    let mut dir = output.to_path_buf();
    fs::create_dir_all(&dir).map_err(|e| CoreError::io("create the folder", &dir, e))?;
    for c in rel_dir.components() {
        let Component::Normal(name) = c else {
            return Err(CoreError::InvalidInput(format!("{}: not a plain relative path", rel_dir.display())));
        };
        dir.push(name);
        match fs::symlink_metadata(&dir) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(CoreError::InvalidInput(format!("{}: is a symbolic link; Likeness does not write through links", dir.display())))
            }
            Ok(m) if !m.is_dir() => {
                return Err(CoreError::InvalidInput(format!("{}: exists and is not a folder", dir.display())))
            }
            Ok(_) => {}
            Err(_) => match fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(CoreError::io("create the folder", &dir, e)),
            },
        }
    }
    Ok(dir)
}

/// Exports each finished job of a batch into the mirrored output tree, and builds the report.
///
/// The CLI calls [`Exporter::job_finished`] as each job finishes (so outputs appear while the
/// batch runs and a report line can be streamed), then [`Exporter::finish`] once for the rest.
pub struct Exporter {
    spec: BatchSpec,
    output: PathBuf,
    group: String,
    state: BatchState,
    /// Running number for `{n}` in names.
    n: usize,
    /// Jobs exported by this run (reported as done, not as done by an earlier run).
    now: HashMap<String, String>,
    /// Input relative path -> the walk's entry.
    found: HashMap<String, Found>,
}

impl Exporter {
    pub fn new(spec: &BatchSpec, output: &Path, group: &str, scan: &Scan) -> Result<Exporter> {
        let state = BatchState::load(output, group)?;
        Ok(Exporter {
            spec: spec.clone(),
            output: output.to_path_buf(),
            group: group.to_string(),
            n: state.exported.len(),
            state,
            now: HashMap::new(),
            found: scan.photos.iter().map(|f| (rel_string(&f.rel), f.clone())).collect(),
        })
    }

    /// Exports one job that just finished (when it is done and one of this batch's) and returns
    /// its report row; `None` for a job of another group.
    pub fn job_finished(&mut self, lib: &Library, job: &crate::library::JobId) -> Result<Option<ReportRow>> {
        let job = lib.get_job(job)?;
        if job.group_id.as_deref() != Some(self.group.as_str()) {
            return Ok(None);
        }
        let Some(mark) = mark_of(&job) else { return Ok(None) };
        let Some(found) = self.found.get(&mark.rel).cloned() else { return Ok(None) };
        self.row(lib, &found, &job).map(Some)
    }

    fn row(&mut self, lib: &Library, found: &Found, job: &JobInfo) -> Result<ReportRow> {
        let rel = rel_string(&found.rel);
        let seconds = job.started_at.zip(job.finished_at).map(|(s, f)| f - s);
        let mut row = ReportRow {
            input: rel,
            output: None,
            status: job.state.to_string(),
            reason: job.error.clone(),
            job: Some(job.id.0.clone()),
            seconds,
        };
        if job.state != JobState::Done {
            return Ok(row);
        }
        if let Some(done) = self.now.get(&job.id.0) {
            row.output = Some(done.clone());
            row.reason = None;
        } else if let Some(prev) = self.state.exported.get(&job.id.0) {
            row.output = Some(prev.clone());
            row.status = "skipped".into();
            row.reason = Some("done by an earlier run".into());
        } else if let Some(o) = job.outputs.first() {
            let rel_dir = found.rel.parent().unwrap_or(Path::new(""));
            let dir = output_subdir(&self.output, rel_dir)?;
            let stem = fill(&self.spec.name_template, &found.rel, &self.spec.settings.preset, self.n + 1)?;
            let bytes = lib.get_output(&o.id)?;
            let path = files::write_new(&dir, &stem, output_ext(&o.format), &bytes)?;
            let rel_out = path.strip_prefix(&self.output).map(rel_string).unwrap_or_else(|_| path.display().to_string());
            self.state.exported.insert(job.id.0.clone(), rel_out.clone());
            // Saved after every file, so a crash never exports a job twice. When the record
            // can't be saved (a full disk), the file is taken back so the next run exports it once.
            if let Err(e) = self.state.save(&self.output) {
                self.state.exported.remove(&job.id.0);
                let _ = fs::remove_file(&path);
                return Err(e);
            }
            self.n += 1;
            self.now.insert(job.id.0.clone(), rel_out.clone());
            row.output = Some(rel_out);
            row.reason = None;
        } else {
            row.status = "failed".into();
            row.reason = Some("the output expired or was deleted before it was exported".into());
        }
        Ok(row)
    }

    /// How many photos this run saved into the output folder.
    pub fn saved_now(&self) -> usize {
        self.now.len()
    }

    /// Exports whatever finished and is not exported yet, and returns one row per file the walk
    /// found (photos in walk order, then what was not processed).
    pub fn finish(&mut self, lib: &Library, scan: &Scan, unreadable: &[Skipped]) -> Result<Vec<ReportRow>> {
        let mut latest: HashMap<String, JobInfo> = HashMap::new();
        for job in lib.list_group(&self.group)? {
            if let Some(mark) = mark_of(&job) {
                latest.insert(mark.rel, job);
            }
        }
        let mut rows = Vec::new();
        for found in &scan.photos {
            let rel = rel_string(&found.rel);
            if let Some(s) = unreadable.iter().find(|s| s.rel == rel) {
                rows.push(ReportRow { input: rel, output: None, status: "failed".into(), reason: Some(s.reason.clone()), job: None, seconds: None });
                continue;
            }
            match latest.get(&rel) {
                Some(job) => rows.push(self.row(lib, found, job)?),
                None => rows.push(ReportRow { input: rel, output: None, status: "queued".into(), reason: None, job: None, seconds: None }),
            }
        }
        for s in &scan.skipped {
            rows.push(ReportRow { input: s.rel.clone(), output: None, status: "not-processed".into(), reason: Some(s.reason.clone()), job: None, seconds: None });
        }
        Ok(rows)
    }
}

/// Exports everything finished and not yet exported, and returns the report's rows.
pub fn export_and_report(lib: &Library, spec: &BatchSpec, output: &Path, group: &str, scan: &Scan, unreadable: &[Skipped]) -> Result<Vec<ReportRow>> {
    Exporter::new(spec, output, group, scan)?.finish(lib, scan, unreadable)
}

/// Writes the run's report as `likeness-report-<stamp>.json` and `.csv` in the output folder.
pub fn write_report(output: &Path, stamp: &str, rows: &[ReportRow]) -> Result<(PathBuf, PathBuf)> {
    let json = serde_json::to_vec_pretty(&serde_json::json!({"files": rows})).map_err(|e| CoreError::InvalidInput(e.to_string()))?;
    let jp = files::write_new(output, &format!("likeness-report-{stamp}"), "json", &json)?;
    let mut csv = String::from("input,output,status,reason,job,seconds\n");
    let q = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    for r in rows {
        csv.push_str(&format!(
            "{},{},{},{},{},{}\n",
            q(&r.input),
            q(r.output.as_deref().unwrap_or("")),
            q(&r.status),
            q(r.reason.as_deref().unwrap_or("")),
            q(r.job.as_deref().unwrap_or("")),
            r.seconds.map(|s| s.to_string()).unwrap_or_default()
        ));
    }
    let cp = files::write_new(output, &format!("likeness-report-{stamp}"), "csv", csv.as_bytes())?;
    Ok((jp, cp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates() {
        assert_eq!(fill("{stem}-{preset}-{n}", Path::new("a/b/Photo 1.JPG"), "team", 7).expect("fill"), "Photo 1-team-7");
        assert!(check_template("{nope}").is_err());
        assert!(check_template("{stem").is_err());
        assert_eq!(fill("../{stem}", Path::new("x.jpg"), "p", 1).expect("fill"), "_x", "no path separators reach a name");
    }

    #[test]
    fn extensions_are_case_insensitive() {
        assert!(is_photo("A.JPG") && is_photo("b.jpeg") && is_photo("c.WebP") && is_photo("d.heic"));
        assert!(!is_photo("notes.txt") && !is_photo("jpg"));
    }
}
