//! The Likeness desktop shell: a Tauri window over `likeness_core`. Commands are one-line
//! adapters (src-tauri/commands.rs), images reach the page only through the `likeness:` scheme
//! (src-tauri/protocol.rs), and one background thread works the job queue (src-tauri/worker.rs).
//! No model math and no SQL here.

pub mod batch;
pub mod commands;
pub mod error;
pub mod export;
pub mod models;
pub mod protocol;
pub mod startup;
pub mod state;
pub mod worker;

use tauri::{Manager, Runtime};

pub use error::IpcError;
pub use state::{AppState, Config};

/// The app's builder: commands, the image scheme, the dialog plugin, and the worker. `main` runs
/// it with the real window; the tests with Tauri's mock runtime.
pub fn builder<R: Runtime>(builder: tauri::Builder<R>, config: Config) -> tauri::Builder<R> {
    let state = AppState::new(config);
    let for_scheme = state.clone();
    builder
        .plugin(tauri_plugin_dialog::init())
        .manage(state)
        .register_asynchronous_uri_scheme_protocol(protocol::SCHEME, move |_ctx, request, responder| {
            let state = for_scheme.clone();
            let path = request.uri().path().to_string();
            // Decrypting takes a moment: keep it off the UI thread. (If no thread can be started,
            // the responder is dropped and the image request fails; the page shows no image.)
            let _ = std::thread::Builder::new().name("likeness-image".into()).spawn(move || responder.respond(protocol::serve(&state, &path)));
        })
        .setup(|app| Ok(start(app.handle())?))
        .on_window_event(|window, event| {
            if let tauri::WindowEvent::Destroyed = event {
                window.app_handle().state::<AppState>().shutdown();
            }
        })
        .invoke_handler(tauri::generate_handler![
            commands::app_info,
            commands::acknowledge_privacy,
            commands::pick_photos,
            commands::stage_photo,
            commands::unstage_photo,
            commands::create_job,
            commands::list_jobs,
            commands::cancel_job,
            commands::delete_job,
            commands::delete_output,
            export::export_output,
            export::export_outputs,
            export::set_favourite,
            commands::set_retention_days,
            commands::delete_all_data,
            commands::preview_photo,
            batch::pick_folder,
            batch::start_batch,
            batch::batch_status,
            batch::cancel_batch,
            models::list_models,
            models::model_license,
            models::set_device,
            models::create_options,
            models::import_model,
            models::cancel_import,
            models::remove_model,
            models::verify_model,
        ])
}

/// The background threads: open the library (keyring, database, sweep of expired outputs) so
/// the window is interactive at once (commands wait for it if they come first), and the worker.
/// Runs when the event loop is ready; tests call it themselves (the mock runtime has no loop).
pub fn start<R: Runtime>(app: &tauri::AppHandle<R>) -> std::io::Result<()> {
    let state = app.state::<AppState>().inner().clone();
    let opener = state.clone();
    std::thread::Builder::new().name("likeness-open".into()).spawn(move || {
        if let Ok(lib) = opener.library() {
            let _ = lock_and_sweep(lib);
        }
        // Imports a crash or a kill interrupted leave a temporary folder: it goes now.
        if let Ok(store) = opener.store() {
            store.remove_import_leftovers();
        }
    })?;
    if state.config.run_worker {
        worker::spawn(app.clone(), state)?;
    }
    Ok(())
}

/// Outputs past their retention go at start-up (the sweeper also runs when retention changes).
fn lock_and_sweep(lib: &std::sync::Arc<std::sync::Mutex<likeness_core::Library>>) -> Result<(), IpcError> {
    state::lock(lib).sweep()?;
    Ok(())
}

/// Runs the desktop app.
pub fn run() -> Result<(), tauri::Error> {
    let config = Config { run_worker: true, ..Config::default() };
    builder(tauri::Builder::default(), config).run(tauri::generate_context!())
}
