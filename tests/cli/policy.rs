//! The machine policy as the real binary reads it: `likeness policy show` with no policy, and (as
//! root) with a real /etc/likeness/policy.json, then a refused one; whatever was there is restored.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::support::{json, run, stderr, stdout};

const POLICY: &str = "/etc/likeness/policy.json";

/// Puts back the policy folder and file as they were, even when an assertion fails.
struct Restore {
    dir_existed: bool,
    file: Option<(Vec<u8>, u32)>,
}

impl Drop for Restore {
    fn drop(&mut self) {
        let path = Path::new(POLICY);
        match &self.file {
            Some((bytes, mode)) => {
                let _ = std::fs::write(path, bytes);
                let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(*mode));
            }
            None => {
                let _ = std::fs::remove_file(path);
            }
        }
        if !self.dir_existed {
            let _ = std::fs::remove_dir(path.parent().unwrap_or(path));
        }
    }
}

fn is_root() -> bool {
    let probe = tempfile::tempfile().expect("temp file");
    probe.metadata().map(|m| m.uid() == 0).unwrap_or(false)
}

#[test]
fn policy_show_reads_the_real_machine_policy_file() {
    let data = tempfile::tempdir().unwrap();
    if !is_root() {
        // Without root the file cannot be written; the binary still reports what it finds.
        let out = run(&["policy", "show", "--json"], data.path());
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(json(&out)["location"], POLICY);
        return;
    }
    let path = PathBuf::from(POLICY);
    let dir = path.parent().unwrap().to_path_buf();
    let _restore = Restore {
        dir_existed: dir.is_dir(),
        file: std::fs::read(&path).ok().map(|b| (b, std::fs::metadata(&path).map(|m| m.mode()).unwrap_or(0o644))),
    };
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();

    // Settings other tests running beside this one do not notice (they never import models or keep
    // outputs for ten years).
    std::fs::write(&path, r#"{"retention_max_days": 3650, "allow_model_import": false, "allowed_looks": ["studio", "generative"]}"#)
        .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = run(&["policy", "show", "--json"], data.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let v = json(&out);
    assert_eq!(v["status"]["state"], "applied", "{v}");
    assert_eq!(v["retention_max_days"]["value"], 3650);
    assert_eq!(v["retention_max_days"]["managed"], true);
    assert_eq!(v["retention_max_days"]["source"], POLICY);
    assert_eq!(v["allow_model_import"]["value"], false);
    assert_eq!(v["retention_min_days"]["managed"], false);
    assert_eq!(v["allowed_export_formats"]["value"], serde_json::json!(["png", "jpg", "webp"]));
    let text = run(&["policy", "show"], data.path());
    let text = stdout(&text);
    assert!(text.contains("(applied)") && text.contains(&format!("managed by {POLICY}")), "{text}");

    // World-writable: refused, logged with its reason, safe defaults shown as such.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = run(&["policy", "show", "--json"], data.path());
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let v = json(&out);
    assert_eq!(v["status"]["state"], "refused", "{v}");
    assert!(v["status"]["reason"].as_str().unwrap_or("").contains("world-writable"), "{v}");
    assert!(stderr(&out).contains("was refused") && stderr(&out).contains("safe defaults"), "{}", stderr(&out));
    assert_eq!(v["retention_max_days"]["value"], 30);
    assert_eq!(v["allowed_looks"]["value"], serde_json::json!(["studio"]));
}
