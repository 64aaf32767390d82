//! Where the library lives on disk.
//!
//! The data folder is, in order: the folder the caller passes, else `LIKENESS_DATA_DIR`, else the
//! OS data folder (`~/.local/share/likeness` on Linux, `~/Library/Application Support/app.Likeness.Likeness`
//! on macOS, `%APPDATA%\Likeness\Likeness\data` on Windows). Layout inside it:
//!
//! ```text
//! likeness.db (+ -wal, -shm)   the SQLite job store; per-file wrapped keys live here
//! likeness.db.bak-v<N>         copy taken before upgrading the schema from version N (removed by sweeps after a day)
//! vault/ab/<id>.bin            encrypted photos and outputs, sharded by the id's first two hex digits
//! salt                         Argon2id salt, only for the LIKENESS_PASSPHRASE (headless) key source
//! lock                         advisory lock: one process per data folder
//! ```

use std::path::{Path, PathBuf};

use crate::error::{CoreError, Result};

pub const DATA_DIR_ENV: &str = "LIKENESS_DATA_DIR";

/// The resolved files of one data folder.
#[derive(Debug, Clone)]
pub struct DataPaths {
    pub root: PathBuf,
}

impl DataPaths {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Explicit folder, else `LIKENESS_DATA_DIR`, else the OS data folder.
    pub fn resolve(explicit: Option<&Path>) -> Result<Self> {
        if let Some(dir) = explicit {
            return Ok(Self::new(dir));
        }
        if let Some(dir) = std::env::var_os(DATA_DIR_ENV).filter(|v| !v.is_empty()) {
            return Ok(Self::new(PathBuf::from(dir)));
        }
        directories::ProjectDirs::from("app", "Likeness", "Likeness")
            .map(|dirs| Self::new(dirs.data_dir()))
            .ok_or(CoreError::NoDataDir)
    }

    pub fn db(&self) -> PathBuf {
        self.root.join("likeness.db")
    }
    pub fn db_backup(&self, from_version: i64) -> PathBuf {
        self.root.join(format!("likeness.db.bak-v{from_version}"))
    }
    pub fn vault(&self) -> PathBuf {
        self.root.join("vault")
    }
    pub fn salt(&self) -> PathBuf {
        self.root.join("salt")
    }
    pub fn lock(&self) -> PathBuf {
        self.root.join("lock")
    }
    /// `vault/ab/<id>.bin`; `id` is lowercase hex made by this crate.
    pub fn blob(&self, id: &str) -> PathBuf {
        let shard = id.get(..2).unwrap_or("00");
        self.vault().join(shard).join(format!("{id}.bin"))
    }
}
