//! Likeness application state: the SQLite job store, the job queue and worker, the encrypted
//! vault (master key in the OS keyring), the retention sweeper and the model manifest.
//! Knows nothing of Tauri, clap or HTML.

pub mod models;
