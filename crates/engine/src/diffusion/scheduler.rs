//! Noise schedulers: DDIM, Euler ancestral, DPM++ 2M and LCM (the few-step path), written against
//! diffusers' `scheduling_ddim.py`, `scheduling_euler_ancestral_discrete.py`,
//! `scheduling_dpmsolver_multistep.py` (dpmsolver++, order 2, midpoint, zero final sigma) and
//! `scheduling_lcm.py` (Apache-2.0), and matched to them by `tools/fixtures/sd_parity.py`.
//!
//! Ours rather than candle's because every random draw must come from the caller's seeded noise (candle's
//! Euler ancestral draws from an unseeded RNG) and candle has no DPM++ or LCM. Steps are addressed by index.
//! All math is on f32 tensors; the coefficients are computed in f64 from diffusers' f32 schedule.

use candle_core::Tensor;

use super::config::{Prediction, ScheduleConfig, Spacing};
use crate::error::{EngineError, Result};

/// Which sampler to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SamplerKind {
    Ddim,
    EulerAncestral,
    DpmPp2m,
    /// Latent consistency: 1-8 steps, for LCM-distilled models.
    Lcm,
}

impl SamplerKind {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "ddim" => Ok(Self::Ddim),
            "euler-a" | "euler_a" | "euler-ancestral" => Ok(Self::EulerAncestral),
            "dpmpp-2m" | "dpm++2m" | "dpmpp_2m" => Ok(Self::DpmPp2m),
            "lcm" => Ok(Self::Lcm),
            other => Err(EngineError::InvalidOption(format!(
                "unknown scheduler '{other}'; use ddim, euler-a, dpmpp-2m or lcm"
            ))),
        }
    }
}

/// The cumulative product of alphas over the training steps, as diffusers computes it (float32).
pub fn alphas_cumprod(cfg: &ScheduleConfig) -> Vec<f64> {
    let n = cfg.num_train_timesteps;
    let (a, b) = if cfg.scaled_linear {
        ((cfg.beta_start as f32).sqrt(), (cfg.beta_end as f32).sqrt())
    } else {
        (cfg.beta_start as f32, cfg.beta_end as f32)
    };
    let mut acc = 1f32;
    (0..n)
        .map(|i| {
            // torch.linspace: start + i * step, mirrored from the end for the upper half.
            let step = (b - a) / (n - 1) as f32;
            let x = if i < n / 2 { a + step * i as f32 } else { b - step * (n - 1 - i) as f32 };
            let beta = if cfg.scaled_linear { x * x } else { x };
            acc *= 1.0 - beta;
            f64::from(acc)
        })
        .collect()
}

/// Inference timesteps (descending) for `steps` steps. Rounding is numpy's (half to even); Euler keeps
/// linspace timesteps fractional (`round = false`), as diffusers does.
pub fn timesteps(cfg: &ScheduleConfig, steps: usize, spacing: Spacing, round: bool) -> Vec<f64> {
    let n = cfg.num_train_timesteps;
    let steps = steps.clamp(1, n);
    match spacing {
        Spacing::Leading => {
            let ratio = n / steps;
            (0..steps).rev().map(|i| (i * ratio + cfg.steps_offset) as f64).collect()
        }
        Spacing::Trailing => {
            let ratio = n as f64 / steps as f64;
            (0..steps).map(|i| (n as f64 - i as f64 * ratio).round_ties_even() - 1.0).collect()
        }
        Spacing::Linspace => {
            let last = (n - 1) as f64;
            (0..steps)
                .rev()
                .map(|i| {
                    let t = last * i as f64 / (steps - 1).max(1) as f64;
                    if round {
                        t.round_ties_even()
                    } else {
                        t
                    }
                })
                .collect()
        }
    }
}

fn interp(acp: &[f64], t: f64) -> f64 {
    let lo = (t.floor().max(0.0) as usize).min(acp.len().saturating_sub(1));
    let hi = (lo + 1).min(acp.len().saturating_sub(1));
    let w = t - lo as f64;
    acp.get(lo).copied().unwrap_or(1.0) * (1.0 - w) + acp.get(hi).copied().unwrap_or(1.0) * w
}

fn sigma_of(acp: f64) -> f64 {
    ((1.0 - acp) / acp).sqrt()
}

/// One sampler's state over one generation.
pub struct Scheduler {
    kind: SamplerKind,
    cfg: ScheduleConfig,
    acp: Vec<f64>,
    timesteps: Vec<f64>,
    /// Euler: sigma at each step plus a final 0.
    sigmas: Vec<f64>,
    /// DPM++ 2M: the previous step's data prediction.
    prev_x0: Option<Tensor>,
    init_noise_sigma: f64,
}

impl Scheduler {
    pub fn new(kind: SamplerKind, cfg: &ScheduleConfig, steps: usize) -> Result<Self> {
        if steps == 0 {
            return Err(EngineError::InvalidOption("at least one denoising step is needed".into()));
        }
        let acp = alphas_cumprod(cfg);
        let n = cfg.num_train_timesteps;
        let (timesteps, sigmas, init_noise_sigma) = match kind {
            SamplerKind::Ddim => (timesteps(cfg, steps, cfg.spacing.unwrap_or(Spacing::Leading), true), Vec::new(), 1.0),
            SamplerKind::EulerAncestral => {
                let spacing = cfg.spacing.unwrap_or(Spacing::Linspace);
                let ts = timesteps(cfg, steps, spacing, false);
                let all: Vec<f64> = acp.iter().map(|&a| sigma_of(a)).collect();
                let mut sig: Vec<f64> = ts.iter().map(|&t| interp(&all, t)).collect();
                sig.push(0.0);
                let max = sig.iter().copied().fold(0.0, f64::max);
                let init = match spacing {
                    Spacing::Linspace | Spacing::Trailing => max,
                    Spacing::Leading => (max * max + 1.0).sqrt(),
                };
                (ts, sig, init)
            }
            SamplerKind::DpmPp2m => {
                // diffusers' default spacing for this solver is linspace over [0, N - 1], first point dropped.
                let last = (n - 1) as f64;
                let ts: Vec<f64> = match cfg.spacing {
                    Some(Spacing::Leading) => {
                        let ratio = (n / (steps + 1)) as f64;
                        (1..=steps).rev().map(|i| i as f64 * ratio + cfg.steps_offset as f64).collect()
                    }
                    Some(Spacing::Trailing) => timesteps(cfg, steps, Spacing::Trailing, true),
                    _ => (1..=steps).rev().map(|i| (last * i as f64 / steps as f64).round_ties_even()).collect(),
                };
                let all: Vec<f64> = acp.iter().map(|&a| sigma_of(a)).collect();
                let mut sig: Vec<f64> = ts.iter().map(|&t| interp(&all, t)).collect();
                sig.push(0.0);
                (ts, sig, 1.0)
            }
            SamplerKind::Lcm => {
                // LCM's 50 "original" steps, then `steps` of them spread evenly from the noisiest.
                let original = 50usize.min(n);
                let k = n / original;
                let origin: Vec<usize> = (1..=original).map(|i| i * k - 1).collect();
                let steps = steps.min(original);
                let ts = (0..steps)
                    .map(|i| {
                        let idx = (i as f64 * original as f64 / steps as f64).floor() as usize;
                        origin.get(original - 1 - idx.min(original - 1)).copied().unwrap_or(0) as f64
                    })
                    .collect();
                (ts, Vec::new(), 1.0)
            }
        };
        Ok(Self { kind, cfg: cfg.clone(), acp, timesteps, sigmas, prev_x0: None, init_noise_sigma })
    }

    pub fn kind(&self) -> SamplerKind {
        self.kind
    }
    /// Timesteps fed to the UNet, one per step.
    pub fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }
    /// Scale of the initial noise.
    pub fn init_noise_sigma(&self) -> f64 {
        self.init_noise_sigma
    }
    /// Whether `step` uses fresh noise (ancestral / consistency samplers).
    pub fn needs_noise(&self) -> bool {
        matches!(self.kind, SamplerKind::EulerAncestral | SamplerKind::Lcm)
    }

    fn acp_at(&self, t: f64) -> f64 {
        let i = (t.max(0.0) as usize).min(self.acp.len().saturating_sub(1));
        self.acp.get(i).copied().unwrap_or(1.0)
    }

    /// The UNet input at step `i` (Euler divides by sqrt(sigma^2 + 1)).
    pub fn scale_model_input(&self, sample: &Tensor, i: usize) -> Result<Tensor> {
        match self.kind {
            SamplerKind::EulerAncestral => {
                let s = self.sigmas.get(i).copied().unwrap_or(0.0);
                Ok((sample / (s * s + 1.0).sqrt())?)
            }
            _ => Ok(sample.clone()),
        }
    }

    /// `original` noised to the level the sample has *before* step `i` (`i == len` means clean).
    pub fn add_noise(&self, original: &Tensor, noise: &Tensor, i: usize) -> Result<Tensor> {
        if i >= self.timesteps.len() {
            return Ok(original.clone());
        }
        match self.kind {
            SamplerKind::EulerAncestral => {
                let s = self.sigmas.get(i).copied().unwrap_or(0.0);
                Ok((original + (noise * s)?)?)
            }
            _ => {
                let t = self.timesteps.get(i).copied().unwrap_or(0.0);
                let a = if self.kind == SamplerKind::DpmPp2m {
                    let s = self.sigmas.get(i).copied().unwrap_or(0.0);
                    1.0 / (s * s + 1.0)
                } else {
                    self.acp_at(t)
                };
                Ok(((original * a.sqrt())? + (noise * (1.0 - a).sqrt())?)?)
            }
        }
    }

    /// The data (x0) and noise (eps) predictions from the model output at alpha_cumprod `a`.
    fn predictions(&self, out: &Tensor, sample: &Tensor, a: f64) -> Result<(Tensor, Tensor)> {
        let (sa, sb) = (a.sqrt(), (1.0 - a).sqrt());
        Ok(match self.cfg.prediction {
            Prediction::Epsilon => (((sample - (out * sb)?)? / sa)?, out.clone()),
            Prediction::V => (((sample * sa)? - (out * sb)?)?, ((out * sa)? + (sample * sb)?)?),
        })
    }

    /// One denoising step: the sample after step `i`. `noise` is required when `needs_noise()`.
    pub fn step(&mut self, out: &Tensor, i: usize, sample: &Tensor, noise: Option<&Tensor>) -> Result<Tensor> {
        let n = self.timesteps.len();
        let t = self.timesteps.get(i).copied().ok_or_else(|| EngineError::InvalidOption("step past the last one".into()))?;
        let need_noise = || noise.ok_or_else(|| EngineError::InvalidOption("this sampler needs noise".into()));
        match self.kind {
            SamplerKind::Ddim => {
                let a = self.acp_at(t);
                let prev_t = t - (self.cfg.num_train_timesteps / n) as f64;
                let a_prev = if prev_t >= 0.0 {
                    self.acp_at(prev_t)
                } else if self.cfg.set_alpha_to_one {
                    1.0
                } else {
                    self.acp.first().copied().unwrap_or(1.0)
                };
                let (x0, eps) = self.predictions(out, sample, a)?;
                Ok(((x0 * a_prev.sqrt())? + (eps * (1.0 - a_prev).sqrt())?)?)
            }
            SamplerKind::EulerAncestral => {
                let s = self.sigmas.get(i).copied().unwrap_or(0.0);
                let s_to = self.sigmas.get(i + 1).copied().unwrap_or(0.0);
                let x0 = match self.cfg.prediction {
                    Prediction::Epsilon => (sample - (out * s)?)?,
                    Prediction::V => ((out * (-s / (s * s + 1.0).sqrt()))? + (sample / (s * s + 1.0))?)?,
                };
                let up = (s_to * s_to * (s * s - s_to * s_to) / (s * s)).max(0.0).sqrt();
                let down = (s_to * s_to - up * up).max(0.0).sqrt();
                let derivative = ((sample - &x0)? / s)?;
                let prev = (sample + (derivative * (down - s))?)?;
                Ok((prev + (need_noise()? * up)?)?)
            }
            SamplerKind::DpmPp2m => {
                let s0 = self.sigmas.get(i).copied().unwrap_or(0.0);
                let s_t = self.sigmas.get(i + 1).copied().unwrap_or(0.0);
                let alpha = |s: f64| 1.0 / (s * s + 1.0).sqrt();
                let (a0, a_t) = (alpha(s0), alpha(s_t));
                // Data prediction: x0 = (x - sigma_t * eps) / alpha_t in the VP parametrisation.
                let x0 = match self.cfg.prediction {
                    Prediction::Epsilon => ((sample - (out * (s0 * a0))?)? / a0)?,
                    Prediction::V => ((sample * a0)? - (out * (s0 * a0))?)?,
                };
                let prev_x0 = self.prev_x0.replace(x0.clone());
                if s_t == 0.0 {
                    // The zero final sigma: the first-order update lands exactly on the data prediction.
                    return Ok(x0);
                }
                let lambda = |s: f64| (alpha(s)).ln() - (s * alpha(s)).ln();
                let h = lambda(s_t) - lambda(s0);
                let base = (sample * ((s_t * a_t) / (s0 * a0)))?;
                let c = a_t * ((-h).exp() - 1.0);
                match (prev_x0, i.checked_sub(1).and_then(|j| self.sigmas.get(j).copied())) {
                    (Some(m1), Some(s1)) => {
                        let h0 = lambda(s0) - lambda(s1);
                        let r0 = h0 / h;
                        let d1 = ((&x0 - m1)? * (1.0 / r0))?;
                        Ok(((base - (x0 * c)?)? - (d1 * (0.5 * c))?)?)
                    }
                    _ => Ok((base - (x0 * c)?)?),
                }
            }
            SamplerKind::Lcm => {
                let a = self.acp_at(t);
                let prev_t = self.timesteps.get(i + 1).copied();
                let a_prev = prev_t.map(|p| self.acp_at(p)).unwrap_or(1.0);
                // Consistency boundary conditions (sigma_data 0.5, timestep scaling 10).
                let st = t * 10.0;
                let c_skip = 0.25 / (st * st + 0.25);
                let c_out = st / (st * st + 0.25).sqrt();
                let (x0, _) = self.predictions(out, sample, a)?;
                let denoised = ((x0 * c_out)? + (sample * c_skip)?)?;
                if i + 1 == n {
                    return Ok(denoised);
                }
                Ok(((denoised * a_prev.sqrt())? + (need_noise()? * (1.0 - a_prev).sqrt())?)?)
            }
        }
    }
}
