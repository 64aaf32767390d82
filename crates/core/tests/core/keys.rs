//! Where the master key comes from: a key store, the LIKENESS_PASSPHRASE fallback, the real OS
//! keyring, and the errors when the key is missing or wrong.

use std::path::Path;

use likeness_core::{CoreError, KeySource, KeyStore, Library, MemoryKeyStore, OsKeyring, PASSPHRASE_ENV};
use zeroize::Zeroizing;

use crate::common::{env_lock, raw_db, tmp, vault_files};

fn account(dir: &Path) -> String {
    let db = raw_db(dir);
    let id: String = db.query_row("SELECT value FROM meta WHERE key = 'vault_id'", [], |r| r.get(0)).unwrap();
    format!("master-key-{id}")
}

fn make_job(lib: &mut Library) -> likeness_core::JobId {
    lib.create_job("me.jpg", b"a photo of me", "{}").unwrap()
}

#[test]
fn passphrase_library_round_trip() {
    let dir = tmp();
    let id = {
        let mut lib = Library::open(Some(dir.path()), KeySource::passphrase("correct horse battery")).unwrap();
        assert_eq!(lib.key_kind(), "passphrase");
        make_job(&mut lib)
    };
    let salt = dir.path().join("salt");
    assert_eq!(std::fs::read(&salt).unwrap().len(), 16, "a random salt is kept in the data folder");

    let err = Library::open(Some(dir.path()), KeySource::passphrase("wrong horse")).unwrap_err();
    assert!(matches!(err, CoreError::WrongKey { .. }), "{err}");
    assert!(err.to_string().contains(PASSPHRASE_ENV), "{err}");

    {
        let lib = Library::open(Some(dir.path()), KeySource::passphrase("correct horse battery")).unwrap();
        assert_eq!(lib.job_input(&id).unwrap().as_slice(), b"a photo of me");
    }

    // A keyring can't open a passphrase library, and the keyring is not given a new key.
    let store = MemoryKeyStore::new();
    let err = Library::open(Some(dir.path()), KeySource::store(store.clone())).unwrap_err();
    assert!(matches!(err, CoreError::WrongKey { .. }), "{err}");
    assert!(store.is_empty());
    // Auto-style source without the passphrase: says which variable to set.
    let err = Library::open(
        Some(dir.path()),
        KeySource::StoreOrPassphrase { store: Box::new(store.clone()), passphrase: None },
    )
    .unwrap_err();
    assert!(matches!(err, CoreError::KeyMissing { .. }), "{err}");
    assert!(err.to_string().contains(PASSPHRASE_ENV), "{err}");
    // ... and with it, falls back to the passphrase.
    {
        let source = KeySource::StoreOrPassphrase {
            store: Box::new(store.clone()),
            passphrase: Some(Zeroizing::new("correct horse battery".to_string())),
        };
        let lib = Library::open(Some(dir.path()), source).unwrap();
        assert_eq!(lib.job_input(&id).unwrap().as_slice(), b"a photo of me");
    }

    // Losing the salt loses the key: a clear error, and no new salt is made over the data.
    std::fs::remove_file(&salt).unwrap();
    let err = Library::open(Some(dir.path()), KeySource::passphrase("correct horse battery")).unwrap_err();
    assert!(matches!(err, CoreError::KeyMissing { .. }), "{err}");
    assert!(err.to_string().contains("salt") && err.to_string().contains("purge"), "{err}");
    assert!(!salt.exists());
    assert_eq!(vault_files(dir.path()).len(), 1, "the encrypted photo is left alone");

    let err = Library::open(Some(tmp().path()), KeySource::passphrase("")).unwrap_err();
    assert!(matches!(err, CoreError::Kdf(_)), "{err}");
}

#[test]
fn purge_of_passphrase_library_removes_the_salt() {
    let dir = tmp();
    let mut lib = Library::open(Some(dir.path()), KeySource::passphrase("pw")).unwrap();
    make_job(&mut lib);
    lib.purge_all().unwrap();
    assert!(crate::common::all_files(dir.path()).is_empty());
}

#[test]
fn missing_key_is_never_replaced() {
    let dir = tmp();
    let store = MemoryKeyStore::new();
    let id = {
        let mut lib = Library::open(Some(dir.path()), KeySource::store(store.clone())).unwrap();
        make_job(&mut lib)
    };
    let account = account(dir.path());
    assert!(store.get(&account).unwrap().is_some());

    // Another machine / a wiped keyring: no key for this library.
    let empty = MemoryKeyStore::new();
    let err = Library::open(Some(dir.path()), KeySource::store(empty.clone())).unwrap_err();
    assert!(matches!(err, CoreError::KeyMissing { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("restore") && msg.contains("purge") && msg.contains(&account), "{msg}");
    assert!(empty.is_empty(), "no new master key while encrypted data exists");

    // A different key under the right name.
    let wrong = MemoryKeyStore::new();
    wrong.set(&account, &[7u8; 32]).unwrap();
    let err = Library::open(Some(dir.path()), KeySource::store(wrong.clone())).unwrap_err();
    assert!(matches!(err, CoreError::WrongKey { .. }), "{err}");
    assert_eq!(wrong.get(&account).unwrap().unwrap().as_slice(), &[7u8; 32], "the wrong key is left as it was");

    // The keyring locked: its own error, never a silent switch to a passphrase.
    let source = KeySource::StoreOrPassphrase {
        store: Box::new(MemoryKeyStore::unavailable("the collection is locked")),
        passphrase: Some(Zeroizing::new("pw".to_string())),
    };
    let err = Library::open(Some(dir.path()), source).unwrap_err();
    assert!(matches!(err, CoreError::KeyringUnavailable { .. }), "{err}");
    assert!(err.to_string().contains("unlock"), "{err}");

    // The right key still works after all that.
    let lib = Library::open(Some(dir.path()), KeySource::store(store)).unwrap();
    assert_eq!(lib.job_input(&id).unwrap().as_slice(), b"a photo of me");
}

#[test]
fn no_key_source_names_both_options() {
    let dir = tmp();
    let source = KeySource::StoreOrPassphrase {
        store: Box::new(MemoryKeyStore::unavailable("no D-Bus session")),
        passphrase: None,
    };
    let err = Library::open(Some(dir.path()), source).unwrap_err();
    assert!(matches!(err, CoreError::NoKeySource { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("keyring") && msg.contains(PASSPHRASE_ENV) && msg.contains("no D-Bus session"), "{msg}");

    // The headless fallback then works on the same folder.
    let source = KeySource::StoreOrPassphrase {
        store: Box::new(MemoryKeyStore::unavailable("no D-Bus session")),
        passphrase: Some(Zeroizing::new("pw".to_string())),
    };
    let mut lib = Library::open(Some(dir.path()), source).unwrap();
    assert_eq!(lib.key_kind(), "passphrase");
    make_job(&mut lib);
}

/// Restores an environment variable when dropped.
struct EnvGuard(Vec<(&'static str, Option<std::ffi::OsString>)>);
impl EnvGuard {
    fn set(&mut self, name: &'static str, value: Option<&str>) {
        self.0.push((name, std::env::var_os(name)));
        match value {
            Some(v) => std::env::set_var(name, v),
            None => std::env::remove_var(name),
        }
    }
}
impl Drop for EnvGuard {
    fn drop(&mut self) {
        for (name, old) in self.0.drain(..).rev() {
            match old {
                Some(v) => std::env::set_var(name, v),
                None => std::env::remove_var(name),
            }
        }
    }
}

/// The real OS keyring (Secret Service over D-Bus). With `LIKENESS_TEST_SECRET_SERVICE=1` (run inside
/// `dbus-run-session` with an unlocked gnome-keyring) it stores, reuses and deletes a real key;
/// without it, it checks that a keyring that can't be reached gives the clear errors and that
/// `KeySource::Auto` falls back to LIKENESS_PASSPHRASE.
#[test]
fn os_keyring() {
    let _lock = env_lock();
    let mut env = EnvGuard(Vec::new());
    env.set(PASSPHRASE_ENV, None);
    if std::env::var("LIKENESS_TEST_SECRET_SERVICE").as_deref() == Ok("1") {
        real_secret_service();
        return;
    }
    // No session bus to talk to.
    env.set("DBUS_SESSION_BUS_ADDRESS", Some("unix:path=/nonexistent/likeness-test-bus"));
    env.set("DISPLAY", None);
    let err = OsKeyring.get("likeness-test-probe").unwrap_err();
    assert!(matches!(err, CoreError::KeyringUnavailable { .. }), "{err}");
    let dir = tmp();
    let err = Library::open(Some(dir.path()), KeySource::Auto).unwrap_err();
    assert!(matches!(err, CoreError::NoKeySource { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("keyring") && msg.contains(PASSPHRASE_ENV), "{msg}");
    env.set(PASSPHRASE_ENV, Some("headless pass"));
    let mut lib = Library::open(Some(dir.path()), KeySource::Auto).unwrap();
    assert_eq!(lib.key_kind(), "passphrase");
    let id = make_job(&mut lib);
    drop(lib);
    let lib = Library::open(Some(dir.path()), KeySource::Auto).unwrap();
    assert_eq!(lib.job_input(&id).unwrap().as_slice(), b"a photo of me");
}

fn real_secret_service() {
    let dir = tmp();
    let id = {
        let mut lib = Library::open(Some(dir.path()), KeySource::Auto).expect("the Secret Service keyring works");
        assert_eq!(lib.key_kind(), "keyring");
        make_job(&mut lib)
    };
    let account = account(dir.path());
    let key = OsKeyring.get(&account).unwrap().expect("the master key is in the keyring");
    assert_eq!(key.len(), 32);
    {
        // A fresh process (a new Entry) finds the same key.
        let lib = Library::open(Some(dir.path()), KeySource::store(OsKeyring)).unwrap();
        assert_eq!(lib.job_input(&id).unwrap().as_slice(), b"a photo of me");
    }
    let lib = Library::open(Some(dir.path()), KeySource::Auto).unwrap();
    lib.purge_all().unwrap();
    assert!(OsKeyring.get(&account).unwrap().is_none(), "purge removes the master key from the keyring");
    OsKeyring.delete(&account).unwrap();
}

#[test]
fn purge_a_library_whose_key_is_lost() {
    let dir = tmp();
    let store = MemoryKeyStore::new();
    {
        let mut lib = Library::open(Some(dir.path()), KeySource::store(store.clone())).unwrap();
        make_job(&mut lib);
    }
    let account = account(dir.path());
    // The key is lost: the library can't be opened, and the error points at purge.
    let lost = MemoryKeyStore::new();
    let err = Library::open(Some(dir.path()), KeySource::store(lost.clone())).unwrap_err();
    assert!(err.to_string().contains("purge"), "{err}");
    // Purging needs no key and refuses while the folder is in use.
    let open_lib = Library::open(Some(dir.path()), KeySource::store(store.clone())).unwrap();
    let err = Library::purge_data_dir(Some(dir.path()), Some(&lost)).unwrap_err();
    assert!(matches!(err, CoreError::Locked { .. }), "{err}");
    drop(open_lib);
    Library::purge_data_dir(Some(dir.path()), Some(&lost)).unwrap();
    assert!(crate::common::all_files(dir.path()).is_empty());
    assert!(store.get(&account).unwrap().is_some(), "another store's entry is not touched");
    // With the store that has the key, the key goes too; a purged folder purges again harmlessly.
    {
        let mut lib = Library::open(Some(dir.path()), KeySource::store(store.clone())).unwrap();
        make_job(&mut lib);
    }
    let account = self::account(dir.path());
    Library::purge_data_dir(Some(dir.path()), Some(&store)).unwrap();
    assert!(store.get(&account).unwrap().is_none());
    assert!(crate::common::all_files(dir.path()).is_empty());
    Library::purge_data_dir(Some(dir.path()), Some(&store)).unwrap();
    // A passphrase library: no keyring is asked (an unavailable one would fail).
    {
        let mut lib = Library::open(Some(dir.path()), KeySource::passphrase("pw")).unwrap();
        make_job(&mut lib);
    }
    Library::purge_data_dir(Some(dir.path()), Some(&MemoryKeyStore::unavailable("no D-Bus"))).unwrap();
    assert!(crate::common::all_files(dir.path()).is_empty());
}
