//! BlazeFace: parity with onnxruntime on committed fixtures, and the face detector on real photos.

use candle_core::{DType, Device, Tensor};
use likeness_engine::models::blazeface::{BlazeFace, Config};
use likeness_engine::weights::var_builder;

use crate::common::{fixture, model_bytes, rel_err};

/// float32 parity bound: relative to the largest reference magnitude (see `common::rel_err`).
const PARITY_TOL: f32 = 1e-4;

fn model(cfg: &Config, file: &str) -> BlazeFace {
    let vb = var_builder("blazeface", model_bytes(file), &Device::Cpu).expect("weights");
    BlazeFace::new(cfg, vb).expect("model")
}

fn parity(cfg: Config, weights: &str, fixture_file: &str) {
    let net = model(&cfg, weights);
    let fx = fixture(fixture_file);
    for input in ["random", "astronaut"] {
        // Same arithmetic as tools/fixtures/blazeface.py: pixel * (2/255) - 1 in f32.
        let pixels = fx[&format!("{input}.pixels")].to_dtype(DType::F32).expect("pixels");
        let x = ((pixels * (2.0f64 / 255.0)).expect("scale") - 1.0).expect("shift");
        let (regs, logits) = net.forward(&x).expect("forward");
        assert_eq!(regs.dims(), &[1, 896, 16]);
        assert_eq!(logits.dims(), &[1, 896]);
        let er = rel_err(&regs, &fx[&format!("{input}.regressors")]);
        let el = rel_err(&logits, &fx[&format!("{input}.logits")]);
        assert!(er < PARITY_TOL && el < PARITY_TOL, "{fixture_file}/{input}: regressors {er:e}, logits {el:e}");
    }
}

#[test]
fn front_matches_onnxruntime() {
    parity(Config::front(), "blazeface_front_128.safetensors", "blazeface_front.safetensors");
}

#[test]
fn back_matches_onnxruntime() {
    parity(Config::back(), "blazeface_back_256.safetensors", "blazeface_back.safetensors");
}

#[test]
fn wrong_input_size_is_an_error() {
    let net = model(&Config::front(), "blazeface_front_128.safetensors");
    let x = Tensor::zeros((1, 3, 64, 64), DType::F32, &Device::Cpu).expect("zeros");
    assert!(net.forward(&x).is_err());
}
