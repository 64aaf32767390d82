//! Model ports: BlazeFace, face mesh, selfie segmentation, GFPGAN face restoration, Real-ESRGAN
//! (RRDBNet, SRVGGNetCompact).
pub mod blazeface;
pub mod facemesh;
pub mod gfpgan;
pub mod selfie;
pub mod rrdbnet;
pub mod srvgg;

use crate::error::EngineError;
use crate::progress::CancelToken;

/// The message a forward pass stopped by [`cancel_point`] fails with.
const CANCELLED: &str = "likeness: forward pass cancelled";

/// A place inside a long forward pass where a cancelled job stops, so that Cancel takes effect
/// within one block rather than one whole pass (a Real-ESRGAN tile is seconds on a CPU). Fails with
/// a candle error that [`engine_error`] turns back into `EngineError::Cancelled`.
pub(crate) fn cancel_point(cancel: Option<&CancelToken>) -> candle_core::Result<()> {
    match cancel {
        Some(c) if c.is_cancelled() => Err(candle_core::Error::Msg(CANCELLED.into())),
        _ => Ok(()),
    }
}

/// A model's candle error as an engine error, a [`cancel_point`] stop as `Cancelled`.
pub(crate) fn engine_error(e: candle_core::Error) -> EngineError {
    match e {
        candle_core::Error::Msg(m) if m == CANCELLED => EngineError::Cancelled,
        e => EngineError::from(e),
    }
}
