//! The happy paths and the JSON contracts of detect, segment and generate.

use crate::support::*;

#[test]
fn detect_json_contract_on_real_photos() {
    let data = tempfile::tempdir().expect("tempdir");
    for name in ["astronaut.png", "grace_hopper_512x512.jpg", "camera.png"] {
        let o = run(&["detect", photo(name).to_str().expect("utf8"), "--json"], data.path());
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        let v = json(&o);
        let (w, h) = (v["width"].as_f64().expect("width"), v["height"].as_f64().expect("height"));
        let faces = v["faces"].as_array().expect("faces");
        assert!(!faces.is_empty(), "{name}: no face found");
        let f = &faces[0];
        assert!(f["score"].as_f64().expect("score") > 0.5);
        let b = &f["box"];
        let (bx, by, bw, bh) = (b["x"].as_f64().expect("x"), b["y"].as_f64().expect("y"), b["w"].as_f64().expect("w"), b["h"].as_f64().expect("h"));
        assert!(bx >= 0.0 && by >= 0.0 && bx + bw <= w + 0.5 && by + bh <= h + 0.5, "{name}: box outside image");
        for k in ["right_eye", "left_eye", "nose", "mouth", "right_ear", "left_ear"] {
            let p = f["landmarks"][k].as_array().unwrap_or_else(|| panic!("{name}: landmark {k}"));
            assert_eq!(p.len(), 2);
        }
        // The subject's right eye is on the image's left.
        assert!(f["landmarks"]["right_eye"][0].as_f64() < f["landmarks"]["left_eye"][0].as_f64(), "{name}");
    }
    for name in ["coffee.png", "rocket.jpg", "chelsea.png"] {
        let o = run(&["detect", photo(name).to_str().expect("utf8"), "--json"], data.path());
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        assert_eq!(json(&o)["faces"].as_array().map(Vec::len), Some(0), "{name}: a face where there is none");
    }
}

#[test]
fn detect_applies_exif_orientation() {
    let data = tempfile::tempdir().expect("tempdir");
    let img = image::open(photo("grace_hopper_512x512.jpg")).expect("open").to_rgb8();
    // Stored rotated 90 degrees clockwise... with orientation 8 (rotate 270 CW to view) it is upright again.
    let stored = image::imageops::rotate90(&img);
    let bytes = jpeg_with_orientation(&encode_jpeg(&stored), 8);
    let p = data.path().join("rotated.jpg");
    std::fs::write(&p, bytes).expect("write");
    let o = run(&["detect", p.to_str().expect("utf8"), "--json"], data.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let v = json(&o);
    assert_eq!((v["width"].as_u64(), v["height"].as_u64()), (Some(512), Some(512)));
    let f = &v["faces"][0];
    // Upright: eyes above the mouth.
    assert!(f["landmarks"]["right_eye"][1].as_f64().expect("eye") < f["landmarks"]["mouth"][1].as_f64().expect("mouth"));
}

#[test]
fn segment_writes_a_mask_at_photo_size() {
    let data = tempfile::tempdir().expect("tempdir");
    let out = data.path().join("mask.png");
    let o = run(&["segment", photo("astronaut.png").to_str().expect("utf8"), "--out", out.to_str().expect("utf8")], data.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let mask = image::open(&out).expect("mask").to_luma8();
    assert_eq!(mask.dimensions(), (512, 512));
    // Person in the middle, not in the top corners.
    assert!(mask.get_pixel(256, 300).0[0] > 200);
    assert!(mask.get_pixel(5, 5).0[0] < 60);
    // Never overwritten.
    let again = run(&["segment", photo("astronaut.png").to_str().expect("utf8"), "--out", out.to_str().expect("utf8")], data.path());
    assert!(!again.status.success());
    assert!(stderr(&again).contains("already exists"), "{}", stderr(&again));
}

#[test]
fn generate_writes_headshots_without_overwriting() {
    let data = tempfile::tempdir().expect("tempdir");
    let out = data.path().join("out");
    let args = |fmt: &str| {
        vec![
            "generate".to_string(),
            photo("astronaut.png").display().to_string(),
            photo("grace_hopper_512x512.jpg").display().to_string(),
            "--out".into(),
            out.display().to_string(),
            "--format".into(),
            fmt.into(),
            "--json".into(),
        ]
    };
    let a: Vec<String> = args("png");
    let o = run(&a.iter().map(String::as_str).collect::<Vec<_>>(), data.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let v = json(&o);
    let outs = v["outputs"].as_array().expect("outputs");
    assert_eq!(outs.len(), 2);
    for rec in outs {
        let path = std::path::PathBuf::from(rec["path"].as_str().expect("path"));
        let img = image::open(&path).expect("decodes").to_rgb8();
        assert_eq!(img.width() as u64, rec["width"].as_u64().expect("w"));
        assert_eq!(img.height() as u64, rec["height"].as_u64().expect("h"));
        assert_eq!(img.width(), img.height(), "square preset");
        assert!(rec["input"].as_str().is_some());
    }
    // Same command again: new names, the first files untouched.
    let before: Vec<_> = files(&out).iter().map(|p| std::fs::read(p).expect("read")).collect();
    let o2 = run(&a.iter().map(String::as_str).collect::<Vec<_>>(), data.path());
    assert!(o2.status.success(), "{}", stderr(&o2));
    let after = files(&out);
    assert_eq!(after.len(), 4);
    let first_two: Vec<_> = json(&o)["outputs"].as_array().expect("o").iter().map(|r| r["path"].as_str().expect("p").to_string()).collect();
    for (p, b) in first_two.iter().zip(before.iter()) {
        assert_eq!(&std::fs::read(p).expect("read"), b, "{p} was overwritten");
    }
    // JPEG and WebP too.
    for fmt in ["jpg", "webp"] {
        let o = run(&args(fmt).iter().map(String::as_str).collect::<Vec<_>>(), data.path());
        assert!(o.status.success(), "{fmt}: {}", stderr(&o));
        for rec in json(&o)["outputs"].as_array().expect("outputs") {
            let p = rec["path"].as_str().expect("path");
            assert!(p.ends_with(fmt), "{p}");
            image::open(p).expect("decodes");
        }
    }
}

#[test]
fn generate_every_preset_and_backdrop() {
    let data = tempfile::tempdir().expect("tempdir");
    let out = data.path().join("out");
    let input = photo("grace_hopper_512x512.jpg");
    for (preset, ratio) in [("square", 1.0), ("portrait", 0.8), ("passport-eu", 35.0 / 45.0), ("us-passport", 1.0), ("team", 1.0)] {
        let o = run(&["generate", input.to_str().expect("utf8"), "--out", out.to_str().expect("utf8"), "--preset", preset, "--json"], data.path());
        assert!(o.status.success(), "{preset}: {}", stderr(&o));
        let rec = &json(&o)["outputs"][0];
        let (w, h) = (rec["width"].as_f64().expect("w"), rec["height"].as_f64().expect("h"));
        assert!((w / h - ratio).abs() < 0.02, "{preset}: {w}x{h}");
    }
    for bg in ["white", "#336699", "gradient:#dddddd:#555555", "blur", "image:mottled-grey"] {
        let o = run(&["generate", input.to_str().expect("utf8"), "--out", out.to_str().expect("utf8"), "--background", bg, "--json"], data.path());
        assert!(o.status.success(), "{bg}: {}", stderr(&o));
    }
    // White backdrop: the top corners of the headshot are white.
    let o = run(&["generate", input.to_str().expect("utf8"), "--out", out.to_str().expect("utf8"), "--background", "white", "--relight", "0", "--json"], data.path());
    let img = image::open(json(&o)["outputs"][0]["path"].as_str().expect("p")).expect("img").to_rgb8();
    let px = img.get_pixel(3, 3).0;
    assert!(px.iter().all(|&c| c > 240), "corner {px:?}");
}

#[test]
fn several_faces_use_the_most_prominent_and_say_so() {
    let data = tempfile::tempdir().expect("tempdir");
    let a = image::open(photo("astronaut.png")).expect("a").to_rgb8();
    let g = image::open(photo("grace_hopper_512x512.jpg")).expect("g").to_rgb8();
    let small = image::imageops::resize(&g, 256, 256, image::imageops::FilterType::Triangle);
    let mut both = image::RgbImage::from_pixel(768, 512, image::Rgb([128, 128, 128]));
    image::imageops::replace(&mut both, &a, 0, 0);
    image::imageops::replace(&mut both, &small, 512, 128);
    let p = data.path().join("two.png");
    both.save(&p).expect("save");
    let out = data.path().join("out");
    let o = run(&["generate", p.to_str().expect("utf8"), "--out", out.to_str().expect("utf8"), "--json"], data.path());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("faces found"), "{}", stderr(&o));
    assert_eq!(files(&out).len(), 1);
}

#[test]
fn models_verify_passes_on_the_bundle() {
    let data = tempfile::tempdir().expect("tempdir");
    let o = run(&["models", "verify"], data.path());
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let o = run(&["models", "list", "--json"], data.path());
    let v = json(&o);
    // Bundled models are all there; user-imported ones may be "not-installed" (not an error).
    assert!(v["models"].as_array().expect("models").iter().all(|m| m["state"] == "ok" || m["bundled"] == false));
}
