//! The encrypted file vault.
//!
//! Every photo and output is one file `vault/ab/<id>.bin` = `"LKV1" || nonce(24) || XChaCha20-Poly1305(file key,
//! plaintext, aad = id)`. Each file has its own random 256-bit key; that key, wrapped (XChaCha20-Poly1305) by the
//! master key, lives only in the database row, never next to the file. Deleting the row (SQLite
//! `secure_delete` + a WAL checkpoint) therefore makes any leftover copy of the file unreadable, even one
//! recovered from the disk or a backup.
//!
//! Writes are atomic: a temp file in the same folder, fsync, rename, fsync of the folder; the caller
//! inserts the database row only after that, so the database never points at a missing file.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use zeroize::Zeroizing;

use crate::error::{CoreError, Result};
use crate::paths::DataPaths;

const MAGIC: &[u8; 4] = b"LKV1";
const NONCE_LEN: usize = 24;
const KEY_LEN: usize = 32;
const WRAP_AAD: &[u8] = b"likeness-wrap:";
const CHECK_AAD: &[u8] = b"likeness-key-check:";

pub type MasterKey = Zeroizing<[u8; KEY_LEN]>;

/// Places where tests can inject a failure (a full disk, a crash) to prove that nothing is left
/// half-done. Production code never installs a hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultPoint {
    /// Before the bytes of a vault file (or the salt) are written.
    BlobWrite,
    /// Before a written temp file is renamed into place.
    BlobRename,
    /// Deletion: after the rows were marked (keys shredded), before files are removed.
    DeleteMarked,
    /// Deletion: after one file was removed.
    DeleteFileRemoved,
    /// Deletion: after the marked rows were deleted, before the WAL checkpoint.
    DeleteRowsGone,
}

/// A test hook: return an error to make the operation at that point fail.
pub type FaultHook = Arc<dyn Fn(FaultPoint) -> std::io::Result<()> + Send + Sync>;

pub(crate) fn random_id() -> String {
    let mut b = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

pub(crate) fn random_key() -> MasterKey {
    let mut k = Zeroizing::new([0u8; KEY_LEN]);
    rand::thread_rng().fill_bytes(k.as_mut());
    k
}

fn seal(key: &[u8; KEY_LEN], aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
    let cipher = XChaCha20Poly1305::new(key.into());
    let mut nonce = [0u8; NONCE_LEN];
    rand::thread_rng().fill_bytes(&mut nonce);
    let ct = cipher
        .encrypt(XNonce::from_slice(&nonce), Payload { msg: plaintext, aad })
        .map_err(|_| CoreError::Crypto("XChaCha20-Poly1305 refused to encrypt"))?;
    let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    Ok(out)
}

fn open(key: &[u8; KEY_LEN], aad: &[u8], sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    if sealed.len() < NONCE_LEN {
        return None;
    }
    let (nonce, ct) = sealed.split_at(NONCE_LEN);
    XChaCha20Poly1305::new(key.into())
        .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad })
        .ok()
        .map(Zeroizing::new)
}

fn aad(prefix: &[u8], id: &str) -> Vec<u8> {
    let mut v = prefix.to_vec();
    v.extend_from_slice(id.as_bytes());
    v
}

/// A value stored in the database that only the right master key opens: tells a wrong key
/// (wrong passphrase, another keyring entry) apart from damaged files.
pub(crate) fn make_key_check(master: &MasterKey, vault_id: &str) -> Result<Vec<u8>> {
    seal(master, &aad(CHECK_AAD, vault_id), b"likeness")
}

pub(crate) fn verify_key_check(master: &MasterKey, vault_id: &str, check: &[u8]) -> bool {
    open(master, &aad(CHECK_AAD, vault_id), check).is_some_and(|p| p.as_slice() == b"likeness")
}

pub(crate) struct Vault {
    pub(crate) paths: DataPaths,
    master: MasterKey,
    pub(crate) hook: Option<FaultHook>,
}

impl Vault {
    pub(crate) fn new(paths: DataPaths, master: MasterKey) -> Self {
        Self { paths, master, hook: None }
    }

    pub(crate) fn fault(&self, point: FaultPoint) -> std::io::Result<()> {
        match &self.hook {
            Some(hook) => hook(point),
            None => Ok(()),
        }
    }

    /// Encrypts `plaintext` under a fresh key into `vault/ab/<id>.bin` (atomically) and returns the
    /// wrapped key for the database row.
    pub(crate) fn store(&self, id: &str, plaintext: &[u8]) -> Result<Vec<u8>> {
        let file_key = random_key();
        let mut body = MAGIC.to_vec();
        body.extend_from_slice(&seal(&file_key, id.as_bytes(), plaintext)?);
        let wrapped = seal(&self.master, &aad(WRAP_AAD, id), file_key.as_ref())?;
        write_atomic(&self.paths.blob(id), &body, self.hook.as_ref())?;
        Ok(wrapped)
    }

    pub(crate) fn load(&self, id: &str, wrapped_key: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        let path = self.paths.blob(id);
        let corrupt = || CoreError::Corrupt { path: path.clone() };
        let key_bytes = open(&self.master, &aad(WRAP_AAD, id), wrapped_key).ok_or_else(corrupt)?;
        let file_key: [u8; KEY_LEN] = key_bytes.as_slice().try_into().map_err(|_| corrupt())?;
        let file_key = Zeroizing::new(file_key);
        let body = fs::read(&path).map_err(|e| CoreError::io("read", &path, e))?;
        let sealed = body.strip_prefix(MAGIC.as_slice()).ok_or_else(corrupt)?;
        open(&file_key, id.as_bytes(), sealed).ok_or_else(corrupt)
    }

    /// Removes a vault file; a file that is already gone is fine (a rerun after a crash).
    pub(crate) fn remove(&self, id: &str) -> Result<()> {
        let path = self.paths.blob(id);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(CoreError::io("delete", path, e)),
        }
    }
}

pub(crate) fn create_private_dir(dir: &Path) -> Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|e| CoreError::io("create the folder", dir, e))
}

pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    // Directories can't be opened for fsync on Windows; NTFS journals renames itself.
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Temp file in the same folder, fsync, rename, fsync the folder. On any failure nothing is left
/// at `path` or in a temp file.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], hook: Option<&FaultHook>) -> Result<()> {
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
    let fresh_dir = !dir.exists();
    create_private_dir(&dir)?;
    if fresh_dir {
        if let Some(parent) = dir.parent() {
            sync_dir(parent).map_err(|e| CoreError::io("sync the folder", parent, e))?;
        }
    }
    let tmp = dir.join(format!(".{}.tmp", random_id()));
    let fault = |p| hook.map_or(Ok(()), |h| h(p));
    let mut renamed = false;
    let result = (|| -> std::io::Result<()> {
        let mut opts = OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut file = opts.open(&tmp)?;
        fault(FaultPoint::BlobWrite)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        fault(FaultPoint::BlobRename)?;
        fs::rename(&tmp, path)?;
        renamed = true;
        sync_dir(&dir)
    })();
    match result {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            if renamed {
                let _ = fs::remove_file(path);
            }
            Err(CoreError::io("write", path, e))
        }
    }
}
