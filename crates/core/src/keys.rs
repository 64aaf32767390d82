//! Where the master key lives.
//!
//! Normally in the OS keyring (`keyring` v3: Secret Service on Linux, Keychain on macOS, Credential
//! Manager on Windows), service `Likeness`, account `master-key-<vault id>`, behind the [`KeyStore`] trait.
//!
//! Headless fallback: where no keyring is available (servers, CI, containers), set
//! `LIKENESS_PASSPHRASE`; the master key is then derived from it with Argon2id (64 MiB, 3 passes) and a
//! random 16-byte salt kept in `<data dir>/salt`. Losing either the passphrase or the salt loses the data.
//! With neither a keyring nor the variable, opening fails with an error that names both.
//!
//! A new master key is only ever made for a library that has no encrypted data yet: when the database
//! records a key check but the key is gone, opening fails and says how to recover.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use zeroize::Zeroizing;

use crate::error::{CoreError, Result};
use crate::paths::DataPaths;
use crate::vault::{self, MasterKey};

pub const KEYRING_SERVICE: &str = "Likeness";
pub const PASSPHRASE_ENV: &str = "LIKENESS_PASSPHRASE";
const SALT_LEN: usize = 16;

/// A place that keeps small secrets by account name.
pub trait KeyStore: Send + Sync {
    /// Words for error messages, e.g. "the OS keyring".
    fn describe(&self) -> String;
    /// `Ok(None)` when there is no entry; `Err` when the store itself can't be used.
    fn get(&self, account: &str) -> Result<Option<Zeroizing<Vec<u8>>>>;
    fn set(&self, account: &str, secret: &[u8]) -> Result<()>;
    /// Deleting an entry that does not exist is not an error.
    fn delete(&self, account: &str) -> Result<()>;
}

/// The OS keyring. On Linux this is the Secret Service (GNOME Keyring, KWallet) over D-Bus.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsKeyring;

impl OsKeyring {
    fn entry(account: &str) -> Result<keyring::Entry> {
        #[cfg(target_os = "linux")]
        {
            let cred = keyring::secret_service::SsCredential::new_with_target(None, KEYRING_SERVICE, account)
                .map_err(keyring_error)?;
            Ok(keyring::Entry::new_with_credential(Box::new(cred)))
        }
        #[cfg(not(target_os = "linux"))]
        {
            keyring::Entry::new(KEYRING_SERVICE, account).map_err(keyring_error)
        }
    }
}

/// Maps a keyring failure (no D-Bus, locked collection, ...) to the error the user sees.
pub fn keyring_error(err: keyring::Error) -> CoreError {
    CoreError::KeyringUnavailable { detail: err.to_string() }
}

impl KeyStore for OsKeyring {
    fn describe(&self) -> String {
        "the OS keyring".into()
    }
    fn get(&self, account: &str) -> Result<Option<Zeroizing<Vec<u8>>>> {
        match Self::entry(account)?.get_secret() {
            Ok(secret) => Ok(Some(Zeroizing::new(secret))),
            Err(keyring::Error::NoEntry) => Ok(None),
            Err(e) => Err(keyring_error(e)),
        }
    }
    fn set(&self, account: &str, secret: &[u8]) -> Result<()> {
        Self::entry(account)?.set_secret(secret).map_err(keyring_error)
    }
    fn delete(&self, account: &str) -> Result<()> {
        match Self::entry(account)?.delete_credential() {
            Ok(()) | Err(keyring::Error::NoEntry) => Ok(()),
            Err(e) => Err(keyring_error(e)),
        }
    }
}

/// An in-memory key store: clones share their entries. For tests and for embedding.
#[derive(Debug, Clone, Default)]
pub struct MemoryKeyStore {
    entries: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    unavailable: Option<String>,
}

impl MemoryKeyStore {
    pub fn new() -> Self {
        Self::default()
    }
    /// A store that fails like a locked or absent keyring.
    pub fn unavailable(detail: &str) -> Self {
        Self { unavailable: Some(detail.into()), ..Self::default() }
    }
    pub fn len(&self) -> usize {
        self.entries.lock().map(|e| e.len()).unwrap_or(0)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn check(&self) -> Result<()> {
        match &self.unavailable {
            Some(detail) => Err(CoreError::KeyringUnavailable { detail: detail.clone() }),
            None => Ok(()),
        }
    }
    fn map(&self) -> Result<std::sync::MutexGuard<'_, HashMap<String, Vec<u8>>>> {
        self.entries.lock().map_err(|_| CoreError::KeyringUnavailable { detail: "in-memory key store poisoned".into() })
    }
}

impl KeyStore for MemoryKeyStore {
    fn describe(&self) -> String {
        "the in-memory key store".into()
    }
    fn get(&self, account: &str) -> Result<Option<Zeroizing<Vec<u8>>>> {
        self.check()?;
        Ok(self.map()?.get(account).cloned().map(Zeroizing::new))
    }
    fn set(&self, account: &str, secret: &[u8]) -> Result<()> {
        self.check()?;
        self.map()?.insert(account.into(), secret.to_vec());
        Ok(())
    }
    fn delete(&self, account: &str) -> Result<()> {
        self.check()?;
        self.map()?.remove(account);
        Ok(())
    }
}

/// How [`crate::Library::open`] gets the master key.
pub enum KeySource {
    /// The OS keyring; where it is unavailable, `LIKENESS_PASSPHRASE` (headless fallback).
    Auto,
    /// Only this store.
    Store(Box<dyn KeyStore>),
    /// Only this passphrase (Argon2id with the salt in `<data dir>/salt`).
    Passphrase(Zeroizing<String>),
    /// `store`, falling back to `passphrase` when the store is unavailable; `Auto` is this with the
    /// OS keyring and `LIKENESS_PASSPHRASE`.
    StoreOrPassphrase { store: Box<dyn KeyStore>, passphrase: Option<Zeroizing<String>> },
}

impl KeySource {
    pub fn passphrase(p: &str) -> Self {
        KeySource::Passphrase(Zeroizing::new(p.to_owned()))
    }
    pub fn store(store: impl KeyStore + 'static) -> Self {
        KeySource::Store(Box::new(store))
    }
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a passphrase.
        f.write_str(match self {
            KeySource::Auto => "KeySource::Auto",
            KeySource::Store(_) => "KeySource::Store",
            KeySource::Passphrase(_) => "KeySource::Passphrase",
            KeySource::StoreOrPassphrase { .. } => "KeySource::StoreOrPassphrase",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyKind {
    Keyring,
    Passphrase,
}

impl KeyKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            KeyKind::Keyring => "keyring",
            KeyKind::Passphrase => "passphrase",
        }
    }
    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "keyring" => Some(KeyKind::Keyring),
            "passphrase" => Some(KeyKind::Passphrase),
            _ => None,
        }
    }
}

/// What the database says about the key of an existing library.
pub(crate) struct KeyRecord {
    pub kind: KeyKind,
    pub check: Vec<u8>,
}

pub(crate) struct ResolvedKey {
    pub master: MasterKey,
    pub kind: KeyKind,
    /// Kept so `purge` can remove the key.
    pub store: Option<Box<dyn KeyStore>>,
}

pub(crate) fn account(vault_id: &str) -> String {
    format!("master-key-{vault_id}")
}

pub(crate) fn resolve(
    source: KeySource,
    paths: &DataPaths,
    vault_id: &str,
    existing: Option<&KeyRecord>,
) -> Result<ResolvedKey> {
    match source {
        KeySource::Auto => {
            let passphrase = std::env::var(PASSPHRASE_ENV).ok().filter(|p| !p.is_empty()).map(Zeroizing::new);
            resolve(KeySource::StoreOrPassphrase { store: Box::new(OsKeyring), passphrase }, paths, vault_id, existing)
        }
        KeySource::Store(store) => from_store(store, paths, vault_id, existing),
        KeySource::Passphrase(p) => from_passphrase(&p, paths, vault_id, existing),
        KeySource::StoreOrPassphrase { store, passphrase } => match (existing.map(|r| r.kind), passphrase) {
            (Some(KeyKind::Keyring), _) => from_store(store, paths, vault_id, existing),
            (Some(KeyKind::Passphrase), Some(p)) => from_passphrase(&p, paths, vault_id, existing),
            (Some(KeyKind::Passphrase), None) => Err(CoreError::KeyMissing {
                data_dir: paths.root.clone(),
                location: format!("{PASSPHRASE_ENV} (this library was created with a passphrase; set the variable)"),
            }),
            (None, passphrase) => match store.get(&account(vault_id)) {
                Ok(_) => from_store(store, paths, vault_id, existing),
                Err(e) => match passphrase {
                    Some(p) => from_passphrase(&p, paths, vault_id, existing),
                    None => Err(CoreError::NoKeySource {
                        keyring_detail: match e {
                            CoreError::KeyringUnavailable { detail } => detail,
                            other => other.to_string(),
                        },
                    }),
                },
            },
        },
    }
}

fn to_key(bytes: &[u8]) -> Option<MasterKey> {
    let arr: [u8; 32] = bytes.try_into().ok()?;
    Some(Zeroizing::new(arr))
}

fn from_store(
    store: Box<dyn KeyStore>,
    paths: &DataPaths,
    vault_id: &str,
    existing: Option<&KeyRecord>,
) -> Result<ResolvedKey> {
    let account = account(vault_id);
    let location = format!("{} (service {KEYRING_SERVICE}, account {account})", store.describe());
    let stored = store.get(&account)?;
    let master = match existing {
        Some(record) => {
            if record.kind != KeyKind::Keyring {
                return Err(CoreError::WrongKey {
                    data_dir: paths.root.clone(),
                    location: format!("{location}; this library was created with {PASSPHRASE_ENV}"),
                });
            }
            let bytes = stored
                .ok_or_else(|| CoreError::KeyMissing { data_dir: paths.root.clone(), location: location.clone() })?;
            let key = to_key(&bytes)
                .ok_or_else(|| CoreError::WrongKey { data_dir: paths.root.clone(), location: location.clone() })?;
            if !vault::verify_key_check(&key, vault_id, &record.check) {
                return Err(CoreError::WrongKey { data_dir: paths.root.clone(), location });
            }
            key
        }
        // A key left by an earlier, interrupted first start of this same library is reused.
        None => match stored.as_deref().and_then(|b| to_key(b)) {
            Some(key) => key,
            None => {
                let key = vault::random_key();
                store.set(&account, key.as_ref())?;
                key
            }
        },
    };
    Ok(ResolvedKey { master, kind: KeyKind::Keyring, store: Some(store) })
}

fn from_passphrase(
    passphrase: &str,
    paths: &DataPaths,
    vault_id: &str,
    existing: Option<&KeyRecord>,
) -> Result<ResolvedKey> {
    if passphrase.is_empty() {
        return Err(CoreError::Kdf(format!("{PASSPHRASE_ENV} is empty; choose a passphrase")));
    }
    let salt_path = paths.salt();
    let salt = match std::fs::read(&salt_path) {
        Ok(s) if s.len() == SALT_LEN => Some(s),
        Ok(_) => None,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(CoreError::io("read", &salt_path, e)),
    };
    let location = format!("{PASSPHRASE_ENV} with the salt file {}", salt_path.display());
    let master = match existing {
        Some(record) => {
            if record.kind != KeyKind::Passphrase {
                return Err(CoreError::WrongKey {
                    data_dir: paths.root.clone(),
                    location: format!("{PASSPHRASE_ENV}; this library keeps its key in the OS keyring"),
                });
            }
            let salt =
                salt.ok_or_else(|| CoreError::KeyMissing { data_dir: paths.root.clone(), location: location.clone() })?;
            let key = derive(passphrase, &salt)?;
            if !vault::verify_key_check(&key, vault_id, &record.check) {
                return Err(CoreError::WrongKey { data_dir: paths.root.clone(), location });
            }
            key
        }
        None => {
            let salt = match salt {
                Some(s) => s,
                None => {
                    let s = vault::random_key()[..SALT_LEN].to_vec();
                    vault::write_atomic(&salt_path, &s, None)?;
                    s
                }
            };
            derive(passphrase, &salt)?
        }
    };
    Ok(ResolvedKey { master, kind: KeyKind::Passphrase, store: None })
}

fn derive(passphrase: &str, salt: &[u8]) -> Result<MasterKey> {
    let params = argon2::Params::new(64 * 1024, 3, 1, Some(32)).map_err(|e| CoreError::Kdf(e.to_string()))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut key = Zeroizing::new([0u8; 32]);
    argon.hash_password_into(passphrase.as_bytes(), salt, key.as_mut()).map_err(|e| CoreError::Kdf(e.to_string()))?;
    Ok(key)
}
