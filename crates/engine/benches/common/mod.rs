//! Shared by the benches: paths in the checkout and the Python that runs the reference runtimes.
#![allow(dead_code)]

use std::path::PathBuf;

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `$LIKENESS_BENCH_PYTHON`, else `.venv/bin/python` in the checkout, else `python3`.
pub fn python() -> String {
    if let Ok(p) = std::env::var("LIKENESS_BENCH_PYTHON") {
        return p;
    }
    let venv = root().join(".venv/bin/python");
    if venv.is_file() {
        return venv.display().to_string();
    }
    "python3".into()
}
