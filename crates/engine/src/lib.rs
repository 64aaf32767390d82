//! Likeness portrait engine.
//!
//! In-memory images in, images out. This crate owns the models (ported to candle), the image
//! operations and the studio pipeline. It never touches the network, SQLite, the keyring or any
//! file other than model weights handed to it as bytes by the caller.
//!
//! Stages (see `pipeline`): decode -> faces (BlazeFace, face mesh) -> framing -> masks (selfie
//! segmentation) -> [face restoration, GFPGAN] -> studio look (backdrop, relight, retouch) -> upscale
//! (Real-ESRGAN, when the crop is smaller than the output) -> encode.

pub mod composite;
pub mod device;
pub mod diffusion;
pub mod error;
pub mod faces;
pub mod fastconv;
pub mod framing;
pub mod generative;
pub mod image_io;
pub mod imgops;
pub mod landmarks;
pub mod models;
pub mod nn;
pub mod pipeline;
pub mod progress;
pub mod pth;
pub mod restore;
pub mod segment;
pub mod upscale;
pub mod weights;

pub use error::{EngineError, Result};
