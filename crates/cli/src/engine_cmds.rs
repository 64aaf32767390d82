//! Commands that run the engine: detect, segment, generate, models.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use likeness_core::models::{ModelState, ModelStore};
use likeness_engine::composite::{Backdrop, StudioStyle};
use likeness_engine::device::{self, DevicePref};
use likeness_engine::faces::KEYPOINT_NAMES;
use likeness_engine::framing::Preset;
use likeness_engine::image_io::{self, DecodeLimits, OutputFormat};
use likeness_engine::pipeline::{self, HeadshotRequest, StudioModels};
use likeness_engine::progress::{CancelToken, Stage};
use serde_json::json;

use crate::output;
use crate::Global;

#[derive(Args)]
pub struct DetectArgs {
    /// The photo.
    pub photo: PathBuf,
    /// Print JSON: {"width","height","faces":[{"score","box","landmarks"}]}.
    #[arg(long)]
    pub json: bool,
    /// Detection score threshold (0-1); default tuned for portraits.
    #[arg(long)]
    pub threshold: Option<f32>,
}

#[derive(Args)]
pub struct SegmentArgs {
    /// The photo.
    pub photo: PathBuf,
    /// Where to write the mask (PNG, the photo's size); never overwritten.
    #[arg(long, value_name = "MASK.png")]
    pub out: PathBuf,
}

#[derive(Args)]
pub struct GenerateArgs {
    /// One or more photos.
    #[arg(required = true)]
    pub photos: Vec<PathBuf>,
    /// Folder to write the headshots into (created if needed; files are never overwritten).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Framing: square, portrait, passport-eu, us-passport or team.
    #[arg(long, default_value = "square")]
    pub preset: String,
    /// Backdrop: #RRGGBB, white, light-grey, grey, dark-grey, charcoal, black, navy, gradient,
    /// gradient:#TOP:#BOTTOM, blur, or image:NAME (bundled: studio-grey, warm-beige, blue-grey,
    /// soft-dark) or image:PATH.
    #[arg(long, visible_alias = "backdrop", default_value = "gradient")]
    pub background: String,
    /// Output format: png, jpg or webp.
    #[arg(long, default_value = "png")]
    pub format: String,
    /// JPEG quality (1-100).
    #[arg(long, default_value_t = 92)]
    pub quality: u8,
    /// Relight strength (0-1).
    #[arg(long, default_value_t = 0.5)]
    pub relight: f32,
    /// Skin retouch strength (0-1; 0 = off).
    #[arg(long, default_value_t = 0.35)]
    pub retouch: f32,
    /// Largest short side of the output in pixels.
    #[arg(long, default_value_t = 2048)]
    pub max_size: u32,
    /// Print JSON: {"outputs":[{"input","path","width","height"}],"failures":[...]}.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand)]
pub enum ModelsCmd {
    /// List the models and their state.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Check every model file against its sha256; exits non-zero if any is missing or corrupt.
    Verify,
}

fn load_models(global: &Global) -> Result<StudioModels> {
    let store = ModelStore::discover(global.models_dir.as_deref())?;
    let bytes = store.studio_model_bytes()?;
    let pref: DevicePref = global.device.parse()?;
    let dev = device::select(pref)?;
    Ok(StudioModels::load(bytes, &dev)?)
}

fn limits() -> DecodeLimits {
    DecodeLimits::default()
}

fn read_photo(path: &Path) -> Result<Vec<u8>> {
    output::read_photo(path, limits().max_bytes)
}

pub fn detect(global: &Global, a: DetectArgs) -> Result<ExitCode> {
    let mut models = load_models(global)?;
    if let Some(t) = a.threshold {
        if !(0.0..=1.0).contains(&t) {
            anyhow::bail!("--threshold must be between 0 and 1");
        }
        models.detector = models.detector.with_threshold(t);
    }
    let bytes = read_photo(&a.photo)?;
    let img = image_io::decode(&bytes, &limits()).with_context(|| a.photo.display().to_string())?.image;
    let faces = models.detector.detect(&img).with_context(|| a.photo.display().to_string())?;
    if a.json {
        let faces: Vec<_> = faces
            .iter()
            .map(|f| {
                let landmarks: serde_json::Map<_, _> =
                    KEYPOINT_NAMES.iter().zip(f.keypoints.iter()).map(|(n, p)| (n.to_string(), json!([p[0], p[1]]))).collect();
                json!({"score": f.score, "box": {"x": f.bbox.x, "y": f.bbox.y, "w": f.bbox.w, "h": f.bbox.h}, "landmarks": landmarks})
            })
            .collect();
        println!("{}", json!({"width": img.width(), "height": img.height(), "faces": faces}));
    } else {
        println!("{}: {}x{}, {} face(s)", a.photo.display(), img.width(), img.height(), faces.len());
        for (i, f) in faces.iter().enumerate() {
            println!(
                "  #{} score {:.2} box x={:.0} y={:.0} w={:.0} h={:.0}",
                i + 1,
                f.score,
                f.bbox.x,
                f.bbox.y,
                f.bbox.w,
                f.bbox.h
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn segment(global: &Global, a: SegmentArgs) -> Result<ExitCode> {
    let models = load_models(global)?;
    let bytes = read_photo(&a.photo)?;
    let img = image_io::decode(&bytes, &limits()).with_context(|| a.photo.display().to_string())?.image;
    let mask = models.segmenter.segment(&img).with_context(|| a.photo.display().to_string())?;
    let grey = image::GrayImage::from_fn(mask.width(), mask.height(), |x, y| {
        image::Luma([(mask.get_pixel(x, y).0[0].clamp(0.0, 1.0) * 255.0).round() as u8])
    });
    let mut png = Vec::new();
    image::DynamicImage::ImageLuma8(grey)
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .context("encoding the mask")?;
    output::write_exact_new(&a.out, &png)?;
    Ok(ExitCode::SUCCESS)
}

/// Resolves `image:NAME` / `image:PATH` backdrops (the engine reads no files).
fn backdrop(spec: &str) -> Result<Backdrop> {
    let Some(name) = Backdrop::image_name(spec) else {
        return Ok(Backdrop::parse(spec)?);
    };
    let path = if name.contains(['/', '\\']) || name.contains('.') {
        PathBuf::from(name)
    } else {
        assets_dir()
            .map(|d| d.join("backdrops").join(format!("{name}.jpg")))
            .filter(|p| p.is_file())
            .with_context(|| format!("no bundled backdrop named '{name}' (try studio-grey, warm-beige, blue-grey or soft-dark)"))?
    };
    let bytes = read_photo(&path)?;
    let img = image_io::decode(&bytes, &limits()).with_context(|| format!("backdrop {}", path.display()))?.image;
    Ok(Backdrop::Image(img))
}

/// The bundled assets folder: $LIKENESS_ASSETS_DIR, next to the executable, or the source tree.
pub fn assets_dir() -> Option<PathBuf> {
    let mut c = Vec::new();
    if let Some(d) = std::env::var_os("LIKENESS_ASSETS_DIR") {
        c.push(PathBuf::from(d));
    }
    if let Some(exe) = std::env::current_exe().ok().and_then(|p| p.parent().map(Path::to_path_buf)) {
        c.push(exe.join("assets"));
        c.push(exe.join("../share/likeness/assets"));
        c.push(exe.join("../lib/likeness/assets"));
        c.push(exe.join("../Resources/assets"));
    }
    c.push(PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../assets")));
    c.into_iter().find(|p| p.join("backdrops").is_dir())
}

pub fn generate(global: &Global, a: GenerateArgs) -> Result<ExitCode> {
    let preset: Preset = a.preset.parse()?;
    let format = match a.format.parse::<OutputFormat>()? {
        OutputFormat::Jpeg { .. } => {
            if !(1..=100).contains(&a.quality) {
                anyhow::bail!("--quality must be between 1 and 100");
            }
            OutputFormat::Jpeg { quality: a.quality }
        }
        f => f,
    };
    if !(0.0..=1.0).contains(&a.relight) || !(0.0..=1.0).contains(&a.retouch) {
        anyhow::bail!("--relight and --retouch take a value between 0 and 1");
    }
    let req = HeadshotRequest {
        preset,
        style: StudioStyle { backdrop: backdrop(&a.background)?, relight: a.relight, retouch: a.retouch },
        format,
        max_short_side: a.max_size.max(64),
        limits: limits(),
    };
    let models = load_models(global)?;

    let bar = if a.json { ProgressBar::hidden() } else { ProgressBar::new((a.photos.len() * Stage::ALL.len()) as u64) };
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} {wide_msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    let bar = Arc::new(bar);
    let cancel = CancelToken::new();

    let mut outputs = Vec::new();
    let mut failures = Vec::new();
    for (i, photo) in a.photos.iter().enumerate() {
        let name = photo.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let base = (i * Stage::ALL.len()) as u64;
        let sink = {
            let bar = bar.clone();
            let name = name.clone();
            move |stage: Stage, _f: f32| {
                let k = Stage::ALL.iter().position(|s| *s == stage).unwrap_or(0) as u64;
                bar.set_position(base + k);
                bar.set_message(format!("{name}: {}", stage.name()));
            }
        };
        let result = read_photo(photo).and_then(|bytes| {
            pipeline::studio_headshot(&models, &bytes, &req, &sink, &cancel).with_context(|| photo.display().to_string())
        });
        match result.and_then(|shot| {
            let stem = output::safe_stem(&format!(
                "{}-{}",
                photo.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
                preset
            ));
            let path = output::write_new(&a.out, &stem, format.extension(), &shot.encoded)?;
            Ok((shot, path))
        }) {
            Ok((shot, path)) => {
                for w in &shot.warnings {
                    bar.suspend(|| eprintln!("likeness: {}: {w}", photo.display()));
                }
                outputs.push(json!({"input": photo, "path": path, "width": shot.width, "height": shot.height,
                                    "warnings": shot.warnings,
                                    "timings_ms": {"decode": shot.timings.decode.as_secs_f64() * 1e3,
                                                   "total": shot.timings.total().as_secs_f64() * 1e3}}));
                if !a.json {
                    bar.suspend(|| println!("{} -> {} ({}x{})", photo.display(), path.display(), shot.width, shot.height));
                }
            }
            Err(e) => {
                bar.suspend(|| eprintln!("likeness: {e:#}"));
                failures.push(json!({"input": photo, "error": format!("{e:#}")}));
            }
        }
        bar.set_position(base + Stage::ALL.len() as u64);
    }
    bar.finish_and_clear();
    if a.json {
        println!("{}", json!({"outputs": outputs, "failures": failures}));
    }
    Ok(if failures.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

pub fn models(global: &Global, cmd: ModelsCmd) -> Result<ExitCode> {
    let store = ModelStore::discover(global.models_dir.as_deref())?;
    let statuses = store.verify_all();
    let bad = statuses.iter().filter(|s| s.state != ModelState::Ok).count();
    match cmd {
        ModelsCmd::List { json: true } => {
            println!("{}", json!({"models_dir": store.dir(), "models": statuses}));
        }
        ModelsCmd::List { json: false } | ModelsCmd::Verify => {
            for s in &statuses {
                println!("{:<26} {:<20} {:<8} {:?}", s.id, s.task, s.license, s.state);
                if let Some(d) = &s.detail {
                    println!("    {d}");
                }
            }
        }
    }
    Ok(if bad == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
