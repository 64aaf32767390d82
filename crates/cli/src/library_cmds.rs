//! Commands over the local library: jobs, export, sweep, delete, purge, doctor.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use likeness_core::generative::LookRunner;
use likeness_core::worker::{run_queue, StudioRunner, StudioSettings, WorkerEvent};
use likeness_core::{CoreError, JobId, JobInfo, KeySource, Library, OutputId, OutputInfo};
use serde_json::json;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::output;
use crate::progress::JobBar;
use crate::Global;

#[derive(Subcommand)]
pub enum JobsCmd {
    /// List every job with its state and outputs.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Work the queue until it is empty (jobs interrupted by a crash are resumed).
    Run {
        /// Jobs run at the same time.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        #[arg(long)]
        json: bool,
    },
    /// Cancel queued jobs (a running job stops at its next stage).
    Cancel {
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

#[derive(Args)]
pub struct ExportArgs {
    /// Job ids (all their outputs) or output ids.
    #[arg(required = true)]
    pub ids: Vec<String>,
    /// Folder to write into (created if needed; nothing is overwritten).
    #[arg(long, value_name = "DIR")]
    pub to: PathBuf,
    /// File name template: {input} (the photo's name), {preset}, {n} (1, 2, ... in this export),
    /// {job}, {id} (the output id) and {date} (YYYY-MM-DD it was made). The extension is added.
    #[arg(long, default_value = "{input}-{preset}")]
    pub name: String,
    #[arg(long)]
    pub json: bool,
}

/// Opens the library: the OS keyring, else `LIKENESS_PASSPHRASE` (the headless fallback).
pub fn open_library(global: &Global) -> Result<Library> {
    Ok(Library::open(global.data_dir.as_deref(), KeySource::Auto)?)
}

pub fn rfc3339(t: i64) -> String {
    OffsetDateTime::from_unix_timestamp(t).ok().and_then(|d| d.format(&Rfc3339).ok()).unwrap_or_else(|| t.to_string())
}

fn output_json(o: &OutputInfo) -> serde_json::Value {
    json!({"id": o.id, "format": o.format, "size": o.size, "width": o.width, "height": o.height,
           "created_at": rfc3339(o.created_at), "expires_at": rfc3339(o.expires_at)})
}

fn job_json(j: &JobInfo) -> serde_json::Value {
    let settings: serde_json::Value = serde_json::from_str(&j.settings_json).unwrap_or(json!({}));
    json!({
        "id": j.id, "state": j.state, "group": j.group_id,
        "input": j.inputs.first().map(|i| i.name.clone()),
        "inputs": j.inputs.iter().map(|i| i.name.clone()).collect::<Vec<_>>(),
        "settings": settings,
        "created_at": rfc3339(j.created_at), "started_at": j.started_at.map(rfc3339), "finished_at": j.finished_at.map(rfc3339),
        "progress": j.progress, "stage": j.stage, "error": j.error, "attempts": j.attempts,
        "outputs": j.outputs.iter().map(output_json).collect::<Vec<_>>(),
    })
}

pub fn jobs(global: &Global, cmd: JobsCmd) -> Result<ExitCode> {
    match cmd {
        JobsCmd::List { json: as_json } => {
            let lib = open_library(global)?;
            let jobs = lib.list_jobs()?;
            if as_json {
                println!("{}", json!({"jobs": jobs.iter().map(job_json).collect::<Vec<_>>()}));
            } else if jobs.is_empty() {
                println!("no jobs");
            } else {
                for j in &jobs {
                    let input = j.inputs.first().map(|i| i.name.as_str()).unwrap_or("-");
                    println!("{}  {:<9} {}  {}", j.id, j.state, rfc3339(j.created_at), input);
                    if let Some(e) = &j.error {
                        println!("    {e}");
                    }
                    for o in &j.outputs {
                        let days = ((o.expires_at - OffsetDateTime::now_utc().unix_timestamp()).max(0) + 86_399) / 86_400;
                        println!("    output {} {}x{} {}, deleted in {days} days", o.id, o.width, o.height, o.format);
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        JobsCmd::Run { threads, json: as_json } => {
            let lib = open_library(global)?;
            let models = crate::engine_cmds::load_models(global)?;
            let lib = Mutex::new(lib);
            let report = work_queue(global, &lib, &models, threads, !as_json)?;
            if as_json {
                println!("{}", json!({"report": report}));
            } else {
                println!("{} done, {} failed, {} cancelled, {} interrupted", report.done, report.failed, report.cancelled, report.requeued);
            }
            Ok(if report.failed == 0 && !crate::stop_requested() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        JobsCmd::Cancel { ids } => {
            let mut lib = open_library(global)?;
            for id in &ids {
                let state = lib.cancel_job(&JobId(id.clone()))?;
                println!("{id}: {state}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Runs the queue with the studio look, showing a progress bar when asked.
pub fn work_queue(
    global: &Global,
    lib: &Mutex<Library>,
    models: &likeness_engine::pipeline::StudioModels,
    threads: usize,
    show: bool,
) -> Result<likeness_core::worker::RunReport> {
    work_queue_with(global, lib, models, threads, show, &|_, _| {})
}

/// [`work_queue`] with a hook called after the bar has seen each event (outside the library lock).
pub fn work_queue_with(
    global: &Global,
    lib: &Mutex<Library>,
    models: &likeness_engine::pipeline::StudioModels,
    threads: usize,
    show: bool,
    hook: &(dyn Fn(&WorkerEvent, &JobBar) + Sync),
) -> Result<likeness_core::worker::RunReport> {
    let queued = {
        let mut l = lib.lock().map_err(|_| anyhow::anyhow!("library lock poisoned"))?;
        // The retention sweeper runs whenever work starts (and with `likeness sweep`).
        l.sweep()?;
        l.list_jobs()?
    };
    let pending = queued.iter().filter(|j| !j.state.is_finished()).count();
    crate::catch_ctrl_c();
    let bar = JobBar::new(pending, show);
    let warn = |job: &JobId, msg: &str| bar.println(&format!("likeness: job {job}: {msg}"));
    let studio = StudioRunner { models, assets: crate::engine_cmds::assets_dir(), on_warning: Some(&warn) };
    // Diffusion models load on the first generative job only.
    let diffusion = crate::engine_cmds::diffusion_cache(global)?;
    let runner = LookRunner { studio, diffusion: &diffusion };
    let on_event = |e: WorkerEvent| {
        bar.event(&e);
        hook(&e, &bar);
    };
    let report = run_queue(lib, &runner, threads.clamp(1, 16), crate::stop_flag(), &on_event);
    bar.finish();
    Ok(report?)
}

fn parse_time(s: &str) -> Result<i64> {
    let t = OffsetDateTime::parse(s, &Rfc3339)
        .with_context(|| format!("'{s}' is not an RFC 3339 time; write it like 2026-01-31T12:00:00Z"))?;
    Ok(t.unix_timestamp())
}

pub fn sweep(global: &Global, as_of: Option<String>, as_json: bool) -> Result<ExitCode> {
    let mut lib = open_library(global)?;
    let report = match as_of {
        Some(s) => lib.sweep_at(parse_time(&s)?)?,
        None => lib.sweep()?,
    };
    if as_json {
        println!("{}", json!({"as_of": rfc3339(report.judged_at), "report": report}));
    } else {
        println!(
            "as of {}: {} expired outputs deleted, {} photos no job needs deleted, {} files removed",
            rfc3339(report.judged_at),
            report.outputs_expired,
            report.inputs_released,
            report.files_removed
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn delete(global: &Global, ids: Vec<String>) -> Result<ExitCode> {
    let mut lib = open_library(global)?;
    for id in ids {
        match lib.delete_job(&JobId(id.clone())) {
            Ok(()) => println!("deleted job {id}"),
            Err(CoreError::JobNotFound(_)) => {
                lib.delete_output(&OutputId(id.clone())).map_err(|e| match e {
                    CoreError::OutputNotFound(_) => anyhow::anyhow!("{id} is neither a job nor an output; see `likeness jobs list`"),
                    e => e.into(),
                })?;
                println!("deleted output {id}");
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn purge(global: &Global, all: bool, yes: bool) -> Result<ExitCode> {
    if !all || !yes {
        anyhow::bail!(
            "purge deletes every job, photo and output Likeness keeps, and its key; run `likeness purge --all --yes` to confirm (exported files are not touched)"
        );
    }
    let lib = open_library(global)?;
    let dir = lib.data_dir().to_path_buf();
    lib.purge_all()?;
    println!("deleted all Likeness data in {} and its key", dir.display());
    Ok(ExitCode::SUCCESS)
}

pub fn doctor(global: &Global, repair: bool, as_json: bool) -> Result<ExitCode> {
    let mut lib = open_library(global)?;
    let r = lib.doctor(repair)?;
    let integrity = if r.integrity_ok { "ok".to_string() } else { r.integrity_messages.join("; ") };
    if as_json {
        println!(
            "{}",
            json!({"integrity": integrity, "orphan_files": r.orphan_files.len(), "missing_files": r.missing_files.len(),
                   "pending_deletions": r.pending_deletions, "clock_ahead_secs": r.clock_ahead_secs,
                   "repaired": r.repaired, "healthy": r.is_healthy(),
                   "details": {"orphan_files": r.orphan_files, "missing_files": r.missing_files}})
        );
    } else {
        println!("database integrity: {integrity}");
        println!("files without a record: {}", r.orphan_files.len());
        println!("records without a file: {}", r.missing_files.len());
        println!("unfinished deletions: {}", r.pending_deletions);
        if r.repaired {
            println!("repaired");
        } else if !r.is_healthy() {
            println!("run `likeness doctor --repair` to fix this");
        }
    }
    Ok(if r.is_healthy() || r.repaired { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// The outputs `ids` name (job ids: all of the job's outputs).
fn resolve_outputs(lib: &Library, ids: &[String]) -> Result<Vec<(JobInfo, OutputInfo)>> {
    let mut out = Vec::new();
    for id in ids {
        match lib.get_job(&JobId(id.clone())) {
            Ok(job) => {
                if job.outputs.is_empty() {
                    anyhow::bail!("job {id} has no outputs ({}); nothing to export", job.state);
                }
                for o in job.outputs.clone() {
                    out.push((job.clone(), o));
                }
            }
            Err(CoreError::JobNotFound(_)) => {
                let o = lib.output_info(&OutputId(id.clone())).map_err(|e| match e {
                    CoreError::OutputNotFound(_) => anyhow::anyhow!("{id} is neither a job nor an output; see `likeness jobs list`"),
                    e => e.into(),
                })?;
                out.push((lib.get_job(&o.job_id)?, o));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(out)
}

fn ext(format: &str) -> &str {
    match format {
        "jpeg" => "jpg",
        f => f,
    }
}

/// Fills a name template for one output.
pub fn fill_template(template: &str, job: &JobInfo, o: &OutputInfo, n: usize) -> Result<String> {
    let input = job
        .inputs
        .first()
        .map(|i| Path::new(&i.name).file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| i.name.clone()))
        .unwrap_or_else(|| "headshot".into());
    let preset = StudioSettings::from_json(&job.settings_json).map(|s| s.preset).unwrap_or_else(|_| "headshot".into());
    let date = rfc3339(o.created_at).get(..10).unwrap_or_default().to_string();
    let n = n.to_string();
    Ok(likeness_core::files::fill_template(
        template,
        &[("input", &input), ("preset", &preset), ("n", &n), ("job", &job.id.0), ("id", &o.id.0), ("date", &date)],
    )?)
}

/// Exports outputs to `dir` under names from `template`; returns (output id, path) pairs.
pub fn export_outputs(lib: &Library, items: &[(JobInfo, OutputInfo)], dir: &Path, template: &str) -> Result<Vec<(OutputId, PathBuf)>> {
    // The machine policy may have blocked a format after the output was made: check all first.
    for (_, o) in items {
        lib.policy().check_export_format(&o.format)?;
    }
    let mut written = Vec::new();
    for (n, (job, o)) in items.iter().enumerate() {
        let stem = fill_template(template, job, o, n + 1)?;
        let bytes = lib.get_output(&o.id)?;
        let path = output::write_new(dir, &stem, ext(&o.format), &bytes)?;
        written.push((o.id.clone(), path));
    }
    Ok(written)
}

pub fn export(global: &Global, a: ExportArgs) -> Result<ExitCode> {
    let lib = open_library(global)?;
    let items = resolve_outputs(&lib, &a.ids)?;
    // Check the template once before writing anything.
    if let Some((job, o)) = items.first() {
        fill_template(&a.name, job, o, 1)?;
    }
    let written = export_outputs(&lib, &items, &a.to, &a.name)?;
    if a.json {
        println!("{}", json!({"exported": written.iter().map(|(id, p)| json!({"id": id, "path": p})).collect::<Vec<_>>()}));
    } else {
        for (id, p) in &written {
            println!("{id} -> {}", p.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}
