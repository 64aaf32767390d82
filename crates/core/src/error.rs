//! The core crate's one error type. Every variant a user can cause says what went wrong, names the
//! file or setting involved and what to do about it.

use std::path::PathBuf;

use thiserror::Error;

pub type Result<T, E = CoreError> = std::result::Result<T, E>;

#[derive(Debug, Error)]
pub enum CoreError {
    #[error("the disk holding {path} is full; free some space (or delete old jobs) and try again - nothing was saved half-way")]
    DiskFull { path: PathBuf },
    // The I/O error is part of the message (not a `source`), so it is shown once however the
    // error is printed.
    #[error("could not {action} {path}: {err}")]
    Io { action: &'static str, path: PathBuf, err: std::io::Error },
    #[error("the job database {path} failed: {detail}; run `likeness doctor` to check it")]
    Database { path: PathBuf, detail: String },
    #[error("the job database {path} was written by a newer Likeness (schema version {found}, this build knows up to {supported}); update Likeness")]
    SchemaTooNew { path: PathBuf, found: i64, supported: i64 },
    #[error("no place to keep the master key: the OS keyring is not available ({keyring_detail}) and LIKENESS_PASSPHRASE is not set; unlock or install a keyring (Secret Service on Linux), or set LIKENESS_PASSPHRASE for a headless setup")]
    NoKeySource { keyring_detail: String },
    #[error("the OS keyring could not be used ({detail}); unlock the keyring (Secret Service on Linux) and try again")]
    KeyringUnavailable { detail: String },
    #[error("the master key for the library in {data_dir} is missing from {location}, but encrypted photos and outputs exist; restore the key (restore the keyring entry, the `salt` file, or set the LIKENESS_PASSPHRASE it was made with), or run `likeness purge` to delete the unreadable data and start over")]
    KeyMissing { data_dir: PathBuf, location: String },
    #[error("the key from {location} does not unlock the library in {data_dir}; use the keyring entry or LIKENESS_PASSPHRASE it was created with, or run `likeness purge` to start over")]
    WrongKey { data_dir: PathBuf, location: String },
    #[error("the encrypted file {path} is damaged or does not belong to this library; run `likeness doctor --repair`")]
    Corrupt { path: PathBuf },
    #[error("another Likeness process is using the data folder {data_dir}; close it first")]
    Locked { data_dir: PathBuf },
    #[error("no data folder: set LIKENESS_DATA_DIR or pass a data folder explicitly")]
    NoDataDir,
    #[error("job {0} does not exist (it may have been deleted or expired)")]
    JobNotFound(String),
    #[error("output {0} does not exist (it may have been deleted or expired)")]
    OutputNotFound(String),
    #[error("job {id} is {state}; {what}")]
    JobState { id: String, state: String, what: &'static str },
    #[error("invalid style settings: {0}")]
    InvalidSettings(String),
    /// A model that would not fit in memory, with the numbers and what to do (see `memory`).
    #[error("{0}")]
    NotEnoughMemory(String),
    #[error("invalid input: {0}")]
    InvalidInput(String),
    #[error("the master key could not be derived from LIKENESS_PASSPHRASE: {0}")]
    Kdf(String),
    /// Refused by the machine policy; the message names the policy and what is allowed.
    #[error("{0}")]
    Policy(String),
    #[error("encryption failed: {0}")]
    Crypto(&'static str),
}

impl CoreError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        if is_disk_full(&source) {
            CoreError::DiskFull { path }
        } else {
            CoreError::Io { action, path, err: source }
        }
    }

    pub(crate) fn db(path: impl Into<PathBuf>, err: rusqlite::Error) -> Self {
        let path = path.into();
        if let rusqlite::Error::SqliteFailure(e, _) = &err {
            if e.code == rusqlite::ErrorCode::DiskFull {
                return CoreError::DiskFull { path };
            }
        }
        CoreError::Database { path, detail: err.to_string() }
    }
}

/// ENOSPC and EDQUOT both mean "no room left" to the user.
pub(crate) fn is_disk_full(err: &std::io::Error) -> bool {
    if err.kind() == std::io::ErrorKind::StorageFull {
        return true;
    }
    #[cfg(unix)]
    {
        matches!(err.raw_os_error(), Some(code) if code == libc::ENOSPC || code == libc::EDQUOT)
    }
    // ERROR_HANDLE_DISK_FULL, ERROR_DISK_FULL
    #[cfg(windows)]
    {
        matches!(err.raw_os_error(), Some(39 | 112))
    }
    #[cfg(not(any(unix, windows)))]
    {
        false
    }
}
