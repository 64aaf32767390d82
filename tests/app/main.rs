//! Whole-app tests of the desktop shell: every command through Tauri's mock runtime (no window,
//! no display), the `likeness:` image scheme, the progress throttle and the capability file.

mod batch;
mod bundle;
mod commands;
mod generate;
mod generative;
mod models;
mod security;
mod support;
