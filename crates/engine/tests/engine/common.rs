//! Shared test helpers: paths to the committed models, photos and fixtures.
#![allow(dead_code)]

use std::path::PathBuf;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A bundled model file's bytes (`models/<file>`).
pub fn model_bytes(file: &str) -> Vec<u8> {
    let p = repo_root().join("models").join(file);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A committed photo (`assets/photos/<name>`), decoded to RGB.
pub fn photo(name: &str) -> image::RgbImage {
    let p = repo_root().join("assets/photos").join(name);
    image::open(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).to_rgb8()
}

/// A parity fixture (`crates/engine/tests/fixtures/<name>`), as named tensors.
pub fn fixture(name: &str) -> std::collections::HashMap<String, candle_core::Tensor> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
    candle_core::safetensors::load(&p, &candle_core::Device::Cpu).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// max |a - b| / max(|b|max, 1e-6): the relative error used by all parity tests.
pub fn rel_err(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    let diff = (a - b).and_then(|d| d.abs()).and_then(|d| d.max_all()).and_then(|d| d.to_scalar::<f32>()).expect("diff");
    let scale = b.abs().and_then(|d| d.max_all()).and_then(|d| d.to_scalar::<f32>()).expect("scale");
    diff / scale.max(1e-6)
}
