//! Writing user-visible files: never overwrite, never leave a partial file, never follow a
//! symlink that sits where the output should go.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// See [`likeness_core::files::write_new`]: never overwrites, never follows a planted symlink.
pub fn write_new(dir: &Path, stem: &str, ext: &str, bytes: &[u8]) -> Result<PathBuf> {
    Ok(likeness_core::files::write_new(dir, stem, ext, bytes)?)
}

/// Reads a user's photo, refusing folders and oversized files before reading them.
pub fn read_photo(path: &Path, max_bytes: u64) -> Result<Vec<u8>> {
    Ok(likeness_core::files::read_photo(path, max_bytes)?)
}

fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = OpenOptions::new().write(true).create_new(true).open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Turns an I/O error into a message that says what to do.
pub fn describe_io(e: io::Error, dir: &Path) -> anyhow::Error {
    let hint = match e.raw_os_error() {
        Some(28) => "the disk is full; free some space and run again",
        Some(30) => "the folder is on a read-only file system; choose another output folder",
        _ if e.kind() == io::ErrorKind::PermissionDenied => "permission denied; choose a folder you can write to",
        _ => "cannot write there",
    };
    anyhow::anyhow!("{}: {hint} ({e})", dir.display())
}

/// Writes `bytes` to exactly `path`, failing (and writing nothing) if anything already exists there.
pub fn write_exact_new(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if fs::symlink_metadata(path).is_ok() {
        anyhow::bail!("{}: already exists; Likeness never overwrites a file, choose another name", path.display());
    }
    fs::create_dir_all(&dir).with_context(|| format!("{}: cannot create the folder", dir.display()))?;
    let tmp = dir.join(format!(".likeness.{}.tmp", std::process::id()));
    write_synced(&tmp, bytes).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        describe_io(e, &dir)
    })?;
    let linked = match fs::hard_link(&tmp, path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            Err(anyhow::anyhow!("{}: already exists; Likeness never overwrites a file, choose another name", path.display()))
        }
        Err(_) => OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .and_then(|mut f| f.write_all(bytes).and_then(|_| f.sync_all()))
            .map_err(|e| describe_io(e, &dir)),
    };
    let _ = fs::remove_file(&tmp);
    linked
}
