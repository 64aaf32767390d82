//! Loading model weights. The caller (core) finds and verifies the file; the engine only sees bytes.

use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use crate::error::{EngineError, Result};

/// A `VarBuilder` over an in-memory safetensors file, with errors naming the model.
pub fn var_builder(model: &str, bytes: Vec<u8>, device: &Device) -> Result<VarBuilder<'static>> {
    if bytes.is_empty() {
        return Err(EngineError::Model { model: model.into(), reason: "the weights file is empty".into() });
    }
    VarBuilder::from_buffered_safetensors(bytes, DType::F32, device).map_err(|e| EngineError::Model {
        model: model.into(),
        reason: format!("not a valid safetensors file ({e})"),
    })
}

/// Maps a candle error raised while building a model (missing tensor, wrong shape) to a model error.
pub fn model_err(model: &str) -> impl Fn(candle_core::Error) -> EngineError + '_ {
    move |e| EngineError::Model { model: model.into(), reason: format!("weights do not match the architecture ({e})") }
}
