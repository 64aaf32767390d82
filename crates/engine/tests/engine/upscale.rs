//! Real-ESRGAN: parity of RRDBNet and SRVGGNetCompact with the reference architectures (spandrel,
//! fixtures from tools/fixtures/upscale.py; float32, relative error < 1e-4), the converted real
//! weights against the reference on a real photo, tiled against untiled inference, and the real
//! model's quality on a 4x-downscaled photo.

use std::collections::HashMap;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;
use image::imageops::{self, FilterType};
use image::RgbImage;
use likeness_engine::models::rrdbnet::{Config, RrdbNet};
use likeness_engine::progress::{CancelToken, NoProgress, Stage};
use likeness_engine::upscale::{Factor, Tiling, Upscaler};
use likeness_engine::EngineError;

use crate::common::{fixture, model_bytes, photo, rel_err};

const TOL: f32 = 1e-4;

fn fixture_path(name: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn real() -> Upscaler {
    Upscaler::realesrgan_x4plus(model_bytes("realesrgan_x4plus.safetensors"), &Device::Cpu).expect("bundled Real-ESRGAN")
}

fn tiny_compact() -> Upscaler {
    let bytes = std::fs::read(fixture_path("upscale_srvgg.pth")).expect("fixture .pth");
    Upscaler::compact_from_pth("test", &bytes, &Device::Cpu).expect("tiny SRVGGNetCompact")
}

#[test]
fn rrdbnet_matches_reference_on_random_weights() {
    let mut t = fixture("upscale_rrdb.safetensors");
    let (x, want) = (t.remove("input").expect("input"), t.remove("output").expect("output"));
    let weights: HashMap<String, Tensor> = t;
    let vb = VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu);
    let cfg = Config { num_in_ch: 3, num_out_ch: 3, num_feat: 4, num_block: 2, num_grow_ch: 32 };
    let net = RrdbNet::new(&cfg, vb).expect("small RRDBNet");
    let got = net.forward(&x).expect("forward");
    assert_eq!(got.dims(), want.dims());
    let e = rel_err(&got, &want);
    assert!(e < TOL, "RRDBNet vs reference: relative error {e} (tolerance {TOL})");
}

#[test]
fn compact_read_from_pth_matches_reference() {
    let t = fixture("upscale_srvgg.safetensors");
    let net = tiny_compact();
    assert_eq!(net.scale(), 4);
    let got = net.forward(&t["input"]).expect("forward");
    assert_eq!(got.dims(), t["output"].dims());
    let e = rel_err(&got, &t["output"]);
    assert!(e < TOL, "SRVGGNetCompact vs reference: relative error {e} (tolerance {TOL})");
}

#[test]
fn compact_rejects_files_that_are_not_checkpoints() {
    for bytes in [b"not a zip at all".to_vec(), model_bytes("selfie_segmentation_256.safetensors")] {
        match Upscaler::compact_from_pth("realesr-general-x4v3", &bytes, &Device::Cpu) {
            Err(EngineError::Model { model, .. }) => assert_eq!(model, "realesr-general-x4v3"),
            other => panic!("expected a model error, got {:?}", other.map(|_| ())),
        }
    }
}

/// The converted bundled weights in the reference RRDBNet (fixture) give our output on a real
/// photo crop: the converter's names, order and layouts are right, not only the network.
#[test]
fn converted_weights_match_reference_on_a_photo() {
    let t = fixture("upscale_real.safetensors");
    let got = real().forward(&t["input"]).expect("forward");
    assert_eq!(got.dims(), &[1, 3, 128, 128]);
    let e = rel_err(&got, &t["output"]);
    assert!(e < TOL, "Real-ESRGAN x4plus vs reference: relative error {e} (tolerance {TOL})");
}

fn noise_image(w: u32, h: u32, seed: u32) -> RgbImage {
    let mut s = seed.wrapping_mul(2654435761).wrapping_add(12345);
    RgbImage::from_fn(w, h, |x, y| {
        let mut c = [0u8; 3];
        for v in &mut c {
            s = s.wrapping_mul(1664525).wrapping_add(1013904223);
            // Smooth pattern + noise, so a tiling mistake shows as a discontinuity.
            *v = ((x * 5 + y * 3) % 200) as u8 / 2 + (s >> 26) as u8;
        }
        image::Rgb(c)
    })
}

fn image_tensor(img: &RgbImage) -> Tensor {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut v = vec![0f32; 3 * w * h];
    for (x, y, p) in img.enumerate_pixels() {
        for c in 0..3 {
            v[(c * h + y as usize) * w + x as usize] = p[c] as f32 / 255.0;
        }
    }
    Tensor::from_vec(v, (1, 3, h, w), &Device::Cpu).expect("tensor")
}

/// The tiny net sees only 4 pixels around each pixel, less than the tile context: tiled must equal
/// untiled everywhere, seams included (they cross-fade two equal values).
#[test]
fn tiled_equals_untiled_when_context_covers_the_receptive_field() {
    let img = noise_image(45, 38, 3);
    let up = tiny_compact().with_tiling(Tiling { tile: 16, context: 6, blend: 4 }).expect("tiling");
    let tiled = up.upscale_float(&img, &CancelToken::new()).expect("tiled");
    let whole = up.forward(&image_tensor(&img)).expect("untiled");
    let e = rel_err(&tiled, &whole);
    assert!(e < 1e-5, "tiled vs untiled: relative error {e}");
}

/// The real RRDBNet sees far beyond any tile's context, so tiles differ slightly: away from the
/// seams the difference is tiny, and on the cross-faded seams it stays small.
#[test]
fn tiled_real_model_matches_untiled_away_from_seams() {
    let img = imageops::crop_imm(&photo("astronaut.png"), 180, 80, 48, 40).to_image();
    let up = real().with_tiling(Tiling { tile: 24, context: 16, blend: 8 }).expect("tiling");
    let tiled = up.upscale_float(&img, &CancelToken::new()).expect("tiled");
    let whole = up.forward(&image_tensor(&img)).expect("untiled");
    let diff = (tiled - whole).expect("diff").abs().expect("abs").squeeze(0).expect("squeeze");
    let diff = diff.max_keepdim(0).expect("max over channels").squeeze(0).expect("squeeze").to_vec2::<f32>().expect("vec");
    // Core edges in output pixels: x = 24*4 = 96 (two columns of tiles), y = 20*4 = 80 (two rows).
    let (mut far, mut near) = (0f32, 0f32);
    let (mut far_sum, mut far_n) = (0f64, 0usize);
    for (y, row) in diff.iter().enumerate() {
        for (x, &d) in row.iter().enumerate() {
            let seam = (x as i32 - 96).abs().min((y as i32 - 80).abs());
            if seam < 32 {
                near = near.max(d);
            } else {
                far = far.max(d);
                far_sum += d as f64;
                far_n += 1;
            }
        }
    }
    let far_mean = far_sum / far_n.max(1) as f64;
    eprintln!("tiled vs untiled (Real-ESRGAN): away from seams max {far:.4} mean {far_mean:.5}; on seams max {near:.4}");
    assert!(far < 2.0 / 255.0 && far_mean < 0.25 / 255.0, "away from seams: max {far}, mean {far_mean}");
    assert!(near < 8.0 / 255.0, "on the seams: max {near}");
}

fn luma(img: &RgbImage) -> Vec<f32> {
    img.pixels().map(|p| 0.299 * p[0] as f32 + 0.587 * p[1] as f32 + 0.114 * p[2] as f32).collect()
}

/// Mean squared finite-difference gradient of the luma (sharpness).
fn gradient_energy(img: &RgbImage) -> f64 {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let l = luma(img);
    let mut sum = 0f64;
    for y in 0..h - 1 {
        for x in 0..w - 1 {
            let gx = l[y * w + x + 1] - l[y * w + x];
            let gy = l[(y + 1) * w + x] - l[y * w + x];
            sum += (gx * gx + gy * gy) as f64;
        }
    }
    sum / ((w - 1) * (h - 1)) as f64
}

/// Mean SSIM of the luma over 8x8 windows (stride 4), after a Gaussian blur (sigma 1.5) of both:
/// fidelity of structure without rewarding or punishing fine texture.
fn ssim_blurred(a: &RgbImage, b: &RgbImage) -> f64 {
    let (a, b) = (imageops::blur(a, 1.5), imageops::blur(b, 1.5));
    let (w, h) = (a.width() as usize, a.height() as usize);
    let (la, lb) = (luma(&a), luma(&b));
    let (c1, c2) = ((0.01f64 * 255.0).powi(2), (0.03f64 * 255.0).powi(2));
    let (mut total, mut n) = (0f64, 0usize);
    for y0 in (0..h - 8).step_by(4) {
        for x0 in (0..w - 8).step_by(4) {
            let (mut ma, mut mb, mut va, mut vb, mut cov) = (0f64, 0f64, 0f64, 0f64, 0f64);
            for y in y0..y0 + 8 {
                for x in x0..x0 + 8 {
                    ma += la[y * w + x] as f64;
                    mb += lb[y * w + x] as f64;
                }
            }
            ma /= 64.0;
            mb /= 64.0;
            for y in y0..y0 + 8 {
                for x in x0..x0 + 8 {
                    let (da, db) = (la[y * w + x] as f64 - ma, lb[y * w + x] as f64 - mb);
                    va += da * da;
                    vb += db * db;
                    cov += da * db;
                }
            }
            let (va, vb, cov) = (va / 63.0, vb / 63.0, cov / 63.0);
            total += ((2.0 * ma * mb + c1) * (2.0 * cov + c2)) / ((ma * ma + mb * mb + c1) * (va + vb + c2));
            n += 1;
        }
    }
    total / n as f64
}

/// Mean absolute difference of the per-channel means (colour cast), in 8-bit levels.
fn colour_error(a: &RgbImage, b: &RgbImage) -> f64 {
    let mean = |img: &RgbImage, c: usize| img.pixels().map(|p| p[c] as f64).sum::<f64>() / (img.width() * img.height()) as f64;
    (0..3).map(|c| (mean(a, c) - mean(b, c)).abs()).sum::<f64>() / 3.0
}

/// The astronaut's head and shoulders, 4x downscaled to 64x64 and upscaled back by the real model:
/// clearly sharper than bicubic while as faithful in structure and colour. (PSNR is not the bar:
/// GAN upscalers invent plausible texture, which PSNR punishes.)
#[test]
fn real_model_is_sharper_than_bicubic_and_faithful() {
    let original = imageops::crop_imm(&photo("astronaut.png"), 128, 16, 256, 256).to_image();
    let small = imageops::resize(&original, 64, 64, FilterType::Triangle);
    let mut stages = Vec::new();
    let sink = std::sync::Mutex::new(&mut stages);
    let progress = |s: Stage, f: f32| sink.lock().expect("lock").push((s, f));
    let ours = real().upscale(&small, Factor::X4, &progress, &CancelToken::new()).expect("upscale");
    assert_eq!(ours.dimensions(), (256, 256));
    assert!(stages.iter().all(|(s, _)| *s == Stage::Upscale) && stages.last().map(|l| l.1) == Some(1.0));
    let bicubic = imageops::resize(&small, 256, 256, FilterType::CatmullRom);
    let (g_orig, g_ours, g_bic) = (gradient_energy(&original), gradient_energy(&ours), gradient_energy(&bicubic));
    let (s_ours, s_bic) = (ssim_blurred(&ours, &original), ssim_blurred(&bicubic, &original));
    let (c_ours, c_bic) = (colour_error(&ours, &original), colour_error(&bicubic, &original));
    let msg = format!(
        "gradient energy: original {g_orig:.1}, Real-ESRGAN {g_ours:.1}, bicubic {g_bic:.1} (ratio {:.2}); \
         SSIM after blur: Real-ESRGAN {s_ours:.4}, bicubic {s_bic:.4}; mean colour error: Real-ESRGAN {c_ours:.2}, bicubic {c_bic:.2} levels",
        g_ours / g_bic
    );
    eprintln!("{msg}");
    assert!(g_ours > 1.5 * g_bic, "not clearly sharper than bicubic: {msg}");
    assert!(s_ours > 0.85 && s_ours > s_bic - 0.03, "structure not faithful: {msg}");
    assert!(c_ours < 3.0, "colour cast: {msg}");
}

#[test]
fn x2_is_the_x4_result_downscaled_and_cancel_stops() {
    let img = noise_image(20, 14, 9);
    let up = tiny_compact().with_tiling(Tiling { tile: 8, context: 4, blend: 2 }).expect("tiling");
    let x2 = up.upscale(&img, Factor::X2, &NoProgress, &CancelToken::new()).expect("x2");
    assert_eq!(x2.dimensions(), (40, 28));
    let x4 = up.upscale(&img, Factor::X4, &NoProgress, &CancelToken::new()).expect("x4");
    let down = imageops::resize(&x4, 40, 28, FilterType::Lanczos3);
    assert_eq!(x2, down);
    let cancel = CancelToken::new();
    cancel.cancel();
    assert!(matches!(up.upscale(&img, Factor::X4, &NoProgress, &cancel), Err(EngineError::Cancelled)));
    assert!("3".parse::<Factor>().is_err());
    assert_eq!("x4".parse::<Factor>().ok(), Some(Factor::X4));
    assert!(up.clone().with_tiling(Tiling { tile: 4, context: 0, blend: 0 }).is_err());
}

#[test]
fn cancel_stops_inside_a_real_esrgan_tile() {
    // One 128-pixel tile: the check between tiles never runs after the start, so only the checks
    // between RRDB blocks can stop it (a whole tile is seconds of work on a CPU).
    let img = noise_image(128, 128, 3);
    let up = real();
    let cancel = CancelToken::new();
    let stopper = {
        let cancel = cancel.clone();
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(150));
            cancel.cancel();
        })
    };
    let out = up.upscale(&img, Factor::X4, &NoProgress, &cancel);
    stopper.join().expect("stopper thread");
    assert!(matches!(out, Err(EngineError::Cancelled)), "not cancelled inside the tile: {:?}", out.map(|i| i.dimensions()));
}
