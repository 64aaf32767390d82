//! Writing user-visible files: never overwrite, never leave a partial file, never follow a
//! symlink that sits where the output should go.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Writes `bytes` as `dir/stem.ext`, or `dir/stem-2.ext`, `-3`, ... when taken. Returns the path.
///
/// The data goes to a hidden temporary file first (fsynced), then is linked into place with an
/// operation that fails if the name exists, so a crash leaves either nothing or a whole file and
/// an existing file (or a symlink planted there) is never replaced.
pub fn write_new(dir: &Path, stem: &str, ext: &str, bytes: &[u8]) -> Result<PathBuf> {
    fs::create_dir_all(dir).with_context(|| format!("{}: cannot create the output folder", dir.display()))?;
    let tmp = dir.join(format!(".{stem}.{}.tmp", std::process::id()));
    write_synced(&tmp, bytes).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        describe_io(e, dir)
    })?;
    let result = link_first_free(dir, stem, ext, &tmp);
    let _ = fs::remove_file(&tmp);
    result
}

fn link_first_free(dir: &Path, stem: &str, ext: &str, tmp: &Path) -> Result<PathBuf> {
    for n in 1..10_000u32 {
        let name = if n == 1 { format!("{stem}.{ext}") } else { format!("{stem}-{n}.{ext}") };
        let dest = dir.join(name);
        match fs::hard_link(tmp, &dest) {
            Ok(()) => return Ok(dest),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            // File systems without hard links (FAT, some network shares): reserve the name, then copy.
            Err(_) => match OpenOptions::new().write(true).create_new(true).open(&dest) {
                Ok(mut f) => {
                    let bytes = fs::read(tmp)?;
                    if let Err(e) = f.write_all(&bytes).and_then(|_| f.sync_all()) {
                        drop(f);
                        let _ = fs::remove_file(&dest);
                        return Err(describe_io(e, dir));
                    }
                    return Ok(dest);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(describe_io(e, dir)),
            },
        }
    }
    anyhow::bail!("{}: too many files named {stem}-N.{ext}; choose another output folder", dir.display())
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

/// A file name stem made safe for any file system (no separators, no control or reserved characters).
pub fn safe_stem(s: &str) -> String {
    let cleaned: String = s
        .chars()
        .map(|c| if c.is_control() || "/\\:*?\"<>|".contains(c) { '_' } else { c })
        .collect();
    let trimmed = cleaned.trim_matches(|c: char| c == '.' || c.is_whitespace());
    if trimmed.is_empty() {
        "headshot".into()
    } else {
        trimmed.chars().take(120).collect()
    }
}

/// Reads a user's photo, refusing directories and oversized files before reading them.
pub fn read_photo(path: &Path, max_bytes: u64) -> Result<Vec<u8>> {
    let meta = fs::metadata(path).with_context(|| format!("{}: cannot open the photo", path.display()))?;
    if meta.is_dir() {
        anyhow::bail!("{}: is a folder, not a photo (use `likeness batch` for folders)", path.display());
    }
    if meta.len() > max_bytes {
        anyhow::bail!("{}: the file is {} bytes, more than the limit of {max_bytes} bytes", path.display(), meta.len());
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    io::Read::read_to_end(&mut File::open(path).with_context(|| format!("{}: cannot open the photo", path.display()))?, &mut bytes)
        .with_context(|| format!("{}: cannot read the photo", path.display()))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_overwrites_and_suffixes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = write_new(dir.path(), "x", "png", b"one").expect("first");
        let b = write_new(dir.path(), "x", "png", b"two").expect("second");
        assert_eq!(a.file_name().and_then(|s| s.to_str()), Some("x.png"));
        assert_eq!(b.file_name().and_then(|s| s.to_str()), Some("x-2.png"));
        assert_eq!(fs::read(&a).expect("read"), b"one");
        assert_eq!(fs::read(&b).expect("read"), b"two");
        // No temporary files left behind.
        assert_eq!(fs::read_dir(dir.path()).expect("ls").count(), 2);
    }

    #[cfg(unix)]
    #[test]
    fn a_planted_symlink_is_not_followed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let victim = dir.path().join("victim.txt");
        fs::write(&victim, b"keep").expect("write");
        let out = dir.path().join("out");
        fs::create_dir(&out).expect("mkdir");
        std::os::unix::fs::symlink(&victim, out.join("x.png")).expect("symlink");
        let p = write_new(&out, "x", "png", b"new").expect("write");
        assert_eq!(p.file_name().and_then(|s| s.to_str()), Some("x-2.png"));
        assert_eq!(fs::read(&victim).expect("read"), b"keep");
    }

    #[test]
    fn stems_are_sanitised() {
        assert_eq!(safe_stem("a/b\\c:d"), "a_b_c_d");
        assert_eq!(safe_stem("..."), "headshot");
    }
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
