//! Commands that run the engine: detect, segment, generate.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;

use anyhow::{Context, Result};
use clap::Args;
use likeness_core::generative::DiffusionCache;
use likeness_core::models::ModelStore;
use likeness_core::models_runtime;
use likeness_core::worker::StudioSettings;
use likeness_core::{JobId, JobState};
use likeness_engine::device::{self, DevicePref};
use likeness_engine::faces::{FaceDetector, KEYPOINT_NAMES};
use likeness_engine::image_io::{self, DecodeLimits};
use likeness_engine::pipeline::StudioModels;
use likeness_engine::segment::Segmenter;
use serde_json::json;

use crate::library_cmds;
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
    /// Also export the headshots into this folder (created if needed; files are never
    /// overwritten). They are kept in the encrypted library either way.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub style: StyleArgs,
    /// Only record the jobs (encrypted in the library) and return; `likeness jobs run` works them.
    #[arg(long, conflicts_with = "out")]
    pub queue: bool,
    /// Print JSON: {"outputs":[{"input","path","width","height"}],"failures":[...]}.
    #[arg(long)]
    pub json: bool,
}

/// The look, shared by `generate` and `batch`.
#[derive(Args, Clone)]
pub struct StyleArgs {
    /// Framing: square, portrait, passport-eu, us-passport or team.
    #[arg(long, default_value = "square")]
    pub preset: String,
    /// Backdrop: #RRGGBB, white, light-grey, grey, dark-grey, charcoal, black, navy, gradient,
    /// gradient:#TOP:#BOTTOM, blur, or image:NAME (bundled: mottled-grey, warm-beige, blue-grey,
    /// soft-dark) or image:PATH.
    #[arg(long, visible_alias = "backdrop", default_value = "gradient")]
    pub background: String,
    /// Output format: png, jpg or webp.
    #[arg(long, default_value = "png")]
    pub format: String,
    /// JPEG quality (1-100), or for the generative look: draft, standard or high (working resolution,
    /// denoising steps and scheduler).
    #[arg(long, default_value = "92")]
    pub quality: String,
    /// Relight strength (0-1).
    #[arg(long, default_value_t = 0.5)]
    pub relight: f32,
    /// Skin retouch strength (0-1; 0 = off).
    #[arg(long, default_value_t = 0.35)]
    pub retouch: f32,
    /// Largest short side of the output in pixels.
    #[arg(long, default_value_t = 2048)]
    pub max_size: u32,
    /// The look: studio (no diffusion; the default) or generative (Stable Diffusion repaints the
    /// backdrop and, with --attire, the clothes; the face stays the photo's own pixels).
    #[arg(long, default_value = "studio")]
    pub look: String,
    /// Generative look: the imported model's id (`likeness models import`) or its folder / file.
    #[arg(long)]
    pub model: Option<String>,
    /// Generative look: suit, blazer, business-casual, smart-shirt or keep (keep my clothes).
    #[arg(long, default_value = "keep")]
    pub attire: String,
    /// Generative look: soft-studio, natural-window or dramatic. (The backdrop takes studio-grey,
    /// white, office, bookshelf, outdoor or a brand colour #RRGGBB.)
    #[arg(long, default_value = "soft-studio")]
    pub lighting: String,
    /// Generative look: variants per photo, one seed each.
    #[arg(long, default_value_t = 1)]
    pub variants: u32,
    /// Generative look: the first variant's seed (the same seed gives the same image); random if not given.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Generative look: denoising steps instead of the quality level's.
    #[arg(long, hide = true)]
    pub steps: Option<u32>,
    /// Restore the face with GFPGAN v1.4 (a model you import: GFPGANv1.4.pth) at this strength
    /// (0-1, blended with the original); 0.7 when given without a value. Without the model the
    /// headshot is made without restoration and a notice says so.
    #[arg(long, value_name = "STRENGTH", num_args = 0..=1, default_missing_value = "0.7")]
    pub restore: Option<f32>,
    /// The output's short side exactly, in pixels (64-8192; overrides --max-size). A face crop
    /// with fewer pixels is upscaled with Real-ESRGAN (see --upscale).
    #[arg(long, value_name = "N")]
    pub size: Option<u32>,
    /// Real-ESRGAN upscaling: auto (only when --size exceeds the crop), off (resize instead), or
    /// 2 / 4 (always, by that factor).
    #[arg(long, default_value = "auto", value_name = "auto|off|2|4")]
    pub upscale: String,
}

impl StyleArgs {
    pub fn settings(&self) -> StudioSettings {
        // --quality is a JPEG quality when it is a number, else the generative quality level.
        let (jpeg_quality, gen_quality) = match self.quality.parse::<u8>() {
            Ok(q) => (q, "standard".to_owned()),
            Err(_) => (92, self.quality.clone()),
        };
        StudioSettings {
            preset: self.preset.clone(),
            backdrop: self.background.clone(),
            format: self.format.clone(),
            jpeg_quality,
            relight: self.relight,
            retouch: self.retouch,
            max_size: self.max_size,
            look: self.look.clone(),
            model: self.model.clone(),
            attire: self.attire.clone(),
            lighting: self.lighting.clone(),
            gen_quality,
            variants: self.variants,
            // Fixed when the job is made, so a re-run of the job makes the same images.
            // (The studio look has no randomness: its seed stays 0 so equal settings stay equal,
            // which batch groups rely on.)
            seed: self.seed.unwrap_or_else(|| if self.look == "generative" { random_seed() } else { 0 }),
            steps: self.steps,
            restore: self.restore,
            size: self.size,
            upscale: self.upscale.clone(),
        }
    }
}

fn random_seed() -> u64 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    (t as u64) ^ (u64::from(std::process::id()) << 32)
}

/// Imported diffusion models, loaded on first use by the generative look.
pub fn diffusion_cache(global: &Global) -> Result<DiffusionCache> {
    let paths = likeness_core::DataPaths::resolve(global.data_dir.as_deref())?;
    let store = models_runtime::model_store(global.models_dir.as_deref(), Some(&paths.root))?;
    Ok(models_runtime::diffusion_cache(store, compute_device(global)?))
}

pub(crate) fn compute_device(global: &Global) -> Result<candle_core::Device> {
    let pref: DevicePref = global.device.parse()?;
    Ok(device::select(pref)?)
}

pub fn load_models(global: &Global) -> Result<StudioModels> {
    let store = ModelStore::discover(global.models_dir.as_deref())?;
    Ok(models_runtime::studio_models(&store, &compute_device(global)?)?)
}

/// Adds face restoration to `models` when `wanted` (see [`models_runtime::with_restorer`]): when
/// GFPGAN is not installed the jobs run without it and the pipeline's notice says so (once per
/// run, see `work_queue`); a file that is present but unusable is named here.
pub fn with_restorer(global: &Global, models: StudioModels, data_dir: &Path, wanted: bool) -> StudioModels {
    let (Ok(store), Ok(device)) = (models_runtime::model_store(global.models_dir.as_deref(), Some(data_dir)), compute_device(global)) else {
        return models;
    };
    let (models, notice) = models_runtime::with_restorer(models, &store, &device, wanted);
    if let Some(n) = notice {
        eprintln!("likeness: {n}");
    }
    models
}

/// Only the face detector: `detect` needs neither the mesh nor the segmenter.
fn load_detector(global: &Global) -> Result<FaceDetector> {
    let store = ModelStore::discover(global.models_dir.as_deref())?;
    let front = store.read_verified("blazeface-front-128")?;
    let back = store.read_verified("blazeface-back-256")?;
    Ok(FaceDetector::new(front, Some(back), &compute_device(global)?)?)
}

/// Only the segmenter, for `segment`.
fn load_segmenter(global: &Global) -> Result<Segmenter> {
    let store = ModelStore::discover(global.models_dir.as_deref())?;
    let bytes = store.read_verified("selfie-segmentation-256")?;
    Ok(Segmenter::new(bytes, &compute_device(global)?)?)
}

fn limits() -> DecodeLimits {
    DecodeLimits::default()
}

fn read_photo(path: &Path) -> Result<Vec<u8>> {
    output::read_photo(path, limits().max_bytes)
}

pub fn detect(global: &Global, a: DetectArgs) -> Result<ExitCode> {
    let mut detector = load_detector(global)?;
    if let Some(t) = a.threshold {
        if !(0.0..=1.0).contains(&t) {
            anyhow::bail!("--threshold must be between 0 and 1");
        }
        detector = detector.with_threshold(t);
    }
    let bytes = read_photo(&a.photo)?;
    let img = image_io::decode(&bytes, &limits()).with_context(|| a.photo.display().to_string())?.image;
    let faces = detector.detect(&img).with_context(|| a.photo.display().to_string())?;
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
    let segmenter = load_segmenter(global)?;
    let bytes = read_photo(&a.photo)?;
    let img = image_io::decode(&bytes, &limits()).with_context(|| a.photo.display().to_string())?.image;
    let mask = segmenter.segment(&img).with_context(|| a.photo.display().to_string())?;
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

pub use likeness_core::models::assets_dir;

pub fn generate(global: &Global, a: GenerateArgs) -> Result<ExitCode> {
    let settings = a.style.settings();
    // Every option is checked (and an image backdrop read) before anything is queued.
    let req = settings.request(assets_dir().as_deref())?;
    if let (true, Some(id)) = (settings.is_generative(), settings.model.as_deref()) {
        diffusion_cache(global)?.check(id)?;
    }
    // Models are checked before any job is recorded (a queue-only call leaves that to `jobs run`).
    let models = if a.queue { None } else { Some(load_models(global)?) };
    let library = library_cmds::open_library(global)?;
    let models = models.map(|m| with_restorer(global, m, library.data_dir(), settings.restore.is_some()));
    let lib = Mutex::new(library);

    // One job per photo; a photo that cannot be read gets no job.
    let mut jobs: Vec<(PathBuf, JobId)> = Vec::new();
    let mut failures = Vec::new();
    for photo in &a.photos {
        let created = read_photo(photo).and_then(|bytes| {
            let mut lib = lib.lock().map_err(|_| anyhow::anyhow!("library lock poisoned"))?;
            Ok(lib.create_job(&photo.display().to_string(), &bytes, &settings.to_json())?)
        });
        match created {
            Ok(id) => jobs.push((photo.clone(), id)),
            Err(e) => {
                eprintln!("likeness: {e:#}");
                failures.push(json!({"input": photo, "error": format!("{e:#}")}));
            }
        }
    }

    let Some(models) = models else {
        let queued: Vec<_> = jobs.iter().map(|(p, id)| json!({"input": p, "job": id})).collect();
        if a.json {
            println!("{}", json!({"queued": queued, "failures": failures}));
        } else {
            for (p, id) in &jobs {
                println!("{} -> job {id} (queued)", p.display());
            }
        }
        return Ok(if failures.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE });
    };
    let report = library_cmds::work_queue(global, &lib, &models, 1, !a.json);
    let lib = lib.into_inner().map_err(|_| anyhow::anyhow!("library lock poisoned"))?;
    report?;

    let mut outputs = Vec::new();
    let template = format!("{{input}}-{}", req.preset);
    for (photo, id) in &jobs {
        let job = lib.get_job(id)?;
        match job.state {
            JobState::Done => {
                let items: Vec<_> = job.outputs.iter().map(|o| (job.clone(), o.clone())).collect();
                let written = match &a.out {
                    Some(dir) => library_cmds::export_outputs(&lib, &items, dir, &template)?,
                    None => Vec::new(),
                };
                for (_, o) in &items {
                    let path = written.iter().find(|(wid, _)| *wid == o.id).map(|(_, p)| p.clone());
                    if !a.json {
                        match &path {
                            Some(p) => println!("{} -> {} ({}x{})", photo.display(), p.display(), o.width, o.height),
                            None => println!("{} -> output {} in job {} ({}x{})", photo.display(), o.id, id, o.width, o.height),
                        }
                    }
                    outputs.push(json!({"input": photo, "job": id, "id": o.id, "path": path, "width": o.width,
                                        "height": o.height, "expires_at": library_cmds::rfc3339(o.expires_at)}));
                }
            }
            state => {
                let error = job.error.clone().unwrap_or_else(|| format!("the job was {state}"));
                eprintln!("likeness: {error}");
                failures.push(json!({"input": photo, "job": id, "state": state, "error": error}));
            }
        }
    }
    if a.json {
        println!("{}", json!({"outputs": outputs, "failures": failures}));
    }
    Ok(if failures.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
