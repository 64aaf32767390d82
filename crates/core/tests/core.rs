//! Integration tests of likeness-core: job store, vault, keys, retention, doctor.
//! Run: `cargo test --release -p likeness-core --test core`.

// A test states what it expects by unwrapping.
#![allow(clippy::unwrap_used)]

#[path = "core/common.rs"]
mod common;
#[path = "core/disk_full.rs"]
mod disk_full;
#[path = "core/doctor.rs"]
mod doctor;
#[path = "core/import.rs"]
mod import;
#[path = "core/keys.rs"]
mod keys;
#[path = "core/no_plaintext.rs"]
mod no_plaintext;
#[path = "core/policy.rs"]
mod policy;
#[path = "core/retention.rs"]
mod retention;
#[path = "core/store.rs"]
mod store;
#[path = "core/worker.rs"]
mod worker;
#[path = "core/generative.rs"]
mod generative;
