//! `likeness models import | list | verify` on the tiny real-layout models of
//! tests/fixtures/sd_import (made by tools/fixtures/sd_import.py).

use std::path::{Path, PathBuf};

use crate::support::{json, repo, run, stderr, stdout};

fn fixture(name: &str) -> PathBuf {
    repo().join("tests/fixtures/sd_import").join(name)
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf8")
}

fn imported(data: &Path) -> Vec<String> {
    let mut v: Vec<String> = match std::fs::read_dir(data.join("models/imported")) {
        Ok(rd) => rd.map(|e| e.expect("entry").file_name().to_string_lossy().into_owned()).collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

fn row<'a>(list: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    list["models"].as_array().expect("models").iter().find(|m| m["id"] == id).unwrap_or_else(|| panic!("no {id} in {list}"))
}

#[test]
fn import_list_verify_a_diffusers_folder_and_a_single_file() {
    let data = tempfile::tempdir().expect("tempdir");
    let o = run(&["models", "import", s(&fixture("sd15_tiny")), "--json"], data.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let v = json(&o);
    assert_eq!((v["id"].as_str(), v["arch"].as_str(), v["layout"].as_str()), (Some("sd15_tiny"), Some("sd15"), Some("diffusers")));
    assert!(stderr(&o).contains("warning") && stderr(&o).contains("not a known official file"), "{}", stderr(&o));

    let o = run(&["models", "import", s(&fixture("sdxl_tiny.safetensors")), "--id", "xl"], data.path());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("imported 'xl': sdxl (single-file, f16)"), "{}", stdout(&o));

    let o = run(&["models", "list", "--json"], data.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let list = json(&o);
    assert_eq!(row(&list, "sd15_tiny")["state"], "ok");
    assert_eq!(row(&list, "xl")["arch"], "sdxl");
    assert_eq!(row(&list, "blazeface-front-128")["bundled"], true);

    let o = run(&["models", "verify"], data.path());
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let o = run(&["models", "verify", "xl"], data.path());
    assert!(o.status.success() && stdout(&o).contains("xl") && !stdout(&o).contains("blazeface"), "{}", stdout(&o));
    let o = run(&["models", "verify", "nope"], data.path());
    assert!(!o.status.success());

    // Again: nothing copied twice.
    let o = run(&["models", "import", s(&fixture("sd15_tiny"))], data.path());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("already imported as 'sd15_tiny'"), "{}", stdout(&o));
    assert_eq!(imported(data.path()), vec!["sd15_tiny", "xl"]);

    // Damage a copied file: verify names it and fails.
    let w = data.path().join("models/imported/xl/sdxl_tiny.safetensors");
    let mut bytes = std::fs::read(&w).expect("read");
    let n = bytes.len();
    bytes[n - 3] ^= 0xFF;
    std::fs::write(&w, &bytes).expect("write");
    let o = run(&["models", "verify", "xl"], data.path());
    assert!(!o.status.success());
    assert!(stdout(&o).contains("corrupt"), "{}", stdout(&o));
}

#[test]
fn remove_takes_an_imported_model_away_and_says_what_an_unused_request_was() {
    let data = tempfile::tempdir().expect("tempdir");
    let o = run(&["models", "import", s(&fixture("sd15_tiny"))], data.path());
    assert!(o.status.success(), "{}", stderr(&o));

    // The same files under another id, or as a link: nothing imported twice, and the unused part said.
    let o = run(&["models", "import", s(&fixture("sd15_tiny")), "--id", "other", "--link"], data.path());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("--id other was not used") && stderr(&o).contains("--link was not used"), "{}", stderr(&o));
    assert_eq!(imported(data.path()), vec!["sd15_tiny"]);

    // Without --yes nothing happens; bundled and unknown models are refused by name.
    let o = run(&["models", "remove", "sd15_tiny"], data.path());
    assert!(!o.status.success() && stderr(&o).contains("--yes"), "{}", stderr(&o));
    assert_eq!(imported(data.path()), vec!["sd15_tiny"]);
    let o = run(&["models", "remove", "blazeface-front-128", "--yes"], data.path());
    assert!(!o.status.success() && stderr(&o).contains("cannot be removed"), "{}", stderr(&o));
    let o = run(&["models", "remove", "nope", "--yes"], data.path());
    assert!(!o.status.success() && stderr(&o).contains("nope"), "{}", stderr(&o));

    let o = run(&["models", "remove", "sd15_tiny", "--yes"], data.path());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("removed 'sd15_tiny'"), "{}", stdout(&o));
    assert!(imported(data.path()).is_empty());
    let o = run(&["models", "list", "--json"], data.path());
    assert!(json(&o)["models"].as_array().expect("models").iter().all(|m| m["id"] != "sd15_tiny"));
    // It can be imported again.
    let o = run(&["models", "import", s(&fixture("sd15_tiny"))], data.path());
    assert!(o.status.success() && stdout(&o).contains("imported 'sd15_tiny'"), "{}", stdout(&o));
}

#[test]
fn bad_imports_fail_clearly_and_leave_nothing() {
    let data = tempfile::tempdir().expect("tempdir");
    let dir = tempfile::tempdir().expect("tempdir");
    let ckpt = dir.path().join("model.ckpt");
    std::fs::write(&ckpt, b"PK\x03\x04 pickle").expect("write");
    let o = run(&["models", "import", s(&ckpt)], data.path());
    assert!(!o.status.success());
    assert!(stderr(&o).contains("model.ckpt") && stderr(&o).contains("convert it to .safetensors"), "{}", stderr(&o));

    let good = std::fs::read(fixture("sd15_inpaint_tiny.safetensors")).expect("read");
    let cut = dir.path().join("cut.safetensors");
    std::fs::write(&cut, &good[..good.len() / 2]).expect("write");
    let o = run(&["models", "import", s(&cut)], data.path());
    assert!(!o.status.success());
    assert!(stderr(&o).contains("cut.safetensors is truncated"), "{}", stderr(&o));

    let o = run(&["models", "import", s(&fixture("vae_only.safetensors"))], data.path());
    assert!(!o.status.success());
    assert!(stderr(&o).contains("only a VAE"), "{}", stderr(&o));

    let o = run(&["models", "import", s(&fixture("sd15_tiny")), "--arch", "sd3"], data.path());
    assert!(!o.status.success());
    assert!(stderr(&o).contains("unknown architecture 'sd3'"), "{}", stderr(&o));
    assert!(imported(data.path()).is_empty(), "{:?}", imported(data.path()));

    // A killed import's temporary folder is removed by the next start.
    let mut child = std::process::Command::new("true").spawn().expect("spawn");
    let dead = child.id();
    child.wait().expect("wait");
    let leftover = data.path().join(format!("models/imported/.tmp-{dead}-0"));
    std::fs::create_dir_all(&leftover).expect("mkdir");
    let o = run(&["models", "list"], data.path());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!leftover.exists());
}

#[test]
fn linked_model_is_checked_where_it_is() {
    let data = tempfile::tempdir().expect("tempdir");
    let shared = tempfile::tempdir().expect("tempdir");
    let file = shared.path().join("inpaint.safetensors");
    std::fs::copy(fixture("sd15_inpaint_tiny.safetensors"), &file).expect("copy");
    let o = run(&["models", "import", s(&file), "--link", "--json"], data.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let v = json(&o);
    assert_eq!(v["arch"], "sd15-inpaint");
    assert!(v["linked_source"].as_str().expect("linked").ends_with(shared.path().file_name().expect("name").to_str().expect("utf8")));
    // Only the record is in the data folder.
    let folder = data.path().join("models/imported/inpaint");
    assert_eq!(std::fs::read_dir(&folder).expect("ls").count(), 1);

    std::fs::write(&file, b"replaced").expect("write");
    let o = run(&["models", "list", "--json"], data.path());
    assert!(!o.status.success());
    let list = json(&o);
    assert_eq!(row(&list, "inpaint")["state"], "corrupt");
    assert!(row(&list, "inpaint")["detail"].as_str().expect("detail").contains("inpaint.safetensors"));
}

/// A checkpoint of `extra` more bytes than the tiny one: the same header plus one large tensor,
/// written as a sparse file (reading it is fast, its copy is real).
fn big_checkpoint(path: &Path, extra: u64) {
    let tiny = std::fs::read(fixture("sd15_inpaint_tiny.safetensors")).expect("read");
    let n = u64::from_le_bytes(tiny[..8].try_into().expect("8 bytes")) as usize;
    let mut header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&tiny[8..8 + n]).expect("header");
    let end = tiny.len() - 8 - n;
    header.insert(
        "model.diffusion_model.extra.weight".into(),
        serde_json::json!({"dtype": "F16", "shape": [extra / 2], "data_offsets": [end, end as u64 + extra]}),
    );
    let h = serde_json::to_vec(&header).expect("json");
    let mut bytes = (h.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&h);
    bytes.extend_from_slice(&tiny[8 + n..]);
    std::fs::write(path, &bytes).expect("write");
    std::fs::File::options().write(true).open(path).expect("open").set_len(bytes.len() as u64 + extra).expect("grow");
}

/// `kill -9` while the copy runs: no model appears, and the next start removes the half copy.
#[test]
fn killed_import_leaves_no_model() {
    let data = tempfile::tempdir().expect("tempdir");
    let src = tempfile::tempdir().expect("tempdir");
    let big = src.path().join("big.safetensors");
    big_checkpoint(&big, 256 << 20);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_likeness"))
        .args(["models", "import", s(&big)])
        .env("LIKENESS_DATA_DIR", data.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let root = data.path().join("models/imported");
    let start = std::time::Instant::now();
    // Kill as soon as the copy has started.
    let tmp = loop {
        let found = std::fs::read_dir(&root).ok().and_then(|rd| {
            rd.filter_map(|e| e.ok()).map(|e| e.path()).find(|p| p.join("big.safetensors").exists())
        });
        if let Some(t) = found {
            break t;
        }
        assert!(child.try_wait().expect("wait").is_none(), "the import ended before it could be killed");
        assert!(start.elapsed() < std::time::Duration::from_secs(60), "the copy never started");
        std::thread::sleep(std::time::Duration::from_millis(1));
    };
    child.kill().expect("kill");
    child.wait().expect("wait");
    assert!(tmp.file_name().expect("name").to_string_lossy().starts_with(".tmp-"));
    assert!(tmp.exists(), "the half copy is where the killed process left it");
    let o = run(&["models", "list", "--json"], data.path());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!json(&o)["models"].as_array().expect("models").iter().any(|m| m["id"] == "big"));
    assert!(imported(data.path()).is_empty(), "{:?}", imported(data.path()));
}
