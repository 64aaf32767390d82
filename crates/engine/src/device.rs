//! Device choice: CPU always works; CUDA and Metal when built with their features and present.

use candle_core::Device;
use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DevicePref {
    /// The best available accelerator, else the CPU.
    #[default]
    Auto,
    Cpu,
    Gpu,
}

impl std::str::FromStr for DevicePref {
    type Err = EngineError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "gpu" | "cuda" | "metal" => Ok(Self::Gpu),
            _ => Err(EngineError::InvalidOption(format!("device '{s}' (use auto, cpu or gpu)"))),
        }
    }
}

/// Picks the device. `Gpu` fails with a clear message when no accelerator is usable; `Auto` falls back to CPU.
pub fn select(pref: DevicePref) -> Result<Device> {
    if pref == DevicePref::Cpu {
        return Ok(Device::Cpu);
    }
    let gpu = gpu_device();
    match (pref, gpu) {
        (_, Ok(d)) => Ok(d),
        (DevicePref::Auto, Err(_)) => Ok(Device::Cpu),
        (_, Err(e)) => Err(e),
    }
}

fn gpu_device() -> Result<Device> {
    #[cfg(feature = "cuda")]
    {
        if candle_core::utils::cuda_is_available() {
            return Device::new_cuda(0).map_err(|e| EngineError::Device(e.to_string()));
        }
    }
    #[cfg(feature = "metal")]
    {
        if candle_core::utils::metal_is_available() {
            return Device::new_metal(0).map_err(|e| EngineError::Device(e.to_string()));
        }
    }
    Err(EngineError::Device(
        "no usable GPU: this build has no CUDA/Metal support or no device was found; use --device cpu".into(),
    ))
}
