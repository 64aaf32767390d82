//! Shared by the benches: paths in the checkout and the Python that runs the reference runtimes.
#![allow(dead_code)]

use std::path::PathBuf;

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `$LIKENESS_BENCH_PYTHON`, else `.venv/bin/python` in the checkout, else `python3`.
pub fn python() -> String {
    if let Ok(p) = std::env::var("LIKENESS_BENCH_PYTHON") {
        return p;
    }
    let venv = root().join(".venv/bin/python");
    if venv.is_file() {
        return venv.display().to_string();
    }
    "python3".into()
}

/// Every weight drawn from N(0, 0.02) (norm scales: 1), like a freshly initialised model; names with
/// diffusers' attention keys (`to_q` ...), so a lookup of the older `query` / `proj_attn` says absent.
pub struct RandomWeights;

impl candle_nn::var_builder::SimpleBackend for RandomWeights {
    fn get(
        &self,
        s: candle_core::Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: candle_core::DType,
        dev: &candle_core::Device,
    ) -> candle_core::Result<candle_core::Tensor> {
        if name.contains("norm") && name.ends_with("weight") {
            return candle_core::Tensor::ones(s, dtype, dev);
        }
        candle_core::Tensor::randn(0f32, 0.02, s, dev)?.to_dtype(dtype)
    }
    fn get_unchecked(&self, name: &str, _: candle_core::DType, _: &candle_core::Device) -> candle_core::Result<candle_core::Tensor> {
        candle_core::bail!("random weights have no shape for {name}")
    }
    fn contains_tensor(&self, name: &str) -> bool {
        !name.contains("query") && !name.contains("proj_attn")
    }
}

/// The median (NaN for none).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}
