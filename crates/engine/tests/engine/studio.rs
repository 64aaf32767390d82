//! Decode / encode, framing presets and the studio look, on synthetic inputs built here (so every
//! expectation is known exactly) and on the committed photos and backdrops.

use std::time::Instant;

use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::{ExtendedColorType, ImageBuffer, ImageEncoder, Luma, LumaA, Rgb, RgbImage, Rgba};
use likeness_engine::composite::{rasterize_polygon, studio, Backdrop, FaceRegions, StudioStyle};
use likeness_engine::framing::{estimate_crown, frame, FaceGeometry, Preset};
use likeness_engine::image_io::{decode, encode, DecodeLimits, InputFormat, OutputFormat};
use likeness_engine::imgops::{warp_rgb, Border, Mask};
use likeness_engine::EngineError;

use crate::common::repo_root;

// ---------------------------------------------------------------------------------------------
// Helpers: hand-built files.

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let mut body = kind.to_vec();
    body.extend_from_slice(data);
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32(&body).to_be_bytes());
}

/// A PNG whose IHDR declares `w x h` RGB8 pixels, with a tiny (wrong-sized) IDAT.
fn png_header_only(w: u32, h: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    png_chunk(&mut out, b"IHDR", &ihdr);
    png_chunk(&mut out, b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]);
    png_chunk(&mut out, b"IEND", &[]);
    out
}

/// An APP1 Exif segment (big-endian TIFF) with an orientation tag and a GPS IFD (latitude ref N).
fn exif_app1(orientation: u16) -> Vec<u8> {
    let mut tiff = b"MM\0\x2a".to_vec();
    tiff.extend_from_slice(&8u32.to_be_bytes());
    // IFD0 at 8: 2 entries (12 bytes each) + next-IFD offset -> 2 + 24 + 4 = 30 bytes, GPS IFD at 38.
    tiff.extend_from_slice(&2u16.to_be_bytes());
    tiff.extend_from_slice(&[0x01, 0x12, 0x00, 0x03, 0, 0, 0, 1]);
    tiff.extend_from_slice(&orientation.to_be_bytes());
    tiff.extend_from_slice(&[0, 0]);
    tiff.extend_from_slice(&[0x88, 0x25, 0x00, 0x04, 0, 0, 0, 1]);
    tiff.extend_from_slice(&38u32.to_be_bytes());
    tiff.extend_from_slice(&0u32.to_be_bytes());
    // GPS IFD: GPSLatitudeRef = "N".
    tiff.extend_from_slice(&1u16.to_be_bytes());
    tiff.extend_from_slice(&[0x00, 0x01, 0x00, 0x02, 0, 0, 0, 2, b'N', 0, 0, 0]);
    tiff.extend_from_slice(&0u32.to_be_bytes());
    let mut payload = b"Exif\0\0".to_vec();
    payload.extend_from_slice(&tiff);
    let mut seg = vec![0xFF, 0xE1];
    seg.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
    seg.extend_from_slice(&payload);
    seg
}

fn xmp_app1() -> Vec<u8> {
    let mut payload = b"http://ns.adobe.com/xap/1.0/\0".to_vec();
    payload.extend_from_slice(b"<x:xmpmeta xmlns:x='adobe:ns:meta/'><rdf:RDF/></x:xmpmeta>");
    let mut seg = vec![0xFF, 0xE1];
    seg.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
    seg.extend_from_slice(&payload);
    seg
}

/// `jpeg` with `segments` inserted right after SOI.
fn with_segments(jpeg: &[u8], segments: &[Vec<u8>]) -> Vec<u8> {
    let mut out = jpeg[..2].to_vec();
    for s in segments {
        out.extend_from_slice(s);
    }
    out.extend_from_slice(&jpeg[2..]);
    out
}

fn jpeg_of(img: &RgbImage, quality: u8) -> Vec<u8> {
    let mut out = Vec::new();
    JpegEncoder::new_with_quality(&mut out, quality)
        .write_image(img.as_raw(), img.width(), img.height(), ExtendedColorType::Rgb8)
        .expect("jpeg");
    out
}

fn png_of(raw: &[u8], w: u32, h: u32, color: ExtendedColorType) -> Vec<u8> {
    let mut out = Vec::new();
    PngEncoder::new(&mut out).write_image(raw, w, h, color).expect("png");
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

const QUAD: [[u8; 3]; 4] = [[220, 30, 30], [30, 200, 40], [30, 40, 210], [240, 240, 240]];

/// 96x64 image with four solid quadrants TL, TR, BL, BR = QUAD[0..4].
fn quadrants() -> RgbImage {
    RgbImage::from_fn(96, 64, |x, y| Rgb(QUAD[(usize::from(y >= 32) * 2) + usize::from(x >= 48)]))
}

/// The quadrant colour index expected at grid cell (r, c) of an upright result, per EXIF value:
/// the stored grid g[r][c] transformed the way a viewer shows it.
fn expected_quadrant(orientation: u8, r: usize, c: usize) -> usize {
    let (sr, sc) = match orientation {
        1 => (r, c),
        2 => (r, 1 - c),
        3 => (1 - r, 1 - c),
        4 => (1 - r, c),
        5 => (c, r),
        6 => (1 - c, r),
        7 => (1 - c, 1 - r),
        _ => (c, 1 - r),
    };
    sr * 2 + sc
}

fn close(a: [u8; 3], b: [u8; 3], tol: i32) -> bool {
    a.iter().zip(b).all(|(x, y)| (i32::from(*x) - i32::from(y)).abs() <= tol)
}

// ---------------------------------------------------------------------------------------------
// Decode / encode.

#[test]
fn decode_applies_all_eight_orientations() {
    let jpeg = jpeg_of(&quadrants(), 95);
    for o in 1u8..=8 {
        let bytes = with_segments(&jpeg, &[exif_app1(u16::from(o))]);
        let d = decode(&bytes, &DecodeLimits::default()).expect("decode");
        assert_eq!(d.format, InputFormat::Jpeg);
        assert_eq!(d.orientation, o);
        let (w, h) = d.image.dimensions();
        assert_eq!((w, h), if o >= 5 { (64, 96) } else { (96, 64) }, "orientation {o}");
        for r in 0..2 {
            for c in 0..2 {
                let px = d.image.get_pixel(w / 4 + c as u32 * w / 2, h / 4 + r as u32 * h / 2).0;
                let want = QUAD[expected_quadrant(o, r, c)];
                assert!(close(px, want, 12), "orientation {o} cell ({r},{c}): {px:?} vs {want:?}");
            }
        }
    }
    // No EXIF: orientation 1.
    assert_eq!(decode(&jpeg, &DecodeLimits::default()).expect("decode").orientation, 1);
}

#[test]
fn huge_png_header_is_refused_fast() {
    let bytes = png_header_only(60000, 60000);
    let t = Instant::now();
    let err = decode(&bytes, &DecodeLimits::default()).expect_err("must refuse");
    let dt = t.elapsed().as_secs_f32();
    assert!(matches!(err, EngineError::TooManyPixels { width: 60000, height: 60000, .. }), "{err}");
    // Refused from the header, before any allocation (decoding would take minutes and ~11 GB).
    assert!(dt < 2.0, "refusal took {dt} s");
    // The header-only file is 65 bytes: a cap one byte below its size must refuse it by size.
    let (len, cap) = (bytes.len() as u64, bytes.len() as u64 - 1);
    let err = decode(&bytes, &DecodeLimits { max_bytes: cap, ..DecodeLimits::default() }).expect_err("bytes");
    assert!(matches!(err, EngineError::TooManyBytes { bytes, max_bytes } if bytes == len && max_bytes == cap), "{err}");
    let small = png_of(&[7u8; 32 * 32 * 3], 32, 32, ExtendedColorType::Rgb8);
    let err = decode(&small, &DecodeLimits::default()).expect_err("small");
    assert!(matches!(err, EngineError::TooSmall { width: 32, height: 32, min: 64 }), "{err}");
}

#[test]
fn damaged_and_foreign_inputs_give_specific_errors() {
    let limits = DecodeLimits::default();
    let jpeg = std::fs::read(repo_root().join("assets/photos/grace_hopper_512x512.jpg")).expect("photo");
    assert!(decode(&jpeg, &limits).is_ok());
    for cut in [jpeg.len() / 2, jpeg.len() - 2, 200, 3] {
        let err = decode(&jpeg[..cut], &limits).expect_err("truncated jpeg");
        assert!(matches!(err, EngineError::Corrupt { .. }), "jpeg cut at {cut}: {err}");
    }
    let img = quadrants();
    let png = png_of(img.as_raw(), 96, 64, ExtendedColorType::Rgb8);
    for cut in [png.len() / 2, png.len() - 20, 40, 12] {
        let err = decode(&png[..cut], &limits).expect_err("truncated png");
        assert!(matches!(err, EngineError::Corrupt { .. }), "png cut at {cut}: {err}");
    }
    // Seeded random bytes, bare and behind real signatures.
    let mut s = 0x2545_F491_4F6C_DD1Du64;
    let noise: Vec<u8> = (0..4096)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 24) as u8
        })
        .collect();
    assert!(matches!(decode(&noise, &limits), Err(EngineError::NotAnImage { .. })));
    for magic in [&b"\x89PNG\r\n\x1a\n"[..], &[0xFF, 0xD8, 0xFF, 0xE0][..], &b"RIFF\x00\x10\x00\x00WEBPVP8 "[..]] {
        let mut b = magic.to_vec();
        b.extend_from_slice(&noise);
        let err = decode(&b, &limits).expect_err("noise");
        assert!(matches!(err, EngineError::Corrupt { .. }), "{:?}: {err}", &magic[..4]);
    }
    assert!(matches!(decode(&[], &limits), Err(EngineError::EmptyInput)));
    let heic = [0, 0, 0, 0x18, b'f', b't', b'y', b'p', b'h', b'e', b'i', b'c', 0, 0, 0, 0, b'm', b'i', b'f', b'1'];
    let err = decode(&heic, &limits).expect_err("heic");
    assert!(matches!(&err, EngineError::UnsupportedFormat { format } if format == "HEIC"), "{err}");
    assert!(err.to_string().contains("convert the photo"), "{err}");
    let gif = b"GIF89a\x40\x00\x40\x00\x00\x00\x00;";
    assert!(matches!(decode(gif, &limits), Err(EngineError::UnsupportedFormat { format }) if format == "GIF"));
    let avif = [0, 0, 0, 0x1c, b'f', b't', b'y', b'p', b'a', b'v', b'i', b'f'];
    assert!(matches!(decode(&avif, &limits), Err(EngineError::UnsupportedFormat { format }) if format == "AVIF"));
}

#[test]
fn decode_converts_grey_rgba_and_16_bit() {
    let limits = DecodeLimits::default();
    let grey = png_of(&[77u8; 64 * 64], 64, 64, ExtendedColorType::L8);
    let d = decode(&grey, &limits).expect("grey");
    assert_eq!(d.format, InputFormat::Png);
    assert_eq!(d.image.get_pixel(5, 5).0, [77, 77, 77]);

    let rgba: ImageBuffer<Rgba<u8>, Vec<u8>> = ImageBuffer::from_pixel(64, 64, Rgba([255, 0, 0, 128]));
    let d = decode(&png_of(rgba.as_raw(), 64, 64, ExtendedColorType::Rgba8), &limits).expect("rgba");
    // Over white: 255*a + 255*(1-a) = 255; 0*a + 255*(1-a) = 127.
    assert_eq!(d.image.get_pixel(3, 3).0, [255, 127, 127]);

    let la: ImageBuffer<LumaA<u8>, Vec<u8>> = ImageBuffer::from_pixel(64, 64, LumaA([0, 0]));
    let d = decode(&png_of(la.as_raw(), 64, 64, ExtendedColorType::La8), &limits).expect("la");
    assert_eq!(d.image.get_pixel(0, 0).0, [255, 255, 255], "fully transparent becomes white");

    // `ImageEncoder::write_image` takes 16-bit samples in native byte order (the PNG encoder
    // swaps them to big-endian), so build the buffer from u16 values.
    let deep: Vec<u8> = (0..64 * 64).flat_map(|_| [0x8080u16, 0x2000, 0xFFFF]).flat_map(u16::to_ne_bytes).collect();
    let d = decode(&png_of(&deep, 64, 64, ExtendedColorType::Rgb16), &limits).expect("16-bit");
    assert_eq!(d.image.get_pixel(9, 9).0, [128, 32, 255]);

    let grey16: ImageBuffer<Luma<u16>, Vec<u16>> = ImageBuffer::from_pixel(64, 64, Luma([0x4000]));
    let raw: Vec<u8> = grey16.as_raw().iter().flat_map(|v| v.to_ne_bytes()).collect();
    let d = decode(&png_of(&raw, 64, 64, ExtendedColorType::L16), &limits).expect("grey16");
    assert_eq!(d.image.get_pixel(1, 1).0, [64, 64, 64]);
}

#[test]
fn encode_round_trips_without_metadata() {
    let photo = crate::common::photo("grace_hopper_512x512.jpg");
    let jpeg = jpeg_of(&photo, 90);
    let tagged = with_segments(&jpeg, &[exif_app1(6), xmp_app1()]);
    assert!(contains(&tagged, b"Exif") && contains(&tagged, b"xmpmeta"));
    let d = decode(&tagged, &DecodeLimits::default()).expect("decode");
    assert_eq!(d.orientation, 6);
    for fmt in [OutputFormat::Png, OutputFormat::Jpeg { quality: 90 }, OutputFormat::WebP] {
        let bytes = encode(&d.image, fmt).expect("encode");
        for marker in [&b"Exif"[..], b"xmpmeta", b"http://ns.adobe.com", b"eXIf", b"iTXt", b"zTXt", b"tEXt"] {
            assert!(!contains(&bytes, marker), "{fmt:?} output contains {:?}", String::from_utf8_lossy(marker));
        }
        let back = decode(&bytes, &DecodeLimits::default()).expect("re-decode");
        assert_eq!(back.orientation, 1);
        assert_eq!(back.image.dimensions(), d.image.dimensions());
        match fmt {
            OutputFormat::Jpeg { .. } => {
                let err: f64 = back.image.as_raw().iter().zip(d.image.as_raw()).map(|(a, b)| (f64::from(*a) - f64::from(*b)).abs()).sum::<f64>()
                    / back.image.as_raw().len() as f64;
                assert!(err < 3.0, "jpeg mean abs error {err}");
            }
            _ => assert_eq!(back.image, d.image, "{fmt:?} is lossless"),
        }
        assert_eq!(back.format, match fmt {
            OutputFormat::Png => InputFormat::Png,
            OutputFormat::Jpeg { .. } => InputFormat::Jpeg,
            OutputFormat::WebP => InputFormat::WebP,
        });
    }
    assert!(matches!(encode(&d.image, OutputFormat::Jpeg { quality: 0 }), Err(EngineError::InvalidOption(_))));
    assert!(matches!(encode(&RgbImage::new(0, 0), OutputFormat::Png), Err(EngineError::Encode(_))));
}

// ---------------------------------------------------------------------------------------------
// Framing.

/// An upright face (eye distance `ipd`) centred at `c`, rolled by `deg` degrees about `c`.
fn face_at(c: [f32; 2], ipd: f32, deg: f32) -> FaceGeometry {
    let (s, co) = deg.to_radians().sin_cos();
    let p = |dx: f32, dy: f32| [c[0] + co * dx * ipd - s * dy * ipd, c[1] + s * dx * ipd + co * dy * ipd];
    FaceGeometry {
        right_eye: p(-0.5, 0.0),
        left_eye: p(0.5, 0.0),
        mouth: p(0.0, 0.85),
        chin: p(0.0, 1.35),
        forehead_top: p(0.0, -0.9),
    }
}

fn to_dst(fr: &likeness_engine::framing::Framing, p: [f32; 2]) -> [f32; 2] {
    fr.src_from_dst.invert().expect("invertible").apply(p)
}

#[test]
fn framing_levels_eyes_and_sizes_heads_per_preset() {
    // Eye distance 380 px: every preset's crop holds more than 1024 source pixels on its short
    // side (the tightest, passport-eu, about 1060), and fits inside the 6000x4500 photo.
    for roll in [-14.0f32, 0.0, 9.0] {
        let face = face_at([3000.0, 1900.0], 380.0, roll);
        for preset in Preset::ALL {
            let fr = frame(&face, 6000, 4500, preset, 1024).expect("frame");
            let (aw, ah) = preset.aspect();
            let ratio = fr.width as f32 / fr.height as f32;
            assert!((ratio - aw as f32 / ah as f32).abs() < 0.005, "{preset}: {}x{}", fr.width, fr.height);
            assert_eq!(fr.width.min(fr.height), 1024, "{preset}: the photo allows 1024 px");
            assert!((fr.roll_degrees - roll).abs() < 0.01, "{preset}: roll {}", fr.roll_degrees);
            assert_eq!(fr.outside_fraction, 0.0);
            let (re, le) = (to_dst(&fr, face.right_eye), to_dst(&fr, face.left_eye));
            assert!((re[1] - le[1]).abs() < 0.05, "{preset} roll {roll}: eyes at {re:?} {le:?}");
            assert!(re[0] < le[0], "subject's right eye stays on the image left");
            let crown = to_dst(&fr, estimate_crown(&face).expect("crown"));
            let chin = to_dst(&fr, face.chin);
            let head = (chin[1] - crown[1]) / fr.height as f32;
            let eyes_from_top = re[1] / fr.height as f32;
            let centre = 0.5 * (re[0] + le[0]) / fr.width as f32;
            assert!((centre - 0.5).abs() < 0.02, "{preset}: head centred ({centre})");
            let (hmin, hmax) = match preset {
                Preset::Square => (0.42, 0.55),
                Preset::Portrait | Preset::Team => (0.36, 0.46),
                Preset::PassportEu => (32.0 / 45.0, 36.0 / 45.0),
                Preset::UsPassport => (1.0 / 2.0, 1.375 / 2.0),
            };
            assert!(head > hmin && head < hmax, "{preset}: head {head}");
            assert!(crown[1] > 0.03 * fr.height as f32, "{preset}: headroom above the crown");
            match preset {
                // Eyes 1 1/8 to 1 3/8 in from the bottom of 2 in.
                Preset::UsPassport => assert!(
                    (1.0 - eyes_from_top) * 2.0 >= 1.125 && (1.0 - eyes_from_top) * 2.0 <= 1.375,
                    "us eyes {eyes_from_top}"
                ),
                // Chin to crown 32-36 mm of 45, and the chin inside the photo.
                Preset::PassportEu => assert!(chin[1] < fr.height as f32 * 0.95),
                _ => {}
            }
        }
    }
}

#[test]
fn framing_keeps_the_crops_own_resolution_below_1024() {
    // Eye distance 260 px: the passport-eu crop (head 34/45 of the height, 35:45) spans only about
    // 726 source pixels across, so the output keeps that resolution (no upscaling) while the looser
    // presets still reach 1024.
    let face = face_at([2000.0, 1400.0], 260.0, 0.0);
    let eu = frame(&face, 4000, 3000, Preset::PassportEu, 1024).expect("eu");
    let scale = eu.src_from_dst.a.hypot(eu.src_from_dst.d);
    assert!(eu.width > 700 && eu.width < 1024, "{}x{}", eu.width, eu.height);
    assert!(scale >= 1.0 && scale < 1.0 + 2.0 / eu.width as f32, "source px per output px {scale}");
    let sq = frame(&face, 4000, 3000, Preset::Square, 1024).expect("square");
    assert_eq!((sq.width, sq.height), (1024, 1024));
    assert!(sq.src_from_dst.a.hypot(sq.src_from_dst.d) > 1.0);
}

#[test]
fn team_preset_is_consistent_across_photos() {
    let a = frame(&face_at([600.0, 500.0], 120.0, 3.0), 1200, 1600, Preset::Team, 1024).expect("a");
    let b = frame(&face_at([1900.0, 1200.0], 420.0, -6.0), 4000, 3000, Preset::Team, 1024).expect("b");
    let fa = face_at([600.0, 500.0], 120.0, 3.0);
    let fb = face_at([1900.0, 1200.0], 420.0, -6.0);
    let eye = |fr: &likeness_engine::framing::Framing, f: &FaceGeometry| to_dst(fr, f.right_eye)[1] / fr.height as f32;
    let ipd = |fr: &likeness_engine::framing::Framing, f: &FaceGeometry| {
        (to_dst(fr, f.left_eye)[0] - to_dst(fr, f.right_eye)[0]) / fr.width as f32
    };
    assert!((eye(&a, &fa) - eye(&b, &fb)).abs() < 0.002);
    assert!((ipd(&a, &fa) - ipd(&b, &fb)).abs() < 0.002);
}

#[test]
fn framing_sizes_never_upscale_and_report_outside() {
    // A small face: the crop has fewer than 1024 pixels, so the output keeps the crop's resolution.
    let small = face_at([320.0, 240.0], 40.0, 0.0);
    let fr = frame(&small, 640, 480, Preset::Portrait, 1024).expect("small");
    assert!(fr.width < 1024);
    let scale = fr.src_from_dst.a.hypot(fr.src_from_dst.d);
    assert!(scale >= 0.999, "no upscaling: {scale} source px per output px");
    // The cap applies.
    let big = face_at([2000.0, 1500.0], 400.0, 0.0);
    let fr = frame(&big, 4000, 3000, Preset::Square, 640).expect("capped");
    assert_eq!((fr.width, fr.height), (640, 640));
    // A face low in the photo: the crop runs out at the bottom.
    let low = face_at([500.0, 640.0], 100.0, 0.0);
    let fr = frame(&low, 1000, 800, Preset::Portrait, 1024).expect("low");
    assert!(fr.outside_fraction > 0.1 && fr.outside_fraction < 0.6, "{}", fr.outside_fraction);
    assert!(matches!(frame(&big, 4000, 3000, Preset::Square, 0), Err(EngineError::InvalidOption(_))));
    let tiny = face_at([50.0, 50.0], 3.0, 0.0);
    assert!(matches!(frame(&tiny, 100, 100, Preset::Square, 1024), Err(EngineError::TooSmall { .. })));
}

// ---------------------------------------------------------------------------------------------
// The studio look.

fn ellipse(cx: f32, cy: f32, rx: f32, ry: f32, n: usize) -> Vec<[f32; 2]> {
    (0..n)
        .map(|i| {
            let t = i as f32 / n as f32 * std::f32::consts::TAU;
            [cx + rx * t.cos(), cy + ry * t.sin()]
        })
        .collect()
}

fn max_mask(a: &Mask, b: &Mask) -> Mask {
    Mask::from_fn(a.width(), a.height(), |x, y| Luma([a.get_pixel(x, y).0[0].max(b.get_pixel(x, y).0[0])]))
}

/// What a low-resolution segmenter sees: the mask at 1/6 size, scaled back up.
fn soften(m: &Mask) -> Mask {
    use image::imageops::{resize, FilterType};
    let small = resize(m, m.width() / 6, m.height() / 6, FilterType::Triangle);
    resize(&small, m.width(), m.height(), FilterType::Triangle)
}

struct Scene {
    crop: RgbImage,
    truth: Mask,
    person: Mask,
    face: FaceRegions,
}

/// A head-and-shoulders figure (blue-grey head, navy shoulders, stray hair strands) on a saturated
/// red, slightly noisy background, `w x h`.
fn red_scene(w: u32, h: u32) -> Scene {
    let (wf, hf) = (w as f32, h as f32);
    let head = rasterize_polygon(&ellipse(wf * 0.5, hf * 0.36, wf * 0.2, hf * 0.2, 96), w, h);
    let body = rasterize_polygon(&ellipse(wf * 0.5, hf * 1.02, wf * 0.46, hf * 0.42, 96), w, h);
    let mut truth = max_mask(&head, &body);
    // Hair strands: thin anti-aliased slivers above the head.
    for k in 0..7 {
        let x = wf * (0.38 + 0.04 * k as f32);
        let strand = [[x, hf * 0.17], [x + 1.2, hf * 0.17], [x + 3.0, hf * 0.12], [x + 2.2, hf * 0.12]];
        truth = max_mask(&truth, &rasterize_polygon(&strand, w, h));
    }
    let mut s = 12345u32;
    let crop = RgbImage::from_fn(w, h, |x, y| {
        s = s.wrapping_mul(1_103_515_245).wrapping_add(12345);
        let n = ((s >> 16) % 11) as f32 - 5.0;
        let a = truth.get_pixel(x, y).0[0];
        let fg = if (y as f32) < hf * 0.58 { [92.0, 102.0, 122.0] } else { [40.0, 52.0, 104.0] };
        let bg = [228.0 + n, 22.0 + n, 24.0 + n];
        Rgb(std::array::from_fn(|k| (a * (fg[k] + n) + (1.0 - a) * bg[k]).round().clamp(0.0, 255.0) as u8))
    });
    let person = soften(&truth);
    let face = FaceRegions {
        face_oval: ellipse(wf * 0.5, hf * 0.38, wf * 0.15, hf * 0.16, 36),
        right_eye: ellipse(wf * 0.44, hf * 0.34, wf * 0.03, hf * 0.012, 16),
        left_eye: ellipse(wf * 0.56, hf * 0.34, wf * 0.03, hf * 0.012, 16),
        lips: ellipse(wf * 0.5, hf * 0.46, wf * 0.05, hf * 0.015, 20),
        right_brow: ellipse(wf * 0.44, hf * 0.31, wf * 0.035, hf * 0.006, 10),
        left_brow: ellipse(wf * 0.56, hf * 0.31, wf * 0.035, hf * 0.006, 10),
    };
    Scene { crop, truth, person, face }
}

fn redness(p: [u8; 3]) -> f32 {
    f32::from(p[0]) - 0.5 * (f32::from(p[1]) + f32::from(p[2]))
}

#[test]
fn studio_leaves_no_red_fringe() {
    let sc = red_scene(400, 500);
    let inside = Mask::from_pixel(400, 500, Luma([1.0]));
    let style = StudioStyle { backdrop: Backdrop::Color([255, 255, 255]), relight: 0.5, retouch: 0.0 };
    let out = studio(&sc.crop, &inside, &sc.person, &FaceRegions::default(), &style).expect("studio");
    // The edge band: within a few pixels of the true outline (softened truth neither 0 nor 1).
    let band = soften(&sc.truth);
    let (mut worst, mut naive_worst, mut n) = (f32::MIN, f32::MIN, 0);
    for (x, y, b) in band.enumerate_pixels() {
        let b = b.0[0];
        if b > 0.03 && b < 0.97 {
            n += 1;
            worst = worst.max(redness(out.get_pixel(x, y).0));
            // What a plain "mask over white" composite would show.
            let a = sc.person.get_pixel(x, y).0[0];
            let c = sc.crop.get_pixel(x, y).0;
            let naive = std::array::from_fn(|k| (a * f32::from(c[k]) + (1.0 - a) * 255.0) as u8);
            naive_worst = naive_worst.max(redness(naive));
        }
    }
    assert!(n > 2000, "band has {n} pixels");
    assert!(naive_worst > 80.0, "the test scene has a fringe to remove ({naive_worst})");
    assert!(worst < 20.0, "max redness in the edge band {worst} (person <= -15, white 0)");
    // Far background is the backdrop, the body is the body.
    assert!(close(out.get_pixel(10, 10).0, [255, 255, 255], 3));
    let body = out.get_pixel(200, 480).0;
    assert!(redness(body) < -20.0 && body[2] > 70, "{body:?}");
}

/// The red scene's bottom 20% and left 12% lie outside the photo (edge replicas there).
fn cut_scene() -> (Scene, Mask) {
    let (w, h) = (400u32, 500u32);
    let mut sc = red_scene(w, h);
    let (x0, y1) = (48u32, 400u32);
    let inside = Mask::from_fn(w, h, |x, y| Luma([if x >= x0 && y < y1 { 1.0 } else { 0.0 }]));
    let src = sc.crop.clone();
    sc.crop = RgbImage::from_fn(w, h, |x, y| *src.get_pixel(x.max(x0), y.min(y1 - 1)));
    // The segmenter sees the replicated crop; simulate it as the replicated truth, softened.
    let t = sc.truth.clone();
    sc.person = soften(&Mask::from_fn(w, h, |x, y| *t.get_pixel(x.max(x0), y.min(y1 - 1))));
    (sc, inside)
}

#[test]
fn studio_extends_backdrop_and_shoulders_outside_the_photo() {
    let (sc, inside) = cut_scene();
    for backdrop in [Backdrop::Color([0xD8, 0xD9, 0xDB]), Backdrop::Blur, Backdrop::parse("gradient").expect("g")] {
        let style = StudioStyle { backdrop: backdrop.clone(), ..StudioStyle::default() };
        let out = studio(&sc.crop, &inside, &sc.person, &sc.face, &style).expect("studio");
        let mut dark = 0;
        for (x, y, p) in out.enumerate_pixels() {
            if inside.get_pixel(x, y).0[0] < 0.5 && p.0.iter().all(|&v| v < 24) {
                dark += 1;
            }
        }
        assert_eq!(dark, 0, "{backdrop:?}: black pixels outside the photo");
        // Shoulders continue to the bottom edge under the body; the side away from the body is backdrop.
        let below = out.get_pixel(200, 495).0;
        assert!(below[2] > below[0] + 30, "{backdrop:?}: shoulder colour continues, got {below:?}");
        if let Backdrop::Color(c) = backdrop {
            assert!(close(out.get_pixel(5, 60).0, c, 4), "left of the photo is backdrop");
        }
        if backdrop == Backdrop::Blur {
            // The blurred backdrop comes from the (red) background around the person.
            let p = out.get_pixel(8, 20).0;
            assert!(redness(p) > 100.0, "blur backdrop {p:?}");
        }
    }
}

/// A face with blotchy skin so that the retouch has something to do.
fn blotchy_face() -> Scene {
    let mut sc = red_scene(400, 500);
    let oval = rasterize_polygon(&sc.face.face_oval, 400, 500);
    let mut s = 99u32;
    for (x, y, p) in sc.crop.enumerate_pixels_mut() {
        let o = oval.get_pixel(x, y).0[0];
        if o > 0.0 {
            s = s.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let fine = ((s >> 16) % 9) as f32 - 4.0;
            let blotch = 18.0 * ((x as f32 * 0.21).sin() * (y as f32 * 0.17).cos());
            let skin = [196.0 + blotch + fine, 150.0 + blotch * 0.6 + fine, 132.0 + blotch * 0.5 + fine];
            for k in 0..3 {
                p.0[k] = (o * skin[k] + (1.0 - o) * f32::from(p.0[k])).round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    for eye in [&sc.face.right_eye, &sc.face.left_eye] {
        let m = rasterize_polygon(eye, 400, 500);
        for (x, y, p) in sc.crop.enumerate_pixels_mut() {
            let a = m.get_pixel(x, y).0[0];
            if a > 0.0 {
                let iris = if (x + y) % 3 == 0 { [30.0, 60.0, 40.0] } else { [240.0, 238.0, 236.0] };
                p.0 = std::array::from_fn(|k| (a * iris[k] + (1.0 - a) * f32::from(p.0[k])).round() as u8);
            }
        }
    }
    sc
}

#[test]
fn retouch_smooths_skin_and_leaves_eyes_alone() {
    let sc = blotchy_face();
    let inside = Mask::from_pixel(400, 500, Luma([1.0]));
    let run = |retouch: f32| {
        let style = StudioStyle { retouch, ..StudioStyle::default() };
        studio(&sc.crop, &inside, &sc.person, &sc.face, &style).expect("studio")
    };
    let (plain, smooth) = (run(0.0), run(0.8));
    let mut eye_px = 0;
    for eye in [&sc.face.right_eye, &sc.face.left_eye] {
        let m = rasterize_polygon(eye, 400, 500);
        for (x, y, a) in m.enumerate_pixels() {
            if a.0[0] > 0.0 {
                eye_px += 1;
                assert_eq!(plain.get_pixel(x, y), smooth.get_pixel(x, y), "eye pixel ({x},{y}) changed");
            }
        }
    }
    assert!(eye_px > 300);
    // Cheek patch: local variation goes down, the mean colour stays.
    let stats = |img: &RgbImage| {
        let (mut s, mut s2, mut n) = (0f64, 0f64, 0f64);
        for y in 200..220 {
            for x in 150..175 {
                let v = f64::from(img.get_pixel(x, y).0[0]);
                s += v;
                s2 += v * v;
                n += 1.0;
            }
        }
        (s / n, (s2 / n - (s / n).powi(2)).sqrt())
    };
    let ((m0, sd0), (m1, sd1)) = (stats(&plain), stats(&smooth));
    assert!(sd1 < sd0 * 0.8, "skin variation {sd0} -> {sd1}");
    assert!(sd1 > sd0 * 0.2, "texture kept: {sd0} -> {sd1}");
    assert!((m0 - m1).abs() < 4.0, "mean {m0} -> {m1}");
}

#[test]
fn studio_is_deterministic_and_checks_sizes() {
    let (sc, inside) = cut_scene();
    for backdrop in [Backdrop::Blur, Backdrop::Color([40, 40, 40])] {
        let style = StudioStyle { backdrop, relight: 0.8, retouch: 0.6 };
        let a = studio(&sc.crop, &inside, &sc.person, &sc.face, &style).expect("a");
        let b = studio(&sc.crop, &inside, &sc.person, &sc.face, &style).expect("b");
        assert_eq!(a, b);
    }
    let wrong = Mask::new(10, 10);
    let r = studio(&sc.crop, &wrong, &sc.person, &sc.face, &StudioStyle::default());
    assert!(matches!(r, Err(EngineError::InvalidOption(_))));
    let empty = StudioStyle { backdrop: Backdrop::Image(RgbImage::new(0, 0)), ..StudioStyle::default() };
    assert!(studio(&sc.crop, &inside, &sc.person, &sc.face, &empty).is_err());
}

fn backdrop_files() -> Vec<std::path::PathBuf> {
    let dir = repo_root().join("assets/backdrops");
    let mut v: Vec<_> = std::fs::read_dir(&dir)
        .expect("assets/backdrops")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        .collect();
    v.sort();
    v
}

#[test]
fn bundled_backdrops_are_large_small_and_usable() {
    let files = backdrop_files();
    assert!(files.len() >= 3, "{files:?}");
    let limits = DecodeLimits::default();
    let sc = red_scene(200, 250);
    let inside = Mask::from_pixel(200, 250, Luma([1.0]));
    for f in files {
        let bytes = std::fs::read(&f).expect("read");
        assert!(bytes.len() < 600 * 1024, "{}: {} bytes", f.display(), bytes.len());
        let d = decode(&bytes, &limits).expect("decode");
        assert!(d.image.width() >= 2048 && d.image.height() >= 2048);
        let style = StudioStyle { backdrop: Backdrop::Image(d.image), ..StudioStyle::default() };
        let out = studio(&sc.crop, &inside, &sc.person, &sc.face, &style).expect("studio");
        assert!(redness(out.get_pixel(3, 3).0) < 40.0, "{}: corner shows the backdrop", f.display());
    }
}

/// The whole studio stage at a real output size (its speed is measured by `cargo bench`, not here:
/// timings on shared machines are noise).
#[test]
fn studio_at_a_real_output_size() {
    let sc = red_scene(1024, 1280);
    let inside = Mask::from_pixel(1024, 1280, Luma([1.0]));
    let out = studio(&sc.crop, &inside, &sc.person, &sc.face, &StudioStyle::default()).expect("studio");
    assert_eq!(out.dimensions(), (1024, 1280));
}

/// A real photo through framing-style warp and the studio look, written to target/ for a look.
#[test]
fn studio_preview_on_a_real_photo() {
    let photo = crate::common::photo("grace_hopper_512x512.jpg");
    // Hand-placed landmarks for this photo (pixels).
    let face = FaceGeometry {
        right_eye: [215.0, 180.0],
        left_eye: [305.0, 178.0],
        mouth: [262.0, 262.0],
        chin: [262.0, 312.0],
        forehead_top: [262.0, 118.0],
    };
    let fr = frame(&face, photo.width(), photo.height(), Preset::Portrait, 1024).expect("frame");
    let crop = warp_rgb(&photo, &fr.src_from_dst, fr.width, fr.height, Border::Replicate);
    let inv = fr.src_from_dst.invert().expect("inv");
    let inside = Mask::from_fn(fr.width, fr.height, |x, y| {
        let p = fr.src_from_dst.apply([x as f32 + 0.5, y as f32 + 0.5]);
        let d = p[0].min(p[1]).min(photo.width() as f32 - p[0]).min(photo.height() as f32 - p[1]);
        Luma([(d + 0.5).clamp(0.0, 1.0)])
    });
    let to_crop = |pts: Vec<[f32; 2]>| pts.into_iter().map(|p| inv.apply(p)).collect::<Vec<_>>();
    // A head-and-shoulders ellipse mask, as a stand-in for the segmenter.
    let head = to_crop(ellipse(262.0, 165.0, 112.0, 160.0, 64));
    let body = to_crop(ellipse(262.0, 570.0, 265.0, 270.0, 64));
    let person = soften(&max_mask(
        &rasterize_polygon(&head, fr.width, fr.height),
        &rasterize_polygon(&body, fr.width, fr.height),
    ));
    let regions = FaceRegions {
        face_oval: to_crop(ellipse(262.0, 215.0, 85.0, 100.0, 36)),
        right_eye: to_crop(ellipse(215.0, 180.0, 22.0, 10.0, 16)),
        left_eye: to_crop(ellipse(305.0, 178.0, 22.0, 10.0, 16)),
        lips: to_crop(ellipse(262.0, 265.0, 30.0, 9.0, 20)),
        right_brow: to_crop(ellipse(212.0, 158.0, 28.0, 5.0, 10)),
        left_brow: to_crop(ellipse(308.0, 156.0, 28.0, 5.0, 10)),
    };
    let out_dir = repo_root().join("target/studio-preview");
    std::fs::create_dir_all(&out_dir).expect("mkdir");
    for (name, backdrop) in [
        ("gradient", Backdrop::parse("gradient").expect("g")),
        ("white", Backdrop::parse("white").expect("w")),
        ("blur", Backdrop::Blur),
    ] {
        let style = StudioStyle { backdrop, ..StudioStyle::default() };
        let out = studio(&crop, &inside, &person, &regions, &style).expect("studio");
        let png = encode(&out, OutputFormat::Png).expect("png");
        std::fs::write(out_dir.join(format!("hopper-{name}.png")), png).expect("write");
        assert_eq!(out.dimensions(), (fr.width, fr.height));
    }
}
