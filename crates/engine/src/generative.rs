//! The generative look: Stable Diffusion repaints the backdrop (and, when an attire is chosen, the clothes)
//! of the framed crop under a style prompt, while the person's real face, hair and neck stay the photo's own
//! pixels. Outside a feathered seam the kept region is copied byte for byte from the input.
//!
//! decode -> detect -> face mesh -> framing -> segmentation -> masks -> inpaint (N seeds) -> seam blend -> encode.

use image::imageops::FilterType;
use image::RgbImage;

use crate::composite::rasterize_polygon;
use crate::diffusion::config::Spacing;
use crate::diffusion::pipeline::{inpaint, DiffusionModel, InpaintRequest};
use crate::diffusion::scheduler::SamplerKind;
use crate::error::{EngineError, Result};
use crate::framing;
use crate::image_io;
use crate::imgops::{self, Border, Mask};
use crate::pipeline::{
    face_geometry, face_regions, inside_mask, restore_crop, soften_extension, upscale_crop, Headshot, HeadshotRequest, Resize, StageTimings,
    StudioModels, UpscalePlan,
};
use crate::progress::{CancelToken, ProgressSink, Stage};

/// What the person wears in the result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attire {
    Suit,
    Blazer,
    BusinessCasual,
    SmartShirt,
    /// Keep my clothes: only the backdrop is regenerated.
    Keep,
}

/// "a, b, c or d" of the canonical values (for error messages).
fn one_of(values: &[&str]) -> String {
    match values {
        [] => String::new(),
        [one] => (*one).to_owned(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

impl Attire {
    /// Every attire, in the order front ends offer them.
    pub const ALL: [Self; 5] = [Self::Keep, Self::Suit, Self::Blazer, Self::BusinessCasual, Self::SmartShirt];

    /// The canonical value (`--attire`, job settings).
    pub fn value(self) -> &'static str {
        match self {
            Self::Suit => "suit",
            Self::Blazer => "blazer",
            Self::BusinessCasual => "business-casual",
            Self::SmartShirt => "smart-shirt",
            Self::Keep => "keep",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::Suit => "Suit",
            Self::Blazer => "Blazer",
            Self::BusinessCasual => "Business casual",
            Self::SmartShirt => "Smart shirt",
            Self::Keep => "Keep my clothes",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        if let Some(a) = Self::ALL.into_iter().find(|a| a.value() == s) {
            return Ok(a);
        }
        Ok(match s {
            "business_casual" => Self::BusinessCasual,
            "smart_shirt" | "shirt" => Self::SmartShirt,
            "keep-my-clothes" | "none" => Self::Keep,
            other => {
                let values: Vec<&str> = Self::ALL.iter().map(|a| a.value()).collect();
                return Err(EngineError::InvalidOption(format!("unknown attire '{other}'; use {}", one_of(&values))));
            }
        })
    }
    fn prompt(self) -> &'static str {
        match self {
            Self::Suit => "wearing a tailored dark business suit with a crisp white shirt",
            Self::Blazer => "wearing a well-fitted blazer over a plain top",
            Self::BusinessCasual => "wearing smart business casual clothes, a neat knit sweater over a collared shirt",
            Self::SmartShirt => "wearing a pressed smart button-down shirt",
            Self::Keep => "",
        }
    }
}

/// What is behind the person.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GenBackdrop {
    StudioGrey,
    White,
    Office,
    Bookshelf,
    Outdoor,
    /// A brand colour, `#RRGGBB`.
    Brand([u8; 3]),
}

impl GenBackdrop {
    /// Every named backdrop, in the order front ends offer them (a brand colour is any `#RRGGBB`).
    pub const NAMED: [Self; 5] = [Self::StudioGrey, Self::White, Self::Office, Self::Bookshelf, Self::Outdoor];

    /// A named backdrop's canonical value (`--backdrop`, job settings); `None` for a brand colour.
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            Self::StudioGrey => "studio-grey",
            Self::White => "white",
            Self::Office => "office",
            Self::Bookshelf => "bookshelf",
            Self::Outdoor => "outdoor",
            Self::Brand(_) => return None,
        })
    }

    /// The canonical value; a brand colour's is its `#rrggbb`.
    pub fn value(self) -> String {
        match self {
            Self::Brand([r, g, b]) => format!("#{r:02x}{g:02x}{b:02x}"),
            named => named.name().unwrap_or_default().to_owned(),
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::StudioGrey => "Studio grey",
            Self::White => "White",
            Self::Office => "Office",
            Self::Bookshelf => "Bookshelf",
            Self::Outdoor => "Outdoor",
            Self::Brand(_) => "Brand colour",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        if let Some(b) = Self::NAMED.into_iter().find(|b| b.name() == Some(s)) {
            return Ok(b);
        }
        Ok(match s {
            "studio-gray" | "grey" | "gray" | "studio" => Self::StudioGrey,
            hex if hex.starts_with('#') && hex.len() == 7 => {
                let c = |i: usize| u8::from_str_radix(hex.get(i..i + 2).unwrap_or("zz"), 16);
                match (c(1), c(3), c(5)) {
                    (Ok(r), Ok(g), Ok(b)) => Self::Brand([r, g, b]),
                    _ => return Err(EngineError::InvalidOption(format!("'{hex}' is not a #RRGGBB colour"))),
                }
            }
            other => {
                let mut values: Vec<String> = Self::NAMED.iter().map(|b| b.value()).collect();
                values.push("a brand colour #RRGGBB".into());
                let values: Vec<&str> = values.iter().map(String::as_str).collect();
                return Err(EngineError::InvalidOption(format!("unknown backdrop '{other}'; use {}", one_of(&values))));
            }
        })
    }
    fn prompt(self) -> String {
        match self {
            Self::StudioGrey => "plain mottled studio grey backdrop".into(),
            Self::White => "clean seamless white studio background".into(),
            Self::Office => "softly blurred modern office interior in the background".into(),
            Self::Bookshelf => "softly blurred wooden bookshelf with books in the background".into(),
            Self::Outdoor => "softly blurred green park outdoors in the background, shallow depth of field".into(),
            Self::Brand(c) => format!("plain seamless studio backdrop in the solid colour {}", colour_name(c)),
        }
    }
}

/// A colour described in words (the text encoder does not read hex codes).
fn colour_name(c: [u8; 3]) -> String {
    let [r, g, b] = c.map(f32::from);
    let (max, min) = (r.max(g).max(b), r.min(g).min(b));
    let light = (max + min) / 510.0;
    let tone = if light > 0.75 { "light " } else if light < 0.3 { "dark " } else { "" };
    if max - min < 20.0 {
        return if light > 0.85 { "white".into() } else if light < 0.15 { "black".into() } else { format!("{tone}grey") };
    }
    let hue = if max == r {
        60.0 * ((g - b) / (max - min)).rem_euclid(6.0)
    } else if max == g {
        60.0 * ((b - r) / (max - min) + 2.0)
    } else {
        60.0 * ((r - g) / (max - min) + 4.0)
    };
    let name = match hue as u32 {
        0..=14 | 345..=360 => "red",
        15..=44 => "orange",
        45..=69 => "yellow",
        70..=159 => "green",
        160..=199 => "teal",
        200..=254 => "blue",
        255..=289 => "purple",
        _ => "pink",
    };
    format!("{tone}{name}")
}

/// The light on the scene.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lighting {
    SoftStudio,
    NaturalWindow,
    Dramatic,
}

impl Lighting {
    pub const ALL: [Self; 3] = [Self::SoftStudio, Self::NaturalWindow, Self::Dramatic];

    /// The canonical value (`--lighting`, job settings).
    pub fn value(self) -> &'static str {
        match self {
            Self::SoftStudio => "soft-studio",
            Self::NaturalWindow => "natural-window",
            Self::Dramatic => "dramatic",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::SoftStudio => "Soft studio",
            Self::NaturalWindow => "Natural window",
            Self::Dramatic => "Dramatic",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        if let Some(l) = Self::ALL.into_iter().find(|l| l.value() == s) {
            return Ok(l);
        }
        Ok(match s {
            "soft" | "studio" => Self::SoftStudio,
            "natural" | "window" => Self::NaturalWindow,
            other => {
                let values: Vec<&str> = Self::ALL.iter().map(|l| l.value()).collect();
                return Err(EngineError::InvalidOption(format!("unknown lighting '{other}'; use {}", one_of(&values))));
            }
        })
    }
    fn prompt(self) -> &'static str {
        match self {
            Self::SoftStudio => "soft even studio lighting",
            Self::NaturalWindow => "natural window light from the side",
            Self::Dramatic => "dramatic low-key lighting with a rim light",
        }
    }
}

/// Speed / quality trade-off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quality {
    Draft,
    Standard,
    High,
}

impl Quality {
    pub const ALL: [Self; 3] = [Self::Draft, Self::Standard, Self::High];

    /// The canonical value (`--quality`, job settings).
    pub fn value(self) -> &'static str {
        match self {
            Self::Draft => "draft",
            Self::Standard => "standard",
            Self::High => "high",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::Draft => "Draft",
            Self::Standard => "Standard",
            Self::High => "High",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        Self::ALL.into_iter().find(|q| q.value() == s).ok_or_else(|| {
            let values: Vec<&str> = Self::ALL.iter().map(|q| q.value()).collect();
            EngineError::InvalidOption(format!("unknown quality '{s}'; use {}", one_of(&values)))
        })
    }
}

/// How the model samples: ordinary models take many guided steps, distilled ones a few unguided ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sampling {
    #[default]
    Standard,
    /// SD-Turbo / SDXL-Turbo (adversarial distillation): 1-4 Euler ancestral steps, no guidance.
    Turbo,
    /// LCM-distilled models: 2-6 consistency steps, no guidance.
    Lcm,
}

/// Working size (latent cells on the short side), steps, sampler and guidance of one quality level.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    pub latent_short_side: usize,
    pub steps: usize,
    pub sampler: SamplerKind,
    pub guidance: f64,
}

/// The settings of a quality level for a sampling kind.
pub fn settings(quality: Quality, sampling: Sampling) -> Settings {
    let (latent_short_side, steps, sampler, guidance) = match (sampling, quality) {
        (Sampling::Standard, Quality::Draft) => (48, 12, SamplerKind::DpmPp2m, 7.0),
        (Sampling::Standard, Quality::Standard) => (64, 25, SamplerKind::DpmPp2m, 7.0),
        (Sampling::Standard, Quality::High) => (80, 40, SamplerKind::EulerAncestral, 7.0),
        (Sampling::Turbo, Quality::Draft) => (64, 1, SamplerKind::EulerAncestral, 0.0),
        (Sampling::Turbo, Quality::Standard) => (64, 2, SamplerKind::EulerAncestral, 0.0),
        (Sampling::Turbo, Quality::High) => (64, 4, SamplerKind::EulerAncestral, 0.0),
        (Sampling::Lcm, Quality::Draft) => (48, 2, SamplerKind::Lcm, 1.0),
        (Sampling::Lcm, Quality::Standard) => (64, 4, SamplerKind::Lcm, 1.0),
        (Sampling::Lcm, Quality::High) => (80, 6, SamplerKind::Lcm, 1.0),
    };
    Settings { latent_short_side, steps, sampler, guidance }
}

/// The generative look's choices.
#[derive(Debug, Clone)]
pub struct GenerativeStyle {
    pub attire: Attire,
    pub backdrop: GenBackdrop,
    pub lighting: Lighting,
    pub quality: Quality,
    pub sampling: Sampling,
    /// Number of variants (one seed each: `seed`, `seed + 1`, ...).
    pub variants: u32,
    pub seed: u64,
    /// Replaces the quality level's step count (tests, benchmarks).
    pub steps: Option<usize>,
}

impl Default for GenerativeStyle {
    fn default() -> Self {
        Self {
            attire: Attire::Keep,
            backdrop: GenBackdrop::StudioGrey,
            lighting: Lighting::SoftStudio,
            quality: Quality::Standard,
            sampling: Sampling::Standard,
            variants: 1,
            seed: 0,
            steps: None,
        }
    }
}

/// Negative prompt shared by every style.
pub const NEGATIVE_PROMPT: &str = "deformed, distorted, disfigured, blurry, low quality, lowres, jpeg artifacts, \
watermark, text, logo, extra limbs, extra fingers, bad anatomy, cartoon, painting, illustration, oversaturated";

/// The positive and negative prompts of a style.
pub fn prompts(style: &GenerativeStyle) -> (String, String) {
    let mut parts = vec!["professional corporate headshot photograph of a person".to_owned()];
    let attire = style.attire.prompt();
    if !attire.is_empty() {
        parts.push(attire.into());
    }
    parts.push(style.backdrop.prompt());
    parts.push(style.lighting.prompt().into());
    parts.push("85mm lens, sharp focus, high detail, photorealistic".into());
    (parts.join(", "), NEGATIVE_PROMPT.into())
}

/// The masks of one framed crop.
pub struct Masks {
    /// 1 where the output is the photo's own pixels, 0 where it is generated, in between in the seam.
    pub keep: Mask,
    /// 1 where the model generates (everything not fully kept).
    pub generate: Mask,
}

/// Builds the keep / generate masks from the person mask, the face polygons and the chin.
///
/// Kept: the face oval always; with `Attire::Keep` the whole person; otherwise the person above the neck
/// line (head, hair, neck), the neck only within the face's width so the shoulders are re-dressed.
pub fn build_masks(
    person: &Mask,
    inside: &Mask,
    face_oval: &[[f32; 2]],
    chin: [f32; 2],
    eyes_y: f32,
    attire: Attire,
) -> Masks {
    let (w, h) = person.dimensions();
    let oval = rasterize_polygon(face_oval, w, h);
    let (xmin, xmax) = face_oval.iter().fold((f32::MAX, f32::MIN), |(a, b), p| (a.min(p[0]), b.max(p[0])));
    let face_w = (xmax - xmin).max(1.0);
    let cx = (xmin + xmax) * 0.5;
    let neck_y = chin[1] + 0.45 * (chin[1] - eyes_y).max(1.0);
    let mut hard = vec![0f32; (w * h) as usize];
    for y in 0..h {
        for x in 0..w {
            let p = person.get_pixel(x, y)[0] >= 0.5;
            let (fx, fy) = (x as f32 + 0.5, y as f32 + 0.5);
            let region = match attire {
                Attire::Keep => true,
                _ => fy < chin[1] || (fy < neck_y && (fx - cx).abs() < 0.42 * face_w),
            };
            let k = (p && region) || oval.get_pixel(x, y)[0] >= 0.5;
            let k = k && inside.get_pixel(x, y)[0] >= 0.5;
            if let Some(s) = hard.get_mut((y * w + x) as usize) {
                *s = if k { 1.0 } else { 0.0 };
            }
        }
    }
    // Feather inwards: blur, then anything not fully kept is part of the seam and generated underneath.
    let r = ((w.min(h) as f32) * 0.012).round().max(1.0) as usize;
    let mut soft = hard.clone();
    box_blur(&mut soft, w as usize, h as usize, r);
    let keep_v: Vec<f32> = soft
        .iter()
        .zip(&hard)
        .map(|(&s, &k)| {
            // Only pixels inside the hard mask may keep photo content; the ramp runs inside it.
            let v = if k > 0.0 { (2.0 * s - 1.0).clamp(0.0, 1.0) } else { 0.0 };
            if v > 0.999 {
                1.0
            } else {
                v
            }
        })
        .collect();
    let gen_v: Vec<f32> = keep_v.iter().map(|&k| if k >= 1.0 { 0.0 } else { 1.0 }).collect();
    let keep = Mask::from_raw(w, h, keep_v).unwrap_or_else(|| Mask::new(w, h));
    let generate = Mask::from_raw(w, h, gen_v).unwrap_or_else(|| Mask::new(w, h));
    Masks { keep, generate }
}

/// Separable box blur with clamped borders (2 passes of radius `r`).
fn box_blur(v: &mut [f32], w: usize, h: usize, r: usize) {
    let mut tmp = vec![0f32; v.len()];
    for _ in 0..2 {
        for y in 0..h {
            for x in 0..w {
                let (a, b) = (x.saturating_sub(r), (x + r).min(w - 1));
                let s: f32 = (a..=b).filter_map(|i| v.get(y * w + i)).sum();
                if let Some(t) = tmp.get_mut(y * w + x) {
                    *t = s / (b - a + 1) as f32;
                }
            }
        }
        for y in 0..h {
            for x in 0..w {
                let (a, b) = (y.saturating_sub(r), (y + r).min(h - 1));
                let s: f32 = (a..=b).filter_map(|j| tmp.get(j * w + x)).sum();
                if let Some(t) = v.get_mut(y * w + x) {
                    *t = s / (b - a + 1) as f32;
                }
            }
        }
    }
}

/// The working size for a crop: short side `short` pixels, aspect kept, both multiples of `mult`.
pub fn working_size(w: u32, h: u32, short: usize, mult: usize) -> (u32, u32) {
    let mult = mult.max(1) as f32;
    let (w, h) = (w.max(1) as f32, h.max(1) as f32);
    let s = short as f32 / w.min(h);
    let round = |v: f32| ((v * s / mult).round().max(1.0) * mult) as u32;
    (round(w), round(h))
}

/// The output: the photo where `keep` is 1 (byte-exact), the generated image elsewhere, blended in the seam.
pub fn blend(photo: &RgbImage, generated: &RgbImage, keep: &Mask) -> RgbImage {
    let mut out = photo.clone();
    for (x, y, p) in out.enumerate_pixels_mut() {
        let k = keep.get_pixel(x, y)[0];
        if k >= 1.0 {
            continue;
        }
        let g = generated.get_pixel(x, y);
        for c in 0..3 {
            p[c] = (f32::from(p[c]) * k + f32::from(g[c]) * (1.0 - k)).round().clamp(0.0, 255.0) as u8;
        }
    }
    out
}

/// Makes `style.variants` generative headshots from one encoded photo.
pub fn generative_headshots(
    studio: &StudioModels,
    model: &DiffusionModel,
    input: &[u8],
    req: &HeadshotRequest,
    style: &GenerativeStyle,
    progress: &dyn ProgressSink,
    cancel: &CancelToken,
) -> Result<Vec<Headshot>> {
    if style.variants == 0 || style.variants > 16 {
        return Err(EngineError::InvalidOption(format!("{} variants requested; use 1 to 16", style.variants)));
    }
    let mut warnings = Vec::new();
    let mut timings = StageTimings::default();
    let pre = |stage: Stage, i: f32| -> Result<std::time::Instant> {
        cancel.check()?;
        progress.stage(stage, i * 0.02);
        Ok(std::time::Instant::now())
    };
    let t = pre(Stage::Decode, 0.0)?;
    let image = image_io::decode(input, &req.limits)?.image;
    timings.decode = t.elapsed();
    let t = pre(Stage::Detect, 1.0)?;
    let faces = studio.detector.detect(&image)?;
    let face = faces.first().ok_or(EngineError::NoFace)?;
    if faces.len() > 1 {
        warnings.push(format!("{} faces found; used the most prominent one", faces.len()));
    }
    timings.detect = t.elapsed();
    let t = pre(Stage::Landmarks, 2.0)?;
    let lm = studio.mesh.landmarks(&image, face)?;
    timings.landmarks = t.elapsed();
    let t = pre(Stage::Framing, 3.0)?;
    let geometry = face_geometry(&lm);
    // The output size works as in the studio look: framing is capped by it, and a crop smaller
    // than it is upscaled after the kept face is blended back.
    let plan = UpscalePlan::new(req)?;
    let framing = framing::frame(&geometry, image.width(), image.height(), req.preset, plan.frame_max)?;
    let mut crop = imgops::warp_rgb(&image, &framing.src_from_dst, framing.width, framing.height, Border::Replicate);
    soften_extension(&mut crop, &framing, image.width(), image.height());
    let inside = inside_mask(&framing, image.width(), image.height());
    let regions = face_regions(&lm, &framing.src_from_dst)?;
    let dst_from_src = framing
        .src_from_dst
        .invert()
        .ok_or_else(|| EngineError::InvalidOption("degenerate framing transform".into()))?;
    let chin = dst_from_src.apply(geometry.chin);
    let eyes_y = (dst_from_src.apply(geometry.right_eye)[1] + dst_from_src.apply(geometry.left_eye)[1]) * 0.5;
    timings.framing = t.elapsed();
    // Restored before generation: the kept face is then the restored one, and the model paints
    // around it (as the studio look composites around it).
    let restore_sink = |stage: Stage, f: f32| progress.stage(stage, (3.0 + f) * 0.02);
    crop = restore_crop(studio, crop, &lm, &dst_from_src, req.restore, &restore_sink, cancel, &mut warnings)?;
    let t = pre(Stage::Segment, 4.0)?;
    let person = studio.segmenter.segment(&crop)?;
    let masks = build_masks(&person, &inside, &regions.face_oval, chin, eyes_y, style.attire);
    timings.segment = t.elapsed();

    let t = pre(Stage::Generate, 5.0)?;
    let s = settings(style.quality, style.sampling);
    let steps = style.steps.unwrap_or(s.steps).max(1);
    let (ww, wh) = working_size(crop.width(), crop.height(), s.latent_short_side * model.resolution_scale() * model.vae_factor(), model.size_multiple());
    let small = image::imageops::resize(&crop, ww, wh, FilterType::Triangle);
    let small_mask = {
        let m = image::imageops::resize(&masks.generate, ww, wh, FilterType::Triangle);
        // Any trace of "generate" counts: the model must cover the whole seam.
        Mask::from_raw(ww, wh, m.as_raw().iter().map(|&v| if v > 0.01 { 1.0 } else { 0.0 }).collect())
            .unwrap_or_else(|| Mask::new(ww, wh))
    };
    let (prompt, negative) = prompts(style);
    // Turbo models are distilled on trailing timesteps (start at the noisiest), whatever their config says.
    let spacing = if style.sampling == Sampling::Turbo { Some(Spacing::Trailing) } else { None };
    // Each variant's share of the bar: its steps, then (when the output is larger than the crop)
    // its upscaling.
    let share = 0.85 / style.variants as f32;
    let upscaling = plan.factor(crop.width().min(crop.height())) != Resize::None;
    let gen_part = if upscaling { 0.6 } else { 1.0 };
    let mut out = Vec::with_capacity(style.variants as usize);
    for v in 0..style.variants {
        let at = |part: f32| 0.1 + share * (v as f32 + part);
        let on_step = |done: usize, _n: usize| {
            progress.stage(Stage::Generate, at(gen_part * done as f32 / steps as f32));
        };
        let generated = inpaint(
            model,
            &InpaintRequest {
                image: &small,
                mask: &small_mask,
                prompt: &prompt,
                negative_prompt: &negative,
                steps,
                guidance: s.guidance,
                sampler: s.sampler,
                spacing,
                seed: style.seed.wrapping_add(u64::from(v)),
            },
            &on_step,
            cancel,
        )?;
        let up = image::imageops::resize(&generated, crop.width(), crop.height(), FilterType::CatmullRom);
        let result = blend(&crop, &up, &masks.keep);
        timings.composite = t.elapsed();
        let mut variant_warnings = warnings.clone();
        let result = match plan.factor(result.width().min(result.height())) {
            Resize::None => result,
            how => {
                let t = std::time::Instant::now();
                let sink = |_: Stage, f: f32| progress.stage(Stage::Upscale, at(gen_part + (1.0 - gen_part) * f));
                let up = upscale_crop(studio, result, how, plan.size, &sink, cancel, &mut variant_warnings)?;
                timings.upscale = t.elapsed();
                up
            }
        };
        cancel.check()?;
        progress.stage(Stage::Encode, 0.95 + 0.05 * v as f32 / style.variants as f32);
        let encoded = image_io::encode(&result, req.format)?;
        out.push(Headshot {
            encoded,
            format: req.format,
            width: result.width(),
            height: result.height(),
            faces: faces.clone(),
            warnings: variant_warnings,
            timings: timings.clone(),
        });
    }
    progress.stage(Stage::Encode, 1.0);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every choice parses back from its canonical value, and a wrong value's message lists them all.
    #[test]
    fn choices_round_trip_through_their_values() {
        for a in Attire::ALL {
            assert_eq!(Attire::parse(a.value()).ok(), Some(a));
        }
        for l in Lighting::ALL {
            assert_eq!(Lighting::parse(l.value()).ok(), Some(l));
        }
        for q in Quality::ALL {
            assert_eq!(Quality::parse(q.value()).ok(), Some(q));
        }
        for b in GenBackdrop::NAMED {
            assert_eq!(GenBackdrop::parse(&b.value()).ok(), Some(b));
        }
        let brand = GenBackdrop::parse("#1A2b3C").ok();
        assert_eq!(brand, Some(GenBackdrop::Brand([0x1a, 0x2b, 0x3c])));
        assert_eq!(brand.map(GenBackdrop::value).as_deref(), Some("#1a2b3c"));
        let msg = |e: Result<Attire>| e.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg(Attire::parse("cape")).contains("use keep, suit, blazer, business-casual or smart-shirt"));
        let e = GenBackdrop::parse("moon").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("studio-grey, white, office, bookshelf, outdoor or a brand colour #RRGGBB"), "{e}");
        let e = Quality::parse("ultra").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("unknown quality 'ultra'; use draft, standard or high"), "{e}");
    }
}
