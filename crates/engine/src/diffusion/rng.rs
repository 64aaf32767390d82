//! Seeded Gaussian noise: the same seed gives the same latents on every machine and device.
//!
//! candle's `randn` draws from a thread RNG that cannot be seeded, so the noise of a generation is made here
//! on the CPU (splitmix64 + Box-Muller, both fixed algorithms) and moved to the model's device.

use candle_core::{Device, Shape, Tensor};

use crate::error::Result;

/// A small deterministic generator (splitmix64).
#[derive(Debug, Clone)]
pub struct NoiseRng(u64);

impl NoiseRng {
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1].
    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }

    /// Standard normal f32 values.
    pub fn normals(&mut self, n: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(n + 1);
        while out.len() < n {
            let (u1, u2) = (self.uniform(), self.uniform());
            let r = (-2.0 * u1.ln()).sqrt();
            let a = 2.0 * std::f64::consts::PI * u2;
            out.push((r * a.cos()) as f32);
            out.push((r * a.sin()) as f32);
        }
        out.truncate(n);
        out
    }

    /// A standard normal f32 tensor of `shape` on `device`.
    pub fn randn<S: Into<Shape>>(&mut self, shape: S, device: &Device) -> Result<Tensor> {
        let shape: Shape = shape.into();
        let v = self.normals(shape.elem_count());
        Ok(Tensor::from_vec(v, shape, &Device::Cpu)?.to_device(device)?)
    }
}
