//! `likeness models list | verify | import`: the bundled models and the ones the user imported.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use likeness_core::import::{imported_dir, Arch, ImportOptions, ModelListing};
use likeness_core::models::{ModelState, ModelStore};
use likeness_core::DataPaths;
use serde_json::json;

use crate::Global;

#[derive(Subcommand)]
pub enum ModelsCmd {
    /// List the bundled and imported models and their state (imported files: presence and size).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Check model files against their sha256 (all, or one model); exits non-zero if any is missing or corrupt.
    Verify {
        /// Only this model.
        id: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Import a Stable Diffusion model (a diffusers folder or a single .safetensors checkpoint), or the
    /// weights file of a model the manifest lists as user-imported (e.g. GFPGANv1.4.pth).
    Import {
        /// The folder or file.
        path: PathBuf,
        /// Reference the files where they are (e.g. a read-only shared folder) instead of copying them.
        #[arg(long)]
        link: bool,
        /// The model's id (default: from the file or folder name).
        #[arg(long, value_name = "ID")]
        id: Option<String>,
        /// The architecture, where the shapes cannot tell (SD-Turbo vs SD 2.1): sd15, sd15-inpaint, sdxl,
        /// sdxl-inpaint, sd-turbo.
        #[arg(long, value_name = "ARCH")]
        arch: Option<String>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove an imported model: its copied files (a linked model's own files stay where they are).
    Remove {
        /// The imported model's id (see `likeness models list`).
        id: String,
        /// Required: the copy is deleted, and getting it back means importing it again.
        #[arg(long)]
        yes: bool,
    },
}

/// The models folder, knowing the user's imported models when a data folder resolves.
pub fn model_store(global: &Global) -> Result<ModelStore> {
    let store = ModelStore::discover(global.models_dir.as_deref())?;
    Ok(match DataPaths::resolve(global.data_dir.as_deref()) {
        Ok(paths) => store.with_imported_dir(imported_dir(&paths.root)),
        Err(_) => store,
    })
}

pub fn models(global: &Global, cmd: ModelsCmd) -> Result<ExitCode> {
    match cmd {
        ModelsCmd::List { json } => {
            let store = model_store(global)?;
            let rows = store.list_models(false);
            print_rows(&store, &rows, json);
            Ok(exit_for(&rows))
        }
        ModelsCmd::Verify { id, json } => {
            let store = model_store(global)?;
            let mut rows = store.list_models(true);
            if let Some(id) = id {
                rows.retain(|r| r.id == id);
                if rows.is_empty() {
                    bail!("no model '{id}'; see `likeness models list`");
                }
            }
            print_rows(&store, &rows, json);
            Ok(exit_for(&rows))
        }
        ModelsCmd::Import { path, link, id, arch, json } => import(global, path, link, id, arch, json),
        ModelsCmd::Remove { id, yes } => remove(global, &id, yes),
    }
}

fn exit_for(rows: &[ModelListing]) -> ExitCode {
    let bad = rows.iter().any(|r| matches!(r.state, ModelState::Missing | ModelState::Corrupt));
    if bad {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn state_name(s: ModelState) -> &'static str {
    match s {
        ModelState::Ok => "ok",
        ModelState::Missing => "missing",
        ModelState::Corrupt => "corrupt",
        ModelState::NotInstalled => "not installed",
    }
}

fn print_rows(store: &ModelStore, rows: &[ModelListing], json: bool) {
    if json {
        println!("{}", json!({"models_dir": store.dir(), "imported_dir": store.imported_dir(), "models": rows}));
        return;
    }
    for r in rows {
        let kind = match (&r.arch, r.bundled) {
            (Some(a), _) => a.clone(),
            (None, true) => "bundled".into(),
            (None, false) => "user".into(),
        };
        println!("{:<26} {:<20} {:<14} {:<22} {}", r.id, r.task, kind, r.license, state_name(r.state));
        if let Some(src) = &r.linked_source {
            println!("    linked: {}", src.display());
        }
        if let Some(d) = &r.detail {
            println!("    {d}");
        }
    }
}

fn remove(global: &Global, id: &str, yes: bool) -> Result<ExitCode> {
    // The same gate as imports: on a managed machine IT decides which models are there.
    likeness_core::policy::Policy::machine().check_import()?;
    let store = model_store(global)?;
    let record = likeness_core::models_runtime::removable(&store, id)?;
    let what = match &record.linked_source {
        Some(src) => format!("the link to {} (those files stay)", src.display()),
        None => format!("{} copied file(s), {} bytes", record.files.len(), record.bytes()),
    };
    if !yes {
        bail!("this removes model '{id}': {what}; pass --yes to remove it");
    }
    likeness_core::models_runtime::remove_imported(&store, id)?;
    println!("removed '{id}': {what}");
    Ok(ExitCode::SUCCESS)
}

fn import(global: &Global, path: PathBuf, link: bool, id: Option<String>, arch: Option<String>, json: bool) -> Result<ExitCode> {
    // A machine policy may forbid new models (IT-managed desktops).
    likeness_core::policy::Policy::machine().check_import()?;
    let store = model_store(global)?;
    if store.imported_dir().is_none() {
        bail!("no data folder to import into: set LIKENESS_DATA_DIR or pass --data-dir");
    }
    let arch = arch.map(|a| a.parse::<Arch>()).transpose()?;
    let opts = ImportOptions { link, id, arch, fault: None };
    let bar = if json { ProgressBar::hidden() } else { ProgressBar::new(0) };
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} (eta {eta}) {wide_msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    let mut progress = |done: u64, total: u64, file: &str| {
        bar.set_length(total);
        bar.set_position(done);
        bar.set_message(file.to_string());
        !crate::stop_requested()
    };
    crate::catch_ctrl_c();
    let result = store.import(&path, &opts, &mut progress);
    bar.finish_and_clear();
    // The error names the file and what to do.
    let out = result?;
    for w in &out.warnings {
        eprintln!("likeness: warning: {w}");
    }
    if json {
        println!("{}", serde_json::to_string(&out)?);
    } else if out.already_imported {
        println!("{} is already imported as '{}'; nothing copied", path.display(), out.id);
    } else {
        let what = match (&out.arch, &out.layout) {
            (Some(a), Some(l)) => format!("{a} ({l}, {})", out.dtype.as_deref().unwrap_or("?")),
            _ => out.official.clone(),
        };
        let how = match &out.linked_source {
            Some(src) => format!("linked to {}", src.display()),
            None => format!("copied into {}", out.folder.display()),
        };
        println!("imported '{}': {what}, {} files, {} bytes, {how}", out.id, out.files, out.bytes);
    }
    Ok(ExitCode::SUCCESS)
}
