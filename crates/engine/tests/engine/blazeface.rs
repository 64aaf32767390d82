//! BlazeFace: parity with onnxruntime on committed fixtures, and the face detector on real photos.

use candle_core::{DType, Device, Tensor};
use image::{imageops, Rgb, RgbImage};
use likeness_engine::faces::{decode_anchors, ssd_anchors, weighted_nms, Face, FaceBox, FaceDetector};
use likeness_engine::imgops::box_downscale;
use likeness_engine::models::blazeface::{BlazeFace, Config};
use likeness_engine::weights::var_builder;
use likeness_engine::EngineError;

use crate::common::{fixture, model_bytes, photo, rel_err};

/// float32 parity bound: relative to the largest reference magnitude (see `common::rel_err`).
const PARITY_TOL: f32 = 1e-4;

fn model(cfg: &Config, file: &str) -> BlazeFace {
    let vb = var_builder("blazeface", model_bytes(file), &Device::Cpu).expect("weights");
    BlazeFace::new(cfg, vb).expect("model")
}

fn parity(cfg: Config, weights: &str, fixture_file: &str) {
    let net = model(&cfg, weights);
    let fx = fixture(fixture_file);
    for input in ["random", "astronaut"] {
        // Same arithmetic as tools/fixtures/blazeface.py: pixel * (2/255) - 1 in f32.
        let pixels = fx[&format!("{input}.pixels")].to_dtype(DType::F32).expect("pixels");
        let x = ((pixels * (2.0f64 / 255.0)).expect("scale") - 1.0).expect("shift");
        let (regs, logits) = net.forward(&x).expect("forward");
        assert_eq!(regs.dims(), &[1, 896, 16]);
        assert_eq!(logits.dims(), &[1, 896]);
        let er = rel_err(&regs, &fx[&format!("{input}.regressors")]);
        let el = rel_err(&logits, &fx[&format!("{input}.logits")]);
        assert!(er < PARITY_TOL && el < PARITY_TOL, "{fixture_file}/{input}: regressors {er:e}, logits {el:e}");
    }
}

#[test]
fn front_matches_onnxruntime() {
    parity(Config::front(), "blazeface_front_128.safetensors", "blazeface_front.safetensors");
}

#[test]
fn back_matches_onnxruntime() {
    parity(Config::back(), "blazeface_back_256.safetensors", "blazeface_back.safetensors");
}

#[test]
fn wrong_input_size_is_an_error() {
    let net = model(&Config::front(), "blazeface_front_128.safetensors");
    let x = Tensor::zeros((1, 3, 64, 64), DType::F32, &Device::Cpu).expect("zeros");
    assert!(net.forward(&x).is_err());
}

fn detector() -> FaceDetector {
    let back = Some(model_bytes("blazeface_back_256.safetensors"));
    FaceDetector::new(model_bytes("blazeface_front_128.safetensors"), back, &Device::Cpu).expect("detector")
}

fn front_only() -> FaceDetector {
    FaceDetector::new(model_bytes("blazeface_front_128.safetensors"), None, &Device::Cpu).expect("detector")
}

fn centre(b: &FaceBox) -> [f32; 2] {
    [b.x + b.w / 2.0, b.y + b.h / 2.0]
}

fn dist(a: [f32; 2], b: [f32; 2]) -> f32 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt()
}

fn resized(img: &RgbImage, w: u32, h: u32) -> RgbImage {
    imageops::resize(img, w, h, imageops::FilterType::Triangle)
}

/// One face, with a plausible box: inside the image, roughly square, eyes inside the box.
fn one_face(name: &str, img: &RgbImage, faces: &[Face]) -> Face {
    assert_eq!(faces.len(), 1, "{name}: expected one face, got {faces:?}");
    let f = faces[0].clone();
    let b = f.bbox;
    assert!(f.score >= FaceDetector::DEFAULT_THRESHOLD && f.score <= 1.0, "{name}: score {}", f.score);
    assert!(b.x >= 0.0 && b.y >= 0.0 && b.x + b.w <= img.width() as f32 && b.y + b.h <= img.height() as f32);
    assert!(b.w > 0.08 * img.width() as f32 && (b.w / b.h - 1.0).abs() < 0.3, "{name}: box {b:?}");
    for eye in &f.keypoints[..2] {
        assert!(
            eye[0] > b.x && eye[0] < b.x + b.w && eye[1] > b.y && eye[1] < b.y + b.h,
            "{name}: eye {eye:?} outside {b:?}"
        );
    }
    // The subject's right eye is on the image's left.
    assert!(f.keypoints[0][0] < f.keypoints[1][0], "{name}: eyes swapped");
    f
}

#[test]
fn finds_the_face_in_portraits() {
    let det = detector();
    for name in ["astronaut.png", "grace_hopper_512x512.jpg", "camera.png"] {
        let img = photo(name);
        one_face(name, &img, &det.detect(&img).expect("detect"));
    }
}

#[test]
fn no_face_in_objects_or_the_cat() {
    let det = detector();
    for name in ["coffee.png", "rocket.jpg", "chelsea.png"] {
        let img = photo(name);
        let faces = det.detect(&img).expect("detect");
        assert!(faces.is_empty(), "{name}: {faces:?}");
    }
}

/// Eye centres measured by hand on 8x zoomed crops (pupil centres, pixels of the 512x512 photos).
/// BlazeFace's 128 px input puts one input pixel at 3-4 % of these faces' width, so the bar is 7 %.
#[test]
fn eyes_land_on_the_hand_measured_eyes() {
    let det = detector();
    for (name, right_eye, left_eye) in [
        ("astronaut.png", [203.0, 102.0], [245.0, 103.0]),
        ("grace_hopper_512x512.jpg", [222.5, 171.7], [304.0, 167.5]),
    ] {
        let img = photo(name);
        let f = one_face(name, &img, &det.detect(&img).expect("detect"));
        let tol = 0.07 * f.bbox.w;
        let (e0, e1) = (dist(f.keypoints[0], right_eye), dist(f.keypoints[1], left_eye));
        assert!(e0 < tol && e1 < tol, "{name}: eye errors {e0:.1}, {e1:.1} px, face width {:.1}", f.bbox.w);
        // The box is centred on the face: between the eyes horizontally, eyes in its upper half.
        let c = centre(&f.bbox);
        let mid_x = (right_eye[0] + left_eye[0]) / 2.0;
        assert!((c[0] - mid_x).abs() < 0.1 * f.bbox.w, "{name}: box centre {c:?}");
        assert!(right_eye[1] < c[1] && right_eye[1] > f.bbox.y, "{name}: eyes not in the upper half");
    }
}

#[test]
fn found_again_at_4x_and_half_size() {
    let det = detector();
    for name in ["astronaut.png", "grace_hopper_512x512.jpg", "camera.png"] {
        let img = photo(name);
        let base = one_face(name, &img, &det.detect(&img).expect("detect"));
        for scale in [4.0f32, 0.5] {
            let (w, h) = ((img.width() as f32 * scale) as u32, (img.height() as f32 * scale) as u32);
            let big = resized(&img, w, h);
            let f = one_face(name, &big, &det.detect(&big).expect("detect"));
            let c = centre(&f.bbox).map(|v| v / scale);
            let err = dist(c, centre(&base.bbox));
            assert!(err < 0.05 * base.bbox.w, "{name} x{scale}: centre moved {err:.1} px");
            assert!((f.bbox.w / scale / base.bbox.w - 1.0).abs() < 0.1, "{name} x{scale}: width {}", f.bbox.w);
        }
    }
}

/// A face too small for the front model (Grace Hopper shrunk to 128 px in a 1024x768 frame): the
/// back model finds it, at the right place.
#[test]
fn back_model_finds_a_small_face() {
    let mut canvas = RgbImage::from_pixel(1024, 768, Rgb([120, 130, 125]));
    imageops::overlay(&mut canvas, &resized(&photo("grace_hopper_512x512.jpg"), 128, 128), 600, 300);
    assert!(front_only().detect(&canvas).expect("detect").is_empty());
    let faces = detector().detect(&canvas).expect("detect");
    assert_eq!(faces.len(), 1, "{faces:?}");
    // The face sits at (163..367, 123..327) of the 512 px photo: /4 and offset by (600, 300).
    let c = centre(&faces[0].bbox);
    assert!(dist(c, [600.0 + 265.0 / 4.0, 300.0 + 225.0 / 4.0]) < 10.0, "{:?}", faces[0].bbox);
}

/// Two faces too small for the front model (70 and 100 px wide in a 1024x768 frame): the back
/// model finds both, the bigger one first.
#[test]
fn several_small_faces_most_prominent_first() {
    let mut canvas = RgbImage::from_pixel(1024, 768, Rgb([200, 200, 200]));
    imageops::overlay(&mut canvas, &resized(&photo("astronaut.png"), 384, 384), 40, 350);
    imageops::overlay(&mut canvas, &resized(&photo("grace_hopper_512x512.jpg"), 256, 256), 650, 150);
    assert!(front_only().detect(&canvas).expect("detect").is_empty());
    let faces = detector().detect(&canvas).expect("detect");
    assert_eq!(faces.len(), 2, "{faces:?}");
    assert!(faces[0].bbox.x > 650.0 && faces[1].bbox.x < 424.0, "{faces:?}");
    assert!(faces[0].bbox.w > faces[1].bbox.w);
}

#[test]
fn corrupt_weights_are_a_model_error() {
    let front = model_bytes("blazeface_front_128.safetensors");
    let bad: [(Vec<u8>, Option<Vec<u8>>); 4] = [
        (Vec::new(), None),
        (b"not a safetensors file at all".to_vec(), None),
        (front[..front.len() / 2].to_vec(), None),
        // Valid safetensors, wrong architecture: the front weights offered as the back model.
        (front.clone(), Some(front.clone())),
    ];
    for (f, b) in bad {
        match FaceDetector::new(f, b, &Device::Cpu) {
            Err(EngineError::Model { model, .. }) => assert!(model.starts_with("blazeface")),
            other => panic!("expected a model error, got {other:?}"),
        }
    }
}

#[test]
fn empty_image_is_an_error() {
    assert!(matches!(front_only().detect(&RgbImage::new(0, 0)), Err(EngineError::TooSmall { .. })));
}

#[test]
fn threshold_is_clamped_and_moves_the_back_bar() {
    let det = front_only();
    assert!((det.back_threshold() - 0.82).abs() < 0.01, "{}", det.back_threshold());
    let det = det.with_threshold(0.3);
    assert_eq!(det.threshold(), 0.3);
    assert!(det.back_threshold() > 0.3 && det.back_threshold() < 0.6);
    assert_eq!(det.with_threshold(7.0).threshold(), 1.0);
}

#[test]
fn anchors_follow_mediapipe_layout() {
    for cfg in [Config::front(), Config::back()] {
        let a = ssd_anchors(&cfg);
        assert_eq!(a.len(), 896);
        assert_eq!(cfg.num_anchors(), 896);
        // 16x16 map, 2 per cell, row-major: anchors 0 and 1 share the first cell, 2 is the next column.
        assert_eq!(a[0], [0.5 / 16.0, 0.5 / 16.0]);
        assert_eq!(a[1], a[0]);
        assert_eq!(a[2], [1.5 / 16.0, 0.5 / 16.0]);
        assert_eq!(a[32], [0.5 / 16.0, 1.5 / 16.0]);
        // Then the 8x8 map with 6 per cell.
        assert_eq!(a[511], [15.5 / 16.0, 15.5 / 16.0]);
        assert!(a[512..518].iter().all(|p| *p == [0.5 / 8.0, 0.5 / 8.0]));
        assert_eq!(a[518], [1.5 / 8.0, 0.5 / 8.0]);
        assert_eq!(a[895], [7.5 / 8.0, 7.5 / 8.0]);
    }
}

#[test]
fn decode_scales_offsets_by_the_input_size() {
    let anchors = [[0.5, 0.25], [0.1, 0.1], [0.9, 0.9]];
    let mut regs = vec![0f32; 48];
    regs[..4].copy_from_slice(&[12.8, -6.4, 32.0, 64.0]);
    regs[4] = 1.28; // right eye x
    regs[5] = 2.56; // right eye y
                    // Scores: sigmoid(0) = 0.5 passes 0.4; -3 fails; 1000 is clipped to 100 (score 1, not NaN).
    let logits = [0.0, -3.0, 1000.0];
    let faces = decode_anchors(&regs, &logits, &anchors, 128, 0.4);
    assert_eq!(faces.len(), 2);
    let f = &faces[0];
    assert!((f.score - 0.5).abs() < 1e-6);
    let c = centre(&f.bbox);
    assert!((c[0] - 0.6).abs() < 1e-6 && (c[1] - 0.2).abs() < 1e-6, "{c:?}");
    assert!((f.bbox.w - 0.25).abs() < 1e-6 && (f.bbox.h - 0.5).abs() < 1e-6);
    assert!((f.keypoints[0][0] - 0.51).abs() < 1e-6 && (f.keypoints[0][1] - 0.27).abs() < 1e-6);
    assert_eq!(f.keypoints[1], [0.5, 0.25]);
    assert_eq!(faces[1].score, 1.0);
    // NaN logits or regressors are no face.
    let mut nan_regs = regs.clone();
    nan_regs[33] = f32::NAN;
    assert_eq!(decode_anchors(&nan_regs, &[0.0, -3.0, 1000.0], &anchors, 128, 0.4).len(), 1);
    assert!(decode_anchors(&regs, &[f32::NAN; 3], &anchors, 128, 0.0).is_empty());
}

fn face(score: f32, x: f32, y: f32, w: f32, kp: f32) -> Face {
    Face { score, bbox: FaceBox { x, y, w, h: w }, keypoints: [[kp, kp]; 6] }
}

#[test]
fn weighted_nms_averages_each_cluster() {
    let faces = vec![
        face(0.6, 12.0, 12.0, 100.0, 30.0),
        face(0.9, 0.0, 0.0, 100.0, 0.0),
        face(0.8, 500.0, 500.0, 50.0, 7.0), // far away: its own face
        face(0.3, 60.0, 60.0, 100.0, 90.0), // IoU with the best is 0.087 < 0.3: kept apart
    ];
    let out = weighted_nms(faces, 0.3);
    assert_eq!(out.len(), 3);
    // Best first; the cluster {0.9 at 0, 0.6 at 12} averages to 12 * 0.6 / 1.5 = 4.8.
    assert_eq!(out[0].score, 0.9);
    assert!((out[0].bbox.x - 4.8).abs() < 1e-4 && (out[0].keypoints[3][1] - 12.0).abs() < 1e-4, "{:?}", out[0]);
    assert_eq!(out[1], face(0.8, 500.0, 500.0, 50.0, 7.0));
    assert_eq!(out[2], face(0.3, 60.0, 60.0, 100.0, 90.0));
    assert!(weighted_nms(Vec::new(), 0.3).is_empty());
    // A NaN box (broken weights) neither loops forever nor swallows the others.
    let out = weighted_nms(vec![face(0.9, f32::NAN, 0.0, 10.0, 0.0), face(0.8, 0.0, 0.0, 10.0, 0.0)], 0.3);
    assert_eq!(out.len(), 2);
}

#[test]
fn iou_of_boxes() {
    let a = FaceBox { x: 0.0, y: 0.0, w: 10.0, h: 10.0 };
    let b = FaceBox { x: 5.0, y: 0.0, w: 10.0, h: 10.0 };
    assert!((a.iou(&b) - 50.0 / 150.0).abs() < 1e-6);
    assert_eq!(a.iou(&a), 1.0);
    assert_eq!(a.iou(&FaceBox { x: 20.0, y: 20.0, w: 5.0, h: 5.0 }), 0.0);
    assert_eq!(a.iou(&FaceBox { x: 0.0, y: 0.0, w: 0.0, h: 0.0 }), 0.0);
}

#[test]
fn box_downscale_averages_blocks() {
    let mut img = RgbImage::new(5, 3);
    for (x, y, p) in img.enumerate_pixels_mut() {
        p.0 = [(x * 10) as u8, (y * 100) as u8, 50];
    }
    let out = box_downscale(&img, 2);
    assert_eq!(out.dimensions(), (3, 2));
    assert_eq!(out.get_pixel(0, 0).0, [5, 50, 50]);
    // Edge blocks average only the pixels they have: column 4 alone, row 2 alone.
    assert_eq!(out.get_pixel(2, 0).0, [40, 50, 50]);
    assert_eq!(out.get_pixel(2, 1).0, [40, 200, 50]);
    assert_eq!(box_downscale(&img, 1), img);
    assert_eq!(box_downscale(&RgbImage::new(0, 0), 3).dimensions(), (0, 0));
}

/// Non-square photos are letterboxed; boxes and keypoints must come back to the photo's pixels.
#[test]
fn letterbox_maps_back_to_pixels() {
    let det = detector();
    let img = photo("grace_hopper_512x512.jpg");
    let base = one_face("grace", &img, &det.detect(&img).expect("detect"));
    for (w, h, ox, oy) in [(800u32, 600u32, 250i64, 60i64), (600, 800, 60, 250)] {
        let mut canvas = RgbImage::from_pixel(w, h, Rgb([90, 90, 90]));
        imageops::overlay(&mut canvas, &img, ox, oy);
        let f = one_face("grace letterboxed", &canvas, &det.detect(&canvas).expect("detect"));
        let moved = |p: [f32; 2]| [p[0] + ox as f32, p[1] + oy as f32];
        let tol = 0.05 * base.bbox.w;
        assert!(dist(centre(&f.bbox), moved(centre(&base.bbox))) < tol, "{w}x{h}: {:?} vs {:?}", f.bbox, base.bbox);
        for (k, (a, b)) in f.keypoints.iter().zip(base.keypoints.iter()).enumerate().take(4) {
            assert!(dist(*a, moved(*b)) < tol, "{w}x{h}: keypoint {k} {a:?} vs {b:?}");
        }
    }
}
