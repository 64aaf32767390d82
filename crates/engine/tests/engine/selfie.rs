//! Selfie segmentation: parity with the TFLite interpreter (fixture from tools/fixtures/selfie.py),
//! the exact half-pixel resize, and the real weights on real photos against hand-drawn masks.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use image::RgbImage;
use likeness_engine::imgops::Mask;
use likeness_engine::models::selfie::{Config, SelfieSegNet};
use likeness_engine::nn::{add_scaled_in_place, resize_bilinear, scale_add, scale_add_in_place};
use likeness_engine::segment::{Fit, Segmenter};
use likeness_engine::weights::var_builder;

use crate::common::{fixture, model_bytes, photo, rel_err};

const WEIGHTS: &str = "selfie_segmentation_256.safetensors";

fn net() -> SelfieSegNet {
    let vb = var_builder("selfie-segmentation-256", model_bytes(WEIGHTS), &Device::Cpu).expect("weights");
    SelfieSegNet::new(&Config::selfie_segmentation_256(), vb).expect("model")
}

fn u8_input(t: &Tensor) -> Tensor {
    (t.to_dtype(DType::F32).expect("u8 -> f32") / 255.0).expect("scale")
}

/// Tolerance: relative error 1e-4 (float32), scaled by the reference's largest magnitude
/// (`common::rel_err`): on the logits for the noise input (its probabilities are ~1e-12 and would
/// compare nothing), on the probabilities for the photo.
#[test]
fn selfie_matches_tflite() {
    let fx = fixture("selfie.safetensors");
    let net = net();
    let logits = net.forward_logits(&u8_input(&fx["random.input"])).expect("forward");
    let mask = net.forward(&u8_input(&fx["photo.input"])).expect("forward");
    assert_eq!(logits.dims(), fx["random.logits"].dims());
    assert_eq!(mask.dims(), fx["photo.mask"].dims());
    let (e_random, e_photo) = (rel_err(&logits, &fx["random.logits"]), rel_err(&mask, &fx["photo.mask"]));
    eprintln!("selfie parity: random logits rel err {e_random:.2e}, photo probabilities rel err {e_photo:.2e}");
    assert!(e_random < 1e-4, "random: logits rel err {e_random}");
    assert!(e_photo < 1e-4, "photo: probabilities rel err {e_photo}");
    // Both cases in one batch give the same answers as one at a time.
    let batch = Tensor::cat(&[&u8_input(&fx["random.input"]), &u8_input(&fx["photo.input"])], 0).expect("cat");
    let mask = net.forward(&batch).expect("batch forward");
    assert_eq!(mask.dims(), &[2, 1, 256, 256]);
    assert!(rel_err(&mask.narrow(0, 1, 1).expect("row"), &fx["photo.mask"]) < 1e-4);
}

/// Our resize kernel against candle's own half-pixel bilinear (`align_corners = false`), on the
/// 2x upsamplings of the decoder and on odd sizes both ways.
#[test]
fn resize_bilinear_is_half_pixel() {
    for (n, c, h, w, oh, ow) in
        [(1, 24, 32, 32, 64, 64), (2, 3, 7, 5, 14, 10), (1, 2, 9, 13, 4, 30), (1, 1, 1, 3, 5, 2)]
    {
        let x = Tensor::randn(0f32, 1f32, (n, c, h, w), &Device::Cpu).expect("input");
        let got = resize_bilinear(&x, oh, ow).expect("resize");
        let want = x.upsample_bilinear2d(oh, ow, false).expect("candle resize");
        let e = rel_err(&got, &want);
        assert!(e < 1e-6, "{h}x{w} -> {oh}x{ow}: rel err {e}");
    }
}

/// Inputs the network cannot take are errors, not panics: a side that does not halve cleanly to the
/// decoder's skips, or a wrong channel count.
#[test]
fn selfie_rejects_bad_inputs() {
    let net = net();
    for shape in [(1, 3, 250, 250), (1, 4, 256, 256)] {
        let x = Tensor::zeros(shape, DType::F32, &Device::Cpu).expect("input");
        assert!(net.forward(&x).is_err(), "{shape:?} was accepted");
    }
    let seg = segmenter();
    assert!(seg.segment(&RgbImage::new(0, 10)).is_err());
    let tiny = seg.segment(&RgbImage::new(1, 1)).expect("1x1 photo");
    assert_eq!(tiny.dimensions(), (1, 1));
}

/// The fused per-channel ops against candle's broadcast ops; the in-place forms leave their other
/// operands untouched.
#[test]
fn scale_add_ops_match_candle() {
    let d = Device::Cpu;
    let x = Tensor::randn(0f32, 1f32, (2, 5, 7, 3), &d).expect("x");
    let a = Tensor::randn(0f32, 1f32, (2, 5, 7, 3), &d).expect("a");
    let g = Tensor::rand(0f32, 1f32, (2, 5, 1, 1), &d).expect("g");
    let want_both = (x.broadcast_mul(&g).expect("mul") + &a).expect("add");
    let want_scaled_addend = (&x + a.broadcast_mul(&g).expect("mul")).expect("add");
    let a_before = a.copy().expect("copy");
    let cases = [
        ("scale_add", scale_add(&x, Some(&g), Some(&a)).expect("op"), &want_both),
        ("in place", scale_add_in_place(x.copy().expect("copy"), Some(&g), Some(&a)).expect("op"), &want_both),
        ("addend scaled", add_scaled_in_place(x.copy().expect("copy"), &a, &g).expect("op"), &want_scaled_addend),
    ];
    for (name, got, want) in cases {
        let e = rel_err(&got, want);
        assert!(e < 1e-6, "{name}: rel err {e}");
    }
    let scaled = scale_add_in_place(x.copy().expect("copy"), Some(&g), None).expect("op");
    assert!(rel_err(&scaled, &x.broadcast_mul(&g).expect("mul")) < 1e-6);
    assert_eq!(rel_err(&a, &a_before), 0.0, "the addend was modified");
}

#[test]
fn selfie_forward_time() {
    let net = net();
    let x = Tensor::rand(0f32, 1f32, (1, 3, 256, 256), &Device::Cpu).expect("input");
    let _ = net.forward(&x).expect("warm-up");
    let mut ms: Vec<f64> = (0..20)
        .map(|_| {
            let t = Instant::now();
            let m = net.forward(&x).expect("forward");
            assert_eq!(m.dims(), &[1, 1, 256, 256]);
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    eprintln!("selfie forward (1x3x256x256, CPU): median of 20 = {:.2} ms, min {:.2} ms", ms[10], ms[0]);
}

/// The person in assets/photos/astronaut.png (512x512), drawn by hand on the photo: hair, face, the
/// suit's neck ring and the suit; the helmet she holds (bottom right) is not part of the person.
#[rustfmt::skip]
const ASTRONAUT: &[[f32; 2]] = &[
    [225., 16.], [260., 22.], [287., 40.], [300., 70.], [300., 95.], [292., 115.], [277., 125.], [272., 140.],
    [265., 160.], [280., 165.], [300., 200.], [305., 230.], [330., 245.], [345., 266.], [357., 306.],
    [360., 343.], [320., 366.], [295., 401.], [282., 436.], [277., 471.], [280., 512.], [27., 512.],
    [22., 456.], [20., 406.], [22., 356.], [32., 306.], [45., 276.], [60., 250.], [85., 228.], [112., 215.],
    [114., 195.], [125., 165.], [140., 152.], [184., 150.], [182., 140.], [177., 122.], [165., 115.],
    [155., 100.], [154., 75.], [165., 55.], [190., 35.],
];

/// The helmet the astronaut holds (bottom right), drawn by hand. The model (like MediaPipe's own
/// runtime) counts a held object as part of the subject, so the reference mask is person + helmet.
#[rustfmt::skip]
const ASTRONAUT_HELMET: &[[f32; 2]] = &[
    [360., 343.], [370., 346.], [400., 343.], [450., 351.], [480., 376.], [495., 406.], [500., 451.],
    [512., 466.], [512., 512.], [280., 512.], [277., 471.], [282., 436.], [295., 401.], [320., 366.],
];

/// The person in assets/photos/grace_hopper_512x512.jpg, drawn by hand: cap, face, ears, jacket.
#[rustfmt::skip]
const GRACE_HOPPER: &[[f32; 2]] = &[
    [255., 9.], [300., 15.], [340., 40.], [352., 65.], [367., 75.], [372., 115.], [370., 150.], [375., 175.],
    [370., 215.], [360., 250.], [350., 271.], [330., 301.], [380., 331.], [440., 356.], [480., 371.],
    [500., 396.], [512., 421.], [512., 512.], [20., 512.], [25., 446.], [35., 396.], [50., 366.], [100., 346.],
    [160., 331.], [202., 298.], [190., 281.], [170., 256.], [167., 250.], [160., 215.], [155., 175.],
    [150., 145.], [147., 115.], [150., 80.], [175., 65.], [175., 50.], [190., 35.], [227., 15.],
];

/// Even-odd test of a point against a closed polygon.
fn inside(p: [f32; 2], poly: &[[f32; 2]]) -> bool {
    let mut hit = false;
    for (i, a) in poly.iter().enumerate() {
        let b = poly[(i + 1) % poly.len()];
        if (a[1] > p[1]) != (b[1] > p[1]) && p[0] < a[0] + (p[1] - a[1]) * (b[0] - a[0]) / (b[1] - a[1]) {
            hit = !hit;
        }
    }
    hit
}

/// IoU of `mask > 0.5` with the union of the polygons, for a mask of the photo cropped at (`x0`, `y0`).
fn iou(mask: &Mask, polys: &[&[[f32; 2]]], x0: u32, y0: u32) -> f64 {
    let (mut both, mut either) = (0u64, 0u64);
    for (x, y, p) in mask.enumerate_pixels() {
        let c = [(x + x0) as f32 + 0.5, (y + y0) as f32 + 0.5];
        let truth = polys.iter().any(|poly| inside(c, poly));
        let got = p.0[0] > 0.5;
        both += (truth && got) as u64;
        either += (truth || got) as u64;
    }
    both as f64 / either.max(1) as f64
}

fn crop(img: &RgbImage, x: u32, y: u32, w: u32, h: u32) -> RgbImage {
    image::imageops::crop_imm(img, x, y, w, h).to_image()
}

fn segmenter() -> Segmenter {
    Segmenter::new(model_bytes(WEIGHTS), &Device::Cpu).expect("segmenter")
}

/// Full frames (square) and portrait / landscape crops of both photos, segmented with `fit`:
/// (case, IoU with the hand-drawn mask).
fn ious(seg: &Segmenter, fit: Fit) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    let astronaut: &[&[[f32; 2]]] = &[ASTRONAUT, ASTRONAUT_HELMET];
    for (name, polys) in [("astronaut.png", astronaut), ("grace_hopper_512x512.jpg", &[GRACE_HOPPER])] {
        let img = photo(name);
        // (x, y, w, h): the whole frame, a 4:5 portrait crop, a 4:3 landscape crop.
        for (x, y, w, h) in [(0, 0, 512, 512), (51, 0, 410, 512), (0, 64, 512, 384)] {
            let mask = seg.segment_with(&crop(&img, x, y, w, h), fit).expect("segment");
            assert_eq!(mask.dimensions(), (w, h));
            out.push((format!("{name} {w}x{h}+{x}+{y}"), iou(&mask, polys, x, y)));
        }
    }
    out
}

/// The hand-drawn masks against the default fit (stretch), required IoU >= 0.85; letterboxing is
/// measured alongside (the numbers that chose the default).
#[test]
fn selfie_matches_hand_drawn_masks() {
    let seg = segmenter();
    let stretch = ious(&seg, Fit::Stretch);
    let letterbox = ious(&seg, Fit::Letterbox);
    for ((case, s), (_, l)) in stretch.iter().zip(&letterbox) {
        eprintln!("selfie IoU {case}: stretch {s:.3}, letterbox {l:.3}");
    }
    let mean = |v: &[(String, f64)]| v.iter().map(|(_, x)| x).sum::<f64>() / v.len() as f64;
    eprintln!("selfie IoU mean: stretch {:.3}, letterbox {:.3}", mean(&stretch), mean(&letterbox));
    for (case, s) in &stretch {
        assert!(*s >= 0.85, "{case}: IoU {s:.3} with the hand-drawn mask");
    }
    // Without the helmet (person pixels only), reported for the record.
    let img = photo("astronaut.png");
    let mask = seg.segment(&img).expect("segment");
    eprintln!("selfie IoU astronaut.png person only (helmet not counted): {:.3}", iou(&mask, &[ASTRONAUT], 0, 0));
    // The default fit is the one `segment` uses.
    assert_eq!(seg.segment(&img).expect("segment"), seg.segment_with(&img, Fit::default()).expect("segment"));
}

/// Photos without a person give a mostly empty mask. The close-up of a cup in coffee.png is a
/// known weakness of the model itself: the TFLite runtime on the same stretched input marks 18.6%
/// of the frame (tools/fixtures/selfie.py's model, measured by hand), we mark 21%; letterboxing makes
/// it worse (67%), one more reason the default is stretching. rocket.jpg is empty.
#[test]
fn selfie_finds_no_person_in_objects() {
    let seg = segmenter();
    for (name, limit) in [("coffee.png", 0.25), ("rocket.jpg", 0.01)] {
        let img = photo(name);
        let mask = seg.segment(&img).expect("segment");
        assert_eq!(mask.dimensions(), img.dimensions());
        let fg = mask.pixels().filter(|p| p.0[0] > 0.5).count() as f64 / (mask.width() * mask.height()) as f64;
        eprintln!("selfie {name}: person fraction {fg:.4}");
        assert!(fg < limit, "{name}: {:.1}% of the photo marked as person", fg * 100.0);
    }
}

/// A 12-megapixel photo: the mask comes back at full size, agrees with the mask of the same photo
/// at 512x512 (IoU of the person pixels), and the whole call stays fast (time reported).
#[test]
fn selfie_segments_a_large_photo() {
    let seg = segmenter();
    let small = photo("astronaut.png");
    let big = image::imageops::resize(&small, 4000, 3000, image::imageops::FilterType::Triangle);
    let _ = seg.segment(&small).expect("warm-up");
    let t = Instant::now();
    let mask = seg.segment(&big).expect("segment");
    let ms = t.elapsed().as_secs_f64() * 1e3;
    assert_eq!(mask.dimensions(), (4000, 3000));
    assert!(mask.pixels().all(|p| (0.0..=1.0).contains(&p.0[0])));
    let reference = seg.segment(&small).expect("segment");
    let (mut both, mut either) = (0u64, 0u64);
    for (x, y, p) in reference.enumerate_pixels() {
        // The big photo stretches x by 4000/512 and y by 3000/512; sample its mask at the centre.
        let (bx, by) = (((x as f32 + 0.5) * 4000.0 / 512.0) as u32, ((y as f32 + 0.5) * 3000.0 / 512.0) as u32);
        let (a, b) = (p.0[0] > 0.5, mask.get_pixel(bx.min(3999), by.min(2999)).0[0] > 0.5);
        both += (a && b) as u64;
        either += (a || b) as u64;
    }
    let iou = both as f64 / either.max(1) as f64;
    eprintln!("selfie 4000x3000 photo: segment {ms:.1} ms, IoU with the 512x512 mask {iou:.3}");
    assert!(iou > 0.9, "large-photo mask disagrees with the small one: IoU {iou:.3}");
}
