//! The engine's integration tests: parity with the reference runtimes on committed fixtures, and
//! the real bundled weights on real photos. Modules are listed here (one test binary).

mod common;
mod blazeface;
mod facemesh;
mod studio;
mod selfie;
mod diffusion;
