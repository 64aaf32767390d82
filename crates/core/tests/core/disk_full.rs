//! A full disk: an injected ENOSPC at each write step, and (as root with LIKENESS_TEST_TMPFS=1) a
//! real 2 MiB tmpfs. The error says "disk full", nothing half-written is left, nothing stored is
//! lost, and the same call succeeds once there is space.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use likeness_core::{CoreError, FaultHook, FaultPoint, JobState, Library, MemoryKeyStore};

use crate::common::{all_files, open, output, photo, tmp, vault_files};

fn enospc_at(point: FaultPoint, on: Arc<AtomicBool>) -> FaultHook {
    Arc::new(move |p| {
        if p == point && on.load(Ordering::SeqCst) {
            Err(std::io::Error::from_raw_os_error(libc_enospc()))
        } else {
            Ok(())
        }
    })
}

fn libc_enospc() -> i32 {
    28 // ENOSPC on Linux and macOS
}

fn assert_disk_full(err: &CoreError) {
    assert!(matches!(err, CoreError::DiskFull { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("full") && msg.contains("free some space"), "{msg}");
}

fn no_temp_files(dir: &std::path::Path) {
    for f in all_files(dir) {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        assert!(!name.ends_with(".tmp"), "temp file left: {}", f.display());
    }
}

#[test]
fn injected_disk_full_loses_nothing() {
    for point in [FaultPoint::BlobWrite, FaultPoint::BlobRename] {
        let dir = tmp();
        let store = MemoryKeyStore::new();
        let mut lib = open(dir.path(), &store);
        let keep = lib.create_job("keep.jpg", b"already stored", "{}").unwrap();
        let on = Arc::new(AtomicBool::new(true));
        lib.set_fault_hook(Some(enospc_at(point, on.clone())));

        // A new job can't be stored: no row, no file.
        let err = lib.create_job("new.jpg", &photo("rocket.jpg"), "{}").unwrap_err();
        assert_disk_full(&err);
        assert_eq!(lib.list_jobs().unwrap().len(), 1, "{point:?}");
        assert_eq!(vault_files(dir.path()).len(), 1, "{point:?}");
        no_temp_files(dir.path());

        // A finished job can't store its outputs: it stays running, nothing stored.
        let claimed = lib.claim_next_job().unwrap().unwrap();
        assert_eq!(claimed.id, keep);
        let outs = vec![output(b"first output".to_vec(), "png"), output(b"second output".to_vec(), "png")];
        let err = lib.complete_job(&keep, outs.clone()).unwrap_err();
        assert_disk_full(&err);
        let job = lib.get_job(&keep).unwrap();
        assert_eq!(job.state, JobState::Running);
        assert!(job.outputs.is_empty());
        assert_eq!(vault_files(dir.path()).len(), 1, "only the photo");
        no_temp_files(dir.path());
        assert_eq!(lib.job_input(&keep).unwrap().as_slice(), b"already stored", "nothing lost");
        assert!(lib.doctor(false).unwrap().is_healthy());

        // Space is back: the same calls succeed.
        on.store(false, Ordering::SeqCst);
        let ids = lib.complete_job(&keep, outs).unwrap();
        assert_eq!(lib.get_output(&ids[1]).unwrap().as_slice(), b"second output");
        assert_eq!(lib.get_job(&keep).unwrap().state, JobState::Done);
        lib.create_job("new.jpg", &photo("rocket.jpg"), "{}").unwrap();
        assert!(lib.doctor(false).unwrap().is_healthy());
    }
}

/// The second output fails after the first was written: the first is removed again.
#[test]
fn disk_full_on_a_later_output_removes_the_earlier_ones() {
    let dir = tmp();
    let store = MemoryKeyStore::new();
    let mut lib = open(dir.path(), &store);
    let id = lib.create_job("a.jpg", b"photo", "{}").unwrap();
    lib.claim_next_job().unwrap();
    let writes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let w = writes.clone();
    lib.set_fault_hook(Some(Arc::new(move |p| {
        if p == FaultPoint::BlobWrite && w.fetch_add(1, Ordering::SeqCst) == 1 {
            Err(std::io::Error::from_raw_os_error(libc_enospc()))
        } else {
            Ok(())
        }
    })));
    let err = lib
        .complete_job(&id, vec![output(vec![1; 10], "png"), output(vec![2; 10], "png"), output(vec![3; 10], "png")])
        .unwrap_err();
    assert_disk_full(&err);
    assert_eq!(vault_files(dir.path()).len(), 1, "only the photo; the first output was removed");
    no_temp_files(dir.path());
    lib.set_fault_hook(None);
    assert_eq!(lib.complete_job(&id, vec![output(vec![1; 10], "png")]).unwrap().len(), 1);
}

/// A real full file system. Needs root (mount); runs with LIKENESS_TEST_TMPFS=1.
#[test]
fn real_tmpfs_disk_full() {
    if std::env::var("LIKENESS_TEST_TMPFS").as_deref() != Ok("1") {
        // Without a mount, check the mapping of a real ENOSPC from the OS error code.
        let err = std::io::Error::from_raw_os_error(libc_enospc());
        assert_eq!(err.kind(), std::io::ErrorKind::StorageFull);
        return;
    }
    let mnt = tmp();
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "likeness-test", mnt.path().to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success(), "mount tmpfs (needs root)");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mnt.path().to_path_buf());
    let dir = mnt.path().join("data");
    let store = MemoryKeyStore::new();
    let mut lib = open(&dir, &store);
    let small = lib.create_job("small.jpg", b"small photo", "{}").unwrap();
    // Fill the disk, leaving less room than a photo needs.
    let filler = mnt.path().join("filler");
    let mut size = 0usize;
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while f.write_all(&chunk).is_ok() {
            size += chunk.len();
        }
        let _ = f.sync_all();
    }
    assert!(size > 0);
    let big = photo("astronaut.png");
    let err = lib.create_job("big.png", &big, "{}").unwrap_err();
    assert_disk_full(&err);
    no_temp_files(&dir);
    assert_eq!(lib.list_jobs().unwrap().len(), 1);
    assert_eq!(lib.job_input(&small).unwrap().as_slice(), b"small photo");
    std::fs::remove_file(&filler).unwrap();
    let id = lib.create_job("big.png", &big, "{}").unwrap();
    assert_eq!(lib.job_input(&id).unwrap().as_slice(), big.as_slice());
    drop(lib);
    let _ = Library::open(Some(&dir), likeness_core::KeySource::store(store)).unwrap();
}
