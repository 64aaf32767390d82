//! `likeness`: make professional headshots from your own photos, offline.
//!
//! A thin layer over likeness-core and likeness-engine: argument parsing, progress display,
//! exit codes. Every failure names the file and what to do, and exits non-zero.

mod batch_cmd;
mod engine_cmds;
mod library_cmds;
mod models_cmd;
mod output;
mod policy_cmd;
mod progress;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "likeness", version, about = "Professional headshots from your own photos, made on this computer.")]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// Options every command takes.
#[derive(Args, Clone)]
pub struct Global {
    /// Where Likeness keeps its state (default: $LIKENESS_DATA_DIR, else the OS data folder).
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Folder with models/manifest.toml (default: $LIKENESS_MODELS_DIR, else the bundled models).
    #[arg(long, global = true, value_name = "DIR")]
    pub models_dir: Option<PathBuf>,
    /// Compute device: auto, cpu or gpu.
    #[arg(long, global = true, default_value = "auto")]
    pub device: String,
}

#[derive(Subcommand)]
enum Command {
    /// Detect faces and print their boxes and keypoints.
    Detect(engine_cmds::DetectArgs),
    /// Write the person mask of a photo as a greyscale PNG.
    Segment(engine_cmds::SegmentArgs),
    /// Make a headshot from each photo.
    Generate(engine_cmds::GenerateArgs),
    /// List, verify or import models.
    #[command(subcommand)]
    Models(models_cmd::ModelsCmd),
    /// Make headshots of every photo in a folder (the same look for all).
    Batch(batch_cmd::BatchArgs),
    /// List, run or cancel jobs in the library.
    #[command(subcommand)]
    Jobs(library_cmds::JobsCmd),
    /// Save outputs from the library into a folder.
    Export(library_cmds::ExportArgs),
    /// Delete what has expired (outputs after the retention period, photos no job needs).
    Sweep {
        /// Judge expiry as of this time (RFC 3339) instead of now; a time earlier than one
        /// already seen never keeps data longer.
        #[arg(long, value_name = "TIME")]
        as_of: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Delete jobs (with their photos and outputs) or single outputs.
    Delete {
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Delete all data Likeness keeps, and its key.
    Purge {
        #[arg(long)]
        all: bool,
        #[arg(long)]
        yes: bool,
    },
    /// Show the machine policy (what IT manages, and from where).
    #[command(subcommand)]
    Policy(policy_cmd::PolicyCmd),
    /// Check the library's database and files (and repair with --repair).
    Doctor {
        #[arg(long)]
        repair: bool,
        #[arg(long)]
        json: bool,
    },
}

static STOP: AtomicBool = AtomicBool::new(false);

/// Set by Ctrl-C: running jobs stop at their next stage and are queued again.
pub fn stop_flag() -> &'static AtomicBool {
    &STOP
}

/// While the queue runs, the first Ctrl-C stops it gently; a second one ends the process (its
/// running jobs are resumed by the next run).
pub fn catch_ctrl_c() {
    let _ = ctrlc::set_handler(|| {
        if STOP.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("likeness: stopping after the current stage (Ctrl-C again to quit now)");
    });
}

pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Detect(a) => engine_cmds::detect(&cli.global, a),
        Command::Segment(a) => engine_cmds::segment(&cli.global, a),
        Command::Generate(a) => engine_cmds::generate(&cli.global, a),
        Command::Models(c) => models_cmd::models(&cli.global, c),
        Command::Batch(a) => batch_cmd::batch(&cli.global, a),
        Command::Jobs(c) => library_cmds::jobs(&cli.global, c),
        Command::Export(a) => library_cmds::export(&cli.global, a),
        Command::Sweep { as_of, json } => library_cmds::sweep(&cli.global, as_of, json),
        Command::Delete { ids } => library_cmds::delete(&cli.global, ids),
        Command::Purge { all, yes } => library_cmds::purge(&cli.global, all, yes),
        Command::Policy(c) => policy_cmd::policy(c),
        Command::Doctor { repair, json } => library_cmds::doctor(&cli.global, repair, json),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("likeness: {e:#}");
            ExitCode::FAILURE
        }
    }
}
