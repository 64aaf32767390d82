//! `likeness`: make professional headshots from your own photos, offline.
//!
//! A thin layer over likeness-core and likeness-engine: argument parsing, progress display,
//! exit codes. Every failure names the file and what to do, and exits non-zero.

mod engine_cmds;
mod output;

use std::path::PathBuf;
use std::process::ExitCode;

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
    /// List or verify the installed models.
    #[command(subcommand)]
    Models(engine_cmds::ModelsCmd),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Detect(a) => engine_cmds::detect(&cli.global, a),
        Command::Segment(a) => engine_cmds::segment(&cli.global, a),
        Command::Generate(a) => engine_cmds::generate(&cli.global, a),
        Command::Models(c) => engine_cmds::models(&cli.global, c),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("likeness: {e:#}");
            ExitCode::FAILURE
        }
    }
}
