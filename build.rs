//! Embeds tauri.conf.json, the capabilities and the UI into the app, and declares the app's
//! commands so that capabilities/ can grant exactly these to the main window.

fn main() {
    let ui_entry = std::path::Path::new("ui/public/js/main.js");
    println!("cargo:rerun-if-changed=ui/public");
    if !ui_entry.is_file() {
        // The UI is TypeScript compiled by `npm ci && npm run build` (tools/setup.sh does it).
        println!("cargo:warning=ui/public/js/main.js is missing: run `npm ci && npm run build` before building the app");
    }
    let attrs = tauri_build::Attributes::new().app_manifest(tauri_build::AppManifest::new().commands(&COMMANDS));
    if let Err(e) = tauri_build::try_build(attrs) {
        eprintln!("tauri build step failed: {e:#}");
        std::process::exit(1);
    }
}

/// Every command the UI may call: the same list as `generate_handler!` in src-tauri/lib.rs and the
/// `allow-*` grants in capabilities/default.json (tests/app/security.rs checks all three agree).
const COMMANDS: [&str; 14] = [
    "app_info",
    "acknowledge_privacy",
    "pick_photos",
    "stage_photo",
    "unstage_photo",
    "create_job",
    "list_jobs",
    "cancel_job",
    "delete_job",
    "delete_output",
    "export_output",
    "set_retention_days",
    "delete_all_data",
    "preview_photo",
];
