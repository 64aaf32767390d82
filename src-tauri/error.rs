//! The one error type the UI sees: `{code, message}`. `code` is stable and machine-readable (the
//! UI picks its wording and what to offer from it); `message` is plain words saying what to do.

use likeness_core::CoreError;
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{message}")]
pub struct IpcError {
    pub code: &'static str,
    pub message: String,
}

impl IpcError {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        IpcError { code, message: message.into() }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        IpcError::new("invalid_input", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        IpcError::new("not_found", message)
    }
}

impl From<CoreError> for IpcError {
    fn from(e: CoreError) -> Self {
        let code = match &e {
            CoreError::JobNotFound(_) | CoreError::OutputNotFound(_) => "not_found",
            CoreError::InvalidSettings(_) | CoreError::InvalidInput(_) => "invalid_input",
            CoreError::JobState { .. } => "job_state",
            CoreError::DiskFull { .. } => "disk_full",
            CoreError::NotEnoughMemory(_) => "not_enough_memory",
            CoreError::NoKeySource { .. }
            | CoreError::KeyringUnavailable { .. }
            | CoreError::KeyMissing { .. }
            | CoreError::WrongKey { .. }
            | CoreError::Kdf(_) => "key_unavailable",
            CoreError::Locked { .. } => "library_locked",
            CoreError::Corrupt { .. } | CoreError::Database { .. } | CoreError::SchemaTooNew { .. } => "library_damaged",
            CoreError::Io { .. } | CoreError::NoDataDir => "io",
            CoreError::Crypto(_) => "internal",
            CoreError::Policy(_) => "policy",
        };
        IpcError::new(code, e.to_string())
    }
}
