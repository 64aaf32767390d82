//! Progress sink and cancellation token: arguments of every long call.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::error::{EngineError, Result};

/// A pipeline stage, reported as it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Decode,
    Detect,
    Landmarks,
    Framing,
    Segment,
    Composite,
    /// Denoising steps of the generative look (not part of `ALL`, the studio pipeline's stages).
    Generate,
    /// Super-resolution (Real-ESRGAN), only when the crop is smaller than the output.
    Upscale,
    Encode,
}

impl Stage {
    pub const ALL: [Stage; 8] = [
        Stage::Decode,
        Stage::Detect,
        Stage::Landmarks,
        Stage::Framing,
        Stage::Segment,
        Stage::Composite,
        Stage::Upscale,
        Stage::Encode,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Stage::Decode => "decode",
            Stage::Detect => "detect",
            Stage::Landmarks => "landmarks",
            Stage::Framing => "framing",
            Stage::Segment => "segment",
            Stage::Composite => "composite",
            Stage::Generate => "generate",
            Stage::Upscale => "upscale",
            Stage::Encode => "encode",
        }
    }
}

/// Receives progress. `fraction` is the overall progress of this call in [0, 1].
pub trait ProgressSink: Send + Sync {
    fn stage(&self, stage: Stage, fraction: f32);
}

/// A sink that ignores everything.
pub struct NoProgress;
impl ProgressSink for NoProgress {
    fn stage(&self, _: Stage, _: f32) {}
}

impl<F: Fn(Stage, f32) + Send + Sync> ProgressSink for F {
    fn stage(&self, stage: Stage, fraction: f32) {
        self(stage, fraction)
    }
}

/// Shared cancellation flag, checked at stage boundaries and inside long forward passes.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst)
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
    /// `Err(Cancelled)` once cancelled.
    pub fn check(&self) -> Result<()> {
        if self.is_cancelled() {
            Err(EngineError::Cancelled)
        } else {
            Ok(())
        }
    }
}
