//! Deletion and the retention sweeper.
//!
//! Every deletion (expiry, a user's delete, releasing photos a finished job no longer needs) takes
//! the same crash-safe path:
//! 1. one transaction deletes the output / input rows and marks their `blobs` rows `deleting`,
//!    overwriting the wrapped key: from this commit on the file is unreadable and invisible;
//! 2. the WAL is checkpointed and truncated, so the old key is gone from the WAL too;
//! 3. the files are removed (a missing file is fine) and their folders fsynced;
//! 4. the marked rows are deleted and the WAL is checkpointed again.
//!
//! A crash anywhere leaves either unmarked rows with their files, or marked rows whose files may or
//! may not exist; the next sweep (or `doctor --repair`) finishes steps 2-4. The database never
//! points a live row at a missing file.
//!
//! Expiry is judged against the high-water mark of every time this library has seen, and each
//! output's `expires_at` is fixed when it is made (a shorter retention setting may lower it, nothing
//! raises it): setting the clock back can't keep anything longer. The price: after the clock was
//! set far ahead and back, outputs made in between expire at the next sweep (privacy before
//! retention); `doctor` reports such a clock as `clock_ahead_secs`.

use std::collections::BTreeSet;

use rusqlite::{params, Transaction};
use serde::Serialize;

use crate::db;
use crate::error::{CoreError, Result};
use crate::library::{observe, Library, DAY};
use crate::vault::FaultPoint;

/// How long the pre-upgrade copy of the database is kept (it holds wrapped keys of rows deleted since).
const BACKUP_KEEP_SECS: i64 = DAY;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SweepReport {
    /// The time expiry was judged against (the latest time ever seen).
    pub judged_at: i64,
    pub outputs_expired: usize,
    pub inputs_released: usize,
    /// Vault files removed (includes deletions a crash had left unfinished).
    pub files_removed: usize,
    pub backups_removed: usize,
}

/// Step 1: hide the rows and shred the keys of `blob_ids`.
pub(crate) fn mark_blobs(tx: &Transaction<'_>, blob_ids: &[String]) -> rusqlite::Result<()> {
    for id in blob_ids {
        tx.prepare_cached("DELETE FROM outputs WHERE blob_id = ?1")?.execute([id])?;
        tx.prepare_cached(
            "UPDATE job_inputs SET input_id = NULL WHERE input_id IN (SELECT id FROM inputs WHERE blob_id = ?1)",
        )?
        .execute([id])?;
        tx.prepare_cached("DELETE FROM inputs WHERE blob_id = ?1")?.execute([id])?;
        tx.prepare_cached("UPDATE blobs SET deleting = 1, wrapped_key = X'' WHERE id = ?1")?.execute([id])?;
    }
    Ok(())
}

/// Step 1 for the photos no queued or running job needs any more, inside the caller's transaction.
pub(crate) fn mark_unneeded_inputs(tx: &Transaction<'_>) -> rusqlite::Result<usize> {
    let blobs = unneeded_inputs(tx)?;
    mark_blobs(tx, &blobs)?;
    Ok(blobs.len())
}

/// Photos no queued or running job needs any more.
fn unneeded_inputs(tx: &Transaction<'_>) -> rusqlite::Result<Vec<String>> {
    let mut stmt = tx.prepare_cached(
        "SELECT i.blob_id FROM inputs i WHERE NOT EXISTS (
            SELECT 1 FROM job_inputs ji JOIN jobs j ON j.id = ji.job_id
            WHERE ji.input_id = i.id AND j.state IN ('queued', 'running'))",
    )?;
    let rows = stmt.query_map([], |r| r.get(0))?.collect();
    rows
}

impl Library {
    fn fault(&self, point: FaultPoint) -> Result<()> {
        self.vault.fault(point).map_err(|e| CoreError::io("delete files in", self.paths.vault(), e))
    }

    /// Steps 2-4 for every marked row. Returns the number of files handled.
    pub(crate) fn finish_deletions(&mut self) -> Result<usize> {
        let err = self.dberr();
        let ids: Vec<String> = {
            let mut stmt = self.conn.prepare_cached("SELECT id FROM blobs WHERE deleting = 1").map_err(&err)?;
            let v = stmt
                .query_map([], |r| r.get(0))
                .map_err(&err)?
                .collect::<rusqlite::Result<Vec<String>>>()
                .map_err(&err)?;
            v
        };
        if ids.is_empty() {
            return Ok(0);
        }
        // The marked rows' old keys may still sit in WAL frames: fold them into the (securely
        // overwritten) database file before anything else.
        db::checkpoint(&self.conn).map_err(&err)?;
        drop(err);
        self.fault(FaultPoint::DeleteMarked)?;
        let mut dirs = BTreeSet::new();
        for id in &ids {
            self.vault.remove(id)?;
            if let Some(dir) = self.paths.blob(id).parent() {
                dirs.insert(dir.to_path_buf());
            }
            self.fault(FaultPoint::DeleteFileRemoved)?;
        }
        for dir in dirs {
            match crate::vault::sync_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(CoreError::io("sync the folder", dir, e)),
            }
        }
        let path = self.paths.db();
        let err = |e| CoreError::db(&path, e);
        let tx = db::immediate(&mut self.conn).map_err(err)?;
        for id in &ids {
            tx.prepare_cached("DELETE FROM blobs WHERE id = ?1 AND deleting = 1")
                .and_then(|mut s| s.execute([id]))
                .map_err(err)?;
        }
        tx.commit().map_err(err)?;
        self.fault(FaultPoint::DeleteRowsGone)?;
        db::checkpoint(&self.conn).map_err(err)?;
        Ok(ids.len())
    }

    pub(crate) fn delete_blobs(&mut self, blob_ids: &[String]) -> Result<usize> {
        let path = self.paths.db();
        let err = |e| CoreError::db(&path, e);
        let tx = db::immediate(&mut self.conn).map_err(err)?;
        mark_blobs(&tx, blob_ids).map_err(err)?;
        tx.commit().map_err(err)?;
        self.finish_deletions()
    }

    /// Deletes the photos that no queued or running job needs.
    pub(crate) fn release_inputs(&mut self) -> Result<usize> {
        let path = self.paths.db();
        let err = |e| CoreError::db(&path, e);
        let tx = db::immediate(&mut self.conn).map_err(err)?;
        let blobs = unneeded_inputs(&tx).map_err(err)?;
        mark_blobs(&tx, &blobs).map_err(err)?;
        tx.commit().map_err(err)?;
        self.finish_deletions()?;
        Ok(blobs.len())
    }

    /// Runs the retention sweep at the library clock's time. Call it at start-up and periodically.
    pub fn sweep(&mut self) -> Result<SweepReport> {
        let now = self.now();
        self.sweep_at(now)
    }

    /// Deletes outputs whose `expires_at` is not after `max(now, latest time ever seen)`, photos no
    /// unfinished job needs, deletions a crash left unfinished and old pre-upgrade database copies.
    /// Safe to interrupt and rerun; a second sweep right after a first one does nothing.
    pub fn sweep_at(&mut self, now: i64) -> Result<SweepReport> {
        let path = self.paths.db();
        let err = |e| CoreError::db(&path, e);
        let mut report = SweepReport::default();
        let mut backups = Vec::new();
        {
            let tx = db::immediate(&mut self.conn).map_err(err)?;
            let judged_at = observe(&tx, now).map_err(err)?;
            report.judged_at = judged_at;
            let expired: Vec<String> = {
                let mut stmt = tx.prepare_cached("SELECT blob_id FROM outputs WHERE expires_at <= ?1").map_err(err)?;
                let v = stmt
                    .query_map([judged_at], |r| r.get(0))
                    .map_err(err)?
                    .collect::<rusqlite::Result<Vec<String>>>()
                    .map_err(err)?;
                v
            };
            let inputs = unneeded_inputs(&tx).map_err(err)?;
            report.outputs_expired = expired.len();
            report.inputs_released = inputs.len();
            mark_blobs(&tx, &expired).map_err(err)?;
            mark_blobs(&tx, &inputs).map_err(err)?;
            let mut stmt =
                tx.prepare_cached("SELECT key, value FROM meta WHERE key LIKE 'backup_v%_at'").map_err(err)?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
                .map_err(err)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(err)?;
            drop(stmt);
            for (key, at) in rows {
                let at: i64 = at.parse().unwrap_or(i64::MIN);
                let version: Option<i64> =
                    key.strip_prefix("backup_v").and_then(|k| k.strip_suffix("_at")).and_then(|v| v.parse().ok());
                if let Some(version) = version {
                    if at.saturating_add(BACKUP_KEEP_SECS) <= judged_at {
                        backups.push((key, version));
                    }
                }
            }
            tx.commit().map_err(err)?;
        }
        report.files_removed = self.finish_deletions()?;
        for (key, version) in backups {
            let file = self.paths.db_backup(version);
            match std::fs::remove_file(&file) {
                Ok(()) => report.backups_removed += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(CoreError::io("delete", file, e)),
            }
            let tx = db::immediate(&mut self.conn).map_err(err)?;
            tx.prepare_cached("DELETE FROM meta WHERE key = ?1")
                .and_then(|mut s| s.execute(params![key]))
                .map_err(err)?;
            tx.commit().map_err(err)?;
        }
        Ok(report)
    }
}
