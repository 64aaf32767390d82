//! The shell's state: the library (opened once, in the background, so the window is interactive
//! at once), the models (loaded on first use), photos picked or dropped but not yet in a job, and
//! the worker's wake-up signal.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};

use likeness_core::generative::DiffusionCache;
use likeness_core::models::ModelStore;
use likeness_core::models_runtime;
use likeness_core::{KeySource, Library};
use likeness_engine::pipeline::StudioModels;
use zeroize::Zeroizing;

use crate::error::IpcError;

/// The largest photo accepted from the page or a dialog (the engine's decode limit is the real
/// check; this stops a huge file from being held in memory first).
pub const MAX_PHOTO_BYTES: usize = 40 * 1024 * 1024;
/// Photos one job takes.
pub const MAX_PHOTOS: usize = 3;
/// Jobs whose photos are kept in memory for the before/after view.
pub const MAX_BEFORE_JOBS: usize = 12;

/// Where the app keeps its data and finds its models.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// The data folder; `None`: `LIKENESS_DATA_DIR`, else the OS's per-user data folder.
    pub data_dir: Option<PathBuf>,
    /// The models folder; `None`: discovered next to the executable or in the source tree.
    pub models_dir: Option<PathBuf>,
    /// Test only: a passphrase instead of the OS keyring.
    pub passphrase: Option<String>,
    /// Whether the background worker runs queued jobs (tests may turn it off).
    pub run_worker: bool,
    /// The machine policy; `None`: this computer's (`Policy::machine()`). Tests pass their own.
    pub policy: Option<Arc<likeness_core::policy::Policy>>,
}

/// A photo picked or dropped, held in memory until it joins a job or is removed.
pub struct Staged {
    pub name: String,
    pub bytes: Zeroizing<Vec<u8>>,
}

#[derive(Clone)]
pub struct AppState(pub Arc<Inner>);

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

pub struct Inner {
    pub config: Config,
    library: OnceLock<Result<Arc<Mutex<Library>>, IpcError>>,
    models: OnceLock<Result<Arc<StudioModels>, IpcError>>,
    /// The same models with GFPGAN, loaded when a job first asks for face restoration; with the
    /// notice naming an installed restorer that could not be used.
    restoring: OnceLock<Result<(Arc<StudioModels>, Option<String>), IpcError>>,
    /// Stable Diffusion models, loaded on a generative job's first use; made anew when models are
    /// imported or removed.
    diffusion: Mutex<Option<Arc<DiffusionCache>>>,
    /// The import running now (one at a time): its cancel flag.
    pub import: Mutex<Option<Arc<AtomicBool>>>,
    /// Denoising steps per variant and variants of the generative jobs running now (for the
    /// Queue's "step 3 of 20").
    pub gen_steps: Mutex<HashMap<likeness_core::JobId, crate::worker::GenPlan>>,
    pub staged: Mutex<HashMap<String, Staged>>,
    /// Folders picked for batches (by token) and the batches started in this session.
    pub batches: Mutex<crate::batch::Batches>,
    /// The device the models were loaded on ("cpu" until they are loaded on a GPU).
    active_device: Mutex<&'static str>,
    /// The photos of jobs made in this session, for the gallery's before/after: the library deletes
    /// a job's photos once no job needs them, so after a restart only the headshot remains.
    /// Memory only, newest [`MAX_BEFORE_JOBS`] jobs.
    pub before: Mutex<Vec<(likeness_core::JobId, Vec<Zeroizing<Vec<u8>>>)>>,
    next_id: AtomicU64,
    /// Set when there may be queued work; the worker sleeps on it.
    wake: (Mutex<bool>, Condvar),
    pub stop: AtomicBool,
}

impl AppState {
    pub fn new(config: Config) -> Self {
        AppState(Arc::new(Inner {
            config,
            library: OnceLock::new(),
            models: OnceLock::new(),
            restoring: OnceLock::new(),
            diffusion: Mutex::new(None),
            import: Mutex::new(None),
            gen_steps: Mutex::new(HashMap::new()),
            staged: Mutex::new(HashMap::new()),
            batches: Mutex::new(crate::batch::Batches::default()),
            active_device: Mutex::new("cpu"),
            before: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(1),
            wake: (Mutex::new(true), Condvar::new()),
            stop: AtomicBool::new(false),
        }))
    }
}

/// A poisoned lock still guards consistent data: every library change is one transaction.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Inner {
    /// The open library, opening it on first use (other callers wait for that).
    pub fn library(&self) -> Result<&Arc<Mutex<Library>>, IpcError> {
        self.library
            .get_or_init(|| {
                let keys = match &self.config.passphrase {
                    Some(p) => KeySource::passphrase(p),
                    None => KeySource::Auto,
                };
                let policy = self.policy();
                Library::open_with_policy(self.config.data_dir.as_deref(), keys, Arc::new(likeness_core::SystemClock), policy)
                    .map(|l| Arc::new(Mutex::new(l)))
                    .map_err(IpcError::from)
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// The machine policy in force (managed settings show as such in the page).
    pub fn policy(&self) -> Arc<likeness_core::policy::Policy> {
        self.config.policy.clone().unwrap_or_else(likeness_core::policy::Policy::machine)
    }

    /// The face and segmentation models, loaded (and checked against the manifest) on first use.
    pub fn models(&self) -> Result<&Arc<StudioModels>, IpcError> {
        self.models.get_or_init(|| self.load_studio().map(Arc::new)).as_ref().map_err(Clone::clone)
    }

    fn load_studio(&self) -> Result<StudioModels, IpcError> {
        let store = ModelStore::discover(self.config.models_dir.as_deref()).map_err(|e| IpcError::new("models_missing", e.to_string()))?;
        let device = self.chosen_device();
        *lock(&self.active_device) = if device.is_cpu() { "cpu" } else { "gpu" };
        // Real-ESRGAN is read only when a job first asks for an output larger than its crop.
        models_runtime::studio_models(&store, &device).map_err(|e| IpcError::new("models_missing", e.to_string()))
    }

    /// The studio models with GFPGAN when it is installed (see `models_runtime::with_restorer`),
    /// and the notice about an installed restorer that could not be used.
    pub fn restoring_models(&self) -> Result<(Arc<StudioModels>, Option<String>), IpcError> {
        self.restoring
            .get_or_init(|| {
                let models = self.load_studio()?;
                let store = self.store()?;
                let (models, notice) = models_runtime::with_restorer(models, &store, &self.chosen_device(), true);
                Ok((Arc::new(models), notice))
            })
            .clone()
    }

    /// The models folder, knowing the imported models of the data folder.
    pub fn store(&self) -> Result<ModelStore, IpcError> {
        let data = self.data_dir().ok();
        models_runtime::model_store(self.config.models_dir.as_deref(), data.as_deref())
            .map_err(|e| IpcError::new("models_missing", e.to_string()))
    }

    /// The Stable Diffusion models (loaded on first use, on the preferred device).
    pub fn diffusion(&self) -> Result<Arc<DiffusionCache>, IpcError> {
        let mut d = lock(&self.diffusion);
        if let Some(c) = d.as_ref() {
            return Ok(c.clone());
        }
        let cache = Arc::new(models_runtime::diffusion_cache(self.store()?, self.chosen_device()));
        *d = Some(cache.clone());
        Ok(cache)
    }

    /// Forgets loaded diffusion models (after an import or a removal).
    pub fn reset_diffusion(&self) {
        *lock(&self.diffusion) = None;
    }

    /// The device of the stored preference: the GPU when chosen and usable, else the CPU.
    fn chosen_device(&self) -> candle_core::Device {
        let pref = self.library().ok().and_then(|l| lock(l).preference(crate::models::DEVICE_PREF).ok().flatten());
        match pref.as_deref() {
            Some("gpu") => likeness_engine::device::select(likeness_engine::device::DevicePref::Gpu).unwrap_or(candle_core::Device::Cpu),
            _ => candle_core::Device::Cpu,
        }
    }

    /// "cpu" or "gpu": where the models run (once loaded).
    pub fn active_device(&self) -> &'static str {
        *lock(&self.active_device)
    }

    pub fn data_dir(&self) -> Result<PathBuf, IpcError> {
        Ok(lock(self.library()?).data_dir().to_path_buf())
    }

    pub fn new_id(&self, prefix: &str) -> String {
        format!("{prefix}{}", self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    pub fn remember_before(&self, job: likeness_core::JobId, photos: Vec<Zeroizing<Vec<u8>>>) {
        let mut before = lock(&self.before);
        before.push((job, photos));
        let excess = before.len().saturating_sub(MAX_BEFORE_JOBS);
        before.drain(..excess);
    }

    pub fn forget_before(&self, job: Option<&likeness_core::JobId>) {
        let mut before = lock(&self.before);
        match job {
            Some(id) => before.retain(|(j, _)| j != id),
            None => before.clear(),
        }
    }

    /// Tells the worker there is work.
    pub fn wake_worker(&self) {
        *lock(&self.wake.0) = true;
        self.wake.1.notify_all();
    }

    /// Waits until woken (or the app stops); returns false when the app stops.
    pub fn wait_for_work(&self) -> bool {
        let mut pending = lock(&self.wake.0);
        while !*pending && !self.stop.load(Ordering::SeqCst) {
            pending = self.wake.1.wait(pending).unwrap_or_else(|p| p.into_inner());
        }
        *pending = false;
        !self.stop.load(Ordering::SeqCst)
    }

    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.wake.1.notify_all();
    }
}

/// The folder of bundled assets (backdrops): `LIKENESS_ASSETS_DIR`, next to the executable, or the
/// source tree this binary was built from.
pub fn assets_dir() -> Option<PathBuf> {
    let mut c = Vec::new();
    if let Some(d) = std::env::var_os("LIKENESS_ASSETS_DIR") {
        c.push(PathBuf::from(d));
    }
    if let Some(exe) = std::env::current_exe().ok().and_then(|p| p.parent().map(Path::to_path_buf)) {
        c.push(exe.join("assets"));
        c.push(exe.join("../share/likeness/assets"));
        c.push(exe.join("../lib/likeness/assets"));
        c.push(exe.join("../Resources/assets"));
    }
    c.push(PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/assets")));
    c.into_iter().find(|p| p.join("backdrops").is_dir())
}
