//! The shipped configuration: the Windows webview's Microsoft services are off (browser
//! arguments), and the installers carry the CLI, the models and the license texts and have their
//! signing hooks wired.

use serde_json::Value;

fn config() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tauri.conf.json");
    let text = std::fs::read_to_string(path).expect("read tauri.conf.json");
    serde_json::from_str(&text).expect("tauri.conf.json is JSON")
}

#[test]
fn windows_webview_services_are_switched_off() {
    let c = config();
    let args = c["app"]["windows"][0]["additionalBrowserArgs"].as_str().expect("additionalBrowserArgs is set");
    let features = args
        .split_whitespace()
        .find_map(|a| a.strip_prefix("--disable-features="))
        .expect("a --disable-features= argument");
    let features: Vec<&str> = features.split(',').collect();
    // wry's own defaults must stay: setting the argument replaces them.
    for f in ["msWebOOUI", "msPdfOOUI", "msSmartScreenProtection", "AutofillServerCommunication", "Translate"] {
        assert!(features.contains(&f), "{f} is not disabled: {args}");
    }
    for flag in ["--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-pings"] {
        assert!(args.split_whitespace().any(|a| a == flag), "{flag} missing: {args}");
    }
}

#[test]
fn installers_ship_the_cli_models_and_licenses_with_signing_hooks() {
    let c = config();
    let b = &c["bundle"];
    let resources = b["resources"].as_object().expect("bundle.resources");
    for (from, to) in [("models/*", "models/"), ("assets/backdrops/*", "assets/backdrops/"), ("assets/licenses/*", "assets/licenses/")] {
        assert_eq!(resources.get(from).and_then(Value::as_str), Some(to), "{from}");
    }
    for fmt in ["deb", "rpm"] {
        assert_eq!(b["linux"][fmt]["files"]["/usr/bin/likeness"], "target/release/likeness", "{fmt} ships the CLI");
    }
    assert_eq!(b["macOS"]["files"]["MacOS/likeness"], "target/release/likeness");
    let args = b["windows"]["signCommand"]["args"].as_array().expect("signCommand args");
    assert!(args.iter().any(|a| a == "tools/sign_windows.ps1") && args.iter().any(|a| a == "%1"), "{args:?}");
    assert!(b["macOS"]["signingIdentity"].is_string() && b["macOS"]["hardenedRuntime"] == true);
    // Installing must not download the WebView2 runtime.
    assert_eq!(b["windows"]["webviewInstallMode"]["type"], "offlineInstaller");
    // The app's own binary keeps its name, so /usr/bin/likeness is the CLI.
    assert!(c.get("mainBinaryName").is_none());
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/");
    for file in ["tools/sign_windows.ps1", "tools/sign_linux.sh", "policy/windows/likeness.admx", "policy/windows/en-US/likeness.adml"] {
        assert!(std::path::Path::new(root).join(file).is_file(), "{file} is missing");
    }
}
