//! `doctor`: checks the database and the vault agree, and optionally repairs what can be repaired.

use std::collections::HashSet;
use std::path::PathBuf;

use serde::Serialize;

use crate::db;
use crate::error::{CoreError, Result};
use crate::library::Library;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DoctorReport {
    /// `PRAGMA integrity_check` and `foreign_key_check` found nothing wrong.
    pub integrity_ok: bool,
    /// What they found, if anything.
    pub integrity_messages: Vec<String>,
    /// Files in the vault no row knows (leftovers of a crash, temp files): unreadable without a row.
    pub orphan_files: Vec<PathBuf>,
    /// Rows whose file is gone: "output <id>" or "input <name> of job <id>".
    pub missing_files: Vec<String>,
    /// Deletions a crash interrupted (finished by the next sweep or by repair).
    pub pending_deletions: usize,
    /// How far the latest time ever seen is ahead of the clock now (0 when it isn't).
    pub clock_ahead_secs: i64,
    /// `repair` was asked for and done.
    pub repaired: bool,
}

impl DoctorReport {
    pub fn is_healthy(&self) -> bool {
        self.integrity_ok
            && self.orphan_files.is_empty()
            && self.missing_files.is_empty()
            && self.pending_deletions == 0
    }
}

impl Library {
    /// Files in the vault that no row knows (a crash between writing a file and its row, temp
    /// files), sorted. Unreadable without a row, and safe to remove while no job runs.
    pub(crate) fn orphan_files(&self) -> Result<Vec<PathBuf>> {
        let err = self.dberr();
        let known: HashSet<String> = {
            let mut stmt = self.conn.prepare_cached("SELECT id FROM blobs").map_err(&err)?;
            let v = stmt
                .query_map([], |r| r.get(0))
                .map_err(&err)?
                .collect::<rusqlite::Result<HashSet<String>>>()
                .map_err(&err)?;
            v
        };
        let vault = self.paths.vault();
        let read_dir = |dir: &PathBuf| std::fs::read_dir(dir).map_err(|e| CoreError::io("list", dir, e));
        let mut orphans = Vec::new();
        if vault.exists() {
            for entry in read_dir(&vault)? {
                let entry = entry.map_err(|e| CoreError::io("list", &vault, e))?;
                let path = entry.path();
                if !path.is_dir() {
                    orphans.push(path);
                    continue;
                }
                for file in read_dir(&path)? {
                    let file = file.map_err(|e| CoreError::io("list", &path, e))?.path();
                    let id = file.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".bin"));
                    let belongs = id.is_some_and(|id| known.contains(id) && self.paths.blob(id) == file);
                    if !belongs {
                        orphans.push(file);
                    }
                }
            }
        }
        orphans.sort();
        Ok(orphans)
    }

    /// Checks integrity, orphan files and missing files. With `repair`: removes orphan files,
    /// drops rows whose file is gone (failing unfinished jobs whose photo is gone) and finishes
    /// interrupted deletions. Run it while no job is running.
    pub fn doctor(&mut self, repair: bool) -> Result<DoctorReport> {
        let err = self.dberr();
        let mut report = DoctorReport::default();
        let mut msgs: Vec<String> = {
            let mut stmt = self.conn.prepare_cached("PRAGMA integrity_check").map_err(&err)?;
            let v = stmt
                .query_map([], |r| r.get(0))
                .map_err(&err)?
                .collect::<rusqlite::Result<Vec<String>>>()
                .map_err(&err)?;
            v
        };
        msgs.retain(|m| m != "ok");
        {
            let mut stmt = self.conn.prepare_cached("PRAGMA foreign_key_check").map_err(&err)?;
            let fk = stmt
                .query_map([], |r| Ok(format!("foreign key violation in table {}", r.get::<_, String>(0)?)))
                .map_err(&err)?
                .collect::<rusqlite::Result<Vec<String>>>()
                .map_err(&err)?;
            msgs.extend(fk);
        }
        report.integrity_ok = msgs.is_empty();
        report.integrity_messages = msgs;
        report.pending_deletions = self
            .conn
            .prepare_cached("SELECT COUNT(*) FROM blobs WHERE deleting = 1")
            .and_then(|mut s| s.query_row([], |r| r.get::<_, i64>(0)))
            .map_err(&err)? as usize;
        let hw: Option<String> = rusqlite::OptionalExtension::optional(
            self.conn
                .prepare_cached("SELECT value FROM meta WHERE key = 'high_water'")
                .and_then(|mut s| s.query_row([], |r| r.get(0))),
        )
        .map_err(&err)?;
        let now = self.now();
        report.clock_ahead_secs = hw.and_then(|h| h.parse::<i64>().ok()).map_or(0, |h| (h - now).max(0));

        report.orphan_files = self.orphan_files()?;

        let live: Vec<(String, String)> = {
            let mut stmt = self.conn.prepare_cached("SELECT id, kind FROM blobs WHERE deleting = 0").map_err(&err)?;
            let v = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(&err)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(&err)?;
            v
        };
        let missing: Vec<(String, String)> = live.into_iter().filter(|(id, _)| !self.paths.blob(id).exists()).collect();
        for (blob, kind) in &missing {
            let what: Option<String> = if kind == "output" {
                rusqlite::OptionalExtension::optional(
                    self.conn
                        .prepare_cached("SELECT 'output ' || id FROM outputs WHERE blob_id = ?1")
                        .and_then(|mut s| s.query_row([blob], |r| r.get(0))),
                )
                .map_err(&err)?
            } else {
                rusqlite::OptionalExtension::optional(
                    self.conn
                        .prepare_cached(
                            "SELECT 'input ' || i.name || ' of job ' || COALESCE(ji.job_id, '-') FROM inputs i
                     LEFT JOIN job_inputs ji ON ji.input_id = i.id WHERE i.blob_id = ?1 LIMIT 1",
                        )
                        .and_then(|mut s| s.query_row([blob], |r| r.get(0))),
                )
                .map_err(&err)?
            };
            report.missing_files.push(what.unwrap_or_else(|| format!("{kind} file {blob}")));
        }
        drop(err);

        if repair {
            for file in &report.orphan_files {
                match std::fs::remove_file(file) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(CoreError::io("delete", file, e)),
                }
            }
            if !missing.is_empty() {
                let path = self.paths.db();
                let err = |e| CoreError::db(&path, e);
                let tx = db::immediate(&mut self.conn).map_err(err)?;
                for (blob, _) in &missing {
                    tx.prepare_cached("UPDATE jobs SET state = 'failed', error = 'a photo of this job is missing from the vault; add the photo again',
                         finished_at = ?2, updated_at = ?2
                         WHERE state IN ('queued', 'running') AND id IN (
                            SELECT ji.job_id FROM job_inputs ji JOIN inputs i ON i.id = ji.input_id WHERE i.blob_id = ?1)").and_then(|mut s| s.execute(rusqlite::params![blob, now]))
                    .map_err(err)?;
                }
                let ids: Vec<String> = missing.iter().map(|(b, _)| b.clone()).collect();
                crate::retention::mark_blobs(&tx, &ids).map_err(err)?;
                tx.commit().map_err(err)?;
            }
            self.finish_deletions()?;
            self.release_inputs()?;
            report.repaired = true;
        }
        Ok(report)
    }
}
