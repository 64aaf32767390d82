//! Retention property test: seeded random histories of jobs, clock jumps (back a day, forward 31
//! days, ten years either way), retention changes, restarts and sweeps, each sweep crashing at a
//! random step (an injected failure, then the library is dropped and reopened as after a kill).
//!
//! Properties checked after every sweep, against a model that only knows each output's creation
//! time, its expiry and the latest time the library has seen:
//! - nothing whose expiry is not after the latest time seen survives (a clock set back can't keep data longer);
//! - nothing unexpired is lost, and what survives still decrypts to its bytes;
//! - a second sweep right after the first changes nothing;
//! - the vault holds exactly the files of live rows (no leftovers, nothing missing).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use likeness_core::{CoreError, FaultHook, FaultPoint, JobState, Library, ManualClock, MemoryKeyStore, OutputId};

use crate::common::{open_clock, output, tmp, vault_files, T0};

const DAY: i64 = 86_400;
const YEAR: i64 = 365 * DAY;
const HISTORIES: u64 = 10_000;

fn histories() -> u64 {
    // More (never fewer) histories on request, e.g. for a long soak.
    std::env::var("LIKENESS_RETENTION_HISTORIES").ok().and_then(|v| v.parse().ok()).unwrap_or(HISTORIES)
}

/// SplitMix64: small, seeded, good enough to pick operations.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

struct ModelOutput {
    created_at: i64,
    expires_at: i64,
    bytes: Vec<u8>,
}

struct History {
    rng: Rng,
    clock: ManualClock,
    store: MemoryKeyStore,
    dir: tempfile::TempDir,
    lib: Option<Library>,
    outputs: BTreeMap<OutputId, ModelOutput>,
    /// Photos of queued jobs (kept until the job finishes).
    queued: Vec<likeness_core::JobId>,
    retention_days: i64,
    /// The latest time any operation that records time has seen.
    high_water: i64,
    log: Vec<String>,
    crashes: usize,
    /// Outputs the sweeps deleted.
    expired: usize,
}

impl History {
    fn lib(&mut self) -> &mut Library {
        match self.lib {
            Some(ref mut lib) => lib,
            None => panic!("library closed"),
        }
    }

    fn reopen(&mut self) {
        self.lib = None;
        self.lib = Some(open_clock(self.dir.path(), &self.store, &self.clock));
    }

    fn now(&self) -> i64 {
        use likeness_core::Clock;
        self.clock.now()
    }

    fn jump(&mut self) {
        let d = match self.rng.below(6) {
            0 => -DAY,
            1 => 31 * DAY,
            2 => 10 * YEAR,
            3 => -10 * YEAR,
            4 => self.rng.below(3 * DAY as u64) as i64,
            _ => -(self.rng.below(DAY as u64) as i64),
        };
        self.clock.advance(d);
        self.log.push(format!("jump {d:+}"));
    }

    fn make_outputs(&mut self) {
        let now = self.now();
        let n = 1 + self.rng.below(2) as usize;
        let mut outs = Vec::new();
        for _ in 0..n {
            let len = 8 + self.rng.below(64) as usize;
            let bytes: Vec<u8> = (0..len).map(|_| self.rng.next() as u8).collect();
            outs.push(bytes);
        }
        let lib = self.lib();
        let id = lib.create_job("p.jpg", b"photo bytes", "{}").unwrap();
        let claimed = lib.claim_next_job().unwrap().expect("the new job (queued ones are claimed first)");
        // Older queued jobs are claimed first: finish them with outputs too.
        let claimed_id = claimed.id.clone();
        let ids = lib.complete_job(&claimed_id, outs.iter().map(|b| output(b.clone(), "png")).collect()).unwrap();
        self.high_water = self.high_water.max(now);
        if claimed_id != id {
            self.queued.retain(|q| *q != claimed_id);
            self.queued.push(id);
        }
        for (oid, bytes) in ids.into_iter().zip(outs) {
            let info = self.lib().output_info(&oid).unwrap();
            assert_eq!(info.created_at, now);
            assert_eq!(info.expires_at, now + self.retention_days * DAY, "expiry fixed at creation");
            self.outputs.insert(oid, ModelOutput { created_at: now, expires_at: info.expires_at, bytes });
        }
        self.log.push(format!("outputs x{n} at {}", now - T0));
    }

    fn queue_job(&mut self) {
        let now = self.now();
        let id = self.lib().create_job("q.jpg", b"queued photo", "{}").unwrap();
        self.high_water = self.high_water.max(now);
        self.queued.push(id);
        self.log.push("queue".into());
    }

    fn cancel_one(&mut self) {
        if let Some(id) = self.queued.pop() {
            assert_eq!(self.lib().cancel_job(&id).unwrap(), JobState::Cancelled);
            self.log.push("cancel".into());
        }
    }

    fn set_retention(&mut self) {
        let days = [1i64, 7, 30, 365][self.rng.below(4) as usize];
        self.lib().set_retention_days(days as u32).unwrap();
        self.retention_days = days;
        for o in self.outputs.values_mut() {
            o.expires_at = o.expires_at.min(o.created_at + days * DAY);
        }
        self.log.push(format!("retention {days}"));
    }

    /// A sweep that crashes at its `crash_at`-th step (if it has that many), then the rerun.
    fn sweep(&mut self) {
        let crash_at = self.rng.below(6) as usize;
        let steps = Arc::new(AtomicUsize::new(0));
        let counter = steps.clone();
        let hook: FaultHook = Arc::new(move |point: FaultPoint| {
            if matches!(point, FaultPoint::BlobWrite | FaultPoint::BlobRename) {
                return Ok(());
            }
            if counter.fetch_add(1, Ordering::SeqCst) == crash_at {
                Err(std::io::Error::other("simulated crash"))
            } else {
                Ok(())
            }
        });
        let now = self.now();
        self.lib().set_fault_hook(Some(hook));
        let first = self.lib().sweep_at(now);
        self.high_water = self.high_water.max(now);
        self.log.push(format!("sweep at {} crash_at {crash_at}", now - T0));
        let mut first_expired = None;
        match first {
            Ok(r) => {
                self.lib().set_fault_hook(None);
                first_expired = Some(r.outputs_expired);
            }
            Err(e) => {
                assert!(matches!(e, CoreError::Io { .. }), "{e}");
                self.crashes += 1;
                // The expired rows were hidden before the crash.
                self.check_visible();
                self.reopen();
            }
        }
        let report = self.lib().sweep_at(now).unwrap();
        assert_eq!(report.judged_at, self.high_water, "judged against the latest time seen");
        let hw = self.high_water;
        let before = self.outputs.len();
        self.outputs.retain(|_, o| o.expires_at > hw);
        self.expired += before - self.outputs.len();
        if let Some(n) = first_expired {
            assert_eq!(n, before - self.outputs.len(), "the sweep's count of expired outputs");
        }
        self.check_all();
        // Sweeping again changes nothing.
        let again = self.lib().sweep_at(now).unwrap();
        assert_eq!((again.outputs_expired, again.inputs_released, again.files_removed), (0, 0, 0), "second sweep");
        let mut listed: Vec<OutputId> = self.lib().list_outputs().unwrap().into_iter().map(|o| o.id).collect();
        listed.sort();
        assert!(listed.iter().eq(self.outputs.keys()), "a second sweep keeps the same outputs");
    }

    fn check_visible(&mut self) {
        let hw = self.high_water;
        for o in self.lib().list_outputs().unwrap() {
            assert!(o.expires_at > hw, "expired output {} still listed", o.id);
        }
    }

    fn check_all(&mut self) {
        let listed: Vec<OutputId> = self.lib().list_outputs().unwrap().into_iter().map(|o| o.id).collect();
        let expected: Vec<OutputId> = self.outputs.keys().cloned().collect();
        let mut listed_sorted = listed.clone();
        listed_sorted.sort();
        assert_eq!(listed_sorted, expected, "surviving outputs");
        let ids: Vec<(OutputId, Vec<u8>)> = self.outputs.iter().map(|(k, v)| (k.clone(), v.bytes.clone())).collect();
        for (id, bytes) in ids {
            assert_eq!(self.lib().get_output(&id).unwrap().as_slice(), bytes.as_slice());
        }
        let files = vault_files(self.dir.path()).len();
        assert_eq!(files, self.outputs.len() + self.queued.len(), "vault files = live outputs + queued photos");
    }

    fn run(&mut self) {
        let steps = 4 + self.rng.below(9);
        for _ in 0..steps {
            match self.rng.below(10) {
                0..=2 => self.jump(),
                3..=4 => self.make_outputs(),
                5 => self.queue_job(),
                6 => self.cancel_one(),
                7 => {
                    if self.rng.below(3) == 0 {
                        self.set_retention()
                    } else {
                        self.reopen()
                    }
                }
                _ => self.sweep(),
            }
        }
        self.sweep();
    }
}

/// Runs the histories with `seed % workers == worker`; returns (crashes, outputs expired).
fn run_histories(worker: u64, workers: u64, n: u64, store: &MemoryKeyStore, template_db: &[u8]) -> (usize, usize) {
    let (mut crashes, mut expired) = (0, 0);
    for seed in (worker..n).step_by(workers as usize) {
        let clock = ManualClock::new(T0);
        let store = store.clone();
        let dir = tmp();
        std::fs::write(dir.path().join("likeness.db"), template_db).unwrap();
        let lib = Some(open_clock(dir.path(), &store, &clock));
        let mut h = History {
            rng: Rng(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ 0x5EED),
            clock,
            store,
            dir,
            lib,
            outputs: BTreeMap::new(),
            queued: Vec::new(),
            retention_days: 30,
            high_water: i64::MIN,
            log: Vec::new(),
            crashes: 0,
            expired: 0,
        };
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| h.run()));
        if result.is_err() {
            panic!("history seed {seed} failed; its steps: {:?}", h.log);
        }
        crashes += h.crashes;
        expired += h.expired;
    }
    (crashes, expired)
}

#[test]
fn retention_property_random_histories() {
    let start = Instant::now();
    let n = histories();
    // Every history starts from a copy of one fresh, closed library (same key store), which
    // saves creating the schema 10,000 times.
    let store = MemoryKeyStore::new();
    let template = tmp();
    drop(open_clock(template.path(), &store, &ManualClock::new(T0)));
    let template_db = std::fs::read(template.path().join("likeness.db")).unwrap();
    assert!(!template.path().join("likeness.db-wal").exists(), "closed cleanly");
    let workers = std::thread::available_parallelism().map_or(1, |p| p.get()).clamp(1, 4) as u64;
    let results: Vec<(usize, usize)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let (store, db) = (&store, &template_db);
                scope.spawn(move || run_histories(w, workers, n, store, db))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))).collect()
    });
    let crashes: usize = results.iter().map(|r| r.0).sum();
    let expired: usize = results.iter().map(|r| r.1).sum();
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "{n} histories on {workers} threads: {crashes} simulated crashes, {expired} outputs expired, {secs:.1} s"
    );
    assert!(crashes > n as usize / 5, "crashes were injected ({crashes})");
    assert!(expired > n as usize / 5, "outputs did expire ({expired})");
}
