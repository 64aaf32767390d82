//! Will a diffusion model fit in memory? Checked before a single weight is read.
//!
//! A process that runs out of memory on the CPU gets no error to report: the allocator aborts it, or the
//! kernel's OOM killer ends it mid-job. So the worker estimates what loading and running a model takes from
//! its files' sizes and safetensors headers (no tensor data is read) and refuses with numbers and what to do
//! when that exceeds what the machine can give. GPU memory is not estimated here: there allocation failures
//! come back as errors, which the engine turns into the same kind of message.
//!
//! Available memory: Linux's `MemAvailable` plus free swap (beyond that the OOM killer acts), capped by the
//! process's cgroup limit (containers, systemd slices) and by `LIKENESS_MAX_MEMORY_MB` (an administrator's or
//! user's cap). Elsewhere only the cap applies.

use std::path::Path;

use crate::import::read_safetensors_header;

const GIB: f64 = (1u64 << 30) as f64;

/// Tensors a checkpoint may carry that are never loaded (EMA copies, training state).
fn loaded(name: &str) -> bool {
    !(name.starts_with("model_ema.") || name.starts_with("optimizer") || name.starts_with("loss."))
}

/// What a model takes, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Need {
    /// The weight files, held in memory while the model loads.
    pub files: u64,
    /// The weights as the model runs: float32 on the CPU; 0 on a GPU (they live in its memory).
    pub weights: u64,
    /// Activations, the VAE at full working resolution, the attention score chunks.
    pub working: u64,
}

impl Need {
    /// Loading holds files and weights at once; generating holds weights and working memory.
    pub fn peak(&self) -> u64 {
        self.weights + self.files.max(self.working)
    }
}

/// Estimates a model's need from its weight files (headers only). `cpu`: the weights are kept in float32
/// in this process's memory. Working memory was measured with the UNet bench and whole jobs: about 1 GiB at
/// SD 1.5's 512 px, 2.5 GiB for SDXL-sized models (over 2 billion parameters, 1024 px).
pub fn estimate(weight_files: &[&Path], cpu: bool) -> Result<Need, String> {
    let mut files = 0u64;
    let mut params = 0u64;
    for p in weight_files {
        files += std::fs::metadata(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?.len();
        let header = read_safetensors_header(p).map_err(|e| e.to_string())?;
        params += header
            .iter()
            .filter(|t| loaded(&t.name))
            .map(|t| t.shape.iter().product::<usize>() as u64)
            .sum::<u64>();
    }
    let working = if params > 2_000_000_000 { 5 * (GIB as u64) / 2 } else { GIB as u64 };
    Ok(Need { files, weights: if cpu { params * 4 } else { 0 }, working })
}

/// Memory this process may still use, with what limited it; `None` where nothing can be measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Available {
    pub bytes: u64,
    pub source: String,
}

/// `MemAvailable + SwapFree` from `/proc/meminfo` text.
pub fn parse_meminfo(text: &str) -> Option<u64> {
    let field = |key: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(key))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    };
    Some(field("MemAvailable:")? + field("SwapFree:").unwrap_or(0))
}

/// Room left under a cgroup v2 limit: `memory.max` minus the anonymous memory already charged (page cache
/// is reclaimed before the limit bites). `None` when unlimited.
pub fn cgroup_room(max: &str, stat: &str) -> Option<u64> {
    let max: u64 = max.trim().parse().ok()?;
    let anon = stat
        .lines()
        .find_map(|l| l.strip_prefix("anon ").and_then(|v| v.trim().parse::<u64>().ok()))
        .unwrap_or(0);
    Some(max.saturating_sub(anon))
}

fn cgroup_limit() -> Option<u64> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let rel = own.lines().find_map(|l| l.strip_prefix("0::"))?;
    let dir = Path::new("/sys/fs/cgroup").join(rel.trim_start_matches('/'));
    let max = std::fs::read_to_string(dir.join("memory.max")).ok()?;
    let stat = std::fs::read_to_string(dir.join("memory.stat")).unwrap_or_default();
    cgroup_room(&max, &stat)
}

/// The user's cap, `LIKENESS_MAX_MEMORY_MB`; an unparsable value is an error, not silently ignored.
fn user_cap() -> Result<Option<u64>, String> {
    match std::env::var("LIKENESS_MAX_MEMORY_MB") {
        Ok(v) => v
            .trim()
            .parse::<u64>()
            .map(|mb| Some(mb << 20))
            .map_err(|_| format!("LIKENESS_MAX_MEMORY_MB is '{v}'; set it to a whole number of megabytes or unset it")),
        Err(_) => Ok(None),
    }
}

pub fn available() -> Result<Option<Available>, String> {
    let mut best: Option<Available> = None;
    let mut take = |bytes: u64, source: &str| {
        if best.as_ref().is_none_or(|b| bytes < b.bytes) {
            best = Some(Available { bytes, source: source.to_owned() });
        }
    };
    if let Some(b) = std::fs::read_to_string("/proc/meminfo").ok().as_deref().and_then(parse_meminfo) {
        take(b, "available memory and free swap");
    }
    if let Some(b) = cgroup_limit() {
        take(b, "this session's memory limit (cgroup)");
    }
    if let Some(b) = user_cap()? {
        take(b, "LIKENESS_MAX_MEMORY_MB");
    }
    Ok(best)
}

fn gib(b: u64) -> String {
    if b >= 1 << 30 {
        format!("{:.1} GB", b as f64 / GIB)
    } else {
        format!("{} MB", b.div_ceil(1 << 20))
    }
}

/// Refuses, with the numbers and what to do, when `need` exceeds `available`.
pub fn check(model: &str, need: &Need, available: Option<&Available>) -> Result<(), String> {
    let Some(av) = available else { return Ok(()) };
    if need.peak() <= av.bytes {
        return Ok(());
    }
    let mut parts = Vec::new();
    if need.weights > 0 {
        parts.push(format!("{} of weights in float32", gib(need.weights)));
    }
    parts.push(format!("{} of files read while loading", gib(need.files)));
    parts.push(format!("{} to generate", gib(need.working)));
    Err(format!(
        "not enough memory for model '{model}': it needs about {} ({}) but {} is available ({}); close other programs, \
         use a smaller model (SD 1.5 rather than SDXL) or a GPU, then try again",
        gib(need.peak()),
        parts.join(", "),
        gib(av.bytes),
        av.source
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_counts_available_memory_and_free_swap() {
        let text = "MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:    8000000 kB\nSwapTotal: 0 kB\nSwapFree:        1000000 kB\n";
        assert_eq!(parse_meminfo(text), Some(9_000_000 * 1024));
        assert_eq!(parse_meminfo("MemAvailable: 10 kB\n"), Some(10 * 1024), "no swap line");
        assert_eq!(parse_meminfo("MemTotal: 10 kB\n"), None, "too old a kernel to say");
    }

    #[test]
    fn cgroup_room_is_the_limit_less_anonymous_memory() {
        assert_eq!(cgroup_room("max\n", "anon 5\n"), None);
        assert_eq!(cgroup_room("1000\n", "file 300\nanon 400\n"), Some(600));
        assert_eq!(cgroup_room("1000", "anon 4000\n"), Some(0));
    }

    /// Full-size SDXL on the CPU: 3.5 billion parameters in an fp16 file of 6.9 GB.
    #[test]
    fn sdxl_on_a_small_machine_is_refused_with_the_numbers() {
        let params = 3_470_000_000u64;
        let need = Need { files: params * 2, weights: params * 4, working: 5 << 29 };
        assert_eq!(need.peak(), params * 6, "loading holds the file and the float32 copy");
        let av = Available { bytes: 8 << 30, source: "available memory and free swap".into() };
        let msg = check("sdxl-base", &need, Some(&av)).unwrap_err();
        assert!(msg.contains("'sdxl-base'") && msg.contains("19.4 GB") && msg.contains("8.0 GB is available"), "{msg}");
        assert!(msg.contains("12.9 GB of weights in float32") && msg.contains("SD 1.5"), "{msg}");
        let big = Available { bytes: 64 << 30, source: "x".into() };
        assert!(check("sdxl-base", &need, Some(&big)).is_ok());
        assert!(check("sdxl-base", &need, None).is_ok(), "nothing measured: no refusal");
        let tiny = Need { files: 3 << 20, weights: 5 << 20, working: 1 << 30 };
        let msg = check("tiny", &tiny, Some(&Available { bytes: 100 << 20, source: "cap".into() })).unwrap_err();
        assert!(msg.contains("5 MB of weights") && msg.contains("3 MB of files") && msg.contains("1.0 GB to generate") && msg.contains("but 100 MB is"), "{msg}");
    }

    /// The estimate reads headers only, skips EMA copies and counts float32 on the CPU only.
    #[test]
    fn estimate_reads_the_headers() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("m.safetensors");
        let header = br#"{"a.weight":{"dtype":"F16","shape":[4,8],"data_offsets":[0,64]},"model_ema.a":{"dtype":"F16","shape":[4,8],"data_offsets":[64,128]}}"#;
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header);
        bytes.extend(std::iter::repeat_n(0u8, 128));
        std::fs::write(&p, &bytes).expect("write");
        let cpu = estimate(&[p.as_path()], true).expect("estimate");
        assert_eq!((cpu.files, cpu.weights, cpu.working), (bytes.len() as u64, 32 * 4, 1 << 30));
        assert_eq!(estimate(&[p.as_path()], false).expect("estimate").weights, 0);
        std::fs::write(&p, &bytes[..bytes.len() - 10]).expect("write");
        let err = estimate(&[p.as_path()], true).unwrap_err();
        assert!(err.contains("is truncated"), "{err}");
    }
}
