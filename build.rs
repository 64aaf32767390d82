//! Embeds tauri.conf.json, the capabilities and the UI into the app, and declares the app's
//! commands so that capabilities/ can grant exactly these to the main window.

fn main() {
    let ui_entry = std::path::Path::new("ui/public/js/main.js");
    println!("cargo:rerun-if-changed=ui/public");
    println!("cargo:rerun-if-changed=src-tauri/command_names.rs");
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

include!("src-tauri/command_names.rs");
