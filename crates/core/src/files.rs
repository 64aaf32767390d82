//! Writing files the user sees (exports, batch outputs, reports): never overwrite, never leave a
//! partial file, never follow a symlink that sits where the output should go.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::error::{CoreError, Result};

/// Writes `bytes` as `dir/stem.ext`, or `dir/stem-2.ext`, `-3`, ... when taken. Returns the path.
///
/// The data goes to a hidden temporary file first (fsynced), then is linked into place with an
/// operation that fails if the name exists, so a crash leaves either nothing or a whole file and
/// an existing file (or a symlink planted there) is never replaced.
pub fn write_new(dir: &Path, stem: &str, ext: &str, bytes: &[u8]) -> Result<PathBuf> {
    fs::create_dir_all(dir).map_err(|e| CoreError::io("create the folder", dir, e))?;
    let tmp = dir.join(format!(".{stem}.{}.tmp", std::process::id()));
    write_synced(&tmp, bytes).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        CoreError::io("write into", dir, e)
    })?;
    let result = link_first_free(dir, stem, ext, &tmp, bytes);
    let _ = fs::remove_file(&tmp);
    result
}

fn link_first_free(dir: &Path, stem: &str, ext: &str, tmp: &Path, bytes: &[u8]) -> Result<PathBuf> {
    for n in 1..10_000u32 {
        let name = if n == 1 { format!("{stem}.{ext}") } else { format!("{stem}-{n}.{ext}") };
        let dest = dir.join(name);
        match fs::hard_link(tmp, &dest) {
            Ok(()) => return Ok(dest),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            // File systems without hard links (FAT, some network shares): reserve the name, then write.
            Err(_) => match OpenOptions::new().write(true).create_new(true).open(&dest) {
                Ok(mut f) => {
                    if let Err(e) = f.write_all(bytes).and_then(|_| f.sync_all()) {
                        drop(f);
                        let _ = fs::remove_file(&dest);
                        return Err(CoreError::io("write", dest, e));
                    }
                    return Ok(dest);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(CoreError::io("write into", dir, e)),
            },
        }
    }
    Err(CoreError::InvalidInput(format!("{}: too many files named {stem}-N.{ext}; choose another output folder", dir.display())))
}

fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = OpenOptions::new().write(true).create_new(true).open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Replaces `path` (a file Likeness itself owns, e.g. a batch's state file) atomically.
pub fn replace_own_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    if fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(CoreError::InvalidInput(format!("{}: is a symbolic link; Likeness does not write through links", path.display())));
    }
    let tmp = dir.join(format!(".likeness-state.{}.tmp", std::process::id()));
    let _ = fs::remove_file(&tmp);
    write_synced(&tmp, bytes).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        CoreError::io("write", path, e)
    })?;
    fs::rename(&tmp, path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        CoreError::io("write", path, e)
    })
}

/// Fills a file name template such as `{input}-{preset}-{n}` from `values` (placeholder, value)
/// and makes the result a safe file name stem (see [`safe_stem`]).
pub fn fill_template(template: &str, values: &[(&str, &str)]) -> Result<String> {
    let known = || values.iter().map(|(k, _)| format!("{{{k}}}")).collect::<Vec<_>>().join(", ");
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let end = rest[start..]
            .find('}')
            .map(|e| start + e)
            .ok_or_else(|| CoreError::InvalidSettings(format!("name template '{template}': a '{{' is not closed")))?;
        let key = &rest[start + 1..end];
        match values.iter().find(|(k, _)| *k == key) {
            Some((_, v)) => out.push_str(v),
            None => return Err(CoreError::InvalidSettings(format!("name template: unknown placeholder {{{key}}}; use {}", known()))),
        }
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    Ok(safe_stem(&out))
}

/// A file name stem made safe for any file system (no separators, no control or reserved characters).
pub fn safe_stem(s: &str) -> String {
    let cleaned: String = s.chars().map(|c| if c.is_control() || "/\\:*?\"<>|".contains(c) { '_' } else { c }).collect();
    let trimmed = cleaned.trim_matches(|c: char| c == '.' || c.is_whitespace());
    if trimmed.is_empty() {
        "headshot".into()
    } else {
        trimmed.chars().take(120).collect()
    }
}

/// Reads a user's photo, refusing folders and oversized files before reading them.
pub fn read_photo(path: &Path, max_bytes: u64) -> Result<Vec<u8>> {
    let meta = fs::metadata(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => CoreError::InvalidInput(format!("{}: cannot open the photo: there is no such file", path.display())),
        io::ErrorKind::PermissionDenied => {
            CoreError::InvalidInput(format!("{}: cannot open the photo: permission denied; check the file's permissions", path.display()))
        }
        _ => CoreError::io("open the photo", path, e),
    })?;
    if meta.is_dir() {
        return Err(CoreError::InvalidInput(format!("{}: is a folder, not a photo (use `likeness batch` for folders)", path.display())));
    }
    if meta.len() > max_bytes {
        return Err(CoreError::InvalidInput(format!(
            "{}: the file is {} bytes, more than the limit of {max_bytes} bytes",
            path.display(),
            meta.len()
        )));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| CoreError::io("read the photo", path, e))?;
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
        assert_eq!(fs::read_dir(dir.path()).expect("ls").count(), 2, "no temporary file left");
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
        std::os::unix::fs::symlink(&victim, out.join("state.json")).expect("symlink");
        assert!(replace_own_file(&out.join("state.json"), b"x").is_err());
        assert_eq!(fs::read(&victim).expect("read"), b"keep");
    }

    #[test]
    fn stems_are_sanitised() {
        assert_eq!(safe_stem("a/b\\c:d"), "a_b_c_d");
        assert_eq!(safe_stem("..."), "headshot");
    }
}
