//! The machine policy: settings an IT team fixes for every user of a computer, read once at start
//! and applied above the user's own settings.
//!
//! Where it is read from:
//! - Linux (and other unix): the JSON file [`LINUX_POLICY_PATH`] (snake_case keys);
//! - macOS: the managed preferences plist [`MACOS_POLICY_PATH`] (XML plist, CamelCase keys), as an
//!   MDM profile for the `com.likeness.app` domain installs it;
//! - Windows: the registry key [`WINDOWS_POLICY_KEY`] (CamelCase value names), as the ADMX template
//!   in `policy/windows/` writes it.
//!
//! | JSON key | plist / registry name | meaning |
//! |---|---|---|
//! | `retention_days` | `RetentionDays` | days outputs are kept when the user has not chosen |
//! | `retention_min_days` | `RetentionMinDays` | the shortest retention a user may choose |
//! | `retention_max_days` | `RetentionMaxDays` | the longest retention a user may choose (also shortens existing outputs) |
//! | `models_dir` | `ModelsDir` | a (read-only, shared) models folder used instead of the bundled one |
//! | `data_dir` | `DataDir` | where the library lives, for every user (`~` and `%USERNAME%`/`$USER` expanded) |
//! | `allowed_looks` | `AllowedLooks` | looks users may pick: `studio`, `generative` |
//! | `allowed_export_formats` | `AllowedExportFormats` | output formats: `png`, `jpg`, `webp` |
//! | `allow_model_import` | `AllowModelImport` | whether users may import new models |
//!
//! A policy that cannot be trusted or understood is refused as a whole (never half-applied): a file
//! that is not owned by root or is writable by group or others (or sits in such a folder), malformed
//! JSON / plist, an unknown key, a wrong type or an out-of-range value. The reason is logged to
//! stderr and shown by `likeness policy show`, and the [`Policy::safe_defaults`] apply: retention
//! 30 days and at most 30, the studio look only, model import off, every export format, the
//! bundled models and the usual data folder (paths from a refused file are never followed).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use serde::Serialize;

use crate::error::{CoreError, Result};
use crate::library::DEFAULT_RETENTION_DAYS;

/// The Linux (and other unix) policy file.
pub const LINUX_POLICY_PATH: &str = "/etc/likeness/policy.json";
/// The macOS managed preferences file (installed by an MDM configuration profile).
pub const MACOS_POLICY_PATH: &str = "/Library/Managed Preferences/com.likeness.app.plist";
/// The Windows policy key (written by Group Policy from `policy/windows/likeness.admx`).
pub const WINDOWS_POLICY_KEY: &str = r"HKLM\Software\Policies\Likeness";
/// The subkey of HKEY_LOCAL_MACHINE that [`WINDOWS_POLICY_KEY`] names.
pub const WINDOWS_POLICY_SUBKEY: &str = r"Software\Policies\Likeness";

/// Retention days any setting (policy or user) may take.
pub const RETENTION_LIMIT_DAYS: (u32, u32) = (1, 36_500);
/// Every look the app knows; a policy may allow a subset.
pub const LOOKS: &[&str] = &["studio", "generative"];
/// Every export format the app writes; a policy may allow a subset.
pub const EXPORT_FORMATS: &[&str] = &["png", "jpg", "webp"];
/// Policy files larger than this are refused before reading.
const MAX_POLICY_BYTES: u64 = 64 * 1024;

/// The settings a policy may contain: (JSON key, plist / registry name).
const KEYS: &[(&str, &str)] = &[
    ("retention_days", "RetentionDays"),
    ("retention_min_days", "RetentionMinDays"),
    ("retention_max_days", "RetentionMaxDays"),
    ("models_dir", "ModelsDir"),
    ("data_dir", "DataDir"),
    ("allowed_looks", "AllowedLooks"),
    ("allowed_export_formats", "AllowedExportFormats"),
    ("allow_model_import", "AllowModelImport"),
];

/// What happened when the policy was looked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum PolicyStatus {
    /// No policy at the location: nothing is managed.
    NotFound,
    /// The policy was read and applied.
    Applied,
    /// The policy was refused for `reason`; the safe defaults apply.
    Refused { reason: String },
}

/// One effective setting: its value, whether the machine policy decides it, and from where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Managed<T> {
    pub value: T,
    pub managed: bool,
    /// The policy location (file path or registry key) when managed, with "(safe default ...)"
    /// when the policy was refused.
    pub source: Option<String>,
}

impl<T> Managed<T> {
    fn default_value(value: T) -> Self {
        Managed { value, managed: false, source: None }
    }
    fn managed(value: T, source: &str) -> Self {
        Managed { value, managed: true, source: Some(source.to_owned()) }
    }
}

/// A value read from the Windows registry (the types the ADMX template writes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegValue {
    Dword(u32),
    /// REG_SZ or REG_EXPAND_SZ.
    Sz(String),
    MultiSz(Vec<String>),
    /// Any other registry type (binary, QWORD ...), refused with its type name.
    Other(String),
}

/// The effective machine policy. Serialises as `likeness policy show --json` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Policy {
    /// Where the policy was looked for (file path or registry key).
    pub location: String,
    pub status: PolicyStatus,
    /// Retention used when the user has not chosen one (always within the bounds).
    pub retention_days: Managed<u32>,
    pub retention_min_days: Managed<u32>,
    pub retention_max_days: Managed<u32>,
    /// The models folder to use instead of the bundled one (read-only, shared).
    pub models_dir: Managed<Option<PathBuf>>,
    /// The data folder to use instead of the user's choice.
    pub data_dir: Managed<Option<PathBuf>>,
    pub allowed_looks: Managed<Vec<String>>,
    pub allowed_export_formats: Managed<Vec<String>>,
    pub allow_model_import: Managed<bool>,
}

/// A policy value before validation, whatever its source format.
#[derive(Debug, Clone, PartialEq)]
enum Raw {
    Int(i64),
    Bool(bool),
    Str(String),
    List(Vec<String>),
}

impl Raw {
    fn kind(&self) -> &'static str {
        match self {
            Raw::Int(_) => "a number",
            Raw::Bool(_) => "true/false",
            Raw::Str(_) => "a string",
            Raw::List(_) => "a list",
        }
    }
}

impl Policy {
    /// Nothing managed: the app's own defaults, every feature allowed.
    pub fn unmanaged(location: &str) -> Policy {
        let all = |items: &[&str]| items.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        Policy {
            location: location.to_owned(),
            status: PolicyStatus::NotFound,
            retention_days: Managed::default_value(DEFAULT_RETENTION_DAYS),
            retention_min_days: Managed::default_value(RETENTION_LIMIT_DAYS.0),
            retention_max_days: Managed::default_value(RETENTION_LIMIT_DAYS.1),
            models_dir: Managed::default_value(None),
            data_dir: Managed::default_value(None),
            allowed_looks: Managed::default_value(all(LOOKS)),
            allowed_export_formats: Managed::default_value(all(EXPORT_FORMATS)),
            allow_model_import: Managed::default_value(true),
        }
    }

    /// What applies when the policy at `location` is refused for `reason`: retention 30 days and
    /// at most 30 (nothing kept longer than the app's promise), the studio look only (no
    /// generative models), model import off, every export format, and the bundled models and the
    /// usual data folder (a path from an untrusted file is never followed).
    pub fn safe_defaults(location: &str, reason: &str) -> Policy {
        let source = format!("safe default (the policy {location} was refused)");
        let mut p = Policy::unmanaged(location);
        p.status = PolicyStatus::Refused { reason: reason.to_owned() };
        p.retention_days = Managed::managed(DEFAULT_RETENTION_DAYS, &source);
        p.retention_max_days = Managed::managed(DEFAULT_RETENTION_DAYS, &source);
        p.allowed_looks = Managed::managed(vec!["studio".to_owned()], &source);
        p.allow_model_import = Managed::managed(false, &source);
        p
    }

    /// The policy of this machine, read once per process from this OS's source. A refused policy
    /// is logged (once) to stderr.
    pub fn machine() -> Arc<Policy> {
        static MACHINE: OnceLock<Arc<Policy>> = OnceLock::new();
        MACHINE
            .get_or_init(|| {
                let policy = Policy::load_platform();
                if let PolicyStatus::Refused { reason } = &policy.status {
                    // The one place core logs: an admin needs to see why their policy is ignored.
                    eprintln!(
                        "likeness: the machine policy {} was refused: {reason}; using safe defaults (retention 30 days at most, studio look only, model import off)",
                        policy.location
                    );
                }
                Arc::new(policy)
            })
            .clone()
    }

    /// Reads this OS's policy source (uncached; see [`Policy::machine`]).
    pub fn load_platform() -> Policy {
        #[cfg(windows)]
        {
            Policy::load_windows_registry()
        }
        #[cfg(target_os = "macos")]
        {
            Policy::load_plist_file(Path::new(MACOS_POLICY_PATH))
        }
        #[cfg(all(unix, not(target_os = "macos")))]
        {
            Policy::load_json_file(Path::new(LINUX_POLICY_PATH))
        }
        #[cfg(not(any(unix, windows)))]
        {
            Policy::unmanaged("(no policy source on this platform)")
        }
    }

    /// Reads a JSON policy file (the Linux format). A missing file means no policy.
    pub fn load_json_file(path: &Path) -> Policy {
        let location = path.display().to_string();
        match read_trusted(path) {
            Ok(None) => Policy::unmanaged(&location),
            Ok(Some(bytes)) => Policy::from_json(&bytes, &location),
            Err(reason) => Policy::safe_defaults(&location, &reason),
        }
    }

    /// Reads a managed preferences plist (the macOS format). A missing file means no policy.
    pub fn load_plist_file(path: &Path) -> Policy {
        let location = path.display().to_string();
        match read_trusted(path) {
            Ok(None) => Policy::unmanaged(&location),
            Ok(Some(bytes)) => Policy::from_plist(&bytes, &location),
            Err(reason) => Policy::safe_defaults(&location, &reason),
        }
    }

    /// Parses JSON policy text (snake_case keys); `location` names it in messages.
    pub fn from_json(bytes: &[u8], location: &str) -> Policy {
        Policy::from_raw(raw_from_json(bytes), location)
    }

    /// Parses an XML (or binary) plist whose top level is a dictionary of CamelCase keys.
    pub fn from_plist(bytes: &[u8], location: &str) -> Policy {
        Policy::from_raw(raw_from_plist(bytes), location)
    }

    /// Maps the values of the Windows policy key (CamelCase names). An empty key means no policy.
    /// Numbers and switches are REG_DWORD; folders REG_SZ / REG_EXPAND_SZ; lists REG_MULTI_SZ or a
    /// REG_SZ separated by commas or semicolons.
    pub fn from_registry_values(values: &[(String, RegValue)], location: &str) -> Policy {
        if values.is_empty() {
            return Policy::unmanaged(location);
        }
        Policy::from_raw(raw_from_registry(values), location)
    }

    /// Reads [`WINDOWS_POLICY_KEY`]. A missing key means no policy.
    #[cfg(windows)]
    pub fn load_windows_registry() -> Policy {
        use winreg::enums::{HKEY_LOCAL_MACHINE, KEY_READ};
        use winreg::RegKey;
        let hklm = RegKey::predef(HKEY_LOCAL_MACHINE);
        let key = match hklm.open_subkey_with_flags(WINDOWS_POLICY_SUBKEY, KEY_READ) {
            Ok(key) => key,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Policy::unmanaged(WINDOWS_POLICY_KEY),
            Err(e) => return Policy::safe_defaults(WINDOWS_POLICY_KEY, &format!("cannot open the key: {e}")),
        };
        let mut values = Vec::new();
        for item in key.enum_values() {
            match item {
                Ok((name, value)) => values.push((name, reg_value(&value))),
                Err(e) => return Policy::safe_defaults(WINDOWS_POLICY_KEY, &format!("cannot read a value: {e}")),
            }
        }
        Policy::from_registry_values(&values, WINDOWS_POLICY_KEY)
    }

    fn from_raw(raw: std::result::Result<BTreeMap<String, Raw>, String>, location: &str) -> Policy {
        match raw.and_then(|map| Policy::validate(map, location)) {
            Ok(policy) => policy,
            Err(reason) => Policy::safe_defaults(location, &reason),
        }
    }

    /// Checks every value (the whole policy is refused on the first bad one) and builds the
    /// effective settings. `map` is keyed by the JSON (snake_case) names.
    fn validate(mut map: BTreeMap<String, Raw>, location: &str) -> std::result::Result<Policy, String> {
        let mut p = Policy::unmanaged(location);
        p.status = PolicyStatus::Applied;
        let (lo, hi) = RETENTION_LIMIT_DAYS;
        let days = |key: &str, map: &mut BTreeMap<String, Raw>| -> std::result::Result<Option<u32>, String> {
            match map.remove(key) {
                None => Ok(None),
                Some(Raw::Int(n)) if (i64::from(lo)..=i64::from(hi)).contains(&n) => Ok(u32::try_from(n).ok()),
                Some(Raw::Int(n)) => Err(format!("{key} is {n}, outside {lo} to {hi} days")),
                Some(other) => Err(format!("{key} must be a whole number of days, not {}", other.kind())),
            }
        };
        let default = days("retention_days", &mut map)?;
        let min = days("retention_min_days", &mut map)?;
        let max = days("retention_max_days", &mut map)?;
        let (min_v, max_v) = (min.unwrap_or(lo), max.unwrap_or(hi));
        if min_v > max_v {
            return Err(format!("retention_min_days ({min_v}) is larger than retention_max_days ({max_v})"));
        }
        if let Some(d) = default {
            if !(min_v..=max_v).contains(&d) {
                return Err(format!("retention_days ({d}) is outside retention_min_days..retention_max_days ({min_v} to {max_v})"));
            }
        }
        if let Some(v) = min {
            p.retention_min_days = Managed::managed(v, location);
        }
        if let Some(v) = max {
            p.retention_max_days = Managed::managed(v, location);
        }
        match default {
            Some(d) => p.retention_days = Managed::managed(d, location),
            // The app's default, moved into the bounds; managed when the bounds moved it.
            None => {
                let d = DEFAULT_RETENTION_DAYS.clamp(min_v, max_v);
                if d != DEFAULT_RETENTION_DAYS {
                    p.retention_days = Managed::managed(d, location);
                }
            }
        }
        for (key, slot) in [("models_dir", &mut p.models_dir), ("data_dir", &mut p.data_dir)] {
            match map.remove(key) {
                None => {}
                Some(Raw::Str(s)) => {
                    let path = PathBuf::from(s.trim());
                    if !path.is_absolute() {
                        return Err(format!("{key} must be an absolute path, not '{s}'"));
                    }
                    *slot = Managed::managed(Some(path), location);
                }
                Some(other) => return Err(format!("{key} must be a folder path, not {}", other.kind())),
            }
        }
        for (key, known, slot) in [
            ("allowed_looks", LOOKS, &mut p.allowed_looks),
            ("allowed_export_formats", EXPORT_FORMATS, &mut p.allowed_export_formats),
        ] {
            match map.remove(key) {
                None => {}
                Some(Raw::List(items)) => {
                    let mut list: Vec<String> = Vec::new();
                    for item in items {
                        let norm = item.trim().to_ascii_lowercase();
                        let norm = if norm == "jpeg" { "jpg".to_owned() } else { norm };
                        if !known.contains(&norm.as_str()) {
                            return Err(format!("{key} has '{item}', which is not one of {}", known.join(", ")));
                        }
                        if !list.contains(&norm) {
                            list.push(norm);
                        }
                    }
                    if list.is_empty() {
                        return Err(format!("{key} is empty (allow at least one of {})", known.join(", ")));
                    }
                    *slot = Managed::managed(list, location);
                }
                Some(other) => return Err(format!("{key} must be a list, not {}", other.kind())),
            }
        }
        match map.remove("allow_model_import") {
            None => {}
            Some(Raw::Bool(b)) => p.allow_model_import = Managed::managed(b, location),
            Some(other) => return Err(format!("allow_model_import must be true or false, not {}", other.kind())),
        }
        if let Some(key) = map.keys().next() {
            let known: Vec<&str> = KEYS.iter().map(|(k, _)| *k).collect();
            return Err(format!("unknown setting '{key}' (known: {})", known.join(", ")));
        }
        Ok(p)
    }

    // ---- enforcement ----

    /// Whether anything is managed (a policy applied, or refused with safe defaults).
    pub fn is_managed(&self) -> bool {
        self.status != PolicyStatus::NotFound
    }

    fn where_(&self) -> String {
        match &self.status {
            PolicyStatus::Refused { .. } => format!("{}, refused: safe defaults apply", self.location),
            _ => self.location.clone(),
        }
    }

    fn blocked(&self, what: String) -> CoreError {
        CoreError::Policy(format!("{what} is blocked by your organisation's policy ({}); ask your IT team", self.where_()))
    }

    /// The retention bounds users may choose within.
    pub fn retention_bounds(&self) -> (u32, u32) {
        (self.retention_min_days.value, self.retention_max_days.value)
    }

    /// `days` moved into the bounds.
    pub fn clamp_retention(&self, days: u32) -> u32 {
        let (min, max) = self.retention_bounds();
        days.clamp(min, max)
    }

    /// Refuses a retention outside the bounds, naming the policy.
    pub fn check_retention(&self, days: u32) -> Result<()> {
        let (min, max) = self.retention_bounds();
        if (min..=max).contains(&days) {
            return Ok(());
        }
        if !self.retention_min_days.managed && !self.retention_max_days.managed {
            return Err(CoreError::InvalidInput(format!("retention must be {min} to {max} days, not {days}")));
        }
        Err(CoreError::Policy(format!(
            "a retention of {days} days is blocked by your organisation's policy ({}): choose {min} to {max} days",
            self.where_()
        )))
    }

    /// Refuses a look (`studio`, `generative`) the policy does not allow.
    pub fn check_look(&self, look: &str) -> Result<()> {
        if self.allowed_looks.value.iter().any(|l| l.eq_ignore_ascii_case(look)) {
            return Ok(());
        }
        Err(self.blocked(format!("the {look} look (allowed: {})", self.allowed_looks.value.join(", "))))
    }

    /// Refuses an export / output format (`png`, `jpg` or `jpeg`, `webp`) the policy does not allow.
    pub fn check_export_format(&self, format: &str) -> Result<()> {
        let f = format.trim().to_ascii_lowercase();
        let f = if f == "jpeg" { "jpg".to_owned() } else { f };
        if self.allowed_export_formats.value.contains(&f) {
            return Ok(());
        }
        Err(self.blocked(format!(
            "the {format} format (allowed: {})",
            self.allowed_export_formats.value.join(", ")
        )))
    }

    /// Refuses importing a model when the policy turns import off.
    pub fn check_import(&self) -> Result<()> {
        if self.allow_model_import.value {
            return Ok(());
        }
        Err(self.blocked("importing models".to_owned()))
    }

    /// The managed models folder, if any (use it instead of the bundled models; never write to it).
    pub fn models_dir(&self) -> Option<&Path> {
        self.models_dir.value.as_deref()
    }

    /// The managed data folder, if any, with `~`, `$USER` / `%USERNAME%` expanded for this user.
    pub fn data_dir(&self) -> Option<PathBuf> {
        self.data_dir.value.as_deref().map(expand_user)
    }
}

/// `~` at the start, `$USER` and `%USERNAME%` anywhere: one managed folder per user.
fn expand_user(path: &Path) -> PathBuf {
    let text = path.to_string_lossy();
    let user = std::env::var("USER").or_else(|_| std::env::var("USERNAME")).unwrap_or_default();
    let mut out = text.replace("$USER", &user).replace("%USERNAME%", &user);
    if out == "~" || out.starts_with("~/") {
        if let Some(home) = directories::BaseDirs::new().map(|b| b.home_dir().to_path_buf()) {
            out = format!("{}{}", home.display(), &out[1..]);
        }
    }
    PathBuf::from(out)
}

/// Reads a policy file if it exists and only an administrator can change it. `Ok(None)`: no file.
fn read_trusted(path: &Path) -> std::result::Result<Option<Vec<u8>>, String> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read it: {e}")),
    };
    if !meta.is_file() {
        return Err("it is not a regular file".into());
    }
    if meta.len() > MAX_POLICY_BYTES {
        return Err(format!("it is {} bytes, over the {MAX_POLICY_BYTES} byte limit", meta.len()));
    }
    #[cfg(unix)]
    {
        check_unix_owner(path, &meta, "the file")?;
        if let Some(dir) = path.parent() {
            let dmeta = std::fs::metadata(dir).map_err(|e| format!("cannot read its folder {}: {e}", dir.display()))?;
            check_unix_owner(dir, &dmeta, "its folder")?;
        }
    }
    std::fs::read(path).map(Some).map_err(|e| format!("cannot read it: {e}"))
}

/// Root-owned and not writable by group or others: otherwise a user could rewrite the policy.
#[cfg(unix)]
fn check_unix_owner(path: &Path, meta: &std::fs::Metadata, what: &str) -> std::result::Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    if meta.uid() != 0 {
        return Err(format!("{what} {} is owned by uid {}, not root", path.display(), meta.uid()));
    }
    let mode = meta.mode();
    if mode & 0o002 != 0 {
        return Err(format!("{what} {} is world-writable (mode {:o})", path.display(), mode & 0o7777));
    }
    if mode & 0o020 != 0 && meta.gid() != 0 {
        return Err(format!("{what} {} is writable by group {} (mode {:o})", path.display(), meta.gid(), mode & 0o7777));
    }
    Ok(())
}

fn raw_from_json(bytes: &[u8]) -> std::result::Result<BTreeMap<String, Raw>, String> {
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| format!("it is not valid JSON ({e})"))?;
    let serde_json::Value::Object(obj) = value else {
        return Err("it must be a JSON object like {\"retention_max_days\": 30}".into());
    };
    let mut map = BTreeMap::new();
    for (key, v) in obj {
        if !KEYS.iter().any(|(k, _)| *k == key) {
            let known: Vec<&str> = KEYS.iter().map(|(k, _)| *k).collect();
            return Err(format!("unknown setting '{key}' (known: {})", known.join(", ")));
        }
        let raw = match v {
            serde_json::Value::Bool(b) => Raw::Bool(b),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => Raw::Int(i),
                None => return Err(format!("{key} must be a whole number, not {n}")),
            },
            serde_json::Value::String(s) => Raw::Str(s),
            serde_json::Value::Array(items) => {
                let mut list = Vec::new();
                for item in items {
                    match item {
                        serde_json::Value::String(s) => list.push(s),
                        other => return Err(format!("{key} must list strings, not {other}")),
                    }
                }
                Raw::List(list)
            }
            other => return Err(format!("{key} has an unsupported value {other}")),
        };
        map.insert(key, raw);
    }
    Ok(map)
}

/// The JSON key of a plist / registry name.
fn json_key(camel: &str) -> std::result::Result<&'static str, String> {
    KEYS.iter().find(|(_, c)| c.eq_ignore_ascii_case(camel)).map(|(k, _)| *k).ok_or_else(|| {
        let known: Vec<&str> = KEYS.iter().map(|(_, c)| *c).collect();
        format!("unknown setting '{camel}' (known: {})", known.join(", "))
    })
}

fn raw_from_plist(bytes: &[u8]) -> std::result::Result<BTreeMap<String, Raw>, String> {
    let value = plist::Value::from_reader(std::io::Cursor::new(bytes)).map_err(|e| format!("it is not a valid plist ({e})"))?;
    let plist::Value::Dictionary(dict) = value else {
        return Err("its top level must be a dictionary".into());
    };
    let mut map = BTreeMap::new();
    for (name, v) in dict {
        // Keys MDM adds to every managed domain.
        if name.starts_with("PayloadUUID") || name == "PayloadIdentifier" {
            continue;
        }
        let key = json_key(&name)?;
        let raw = match v {
            plist::Value::Boolean(b) => Raw::Bool(b),
            plist::Value::Integer(i) => match i.as_signed() {
                Some(n) => Raw::Int(n),
                None => return Err(format!("{name} is out of range")),
            },
            plist::Value::String(s) => Raw::Str(s),
            plist::Value::Array(items) => {
                let mut list = Vec::new();
                for item in items {
                    match item {
                        plist::Value::String(s) => list.push(s),
                        _ => return Err(format!("{name} must list strings")),
                    }
                }
                Raw::List(list)
            }
            _ => return Err(format!("{name} has an unsupported plist type")),
        };
        map.insert(key.to_owned(), raw);
    }
    Ok(map)
}

fn raw_from_registry(values: &[(String, RegValue)]) -> std::result::Result<BTreeMap<String, Raw>, String> {
    let mut map = BTreeMap::new();
    for (name, v) in values {
        let key = json_key(name)?;
        let is_list = matches!(key, "allowed_looks" | "allowed_export_formats");
        let raw = match v {
            RegValue::Dword(n) if key == "allow_model_import" => match n {
                0 => Raw::Bool(false),
                1 => Raw::Bool(true),
                _ => return Err(format!("{name} must be 0 or 1, not {n}")),
            },
            RegValue::Dword(n) => Raw::Int(i64::from(*n)),
            RegValue::Sz(s) if is_list => {
                Raw::List(s.split([',', ';']).map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect())
            }
            RegValue::Sz(s) => Raw::Str(s.clone()),
            RegValue::MultiSz(items) if is_list => Raw::List(items.clone()),
            RegValue::MultiSz(_) => return Err(format!("{name} must not be a REG_MULTI_SZ list")),
            RegValue::Other(t) => return Err(format!("{name} has the unsupported registry type {t}")),
        };
        map.insert(key.to_owned(), raw);
    }
    Ok(map)
}

#[cfg(windows)]
fn reg_value(value: &winreg::RegValue) -> RegValue {
    use winreg::enums::RegType;
    let utf16 = |bytes: &[u8]| -> String {
        let units: Vec<u16> = bytes.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
        String::from_utf16_lossy(&units)
    };
    match value.vtype {
        RegType::REG_DWORD => match <[u8; 4]>::try_from(value.bytes.as_ref()) {
            Ok(b) => RegValue::Dword(u32::from_le_bytes(b)),
            Err(_) => RegValue::Other("REG_DWORD of the wrong size".into()),
        },
        RegType::REG_SZ | RegType::REG_EXPAND_SZ => RegValue::Sz(utf16(&value.bytes).trim_end_matches('\0').to_owned()),
        RegType::REG_MULTI_SZ => RegValue::MultiSz(
            utf16(&value.bytes).split('\0').filter(|s| !s.is_empty()).map(str::to_owned).collect(),
        ),
        ref other => RegValue::Other(format!("{other:?}")),
    }
}
