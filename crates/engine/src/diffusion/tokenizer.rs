//! CLIP's byte-level BPE tokenizer (OpenAI CLIP `simple_tokenizer.py`, MIT; as transformers' `CLIPTokenizer`
//! applies it without ftfy): whitespace cleaned and lower-cased text, split by CLIP's pattern, each piece
//! byte-encoded and merged by rank, wrapped in start / end tokens, padded or truncated to 77.
//!
//! The merges ship with the app (`assets/clip/clip_merges.txt`, from PyPI open_clip_torch, MIT; see
//! `assets/clip/README.md`); a diffusers folder's own `tokenizer/vocab.json` + `merges.txt` replace them.

use std::collections::HashMap;

use crate::error::{EngineError, Result};

/// The bundled merge list (48,894 merges, no header).
pub const BUNDLED_MERGES: &str = include_str!("../../../../assets/clip/clip_merges.txt");

/// Tokens per prompt the text encoders take.
pub const MAX_LEN: usize = 77;

/// A CLIP tokenizer: vocabulary, merge ranks and special ids.
pub struct ClipTokenizer {
    vocab: HashMap<String, u32>,
    ranks: HashMap<(String, String), usize>,
    byte_chars: [char; 256],
    pub bos: u32,
    pub eos: u32,
    /// Padding id: `<|endoftext|>` for SD 1.5's tokenizer, `!` (0) for SDXL's second one.
    pub pad: u32,
}

/// GPT-2's reversible byte -> printable character table, in vocabulary order: the printable bytes
/// first (as themselves), then the others mapped to 256, 257, ... Returns (table by byte, vocabulary order).
fn byte_chars() -> ([char; 256], Vec<char>) {
    let mut order: Vec<u32> = (u32::from('!')..=u32::from('~')).collect();
    order.extend(u32::from('¡')..=u32::from('¬'));
    order.extend(u32::from('®')..=u32::from('ÿ'));
    let printable = order.clone();
    let mut table = ['\0'; 256];
    let mut chars: Vec<char> = printable.iter().filter_map(|&c| char::from_u32(c)).collect();
    let mut extra = 0u32;
    for b in 0..256u32 {
        let c = if printable.contains(&b) {
            b
        } else {
            let c = 256 + extra;
            extra += 1;
            if let Some(ch) = char::from_u32(c) {
                chars.push(ch);
            }
            c
        };
        if let (Some(slot), Some(ch)) = (table.get_mut(b as usize), char::from_u32(c)) {
            *slot = ch;
        }
    }
    (table, chars)
}

fn bad(why: impl std::fmt::Display) -> EngineError {
    EngineError::Model { model: "tokenizer".into(), reason: why.to_string() }
}

impl ClipTokenizer {
    /// The tokenizer that ships with the app.
    pub fn bundled() -> Result<Self> {
        Self::from_merges(BUNDLED_MERGES)
    }

    /// From a merges list alone (CLIP's vocabulary is derived from it).
    pub fn from_merges(merges: &str) -> Result<Self> {
        let (byte_chars, order) = byte_chars();
        let merges = parse_merges(merges)?;
        let mut names: Vec<String> = order.iter().map(|c| c.to_string()).collect();
        names.extend(order.iter().map(|c| format!("{c}</w>")));
        names.extend(merges.iter().map(|(a, b)| format!("{a}{b}")));
        names.push("<|startoftext|>".into());
        names.push("<|endoftext|>".into());
        let vocab: HashMap<String, u32> = names.into_iter().enumerate().map(|(i, n)| (n, i as u32)).collect();
        Self::assemble(vocab, merges, byte_chars)
    }

    /// From a diffusers folder's `tokenizer/vocab.json` and `tokenizer/merges.txt`.
    pub fn from_files(vocab_json: &[u8], merges: &str) -> Result<Self> {
        let vocab: HashMap<String, u32> =
            serde_json::from_slice(vocab_json).map_err(|e| bad(format!("vocab.json is not valid ({e})")))?;
        Self::assemble(vocab, parse_merges(merges)?, byte_chars().0)
    }

    fn assemble(vocab: HashMap<String, u32>, merges: Vec<(String, String)>, byte_chars: [char; 256]) -> Result<Self> {
        let id = |t: &str| vocab.get(t).copied().ok_or_else(|| bad(format!("the vocabulary has no {t}")));
        let (bos, eos) = (id("<|startoftext|>")?, id("<|endoftext|>")?);
        let ranks = merges.into_iter().enumerate().map(|(i, m)| (m, i)).collect();
        Ok(Self { vocab, ranks, byte_chars, bos, eos, pad: eos })
    }

    /// Pads with `id` instead of the end token (SDXL's second tokenizer pads with `!`).
    pub fn with_pad(mut self, id: u32) -> Self {
        self.pad = id;
        self
    }

    /// Token ids of `text`, without start / end tokens.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let text = clean(text);
        let mut ids = Vec::new();
        for piece in split(&text) {
            let symbols: Vec<String> = piece.bytes().map(|b| self.byte_chars[b as usize].to_string()).collect();
            for tok in self.bpe(symbols) {
                if let Some(&id) = self.vocab.get(&tok) {
                    ids.push(id);
                }
            }
        }
        ids
    }

    /// `[start] ids.. [end] pad..`, exactly `MAX_LEN` long (truncated keeping the end token).
    pub fn encode_padded(&self, text: &str) -> Vec<u32> {
        let mut ids = vec![self.bos];
        ids.extend(self.encode(text).into_iter().take(MAX_LEN - 2));
        ids.push(self.eos);
        ids.resize(MAX_LEN, self.pad);
        ids
    }

    fn bpe(&self, mut word: Vec<String>) -> Vec<String> {
        if let Some(last) = word.last_mut() {
            last.push_str("</w>");
        }
        while word.len() > 1 {
            let best = word
                .windows(2)
                .enumerate()
                .filter_map(|(i, w)| self.ranks.get(&(w[0].clone(), w[1].clone())).map(|&r| (r, i)))
                .min();
            let Some((_, _)) = best else { break };
            let pair = best.and_then(|(_, i)| word.get(i..i + 2).map(|p| (p[0].clone(), p[1].clone())));
            let Some((a, b)) = pair else { break };
            // Merge every occurrence of the best pair, left to right.
            let mut merged = Vec::with_capacity(word.len());
            let mut i = 0;
            while i < word.len() {
                if i + 1 < word.len() && word[i] == a && word[i + 1] == b {
                    merged.push(format!("{a}{b}"));
                    i += 2;
                } else {
                    merged.push(word[i].clone());
                    i += 1;
                }
            }
            word = merged;
        }
        word
    }
}

fn parse_merges(text: &str) -> Result<Vec<(String, String)>> {
    let merges: Vec<(String, String)> = text
        .lines()
        .filter(|l| !l.starts_with("#version") && !l.trim().is_empty())
        .filter_map(|l| {
            let mut it = l.split(' ');
            Some((it.next()?.to_owned(), it.next()?.to_owned()))
        })
        .collect();
    if merges.is_empty() {
        return Err(bad("the merges list is empty"));
    }
    Ok(merges)
}

/// Control characters dropped, whitespace runs collapsed, trimmed, lower-cased.
fn clean(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for word in text.split(|c: char| c.is_whitespace()).filter(|w| !w.is_empty()) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.extend(word.chars().filter(|c| !c.is_control()).flat_map(char::to_lowercase));
    }
    out
}

/// CLIP's pattern: `'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+`.
fn split(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let end_of = |k: usize| chars.get(k).map(|&(p, _)| p).unwrap_or(text.len());
    let mut k = 0;
    while let Some(&(start, c)) = chars.get(k) {
        if c.is_whitespace() {
            k += 1;
            continue;
        }
        if c == '\'' {
            let rest = &text[start + 1..];
            let suffix = ["re", "ve", "ll", "s", "t", "m", "d"].into_iter().find(|s| rest.starts_with(s));
            if let Some(s) = suffix {
                out.push(&text[start..start + 1 + s.len()]);
                k += 1 + s.chars().count();
                continue;
            }
        }
        let mut j = k + 1;
        if c.is_alphabetic() {
            while chars.get(j).is_some_and(|&(_, d)| d.is_alphabetic()) {
                j += 1;
            }
        } else if c.is_numeric() {
            // One digit per piece.
        } else {
            while chars.get(j).is_some_and(|&(_, d)| !d.is_whitespace() && !d.is_alphabetic() && !d.is_numeric()) {
                j += 1;
            }
        }
        out.push(&text[start..end_of(j)]);
        k = j;
    }
    out
}
