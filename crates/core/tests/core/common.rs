//! Helpers shared by the core tests.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use likeness_core::{Clock, KeySource, Library, ManualClock, MemoryKeyStore, NewOutput};

/// Tests that change process environment variables hold this lock.
pub static ENV_LOCK: Mutex<()> = Mutex::new(());

pub fn env_lock() -> MutexGuard<'static, ()> {
    ENV_LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// A temp folder, on tmpfs when there is one (fsync is cheap there).
pub fn tmp() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(dir) = tempfile::Builder::new().prefix("likeness-core-").tempdir_in(shm) {
            return dir;
        }
    }
    tempfile::tempdir().expect("temp dir")
}

pub const T0: i64 = 1_800_000_000;

pub fn open(dir: &Path, store: &MemoryKeyStore) -> Library {
    Library::open_with_clock(Some(dir), KeySource::store(store.clone()), Arc::new(ManualClock::new(T0)))
        .expect("open library")
}

pub fn open_clock(dir: &Path, store: &MemoryKeyStore, clock: &ManualClock) -> Library {
    let clock: Arc<dyn Clock> = Arc::new(clock.clone());
    Library::open_with_clock(Some(dir), KeySource::store(store.clone()), clock).expect("open library")
}

pub fn photo(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/photos").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

pub fn output(bytes: Vec<u8>, format: &str) -> NewOutput {
    NewOutput { bytes, format: format.into(), width: 64, height: 48 }
}

/// Every plain file under `dir`, recursively.
pub fn all_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Files under `<dir>/vault`.
pub fn vault_files(dir: &Path) -> Vec<PathBuf> {
    all_files(&dir.join("vault"))
}

pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// A second connection to the library's database, for looking behind the API.
pub fn raw_db(dir: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(dir.join("likeness.db")).expect("open db")
}

/// Copies a folder tree (a fixture model) so a test can change the copy.
pub fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), &to).unwrap();
        }
    }
}

/// `src` laid out as the Hugging Face hub cache keeps a download, under `repo` (`models--ORG--NAME`):
/// each file in `blobs/` under its sha256, `snapshots/REV/` a tree of relative links into
/// `../../blobs/`, and `refs/main` naming REV.
pub fn hf_cache(src: &Path, repo: &Path, rev: &str) {
    fn walk(dir: &Path, rel: &Path, repo: &Path, snap: &Path) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let rel = rel.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                std::fs::create_dir_all(snap.join(&rel)).unwrap();
                walk(&e.path(), &rel, repo, snap);
            } else {
                let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(std::fs::read(e.path()).unwrap()));
                std::fs::copy(e.path(), repo.join("blobs").join(&sha)).unwrap();
                let up = "../".repeat(rel.components().count() + 1);
                std::os::unix::fs::symlink(format!("{up}blobs/{sha}"), snap.join(&rel)).unwrap();
            }
        }
    }
    let snap = repo.join("snapshots").join(rev);
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), rev).unwrap();
    walk(src, Path::new(""), repo, &snap);
}
