//! The engine's one error type. Every variant a user can cause says what went wrong and what to do;
//! callers (core, cli) add the file name.

use thiserror::Error;

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

#[derive(Debug, Error)]
pub enum EngineError {
    #[error("the file is empty")]
    EmptyInput,
    #[error("not an image Likeness can read (expected JPEG, PNG or WebP){detail}")]
    NotAnImage { detail: String },
    #[error("{format} images are not supported on this system; convert the photo to JPEG or PNG first")]
    UnsupportedFormat { format: String },
    #[error("the image is {width}x{height} pixels, more than the limit of {max_pixels} pixels; downscale it first")]
    TooManyPixels { width: u32, height: u32, max_pixels: u64 },
    #[error("the file is {bytes} bytes, more than the limit of {max_bytes} bytes")]
    TooManyBytes { bytes: u64, max_bytes: u64 },
    #[error("the image is {width}x{height} pixels; at least {min}x{min} is needed for a headshot")]
    TooSmall { width: u32, height: u32, min: u32 },
    #[error("the image data is damaged or truncated ({detail}); re-export or re-copy the photo")]
    Corrupt { detail: String },
    #[error("no face found; use a photo where the face is clearly visible, facing the camera")]
    NoFace,
    #[error("model '{model}' could not be loaded: {reason}; reinstall Likeness or re-import the model")]
    Model { model: String, reason: String },
    #[error("invalid option: {0}")]
    InvalidOption(String),
    #[error("could not encode the output image: {0}")]
    Encode(String),
    #[error("cancelled")]
    Cancelled,
    #[error("device error: {0}")]
    Device(String),
    #[error("internal tensor error: {0}")]
    Tensor(#[from] candle_core::Error),
}
