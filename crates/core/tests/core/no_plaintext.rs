//! After storing real photos and outputs, no file under the data folder holds readable image
//! bytes: no JPEG/PNG/WebP signature and no 64-byte slice of any input.

use likeness_core::{MemoryKeyStore, NewInput, NewJob};
use likeness_engine::image_io::{self, DecodeLimits, OutputFormat};

use crate::common::{all_files, contains, open, output, photo, raw_db, tmp, vault_files};

const PNG_SIG: &[u8] = b"\x89PNG\r\n\x1a\n";

fn signatures(images: &[Vec<u8>]) -> Vec<(String, Vec<u8>)> {
    let mut sigs = vec![
        ("PNG signature".to_string(), PNG_SIG.to_vec()),
        ("WebP signature".to_string(), b"WEBPVP8".to_vec()),
        ("JFIF marker".to_string(), b"JFIF\0".to_vec()),
        ("Exif marker".to_string(), b"Exif\0\0".to_vec()),
    ];
    for (i, img) in images.iter().enumerate() {
        // Each image's own header (a JPEG starts FF D8 FF Ex ...) and slices from all over it.
        sigs.push((format!("image {i} header"), img[..12].to_vec()));
        for at in [0, 100, img.len() / 3, img.len() / 2, img.len() - 64] {
            sigs.push((format!("image {i} bytes at {at}"), img[at..at + 64].to_vec()));
        }
    }
    sigs
}

/// The first image signature or slice found in a file under `dir`, if any.
fn find_image_bytes(dir: &std::path::Path, images: &[Vec<u8>]) -> Option<String> {
    let sigs = signatures(images);
    for file in all_files(dir) {
        let bytes = std::fs::read(&file).unwrap();
        if let Some((what, _)) = sigs.iter().find(|(_, sig)| contains(&bytes, sig)) {
            return Some(format!("{what} found in {}", file.display()));
        }
    }
    None
}

fn assert_no_image_bytes(dir: &std::path::Path, images: &[Vec<u8>]) -> usize {
    if let Some(found) = find_image_bytes(dir, images) {
        panic!("{found}");
    }
    all_files(dir).len()
}

#[test]
fn no_readable_image_bytes_under_the_data_dir() {
    let dir = tmp();
    let store = MemoryKeyStore::new();
    let mut lib = open(dir.path(), &store);
    let jpeg = photo("grace_hopper_512x512.jpg");
    let png = photo("chelsea.png");
    let decoded = image_io::decode(&jpeg, &DecodeLimits::default()).unwrap().image;
    let webp = image_io::encode(&decoded, OutputFormat::WebP).unwrap();
    let out_jpeg = image_io::encode(&decoded, OutputFormat::Jpeg { quality: 90 }).unwrap();
    let out_png = image_io::encode(&decoded, OutputFormat::Png).unwrap();
    assert!(webp.starts_with(b"RIFF") && contains(&webp[..16], b"WEBPVP8"), "a real WebP");
    assert!(jpeg.starts_with(&[0xFF, 0xD8, 0xFF]) && png.starts_with(PNG_SIG));
    let images = vec![jpeg.clone(), png.clone(), webp.clone(), out_jpeg.clone(), out_png.clone()];
    // The scan does find these bytes in a plain copy: it can fail.
    {
        let probe = tmp();
        std::fs::write(probe.path().join("plain.bin"), [&b"xx"[..], &webp].concat()).unwrap();
        let found = find_image_bytes(probe.path(), &images[2..3]).expect("the scan must see a plain WebP");
        assert!(found.contains("plain.bin"), "{found}");
    }

    // A finished job (its photos released), a queued job (photos kept), outputs of each type.
    let done = lib
        .create_job_with(NewJob {
            inputs: vec![NewInput { name: "grace.jpg".into(), bytes: jpeg.clone() }],
            settings_json: r#"{"preset":"linkedin"}"#.into(),
            group_id: None,
        })
        .unwrap();
    let claimed = lib.claim_next_job().unwrap().unwrap();
    assert_eq!(claimed.id, done);
    lib.complete_job(
        &done,
        vec![output(out_png.clone(), "png"), output(out_jpeg.clone(), "jpeg"), output(webp.clone(), "webp")],
    )
    .unwrap();
    let queued = lib
        .create_job_with(NewJob {
            inputs: vec![
                NewInput { name: "cat.png".into(), bytes: png.clone() },
                NewInput { name: "me.webp".into(), bytes: webp.clone() },
                NewInput { name: "grace.jpg".into(), bytes: jpeg.clone() },
            ],
            settings_json: "{}".into(),
            group_id: Some("g".into()),
        })
        .unwrap();
    assert_eq!(vault_files(dir.path()).len(), 6);
    let scanned = assert_no_image_bytes(dir.path(), &images);
    assert!(scanned >= 8, "db, wal, vault files ... ({scanned})");

    // Everything is still readable through the library.
    let inputs = lib.job_inputs(&queued).unwrap();
    assert_eq!(inputs[1].1.as_slice(), webp.as_slice());
    drop(lib);
    let mut lib = open(dir.path(), &store);
    assert_no_image_bytes(dir.path(), &images);

    // Deleting all data leaves only the empty database, the lock file and empty vault folders.
    lib.delete_all_data().unwrap();
    drop(lib);
    assert!(vault_files(dir.path()).is_empty());
    let left: Vec<String> = all_files(dir.path())
        .iter()
        .map(|p| p.strip_prefix(dir.path()).unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, vec!["likeness.db".to_string(), "lock".to_string()], "files left after deleting all data");
    let db = raw_db(dir.path());
    for table in ["jobs", "job_inputs", "inputs", "outputs", "blobs"] {
        let n: i64 = db.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0)).unwrap();
        assert_eq!(n, 0, "{table} is empty");
    }
    drop(db);
    assert_no_image_bytes(dir.path(), &images);
}
