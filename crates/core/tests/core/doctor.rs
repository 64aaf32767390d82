//! `doctor`: integrity, orphan files, missing files, interrupted deletions, and `repair`.

use std::sync::Arc;

use likeness_core::{CoreError, FaultPoint, JobState, MemoryKeyStore};

use crate::common::{open, output, raw_db, tmp, vault_files, T0};

#[test]
fn healthy_library_reports_nothing() {
    let dir = tmp();
    let store = MemoryKeyStore::new();
    let mut lib = open(dir.path(), &store);
    let id = lib.create_job("a.jpg", b"photo", "{}").unwrap();
    lib.claim_next_job().unwrap();
    lib.complete_job(&id, vec![output(b"out".to_vec(), "png")]).unwrap();
    lib.create_job("b.jpg", b"photo b", "{}").unwrap();
    let report = lib.doctor(false).unwrap();
    assert!(report.is_healthy(), "{report:?}");
    assert!(report.integrity_ok && report.integrity_messages.is_empty());
    assert_eq!(report.clock_ahead_secs, 0);
    assert!(!report.repaired);
}

#[test]
fn orphans_and_missing_files_found_and_repaired() {
    let dir = tmp();
    let store = MemoryKeyStore::new();
    let mut lib = open(dir.path(), &store);
    let done = lib.create_job("a.jpg", b"photo a", "{}").unwrap();
    lib.claim_next_job().unwrap();
    let outs =
        lib.complete_job(&done, vec![output(b"out 1".to_vec(), "png"), output(b"out 2".to_vec(), "png")]).unwrap();
    let queued = lib.create_job("b.jpg", b"photo b", "{}").unwrap();
    let files_before = vault_files(dir.path());
    assert_eq!(files_before.len(), 3);

    // Leftovers of a crash: a stray blob and a temp file.
    let shard = dir.path().join("vault").join("ff");
    std::fs::create_dir_all(&shard).unwrap();
    std::fs::write(shard.join("ff00112233.bin"), b"stray").unwrap();
    std::fs::write(shard.join(".abc.tmp"), b"half").unwrap();
    // Lost files: one output's, and the queued job's photo.
    let out_info = lib.output_info(&outs[0]).unwrap();
    let input_file = {
        let db = raw_db(dir.path());
        let blob: String = db
            .query_row(
                "SELECT i.blob_id FROM job_inputs ji JOIN inputs i ON i.id = ji.input_id WHERE ji.job_id = ?1",
                [&queued.0],
                |r| r.get(0),
            )
            .unwrap();
        let out_blob: String =
            db.query_row("SELECT blob_id FROM outputs WHERE id = ?1", [&out_info.id.0], |r| r.get(0)).unwrap();
        std::fs::remove_file(dir.path().join("vault").join(&out_blob[..2]).join(format!("{out_blob}.bin"))).unwrap();
        dir.path().join("vault").join(&blob[..2]).join(format!("{blob}.bin"))
    };
    std::fs::remove_file(&input_file).unwrap();

    let report = lib.doctor(false).unwrap();
    assert!(!report.is_healthy());
    assert!(report.integrity_ok);
    assert_eq!(report.orphan_files.len(), 2, "{:?}", report.orphan_files);
    assert_eq!(report.missing_files.len(), 2, "{:?}", report.missing_files);
    assert!(report.missing_files.contains(&format!("output {}", outs[0])), "{:?}", report.missing_files);
    assert!(report.missing_files.contains(&format!("input b.jpg of job {queued}")), "{:?}", report.missing_files);
    // Checking changes nothing.
    assert!(shard.join("ff00112233.bin").exists());
    assert!(matches!(lib.get_output(&outs[0]).unwrap_err(), CoreError::Io { .. }));

    let report = lib.doctor(true).unwrap();
    assert!(report.repaired);
    assert!(!shard.join("ff00112233.bin").exists() && !shard.join(".abc.tmp").exists());
    assert!(matches!(lib.get_output(&outs[0]).unwrap_err(), CoreError::OutputNotFound(_)));
    assert_eq!(lib.get_output(&outs[1]).unwrap().as_slice(), b"out 2", "the intact output is kept");
    let job = lib.get_job(&queued).unwrap();
    assert_eq!(job.state, JobState::Failed);
    assert!(job.error.unwrap().contains("missing"));
    assert!(lib.claim_next_job().unwrap().is_none());
    let after = lib.doctor(false).unwrap();
    assert!(after.is_healthy(), "{after:?}");
}

#[test]
fn interrupted_deletion_is_reported_and_finished() {
    let dir = tmp();
    let store = MemoryKeyStore::new();
    let mut lib = open(dir.path(), &store);
    let id = lib.create_job("a.jpg", b"photo", "{}").unwrap();
    lib.claim_next_job().unwrap();
    let out = lib.complete_job(&id, vec![output(b"out".to_vec(), "png")]).unwrap().remove(0);
    lib.set_fault_hook(Some(Arc::new(|p| {
        if p == FaultPoint::DeleteMarked {
            Err(std::io::Error::other("simulated crash"))
        } else {
            Ok(())
        }
    })));
    assert!(lib.delete_output(&out).is_err());
    lib.set_fault_hook(None);
    // The row is gone for the user at once; the file waits for repair, the next sweep or the next start.
    assert!(matches!(lib.get_output(&out).unwrap_err(), CoreError::OutputNotFound(_)));
    assert_eq!(vault_files(dir.path()).len(), 1);
    let report = lib.doctor(false).unwrap();
    assert_eq!(report.pending_deletions, 1);
    assert!(report.orphan_files.is_empty() && report.missing_files.is_empty());
    assert!(!report.is_healthy());
    lib.doctor(true).unwrap();
    assert!(vault_files(dir.path()).is_empty());
    assert!(lib.doctor(false).unwrap().is_healthy());

    // The same crash, then a restart: opening finishes the deletion.
    let id = lib.create_job("b.jpg", b"photo", "{}").unwrap();
    lib.claim_next_job().unwrap();
    let out = lib.complete_job(&id, vec![output(b"out".to_vec(), "png")]).unwrap().remove(0);
    lib.set_fault_hook(Some(Arc::new(|p| {
        if p == FaultPoint::DeleteFileRemoved {
            Err(std::io::Error::other("simulated crash"))
        } else {
            Ok(())
        }
    })));
    assert!(lib.delete_output(&out).is_err());
    drop(lib);
    let mut lib = open(dir.path(), &store);
    assert!(vault_files(dir.path()).is_empty());
    assert!(lib.doctor(false).unwrap().is_healthy());
}

#[test]
fn crash_leftovers_are_removed_at_open() {
    let dir = tmp();
    let store = MemoryKeyStore::new();
    let mut lib = open(dir.path(), &store);
    lib.create_job("a.jpg", b"photo", "{}").unwrap();
    drop(lib);
    // A file written just before a crash, before its row was committed, and a temp file.
    let shard = dir.path().join("vault").join("ab");
    std::fs::create_dir_all(&shard).unwrap();
    std::fs::write(shard.join("ab0123.bin"), b"no row").unwrap();
    std::fs::write(shard.join(".ab0124.tmp"), b"half").unwrap();
    let mut lib = open(dir.path(), &store);
    assert_eq!(vault_files(dir.path()).len(), 1, "only the photo with a row is left");
    assert!(lib.doctor(false).unwrap().is_healthy());
}

#[test]
fn clock_ahead_and_integrity_problems_are_reported() {
    let dir = tmp();
    let store = MemoryKeyStore::new();
    let mut lib = open(dir.path(), &store);
    lib.sweep_at(T0 + 5000).unwrap();
    assert_eq!(lib.doctor(false).unwrap().clock_ahead_secs, 5000, "the library clock (T0) is behind what was seen");
    {
        let db = raw_db(dir.path());
        db.execute_batch(
            "PRAGMA foreign_keys = OFF;
             INSERT INTO outputs (id, job_id, position, blob_id, format, size, width, height, created_at, expires_at)
             VALUES ('o', 'no-such-job', 0, 'no-such-blob', 'png', 1, 1, 1, 0, 0);",
        )
        .unwrap();
    }
    let report = lib.doctor(false).unwrap();
    assert!(!report.integrity_ok);
    assert!(report.integrity_messages.iter().any(|m| m.contains("outputs")), "{:?}", report.integrity_messages);
}
