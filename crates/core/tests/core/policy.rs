//! The machine policy: each source's parsing (JSON file, macOS plist, Windows registry values on
//! fixtures), file trust checks, bounds, every kind of bad policy, and enforcement by the Library.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use likeness_core::policy::{Policy, PolicyStatus, RegValue};
use likeness_core::{CoreError, KeySource, Library, ManualClock, MemoryKeyStore};

use crate::common::{output, photo, tmp, T0};

fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/policy").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn refused(p: &Policy) -> String {
    match &p.status {
        PolicyStatus::Refused { reason } => reason.clone(),
        other => panic!("expected a refused policy, got {other:?}"),
    }
}

/// What every refused policy must fall back to.
fn assert_safe_defaults(p: &Policy) {
    assert_eq!(p.retention_days.value, 30);
    assert_eq!(p.retention_bounds(), (1, 30));
    assert_eq!(p.allowed_looks.value, vec!["studio".to_owned()]);
    assert!(!p.allow_model_import.value);
    assert!(p.models_dir().is_none() && p.data_dir().is_none(), "paths from a refused policy are never followed");
    assert!(p.check_import().is_err());
    assert!(p.check_look("generative").is_err());
    assert!(p.check_export_format("webp").is_ok());
    assert!(p.allow_model_import.managed && p.allow_model_import.source.as_deref().unwrap_or("").contains("safe default"));
}

/// The expected effective policy of both fixtures (same settings in JSON and plist).
fn assert_fixture_policy(p: &Policy, location: &str) {
    assert_eq!(p.status, PolicyStatus::Applied, "{p:?}");
    assert_eq!(p.retention_days.value, 14);
    assert_eq!(p.retention_bounds(), (7, 30));
    assert!(p.retention_days.managed && p.retention_days.source.as_deref() == Some(location));
    assert_eq!(p.allowed_looks.value, vec!["studio".to_owned()]);
    assert_eq!(p.allowed_export_formats.value, vec!["png".to_owned(), "jpg".to_owned()]);
    assert!(!p.allow_model_import.value && p.allow_model_import.managed);
    assert!(p.models_dir().is_some_and(|d| d.is_absolute()));
    assert!(p.data_dir().is_some_and(|d| !d.to_string_lossy().contains("$USER")), "{:?}", p.data_dir());
}

#[test]
fn json_policy_applies_every_setting() {
    let p = Policy::from_json(&fixture("policy.json"), "/etc/likeness/policy.json");
    assert_fixture_policy(&p, "/etc/likeness/policy.json");
    assert_eq!(p.models_dir(), Some(Path::new("/opt/likeness-models")));
    let err = p.check_export_format("webp").unwrap_err().to_string();
    assert!(err.contains("blocked by your organisation's policy (/etc/likeness/policy.json)"), "{err}");
    assert!(p.check_export_format("JPEG").is_ok());
    let err = p.check_look("generative").unwrap_err().to_string();
    assert!(err.contains("generative") && err.contains("/etc/likeness/policy.json"), "{err}");
    assert!(p.check_import().unwrap_err().to_string().contains("importing models is blocked"));
}

#[test]
fn macos_plist_fixture_parses_like_the_json() {
    let location = "/Library/Managed Preferences/com.likeness.app.plist";
    let p = Policy::from_plist(&fixture("managed.plist"), location);
    assert_fixture_policy(&p, location);
    assert_eq!(p.models_dir(), Some(Path::new("/Library/Application Support/Likeness/models")));

    let bad = Policy::from_plist(&fixture("unknown_key.plist"), location);
    assert!(refused(&bad).contains("UploadTelemetry"), "{bad:?}");
    assert_safe_defaults(&bad);
    let broken = Policy::from_plist(b"<?xml version=\"1.0\"?><plist><dict><key>RetentionDays</key>", location);
    assert!(refused(&broken).contains("not a valid plist"), "{broken:?}");
    let wrong_type = Policy::from_plist(
        b"<?xml version=\"1.0\"?><plist version=\"1.0\"><dict><key>RetentionDays</key><string>14</string></dict></plist>",
        location,
    );
    assert!(refused(&wrong_type).contains("whole number"), "{wrong_type:?}");
}

#[test]
fn windows_registry_values_map_like_the_admx_writes_them() {
    let key = r"HKLM\Software\Policies\Likeness";
    let values = |v: &[(&str, RegValue)]| v.iter().map(|(n, r)| ((*n).to_owned(), r.clone())).collect::<Vec<_>>();
    let p = Policy::from_registry_values(
        &values(&[
            ("RetentionDays", RegValue::Dword(14)),
            ("RetentionMinDays", RegValue::Dword(7)),
            ("RetentionMaxDays", RegValue::Dword(30)),
            ("ModelsDir", RegValue::Sz(r"C:\ProgramData\Likeness\models".into())),
            ("DataDir", RegValue::Sz(r"D:\Likeness\%USERNAME%".into())),
            ("AllowedLooks", RegValue::Sz("studio".into())),
            ("AllowedExportFormats", RegValue::MultiSz(vec!["png".into(), "jpg".into()])),
            ("AllowModelImport", RegValue::Dword(0)),
        ]),
        key,
    );
    // Windows paths are absolute only on Windows: elsewhere the mapping refuses them, which is
    // itself the absolute-path rule at work.
    if cfg!(windows) {
        assert_fixture_policy(&p, key);
    } else {
        assert!(refused(&p).contains("absolute path"), "{p:?}");
    }
    let p = Policy::from_registry_values(
        &values(&[
            ("RetentionMaxDays", RegValue::Dword(60)),
            ("AllowedExportFormats", RegValue::Sz("png; webp".into())),
            ("AllowModelImport", RegValue::Dword(1)),
        ]),
        key,
    );
    assert_eq!(p.status, PolicyStatus::Applied);
    assert_eq!(p.retention_bounds(), (1, 60));
    assert_eq!(p.allowed_export_formats.value, vec!["png".to_owned(), "webp".to_owned()]);
    assert!(p.allow_model_import.value && p.allow_model_import.managed);
    assert!(!p.allowed_looks.managed);

    assert_eq!(Policy::from_registry_values(&[], key).status, PolicyStatus::NotFound);
    for (bad, needle) in [
        (vec![("AllowModelImport", RegValue::Dword(2))], "0 or 1"),
        (vec![("RetentionDays", RegValue::Sz("14".into()))], "whole number"),
        (vec![("RetentionMaxDays", RegValue::Dword(0))], "outside 1 to 36500"),
        (vec![("Telemetry", RegValue::Dword(1))], "unknown setting 'Telemetry'"),
        (vec![("ModelsDir", RegValue::MultiSz(vec!["a".into()]))], "REG_MULTI_SZ"),
        (vec![("RetentionDays", RegValue::Other("REG_BINARY".into()))], "REG_BINARY"),
    ] {
        let p = Policy::from_registry_values(&values(&bad), key);
        assert!(refused(&p).contains(needle), "{bad:?}: {p:?}");
        assert_safe_defaults(&p);
    }
}

#[test]
fn bad_json_policies_are_refused_with_a_reason_and_safe_defaults() {
    for (text, needle) in [
        ("{\"retention_days\": 14,", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ("{\"retention_dayz\": 14}", "unknown setting 'retention_dayz'"),
        ("{\"retention_max_days\": 0}", "outside 1 to 36500"),
        ("{\"retention_max_days\": 40000}", "outside 1 to 36500"),
        ("{\"retention_max_days\": 12.5}", "whole number"),
        ("{\"retention_min_days\": 40, \"retention_max_days\": 30}", "larger than"),
        ("{\"retention_days\": 60, \"retention_max_days\": 30}", "outside retention_min_days"),
        ("{\"allowed_looks\": []}", "empty"),
        ("{\"allowed_looks\": [\"anime\"]}", "'anime'"),
        ("{\"allowed_export_formats\": [\"gif\"]}", "'gif'"),
        ("{\"allowed_export_formats\": \"png\"}", "must be a list"),
        ("{\"allow_model_import\": \"no\"}", "true or false"),
        ("{\"models_dir\": \"relative/models\"}", "absolute path"),
        ("{\"data_dir\": 5}", "folder path"),
    ] {
        let p = Policy::from_json(text.as_bytes(), "/etc/likeness/policy.json");
        assert!(refused(&p).contains(needle), "{text}: {p:?}");
        assert_safe_defaults(&p);
    }
}

#[test]
fn bounds_alone_move_the_default_retention_into_them() {
    let p = Policy::from_json(br#"{"retention_max_days": 7}"#, "x");
    assert_eq!((p.retention_days.value, p.retention_days.managed), (7, true));
    assert_eq!(p.clamp_retention(90), 7);
    let p = Policy::from_json(br#"{"retention_min_days": 60}"#, "x");
    assert_eq!(p.retention_days.value, 60);
    assert_eq!(p.retention_bounds(), (60, 36_500));
    let p = Policy::from_json(br#"{"retention_min_days": 7, "retention_max_days": 90}"#, "x");
    assert_eq!((p.retention_days.value, p.retention_days.managed), (30, false));
    let none = Policy::unmanaged("x");
    assert!(!none.is_managed() && none.check_import().is_ok() && none.check_look("generative").is_ok());
    // Unmanaged bounds are the app's own limits, and say so without naming a policy.
    let err = none.check_retention(0).unwrap_err().to_string();
    assert!(err.contains("1 to 36500") && !err.contains("policy"), "{err}");
}

/// Files this process creates are owned by root only when it runs as root.
fn is_root(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir).map(|m| m.uid() == 0).unwrap_or(false)
}

fn write_policy(dir: &Path, text: &str, mode: u32) -> PathBuf {
    let path = dir.join("policy.json");
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

#[test]
fn policy_file_must_be_root_owned_and_not_writable_by_others() {
    let dir = tmp();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let missing = Policy::load_json_file(&dir.path().join("policy.json"));
    assert_eq!(missing.status, PolicyStatus::NotFound);
    assert!(!missing.is_managed());

    let text = r#"{"retention_max_days": 10, "allowed_export_formats": ["png"]}"#;
    let path = write_policy(dir.path(), text, 0o644);
    let p = Policy::load_json_file(&path);
    if is_root(dir.path()) {
        assert_eq!(p.status, PolicyStatus::Applied, "{p:?}");
        assert_eq!(p.retention_bounds(), (1, 10));
        assert_eq!(p.retention_max_days.source.as_deref(), Some(path.to_str().unwrap()));

        // Owned by someone else: refused even with safe permissions.
        std::os::unix::fs::chown(&path, Some(1000), Some(1000)).unwrap();
        let p = Policy::load_json_file(&path);
        assert!(refused(&p).contains("not root"), "{p:?}");
        assert_safe_defaults(&p);
        std::os::unix::fs::chown(&path, Some(0), Some(0)).unwrap();

        // A folder others can write to lets them replace the file.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let p = Policy::load_json_file(&path);
        assert!(refused(&p).contains("its folder") && refused(&p).contains("world-writable"), "{p:?}");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    } else {
        assert!(refused(&p).contains("not root"), "{p:?}");
    }

    let path = write_policy(dir.path(), text, 0o666);
    let p = Policy::load_json_file(&path);
    assert!(refused(&p).contains("world-writable"), "{p:?}");
    assert_safe_defaults(&p);

    let big = format!("{{\"data_dir\": \"/{}\"}}", "a".repeat(70_000));
    let path = write_policy(dir.path(), &big, 0o644);
    assert!(refused(&Policy::load_json_file(&path)).contains("byte limit"));

    let sub = dir.path().join("policy-dir");
    std::fs::create_dir(&sub).unwrap();
    assert!(refused(&Policy::load_json_file(&sub)).contains("not a regular file"));
}

fn open_with(dir: &Path, store: &MemoryKeyStore, policy: Policy) -> Library {
    Library::open_with_policy(
        Some(dir),
        KeySource::store(store.clone()),
        Arc::new(ManualClock::new(T0)),
        Arc::new(policy),
    )
    .expect("open library")
}

#[test]
fn library_keeps_retention_within_the_policy_and_names_it() {
    let dir = tmp();
    let store = MemoryKeyStore::new();
    {
        // The user chose 90 days before the policy arrived, and an output was made then.
        let mut lib = open_with(dir.path(), &store, Policy::unmanaged("none"));
        lib.set_retention_days(90).unwrap();
        let job = lib.create_job("me.jpg", &photo("astronaut.png"), "{}").unwrap();
        let claimed = lib.claim_next_job().unwrap().unwrap();
        assert_eq!(claimed.id, job);
        lib.complete_job(&job, vec![output(vec![1, 2, 3], "png")]).unwrap();
        let out = &lib.list_outputs().unwrap()[0];
        assert_eq!(out.expires_at, T0 + 90 * 86_400);
    }
    let policy = Policy::from_json(br#"{"retention_min_days": 3, "retention_max_days": 14}"#, "/etc/likeness/policy.json");
    let mut lib = open_with(dir.path(), &store, policy);
    assert_eq!(lib.settings().unwrap().retention_days, 14, "the user's 90 days are clamped");
    let out = &lib.list_outputs().unwrap()[0];
    assert_eq!(out.expires_at, T0 + 14 * 86_400, "existing outputs follow the policy's maximum");
    let err = lib.set_retention_days(30).unwrap_err();
    assert!(matches!(err, CoreError::Policy(_)), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("/etc/likeness/policy.json") && msg.contains("3 to 14 days"), "{msg}");
    assert!(lib.set_retention_days(2).is_err());
    lib.set_retention_days(5).unwrap();
    assert_eq!(lib.settings().unwrap().retention_days, 5);
    assert_eq!(lib.policy().retention_bounds(), (3, 14));
}

#[test]
fn library_refuses_jobs_the_policy_blocks() {
    let dir = tmp();
    let store = MemoryKeyStore::new();
    let policy = Policy::from_json(
        br#"{"allowed_looks": ["studio"], "allowed_export_formats": ["png", "jpg"]}"#,
        "/etc/likeness/policy.json",
    );
    let mut lib = open_with(dir.path(), &store, policy);
    let bytes = photo("astronaut.png");
    for settings in [r#"{"format": "webp"}"#, r#"{"look": "generative"}"#] {
        let err = lib.create_job("me.png", &bytes, settings).unwrap_err();
        assert!(matches!(err, CoreError::Policy(_)), "{settings}: {err:?}");
        assert!(err.to_string().contains("blocked by your organisation's policy (/etc/likeness/policy.json)"), "{err}");
    }
    assert!(lib.list_jobs().unwrap().is_empty(), "nothing is stored for a blocked job");
    lib.create_job("me.png", &bytes, r#"{"format": "jpg"}"#).unwrap();
    lib.create_job("me.png", &bytes, "{}").unwrap();
    assert_eq!(lib.list_jobs().unwrap().len(), 2);
}

#[test]
fn managed_data_folder_replaces_the_callers() {
    let managed = tmp();
    let asked = tmp();
    let store = MemoryKeyStore::new();
    let text = format!("{{\"data_dir\": \"{}\"}}", managed.path().join("lib").display());
    let policy = Policy::from_json(text.as_bytes(), "/etc/likeness/policy.json");
    let lib = open_with(asked.path(), &store, policy);
    assert_eq!(lib.data_dir(), managed.path().join("lib"));
    assert!(managed.path().join("lib/likeness.db").is_file());
    assert!(!asked.path().join("likeness.db").exists());
}

#[test]
fn admx_template_writes_exactly_the_values_the_reader_knows() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policy/windows/likeness.admx");
    let admx = std::fs::read_to_string(&path).unwrap();
    assert!(admx.contains(r#"key="Software\Policies\Likeness""#));
    let mut names: Vec<&str> = admx.split("valueName=\"").skip(1).filter_map(|s| s.split('"').next()).collect();
    names.sort_unstable();
    names.dedup();
    let mut expected = vec![
        "AllowModelImport", "AllowedExportFormats", "AllowedLooks", "DataDir", "ModelsDir", "RetentionDays",
        "RetentionMaxDays", "RetentionMinDays",
    ];
    expected.sort_unstable();
    assert_eq!(names, expected);
    let folder = if cfg!(windows) { r"C:\ProgramData\Likeness" } else { "/srv/likeness" };
    let values: Vec<(String, RegValue)> = names
        .iter()
        .map(|n| {
            let v = match *n {
                "RetentionDays" | "RetentionMinDays" | "RetentionMaxDays" => RegValue::Dword(30),
                "AllowModelImport" => RegValue::Dword(1),
                "AllowedLooks" => RegValue::Sz("studio, generative".into()),
                "AllowedExportFormats" => RegValue::Sz("png,jpg".into()),
                _ => RegValue::Sz(folder.into()),
            };
            ((*n).to_owned(), v)
        })
        .collect();
    let p = Policy::from_registry_values(&values, r"HKLM\Software\Policies\Likeness");
    assert_eq!(p.status, PolicyStatus::Applied, "{p:?}");
    assert_eq!(p.retention_bounds(), (30, 30));
    assert_eq!(p.allowed_looks.value.len(), 2);
}
