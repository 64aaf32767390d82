//! `likeness upscale`: enlarge images 4x (or 2x) with Real-ESRGAN, written as PNG next to nothing
//! the user already has (never overwrites).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use likeness_core::files::safe_stem;
use likeness_core::models::ModelStore;
use likeness_engine::image_io::{self, DecodeLimits, OutputFormat};
use likeness_engine::progress::{CancelToken, Stage};
use likeness_engine::upscale::{Factor, MAX_OUTPUT_PIXELS, REALESRGAN_X4PLUS};
use serde_json::json;

use crate::engine_cmds::compute_device;
use crate::output;
use crate::Global;

#[derive(Args)]
pub struct UpscaleArgs {
    /// One or more images (JPEG, PNG or WebP).
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// Folder for the results (created if needed): NAME-x4.png; files are never overwritten.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Enlargement: 4, or 2 (the 4x result downscaled with a Lanczos filter).
    #[arg(long, default_value = "4", value_name = "2|4")]
    pub scale: String,
    /// Upscaling model id from the models manifest: realesrgan-x4plus (bundled) or an imported
    /// SRVGGNetCompact such as realesr-general-x4v3 (faster).
    #[arg(long, default_value = REALESRGAN_X4PLUS, value_name = "ID")]
    pub model: String,
    /// Print JSON: {"outputs":[{"input","path","width","height"}],"failures":[{"input","error"}]}.
    #[arg(long)]
    pub json: bool,
}

pub fn upscale(global: &Global, a: UpscaleArgs) -> Result<ExitCode> {
    let factor: Factor = a.scale.parse().context("--scale")?;
    let store = ModelStore::discover(global.models_dir.as_deref())?;
    let device = compute_device(global)?;
    let upscaler = likeness_core::worker::load_upscaler(&store, &a.model, &device)?;
    crate::catch_ctrl_c();
    // Small images are what upscaling is for; big ones are refused before decoding (the 4x
    // result must stay within the engine's output limit).
    let limits = DecodeLimits { min_side: 4, max_pixels: MAX_OUTPUT_PIXELS / 16, ..DecodeLimits::default() };
    let (mut outputs, mut failures) = (Vec::new(), Vec::new());
    for path in &a.images {
        let bar = if a.json { ProgressBar::hidden() } else { ProgressBar::new(1000) };
        bar.set_style(ProgressStyle::with_template("{msg} [{bar:30}] {percent}% {elapsed}").unwrap_or_else(|_| ProgressStyle::default_bar()));
        bar.set_message(path.display().to_string());
        let cancel = CancelToken::new();
        let sink = |_: Stage, f: f32| {
            if crate::stop_requested() {
                cancel.cancel();
            }
            bar.set_position((f.clamp(0.0, 1.0) * 1000.0) as u64);
        };
        let result = output::read_photo(path, limits.max_bytes).and_then(|bytes| {
            let img = image_io::decode(&bytes, &limits).with_context(|| path.display().to_string())?.image;
            let big = upscaler.upscale(&img, factor, &sink, &cancel).with_context(|| path.display().to_string())?;
            let png = image_io::encode(&big, OutputFormat::Png).with_context(|| path.display().to_string())?;
            let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            let dest = output::write_new(&a.out, &safe_stem(&format!("{stem}-x{}", factor.value())), "png", &png)?;
            Ok((dest, big.width(), big.height()))
        });
        bar.finish_and_clear();
        match result {
            Ok((dest, w, h)) => {
                if !a.json {
                    println!("{} -> {} ({w}x{h})", path.display(), dest.display());
                }
                outputs.push(json!({"input": path, "path": dest, "width": w, "height": h}));
            }
            Err(e) => {
                eprintln!("likeness: {e:#}");
                failures.push(json!({"input": path, "error": format!("{e:#}")}));
            }
        }
        if crate::stop_requested() {
            break;
        }
    }
    if a.json {
        println!("{}", json!({"outputs": outputs, "failures": failures}));
    }
    Ok(if failures.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
