//! Likeness application state: the SQLite job store, the job queue API, the encrypted vault
//! (master key in the OS keyring), the retention sweeper and `doctor`.
//! Knows nothing of Tauri, clap or HTML.
//!
//! Invariants:
//! - photos and outputs exist on disk only encrypted; each file's key is only in its database row;
//! - a file is written (and fsynced) before its row, and its row is marked before the file is
//!   removed: the database never points a live row at a missing file;
//! - expiry never moves later, whatever the clock does;
//! - a new master key is made only for a library without encrypted data.

mod clock;
mod db;
mod doctor;
mod error;
mod keys;
mod library;
mod paths;
mod retention;
mod vault;

pub use clock::{Clock, ManualClock, SystemClock};
pub use db::{MIGRATIONS, SCHEMA_VERSION};
pub use doctor::DoctorReport;
pub use error::{CoreError, Result};
pub use keys::{keyring_error, KeySource, KeyStore, MemoryKeyStore, OsKeyring, KEYRING_SERVICE, PASSPHRASE_ENV};
pub use library::{
    ClaimedJob, InputInfo, JobId, JobInfo, JobState, Library, NewInput, NewJob, NewOutput, OutputId, OutputInfo, Settings,
    StyleSettings, DEFAULT_RETENTION_DAYS, MAX_ATTEMPTS,
};
pub use paths::{DataPaths, DATA_DIR_ENV};
pub use retention::SweepReport;
pub use vault::{FaultHook, FaultPoint};
pub mod models;
pub mod models_runtime;
pub mod import;
pub mod policy;
pub mod batch;
pub mod files;
pub mod generative;
pub mod memory;
pub mod worker;
