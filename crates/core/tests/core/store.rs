//! The job store and the vault on a real SQLite file.

use likeness_core::{
    CoreError, JobState, MemoryKeyStore, NewInput, NewJob, DEFAULT_RETENTION_DAYS, MAX_ATTEMPTS, MIGRATIONS,
    SCHEMA_VERSION,
};

use crate::common::{all_files, contains, open, output, photo, raw_db, tmp, vault_files, T0};

const DAY: i64 = 86_400;
const SETTINGS: &str = r#"{"preset":"linkedin","backdrop":"gray","attire":"keep","lighting":"soft","quality":"high","variants":2,"seed":7}"#;

#[test]
fn schema_wal_and_version() {
    let dir = tmp();
    let store = MemoryKeyStore::new();
    let lib = open(dir.path(), &store);
    let db = raw_db(dir.path());
    let mode: String = db.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
    assert_eq!(mode, "wal");
    let version: i64 = db.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    assert_eq!(SCHEMA_VERSION, MIGRATIONS.len() as i64);
    for table in ["jobs", "job_inputs", "inputs", "outputs", "blobs", "settings", "meta"] {
        let n: i64 = db
            .query_row("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?1", [table], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1, "table {table}");
    }
    assert_eq!(lib.settings().unwrap().retention_days, DEFAULT_RETENTION_DAYS);
    assert_eq!(lib.key_kind(), "keyring");
    assert_eq!(store.len(), 1, "one master key made for a new library");
}

#[test]
fn upgrade_from_version_1_keeps_a_backup() {
    let dir = tmp();
    {
        let db = raw_db(dir.path());
        db.execute_batch(MIGRATIONS[0]).unwrap();
        db.pragma_update(None, "user_version", 1).unwrap();
        db.execute("UPDATE settings SET value = '12' WHERE key = 'retention_days'", []).unwrap();
    }
    let store = MemoryKeyStore::new();
    let mut lib = open(dir.path(), &store);
    assert_eq!(lib.settings().unwrap().retention_days, 12, "data survives the upgrade");
    let db = raw_db(dir.path());
    let version: i64 = db.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    let has_group: i64 = db
        .query_row("SELECT COUNT(*) FROM pragma_table_info('jobs') WHERE name = 'group_id'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(has_group, 1);
    drop(db);
    let backup = dir.path().join("likeness.db.bak-v1");
    assert!(backup.is_file(), "backup before the upgrade");
    let old = rusqlite::Connection::open(&backup).unwrap();
    let v: i64 = old.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert_eq!(v, 1, "the backup is the old version");
    drop(old);

    // The group id works after the upgrade.
    let id = lib
        .create_job_with(NewJob {
            inputs: vec![NewInput { name: "a.jpg".into(), bytes: vec![1, 2, 3] }],
            settings_json: "{}".into(),
            group_id: Some("batch-1".into()),
        })
        .unwrap();
    assert_eq!(lib.list_group("batch-1").unwrap()[0].id, id);

    // The backup holds old wrapped keys: it goes after a day.
    assert_eq!(lib.sweep_at(T0 + 3600).unwrap().backups_removed, 0);
    assert!(backup.is_file());
    assert_eq!(lib.sweep_at(T0 + 2 * DAY).unwrap().backups_removed, 1);
    assert!(!backup.exists());
}

#[test]
fn newer_schema_is_refused() {
    let dir = tmp();
    {
        let db = raw_db(dir.path());
        db.pragma_update(None, "user_version", SCHEMA_VERSION + 5).unwrap();
    }
    let err = likeness_core::Library::open(Some(dir.path()), likeness_core::KeySource::store(MemoryKeyStore::new()))
        .unwrap_err();
    assert!(matches!(err, CoreError::SchemaTooNew { .. }), "{err}");
    assert!(err.to_string().contains("update Likeness"), "{err}");
}

#[test]
fn job_lifecycle_round_trip() {
    let dir = tmp();
    let store = MemoryKeyStore::new();
    let mut lib = open(dir.path(), &store);
    let input = photo("grace_hopper_512x512.jpg");
    let id = lib.create_job("grace.jpg", &input, SETTINGS).unwrap();

    let jobs = lib.list_jobs().unwrap();
    assert_eq!(jobs.len(), 1);
    let job = &jobs[0];
    assert_eq!(job.id, id);
    assert_eq!(job.state, JobState::Queued);
    assert_eq!(job.created_at, T0);
    assert_eq!(job.attempts, 0);
    assert_eq!(job.inputs.len(), 1);
    assert_eq!(job.inputs[0].name, "grace.jpg");
    assert_eq!(job.inputs[0].size, Some(input.len() as u64));
    let settings: serde_json::Value = serde_json::from_str(&job.settings_json).unwrap();
    assert_eq!(settings["preset"], "linkedin");
    assert_eq!(settings["variants"], 2);
    assert_eq!(settings["seed"], 7);
    assert_eq!(vault_files(dir.path()).len(), 1);

    let claimed = lib.claim_next_job().unwrap().expect("a queued job");
    assert_eq!(claimed.id, id);
    assert_eq!(claimed.attempt, 1);
    assert_eq!(claimed.input_names, vec!["grace.jpg".to_string()]);
    assert!(lib.claim_next_job().unwrap().is_none(), "only one job");
    assert_eq!(lib.job_input(&id).unwrap().as_slice(), input.as_slice());
    assert!(!lib.set_progress(&id, 0.5, "faces").unwrap());
    let job = lib.get_job(&id).unwrap();
    assert_eq!(job.state, JobState::Running);
    assert_eq!(job.progress, 0.5);
    assert_eq!(job.stage.as_deref(), Some("faces"));
    assert_eq!(job.started_at, Some(T0));

    let png = photo("camera.png");
    let jpg = photo("rocket.jpg");
    let outs = lib.complete_job(&id, vec![output(png.clone(), "png"), output(jpg.clone(), "jpeg")]).unwrap();
    assert_eq!(outs.len(), 2);
    let job = lib.get_job(&id).unwrap();
    assert_eq!(job.state, JobState::Done);
    assert_eq!(job.progress, 1.0);
    assert_eq!(job.finished_at, Some(T0));
    assert_eq!(job.outputs.len(), 2);
    let o = &job.outputs[0];
    assert_eq!((o.format.as_str(), o.size, o.width, o.height), ("png", png.len() as u64, 64, 48));
    assert_eq!(o.created_at, T0);
    assert_eq!(o.expires_at, T0 + 30 * DAY);
    assert_eq!(job.outputs[1].format, "jpeg");
    assert_eq!(lib.get_output(&outs[0]).unwrap().as_slice(), png.as_slice());
    assert_eq!(lib.get_output(&outs[1]).unwrap().as_slice(), jpg.as_slice());
    assert_eq!(lib.list_outputs().unwrap().len(), 2);
    // The photo is released once no unfinished job needs it.
    assert_eq!(job.inputs[0].size, None);
    assert!(lib.job_input(&id).is_err());
    assert_eq!(vault_files(dir.path()).len(), 2, "two outputs, the photo gone");

    // Survives reopening.
    drop(lib);
    let lib = open(dir.path(), &store);
    assert_eq!(lib.get_output(&outs[1]).unwrap().as_slice(), jpg.as_slice());
    assert!(lib.doctor_check_healthy());
}

trait Healthy {
    fn doctor_check_healthy(self) -> bool;
}
impl Healthy for likeness_core::Library {
    fn doctor_check_healthy(mut self) -> bool {
        self.doctor(false).map(|r| r.is_healthy()).unwrap_or(false)
    }
}

#[test]
fn bad_settings_and_inputs_store_nothing() {
    let dir = tmp();
    let store = MemoryKeyStore::new();
    let mut lib = open(dir.path(), &store);
    for bad in ["not json", "[1, 2]", r#"{"variants": "many"}"#] {
        let err = lib.create_job("a.jpg", b"abc", bad).unwrap_err();
        assert!(matches!(err, CoreError::InvalidSettings(_)), "{bad}: {err}");
    }
    assert!(matches!(lib.create_job("a.jpg", b"", "{}").unwrap_err(), CoreError::InvalidInput(_)));
    assert!(matches!(lib.create_job("  ", b"abc", "{}").unwrap_err(), CoreError::InvalidInput(_)));
    assert!(lib.list_jobs().unwrap().is_empty());
    assert!(vault_files(dir.path()).is_empty());

    let id = lib.create_job("a.jpg", b"abc", "{}").unwrap();
    lib.claim_next_job().unwrap();
    for (o, why) in [(output(vec![1], "gif"), "format"), (output(vec![], "png"), "empty")] {
        let err = lib.complete_job(&id, vec![o]).unwrap_err();
        assert!(matches!(err, CoreError::InvalidInput(_)), "{why}: {err}");
    }
    assert!(matches!(lib.complete_job(&id, vec![]).unwrap_err(), CoreError::InvalidInput(_)));
    assert_eq!(lib.get_job(&id).unwrap().state, JobState::Running);
    assert_eq!(vault_files(dir.path()).len(), 1, "only the photo");
}

#[test]
fn cancel_queued_and_running_jobs() {
    let dir = tmp();
    let store = MemoryKeyStore::new();
    let mut lib = open(dir.path(), &store);
    let a = lib.create_job("a.jpg", b"photo a", "{}").unwrap();
    let b = lib.create_job("b.jpg", b"photo b", "{}").unwrap();

    assert_eq!(lib.cancel_job(&a).unwrap(), JobState::Cancelled);
    assert_eq!(lib.get_job(&a).unwrap().inputs[0].size, None, "the cancelled job's photo is deleted");
    assert_eq!(vault_files(dir.path()).len(), 1);

    let claimed = lib.claim_next_job().unwrap().unwrap();
    assert_eq!(claimed.id, b, "the cancelled job is never claimed");
    assert!(!lib.is_cancel_requested(&b).unwrap());
    assert_eq!(lib.cancel_job(&b).unwrap(), JobState::Running, "a running job is only flagged");
    assert!(lib.is_cancel_requested(&b).unwrap());
    assert!(lib.set_progress(&b, 0.3, "mesh").unwrap(), "progress tells the worker to stop");
    let err = lib.complete_job(&b, vec![output(b"out".to_vec(), "png")]).unwrap_err();
    assert!(matches!(err, CoreError::JobState { .. }), "{err}");
    let job = lib.get_job(&b).unwrap();
    assert_eq!(job.state, JobState::Cancelled);
    assert!(job.outputs.is_empty());
    assert!(vault_files(dir.path()).is_empty(), "no outputs kept, photos released");
    assert_eq!(lib.cancel_job(&b).unwrap(), JobState::Cancelled, "cancelling twice is harmless");
}

#[test]
fn killed_process_requeues_and_attempts_are_capped() {
    let dir = tmp();
    let store = MemoryKeyStore::new();
    let id = {
        let mut lib = open(dir.path(), &store);
        lib.create_job("a.jpg", b"photo", "{}").unwrap()
    };
    for attempt in 1..=MAX_ATTEMPTS {
        let mut lib = open(dir.path(), &store);
        let job = lib.get_job(&id).unwrap();
        assert_eq!(job.state, JobState::Queued);
        assert_eq!(job.attempts, attempt - 1);
        if attempt > 1 {
            assert!(job.error.as_deref().unwrap_or("").contains("stopped"), "{:?}", job.error);
        }
        let claimed = lib.claim_next_job().unwrap().unwrap();
        assert_eq!(claimed.attempt, attempt);
        // The process dies here: the library is dropped with the job running.
    }
    let mut lib = open(dir.path(), &store);
    assert!(lib.claim_next_job().unwrap().is_none(), "a job that crashed {MAX_ATTEMPTS} times is not run again");
    let job = lib.get_job(&id).unwrap();
    assert_eq!(job.state, JobState::Failed);
    let error = job.error.unwrap();
    assert!(error.contains("gave up after 3 attempts") && error.contains("stopped"), "{error}");
    assert!(vault_files(dir.path()).is_empty(), "the failed job's photo is released");
}

#[test]
fn fail_and_requeue() {
    let dir = tmp();
    let store = MemoryKeyStore::new();
    let mut lib = open(dir.path(), &store);
    let a = lib.create_job("a.jpg", b"photo a", "{}").unwrap();
    lib.claim_next_job().unwrap();
    lib.requeue_job(&a, "GPU out of memory").unwrap();
    let job = lib.get_job(&a).unwrap();
    assert_eq!((job.state, job.error.as_deref()), (JobState::Queued, Some("GPU out of memory")));
    assert_eq!(lib.claim_next_job().unwrap().unwrap().attempt, 2);
    lib.fail_job(&a, "no face found in a.jpg").unwrap();
    let job = lib.get_job(&a).unwrap();
    assert_eq!((job.state, job.error.as_deref()), (JobState::Failed, Some("no face found in a.jpg")));
    assert!(matches!(lib.fail_job(&a, "again").unwrap_err(), CoreError::JobState { .. }));
    assert!(matches!(lib.requeue_job(&a, "again").unwrap_err(), CoreError::JobState { .. }));
    assert!(vault_files(dir.path()).is_empty());
    let missing = likeness_core::JobId::from("nope");
    assert!(matches!(lib.get_job(&missing).unwrap_err(), CoreError::JobNotFound(_)));
    assert!(matches!(lib.cancel_job(&missing).unwrap_err(), CoreError::JobNotFound(_)));
}

#[test]
fn deletes_and_purge() {
    let dir = tmp();
    let store = MemoryKeyStore::new();
    let mut lib = open(dir.path(), &store);
    let mut done = Vec::new();
    for i in 0..3u8 {
        let id = lib.create_job(&format!("{i}.jpg"), &[i; 100], "{}").unwrap();
        lib.claim_next_job().unwrap();
        let outs = lib.complete_job(&id, vec![output(vec![i; 50], "png"), output(vec![i; 60], "webp")]).unwrap();
        done.push((id, outs));
    }
    let queued = lib.create_job("q.jpg", b"queued photo", "{}").unwrap();
    assert_eq!(vault_files(dir.path()).len(), 7);

    lib.delete_output(&done[0].1[0]).unwrap();
    assert!(matches!(lib.get_output(&done[0].1[0]).unwrap_err(), CoreError::OutputNotFound(_)));
    assert_eq!(lib.get_job(&done[0].0).unwrap().outputs.len(), 1);
    assert_eq!(vault_files(dir.path()).len(), 6);

    lib.delete_job(&done[1].0).unwrap();
    assert!(matches!(lib.get_job(&done[1].0).unwrap_err(), CoreError::JobNotFound(_)));
    assert_eq!(vault_files(dir.path()).len(), 4);

    let running = lib.claim_next_job().unwrap().unwrap();
    assert_eq!(running.id, queued);
    assert!(
        matches!(lib.delete_job(&queued).unwrap_err(), CoreError::JobState { .. }),
        "a running job is cancelled first"
    );
    lib.cancel_job(&queued).unwrap();
    lib.mark_cancelled(&queued).unwrap();
    lib.delete_job(&queued).unwrap();
    assert_eq!(vault_files(dir.path()).len(), 3);

    lib.delete_all_data().unwrap();
    assert!(lib.list_jobs().unwrap().is_empty());
    assert!(vault_files(dir.path()).is_empty());
    // Still usable afterwards.
    let again = lib.create_job("x.jpg", b"x", "{}").unwrap();
    assert_eq!(lib.list_jobs().unwrap()[0].id, again);

    assert_eq!(store.len(), 1);
    lib.purge_all().unwrap();
    assert!(store.is_empty(), "purge removes the master key");
    assert_eq!(all_files(dir.path()), Vec::<std::path::PathBuf>::new(), "purge leaves no file in the data folder");
    // A fresh library can be made afterwards.
    let lib = open(dir.path(), &store);
    assert!(lib.list_jobs().unwrap().is_empty());
}

#[test]
fn one_process_per_data_folder() {
    let dir = tmp();
    let store = MemoryKeyStore::new();
    let _lib = open(dir.path(), &store);
    let err =
        likeness_core::Library::open(Some(dir.path()), likeness_core::KeySource::store(store.clone())).unwrap_err();
    assert!(matches!(err, CoreError::Locked { .. }), "{err}");
}

#[test]
fn retention_setting_never_extends() {
    let dir = tmp();
    let store = MemoryKeyStore::new();
    let mut lib = open(dir.path(), &store);
    let id = lib.create_job("a.jpg", b"a", "{}").unwrap();
    lib.claim_next_job().unwrap();
    let out = lib.complete_job(&id, vec![output(b"o".to_vec(), "png")]).unwrap().remove(0);
    assert_eq!(lib.output_info(&out).unwrap().expires_at, T0 + 30 * DAY);
    lib.set_retention_days(7).unwrap();
    assert_eq!(lib.settings().unwrap().retention_days, 7);
    assert_eq!(
        lib.output_info(&out).unwrap().expires_at,
        T0 + 7 * DAY,
        "shorter retention applies to existing outputs"
    );
    lib.set_retention_days(90).unwrap();
    assert_eq!(lib.output_info(&out).unwrap().expires_at, T0 + 7 * DAY, "longer retention never extends");
    assert!(matches!(lib.set_retention_days(0).unwrap_err(), CoreError::InvalidInput(_)));

    let id = lib.create_job("b.jpg", b"b", "{}").unwrap();
    lib.claim_next_job().unwrap();
    let out2 = lib.complete_job(&id, vec![output(b"o2".to_vec(), "png")]).unwrap().remove(0);
    assert_eq!(lib.output_info(&out2).unwrap().expires_at, T0 + 90 * DAY);
    let report = lib.sweep_at(T0 + 7 * DAY).unwrap();
    assert_eq!(report.outputs_expired, 1);
    assert!(lib.get_output(&out).is_err());
    assert!(lib.get_output(&out2).is_ok());
}

#[test]
fn deleted_rows_leave_no_wrapped_key_behind() {
    let dir = tmp();
    let store = MemoryKeyStore::new();
    let mut lib = open(dir.path(), &store);
    let id = lib.create_job("a.jpg", &photo("grace_hopper_512x512.jpg"), "{}").unwrap();
    lib.claim_next_job().unwrap();
    let out = lib.complete_job(&id, vec![output(photo("camera.png"), "png")]).unwrap().remove(0);
    let keys: Vec<Vec<u8>> = {
        let db = raw_db(dir.path());
        let mut stmt = db.prepare("SELECT wrapped_key FROM blobs").unwrap();
        let v = stmt.query_map([], |r| r.get(0)).unwrap().collect::<Result<Vec<Vec<u8>>, _>>().unwrap();
        v
    };
    assert_eq!(keys.len(), 1, "the output's key (the photo's row is already gone)");
    assert!(keys[0].len() >= 32);
    let blob = vault_files(dir.path()).remove(0);
    let leftover = std::fs::read(&blob).unwrap();
    lib.delete_output(&out).unwrap();
    assert!(!blob.exists());
    for file in all_files(dir.path()) {
        let bytes = std::fs::read(&file).unwrap();
        assert!(!contains(&bytes, &keys[0]), "wrapped key still in {}", file.display());
    }
    // A copy of the file that survived elsewhere can't be opened through the library any more.
    std::fs::write(&blob, &leftover).unwrap();
    assert!(lib.get_output(&out).is_err());
    assert!(!lib.doctor(false).unwrap().orphan_files.is_empty());
}

#[test]
fn delete_all_data_removes_upgrade_backups() {
    let dir = tmp();
    {
        let db = raw_db(dir.path());
        db.execute_batch(MIGRATIONS[0]).unwrap();
        db.pragma_update(None, "user_version", 1).unwrap();
    }
    let store = MemoryKeyStore::new();
    let mut lib = open(dir.path(), &store);
    assert!(dir.path().join("likeness.db.bak-v1").is_file());
    lib.delete_all_data().unwrap();
    assert!(!dir.path().join("likeness.db.bak-v1").exists());
}

#[test]
fn exported_copies_are_never_touched() {
    let dir = tmp();
    let export = tmp();
    let store = MemoryKeyStore::new();
    let mut lib = open(dir.path(), &store);
    let id = lib.create_job("a.jpg", b"photo", "{}").unwrap();
    lib.claim_next_job().unwrap();
    let out = lib.complete_job(&id, vec![output(b"headshot".to_vec(), "png")]).unwrap().remove(0);
    let copy = export.path().join("headshot.png");
    std::fs::write(&copy, lib.get_output(&out).unwrap().as_slice()).unwrap();
    lib.sweep_at(T0 + 400 * DAY).unwrap();
    assert!(lib.get_output(&out).is_err(), "expired in the library");
    lib.doctor(true).unwrap();
    lib.purge_all().unwrap();
    assert_eq!(std::fs::read(&copy).unwrap(), b"headshot", "the exported copy is untouched");
}

#[test]
fn data_dir_resolution() {
    use likeness_core::{DataPaths, DATA_DIR_ENV};
    let _lock = crate::common::env_lock();
    let old = std::env::var_os(DATA_DIR_ENV);
    let explicit = tmp();
    let from_env = tmp();
    std::env::set_var(DATA_DIR_ENV, from_env.path());
    assert_eq!(DataPaths::resolve(Some(explicit.path())).unwrap().root, explicit.path(), "explicit wins");
    assert_eq!(DataPaths::resolve(None).unwrap().root, from_env.path(), "then LIKENESS_DATA_DIR");
    std::env::remove_var(DATA_DIR_ENV);
    let os = DataPaths::resolve(None);
    match old {
        Some(v) => std::env::set_var(DATA_DIR_ENV, v),
        None => std::env::remove_var(DATA_DIR_ENV),
    }
    // Then the OS data folder (HOME is set here), never the working directory.
    let os = os.unwrap();
    assert!(os.root.is_absolute() && os.root.to_string_lossy().to_lowercase().contains("likeness"), "{:?}", os.root);
    let p = DataPaths::new("/d");
    assert_eq!(p.db(), std::path::Path::new("/d/likeness.db"));
    assert_eq!(p.blob("abcdef"), std::path::Path::new("/d/vault/ab/abcdef.bin"));
    assert_eq!(p.salt(), std::path::Path::new("/d/salt"));
}

#[test]
fn library_can_move_between_threads() {
    fn assert_send<T: Send>() {}
    assert_send::<likeness_core::Library>();
    let dir = tmp();
    let store = MemoryKeyStore::new();
    let lib = std::sync::Mutex::new(open(dir.path(), &store));
    std::thread::scope(|s| {
        s.spawn(|| lib.lock().unwrap().create_job("a.jpg", b"a", "{}").unwrap());
    });
    assert_eq!(lib.lock().unwrap().list_jobs().unwrap().len(), 1);
}

#[test]
fn sweep_uses_the_library_clock_and_a_backwards_clock_keeps_nothing_longer() {
    let dir = tmp();
    let store = MemoryKeyStore::new();
    let clock = likeness_core::ManualClock::new(T0);
    let mut lib = crate::common::open_clock(dir.path(), &store, &clock);
    let make = |lib: &mut likeness_core::Library| {
        let id = lib.create_job("a.jpg", b"a", "{}").unwrap();
        lib.claim_next_job().unwrap();
        lib.complete_job(&id, vec![output(b"o".to_vec(), "png")]).unwrap().remove(0)
    };
    let first = make(&mut lib);
    clock.advance(29 * DAY);
    assert_eq!(lib.sweep().unwrap().outputs_expired, 0);
    clock.advance(DAY);
    let report = lib.sweep().unwrap();
    assert_eq!((report.outputs_expired, report.judged_at), (1, T0 + 30 * DAY));
    assert!(lib.get_output(&first).is_err());

    // The clock goes back 40 days: an output made now gets the usual expiry on paper, but it is
    // judged against the latest time seen, so it can't outlive 30 days of that time.
    let second = make(&mut lib);
    clock.set(T0 - 10 * DAY);
    let third = make(&mut lib);
    assert_eq!(lib.output_info(&third).unwrap().expires_at, T0 + 20 * DAY);
    let report = lib.sweep().unwrap();
    assert_eq!(report.judged_at, T0 + 30 * DAY, "the backwards clock is not believed");
    assert_eq!(report.outputs_expired, 1, "the third output's expiry is already past");
    assert!(lib.get_output(&second).is_ok());
    // The clock comes back: the second output still expires on its own date, not later.
    clock.set(T0 + 60 * DAY);
    assert_eq!(lib.sweep().unwrap().outputs_expired, 1);
    assert!(lib.list_outputs().unwrap().is_empty());
}

#[test]
fn favourites_survive_a_restart_but_still_expire() {
    let dir = tmp();
    let store = MemoryKeyStore::new();
    let clock = likeness_core::ManualClock::new(T0);
    let mut lib = crate::common::open_clock(dir.path(), &store, &clock);
    let id = lib.create_job("a.jpg", b"a", "{}").unwrap();
    lib.claim_next_job().unwrap();
    let outs = lib.complete_job(&id, vec![output(b"one".to_vec(), "png"), output(b"two".to_vec(), "png")]).unwrap();
    assert!(!lib.output_info(&outs[0]).unwrap().favourite, "outputs start unstarred");
    lib.set_favourite(&outs[1], true).unwrap();
    assert!(matches!(lib.set_favourite(&likeness_core::OutputId("nope".into()), true), Err(CoreError::OutputNotFound(_))));
    lib.set_preference("device", "cpu").unwrap();
    drop(lib);

    let mut lib = crate::common::open_clock(dir.path(), &store, &clock);
    let favs: Vec<bool> = lib.list_outputs().unwrap().iter().map(|o| o.favourite).collect();
    assert_eq!(favs, [false, true], "the star is stored, not remembered in memory");
    assert_eq!(lib.preference("device").unwrap().as_deref(), Some("cpu"));
    assert_eq!(lib.preference("theme").unwrap(), None);
    lib.set_favourite(&outs[1], false).unwrap();
    assert!(!lib.output_info(&outs[1]).unwrap().favourite);
    lib.set_favourite(&outs[0], true).unwrap();
    // A favourite is deleted at expiry like any other output.
    clock.advance(30 * DAY);
    assert_eq!(lib.sweep().unwrap().outputs_expired, 2);
    assert!(lib.list_outputs().unwrap().is_empty());
}
