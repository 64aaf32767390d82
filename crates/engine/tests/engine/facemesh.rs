//! Face mesh: parity with the TFLite interpreter (fixture from tools/fixtures/facemesh.py) and the
//! real weights on real photos, with faces built by hand from positions measured on the photos (so
//! these tests do not depend on the detector).

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use likeness_engine::faces::{Face, FaceBox};
use likeness_engine::imgops::{warp_rgb, Affine, Border};
use likeness_engine::landmarks::{FaceLandmarks, FaceMesh};
use likeness_engine::models::facemesh::{Config, FaceMeshNet};
use likeness_engine::weights::var_builder;

use crate::common::{fixture, model_bytes, photo, rel_err};

const WEIGHTS: &str = "face_mesh_468.safetensors";

fn net() -> FaceMeshNet {
    let vb = var_builder("face-mesh-468", model_bytes(WEIGHTS), &Device::Cpu).expect("weights");
    FaceMeshNet::new(&Config::face_mesh_468(), vb).expect("model")
}

fn mesh() -> FaceMesh {
    FaceMesh::new(model_bytes(WEIGHTS), &Device::Cpu).expect("face mesh")
}

fn dist(a: [f32; 2], b: [f32; 2]) -> f32 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt()
}

fn assert_near(name: &str, got: [f32; 2], want: [f32; 2], tol: f32) {
    let d = dist(got, want);
    assert!(
        d <= tol,
        "{name}: got ({:.1}, {:.1}), measured ({:.1}, {:.1}), {d:.1} px apart (tolerance {tol})",
        got[0],
        got[1],
        want[0],
        want[1]
    );
}

/// A hand-made detection: box (x, y, w, h) and keypoints right eye, left eye, nose, mouth, right ear, left ear.
fn face(bbox: [f32; 4], keypoints: [[f32; 2]; 6]) -> Face {
    Face { score: 1.0, bbox: FaceBox { x: bbox[0], y: bbox[1], w: bbox[2], h: bbox[3] }, keypoints }
}

/// Positions measured by eye on the 512x512 photos (pupils, nose tip, mouth corners).
struct Measured {
    face: Face,
    right_eye: [f32; 2],
    left_eye: [f32; 2],
    nose: [f32; 2],
    mouth_right: [f32; 2],
    mouth_left: [f32; 2],
    chin: [f32; 2],
}

fn astronaut() -> Measured {
    Measured {
        face: face(
            [180.0, 82.0, 90.0, 95.0],
            [[205.0, 101.0], [246.0, 103.0], [224.5, 126.0], [222.5, 145.0], [182.0, 122.0], [271.0, 122.0]],
        ),
        right_eye: [205.0, 101.0],
        left_eye: [246.0, 103.0],
        nose: [224.5, 126.0],
        mouth_right: [203.0, 141.0],
        mouth_left: [244.0, 141.0],
        chin: [221.0, 179.0],
    }
}

fn grace_hopper() -> Measured {
    Measured {
        face: face(
            [165.0, 140.0, 190.0, 180.0],
            [[221.7, 172.7], [305.0, 170.0], [266.7, 216.7], [265.0, 256.7], [160.0, 230.0], [360.0, 220.0]],
        ),
        right_eye: [221.7, 172.7],
        left_eye: [305.0, 170.0],
        nose: [266.7, 216.7],
        mouth_right: [230.0, 260.0],
        mouth_left: [301.7, 258.3],
        chin: [263.0, 315.0],
    }
}

/// Checks the mesh against the measured positions; `tol` scales with the face size.
fn check(name: &str, lm: &FaceLandmarks, m: &Measured, tol: f32) {
    assert_eq!(lm.points.len(), 468);
    assert!(lm.presence > 0.9, "{name}: presence {}", lm.presence);
    let [re, le, nose, mr, ml] = lm.five_point();
    assert_near(&format!("{name} right eye"), re, m.right_eye, tol);
    assert_near(&format!("{name} left eye"), le, m.left_eye, tol);
    assert_near(&format!("{name} nose tip"), nose, m.nose, tol * 1.5);
    assert_near(&format!("{name} right mouth corner"), mr, m.mouth_right, tol * 1.5);
    assert_near(&format!("{name} left mouth corner"), ml, m.mouth_left, tol * 1.5);
    assert_near(&format!("{name} chin"), lm.chin(), m.chin, tol * 2.0);
    // Eye distance within 15% of the measured one; subject's right eye on the image's left.
    let (d, want) = (dist(re, le), dist(m.right_eye, m.left_eye));
    assert!((d / want - 1.0).abs() < 0.15, "{name}: eye distance {d:.1} px, measured {want:.1}");
    assert!(re[0] < le[0], "{name}: right eye should be on the image's left");
    // Regions sit where they belong: lips around the mouth, brows above the eyes, the oval around all.
    let lips = lm.lips();
    let lc = [lips.iter().map(|p| p[0]).sum::<f32>() / 20.0, lips.iter().map(|p| p[1]).sum::<f32>() / 20.0];
    assert_near(
        &format!("{name} lips centre"),
        lc,
        [(m.mouth_right[0] + m.mouth_left[0]) / 2.0, (m.mouth_right[1] + m.mouth_left[1]) / 2.0],
        tol * 1.5,
    );
    let mean_y = |ps: &[[f32; 2]]| ps.iter().map(|p| p[1]).sum::<f32>() / ps.len() as f32;
    assert!(
        mean_y(&lm.right_brow()) < re[1] && mean_y(&lm.left_brow()) < le[1],
        "{name}: brows should be above the eyes"
    );
    assert!(lm.forehead_top()[1] < mean_y(&lm.right_brow()), "{name}: forehead top should be above the brows");
    let oval = lm.face_oval();
    assert_eq!(oval.len(), 36);
    for p in [re, le, nose, mr, ml] {
        assert!(inside(p, &oval), "{name}: ({:.1}, {:.1}) should be inside the face oval", p[0], p[1]);
    }
    assert_eq!(lm.right_eye().len(), 16);
    assert_eq!(lm.left_eye().len(), 16);
}

/// Even-odd point-in-polygon.
fn inside(p: [f32; 2], poly: &[[f32; 2]]) -> bool {
    let mut c = false;
    for (i, a) in poly.iter().enumerate() {
        let b = poly[(i + poly.len() - 1) % poly.len()];
        if (a[1] > p[1]) != (b[1] > p[1]) && p[0] < (b[0] - a[0]) * (p[1] - a[1]) / (b[1] - a[1]) + a[0] {
            c = !c;
        }
    }
    c
}

/// Tolerance: relative error 1e-4 (float32) on the landmarks and on the presence logit.
#[test]
fn facemesh_matches_tflite() {
    let fx = fixture("facemesh.safetensors");
    let net = net();
    let face_in = (fx["face.input"].to_dtype(DType::F32).expect("u8 -> f32") / 255.0).expect("scale");
    for (case, input) in [("random", fx["random.input"].clone()), ("face", face_in)] {
        let (points, presence) = net.forward(&input).expect("forward");
        let (e_pts, e_pres) =
            (rel_err(&points, &fx[&format!("{case}.points")]), rel_err(&presence, &fx[&format!("{case}.presence")]));
        eprintln!("facemesh parity {case}: points rel err {e_pts:.2e}, presence rel err {e_pres:.2e}");
        assert!(e_pts < 1e-4, "{case}: points rel err {e_pts}");
        assert!(e_pres < 1e-4, "{case}: presence rel err {e_pres}");
    }
    // Both cases in one batch give the same answers as one at a time.
    let batch = Tensor::cat(
        &[&fx["random.input"], &(fx["face.input"].to_dtype(DType::F32).expect("f32") / 255.0).expect("scale")],
        0,
    )
    .expect("cat");
    let (points, _) = net.forward(&batch).expect("batch forward");
    assert_eq!(points.dims(), &[2, 1404]);
    assert!(rel_err(&points.narrow(0, 1, 1).expect("row"), &fx["face.points"]) < 1e-4);
}

#[test]
fn facemesh_forward_time() {
    let net = net();
    let x = Tensor::rand(0f32, 1f32, (1, 3, 192, 192), &Device::Cpu).expect("input");
    let _ = net.forward(&x).expect("warm-up");
    let mut ms: Vec<f64> = (0..20)
        .map(|_| {
            let t = Instant::now();
            let (p, _) = net.forward(&x).expect("forward");
            assert_eq!(p.dims(), &[1, 1404]);
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    eprintln!("facemesh forward (1x3x192x192, CPU): median of 20 = {:.2} ms", ms[10]);
}

#[test]
fn facemesh_on_astronaut() {
    let lm = mesh().landmarks(&photo("astronaut.png"), &astronaut().face).expect("landmarks");
    check("astronaut", &lm, &astronaut(), 5.0);
}

#[test]
fn facemesh_on_grace_hopper() {
    let lm = mesh().landmarks(&photo("grace_hopper_512x512.jpg"), &grace_hopper().face).expect("landmarks");
    check("grace hopper", &lm, &grace_hopper(), 9.0);
}

/// The astronaut rotated by 35 degrees about her face: the detector's box stays axis-aligned, the
/// crop's rotation and the refinement pass must recover the landmarks.
#[test]
fn facemesh_on_rotated_face() {
    let img = photo("astronaut.png");
    let m = astronaut();
    let (cx, cy) = (225.0f32, 130.0f32);
    // rotated image pixel q -> original pixel p = R(theta) (q - c) + c
    let theta = 35f32.to_radians();
    let (s, c) = theta.sin_cos();
    let src_from_dst = Affine::similarity(1.0, theta, cx - (c * cx - s * cy), cy - (s * cx + c * cy));
    let rotated = warp_rgb(&img, &src_from_dst, 512, 512, Border::Replicate);
    let dst_from_src = src_from_dst.invert().expect("invertible");
    let mv = |p: [f32; 2]| dst_from_src.apply(p);
    let kp = m.face.keypoints.map(mv);
    // An axis-aligned box around the rotated keypoints, about as large as the upright one.
    let (x0, x1) = kp.iter().fold((f32::MAX, f32::MIN), |(a, b), p| (a.min(p[0]), b.max(p[0])));
    let (y0, y1) = kp.iter().fold((f32::MAX, f32::MIN), |(a, b), p| (a.min(p[1]), b.max(p[1])));
    let (bx, by) = ((x0 + x1) / 2.0, (y0 + y1) / 2.0);
    let rf = Measured {
        face: face([bx - 47.0, by - 47.0, 94.0, 94.0], kp),
        right_eye: mv(m.right_eye),
        left_eye: mv(m.left_eye),
        nose: mv(m.nose),
        mouth_right: mv(m.mouth_right),
        mouth_left: mv(m.mouth_left),
        chin: mv(m.chin),
    };
    let lm = mesh().landmarks(&rotated, &rf.face).expect("landmarks");
    assert_eq!(lm.points.len(), 468);
    assert!(lm.presence > 0.9, "presence {}", lm.presence);
    let [re, le, nose, mr, ml] = lm.five_point();
    assert_near("rotated right eye", re, rf.right_eye, 6.0);
    assert_near("rotated left eye", le, rf.left_eye, 6.0);
    assert_near("rotated nose tip", nose, rf.nose, 9.0);
    assert_near("rotated right mouth corner", mr, rf.mouth_right, 9.0);
    assert_near("rotated left mouth corner", ml, rf.mouth_left, 9.0);
    let angle = (le[1] - re[1]).atan2(le[0] - re[0]).to_degrees();
    assert!((angle + 35.0).abs() < 6.0, "eye line at {angle:.1} degrees, expected about -35");
}

#[test]
fn facemesh_low_presence_without_a_face() {
    // A face-sized box on the coffee cup.
    let img = photo("coffee.png");
    let f = face(
        [250.0, 150.0, 100.0, 100.0],
        [[280.0, 180.0], [320.0, 180.0], [300.0, 205.0], [300.0, 225.0], [255.0, 195.0], [345.0, 195.0]],
    );
    let lm = mesh().landmarks(&img, &f).expect("landmarks");
    assert!(lm.presence < 0.1, "coffee: presence {}", lm.presence);
    let astro = mesh().landmarks(&photo("astronaut.png"), &astronaut().face).expect("landmarks");
    assert!(astro.presence > 0.9 && astro.presence > lm.presence);
}

#[test]
fn facemesh_rejects_degenerate_faces() {
    let m = mesh();
    let img = photo("astronaut.png");
    let mut f = astronaut().face;
    f.bbox.w = f32::NAN;
    assert!(m.landmarks(&img, &f).is_err());
    let mut f = astronaut().face;
    f.bbox.w = 0.0;
    f.bbox.h = 0.0;
    assert!(m.landmarks(&img, &f).is_err());
    assert!(m.landmarks(&image::RgbImage::new(0, 0), &astronaut().face).is_err());
    // A face box far outside the image still returns (replicated borders), with low presence.
    let far = face(
        [5000.0, 5000.0, 90.0, 90.0],
        [[5020.0, 5020.0], [5060.0, 5020.0], [5040.0, 5040.0], [5040.0, 5060.0], [5000.0, 5030.0], [5090.0, 5030.0]],
    );
    let lm = m.landmarks(&img, &far).expect("landmarks off the image");
    assert!(lm.presence < 0.5, "presence {}", lm.presence);
    // A hand-built mesh with missing points reads them as NaN rather than panicking.
    let short = FaceLandmarks { points: vec![[1.0, 2.0, 0.0]; 3], presence: 1.0 };
    assert!(short.chin()[0].is_nan());
    assert!(FaceMesh::new(Vec::new(), &Device::Cpu).is_err());
}
