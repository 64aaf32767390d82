//! CLIP text encoder (Radford et al. 2021, "Learning Transferable Visual Models From Natural Language
//! Supervision"; OpenAI CLIP, MIT; transformers' `modeling_clip.py`, Apache-2.0), the conditioning of every
//! Stable Diffusion model.
//!
//! Ours rather than candle's `stable_diffusion::clip` because that one's config is fixed to a few presets
//! (private fields), so tiny test models cannot be built, and it has no text projection (SDXL's pooled
//! embedding). Keys mirror transformers' `CLIPTextModel` / `CLIPTextModelWithProjection`.

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{embedding, layer_norm, linear, linear_no_bias, Embedding, LayerNorm, Linear, VarBuilder};

use super::config::ClipConfig;

struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    heads: usize,
}

impl Attention {
    fn new(c: &ClipConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let h = c.hidden_size;
        Ok(Self {
            q: linear(h, h, vb.pp("q_proj"))?,
            k: linear(h, h, vb.pp("k_proj"))?,
            v: linear(h, h, vb.pp("v_proj"))?,
            out: linear(h, h, vb.pp("out_proj"))?,
            heads: c.num_attention_heads,
        })
    }

    fn forward(&self, xs: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        let (b, n, h) = xs.dims3()?;
        let d = h / self.heads;
        let split = |t: Tensor| t.reshape((b, n, self.heads, d))?.transpose(1, 2)?.contiguous();
        let q = split((self.q.forward(xs)? * (d as f64).powf(-0.5))?)?;
        let k = split(self.k.forward(xs)?)?;
        let v = split(self.v.forward(xs)?)?;
        let w = q.matmul(&k.t()?)?.broadcast_add(mask)?;
        let w = candle_nn::ops::softmax_last_dim(&w)?;
        let o = w.matmul(&v)?.transpose(1, 2)?.reshape((b, n, h))?;
        self.out.forward(&o)
    }
}

struct Layer {
    ln1: LayerNorm,
    attn: Attention,
    ln2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    quick_gelu: bool,
}

impl Layer {
    fn new(c: &ClipConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let h = c.hidden_size;
        Ok(Self {
            ln1: layer_norm(h, c.layer_norm_eps, vb.pp("layer_norm1"))?,
            attn: Attention::new(c, vb.pp("self_attn"))?,
            ln2: layer_norm(h, c.layer_norm_eps, vb.pp("layer_norm2"))?,
            fc1: linear(h, c.intermediate_size, vb.pp("mlp").pp("fc1"))?,
            fc2: linear(c.intermediate_size, h, vb.pp("mlp").pp("fc2"))?,
            quick_gelu: c.quick_gelu,
        })
    }

    fn forward(&self, xs: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        let xs = (xs + self.attn.forward(&self.ln1.forward(xs)?, mask)?)?;
        let h = self.fc1.forward(&self.ln2.forward(&xs)?)?;
        let h = if self.quick_gelu { (&h * candle_nn::ops::sigmoid(&(&h * 1.702)?)?)? } else { h.gelu_erf()? };
        xs + self.fc2.forward(&h)?
    }
}

/// What one prompt batch encodes to.
pub struct TextEmbeddings {
    /// The last layer after the final layer norm (SD 1.5's conditioning) [B, 77, H].
    pub last: Tensor,
    /// The penultimate layer's output, no final norm (SDXL's conditioning) [B, 77, H].
    pub penultimate: Tensor,
    /// The end token's final state, projected when the model has a projection [B, P].
    pub pooled: Tensor,
}

/// A CLIP text transformer.
pub struct ClipTextModel {
    token: Embedding,
    position: Embedding,
    layers: Vec<Layer>,
    final_ln: LayerNorm,
    projection: Option<Linear>,
    eos: u32,
}

impl ClipTextModel {
    /// `with_projection`: SDXL's second encoder (`text_projection`, no bias).
    pub fn new(c: &ClipConfig, vb: VarBuilder, with_projection: bool) -> candle_core::Result<Self> {
        let projection =
            if with_projection { Some(linear_no_bias(c.hidden_size, c.projection_dim, vb.pp("text_projection"))?) } else { None };
        // transformers writes `text_model.*`; some exports (and transformers 5's CLIPTextModel) drop the prefix.
        let vb = if vb.contains_tensor("text_model.embeddings.token_embedding.weight") { vb.pp("text_model") } else { vb };
        let e = vb.pp("embeddings");
        Ok(Self {
            token: embedding(c.vocab_size, c.hidden_size, e.pp("token_embedding"))?,
            position: embedding(c.max_position_embeddings, c.hidden_size, e.pp("position_embedding"))?,
            layers: (0..c.num_hidden_layers)
                .map(|i| Layer::new(c, vb.pp("encoder").pp("layers").pp(i)))
                .collect::<candle_core::Result<_>>()?,
            final_ln: layer_norm(c.hidden_size, c.layer_norm_eps, vb.pp("final_layer_norm"))?,
            projection,
            eos: c.eos_token_id,
        })
    }

    fn causal_mask(n: usize, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
        let m: Vec<f32> = (0..n).flat_map(|i| (0..n).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 })).collect();
        Tensor::from_vec(m, (1, 1, n, n), device)?.to_dtype(dtype)
    }

    /// Encodes token ids [B, N] (u32).
    pub fn forward(&self, ids: &Tensor) -> candle_core::Result<TextEmbeddings> {
        let (b, n) = ids.dims2()?;
        let pos = Tensor::arange(0u32, n as u32, ids.device())?;
        let mut xs = self.token.forward(ids)?.broadcast_add(&self.position.forward(&pos)?)?;
        let mask = Self::causal_mask(n, xs.dtype(), ids.device())?;
        let mut penultimate = xs.clone();
        let count = self.layers.len();
        for (i, layer) in self.layers.iter().enumerate() {
            if i + 1 == count {
                penultimate = xs.clone();
            }
            xs = layer.forward(&xs, &mask)?;
        }
        let last = self.final_ln.forward(&xs)?;
        // Pool at the first end token (at the largest id for legacy configs, where that is the end token).
        let rows = ids.to_vec2::<u32>()?;
        let idx: Vec<u32> = rows
            .iter()
            .map(|r| {
                let p = if self.eos == u32::MAX {
                    r.iter().enumerate().max_by_key(|(i, v)| (**v, std::cmp::Reverse(*i))).map(|(i, _)| i)
                } else {
                    r.iter().position(|&v| v == self.eos)
                };
                p.unwrap_or(n.saturating_sub(1)) as u32
            })
            .collect();
        let pooled = (0..b)
            .map(|i| last.get(i)?.get(idx.get(i).copied().unwrap_or(0) as usize)?.unsqueeze(0))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let pooled = Tensor::cat(&pooled, 0)?;
        let pooled = match &self.projection {
            Some(p) => p.forward(&pooled)?,
            None => pooled,
        };
        Ok(TextEmbeddings { last, penultimate, pooled })
    }

    /// Hidden size of the embeddings.
    pub fn hidden(&self) -> candle_core::Result<usize> {
        self.token.embeddings().dim(D::Minus1)
    }
}
