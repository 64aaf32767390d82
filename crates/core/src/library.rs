//! The library: one data folder with its job store and vault, and the job API the worker, the CLI
//! and the desktop shell use.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::clock::{Clock, SystemClock};
use crate::db;
use crate::error::{CoreError, Result};
use crate::keys::{self, KeyKind, KeyRecord, KeySource, KeyStore};
use crate::paths::DataPaths;
use crate::policy::Policy;
use crate::vault::{self, FaultHook, Vault};

/// id, attempts, last error, settings, group id of a queued job.
type QueuedRow = (String, u32, Option<String>, String, Option<String>);

/// A job is claimed at most this many times; the next claim fails it with its last reason.
pub const MAX_ATTEMPTS: u32 = 3;
/// Overrides [`MAX_ATTEMPTS`] (an integer >= 1), for administrators and crash tests.
pub const MAX_ATTEMPTS_ENV: &str = "LIKENESS_MAX_ATTEMPTS";

fn max_attempts_from_env() -> u32 {
    std::env::var(MAX_ATTEMPTS_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok())
        .filter(|&n| n >= 1)
        .unwrap_or(MAX_ATTEMPTS)
}
pub const DEFAULT_RETENTION_DAYS: u32 = 30;
pub(crate) const DAY: i64 = 86_400;
const INTERRUPTED: &str = "Likeness stopped while this job was running";

macro_rules! id_type {
    ($name:ident) => {
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub String);
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(s.to_owned())
            }
        }
    };
}
id_type!(JobId);
id_type!(OutputId);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Running,
    Done,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }
    fn parse(s: &str) -> Self {
        match s {
            "queued" => JobState::Queued,
            "running" => JobState::Running,
            "done" => JobState::Done,
            "cancelled" => JobState::Cancelled,
            // The schema's CHECK constraint allows nothing else.
            _ => JobState::Failed,
        }
    }
    pub fn is_finished(self) -> bool {
        matches!(self, JobState::Done | JobState::Failed | JobState::Cancelled)
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The style a job asks for, as stored (JSON). Every field is optional; unknown fields are kept
/// as given, so the engine can grow options without a schema change.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StyleSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backdrop: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attire: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lighting: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variants: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

impl StyleSettings {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".into())
    }
}

/// One photo for a new job.
#[derive(Clone)]
pub struct NewInput {
    /// The file name the user picked (shown in lists; never used as a path).
    pub name: String,
    pub bytes: Vec<u8>,
}

/// A job to create.
#[derive(Clone)]
pub struct NewJob {
    pub inputs: Vec<NewInput>,
    /// A JSON object; see [`StyleSettings`].
    pub settings_json: String,
    /// Batch this job belongs to, if any.
    pub group_id: Option<String>,
}

/// One finished image for [`Library::complete_job`].
#[derive(Clone)]
pub struct NewOutput {
    pub bytes: Vec<u8>,
    /// File type: "png", "jpeg" or "webp".
    pub format: String,
    pub width: u32,
    pub height: u32,
}

/// What the worker gets from [`Library::claim_next_job`].
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    pub id: JobId,
    /// 1 for the first run, 2 and 3 for retries after a crash or [`Library::requeue_job`].
    pub attempt: u32,
    pub settings_json: String,
    pub input_names: Vec<String>,
    pub group_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InputInfo {
    pub name: String,
    /// `None` once the photo was deleted (the job no longer needs it).
    pub size: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutputInfo {
    pub id: OutputId,
    pub job_id: JobId,
    pub format: String,
    pub size: u64,
    pub width: u32,
    pub height: u32,
    pub created_at: i64,
    /// Seconds since the epoch; the sweeper deletes the output once this has passed. Never extended.
    pub expires_at: i64,
    /// Starred by the person. Only an ordering hint: a favourite still expires like any output.
    pub favourite: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobInfo {
    pub id: JobId,
    pub group_id: Option<String>,
    pub state: JobState,
    pub settings_json: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    /// 0.0 ..= 1.0
    pub progress: f32,
    pub stage: Option<String>,
    pub error: Option<String>,
    pub attempts: u32,
    pub cancel_requested: bool,
    pub inputs: Vec<InputInfo>,
    pub outputs: Vec<OutputInfo>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Settings {
    /// Outputs are deleted this many days after they were made.
    pub retention_days: u32,
}

/// An open data folder. One process at a time (an advisory lock on `<data dir>/lock`); share it
/// between threads behind a mutex.
pub struct Library {
    pub(crate) paths: DataPaths,
    pub(crate) conn: Connection,
    pub(crate) vault: Vault,
    pub(crate) clock: Arc<dyn Clock>,
    key_kind: KeyKind,
    key_store: Option<Box<dyn KeyStore>>,
    vault_id: String,
    /// How many times a job may be started; see [`MAX_ATTEMPTS`].
    max_attempts: u32,
    /// The machine policy, above the user's settings (retention bounds, looks, formats).
    policy: Arc<Policy>,
    _lock: File,
}

impl std::fmt::Debug for Library {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Library").field("data_dir", &self.paths.root).field("key", &self.key_kind).finish()
    }
}

fn meta_get(conn: &Connection, key: &str) -> rusqlite::Result<Option<String>> {
    conn.prepare_cached("SELECT value FROM meta WHERE key = ?1")
        .and_then(|mut s| s.query_row([key], |r| r.get(0)))
        .optional()
}

fn meta_set(conn: &Connection, key: &str, value: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
    )
    .and_then(|mut s| s.execute([key, value]))
    .map(|_| ())
}

/// Records `now` in the high-water mark and returns the mark: the latest time this library has
/// ever seen. Expiry is judged against it, so turning the clock back never keeps data longer.
pub(crate) fn observe(tx: &Transaction<'_>, now: i64) -> rusqlite::Result<i64> {
    let hw = meta_get(tx, "high_water")?.and_then(|v| v.parse::<i64>().ok()).unwrap_or(i64::MIN);
    if now > hw {
        meta_set(tx, "high_water", &now.to_string())?;
        Ok(now)
    } else {
        Ok(hw)
    }
}

#[cfg(unix)]
fn lock_file(paths: &DataPaths) -> Result<File> {
    use std::os::unix::io::AsRawFd;
    let path = paths.lock();
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| CoreError::io("open", &path, e))?;
    // A lock just released can still be held for a moment by a duplicate of its descriptor: a child
    // process forked by another thread keeps one until its exec closes it (close-on-exec). So a busy
    // lock is tried again for up to a second before the library counts as open elsewhere.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    loop {
        // SAFETY: flock on a file descriptor we own; it has no memory-safety preconditions.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(file);
        }
        if std::time::Instant::now() >= deadline {
            return Err(CoreError::Locked { data_dir: paths.root.clone() });
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
}

#[cfg(not(unix))]
fn lock_file(paths: &DataPaths) -> Result<File> {
    let path = paths.lock();
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| CoreError::io("open", &path, e))
}

fn validate_settings(json: &str, policy: &Policy) -> Result<String> {
    let value: serde_json::Value =
        serde_json::from_str(json).map_err(|e| CoreError::InvalidSettings(format!("not valid JSON ({e})")))?;
    if !value.is_object() {
        return Err(CoreError::InvalidSettings("expected a JSON object like {\"preset\": \"linkedin\"}".into()));
    }
    serde_json::from_value::<StyleSettings>(value.clone()).map_err(|e| CoreError::InvalidSettings(e.to_string()))?;
    // The machine policy, before anything is stored: a job without a look is a studio job, one
    // without a format makes PNG (the worker's defaults).
    policy.check_look(value.get("look").and_then(|v| v.as_str()).unwrap_or("studio"))?;
    policy.check_export_format(value.get("format").and_then(|v| v.as_str()).unwrap_or("png"))?;
    Ok(value.to_string())
}

impl Library {
    /// Opens (creating if needed) the library in `data_dir` (else `LIKENESS_DATA_DIR`, else the OS
    /// data folder), upgrading its database and re-queueing jobs a killed process left running.
    pub fn open(data_dir: Option<&Path>, keys: KeySource) -> Result<Library> {
        Self::open_with_clock(data_dir, keys, Arc::new(SystemClock))
    }

    pub fn open_with_clock(data_dir: Option<&Path>, keys: KeySource, clock: Arc<dyn Clock>) -> Result<Library> {
        Self::open_with_policy(data_dir, keys, clock, Policy::machine())
    }

    /// Opens under an explicit machine policy (tests; the app and CLI use [`Policy::machine`]).
    /// A managed data folder replaces `data_dir`; a managed maximum retention shortens outputs
    /// made under a longer one.
    pub fn open_with_policy(
        data_dir: Option<&Path>,
        keys: KeySource,
        clock: Arc<dyn Clock>,
        policy: Arc<Policy>,
    ) -> Result<Library> {
        let managed_dir = policy.data_dir();
        let paths = DataPaths::resolve(managed_dir.as_deref().or(data_dir))?;
        vault::create_private_dir(&paths.root)?;
        vault::create_private_dir(&paths.vault())?;
        let lock = lock_file(&paths)?;
        let db_path = paths.db();
        let dberr = |e| CoreError::db(&db_path, e);
        let mut conn = db::connect(&db_path)?;
        let from_version = db::migrate(&mut conn, &paths)?;
        let now = clock.now();

        let (vault_id, record) = {
            let tx = db::immediate(&mut conn).map_err(dberr)?;
            if from_version > 0 && from_version < db::SCHEMA_VERSION {
                meta_set(&tx, &format!("backup_v{from_version}_at"), &now.to_string()).map_err(dberr)?;
            }
            let vault_id = match meta_get(&tx, "vault_id").map_err(dberr)? {
                Some(id) => id,
                None => {
                    let id = vault::random_id();
                    meta_set(&tx, "vault_id", &id).map_err(dberr)?;
                    id
                }
            };
            let kind = meta_get(&tx, "key_kind").map_err(dberr)?;
            let check = meta_get(&tx, "key_check").map_err(dberr)?;
            let record = match (kind.as_deref().and_then(KeyKind::parse), check.and_then(|c| hex::decode(c).ok())) {
                (Some(kind), Some(check)) => Some(KeyRecord { kind, check }),
                _ => None,
            };
            tx.commit().map_err(dberr)?;
            (vault_id, record)
        };
        // Encrypted data without a key record would be a damaged database; never pair it with a new key.
        if record.is_none() {
            let blobs: i64 = conn
                .prepare_cached("SELECT COUNT(*) FROM blobs")
                .and_then(|mut s| s.query_row([], |r| r.get(0)))
                .map_err(dberr)?;
            if blobs > 0 {
                return Err(CoreError::KeyMissing {
                    data_dir: paths.root.clone(),
                    location: "the database (its key record is gone)".into(),
                });
            }
        }
        let resolved = keys::resolve(keys, &paths, &vault_id, record.as_ref())?;
        if record.is_none() {
            let check = vault::make_key_check(&resolved.master, &vault_id)?;
            let tx = db::immediate(&mut conn).map_err(dberr)?;
            meta_set(&tx, "key_kind", resolved.kind.as_str()).map_err(dberr)?;
            meta_set(&tx, "key_check", &hex::encode(check)).map_err(dberr)?;
            tx.commit().map_err(dberr)?;
        }
        {
            // A job still `running` belongs to a process that was killed: queue it again (the
            // attempt limit in `claim_next_job` stops a job that crashes the app every time).
            let tx = db::immediate(&mut conn).map_err(dberr)?;
            tx.prepare_cached(
                "UPDATE jobs SET state = 'cancelled', finished_at = ?1, updated_at = ?1
                 WHERE state = 'running' AND cancel_requested = 1",
            )
            .and_then(|mut s| s.execute([now]))
            .map_err(dberr)?;
            tx.prepare_cached(
                "UPDATE jobs SET state = 'queued', error = ?2, updated_at = ?1, progress = 0, stage = NULL
                 WHERE state = 'running'",
            )
            .and_then(|mut s| s.execute(params![now, INTERRUPTED]))
            .map_err(dberr)?;
            tx.commit().map_err(dberr)?;
        }
        if policy.retention_max_days.managed {
            // Expiry only ever moves earlier: outputs made under a longer retention follow the policy.
            conn.prepare_cached("UPDATE outputs SET expires_at = MIN(expires_at, created_at + ?1)")
                .and_then(|mut s| s.execute([i64::from(policy.retention_max_days.value) * DAY]))
                .map_err(dberr)?;
        }
        let vault = Vault::new(paths.clone(), resolved.master);
        let mut lib = Library {
            paths,
            conn,
            vault,
            clock,
            key_kind: resolved.kind,
            key_store: resolved.store,
            vault_id,
            max_attempts: max_attempts_from_env(),
            policy,
            _lock: lock,
        };
        // We hold the folder's lock, so no other process is mid-write: a vault file without a row
        // was left by a crash between writing it and committing its row. Remove it, and finish
        // deletions a crash interrupted.
        for file in lib.orphan_files()? {
            match std::fs::remove_file(&file) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(CoreError::io("delete", file, e)),
            }
        }
        lib.finish_deletions()?;
        Ok(lib)
    }

    pub fn data_dir(&self) -> &Path {
        &self.paths.root
    }

    /// "keyring" or "passphrase".
    pub fn key_kind(&self) -> &'static str {
        self.key_kind.as_str()
    }

    /// Test hook: make writes and deletions fail at chosen points (see [`crate::FaultPoint`]).
    pub fn set_fault_hook(&mut self, hook: Option<FaultHook>) {
        self.vault.hook = hook;
    }

    pub(crate) fn dberr(&self) -> impl Fn(rusqlite::Error) -> CoreError + '_ {
        move |e| CoreError::db(self.paths.db(), e)
    }

    /// The library's clock (seconds since the epoch).
    pub fn now(&self) -> i64 {
        self.clock.now()
    }

    // ---- settings ----

    /// The machine policy this library follows.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The user's settings as they apply: the retention is the user's choice (else the policy's
    /// default) kept within the policy's bounds.
    pub fn settings(&self) -> Result<Settings> {
        let days: Option<String> = self
            .conn
            .prepare_cached("SELECT value FROM settings WHERE key = 'retention_days'")
            .and_then(|mut s| s.query_row([], |r| r.get(0)))
            .optional()
            .map_err(self.dberr())?;
        let chosen = days.and_then(|d| d.parse().ok()).unwrap_or(self.policy.retention_days.value);
        Ok(Settings { retention_days: self.policy.clamp_retention(chosen) })
    }

    /// Sets how long new outputs are kept. A shorter period also shortens existing outputs; a longer
    /// one never extends them. A retention outside the machine policy's bounds is refused.
    pub fn set_retention_days(&mut self, days: u32) -> Result<()> {
        self.policy.check_retention(days)?;
        let path = self.paths.db();
        let err = |e| CoreError::db(&path, e);
        let tx = db::immediate(&mut self.conn).map_err(err)?;
        tx.prepare_cached(
            "INSERT INTO settings (key, value) VALUES ('retention_days', ?1)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        )
        .and_then(|mut s| s.execute([days.to_string()]))
        .map_err(err)?;
        tx.prepare_cached("UPDATE outputs SET expires_at = MIN(expires_at, created_at + ?1)")
            .and_then(|mut s| s.execute([i64::from(days) * DAY]))
            .map_err(err)?;
        tx.commit().map_err(err)
    }

    /// A stored preference of the app (e.g. `device`), `None` when never set.
    pub fn preference(&self, key: &str) -> Result<Option<String>> {
        self.conn
            .prepare_cached("SELECT value FROM settings WHERE key = ?1")
            .and_then(|mut s| s.query_row([format!("pref.{key}")], |r| r.get(0)))
            .optional()
            .map_err(self.dberr())
    }

    /// Stores a preference of the app (kept apart from the library's own settings by a prefix).
    pub fn set_preference(&mut self, key: &str, value: &str) -> Result<()> {
        let path = self.paths.db();
        let err = |e| CoreError::db(&path, e);
        let tx = db::immediate(&mut self.conn).map_err(err)?;
        tx.prepare_cached("INSERT INTO settings (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value")
            .and_then(|mut s| s.execute([format!("pref.{key}"), value.to_string()]))
            .map_err(err)?;
        tx.commit().map_err(err)
    }

    // ---- jobs ----

    /// Stores the photo encrypted and queues a job for it.
    pub fn create_job(&mut self, input_name: &str, input_bytes: &[u8], settings_json: &str) -> Result<JobId> {
        self.create_job_with(NewJob {
            inputs: vec![NewInput { name: input_name.to_owned(), bytes: input_bytes.to_vec() }],
            settings_json: settings_json.to_owned(),
            group_id: None,
        })
    }

    /// Stores all photos encrypted (files first), then records the job in one transaction.
    pub fn create_job_with(&mut self, job: NewJob) -> Result<JobId> {
        if job.inputs.is_empty() {
            return Err(CoreError::InvalidInput("a job needs at least one photo".into()));
        }
        for input in &job.inputs {
            if input.name.trim().is_empty() {
                return Err(CoreError::InvalidInput("a photo has an empty name".into()));
            }
            if input.bytes.is_empty() {
                return Err(CoreError::InvalidInput(format!("the photo {} is empty", input.name)));
            }
        }
        let settings = validate_settings(&job.settings_json, &self.policy)?;
        let stored = self.store_files(job.inputs.iter().map(|i| i.bytes.as_slice()))?;
        let now = self.now();
        let job_id = JobId(vault::random_id());
        let result = (|| -> rusqlite::Result<()> {
            let tx = db::immediate(&mut self.conn)?;
            observe(&tx, now)?;
            tx.prepare_cached("INSERT INTO jobs (id, settings, state, created_at, updated_at, group_id) VALUES (?1, ?2, 'queued', ?3, ?3, ?4)").and_then(|mut s| s.execute(params![job_id.0, settings, now, job.group_id]))?;
            for (pos, (input, (blob_id, wrapped))) in job.inputs.iter().zip(&stored).enumerate() {
                let size = input.bytes.len() as i64;
                tx.prepare_cached(
                    "INSERT INTO blobs (id, kind, wrapped_key, size, created_at) VALUES (?1, 'input', ?2, ?3, ?4)",
                )
                .and_then(|mut s| s.execute(params![blob_id, wrapped, size, now]))?;
                let input_id = vault::random_id();
                tx.prepare_cached(
                    "INSERT INTO inputs (id, blob_id, name, size, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .and_then(|mut s| s.execute(params![input_id, blob_id, input.name, size, now]))?;
                tx.prepare_cached("INSERT INTO job_inputs (job_id, position, name, input_id) VALUES (?1, ?2, ?3, ?4)")
                    .and_then(|mut s| s.execute(params![job_id.0, pos as i64, input.name, input_id]))?;
            }
            tx.commit()
        })();
        if let Err(e) = result {
            self.discard_files(stored.iter().map(|(id, _)| id.as_str()));
            return Err(CoreError::db(self.paths.db(), e));
        }
        Ok(job_id)
    }

    /// Best effort: removes files whose rows were never written (doctor finds any that stay).
    /// Encrypts each of `items` into its own vault file (written and fsynced); returns (blob id,
    /// wrapped key) pairs. On a failure (a full disk) the files already written are removed.
    fn store_files<'b>(&mut self, items: impl Iterator<Item = &'b [u8]>) -> Result<Vec<(String, Vec<u8>)>> {
        let mut stored: Vec<(String, Vec<u8>)> = Vec::new();
        for bytes in items {
            let blob_id = vault::random_id();
            match self.vault.store(&blob_id, bytes) {
                Ok(wrapped) => stored.push((blob_id, wrapped)),
                Err(e) => {
                    self.discard_files(stored.iter().map(|(id, _)| id.as_str()));
                    return Err(e);
                }
            }
        }
        Ok(stored)
    }

    fn discard_files<'a>(&self, ids: impl Iterator<Item = &'a str>) {
        for id in ids {
            let _ = std::fs::remove_file(self.paths.blob(id));
        }
    }

    fn job_state(&self, id: &JobId) -> Result<(JobState, bool)> {
        self.conn
            .prepare_cached("SELECT state, cancel_requested FROM jobs WHERE id = ?1")
            .and_then(|mut s| {
                s.query_row([&id.0], |r| Ok((JobState::parse(&r.get::<_, String>(0)?), r.get::<_, i64>(1)? != 0)))
            })
            .optional()
            .map_err(self.dberr())?
            .ok_or_else(|| CoreError::JobNotFound(id.0.clone()))
    }

    /// Takes the oldest queued job and marks it running. A job that already used its
    /// [`MAX_ATTEMPTS`] is failed with its last reason instead of being run again.
    pub fn claim_next_job(&mut self) -> Result<Option<ClaimedJob>> {
        let now = self.now();
        let path = self.paths.db();
        let err = |e| CoreError::db(&path, e);
        let mut gave_up = false;
        let tx = db::immediate(&mut self.conn).map_err(err)?;
        let claimed = loop {
            let row: Option<QueuedRow> = tx
                .prepare_cached("SELECT id, attempts, error, settings, group_id FROM jobs WHERE state = 'queued' ORDER BY rowid LIMIT 1").and_then(|mut s| s.query_row([],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))))
                .optional()
                .map_err(err)?;
            let Some((id, attempts, error, settings_json, group_id)) = row else { break None };
            if attempts >= self.max_attempts {
                let reason =
                    format!("gave up after {attempts} attempts; last error: {}", error.as_deref().unwrap_or("unknown"));
                tx.prepare_cached(
                    "UPDATE jobs SET state = 'failed', error = ?2, finished_at = ?3, updated_at = ?3 WHERE id = ?1",
                )
                .and_then(|mut s| s.execute(params![id, reason, now]))
                .map_err(err)?;
                gave_up = true;
                continue;
            }
            tx.prepare_cached(
                "UPDATE jobs SET state = 'running', attempts = attempts + 1, started_at = ?2, updated_at = ?2,
                 progress = 0, stage = NULL WHERE id = ?1",
            )
            .and_then(|mut s| s.execute(params![id, now]))
            .map_err(err)?;
            let mut stmt =
                tx.prepare_cached("SELECT name FROM job_inputs WHERE job_id = ?1 ORDER BY position").map_err(err)?;
            let input_names = stmt
                .query_map([&id], |r| r.get(0))
                .map_err(err)?
                .collect::<rusqlite::Result<Vec<String>>>()
                .map_err(err)?;
            drop(stmt);
            break Some(ClaimedJob { id: JobId(id), attempt: attempts + 1, settings_json, input_names, group_id });
        };
        tx.commit().map_err(err)?;
        if gave_up {
            self.release_inputs()?;
        }
        Ok(claimed)
    }

    /// The job's first photo, decrypted.
    pub fn job_input(&self, id: &JobId) -> Result<Zeroizing<Vec<u8>>> {
        let mut all = self.job_inputs(id)?;
        if all.is_empty() {
            return Err(CoreError::JobState {
                id: id.0.clone(),
                state: self.job_state(id)?.0.to_string(),
                what: "its photos were already deleted",
            });
        }
        Ok(all.swap_remove(0).1)
    }

    /// All of the job's photos that are still stored, in order, decrypted.
    pub fn job_inputs(&self, id: &JobId) -> Result<Vec<(String, Zeroizing<Vec<u8>>)>> {
        self.job_state(id)?;
        let rows: Vec<(String, String, Vec<u8>)> = {
            let mut stmt = self
                .conn
                .prepare_cached(
                    "SELECT ji.name, b.id, b.wrapped_key FROM job_inputs ji
                     JOIN inputs i ON i.id = ji.input_id JOIN blobs b ON b.id = i.blob_id
                     WHERE ji.job_id = ?1 AND b.deleting = 0 ORDER BY ji.position",
                )
                .map_err(self.dberr())?;
            let rows = stmt
                .query_map([&id.0], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .map_err(self.dberr())?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(self.dberr())?;
            rows
        };
        rows.into_iter().map(|(name, blob, key)| Ok((name, self.vault.load(&blob, &key)?))).collect()
    }

    /// Records progress (0..=1) and the current stage of a running job. Returns whether the user
    /// asked to cancel it, so the worker can stop.
    pub fn set_progress(&mut self, id: &JobId, progress: f32, stage: &str) -> Result<bool> {
        let progress = if progress.is_finite() { progress.clamp(0.0, 1.0) } else { 0.0 };
        let now = self.now();
        let path = self.paths.db();
        let err = |e| CoreError::db(&path, e);
        let tx = db::immediate(&mut self.conn).map_err(err)?;
        let n = tx
            .prepare_cached(
                "UPDATE jobs SET progress = ?2, stage = ?3, updated_at = ?4 WHERE id = ?1 AND state = 'running'",
            )
            .and_then(|mut s| s.execute(params![id.0, f64::from(progress), stage, now]))
            .map_err(err)?;
        tx.commit().map_err(err)?;
        let (state, cancel) = self.job_state(id)?;
        if n == 0 {
            return Err(CoreError::JobState {
                id: id.0.clone(),
                state: state.to_string(),
                what: "only a running job has progress",
            });
        }
        Ok(cancel)
    }

    /// Stores every output encrypted, then marks the job done in one transaction. If anything
    /// fails (a full disk), nothing of it is kept, the job stays running, and calling this again
    /// once there is space completes it.
    pub fn complete_job(&mut self, id: &JobId, outputs: Vec<NewOutput>) -> Result<Vec<OutputId>> {
        let (state, cancel) = self.job_state(id)?;
        if state != JobState::Running {
            return Err(CoreError::JobState {
                id: id.0.clone(),
                state: state.to_string(),
                what: "only a running job can be completed",
            });
        }
        if cancel {
            self.mark_cancelled(id)?;
            return Err(CoreError::JobState {
                id: id.0.clone(),
                state: "cancelled".into(),
                what: "its outputs were discarded",
            });
        }
        if outputs.is_empty() {
            return Err(CoreError::InvalidInput("a finished job needs at least one output".into()));
        }
        for o in &outputs {
            let f = o.format.as_str();
            if !matches!(f, "png" | "jpeg" | "webp") {
                return Err(CoreError::InvalidInput(format!("output type '{f}' is not png, jpeg or webp")));
            }
            if o.bytes.is_empty() || o.width == 0 || o.height == 0 {
                return Err(CoreError::InvalidInput("an output image is empty".into()));
            }
        }
        let stored = self.store_files(outputs.iter().map(|o| o.bytes.as_slice()))?;
        let now = self.now();
        let retention = i64::from(self.settings()?.retention_days) * DAY;
        let ids: Vec<OutputId> = outputs.iter().map(|_| OutputId(vault::random_id())).collect();
        let result = (|| -> rusqlite::Result<bool> {
            let tx = db::immediate(&mut self.conn)?;
            observe(&tx, now)?;
            let state: Option<String> = tx
                .prepare_cached("SELECT state FROM jobs WHERE id = ?1 AND cancel_requested = 0")
                .and_then(|mut s| s.query_row([&id.0], |r| r.get(0)))
                .optional()?;
            if state.as_deref() != Some("running") {
                return Ok(false);
            }
            for (pos, ((o, (blob_id, wrapped)), out_id)) in outputs.iter().zip(&stored).zip(&ids).enumerate() {
                let size = o.bytes.len() as i64;
                tx.prepare_cached(
                    "INSERT INTO blobs (id, kind, wrapped_key, size, created_at) VALUES (?1, 'output', ?2, ?3, ?4)",
                )
                .and_then(|mut s| s.execute(params![blob_id, wrapped, size, now]))?;
                tx.prepare_cached("INSERT INTO outputs (id, job_id, position, blob_id, format, size, width, height, created_at, expires_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)").and_then(|mut s| s.execute(params![out_id.0, id.0, pos as i64, blob_id, o.format, size, o.width, o.height, now, now.saturating_add(retention)]))?;
            }
            tx.prepare_cached("UPDATE jobs SET state = 'done', progress = 1, finished_at = ?2, updated_at = ?2, error = NULL WHERE id = ?1").and_then(|mut s| s.execute(params![id.0, now]))?;
            // Its photos go in the same transaction, unless another unfinished job shares them.
            crate::retention::mark_unneeded_inputs(&tx)?;
            tx.commit()?;
            Ok(true)
        })();
        match result {
            Ok(true) => {}
            Ok(false) => {
                self.discard_files(stored.iter().map(|(id, _)| id.as_str()));
                let (state, _) = self.job_state(id)?;
                return Err(CoreError::JobState {
                    id: id.0.clone(),
                    state: state.to_string(),
                    what: "it changed while its outputs were saved; they were discarded",
                });
            }
            Err(e) => {
                self.discard_files(stored.iter().map(|(id, _)| id.as_str()));
                return Err(CoreError::db(self.paths.db(), e));
            }
        }
        self.finish_deletions()?;
        Ok(ids)
    }

    fn finish(
        &mut self,
        id: &JobId,
        from: &[JobState],
        to: JobState,
        error: Option<&str>,
        what: &'static str,
    ) -> Result<()> {
        let now = self.now();
        let path = self.paths.db();
        let err = |e| CoreError::db(&path, e);
        let tx = db::immediate(&mut self.conn).map_err(err)?;
        let state: Option<String> = tx
            .prepare_cached("SELECT state FROM jobs WHERE id = ?1")
            .and_then(|mut s| s.query_row([&id.0], |r| r.get(0)))
            .optional()
            .map_err(err)?;
        let state = JobState::parse(&state.ok_or_else(|| CoreError::JobNotFound(id.0.clone()))?);
        if !from.contains(&state) {
            return Err(CoreError::JobState { id: id.0.clone(), state: state.to_string(), what });
        }
        tx.prepare_cached(
            "UPDATE jobs SET state = ?2, error = COALESCE(?3, error), finished_at = ?4, updated_at = ?4 WHERE id = ?1",
        )
        .and_then(|mut s| s.execute(params![id.0, to.as_str(), error, now]))
        .map_err(err)?;
        crate::retention::mark_unneeded_inputs(&tx).map_err(err)?;
        tx.commit().map_err(err)?;
        self.finish_deletions().map(|_| ())
    }

    /// The worker gave up on a running job: it is failed for good (a job the user cancelled meanwhile
    /// is recorded as cancelled).
    pub fn fail_job(&mut self, id: &JobId, message: &str) -> Result<()> {
        if self.job_state(id)?.1 {
            return self.mark_cancelled(id);
        }
        self.finish(
            id,
            &[JobState::Running, JobState::Queued],
            JobState::Failed,
            Some(message),
            "only a queued or running job can fail",
        )
    }

    /// A running job hit a passing problem: queue it again with `reason` as its last error. After
    /// [`MAX_ATTEMPTS`] claims it is failed instead.
    pub fn requeue_job(&mut self, id: &JobId, reason: &str) -> Result<()> {
        let now = self.now();
        let path = self.paths.db();
        let err = |e| CoreError::db(&path, e);
        let tx = db::immediate(&mut self.conn).map_err(err)?;
        let n = tx
            .prepare_cached(
                "UPDATE jobs SET state = 'queued', error = ?2, updated_at = ?3, progress = 0, stage = NULL
                 WHERE id = ?1 AND state = 'running' AND cancel_requested = 0",
            )
            .and_then(|mut s| s.execute(params![id.0, reason, now]))
            .map_err(err)?;
        tx.commit().map_err(err)?;
        if n == 0 {
            let (state, cancel) = self.job_state(id)?;
            if cancel && state == JobState::Running {
                return self.mark_cancelled(id);
            }
            return Err(CoreError::JobState {
                id: id.0.clone(),
                state: state.to_string(),
                what: "only a running job can be re-queued",
            });
        }
        Ok(())
    }

    /// Cancels a job: a queued one at once; a running one is flagged, and the worker stops it
    /// (it sees [`Library::is_cancel_requested`] and calls [`Library::mark_cancelled`]). Returns the
    /// state after the call; finished jobs are left as they are.
    pub fn cancel_job(&mut self, id: &JobId) -> Result<JobState> {
        let now = self.now();
        let path = self.paths.db();
        let err = |e| CoreError::db(&path, e);
        let tx = db::immediate(&mut self.conn).map_err(err)?;
        tx.prepare_cached(
            "UPDATE jobs SET state = 'cancelled', finished_at = ?2, updated_at = ?2 WHERE id = ?1 AND state = 'queued'",
        )
        .and_then(|mut s| s.execute(params![id.0, now]))
        .map_err(err)?;
        tx.prepare_cached("UPDATE jobs SET cancel_requested = 1, updated_at = ?2 WHERE id = ?1 AND state = 'running'")
            .and_then(|mut s| s.execute(params![id.0, now]))
            .map_err(err)?;
        tx.commit().map_err(err)?;
        let (state, _) = self.job_state(id)?;
        if state == JobState::Cancelled {
            self.release_inputs()?;
        }
        Ok(state)
    }

    pub fn is_cancel_requested(&self, id: &JobId) -> Result<bool> {
        Ok(self.job_state(id)?.1)
    }

    /// The worker stopped a running job the user cancelled.
    pub fn mark_cancelled(&mut self, id: &JobId) -> Result<()> {
        self.finish(
            id,
            &[JobState::Running, JobState::Queued],
            JobState::Cancelled,
            None,
            "only a queued or running job can be cancelled",
        )
    }

    pub fn get_job(&self, id: &JobId) -> Result<JobInfo> {
        self.jobs_where("WHERE j.id = ?1", &[&id.0])?.pop().ok_or_else(|| CoreError::JobNotFound(id.0.clone()))
    }

    /// All jobs, oldest first.
    pub fn list_jobs(&self) -> Result<Vec<JobInfo>> {
        self.jobs_where("", &[])
    }

    /// The jobs of one batch, oldest first.
    pub fn list_group(&self, group_id: &str) -> Result<Vec<JobInfo>> {
        self.jobs_where("WHERE j.group_id = ?1", &[&group_id])
    }

    fn jobs_where(&self, filter: &str, args: &[&dyn rusqlite::ToSql]) -> Result<Vec<JobInfo>> {
        let err = self.dberr();
        let sql = format!(
            "SELECT j.id, j.group_id, j.state, j.settings, j.created_at, j.updated_at, j.started_at, j.finished_at,
                    j.progress, j.stage, j.error, j.attempts, j.cancel_requested
             FROM jobs j {filter} ORDER BY j.rowid"
        );
        let mut stmt = self.conn.prepare_cached(&sql).map_err(&err)?;
        let mut jobs = stmt
            .query_map(args, |r| {
                Ok(JobInfo {
                    id: JobId(r.get(0)?),
                    group_id: r.get(1)?,
                    state: JobState::parse(&r.get::<_, String>(2)?),
                    settings_json: r.get(3)?,
                    created_at: r.get(4)?,
                    updated_at: r.get(5)?,
                    started_at: r.get(6)?,
                    finished_at: r.get(7)?,
                    progress: r.get::<_, f64>(8)? as f32,
                    stage: r.get(9)?,
                    error: r.get(10)?,
                    attempts: r.get(11)?,
                    cancel_requested: r.get::<_, i64>(12)? != 0,
                    inputs: Vec::new(),
                    outputs: Vec::new(),
                })
            })
            .map_err(&err)?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(&err)?;
        let mut in_stmt = self
            .conn
            .prepare_cached("SELECT ji.name, i.size FROM job_inputs ji LEFT JOIN inputs i ON i.id = ji.input_id WHERE ji.job_id = ?1 ORDER BY ji.position")
            .map_err(&err)?;
        for job in &mut jobs {
            job.inputs = in_stmt
                .query_map([&job.id.0], |r| {
                    Ok(InputInfo { name: r.get(0)?, size: r.get::<_, Option<i64>>(1)?.map(|s| s as u64) })
                })
                .map_err(&err)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(&err)?;
            job.outputs = self.outputs_where("WHERE o.job_id = ?1", &job.id.0)?;
        }
        Ok(jobs)
    }

    fn outputs_where(&self, filter: &str, arg: &str) -> Result<Vec<OutputInfo>> {
        let err = self.dberr();
        let sql = format!(
            "SELECT o.id, o.job_id, o.format, o.size, o.width, o.height, o.created_at, o.expires_at, o.favourite
             FROM outputs o {filter} ORDER BY o.job_id, o.position"
        );
        let mut stmt = self.conn.prepare_cached(&sql).map_err(&err)?;
        let rows = stmt
            .query_map([arg], |r| {
                Ok(OutputInfo {
                    id: OutputId(r.get(0)?),
                    job_id: JobId(r.get(1)?),
                    format: r.get(2)?,
                    size: r.get::<_, i64>(3)? as u64,
                    width: r.get(4)?,
                    height: r.get(5)?,
                    created_at: r.get(6)?,
                    expires_at: r.get(7)?,
                    favourite: r.get::<_, i64>(8)? != 0,
                })
            })
            .map_err(&err)?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(&err)?;
        Ok(rows)
    }

    /// Every stored output, oldest job first.
    pub fn list_outputs(&self) -> Result<Vec<OutputInfo>> {
        self.outputs_where("WHERE ?1 = ?1", "")
    }

    pub fn output_info(&self, id: &OutputId) -> Result<OutputInfo> {
        self.outputs_where("WHERE o.id = ?1", &id.0)?.pop().ok_or_else(|| CoreError::OutputNotFound(id.0.clone()))
    }

    /// The decrypted image bytes of one output.
    pub fn get_output(&self, id: &OutputId) -> Result<Zeroizing<Vec<u8>>> {
        let row: Option<(String, Vec<u8>)> = self
            .conn
            .prepare_cached("SELECT b.id, b.wrapped_key FROM outputs o JOIN blobs b ON b.id = o.blob_id WHERE o.id = ?1 AND b.deleting = 0").and_then(|mut s| s.query_row([&id.0],
                |r| Ok((r.get(0)?, r.get(1)?))))
            .optional()
            .map_err(self.dberr())?;
        let (blob, key) = row.ok_or_else(|| CoreError::OutputNotFound(id.0.clone()))?;
        self.vault.load(&blob, &key)
    }

    /// Stars (or unstars) an output. Favourites sort first in the gallery; they expire like any
    /// other output (retention is a promise to the person, not a preference).
    pub fn set_favourite(&mut self, id: &OutputId, favourite: bool) -> Result<()> {
        let path = self.paths.db();
        let err = |e| CoreError::db(&path, e);
        let tx = db::immediate(&mut self.conn).map_err(err)?;
        let n = tx
            .prepare_cached("UPDATE outputs SET favourite = ?2 WHERE id = ?1")
            .and_then(|mut s| s.execute(rusqlite::params![&id.0, i64::from(favourite)]))
            .map_err(err)?;
        if n == 0 {
            return Err(CoreError::OutputNotFound(id.0.clone()));
        }
        tx.commit().map_err(err)
    }

    pub fn delete_output(&mut self, id: &OutputId) -> Result<()> {
        let blob: Option<String> = self
            .conn
            .prepare_cached("SELECT blob_id FROM outputs WHERE id = ?1")
            .and_then(|mut s| s.query_row([&id.0], |r| r.get(0)))
            .optional()
            .map_err(self.dberr())?;
        let blob = blob.ok_or_else(|| CoreError::OutputNotFound(id.0.clone()))?;
        self.delete_blobs(&[blob])?;
        Ok(())
    }

    /// Deletes a finished or queued job with its photos and outputs. A running job must be
    /// cancelled first.
    pub fn delete_job(&mut self, id: &JobId) -> Result<()> {
        let (state, _) = self.job_state(id)?;
        if state == JobState::Running {
            return Err(CoreError::JobState {
                id: id.0.clone(),
                state: state.to_string(),
                what: "cancel it before deleting it",
            });
        }
        let path = self.paths.db();
        let err = |e| CoreError::db(&path, e);
        let tx = db::immediate(&mut self.conn).map_err(err)?;
        let mut blobs: Vec<String> = Vec::new();
        {
            let mut stmt = tx.prepare_cached("SELECT blob_id FROM outputs WHERE job_id = ?1").map_err(err)?;
            blobs.extend(
                stmt.query_map([&id.0], |r| r.get(0))
                    .map_err(err)?
                    .collect::<rusqlite::Result<Vec<String>>>()
                    .map_err(err)?,
            );
            // This job's photos, unless another unfinished job still uses them.
            let mut stmt = tx
                .prepare_cached(
                    "SELECT i.blob_id FROM job_inputs ji JOIN inputs i ON i.id = ji.input_id WHERE ji.job_id = ?1
                     AND NOT EXISTS (SELECT 1 FROM job_inputs o JOIN jobs j ON j.id = o.job_id
                                     WHERE o.input_id = i.id AND o.job_id <> ?1 AND j.state IN ('queued', 'running'))",
                )
                .map_err(err)?;
            blobs.extend(
                stmt.query_map([&id.0], |r| r.get(0))
                    .map_err(err)?
                    .collect::<rusqlite::Result<Vec<String>>>()
                    .map_err(err)?,
            );
        }
        crate::retention::mark_blobs(&tx, &blobs).map_err(err)?;
        tx.prepare_cached("DELETE FROM job_inputs WHERE job_id = ?1")
            .and_then(|mut s| s.execute([&id.0]))
            .map_err(err)?;
        tx.prepare_cached("DELETE FROM jobs WHERE id = ?1").and_then(|mut s| s.execute([&id.0])).map_err(err)?;
        tx.commit().map_err(err)?;
        self.finish_deletions()?;
        Ok(())
    }

    /// Deletes every job, photo and output; the library (and its key) stays usable.
    pub fn delete_all_data(&mut self) -> Result<()> {
        let path = self.paths.db();
        let err = |e| CoreError::db(&path, e);
        let tx = db::immediate(&mut self.conn).map_err(err)?;
        let blobs: Vec<String> = {
            let mut stmt = tx.prepare_cached("SELECT id FROM blobs WHERE deleting = 0").map_err(err)?;
            let v = stmt
                .query_map([], |r| r.get(0))
                .map_err(err)?
                .collect::<rusqlite::Result<Vec<String>>>()
                .map_err(err)?;
            v
        };
        crate::retention::mark_blobs(&tx, &blobs).map_err(err)?;
        tx.execute_batch(
            "DELETE FROM job_inputs; DELETE FROM outputs; DELETE FROM inputs; DELETE FROM jobs;
             DELETE FROM meta WHERE key LIKE 'backup_v%_at';",
        )
        .map_err(err)?;
        tx.commit().map_err(err)?;
        self.finish_deletions()?;
        // Pre-upgrade copies of the database hold old rows (names, wrapped keys): they go too.
        for v in 0..=db::SCHEMA_VERSION {
            let backup = self.paths.db_backup(v);
            match std::fs::remove_file(&backup) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(CoreError::io("delete", backup, e)),
            }
        }
        Ok(())
    }

    /// Deletes everything Likeness keeps in the data folder and the master key itself. Only the
    /// data folder and the `lock` file (held until this returns) are left; the lock file is removed
    /// last. Files exported outside the data folder are not touched.
    pub fn purge_all(mut self) -> Result<()> {
        self.delete_all_data()?;
        let account = keys::account(&self.vault_id);
        let Library { paths, conn, key_store, _lock, .. } = self;
        drop(conn);
        remove_library_files(&paths, _lock, key_store.as_deref().map(|s| (s, account.as_str())))
    }

    /// Deletes a library that can't be opened, e.g. because its master key is lost (the
    /// `KeyMissing` error's "purge" advice): every file Likeness keeps in the data folder and, when
    /// the library kept its key in a keyring, the key from `key_store` (pass the OS keyring). Without
    /// the key (or once it is deleted) any copy of the files left on the disk is unreadable.
    /// Fails with `Locked` while another process has the library open. Files exported outside the
    /// data folder are not touched.
    pub fn purge_data_dir(data_dir: Option<&Path>, key_store: Option<&dyn KeyStore>) -> Result<()> {
        let managed_dir = Policy::machine().data_dir();
        let paths = DataPaths::resolve(managed_dir.as_deref().or(data_dir))?;
        if !paths.root.is_dir() {
            return Ok(());
        }
        let lock = lock_file(&paths)?;
        // Which keyring entry belongs to this library, if the database still says.
        let (vault_id, kind) = if paths.db().is_file() {
            let read = |conn: &Connection| -> rusqlite::Result<(Option<String>, Option<String>)> {
                Ok((meta_get(conn, "vault_id")?, meta_get(conn, "key_kind")?))
            };
            match Connection::open(paths.db()) {
                Ok(conn) => read(&conn).unwrap_or((None, None)),
                Err(_) => (None, None),
            }
        } else {
            (None, None)
        };
        let uses_keyring = kind.as_deref().and_then(KeyKind::parse) != Some(KeyKind::Passphrase);
        let account = vault_id.map(|id| keys::account(&id));
        let key = match (key_store, account.as_deref()) {
            (Some(store), Some(account)) if uses_keyring => Some((store, account)),
            _ => None,
        };
        remove_library_files(&paths, lock, key)
    }
}

/// Removes the database (with its WAL and backups), the vault, the salt and then the key; the lock
/// file goes last, once `lock` is released. The data folder itself stays.
fn remove_library_files(paths: &DataPaths, lock: File, key: Option<(&dyn KeyStore, &str)>) -> Result<()> {
    let remove = |p: PathBuf| match std::fs::remove_file(&p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(CoreError::io("delete", p, e)),
    };
    for name in ["likeness.db", "likeness.db-wal", "likeness.db-shm", "likeness.db-journal"] {
        remove(paths.root.join(name))?;
    }
    for v in 0..=db::SCHEMA_VERSION {
        remove(paths.db_backup(v))?;
    }
    match std::fs::remove_dir_all(paths.vault()) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(CoreError::io("delete", paths.vault(), e)),
    }
    remove(paths.salt())?;
    if let Some((store, account)) = key {
        store.delete(account)?;
    }
    drop(lock);
    remove(paths.lock())?;
    vault::sync_dir(&paths.root).map_err(|e| CoreError::io("sync the folder", &paths.root, e))
}
