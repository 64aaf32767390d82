//! `likeness batch`: a folder of photos, the same look for all, a mirrored output tree.

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Mutex;

use anyhow::Result;
use clap::Args;
use likeness_core::batch::{self, BatchSpec};
use likeness_core::worker::WorkerEvent;
use likeness_engine::image_io::DecodeLimits;
use serde_json::json;
use time::OffsetDateTime;

use crate::engine_cmds::{self, StyleArgs};
use crate::library_cmds;
use crate::progress::JobBar;
use crate::Global;

#[derive(Args)]
pub struct BatchArgs {
    /// The folder of photos.
    pub input: PathBuf,
    /// Where the headshots go; subfolders mirror the input's. Nothing there is overwritten.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Also take photos in subfolders (symbolic links are never followed).
    #[arg(long)]
    pub recursive: bool,
    /// Photos processed at the same time.
    #[arg(long = "jobs", default_value_t = 2)]
    pub workers: usize,
    /// Output file names: {stem} (the photo's name), {preset}, {n}; the extension is added.
    #[arg(long, default_value = "{stem}-{preset}")]
    pub name: String,
    #[command(flatten)]
    pub style: StyleArgs,
    /// JSON lines: one per photo as it finishes, then a summary.
    #[arg(long)]
    pub json: bool,
}

pub fn batch(global: &Global, a: BatchArgs) -> Result<ExitCode> {
    let settings = a.style.settings();
    settings.request(engine_cmds::assets_dir().as_deref())?;
    batch::check_template(&a.name)?;
    let spec = BatchSpec {
        input_dir: a.input.clone(),
        output_dir: a.out.clone(),
        recursive: a.recursive,
        settings,
        name_template: a.name.clone(),
    };
    let (input, output) = batch::check_folders(&spec)?;
    let scan = batch::scan(&input, spec.recursive)?;
    let models = engine_cmds::load_models(global)?;
    let mut lib = library_cmds::open_library(global)?;
    let (group, created, unreadable) = batch::queue(&mut lib, &spec, &input, &output, &scan, DecodeLimits::default().max_bytes)?;
    if !a.json {
        eprintln!(
            "likeness: {} photos in {} ({} new or changed, {} not processed)",
            scan.photos.len(),
            a.input.display(),
            created,
            scan.skipped.len() + unreadable.len()
        );
    }
    let exporter = Mutex::new(batch::Exporter::new(&spec, &output, &group, &scan)?);
    // The first export failure (a full or read-only output folder) stops the run gently: what is
    // finished stays in the library and the same command exports it later.
    let export_error: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    let streamed: Mutex<HashSet<String>> = Mutex::new(HashSet::new());
    let lib = Mutex::new(lib);
    let as_json = a.json;
    let hook = |e: &WorkerEvent, bar: &JobBar| {
        let WorkerEvent::Finished { job, .. } = e else { return };
        let mut ex = exporter.lock().unwrap_or_else(|p| p.into_inner());
        let result = {
            let l = lib.lock().unwrap_or_else(|p| p.into_inner());
            ex.job_finished(&l, job)
        };
        match result {
            Ok(Some(row)) => {
                if as_json {
                    let r = bar.rate();
                    println!("{}", json!({"event": "file", "file": row}));
                    println!(
                        "{}",
                        json!({"event": "progress", "done": r.done, "total": r.total,
                               "files_per_second": (r.per_second * 100.0).round() / 100.0,
                               "seconds_left": r.seconds_left.map(|s| s.round())})
                    );
                    streamed.lock().unwrap_or_else(|p| p.into_inner()).insert(row.input);
                }
            }
            Ok(None) => {}
            Err(err) => {
                bar.println(&format!("likeness: could not save into {}: {err}; stopping after the current photos", a.out.display()));
                let mut slot = export_error.lock().unwrap_or_else(|p| p.into_inner());
                if slot.is_none() {
                    *slot = Some(err.into());
                }
                crate::stop_flag().store(true, Ordering::SeqCst);
            }
        }
    };
    let run = library_cmds::work_queue_with(global, &lib, &models, a.workers, !a.json, &hook);
    let lib = lib.into_inner().map_err(|_| anyhow::anyhow!("library lock poisoned"))?;
    let mut exporter = exporter.into_inner().map_err(|_| anyhow::anyhow!("export lock poisoned"))?;
    let finish = exporter.finish(&lib, &scan, &unreadable);
    if let Some(err) = export_error.into_inner().unwrap_or(None) {
        return Err(err.context(format!(
            "the batch stopped: {} photos were saved into {}; finished ones are kept in the library, \
             so running the same command again saves the rest without redoing them",
            exporter.saved_now(),
            a.out.display()
        )));
    }
    // Export what finished even when the run stopped early (Ctrl-C): nothing is lost.
    let rows = finish?;
    let stamp = OffsetDateTime::now_utc().unix_timestamp().to_string();
    let (json_report, csv_report) = batch::write_report(&output, &stamp, &rows)?;
    let report = run?;
    let count = |s: &str| rows.iter().filter(|r| r.status == s).count();
    // Files that are not photos are listed in the report but do not fail the batch.
    let ok = rows.iter().filter(|r| r.status != "not-processed").all(|r| r.status == "done" || r.status == "skipped");
    if a.json {
        // Files that finished in this run were streamed already; the rest (done earlier, not photos,
        // unreadable, still queued) come now.
        let streamed = streamed.into_inner().unwrap_or_default();
        for r in rows.iter().filter(|r| !streamed.contains(&r.input)) {
            println!("{}", json!({"event": "file", "file": r}));
        }
        println!(
            "{}",
            json!({"event": "summary", "group": group, "done": count("done"), "skipped": count("skipped"),
                   "failed": count("failed"), "not_processed": count("not-processed"), "queued": count("queued"),
                   "cancelled": count("cancelled"), "interrupted": report.requeued,
                   "report_json": json_report, "report_csv": csv_report})
        );
    } else {
        for r in rows.iter().filter(|r| r.status != "done" && r.status != "skipped") {
            eprintln!("likeness: {}: {} ({})", r.input, r.status, r.reason.as_deref().unwrap_or(""));
        }
        println!(
            "{} done, {} already done, {} failed, {} not processed; report: {}",
            count("done"),
            count("skipped"),
            count("failed") + count("cancelled") + count("queued"),
            count("not-processed"),
            csv_report.display()
        );
    }
    Ok(if ok && !crate::stop_requested() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
