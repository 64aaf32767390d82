//! Whole-app tests of the `likeness` command line on real photos with the bundled models.
//! The binary under test is the real one (`CARGO_BIN_EXE_likeness`); nothing is mocked.

mod batch;
mod errors;
mod generate;
mod generative;
mod library;
mod models;
mod policy;
mod support;
