//! The model manifest (`models/manifest.toml`) and verified loading of model files.
//!
//! Every model file is checked against the manifest's sha256 before its bytes reach the engine,
//! so a truncated copy, a wrong file or a tampered file is refused with a message naming it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

/// The manifest's file name inside a models folder.
pub const MANIFEST_FILE: &str = "manifest.toml";

#[derive(Debug, Error)]
pub enum ModelError {
    #[error("no models folder found: set LIKENESS_MODELS_DIR or pass --models-dir (looked in: {looked})")]
    NoModelsDir { looked: String },
    #[error("{path}: cannot read the model manifest ({reason}); reinstall Likeness")]
    Manifest { path: PathBuf, reason: String },
    #[error("model '{id}' is not in the manifest {path}")]
    UnknownModel { id: String, path: PathBuf },
    #[error("model '{id}': file {path} is missing; reinstall Likeness or re-import the model")]
    Missing { id: String, path: PathBuf },
    #[error("model '{id}': file {path} is corrupt or not the expected file (sha256 {actual}, expected {expected}); reinstall Likeness or re-import the model")]
    Corrupt { id: String, path: PathBuf, actual: String, expected: String },
    #[error("model '{id}': cannot read {path}: {err}")]
    Io { id: String, path: PathBuf, err: std::io::Error },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelFile {
    pub path: String,
    pub sha256: String,
    pub bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelEntry {
    pub id: String,
    pub task: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub bundled: bool,
    pub license: String,
    #[serde(default)]
    pub license_file: String,
    pub source: String,
    #[serde(default)]
    pub source_sha256: String,
    pub files: Vec<ModelFile>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    #[serde(rename = "model", default)]
    pub models: Vec<ModelEntry>,
}

impl Manifest {
    pub fn parse(text: &str, path: &Path) -> Result<Self, ModelError> {
        toml::from_str(text).map_err(|e| ModelError::Manifest { path: path.into(), reason: e.to_string() })
    }
}

/// The state of one model as `models list` / `models verify` report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelState {
    Ok,
    Missing,
    Corrupt,
    /// A user-imported model (not bundled) that has not been imported: not an error.
    #[serde(rename = "not-installed")]
    NotInstalled,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelStatus {
    pub id: String,
    pub task: String,
    pub license: String,
    pub bundled: bool,
    pub state: ModelState,
    pub detail: Option<String>,
}

/// A models folder with its manifest.
#[derive(Debug, Clone)]
pub struct ModelStore {
    dir: PathBuf,
    manifest: Manifest,
    /// The user's imported models (`<data dir>/models/imported`, see `import`), when known.
    imported: Option<PathBuf>,
}

impl ModelStore {
    /// Opens `dir` (which must hold `manifest.toml`).
    pub fn open(dir: &Path) -> Result<Self, ModelError> {
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| ModelError::Manifest { path: path.clone(), reason: e.to_string() })?;
        Ok(Self { dir: dir.to_path_buf(), manifest: Manifest::parse(&text, &path)?, imported: None })
    }

    /// Also knows the user's imported models in `dir` (normally `import::imported_dir(data root)`).
    pub fn with_imported_dir(mut self, dir: PathBuf) -> Self {
        self.imported = Some(dir);
        self
    }

    pub fn imported_dir(&self) -> Option<&Path> {
        self.imported.as_deref()
    }

    /// Opens the first models folder found: `explicit`, `$LIKENESS_MODELS_DIR`, next to the executable
    /// (`models/`, `../share/likeness/models`, `../lib/likeness/models`, `../Resources/models`), then the
    /// source tree this binary was built from (development and tests).
    /// A models folder the machine policy manages replaces all of these.
    pub fn discover(explicit: Option<&Path>) -> Result<Self, ModelError> {
        let policy = crate::policy::Policy::machine();
        if let Some(dir) = policy.models_dir() {
            return Self::open(dir);
        }
        if let Some(dir) = explicit {
            return Self::open(dir);
        }
        let candidates = candidate_dirs();
        for dir in &candidates {
            if dir.join(MANIFEST_FILE).is_file() {
                return Self::open(dir);
            }
        }
        let looked = candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
        Err(ModelError::NoModelsDir { looked })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    fn entry(&self, id: &str) -> Result<&ModelEntry, ModelError> {
        self.manifest.models.iter().find(|m| m.id == id).ok_or_else(|| ModelError::UnknownModel {
            id: id.into(),
            path: self.dir.join(MANIFEST_FILE),
        })
    }

    /// The bytes of a single-file model, checked against the manifest's sha256.
    pub fn read_verified(&self, id: &str) -> Result<Vec<u8>, ModelError> {
        let entry = self.entry(id)?;
        let file = entry.files.first().ok_or_else(|| ModelError::Manifest {
            path: self.dir.join(MANIFEST_FILE),
            reason: format!("model '{id}' lists no files"),
        })?;
        let path = self.dir.join(&file.path);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(ModelError::Missing { id: id.into(), path }),
            Err(err) => return Err(ModelError::Io { id: id.into(), path, err }),
        };
        let actual = hex::encode(Sha256::digest(&bytes));
        if !actual.eq_ignore_ascii_case(&file.sha256) {
            return Err(ModelError::Corrupt { id: id.into(), path, actual, expected: file.sha256.clone() });
        }
        Ok(bytes)
    }

    /// Checks every model in the manifest.
    pub fn verify_all(&self) -> Vec<ModelStatus> {
        self.manifest
            .models
            .iter()
            .map(|m| {
                let (state, detail) = match self.read_verified(&m.id) {
                    Ok(_) => (ModelState::Ok, None),
                    Err(e @ ModelError::Missing { .. }) => (ModelState::Missing, Some(e.to_string())),
                    Err(e) => (ModelState::Corrupt, Some(e.to_string())),
                };
                ModelStatus { id: m.id.clone(), task: m.task.clone(), license: m.license.clone(), bundled: m.bundled, state, detail }
            })
            .collect()
    }

    /// The four bundled models of the studio pipeline, verified.
    pub fn studio_model_bytes(&self) -> Result<likeness_engine::pipeline::ModelBytes, ModelError> {
        Ok(likeness_engine::pipeline::ModelBytes {
            blazeface_front: self.read_verified("blazeface-front-128")?,
            blazeface_back: Some(self.read_verified("blazeface-back-256")?),
            face_mesh: self.read_verified("face-mesh-468")?,
            selfie: self.read_verified("selfie-segmentation-256")?,
        })
    }
}

/// Where an installed folder of Likeness (`models`, `assets`) may be: `$ENV`, next to the
/// executable and the usual package locations, then the source tree this binary was built from
/// (development and tests).
pub fn install_dirs(name: &str, env: &str) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(v) = std::env::var_os(env) {
        dirs.push(PathBuf::from(v));
    }
    if let Some(exe_dir) = std::env::current_exe().ok().and_then(|p| p.parent().map(Path::to_path_buf)) {
        dirs.push(exe_dir.join(name));
        dirs.push(exe_dir.join("../share/likeness").join(name));
        dirs.push(exe_dir.join("../lib/likeness").join(name));
        dirs.push(exe_dir.join("../Resources").join(name));
    }
    dirs.push(PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).join(name));
    dirs
}

fn candidate_dirs() -> Vec<PathBuf> {
    install_dirs("models", "LIKENESS_MODELS_DIR")
}

/// The bundled assets folder (backdrops, license texts): `$LIKENESS_ASSETS_DIR`, next to the
/// executable, or the source tree.
pub fn assets_dir() -> Option<PathBuf> {
    install_dirs("assets", "LIKENESS_ASSETS_DIR").into_iter().find(|p| p.join("backdrops").is_dir())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_with(content: &[u8]) -> (tempfile::TempDir, ModelStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        let sha = hex::encode(Sha256::digest(content));
        let manifest = format!(
            "[[model]]\nid = \"m\"\ntask = \"t\"\nlicense = \"MIT\"\nsource = \"test\"\n[[model.files]]\npath = \"m.safetensors\"\nsha256 = \"{sha}\"\nbytes = {}\n",
            content.len()
        );
        std::fs::write(dir.path().join(MANIFEST_FILE), manifest).expect("write");
        let store = ModelStore::open(dir.path()).expect("open");
        (dir, store)
    }

    #[test]
    fn verified_read_checks_presence_and_hash() {
        let (dir, store) = store_with(b"weights");
        assert!(matches!(store.read_verified("m"), Err(ModelError::Missing { .. })));
        std::fs::write(dir.path().join("m.safetensors"), b"weights").expect("write");
        assert_eq!(store.read_verified("m").expect("ok"), b"weights");
        std::fs::write(dir.path().join("m.safetensors"), b"weightz").expect("write");
        let err = store.read_verified("m").expect_err("corrupt");
        assert!(matches!(err, ModelError::Corrupt { .. }));
        assert!(err.to_string().contains("m.safetensors"), "{err}");
        assert!(matches!(store.read_verified("nope"), Err(ModelError::UnknownModel { .. })));
        assert_eq!(store.verify_all()[0].state, ModelState::Corrupt);
    }

    #[test]
    fn bundled_manifest_verifies() {
        let store = ModelStore::discover(None).expect("the repository's models folder");
        assert!(store.manifest().models.len() >= 4);
        for status in store.verify_all() {
            assert_eq!(status.state, ModelState::Ok, "{:?}", status);
        }
    }
}
