//! `models import` on tiny real-layout models (tests/fixtures/sd_import, made by
//! tools/fixtures/sd_import.py) in both layouts, and the ways an import must fail cleanly.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use likeness_core::import::{
    imported_dir, Arch, DetectError, DiffusionFiles, ImportError, ImportOptions, ImportStep, Layout, RecordKind, RECORD_FILE,
};
use likeness_core::models::{ModelState, ModelStore};
use sha2::{Digest, Sha256};

use crate::common::{copy_dir, hf_cache, tmp};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/sd_import").join(name)
}

fn repo_models() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models")
}

/// A models folder with one non-bundled manifest model whose file is `weights`, plus `known`
/// entries; and a data folder for the imports.
struct Env {
    _dir: tempfile::TempDir,
    root: PathBuf,
    store: ModelStore,
}

impl Env {
    fn new(weights: &[u8], known: &str) -> Env {
        let dir = tmp();
        let root = dir.path().to_path_buf();
        let models = root.join("models-dir");
        std::fs::create_dir(&models).unwrap();
        let sha = hex::encode(Sha256::digest(weights));
        let manifest = format!(
            "[[model]]\nid = \"gfpgan-v1.4\"\ntask = \"face-restoration\"\nbundled = false\nlicense = \"Apache-2.0\"\nsource = \"https://github.com/TencentARC/GFPGAN/releases\"\n[[model.files]]\npath = \"GFPGANv1.4.pth\"\nsha256 = \"{sha}\"\nbytes = {}\n",
            weights.len()
        );
        std::fs::write(models.join("manifest.toml"), manifest).unwrap();
        std::fs::write(models.join("known_diffusion.toml"), known).unwrap();
        let store = ModelStore::open(&models).unwrap().with_imported_dir(imported_dir(&root.join("data")));
        Env { _dir: dir, root, store }
    }

    fn plain() -> Env {
        Env::new(b"not a real gfpgan", "")
    }

    fn imported(&self) -> PathBuf {
        imported_dir(&self.root.join("data"))
    }

    /// Names in the imported folder (models and leftovers).
    fn entries(&self) -> Vec<String> {
        let mut v: Vec<String> = match std::fs::read_dir(self.imported()) {
            Ok(rd) => rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect(),
            Err(_) => Vec::new(),
        };
        v.sort();
        v
    }

    fn import(&self, path: &Path, opts: &ImportOptions) -> Result<likeness_core::import::ImportOutcome, ImportError> {
        self.store.import(path, opts, &mut |_, _, _: &str| true)
    }
}

fn sha_of(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

#[test]
fn diffusers_sd15_is_copied_recorded_and_found() {
    let env = Env::plain();
    let out = env.import(&fixture("sd15_tiny"), &ImportOptions::default()).unwrap();
    assert_eq!(out.id, "sd15_tiny");
    assert_eq!(out.arch.as_deref(), Some("sd15"));
    assert_eq!(out.layout.as_deref(), Some("diffusers"));
    assert_eq!(out.dtype.as_deref(), Some("f32"));
    assert_eq!(out.official, "unknown");
    assert!(!out.already_imported);
    assert!(out.warnings.iter().any(|w| w.contains("not a known official file")), "{:?}", out.warnings);
    assert_eq!(env.entries(), vec!["sd15_tiny"]);

    let m = env.store.diffusion("sd15_tiny").unwrap();
    assert_eq!((m.arch, m.layout), (Arch::Sd15, Layout::Diffusers));
    let DiffusionFiles::Diffusers { root, unet, vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, scheduler } = &m.files else {
        panic!("{:?}", m.files)
    };
    assert!(root.starts_with(env.imported()));
    assert_eq!(unet.weights.len(), 1);
    for w in unet.weights.iter().chain(&vae.weights).chain(&text_encoder.weights) {
        assert!(w.is_file(), "{}", w.display());
    }
    assert_eq!(sha_of(&unet.weights[0]), sha_of(&fixture("sd15_tiny/unet/diffusion_pytorch_model.safetensors")));
    assert!(unet.config.as_ref().unwrap().is_file());
    assert!(text_encoder_2.is_none() && tokenizer_2.is_none());
    assert!(tokenizer.as_ref().unwrap().join("vocab.json").is_file());
    assert!(scheduler.as_ref().unwrap().join("scheduler_config.json").is_file());
    assert!(root.join("model_index.json").is_file());

    let rec = env.store.record("sd15_tiny").unwrap();
    assert_eq!(rec.kind, RecordKind::Diffusion);
    assert!(rec.files.iter().all(|f| f.sha256.len() == 64 && f.bytes > 0));
    let row = env.store.list_models(true).into_iter().find(|r| r.id == "sd15_tiny").unwrap();
    assert_eq!(row.state, ModelState::Ok);
    assert!(row.imported && !row.bundled);
}

#[test]
fn single_files_and_sdxl_are_told_apart() {
    let env = Env::plain();
    let out = env.import(&fixture("sd15_inpaint_tiny.safetensors"), &ImportOptions::default()).unwrap();
    assert_eq!(out.arch.as_deref(), Some("sd15-inpaint"));
    let m = env.store.diffusion(&out.id).unwrap();
    assert_eq!((m.arch, m.layout), (Arch::Sd15Inpaint, Layout::SingleFile));
    let DiffusionFiles::SingleFile { path } = &m.files else { panic!("{:?}", m.files) };
    assert_eq!(sha_of(path), sha_of(&fixture("sd15_inpaint_tiny.safetensors")));
    assert_eq!(env.store.record(&out.id).unwrap().task, "inpainting");

    let out = env.import(&fixture("sdxl_tiny.safetensors"), &ImportOptions::default()).unwrap();
    let m = env.store.diffusion(&out.id).unwrap();
    assert_eq!((m.arch, m.layout, m.dtype.as_str()), (Arch::Sdxl, Layout::SingleFile, "f16"));

    let out = env.import(&fixture("sdxl_tiny"), &ImportOptions::default()).unwrap();
    let m = env.store.diffusion(&out.id).unwrap();
    assert_eq!((m.arch, m.layout, m.dtype.as_str()), (Arch::Sdxl, Layout::Diffusers, "f16"));
    let DiffusionFiles::Diffusers { text_encoder_2, tokenizer_2, unet, .. } = &m.files else { panic!() };
    assert!(text_encoder_2.as_ref().unwrap().weights[0].ends_with("text_encoder_2/model.fp16.safetensors"));
    assert!(tokenizer_2.is_some());
    assert!(unet.weights[0].ends_with("unet/diffusion_pytorch_model.fp16.safetensors"));
}

#[test]
fn sd_turbo_needs_a_reason_beyond_shapes() {
    let env = Env::plain();
    // Its folder name and model_index.json say SD-Turbo.
    let out = env.import(&fixture("sd_turbo_tiny"), &ImportOptions::default()).unwrap();
    assert_eq!(out.arch.as_deref(), Some("sd-turbo"));
    assert!(out.warnings.iter().any(|w| w.contains("SD-Turbo")), "{:?}", out.warnings);

    // The same weights under a neutral name, without _name_or_path: refused, nothing left.
    let src = env.root.join("mystery");
    copy_dir(&fixture("sd_turbo_tiny"), &src);
    std::fs::write(src.join("model_index.json"), "{\"_class_name\": \"StableDiffusionPipeline\"}").unwrap();
    let err = env.import(&src, &ImportOptions::default()).unwrap_err();
    assert!(matches!(err, ImportError::AmbiguousSd2 { .. }), "{err}");
    assert!(err.to_string().contains("--arch sd-turbo"), "{err}");
    assert_eq!(env.entries(), vec!["sd_turbo_tiny"]);

    // The user's word decides; a wrong word is refused.
    let err = env.import(&src, &ImportOptions { arch: Some(Arch::Sd15), ..Default::default() }).unwrap_err();
    assert!(matches!(err, ImportError::ArchMismatch { .. }), "{err}");
    let opts = ImportOptions { arch: Some(Arch::SdTurbo), id: Some("turbo2".into()), ..Default::default() };
    // Same files as the first import except model_index.json: a different model, imported.
    let out = env.import(&src, &opts).unwrap();
    assert_eq!((out.id.as_str(), out.arch.as_deref()), ("turbo2", Some("sd-turbo")));

    // A known sha256 decides too.
    let unet_sha = sha_of(&src.join("unet/diffusion_pytorch_model.safetensors"));
    let known = format!("[[known]]\nname = \"sd_turbo_unet\"\nsha256 = \"{unet_sha}\"\narch = \"sd-turbo\"\nlicense = \"STABILITY AI NON-COMMERCIAL\"\n");
    let env2 = Env::new(b"x", &known);
    let out = env2.import(&src, &ImportOptions::default()).unwrap();
    assert_eq!((out.arch.as_deref(), out.official.as_str()), (Some("sd-turbo"), "sd_turbo_unet"));
    assert!(out.warnings.is_empty(), "{:?}", out.warnings);
}

#[test]
fn known_official_file_is_named() {
    let f = fixture("sd15_inpaint_tiny.safetensors");
    let known = format!("[[known]]\nname = \"tiny-inpaint.safetensors\"\nsha256 = \"{}\"\narch = \"sd15-inpaint\"\nlicense = \"CreativeML-OpenRAIL-M\"\n", sha_of(&f));
    let env = Env::new(b"x", &known);
    let out = env.import(&f, &ImportOptions::default()).unwrap();
    assert_eq!(out.official, "tiny-inpaint.safetensors");
    assert!(out.warnings.is_empty());
    assert_eq!(env.store.record(&out.id).unwrap().license, "CreativeML-OpenRAIL-M");
    // A known hash whose architecture disagrees with the tensors is an error in the table, said so.
    let bad = known.replace("sd15-inpaint", "sdxl");
    let env = Env::new(b"x", &bad);
    let err = env.import(&f, &ImportOptions::default()).unwrap_err();
    assert!(err.to_string().contains("its tensors say sd15-inpaint"), "{err}");
    assert!(env.entries().is_empty(), "{:?}", env.entries());
}

#[test]
fn the_bundled_known_table_parses() {
    let store = ModelStore::open(&repo_models()).unwrap();
    let known = store.known_diffusion().unwrap();
    assert!(known.known.iter().any(|k| k.name == "v1-5-pruned-emaonly.safetensors"));
    for k in &known.known {
        assert_eq!(k.sha256.len(), 64);
        assert!(k.arch.parse::<Arch>().is_ok(), "{}", k.arch);
    }
}

#[test]
fn second_import_is_not_a_duplicate() {
    let env = Env::plain();
    let first = env.import(&fixture("sd15_tiny"), &ImportOptions::default()).unwrap();
    let again = env.import(&fixture("sd15_tiny"), &ImportOptions::default()).unwrap();
    assert!(again.already_imported);
    assert_eq!(again.id, first.id);
    let renamed = env.import(&fixture("sd15_tiny"), &ImportOptions { id: Some("other".into()), ..Default::default() }).unwrap();
    assert!(renamed.already_imported);
    assert_eq!(env.entries(), vec!["sd15_tiny"]);
    // A different model asking for a taken id is refused; without --id it gets a free one.
    let err = env
        .import(&fixture("sd15_inpaint_tiny.safetensors"), &ImportOptions { id: Some("sd15_tiny".into()), ..Default::default() })
        .unwrap_err();
    assert!(matches!(err, ImportError::IdTaken { .. }), "{err}");
    let err = env.import(&fixture("sd15_tiny"), &ImportOptions { id: Some("../x".into()), ..Default::default() }).unwrap_err();
    assert!(matches!(err, ImportError::BadId { .. }), "{err}");
}

fn assert_clean(env: &Env) {
    assert!(env.entries().is_empty(), "left behind: {:?}", env.entries());
}

#[test]
fn bad_files_are_refused_with_a_reason_and_leave_nothing() {
    let env = Env::plain();
    let dir = env.root.join("bad");
    std::fs::create_dir(&dir).unwrap();
    let good = std::fs::read(fixture("sd15_inpaint_tiny.safetensors")).unwrap();

    // Corrupt header: the JSON is damaged.
    let mut corrupt = good.clone();
    for b in corrupt.iter_mut().skip(8).take(16) {
        *b = b'#';
    }
    let p = dir.join("corrupt.safetensors");
    std::fs::write(&p, &corrupt).unwrap();
    let err = env.import(&p, &ImportOptions::default()).unwrap_err();
    assert!(matches!(err, ImportError::NotSafetensors { .. }), "{err}");
    assert!(err.to_string().contains("corrupt.safetensors"), "{err}");

    // Truncated: the download stopped early.
    let p = dir.join("truncated.safetensors");
    std::fs::write(&p, &good[..good.len() - 1000]).unwrap();
    let err = env.import(&p, &ImportOptions::default()).unwrap_err();
    assert!(matches!(err, ImportError::Truncated { .. }), "{err}");
    assert!(err.to_string().contains("truncated"), "{err}");
    let p = dir.join("header-only.safetensors");
    std::fs::write(&p, &good[..100]).unwrap();
    assert!(matches!(env.import(&p, &ImportOptions::default()), Err(ImportError::Truncated { .. })));

    // Wrong architecture: a bare VAE, a face detector.
    let err = env.import(&fixture("vae_only.safetensors"), &ImportOptions::default()).unwrap_err();
    assert!(matches!(err, ImportError::Detect { err: DetectError::Partial { what: "a VAE" }, .. }), "{err}");
    let err = env.import(&repo_models().join("blazeface_front_128.safetensors"), &ImportOptions::default()).unwrap_err();
    assert!(matches!(err, ImportError::Detect { err: DetectError::NotStableDiffusion(_), .. }), "{err}");
    // A diffusers folder without its VAE.
    let partial = env.root.join("partial");
    copy_dir(&fixture("sd15_tiny"), &partial);
    std::fs::remove_dir_all(partial.join("vae")).unwrap();
    let err = env.import(&partial, &ImportOptions::default()).unwrap_err();
    assert!(err.to_string().contains("vae/"), "{err}");

    // A pickle: refused unread.
    let p = dir.join("model.ckpt");
    std::fs::write(&p, b"PK\x03\x04 a pickle").unwrap();
    let err = env.import(&p, &ImportOptions::default()).unwrap_err();
    assert!(matches!(err, ImportError::Pickle { .. }), "{err}");
    assert!(err.to_string().contains("safetensors") && err.to_string().contains("run code"), "{err}");
    // A pickle renamed to .safetensors.
    let p = dir.join("renamed.safetensors");
    std::fs::write(&p, b"PK\x03\x04\x14\x00\x00\x00 a zip").unwrap();
    let err = env.import(&p, &ImportOptions::default()).unwrap_err();
    assert!(err.to_string().contains("pickle"), "{err}");
    // A diffusers folder with .bin weights only.
    let bins = env.root.join("bins");
    copy_dir(&fixture("sd15_tiny"), &bins);
    std::fs::rename(bins.join("unet/diffusion_pytorch_model.safetensors"), bins.join("unet/diffusion_pytorch_model.bin")).unwrap();
    assert!(matches!(env.import(&bins, &ImportOptions::default()), Err(ImportError::Pickle { .. })));

    let err = env.import(&dir.join("nope.safetensors"), &ImportOptions::default()).unwrap_err();
    assert!(matches!(err, ImportError::NotFound { .. }), "{err}");
    assert_clean(&env);
}

#[test]
fn links_leading_outside_the_folder_are_refused() {
    let env = Env::plain();
    let outside = env.root.join("outside");
    std::fs::create_dir(&outside).unwrap();
    let src = env.root.join("linked-model");
    copy_dir(&fixture("sd15_tiny"), &src);
    let unet = src.join("unet/diffusion_pytorch_model.safetensors");
    std::fs::rename(&unet, outside.join("unet.safetensors")).unwrap();
    std::os::unix::fs::symlink(outside.join("unet.safetensors"), &unet).unwrap();
    let err = env.import(&src, &ImportOptions::default()).unwrap_err();
    assert!(matches!(err, ImportError::LinkOutside { .. }), "{err}");
    // A link inside the folder is fine.
    std::fs::rename(outside.join("unet.safetensors"), src.join("unet/real.bin.data")).unwrap();
    std::fs::remove_file(&unet).unwrap();
    std::os::unix::fs::symlink("real.bin.data", &unet).unwrap();
    let out = env.import(&src, &ImportOptions::default()).unwrap();
    assert_eq!(out.arch.as_deref(), Some("sd15"));

    // A single file given as a link to somewhere else.
    let env = Env::plain();
    let single = env.root.join("single");
    std::fs::create_dir(&single).unwrap();
    std::os::unix::fs::symlink(fixture("sd15_inpaint_tiny.safetensors"), single.join("m.safetensors")).unwrap();
    let err = env.import(&single.join("m.safetensors"), &ImportOptions::default()).unwrap_err();
    assert!(matches!(err, ImportError::LinkOutside { .. }), "{err}");
    assert_clean(&env);
}

#[test]
fn hugging_face_cache_downloads_import_from_the_repository_or_a_snapshot() {
    let env = Env::plain();
    let repo = env.root.join("hub/models--someone--sd15_tiny");
    hf_cache(&fixture("sd15_tiny"), &repo, "0123abcd");
    let snapshot = repo.join("snapshots/0123abcd");
    assert!(std::fs::symlink_metadata(snapshot.join("unet/diffusion_pytorch_model.safetensors")).unwrap().file_type().is_symlink());

    // The repository folder: the snapshot refs/main names, links into its own blobs followed.
    let out = env.import(&repo, &ImportOptions::default()).unwrap();
    assert_eq!((out.id.as_str(), out.arch.as_deref()), ("sd15_tiny", Some("sd15")));
    env.store.diffusion("sd15_tiny").expect("the copy loads");

    // A snapshot folder: named after the repository, not the commit hash; linked where it is, it
    // loads through the snapshot's links.
    let env2 = Env::plain();
    assert_eq!(env2.import(&snapshot, &ImportOptions::default()).unwrap().id, "sd15_tiny");
    let env3 = Env::plain();
    let out = env3.import(&snapshot, &ImportOptions { link: true, ..Default::default() }).unwrap();
    assert_eq!((out.id.as_str(), out.arch.as_deref()), ("sd15_tiny", Some("sd15")));
    env3.store.diffusion("sd15_tiny").expect("the linked snapshot loads");

    // A link in a snapshot that leaves the repository is still refused.
    let outside = env.root.join("elsewhere.safetensors");
    let vae = snapshot.join("vae/diffusion_pytorch_model.safetensors");
    std::fs::copy(&vae, &outside).unwrap();
    std::fs::remove_file(&vae).unwrap();
    std::os::unix::fs::symlink(&outside, &vae).unwrap();
    let err = env2.import(&snapshot, &ImportOptions { id: Some("escape".into()), ..Default::default() }).unwrap_err();
    assert!(matches!(err, ImportError::LinkOutside { .. }), "{err}");

    // The same layout under a folder that is not a cache repository: links out of the folder refused.
    let fake = env2.root.join("not-a-cache");
    hf_cache(&fixture("sd15_tiny"), &fake, "rev");
    let err = env2.import(&fake.join("snapshots/rev"), &ImportOptions::default()).unwrap_err();
    assert!(matches!(err, ImportError::LinkOutside { .. }), "{err}");

    // A single-file checkpoint in a snapshot: a link into the repository's blobs.
    let single = env2.root.join("models--someone--inpaint");
    let one = env2.root.join("one-file");
    std::fs::create_dir(&one).unwrap();
    std::fs::copy(fixture("sd15_inpaint_tiny.safetensors"), one.join("inpaint.safetensors")).unwrap();
    hf_cache(&one, &single, "r1");
    let out = env2.import(&single.join("snapshots/r1/inpaint.safetensors"), &ImportOptions::default()).unwrap();
    assert_eq!(out.arch.as_deref(), Some("sd15-inpaint"));

    // Two snapshots and no refs/main: which one is not guessed.
    let two = env2.root.join("models--someone--two");
    hf_cache(&fixture("sd15_tiny"), &two, "aaaa");
    hf_cache(&fixture("sd15_tiny"), &two, "bbbb");
    std::fs::remove_file(two.join("refs/main")).unwrap();
    let err = env2.import(&two, &ImportOptions::default()).unwrap_err();
    assert!(err.to_string().contains("2 snapshots"), "{err}");
    // refs/main naming a snapshot that is not there.
    std::fs::write(two.join("refs/main"), "cccc").unwrap();
    let err = env2.import(&two, &ImportOptions::default()).unwrap_err();
    assert!(err.to_string().contains("refs/main"), "{err}");
}

fn fault_at(step: ImportStep, nth: usize, errno: i32) -> likeness_core::import::ImportFault {
    let n = Arc::new(AtomicUsize::new(0));
    Arc::new(move |s| {
        if s == step && n.fetch_add(1, Ordering::SeqCst) + 1 == nth {
            Err(std::io::Error::from_raw_os_error(errno))
        } else {
            Ok(())
        }
    })
}

#[test]
fn a_failed_copy_leaves_nothing() {
    let env = Env::plain();
    // Disk full on the 5th chunk written; an I/O error on the rename.
    let opts = ImportOptions { fault: Some(fault_at(ImportStep::Write, 5, 28)), ..Default::default() };
    let err = env.import(&fixture("sdxl_tiny"), &opts).unwrap_err();
    assert!(matches!(err, ImportError::NoSpace { .. }), "{err}");
    assert!(err.to_string().contains("full"), "{err}");
    assert_clean(&env);
    let opts = ImportOptions { fault: Some(fault_at(ImportStep::Rename, 1, 5)), ..Default::default() };
    let err = env.import(&fixture("sdxl_tiny"), &opts).unwrap_err();
    assert!(matches!(err, ImportError::Io { .. }), "{err}");
    assert_clean(&env);
    assert!(matches!(env.store.diffusion("sdxl_tiny"), Err(ImportError::NotImported { .. })));
    // Cancelled from the progress callback.
    let err = env.store.import(&fixture("sdxl_tiny"), &ImportOptions::default(), &mut |done, _, _: &str| done < 1000).unwrap_err();
    assert!(matches!(err, ImportError::Cancelled), "{err}");
    assert_clean(&env);
    // Space again: it works.
    let out = env.import(&fixture("sdxl_tiny"), &ImportOptions::default()).unwrap();
    assert_eq!(env.entries(), vec![out.id]);
}

#[test]
fn a_killed_import_is_removed_at_the_next_start() {
    let env = Env::plain();
    // What a process killed half-way through a copy leaves: a temporary folder named by its pid.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let leftover = env.imported().join(format!(".tmp-{dead}-0"));
    std::fs::create_dir_all(leftover.join("unet")).unwrap();
    std::fs::write(leftover.join("unet/diffusion_pytorch_model.safetensors"), b"half").unwrap();
    // One of a live process (this one) is an import in progress: kept.
    let live = env.imported().join(format!(".tmp-{}-999", std::process::id()));
    std::fs::create_dir_all(&live).unwrap();
    // No model appears for either, and the next start removes the dead one.
    assert!(env.store.list_models(false).iter().all(|r| !r.id.starts_with('.')));
    assert!(!leftover.exists());
    assert!(live.exists());
}

#[test]
fn linked_models_are_checked_at_load_and_verify() {
    let env = Env::plain();
    let shared = env.root.join("shared");
    copy_dir(&fixture("sd15_tiny"), &shared);
    let single = shared.join("inpaint.safetensors");
    std::fs::copy(fixture("sd15_inpaint_tiny.safetensors"), &single).unwrap();

    let out = env.import(&shared, &ImportOptions { link: true, ..Default::default() }).unwrap();
    assert_eq!(out.linked_source.as_deref(), Some(shared.canonicalize().unwrap().as_path()));
    // Only the record was written.
    let folder = env.imported().join(&out.id);
    let names: Vec<_> = std::fs::read_dir(&folder).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, vec![std::ffi::OsString::from(RECORD_FILE)]);
    let m = env.store.diffusion(&out.id).unwrap();
    let DiffusionFiles::Diffusers { unet, .. } = &m.files else { panic!() };
    assert!(unet.weights[0].starts_with(shared.canonicalize().unwrap()));

    let one = env.import(&single, &ImportOptions { link: true, ..Default::default() }).unwrap();
    let m = env.store.diffusion(&one.id).unwrap();
    assert_eq!(m.files, DiffusionFiles::SingleFile { path: single.canonicalize().unwrap() });

    // Same size, different bytes, modification time restored: only the full check sees it.
    let w = unet.weights[0].clone();
    let mtime = std::fs::metadata(&w).unwrap().modified().unwrap();
    let mut bytes = std::fs::read(&w).unwrap();
    let n = bytes.len();
    bytes[n - 10] ^= 0xFF;
    std::fs::write(&w, &bytes).unwrap();
    std::fs::File::options().write(true).open(&w).unwrap().set_modified(mtime).unwrap();
    assert!(env.store.diffusion(&out.id).is_ok());
    let row = env.store.list_models(true).into_iter().find(|r| r.id == out.id).unwrap();
    assert_eq!(row.state, ModelState::Corrupt, "{row:?}");
    assert!(row.detail.unwrap().contains("corrupt"));

    // Modified (new mtime): refused at load.
    std::fs::write(&w, &bytes).unwrap();
    std::fs::File::options().write(true).open(&w).unwrap().set_modified(mtime + std::time::Duration::from_secs(5)).unwrap();
    let err = env.store.diffusion(&out.id).unwrap_err();
    assert!(matches!(err, ImportError::Changed { .. }), "{err}");
    // Gone: missing.
    std::fs::remove_file(&single).unwrap();
    assert!(matches!(env.store.diffusion(&one.id), Err(ImportError::Missing { .. })));
    let row = env.store.list_models(false).into_iter().find(|r| r.id == one.id).unwrap();
    assert_eq!(row.state, ModelState::Missing);
}

#[test]
fn copied_model_damage_is_found() {
    let env = Env::plain();
    let out = env.import(&fixture("sd15_inpaint_tiny.safetensors"), &ImportOptions::default()).unwrap();
    let m = env.store.diffusion(&out.id).unwrap();
    let DiffusionFiles::SingleFile { path } = m.files else { panic!() };
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&path, &bytes).unwrap();
    assert!(matches!(env.store.diffusion(&out.id), Err(ImportError::Changed { .. })));
    let row = env.store.list_models(false).into_iter().find(|r| r.id == out.id).unwrap();
    assert_eq!(row.state, ModelState::Corrupt);
}

#[test]
fn manifest_weights_are_imported_by_sha256() {
    let weights = b"PK\x03\x04 stand-in for GFPGANv1.4.pth".to_vec();
    let env = Env::new(&weights, "");
    let row = env.store.list_models(false).into_iter().find(|r| r.id == "gfpgan-v1.4").unwrap();
    assert_eq!(row.state, ModelState::NotInstalled);
    assert!(row.detail.unwrap().contains("GFPGANv1.4.pth"));

    // The right bytes under any name: imported as the manifest's model, under its official name.
    let p = env.root.join("download (1).pth");
    std::fs::write(&p, &weights).unwrap();
    let out = env.import(&p, &ImportOptions::default()).unwrap();
    assert_eq!((out.id.as_str(), out.kind, out.official.as_str()), ("gfpgan-v1.4", RecordKind::Weights, "GFPGANv1.4.pth"));
    let path = env.store.imported_file("gfpgan-v1.4").unwrap();
    assert!(path.ends_with("gfpgan-v1.4/GFPGANv1.4.pth"));
    assert_eq!(std::fs::read(&path).unwrap(), weights);
    let row = env.store.list_models(true).into_iter().find(|r| r.id == "gfpgan-v1.4").unwrap();
    assert_eq!((row.state, row.imported), (ModelState::Ok, true));
    assert!(matches!(env.store.diffusion("gfpgan-v1.4"), Err(ImportError::NotDiffusion { .. })));

    // The official name with other bytes (same size): refused, named.
    let env = Env::new(&weights, "");
    let p = env.root.join("GFPGANv1.4.pth");
    let mut other = weights.clone();
    other[10] ^= 1;
    std::fs::write(&p, &other).unwrap();
    let err = env.import(&p, &ImportOptions::default()).unwrap_err();
    assert!(matches!(err, ImportError::HashMismatch { .. }), "{err}");
    assert!(err.to_string().contains("GFPGANv1.4.pth"), "{err}");
    // An unknown .pth: a pickle, refused.
    let p = env.root.join("random.pth");
    std::fs::write(&p, b"PK\x03\x04 something else entirely").unwrap();
    assert!(matches!(env.import(&p, &ImportOptions::default()), Err(ImportError::Pickle { .. })));
    assert_clean(&env);
}

/// Free space is checked before copying. With LIKENESS_TEST_TMPFS=1 (root) on a real 4 MiB tmpfs;
/// otherwise the check itself against the real free space of the temp folder.
#[test]
fn disk_space_is_checked_before_copying() {
    if std::env::var("LIKENESS_TEST_TMPFS").as_deref() != Ok("1") {
        let dir = tmp();
        let free = likeness_core::import::available_space(dir.path()).unwrap();
        assert!(free > 0);
        assert!(likeness_core::import::check_space(dir.path(), free, free).is_err());
        return;
    }
    let mnt = tmp();
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "likeness-import-test", mnt.path().to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success(), "mount tmpfs (needs root)");
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mnt.path().to_path_buf());
    let store = ModelStore::open(&repo_models()).unwrap().with_imported_dir(imported_dir(mnt.path()));
    let err = store.import(&fixture("sd15_tiny"), &ImportOptions::default(), &mut |_, _, _: &str| true).unwrap_err();
    assert!(matches!(err, ImportError::DiskFull { .. }), "{err}");
    assert!(err.to_string().contains("free some space"), "{err}");
    let left: Vec<_> = std::fs::read_dir(imported_dir(mnt.path())).unwrap().collect();
    assert!(left.is_empty());
}

/// Reads a real-size tensor list (tests/fixtures/sd_import/real_*.txt: name dtype dims...).
fn real_shapes(name: &str) -> Vec<(String, Vec<usize>)> {
    std::fs::read_to_string(fixture(name))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let mut it = l.split(' ');
            let n = it.next().unwrap().to_string();
            let _dtype = it.next().unwrap();
            (n, it.map(|d| d.parse().unwrap()).collect())
        })
        .collect()
}

/// A sparse safetensors file of F16 tensors: the real header, the real length, no data written.
fn write_sparse(path: &Path, tensors: &[(String, Vec<usize>)]) -> u64 {
    let mut header = serde_json::Map::new();
    let mut off = 0u64;
    for (n, s) in tensors {
        let bytes = 2 * s.iter().product::<usize>() as u64;
        header.insert(n.clone(), serde_json::json!({"dtype": "F16", "shape": s, "data_offsets": [off, off + bytes]}));
        off += bytes;
    }
    let h = serde_json::to_vec(&header).unwrap();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut f = std::fs::File::create(path).unwrap();
    std::io::Write::write_all(&mut f, &(h.len() as u64).to_le_bytes()).unwrap();
    std::io::Write::write_all(&mut f, &h).unwrap();
    let len = 8 + h.len() as u64 + off;
    f.set_len(len).unwrap();
    len
}

/// The published SD 1.5, SD-Turbo and SDXL layouts at their real sizes (sparse files, headers
/// read back from disk): told apart, and inpainting by the UNet's input channels.
#[test]
fn real_size_headers_are_classified() {
    let dir = tmp();
    let check = |file: &str, set_in: Option<(&str, usize)>| -> likeness_core::import::Detected {
        let mut shapes = real_shapes(file);
        if let Some((name, c)) = set_in {
            shapes.iter_mut().find(|(n, _)| n == name).unwrap().1[1] = c;
        }
        // One safetensors per component (diffusers) or one file; headers read back from disk.
        let mut groups: std::collections::BTreeMap<String, Vec<(String, Vec<usize>)>> = Default::default();
        for (n, s) in shapes {
            match n.split_once('/') {
                Some((comp, rest)) => groups.entry(comp.to_string()).or_default().push((rest.to_string(), s)),
                None => groups.entry(String::new()).or_default().push((n, s)),
            }
        }
        let mut read = Vec::new();
        for (comp, tensors) in &groups {
            let path = dir.path().join(file).join(if comp.is_empty() { "model".into() } else { comp.clone() }).join("w.safetensors");
            let len = write_sparse(&path, tensors);
            assert!(len > 100 << 20, "{file}/{comp}: {len} bytes, a real size");
            let header = likeness_core::import::read_safetensors_header(&path).unwrap();
            assert_eq!(header.len(), tensors.len());
            let prefix = if comp.is_empty() { String::new() } else { format!("{comp}/") };
            read.extend(header.into_iter().map(|t| (format!("{prefix}{}", t.name), t.shape)));
        }
        likeness_core::import::detect(&read).unwrap()
    };
    let d = check("real_sd15_diffusers.txt", None);
    assert_eq!((d.arch, d.layout, d.context_dim), (Arch::Sd15, Layout::Diffusers, 768));
    let d = check("real_sd15_diffusers.txt", Some(("unet/conv_in.weight", 9)));
    assert_eq!(d.arch, Arch::Sd15Inpaint);
    let d = check("real_sd_turbo_diffusers.txt", None);
    assert_eq!((d.arch, d.ambiguous_sd2, d.context_dim), (Arch::SdTurbo, true, 1024));
    let d = check("real_sdxl_single.txt", None);
    assert_eq!((d.arch, d.layout, d.context_dim), (Arch::Sdxl, Layout::SingleFile, 2048));
    let d = check("real_sdxl_single.txt", Some(("model.diffusion_model.input_blocks.0.0.weight", 9)));
    assert_eq!(d.arch, Arch::SdxlInpaint);

    // A real-size file cut short is found from its header alone.
    let p = dir.path().join("cut.safetensors");
    let len = write_sparse(&p, &real_shapes("real_sdxl_single.txt"));
    std::fs::File::options().write(true).open(&p).unwrap().set_len(len - 1).unwrap();
    assert!(matches!(likeness_core::import::read_safetensors_header(&p), Err(ImportError::Truncated { .. })));
}
