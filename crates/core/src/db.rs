//! The SQLite job store: connection settings and versioned migrations.
//!
//! Every connection runs in WAL mode with `synchronous=FULL` (a committed job survives a power cut),
//! `secure_delete=ON` (deleted rows, which hold wrapped file keys, are overwritten with zeros),
//! foreign keys on and a busy timeout. Every write is one `BEGIN IMMEDIATE` transaction.
//!
//! The schema version is `PRAGMA user_version`. Opening a database from any earlier version runs
//! the missing migrations in order, each in its own transaction, after taking a copy of the file
//! (`likeness.db.bak-v<old version>`, via `VACUUM INTO`, so it is a consistent snapshot).

use std::path::Path;

use rusqlite::{Connection, Transaction, TransactionBehavior};

use crate::error::{CoreError, Result};
use crate::paths::DataPaths;

/// Migration `i` takes the schema from version `i` to `i + 1`.
pub const MIGRATIONS: &[&str] = &[
    // 1: the job store.
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
     CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
     INSERT INTO settings (key, value) VALUES ('retention_days', '30');
     CREATE TABLE blobs (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL CHECK (kind IN ('input', 'output')),
        wrapped_key BLOB NOT NULL,
        size INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        deleting INTEGER NOT NULL DEFAULT 0
     );
     CREATE TABLE inputs (
        id TEXT PRIMARY KEY,
        blob_id TEXT NOT NULL UNIQUE REFERENCES blobs(id),
        name TEXT NOT NULL,
        size INTEGER NOT NULL,
        created_at INTEGER NOT NULL
     );
     CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        settings TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed', 'cancelled')),
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        started_at INTEGER,
        finished_at INTEGER,
        progress REAL NOT NULL DEFAULT 0,
        stage TEXT,
        error TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        cancel_requested INTEGER NOT NULL DEFAULT 0
     );
     CREATE INDEX jobs_state ON jobs (state);
     CREATE TABLE job_inputs (
        job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        position INTEGER NOT NULL,
        name TEXT NOT NULL,
        input_id TEXT REFERENCES inputs(id),
        PRIMARY KEY (job_id, position)
     );
     CREATE INDEX job_inputs_input ON job_inputs (input_id);
     CREATE TABLE outputs (
        id TEXT PRIMARY KEY,
        job_id TEXT NOT NULL REFERENCES jobs(id),
        position INTEGER NOT NULL,
        blob_id TEXT NOT NULL UNIQUE REFERENCES blobs(id),
        format TEXT NOT NULL,
        size INTEGER NOT NULL,
        width INTEGER NOT NULL,
        height INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL
     );
     CREATE INDEX outputs_job ON outputs (job_id);
     CREATE INDEX outputs_expiry ON outputs (expires_at);",
    // 2: job groups (batches).
    "ALTER TABLE jobs ADD COLUMN group_id TEXT;
     CREATE INDEX jobs_group ON jobs (group_id);",
    // 3: favourite outputs (starred in the gallery; the sweeper still deletes them at expiry).
    "ALTER TABLE outputs ADD COLUMN favourite INTEGER NOT NULL DEFAULT 0;",
];

pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

pub(crate) fn connect(path: &Path) -> Result<Connection> {
    let err = |e| CoreError::db(path, e);
    let conn = Connection::open(path).map_err(err)?;
    conn.busy_timeout(std::time::Duration::from_secs(10)).map_err(err)?;
    // Every statement of this crate is prepared once per connection and reused.
    conn.set_prepared_statement_cache_capacity(96);
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0)).map_err(err)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(CoreError::Database {
            path: path.into(),
            detail: format!("could not enable WAL (journal mode is {mode})"),
        });
    }
    conn.execute_batch("PRAGMA synchronous=FULL; PRAGMA secure_delete=ON; PRAGMA foreign_keys=ON;").map_err(err)?;
    Ok(conn)
}

pub(crate) fn user_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
}

pub(crate) fn immediate(conn: &mut Connection) -> rusqlite::Result<Transaction<'_>> {
    conn.transaction_with_behavior(TransactionBehavior::Immediate)
}

/// Folds the WAL back into the database file and empties it, so overwritten rows (wrapped keys)
/// don't linger in the WAL.
pub(crate) fn checkpoint(conn: &Connection) -> rusqlite::Result<()> {
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
}

/// Brings the schema to [`SCHEMA_VERSION`]. Returns the version found, for the caller to note the backup.
pub(crate) fn migrate(conn: &mut Connection, paths: &DataPaths) -> Result<i64> {
    let db_path = paths.db();
    let err = |e| CoreError::db(&db_path, e);
    let found = user_version(conn).map_err(err)?;
    if found > SCHEMA_VERSION {
        return Err(CoreError::SchemaTooNew { path: db_path.clone(), found, supported: SCHEMA_VERSION });
    }
    if found > 0 && found < SCHEMA_VERSION {
        let backup = paths.db_backup(found);
        match std::fs::remove_file(&backup) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(CoreError::io("replace the old backup", backup, e)),
        }
        let target = backup.to_str().ok_or_else(|| CoreError::Database {
            path: db_path.clone(),
            detail: "the data folder path is not valid UTF-8; choose another data folder".into(),
        })?;
        conn.execute("VACUUM INTO ?1", [target]).map_err(err)?;
    }
    for (version, sql) in MIGRATIONS.iter().enumerate().skip(found.max(0) as usize) {
        let tx = immediate(conn).map_err(err)?;
        tx.execute_batch(sql).map_err(err)?;
        tx.pragma_update(None, "user_version", version as i64 + 1).map_err(err)?;
        tx.commit().map_err(err)?;
    }
    Ok(found)
}
