//! `likeness batch` on generated folder trees: 200 files in 3 levels with broken files, non-images
//! and hostile layouts; nothing read outside the input, nothing written outside the output,
//! nothing overwritten, every file accounted for, re-runs do no work twice, kill -9 resumes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use image::imageops;

use crate::support::*;


/// Every file under `dir` with its bytes (symbolic links recorded by target, not followed).
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            let m = std::fs::symlink_metadata(&p).expect("meta");
            if m.file_type().is_symlink() {
                out.insert(p.clone(), std::fs::read_link(&p).expect("link").into_os_string().into_encoded_bytes());
            } else if m.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.clone(), std::fs::read(&p).expect("read"));
            }
        }
    }
    out
}

fn encode(img: &image::RgbImage, ext: &str) -> Vec<u8> {
    let fmt = match ext.to_ascii_lowercase().as_str() {
        "png" => image::ImageFormat::Png,
        "webp" => image::ImageFormat::WebP,
        _ => image::ImageFormat::Jpeg,
    };
    let mut v = Vec::new();
    image::DynamicImage::ImageRgb8(img.clone()).write_to(&mut std::io::Cursor::new(&mut v), fmt).expect("encode");
    v
}

struct Tree {
    _dir: tempfile::TempDir,
    input: PathBuf,
    output: PathBuf,
    sibling: PathBuf,
    data: PathBuf,
    /// Photos that have a face (expect done).
    good: usize,
    /// Files with a photo extension that cannot succeed.
    bad: usize,
    /// Visible files that are not photos, and links.
    other: usize,
}

/// 3 levels, 200 visible files: face photos (copies, mirror images, crops; mixed-case extensions),
/// broken and truncated files, non-images, plus hidden files and hostile links.
fn make_tree() -> Tree {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("shoot");
    let output = dir.path().join("headshots");
    let sibling = dir.path().join("private");
    std::fs::create_dir_all(&sibling).expect("mkdir");
    std::fs::write(sibling.join("secret.jpg"), encode(&image::open(photo("astronaut.png")).expect("p").to_rgb8(), "jpg")).expect("w");
    let sources: Vec<image::RgbImage> = ["grace_hopper_512x512.jpg", "astronaut.png"]
        .iter()
        .map(|n| {
            let img = image::open(photo(n)).expect("photo").to_rgb8();
            imageops::resize(&img, 320, 320, imageops::FilterType::Triangle)
        })
        .collect();
    let exts = ["jpg", "JPG", "png", "Jpeg", "webp"];
    let (mut good, mut bad, mut other) = (0, 0, 0);
    let mut n = 0usize;
    for d1 in ["sales", "engineering"] {
        for d2 in ["north", "south"] {
            for d3 in ["", "interns"] {
                let folder = input.join(d1).join(d2).join(d3);
                std::fs::create_dir_all(&folder).expect("mkdir");
                for k in 0..25 {
                    n += 1;
                    let src = &sources[n % sources.len()];
                    let ext = exts[n % exts.len()];
                    let (name, bytes): (String, Vec<u8>) = match k % 25 {
                        0..=14 => {
                            let img = match k % 3 {
                                0 => src.clone(),
                                1 => imageops::flip_horizontal(src),
                                _ => imageops::crop_imm(src, 10, 0, 300, 310).to_image(),
                            };
                            good += 1;
                            (format!("person {n}.{ext}"), encode(&img, ext))
                        }
                        15..=17 => {
                            bad += 1;
                            let full = encode(src, "jpg");
                            (format!("truncated{n}.jpg"), full[..full.len() / 3].to_vec())
                        }
                        18 => {
                            bad += 1;
                            (format!("notreally{n}.png"), b"this is text, not a PNG".to_vec())
                        }
                        19 => {
                            bad += 1;
                            (format!("empty{n}.webp"), Vec::new())
                        }
                        20 => {
                            bad += 1;
                            (format!("coffee{n}.png"), encode(&image::open(photo("coffee.png")).expect("c").to_rgb8(), "png"))
                        }
                        21 => {
                            other += 1;
                            (format!("notes{n}.txt"), b"call the client".to_vec())
                        }
                        22 => {
                            other += 1;
                            (format!("contract{n}.pdf"), b"%PDF-1.4".to_vec())
                        }
                        23 => {
                            good += 1;
                            // `..` inside a name is just a name.
                            (format!("a..b{n}.png"), encode(src, "png"))
                        }
                        _ => {
                            good += 1;
                            // Collides with "person" names on case-insensitive file systems only.
                            (format!("PERSON {}.{ext}", n - 24), encode(&imageops::flip_horizontal(src), ext))
                        }
                    };
                    std::fs::write(folder.join(name), bytes).expect("write");
                }
                std::fs::write(folder.join(".hidden.jpg"), encode(src_of(&sources, n), "jpg")).expect("hidden");
            }
        }
    }
    assert_eq!(n, 200);
    std::fs::create_dir_all(input.join(".cache")).expect("mkdir");
    std::fs::write(input.join(".cache/thumb.jpg"), encode(&sources[0], "jpg")).expect("w");
    // Hostile links: a loop, the root, a sibling folder outside the input, a file outside.
    std::os::unix::fs::symlink(&input, input.join("sales/loop")).expect("link");
    std::os::unix::fs::symlink("/", input.join("root")).expect("link");
    std::os::unix::fs::symlink(&sibling, input.join("engineering/private")).expect("link");
    std::os::unix::fs::symlink(sibling.join("secret.jpg"), input.join("secret.jpg")).expect("link");
    other += 4;
    Tree { data: dir.path().join("data"), _dir: dir, input, output, sibling, good, bad, other }
}

fn src_of(sources: &[image::RgbImage], n: usize) -> &image::RgbImage {
    &sources[n % sources.len()]
}

fn batch(t: &Tree, extra: &[&str]) -> (std::process::Output, Vec<serde_json::Value>) {
    let mut args = vec!["batch", t.input.to_str().expect("u"), "--out", t.output.to_str().expect("u"), "--recursive", "--json"];
    args.extend_from_slice(extra);
    let o = run(&args, &t.data);
    let lines = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    (o, lines)
}

fn summary(lines: &[serde_json::Value]) -> &serde_json::Value {
    lines.iter().find(|l| l["event"] == "summary").expect("a summary line")
}

#[test]
fn a_hostile_tree_is_processed_safely_and_resumably() {
    let t = make_tree();
    let input_before = snapshot(&t.input);
    let sibling_before = snapshot(&t.sibling);
    // A file the user already has where an output would go: it must survive.
    let planted = t.output.join("sales/north/person 5-square.png");
    std::fs::create_dir_all(planted.parent().expect("p")).expect("mkdir");
    std::fs::write(&planted, b"the user's own file").expect("w");

    let (o, lines) = batch(&t, &[]);
    assert!(!o.status.success(), "broken files make the batch report failure");
    let sum = summary(&lines);
    assert_eq!(sum["done"].as_u64(), Some(t.good as u64), "{sum}\n{}", stderr(&o));
    assert_eq!(sum["failed"].as_u64(), Some(t.bad as u64), "{sum}");
    assert_eq!(sum["not_processed"].as_u64(), Some(t.other as u64), "{sum}");
    let files: Vec<_> = lines.iter().filter(|l| l["event"] == "file").collect();
    assert_eq!(files.len(), 200 + 4, "every visible file and link is in the report");
    for f in &files {
        let f = &f["file"];
        let input = f["input"].as_str().expect("input");
        assert!(!input.starts_with('.') && !input.contains("/."), "hidden files are skipped: {input}");
        if f["status"] == "failed" {
            assert!(f["reason"].as_str().is_some_and(|r| !r.is_empty()), "{f}");
        }
        if let Some(out) = f["output"].as_str() {
            let p = t.output.join(out);
            assert!(Path::new(out).components().all(|c| matches!(c, std::path::Component::Normal(_))), "{out}");
            assert!(p.starts_with(&t.output));
            // Mirrored tree: same folder as the input.
            assert_eq!(Path::new(out).parent(), Path::new(input).parent(), "{out} mirrors {input}");
            image::open(&p).unwrap_or_else(|e| panic!("{out}: {e}"));
        }
    }
    assert_eq!(std::fs::read(&planted).expect("planted"), b"the user's own file");
    assert!(t.output.join("sales/north/person 5-square-2.png").is_file(), "the output took a free name");
    // Reports on disk, CSV and JSON, listing every file.
    let csv = std::fs::read_to_string(sum["report_csv"].as_str().expect("csv")).expect("csv");
    assert_eq!(csv.lines().count(), 1 + 204);
    let rj: serde_json::Value = serde_json::from_slice(&std::fs::read(sum["report_json"].as_str().expect("j")).expect("j")).expect("json");
    assert_eq!(rj["files"].as_array().expect("files").len(), 204);
    // Nothing read through the links, nothing written outside the output folder.
    assert_eq!(snapshot(&t.input), input_before, "the input folder is unchanged");
    assert_eq!(snapshot(&t.sibling), sibling_before);
    assert!(!files.iter().any(|f| f["file"]["input"].as_str().is_some_and(|i| i.contains("secret") && f["file"]["status"] != "not-processed")));

    // Consistency: the same preset gives the same eye line and face width across the set.
    let mut eye_y = Vec::new();
    let mut face_w = Vec::new();
    for f in files.iter().filter(|f| f["file"]["status"] == "done").step_by(9) {
        let p = t.output.join(f["file"]["output"].as_str().expect("o"));
        let d = json(&run(&["detect", p.to_str().expect("u"), "--json"], &t.data));
        let (w, h) = (d["width"].as_f64().expect("w"), d["height"].as_f64().expect("h"));
        let face = &d["faces"][0];
        let eyes = (face["landmarks"]["right_eye"][1].as_f64().expect("y") + face["landmarks"]["left_eye"][1].as_f64().expect("y")) / 2.0;
        eye_y.push(eyes / h);
        face_w.push(face["box"]["w"].as_f64().expect("bw") / w);
    }
    let spread = |v: &[f64]| v.iter().cloned().fold(f64::MIN, f64::max) - v.iter().cloned().fold(f64::MAX, f64::min);
    assert!(eye_y.len() >= 8);
    assert!(spread(&eye_y) < 0.05, "eye line spread {:.3} over {eye_y:?}", spread(&eye_y));
    assert!(spread(&face_w) < 0.08, "face width spread {:.3} over {face_w:?}", spread(&face_w));

    // The same command again does no work twice.
    let outputs_before = snapshot(&t.output).into_keys().filter(|p| p.extension().is_some_and(|e| e == "png")).count();
    let (_, lines) = batch(&t, &[]);
    let sum = summary(&lines);
    assert_eq!(sum["done"].as_u64(), Some(0), "{sum}");
    assert_eq!(sum["skipped"].as_u64(), Some(t.good as u64), "{sum}");
    let outputs_after = snapshot(&t.output).into_keys().filter(|p| p.extension().is_some_and(|e| e == "png")).count();
    assert_eq!(outputs_before, outputs_after);

    // Changing one photo re-does only it.
    let changed = snapshot(&t.input)
        .into_keys()
        .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("person ") && n.ends_with(".png")))
        .expect("a PNG photo in the tree");
    let img = image::open(&changed).expect("img").to_rgb8();
    std::fs::write(&changed, encode(&imageops::flip_horizontal(&img), "png")).expect("w");
    let (_, lines) = batch(&t, &[]);
    let sum = summary(&lines);
    assert_eq!(sum["done"].as_u64(), Some(1), "{sum}");
    assert_eq!(sum["skipped"].as_u64(), Some(t.good as u64 - 1), "{sum}");
}

#[test]
fn the_output_folder_may_not_sit_inside_a_recursive_input() {
    let t = make_small();
    let inside = t.0.join("out");
    let o = run(&["batch", t.0.to_str().expect("u"), "--out", inside.to_str().expect("u"), "--recursive"], &t.1);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("inside the input folder"), "{}", stderr(&o));
    let same = run(&["batch", t.0.to_str().expect("u"), "--out", t.0.to_str().expect("u")], &t.1);
    assert!(!same.status.success() && stderr(&same).contains("is the input folder"), "{}", stderr(&same));
}

fn make_small() -> (PathBuf, PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in");
    std::fs::create_dir_all(&input).expect("mkdir");
    for i in 0..6 {
        std::fs::copy(photo(["grace_hopper_512x512.jpg", "astronaut.png", "camera.png"][i % 3]), input.join(format!("p{i}.{}", ["jpg", "png", "png"][i % 3])))
            .expect("copy");
    }
    (input, dir.path().join("data"), dir)
}

#[test]
fn a_killed_batch_resumes_without_doing_anything_twice() {
    let (input, data, dir) = make_small();
    let out = dir.path().join("out");
    let args = ["batch", input.to_str().expect("u"), "--out", out.to_str().expect("u"), "--json", "--jobs", "1"];
    let mut killed = 0;
    for wait in [150u64, 400, 700, 250, 900, 500] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_likeness"))
            .args(args)
            .env("LIKENESS_DATA_DIR", &data)
            .env("LIKENESS_PASSPHRASE", "likeness-tests")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        std::thread::sleep(Duration::from_millis(wait));
        if child.try_wait().expect("wait").is_none() {
            child.kill().expect("kill");
            killed += 1;
        }
        let _ = child.wait();
    }
    assert!(killed >= 2, "the batch was killed mid-run {killed} times");
    let o = run(&args, &data);
    assert!(o.status.success(), "{}", stderr(&o));
    // Exactly one headshot per photo, whatever was killed when.
    let pngs: Vec<_> = snapshot(&out).into_keys().filter(|p| p.extension().is_some_and(|e| e == "png")).collect();
    assert_eq!(pngs.len(), 6, "{pngs:?}");
    for p in &pngs {
        image::open(p).expect("a whole image");
    }
    let doc = json(&run(&["doctor", "--json"], &data));
    assert_eq!(doc["orphan_files"], 0, "{doc}");
    assert_eq!(doc["missing_files"], 0, "{doc}");
}

/// With `--json`, each photo's line comes as it finishes (its headshot is already saved), with a
/// progress line giving files per second and time left.
#[test]
fn json_lines_stream_while_the_batch_runs() {
    use std::io::BufRead;
    let (input, data, dir) = make_small();
    let out = dir.path().join("out");
    let mut child = Command::new(env!("CARGO_BIN_EXE_likeness"))
        .args(["batch", input.to_str().expect("u"), "--out", out.to_str().expect("u"), "--json", "--jobs", "1"])
        .env("LIKENESS_DATA_DIR", &data)
        .env("LIKENESS_PASSPHRASE", "likeness-tests")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut lines = std::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first: serde_json::Value = serde_json::from_str(&lines.next().expect("a line").expect("read")).expect("json");
    assert_eq!(first["event"], "file", "{first}");
    assert_eq!(first["file"]["status"], "done", "{first}");
    // Streamed, not printed at the end: the batch is still working on the other five photos.
    assert!(child.try_wait().expect("wait").is_none(), "the first line came only when the batch had ended");
    let saved = out.join(first["file"]["output"].as_str().expect("output"));
    image::open(&saved).expect("the streamed photo's headshot is already saved");
    let rest: Vec<serde_json::Value> = lines.map(|l| serde_json::from_str(&l.expect("read")).expect("json")).collect();
    assert!(child.wait().expect("wait").success());
    let progress: Vec<_> = rest.iter().filter(|l| l["event"] == "progress").collect();
    assert_eq!(progress.len(), 6, "one progress line per finished photo");
    let last = progress[5];
    assert_eq!((last["done"].as_u64(), last["total"].as_u64()), (Some(6), Some(6)), "{last}");
    assert!(last["files_per_second"].as_f64().is_some_and(|r| r > 0.0), "{last}");
    assert_eq!(last["seconds_left"].as_f64(), Some(0.0), "{last}");
    let files = rest.iter().filter(|l| l["event"] == "file").count() + 1;
    assert_eq!(files, 6, "each photo reported once");
    assert_eq!(summary(&rest)["done"].as_u64(), Some(6));
}

/// The output folder fills up mid-batch (a real 1 MiB tmpfs; needs root, runs with
/// LIKENESS_TEST_TMPFS=1 as tools/test.sh sets when it can): the batch stops with a clear message,
/// leaves no half-written file and loses no work; with space again, the same command finishes
/// without redoing the photos already made.
#[test]
fn a_full_output_disk_stops_the_batch_and_loses_nothing() {
    if std::env::var("LIKENESS_TEST_TMPFS").as_deref() != Ok("1") {
        eprintln!("skipped: set LIKENESS_TEST_TMPFS=1 as root to mount a real full file system");
        return;
    }
    let (input, data, dir) = make_small();
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).expect("mkdir");
    let mount = |opts: &str| {
        let mut args = vec!["-t", "tmpfs", "-o", opts, "likeness-test"];
        if opts.starts_with("remount") {
            args = vec!["-o", opts];
        }
        let st = Command::new("mount").args(&args).arg(&out).status().expect("mount");
        assert!(st.success(), "mount {opts}");
    };
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    mount("size=400k");
    let _unmount = Unmount(out.clone());
    let args = ["batch", input.to_str().expect("u"), "--out", out.to_str().expect("u"), "--jobs", "1"];
    let o = run(&args, &data);
    assert!(!o.status.success(), "a full disk fails the batch");
    let err = stderr(&o);
    assert!(err.contains("full") && err.contains("same command again"), "{err}");
    let written: Vec<_> = snapshot(&out).into_keys().collect();
    for p in &written {
        let name = p.file_name().and_then(|n| n.to_str()).expect("name");
        assert!(!name.ends_with(".tmp"), "half-written file left: {name}");
        if name.ends_with(".png") {
            image::open(p).unwrap_or_else(|e| panic!("{name} is not whole: {e}"));
        }
    }
    let saved_before = written.iter().filter(|p| p.extension().is_some_and(|e| e == "png")).count();
    assert!(saved_before < 6, "the disk filled before the end ({saved_before} saved)");
    let finished_first: BTreeMap<String, serde_json::Value> = job_list(&data)
        .into_iter()
        .filter(|j| j["state"] == "done")
        .map(|j| (j["id"].as_str().expect("id").to_string(), j["finished_at"].clone()))
        .collect();
    assert!(!finished_first.is_empty(), "photos were made before the disk filled");

    mount("remount,size=64m");
    let o = run(&args, &data);
    assert!(o.status.success(), "{}", stderr(&o));
    let pngs = snapshot(&out).into_keys().filter(|p| p.extension().is_some_and(|e| e == "png")).count();
    assert_eq!(pngs, 6, "one headshot per photo, none twice");
    let jobs = job_list(&data);
    assert_eq!(jobs.len(), 6, "no photo was queued twice");
    for j in &jobs {
        assert_eq!(j["state"], "done", "{j}");
        if let Some(when) = finished_first.get(j["id"].as_str().expect("id")) {
            assert_eq!(&j["finished_at"], when, "a photo made before the disk filled was not made again: {j}");
        }
    }
    let doc = json(&run(&["doctor", "--json"], &data));
    assert_eq!(doc["orphan_files"], 0, "{doc}");
}

fn job_list(data: &Path) -> Vec<serde_json::Value> {
    let v = json(&run(&["jobs", "list", "--json"], data));
    v.as_array().or_else(|| v["jobs"].as_array()).expect("a job list").clone()
}

/// A read-only output folder is refused before any photo is processed, with nothing written
/// and no job queued. Root ignores permissions, so where a mount is possible a read-only mount
/// is used; elsewhere a folder without write permission.
#[test]
fn a_read_only_output_folder_is_refused_up_front() {
    let (input, data, dir) = make_small();
    let out = dir.path().join("readonly");
    std::fs::create_dir_all(&out).expect("mkdir");
    struct Unmount(Option<PathBuf>);
    impl Drop for Unmount {
        fn drop(&mut self) {
            if let Some(p) = &self.0 {
                let _ = Command::new("umount").arg(p).status();
            }
        }
    }
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "ro,size=1m", "likeness-test"])
        .arg(&out)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let _unmount = if mounted {
        Unmount(Some(out.clone()))
    } else {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o555)).expect("chmod");
        Unmount(None)
    };
    let target = out.join("team");
    let o = run(&["batch", input.to_str().expect("u"), "--out", target.to_str().expect("u")], &data);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("cannot write there") && err.contains("choose an output folder"), "{err}");
    assert!(snapshot(&out).is_empty(), "nothing written");
    let jobs = job_list(&data);
    assert!(jobs.is_empty(), "nothing queued: {jobs:?}");
}
