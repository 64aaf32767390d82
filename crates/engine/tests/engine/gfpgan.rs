//! GFPGAN v1 clean: parity with the PyTorch reference on a small seeded model read from its .pth.

use candle_core::{Device, Module};
use likeness_engine::models::gfpgan::{Config, Gfpgan};
use likeness_engine::pth::pth_var_builder;

use crate::common::{fixture, rel_err};

fn fixture_path(name: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// The configuration tools/fixtures/gfpgan.py builds.
fn tiny() -> Config {
    Config { out_size: 64, num_style_feat: 16, channel_multiplier: 2, narrow: 1.0 / 32.0, sft_half: true, different_w: true }
}

#[test]
fn parity_with_reference_on_seeded_weights_from_pth() {
    let bytes = std::fs::read(fixture_path("gfpgan_tiny.pth")).expect("fixture .pth");
    let vb = pth_var_builder("gfpgan-tiny", &bytes, Some("params_ema"), &Device::Cpu).expect("read .pth");
    let model = Gfpgan::new(&tiny(), vb).expect("model");
    let f = fixture("gfpgan.safetensors");
    let out = model.forward(&f["input"]).expect("forward");
    assert_eq!(out.dims(), f["output"].dims());
    let err = rel_err(&out, &f["output"]);
    eprintln!("gfpgan tiny parity: relative error {err:.2e}");
    // float32 parity: relative error (max |diff| / max |reference|) under 1e-4.
    assert!(err < 1e-4, "relative error {err}");
}

#[test]
fn pth_reader_refuses_wrong_files_with_a_message() {
    let bytes = std::fs::read(fixture_path("gfpgan_tiny.pth")).expect("fixture .pth");
    let err = pth_var_builder("gfpgan-v1.4", &bytes, Some("params"), &Device::Cpu).err().expect("no 'params' key");
    assert!(err.to_string().contains("'params'"), "{err}");
    let err = pth_var_builder("gfpgan-v1.4", b"not a zip", None, &Device::Cpu).err().expect("not a checkpoint");
    assert!(err.to_string().contains("not a PyTorch checkpoint"), "{err}");
    // A model of another size does not load from these weights.
    let vb = pth_var_builder("gfpgan-v1.4", &bytes, Some("params_ema"), &Device::Cpu).expect("read");
    assert!(Gfpgan::new(&Config::v1_4(), vb).is_err());
}

// ---- alignment and paste-back ----

use candle_core::{DType, Shape, Tensor};
use image::RgbImage;
use likeness_engine::faces::FaceDetector;
use likeness_engine::landmarks::FaceMesh;
use likeness_engine::restore::{restore_with, similarity_fit, template, FaceRestorer};

use crate::common::{model_bytes, photo};

/// Grace Hopper and her 5 landmarks from the bundled detector and face mesh.
fn hopper() -> (RgbImage, [[f32; 2]; 5]) {
    let img = photo("grace_hopper_512x512.jpg");
    let back = Some(model_bytes("blazeface_back_256.safetensors"));
    let det = FaceDetector::new(model_bytes("blazeface_front_128.safetensors"), back, &Device::Cpu).expect("detector");
    let faces = det.detect(&img).expect("detect");
    let mesh = FaceMesh::new(model_bytes("face_mesh_468.safetensors"), &Device::Cpu).expect("mesh");
    let lm = mesh.landmarks(&img, faces.first().expect("a face")).expect("landmarks");
    (img, lm.five_point())
}

fn max_abs_diff(a: &RgbImage, b: &RgbImage) -> u8 {
    a.as_raw().iter().zip(b.as_raw()).map(|(x, y)| x.abs_diff(*y)).max().unwrap_or(0)
}

#[test]
fn similarity_fit_recovers_a_known_transform() {
    let t = template(512);
    let m = likeness_engine::imgops::Affine::similarity(0.6, 0.25, 40.0, -12.0);
    let from = t.map(|p| m.apply(p));
    let fit = similarity_fit(&from, &t).expect("fit");
    for (p, q) in from.iter().zip(&t) {
        let r = fit.apply(*p);
        assert!((r[0] - q[0]).abs() < 1e-3 && (r[1] - q[1]).abs() < 1e-3, "{r:?} vs {q:?}");
    }
    let nan = [[f32::NAN, 0.0]; 5];
    assert!(similarity_fit(&nan, &t).is_err());
    assert!(similarity_fit(&[[3.0, 3.0]; 5], &t).is_err());
}

#[test]
fn identity_restoration_gives_back_the_photo() {
    let (img, five) = hopper();
    for strength in [1.0, 0.7] {
        let out = restore_with(&img, &five, strength, 512, &Device::Cpu, |x| Ok(x.clone())).expect("restore");
        // Within rounding: the change pasted back is exactly zero, so no pixel moves at all.
        assert_eq!(max_abs_diff(&out, &img), 0, "strength {strength}");
    }
    assert!(restore_with(&img, &five, 1.5, 512, &Device::Cpu, |x| Ok(x.clone())).is_err());
    assert!(restore_with(&img, &five, f32::NAN, 512, &Device::Cpu, |x| Ok(x.clone())).is_err());
    // Strength 0 never runs the network and never changes a pixel.
    let out = restore_with(&img, &five, 0.0, 512, &Device::Cpu, |_| panic!("network ran at strength 0")).expect("0");
    assert_eq!(out, img);
}

/// A stand-in network that brightens a disc at template point `k` of the aligned crop.
fn mark(x: &Tensor, at: [f32; 2], radius: f32) -> likeness_engine::Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let mut m = vec![0f32; h * w];
    for j in 0..h {
        for i in 0..w {
            let (dx, dy) = (i as f32 + 0.5 - at[0], j as f32 + 0.5 - at[1]);
            if dx * dx + dy * dy <= radius * radius {
                m[j * w + i] = 1.0;
            }
        }
    }
    let m = Tensor::from_vec(m, (1, 1, h, w), x.device())?;
    Ok(x.broadcast_add(&(m * 0.6)?)?)
}

#[test]
fn paste_back_lands_where_the_landmarks_are() {
    let (img, five) = hopper();
    let t = template(512);
    for k in [0usize, 1, 2, 3, 4] {
        let out = restore_with(&img, &five, 1.0, 512, &Device::Cpu, |x| mark(x, t[k], 10.0)).expect("restore");
        // The centroid of the changed pixels is the landmark (the crop's mark mapped back).
        let (mut sx, mut sy, mut n) = (0f64, 0f64, 0f64);
        for (x, y, p) in out.enumerate_pixels() {
            let q = img.get_pixel(x, y);
            let d: i32 = (0..3).map(|c| (p.0[c] as i32 - q.0[c] as i32).abs()).sum();
            if d > 0 {
                let wgt = d as f64;
                sx += (x as f64 + 0.5) * wgt;
                sy += (y as f64 + 0.5) * wgt;
                n += wgt;
            }
        }
        assert!(n > 0.0, "landmark {k}: nothing changed");
        let (cx, cy) = ((sx / n) as f32, (sy / n) as f32);
        let err = ((cx - five[k][0]).powi(2) + (cy - five[k][1]).powi(2)).sqrt();
        // The 5 points are fitted by one similarity, so each lands within a few pixels of its own.
        assert!(err < 6.0, "landmark {k}: change centred at ({cx:.1}, {cy:.1}), landmark at {:?}", five[k]);
    }
    // A uniform change shows at full strength in the middle of the face, scaled by the strength,
    // and nowhere far outside the face.
    let out = restore_with(&img, &five, 0.5, 512, &Device::Cpu, |x| Ok((x - 0.2)?)).expect("restore");
    let nose = out.get_pixel(five[2][0] as u32, five[2][1] as u32).0;
    let orig = img.get_pixel(five[2][0] as u32, five[2][1] as u32).0;
    for c in 0..3 {
        let expect = (orig[c] as f32 - 0.5 * 0.2 * 127.5).max(0.0);
        assert!((nose[c] as f32 - expect).abs() <= 1.0, "nose channel {c}: {} vs {expect}", nose[c]);
    }
    assert_eq!(out.get_pixel(2, 2), img.get_pixel(2, 2));
}

// ---- the full-size architecture ----

/// Random weights for any requested tensor (upstream-like scales), no file needed.
struct RandomInit;

impl candle_nn::var_builder::SimpleBackend for RandomInit {
    fn get(&self, s: Shape, name: &str, _: candle_nn::Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let dims = s.dims();
        let t = if name.ends_with("bias") {
            let base = if name.contains("modulation") { 1.0 } else { 0.0 };
            (Tensor::randn(0f32, 0.05, s.clone(), dev)? + base)?
        } else if name.ends_with("constant_input.weight") {
            Tensor::randn(0f32, 1.0, s.clone(), dev)?
        } else {
            // Fan-in: everything but the output axis (and the leading 1 of modulated weights).
            let skip = if dims.len() == 5 { 2 } else { 1 };
            let fan_in: usize = dims.iter().skip(skip).product::<usize>().max(1);
            Tensor::randn(0f32, (1.0 / fan_in as f64).sqrt() as f32, s.clone(), dev)?
        };
        t.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("random init needs a shape for {name}")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

fn vm_hwm_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// GFPGAN v1.4's own architecture (512x512, channel multiplier 2) on random weights: the shapes,
/// finite output, and the peak memory of loading it and restoring one face.
#[test]
fn full_size_architecture_shapes_and_peak_memory() {
    // The peak is a process's: measured in a process of its own (this test binary, this test only),
    // since the other tests of the binary run beside it.
    const CHILD: &str = "LIKENESS_TEST_GFPGAN_PEAK_CHILD";
    if std::env::var_os(CHILD).is_none() {
        let exe = std::env::current_exe().expect("test binary");
        let out = std::process::Command::new(exe)
            .args(["--exact", "gfpgan::full_size_architecture_shapes_and_peak_memory", "--nocapture", "--test-threads", "1"])
            .env(CHILD, "1")
            .output()
            .expect("run the measurement alone");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && text.contains("1 passed"), "{text}");
        eprintln!("{}", text.lines().filter(|l| l.starts_with("gfpgan 512")).collect::<Vec<_>>().join("\n"));
        return;
    }
    // Reset the peak-RSS counter so the figure is this test's (Linux; ignored elsewhere).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let before = vm_hwm_kib();
    let vb = candle_nn::VarBuilder::from_backend(Box::new(RandomInit), DType::F32, Device::Cpu);
    let model = Gfpgan::new(&Config::v1_4(), vb).expect("full-size model");
    let x = Tensor::rand(-1f32, 1.0, (1, 3, 512, 512), &Device::Cpu).expect("input");
    let start = std::time::Instant::now();
    let y = model.forward(&x).expect("forward");
    let secs = start.elapsed().as_secs_f32();
    assert_eq!(y.dims(), &[1, 3, 512, 512]);
    let finite = y.flatten_all().and_then(|v| v.to_vec1::<f32>()).expect("values").iter().all(|v| v.is_finite());
    assert!(finite, "non-finite output");
    let peak_mib = vm_hwm_kib() / 1024;
    eprintln!("gfpgan 512 (random weights): forward {secs:.1} s, peak RSS {peak_mib} MiB (before {} MiB)", before / 1024);
    // Weights are ~340 MiB (f32); activations at 512x512 and the banded im2col stay well below.
    assert!(peak_mib < 1536, "peak RSS {peak_mib} MiB over the 1.5 GiB bound");
    // The restorer wraps it with the geometry (and the crop size it reads from the model).
    let restorer = FaceRestorer::from_model(model, &Device::Cpu);
    assert_eq!(restorer.size(), 512);
}
