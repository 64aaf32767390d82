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
