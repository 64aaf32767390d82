//! Decoding the user's photo and encoding the result.
//!
//! Decoding is the engine's first line of defence against hostile or damaged files: the format is
//! sniffed from magic bytes (never trusted from a file name), the byte size and the header's
//! dimensions are checked against [`DecodeLimits`] before any pixel buffer is allocated, and every
//! failure is a specific [`EngineError`]. The EXIF orientation is applied to the pixels, and only
//! pixels leave this module: no EXIF, GPS, XMP or maker notes reach [`encode`]'s output, because it
//! writes none.

use std::io::Cursor;
use std::str::FromStr;

use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::codecs::webp::WebPEncoder;
use image::{DynamicImage, ImageDecoder, ImageEncoder, ImageError, ImageFormat, ImageReader, Limits, RgbImage};

use crate::error::{EngineError, Result};

/// What [`decode`] accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest file size in bytes.
    pub max_bytes: u64,
    /// Largest width * height.
    pub max_pixels: u64,
    /// Smallest accepted width and height.
    pub min_side: u32,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits { max_bytes: 100_000_000, max_pixels: 100_000_000, min_side: 64 }
    }
}

/// The formats the engine decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputFormat {
    Jpeg,
    Png,
    WebP,
}

/// A decoded photo, upright (EXIF orientation applied), 8-bit RGB.
#[derive(Debug, Clone)]
pub struct Decoded {
    pub image: RgbImage,
    pub format: InputFormat,
    /// The EXIF orientation value (1-8) that was applied; 1 when the file had none.
    pub orientation: u8,
}

/// What the first bytes say the file is.
enum Sniffed {
    Readable(InputFormat),
    /// A real image format the engine does not decode, by name.
    Known(&'static str),
    Unknown,
}

fn sniff(bytes: &[u8]) -> Sniffed {
    let starts = |magic: &[u8]| bytes.starts_with(magic);
    if starts(&[0xFF, 0xD8, 0xFF]) {
        return Sniffed::Readable(InputFormat::Jpeg);
    }
    if starts(b"\x89PNG\r\n\x1a\n") {
        return Sniffed::Readable(InputFormat::Png);
    }
    if bytes.len() >= 12 && starts(b"RIFF") && bytes.get(8..12) == Some(b"WEBP") {
        return Sniffed::Readable(InputFormat::WebP);
    }
    // ISO base media (HEIF/AVIF): a box size, then "ftyp" and the major brand.
    if bytes.get(4..8) == Some(b"ftyp") {
        return match bytes.get(8..12) {
            Some(b"avif") | Some(b"avis") => Sniffed::Known("AVIF"),
            Some(b"heic") | Some(b"heix") | Some(b"hevc") | Some(b"hevx") | Some(b"heim") | Some(b"heis")
            | Some(b"mif1") | Some(b"msf1") => Sniffed::Known("HEIC"),
            _ => Sniffed::Known("MP4/QuickTime"),
        };
    }
    if starts(b"GIF87a") || starts(b"GIF89a") {
        return Sniffed::Known("GIF");
    }
    if starts(b"BM") && bytes.len() >= 26 {
        return Sniffed::Known("BMP");
    }
    if starts(b"II*\0") || starts(b"MM\0*") {
        return Sniffed::Known("TIFF");
    }
    if starts(&[0x00, 0x00, 0x01, 0x00]) {
        return Sniffed::Known("ICO");
    }
    if starts(b"8BPS") {
        return Sniffed::Known("Photoshop (PSD)");
    }
    if starts(&[0xFF, 0x0A]) || starts(&[0x00, 0x00, 0x00, 0x0C, b'J', b'X', b'L', b' ']) {
        return Sniffed::Known("JPEG XL");
    }
    if starts(b"%PDF") {
        return Sniffed::Known("PDF");
    }
    Sniffed::Unknown
}

fn corrupt(e: ImageError) -> EngineError {
    match e {
        ImageError::Unsupported(u) => EngineError::UnsupportedFormat { format: u.to_string() },
        other => EngineError::Corrupt { detail: other.to_string() },
    }
}

/// Walks a JPEG's marker segments and entropy-coded data and reports whether the end-of-image
/// marker is reached. The JPEG decoder fills missing scan data with grey instead of failing, so
/// a truncated upload would otherwise pass as a damaged-looking photo.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let n = bytes.len();
    let mut i = 2; // after SOI
    loop {
        // Find the next marker (0xFF followed by a non-0xFF byte; 0xFF fill bytes are allowed).
        while i < n && bytes.get(i) != Some(&0xFF) {
            i += 1;
        }
        while i < n && bytes.get(i) == Some(&0xFF) {
            i += 1;
        }
        let Some(&marker) = bytes.get(i) else { return false };
        i += 1;
        match marker {
            0xD9 => return true,
            // Standalone markers without a length.
            0x01 | 0xD0..=0xD7 => continue,
            _ => {}
        }
        let (Some(&hi), Some(&lo)) = (bytes.get(i), bytes.get(i + 1)) else { return false };
        let len = (usize::from(hi) << 8) | usize::from(lo);
        if len < 2 || i + len > n {
            return false;
        }
        i += len;
        if marker == 0xDA {
            // Entropy-coded data: 0xFF is followed by 0x00 (stuffing) or a restart marker inside it.
            loop {
                while i < n && bytes.get(i) != Some(&0xFF) {
                    i += 1;
                }
                match bytes.get(i + 1) {
                    None => return false,
                    Some(0x00) | Some(0xD0..=0xD7) => i += 2,
                    Some(0xFF) => i += 1,
                    Some(_) => break,
                }
            }
        }
    }
}

/// Decodes a JPEG, PNG or WebP photo into upright 8-bit RGB.
///
/// Alpha is composited over white, greyscale and 16-bit images become RGB8. The file size and the
/// header dimensions are checked against `limits` before the pixels are decoded.
pub fn decode(bytes: &[u8], limits: &DecodeLimits) -> Result<Decoded> {
    if bytes.is_empty() {
        return Err(EngineError::EmptyInput);
    }
    let size = bytes.len() as u64;
    if size > limits.max_bytes {
        return Err(EngineError::TooManyBytes { bytes: size, max_bytes: limits.max_bytes });
    }
    let format = match sniff(bytes) {
        Sniffed::Readable(f) => f,
        Sniffed::Known(name) => return Err(EngineError::UnsupportedFormat { format: name.to_string() }),
        Sniffed::Unknown => {
            return Err(EngineError::NotAnImage { detail: format!(" (unrecognised first bytes {})", hex_prefix(bytes)) })
        }
    };
    let image_format = match format {
        InputFormat::Jpeg => ImageFormat::Jpeg,
        InputFormat::Png => ImageFormat::Png,
        InputFormat::WebP => ImageFormat::WebP,
    };
    if format == InputFormat::Jpeg && !jpeg_is_complete(bytes) {
        return Err(EngineError::Corrupt { detail: "JPEG data ends before the end-of-image marker".into() });
    }

    // PNG's IHDR sits at a fixed place: check its size before the decoder reads further (it wants
    // the first IDAT), so an oversized header is named as such even when the data is cut short.
    if format == InputFormat::Png {
        if let (Some(b"IHDR"), Some(w), Some(h)) = (bytes.get(12..16), bytes.get(16..20), bytes.get(20..24)) {
            let be = |b: &[u8]| b.iter().fold(0u32, |acc, &x| (acc << 8) | u32::from(x));
            let (width, height) = (be(w), be(h));
            if u64::from(width) * u64::from(height) > limits.max_pixels {
                return Err(EngineError::TooManyPixels { width, height, max_pixels: limits.max_pixels });
            }
        }
    }

    // Dimension limits are checked by hand below (to report the size); the allocation cap is a
    // second fence for decoders that buffer more than the output (16-bit RGBA is 8 bytes/pixel).
    let mut decoder_limits = Limits::no_limits();
    decoder_limits.max_alloc = Some(limits.max_pixels.saturating_mul(8).saturating_add(64 << 20));
    let mut reader = ImageReader::with_format(Cursor::new(bytes), image_format);
    reader.limits(decoder_limits);
    let mut decoder = reader.into_decoder().map_err(|e| header_error(e, limits))?;
    let (width, height) = decoder.dimensions();
    let pixels = u64::from(width) * u64::from(height);
    if pixels > limits.max_pixels {
        return Err(EngineError::TooManyPixels { width, height, max_pixels: limits.max_pixels });
    }
    if width < limits.min_side || height < limits.min_side {
        return Err(EngineError::TooSmall { width, height, min: limits.min_side });
    }
    // A damaged EXIF block is not worth refusing the photo for: treat it as "no rotation".
    let orientation = decoder.orientation().unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(corrupt)?;
    img.apply_orientation(orientation);
    Ok(Decoded { image: to_rgb_over_white(img), format, orientation: orientation.to_exif() })
}

/// Header-stage errors: a limits error here means the header declared an oversized image.
fn header_error(e: ImageError, limits: &DecodeLimits) -> EngineError {
    match e {
        ImageError::Limits(l) => EngineError::Corrupt {
            detail: format!("the header declares an image larger than {} pixels allow ({l})", limits.max_pixels),
        },
        other => corrupt(other),
    }
}

fn hex_prefix(bytes: &[u8]) -> String {
    bytes.iter().take(8).map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ")
}

fn to_rgb_over_white(img: DynamicImage) -> RgbImage {
    if !img.color().has_alpha() {
        // `into_rgb8` hands an RGB8 buffer over without copying it.
        return img.into_rgb8();
    }
    let rgba = img.to_rgba8();
    let (w, h) = rgba.dimensions();
    let mut out = RgbImage::new(w, h);
    for (o, i) in out.as_mut().chunks_exact_mut(3).zip(rgba.as_raw().chunks_exact(4)) {
        if let ([r, g, b], [ir, ig, ib, a]) = (o, i) {
            let a = u32::from(*a);
            // Integer "over white" with rounding: c*a/255 + 255*(255-a)/255.
            let blend = |c: u8| ((u32::from(c) * a + 255 * (255 - a) + 127) / 255) as u8;
            *r = blend(*ir);
            *g = blend(*ig);
            *b = blend(*ib);
        }
    }
    out
}

/// The formats the engine writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Png,
    /// Baseline JPEG; quality 1-100.
    Jpeg { quality: u8 },
    /// Lossless WebP.
    WebP,
}

impl OutputFormat {
    /// The usual file extension, without the dot.
    pub fn extension(&self) -> &'static str {
        match self {
            OutputFormat::Png => "png",
            OutputFormat::Jpeg { .. } => "jpg",
            OutputFormat::WebP => "webp",
        }
    }
}

impl FromStr for OutputFormat {
    type Err = EngineError;

    /// "png", "jpg"/"jpeg" (quality 92) or "webp", case-insensitive.
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "png" => Ok(OutputFormat::Png),
            "jpg" | "jpeg" => Ok(OutputFormat::Jpeg { quality: 92 }),
            "webp" => Ok(OutputFormat::WebP),
            other => Err(EngineError::InvalidOption(format!(
                "unknown output format '{other}'; use png, jpg or webp"
            ))),
        }
    }
}

/// Encodes `img`; the output carries pixels only (no EXIF, GPS, XMP, ICC or maker notes).
pub fn encode(img: &RgbImage, fmt: OutputFormat) -> Result<Vec<u8>> {
    let (w, h) = img.dimensions();
    if w == 0 || h == 0 {
        return Err(EngineError::Encode(format!("the image is {w}x{h} pixels")));
    }
    let mut out = Vec::new();
    let color = image::ExtendedColorType::Rgb8;
    let res = match fmt {
        OutputFormat::Png => PngEncoder::new(&mut out).write_image(img.as_raw(), w, h, color),
        OutputFormat::Jpeg { quality } => {
            if !(1..=100).contains(&quality) {
                return Err(EngineError::InvalidOption(format!(
                    "JPEG quality {quality} is out of range; use 1-100"
                )));
            }
            JpegEncoder::new_with_quality(&mut out, quality).write_image(img.as_raw(), w, h, color)
        }
        OutputFormat::WebP => WebPEncoder::new_lossless(&mut out).write_image(img.as_raw(), w, h, color),
    };
    res.map_err(|e| EngineError::Encode(e.to_string()))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_format_parses() {
        assert_eq!("PNG".parse::<OutputFormat>().ok(), Some(OutputFormat::Png));
        assert_eq!("jpeg".parse::<OutputFormat>().ok(), Some(OutputFormat::Jpeg { quality: 92 }));
        assert_eq!("webp".parse::<OutputFormat>().map(|f| f.extension()).ok(), Some("webp"));
        assert!(matches!("tiff".parse::<OutputFormat>(), Err(EngineError::InvalidOption(_))));
    }

    #[test]
    fn jpeg_completeness_walks_markers() {
        // SOI, a COM segment, SOS with one byte of header, data with a stuffed FF, EOI.
        let full = [0xFF, 0xD8, 0xFF, 0xFE, 0, 3, b'x', 0xFF, 0xDA, 0, 3, 0, 0x12, 0xFF, 0x00, 0x34, 0xFF, 0xD9];
        assert!(jpeg_is_complete(&full));
        assert!(!jpeg_is_complete(&full[..full.len() - 2]));
        assert!(!jpeg_is_complete(&full[..9]));
    }

    #[test]
    fn sniff_names_foreign_formats() {
        let heic = [0, 0, 0, 24, b'f', b't', b'y', b'p', b'h', b'e', b'i', b'c', 0, 0, 0, 0];
        assert!(matches!(decode(&heic, &DecodeLimits::default()),
            Err(EngineError::UnsupportedFormat { format }) if format == "HEIC"));
        assert!(matches!(decode(b"GIF89a\x01\x00\x01\x00", &DecodeLimits::default()),
            Err(EngineError::UnsupportedFormat { format }) if format == "GIF"));
        assert!(matches!(decode(b"hello world", &DecodeLimits::default()), Err(EngineError::NotAnImage { .. })));
    }
}
