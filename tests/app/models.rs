//! The Models screen (states checked against the manifest, license texts) and the device choice.

use serde_json::{json, Value};

use crate::support::{app, app_with, code, config, repo_file};

#[test]
fn bundled_models_are_listed_with_state_purpose_and_license() {
    let t = app();
    let models = t.invoke("list_models", Value::Null).expect("list");
    let models = models.as_array().expect("array");
    assert!(models.iter().filter(|m| m["bundled"] == true).count() >= 5);
    for m in models {
        // Bundled models are intact; an optional one the user has not imported (GFPGAN) says so.
        let want = if m["bundled"] == true { "ok" } else { "not-installed" };
        assert_eq!(m["state"], want, "{m}");
        assert!(m["purpose"].as_str().is_some_and(|p| !p.is_empty()), "{m}");
    }
    let mesh = models.iter().find(|m| m["id"] == "face-mesh-468").expect("face mesh");
    assert_eq!(mesh["license"], "Apache-2.0");
    assert_eq!(mesh["has_license_text"], true);
    let text = t.invoke("model_license", json!({"id": "face-mesh-468"})).expect("license");
    assert!(text["text"].as_str().is_some_and(|s| s.contains("Apache License")), "{text}");
    assert_eq!(code(t.invoke("model_license", json!({"id": "no-such-model"}))), "not_found");
}

#[test]
fn a_missing_or_damaged_model_is_shown_as_such() {
    let t = app_with(|d| {
        let models = d.path().join("models");
        std::fs::create_dir(&models).expect("models dir");
        for e in std::fs::read_dir(repo_file("models")).expect("models").filter_map(|e| e.ok()) {
            std::fs::copy(e.path(), models.join(e.file_name())).expect("copy");
        }
        std::fs::remove_file(models.join("face_mesh_468.safetensors")).expect("remove one");
        let sel = models.join("selfie_segmentation_256.safetensors");
        let mut bytes = std::fs::read(&sel).expect("read");
        bytes.truncate(bytes.len() / 2);
        std::fs::write(&sel, bytes).expect("truncate");
        likeness_app::Config { models_dir: Some(models), ..config(d, false) }
    });
    let models = t.invoke("list_models", Value::Null).expect("list");
    let state = |id: &str| models.as_array().and_then(|m| m.iter().find(|x| x["id"] == id).cloned()).expect("listed");
    assert_eq!(state("face-mesh-468")["state"], "missing");
    assert_eq!(state("selfie-segmentation-256")["state"], "corrupt");
    assert!(state("selfie-segmentation-256")["detail"].as_str().is_some_and(|d| d.contains("selfie_segmentation_256.safetensors")));
    assert_eq!(state("blazeface-front-128")["state"], "ok");
    // No manifest at all: an error that says what to do.
    let t2 = app_with(|d| likeness_app::Config { models_dir: Some(d.path().to_path_buf()), ..config(d, false) });
    assert_eq!(code(t2.invoke("list_models", Value::Null)), "models_missing");
}

#[test]
fn the_device_choice_is_stored_and_gpu_is_refused_without_support() {
    let t = app();
    let info = t.invoke("app_info", Value::Null).expect("info");
    assert_eq!(info["device"]["choice"], "cpu");
    assert_eq!(info["device"]["active"], "cpu");
    let gpu_built = cfg!(any(feature = "cuda", feature = "metal"));
    if !gpu_built {
        assert_eq!(info["device"]["gpu_available"], false);
        assert!(info["device"]["gpu_reason"].as_str().is_some_and(|r| r.contains("CUDA")), "{info}");
        assert_eq!(code(t.invoke("set_device", json!({"device": "gpu"}))), "unsupported");
    }
    assert_eq!(t.invoke("set_device", json!({"device": "cpu"})).expect("cpu")["choice"], "cpu");
    assert_eq!(code(t.invoke("set_device", json!({"device": "tpu"}))), "invalid_input");
}
