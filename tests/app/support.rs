//! A mock-runtime app over a private data folder, and helpers to call its commands as the page does.

use std::path::PathBuf;

use likeness_app::Config;
use serde_json::Value;
use tauri::ipc::{CallbackFn, InvokeBody};
use tauri::test::{get_ipc_response, mock_builder, mock_context, noop_assets, MockRuntime, INVOKE_KEY};
use tauri::webview::InvokeRequest;
use tauri::{App, Manager, WebviewWindow, WebviewWindowBuilder};

pub struct TestApp {
    pub app: App<MockRuntime>,
    pub webview: WebviewWindow<MockRuntime>,
    pub dir: tempfile::TempDir,
}

pub fn repo_file(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

pub fn photo() -> Vec<u8> {
    std::fs::read(repo_file("assets/photos/grace_hopper_512x512.jpg")).expect("sample photo")
}

pub fn config(dir: &tempfile::TempDir, run_worker: bool) -> Config {
    Config { data_dir: Some(dir.path().join("data")), models_dir: None, passphrase: Some("mock-runtime-test".into()), run_worker, policy: None }
}

pub fn app_with(config_for: impl FnOnce(&tempfile::TempDir) -> Config) -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = config_for(&dir);
    let app = likeness_app::builder(mock_builder(), config).build(mock_context(noop_assets())).expect("mock app builds");
    let webview = WebviewWindowBuilder::new(&app, "main", Default::default()).build().expect("mock window");
    // What the event loop's setup does in the real app.
    likeness_app::start(app.handle()).expect("background threads");
    TestApp { app, webview, dir }
}

impl TestApp {
    /// Every payload of `event` from now on, in the order emitted.
    pub fn record(&self, event: &str) -> std::sync::Arc<std::sync::Mutex<Vec<Value>>> {
        use tauri::Listener;
        let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Value>::new()));
        let sink = events.clone();
        self.app.listen_any(event, move |e| {
            if let Ok(v) = serde_json::from_str::<Value>(e.payload()) {
                sink.lock().expect("events").push(v);
            }
        });
        events
    }
}

/// An app whose worker does not run (jobs stay queued).
pub fn app() -> TestApp {
    app_with(|d| config(d, false))
}

fn request(cmd: &str, body: InvokeBody, headers: tauri::http::HeaderMap) -> InvokeRequest {
    InvokeRequest {
        cmd: cmd.into(),
        callback: CallbackFn(0),
        error: CallbackFn(1),
        // The page's origin on Linux (not http://tauri.localhost, which counts as remote here).
        url: "tauri://localhost".parse().expect("url"),
        body,
        headers,
        invoke_key: INVOKE_KEY.to_string(),
    }
}

impl TestApp {
    /// Calls a command with JSON arguments; Ok(result) or Err(the `{code, message}` error).
    pub fn invoke(&self, cmd: &str, args: Value) -> Result<Value, Value> {
        get_ipc_response(&self.webview, request(cmd, InvokeBody::Json(args), Default::default()))
            .map(|r| r.deserialize::<Value>().expect("JSON response"))
    }

    /// Sends a dropped photo as the page does: raw bytes, name in the `x-photo-name` header.
    pub fn stage(&self, name: &str, bytes: Vec<u8>) -> Result<Value, Value> {
        let mut headers = tauri::http::HeaderMap::new();
        headers.insert("x-photo-name", name.parse().expect("header"));
        get_ipc_response(&self.webview, request("stage_photo", InvokeBody::Raw(bytes), headers))
            .map(|r| r.deserialize::<Value>().expect("JSON response"))
    }

    pub fn state(&self) -> likeness_app::AppState {
        self.app.state::<likeness_app::AppState>().inner().clone()
    }

    pub fn jobs(&self) -> Vec<Value> {
        self.invoke("list_jobs", Value::Null).expect("list_jobs").as_array().cloned().expect("array")
    }
}

/// The error's code, failing the test with the whole value otherwise.
pub fn code(r: Result<Value, Value>) -> String {
    match r {
        Ok(v) => panic!("expected an error, got {v}"),
        Err(e) => {
            assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "error without a message: {e}");
            e["code"].as_str().unwrap_or_else(|| panic!("error without a code: {e}")).to_string()
        }
    }
}

pub fn settings() -> Value {
    serde_json::json!({"preset": "square", "backdrop": "gradient", "format": "png", "jpeg_quality": 92,
                       "relight": 0.5, "retouch": 0.35, "max_size": 512})
}
