import { describe, expect, it } from "vitest";
import {
  batchFailureText,
  batchLine,
  batchProgress,
  batchStateLabel,
  createJobSettings,
  DAY,
  DELETE_GRACE_MS,
  daysLeft,
  daysLeftLabel,
  deleteArmed,
  errorText,
  exportMessage,
  exportSize,
  failureHint,
  formatBytes,
  formatDuration,
  galleryOrder,
  imageUrl,
  importLine,
  importMessage,
  jobDeleteQuestion,
  managedHint,
  outputPhoto,
  parseSeed,
  qualityHelp,
  randomSeed,
  parseRetention,
  percent,
  remainingSeconds,
  stageLabel,
  stateLabel,
  templateError,
  timeLine,
  validatePhotos,
} from "./logic.js";

const now = 1_700_000_000;

describe("days left before automatic deletion", () => {
  it("rounds partial days up", () => {
    expect(daysLeft(now + 30 * DAY, now)).toBe(30);
    expect(daysLeft(now + 29 * DAY + 1, now)).toBe(30);
    expect(daysLeft(now + 1, now)).toBe(1);
  });
  it("is 0 once due or past", () => {
    expect(daysLeft(now, now)).toBe(0);
    expect(daysLeft(now - 5 * DAY, now)).toBe(0);
  });
  it("labels today, tomorrow and later", () => {
    expect(daysLeftLabel(now - 1, now)).toBe("Deleted automatically today");
    expect(daysLeftLabel(now + 3600, now)).toBe("Deleted automatically tomorrow");
    expect(daysLeftLabel(now + 12 * DAY, now)).toBe("Deleted automatically in 12 days");
  });
});

describe("durations, progress and remaining time", () => {
  it("formats seconds, minutes and hours", () => {
    expect(formatDuration(0)).toBe("0 s");
    expect(formatDuration(42.4)).toBe("42 s");
    expect(formatDuration(185)).toBe("3 min 05 s");
    expect(formatDuration(3720)).toBe("1 h 02 min");
    expect(formatDuration(-3)).toBe("0 s");
  });
  it("clamps progress to whole percent", () => {
    expect(percent(0.456)).toBe(46);
    expect(percent(-1)).toBe(0);
    expect(percent(2)).toBe(100);
    expect(percent(Number.NaN)).toBe(0);
  });
  it("extrapolates the remaining time from the time spent", () => {
    expect(remainingSeconds(0.25, now - 10, now)).toBeCloseTo(30);
    expect(remainingSeconds(0.5, now - 8, now)).toBeCloseTo(8);
  });
  it("gives no estimate too early, when done or when not started", () => {
    expect(remainingSeconds(0.01, now - 10, now)).toBeNull();
    expect(remainingSeconds(1, now - 10, now)).toBeNull();
    expect(remainingSeconds(0.5, null, now)).toBeNull();
    expect(remainingSeconds(0.5, now, now)).toBeNull();
  });
  it("describes a job's time", () => {
    const base = { created_at: now - 60, finished_at: null, progress: 0 };
    expect(timeLine({ ...base, state: "queued", started_at: null }, now)).toBe("Waiting to start");
    expect(timeLine({ ...base, state: "running", started_at: now - 10, progress: 0.5 }, now)).toBe("Elapsed 10 s · about 10 s left");
    expect(timeLine({ ...base, state: "running", started_at: now - 10, progress: 0.01 }, now)).toBe("Elapsed 10 s");
    expect(timeLine({ ...base, state: "running", started_at: now - 1, progress: 0.7 }, now)).toBe("Elapsed 1 s · almost done");
    expect(timeLine({ ...base, state: "done", started_at: now - 50, finished_at: now - 20, progress: 1 }, now)).toBe("Elapsed 30 s");
  });
});

describe("labels", () => {
  it("names stages and states in plain words", () => {
    expect(stageLabel("segment")).toBe("Separating you from the background");
    expect(stageLabel(null)).toBe("");
    expect(stageLabel("new-stage")).toBe("new-stage");
    expect(stateLabel("queued")).toBe("Waiting");
    expect(stateLabel("failed")).toBe("Failed");
  });
  it("explains failures with what to do", () => {
    expect(failureHint("grace.jpg: no face found in the photo")).toMatch(/clearly visible/);
    expect(failureHint("the photo is too small (100x100)")).toMatch(/larger photo/);
    expect(failureHint("not enough memory for model 'sdxl': it needs about 19.4 GB")).toMatch(/enough free memory/);
    expect(failureHint(null)).toMatch(/Try again/);
  });
  it("turns IPC errors into sentences", () => {
    expect(errorText({ code: "not_found", message: "job x does not exist" })).toBe("job x does not exist");
    expect(errorText({ code: "disk_full", message: "free space" })).toBe("The disk is full. free space");
    expect(errorText({ code: "not_enough_memory", message: "it needs 19 GB" })).toBe("There is not enough memory for this model. it needs 19 GB");
    expect(errorText(new Error("boom"))).toBe("boom");
    expect(errorText("plain")).toBe("plain");
  });
  it("formats sizes", () => {
    expect(formatBytes(512)).toBe("512 B");
    expect(formatBytes(2048)).toBe("2 KB");
    expect(formatBytes(3 * 1024 * 1024)).toBe("3.0 MB");
  });
});

describe("validation", () => {
  const f = (name: string, size = 1000, type = "image/jpeg") => ({ name, size, type });
  it("accepts JPEG, PNG and WebP up to the limit", () => {
    const r = validatePhotos([f("a.jpg"), f("b.png", 10, "image/png"), f("c.webp", 10, "")], 0, 3, 5000);
    expect(r.accepted.map((x) => x.name)).toEqual(["a.jpg", "b.png", "c.webp"]);
    expect(r.errors).toEqual([]);
  });
  it("refuses other types, empty and oversized files, and a fourth photo", () => {
    const r = validatePhotos([f("doc.pdf", 10, "application/pdf"), f("e.jpg", 0), f("big.jpg", 9000), f("ok.jpg"), f("more.jpg")], 2, 3, 5000);
    expect(r.accepted.map((x) => x.name)).toEqual(["ok.jpg"]);
    expect(r.errors).toHaveLength(4);
    expect(r.errors[0]).toMatch(/not a JPEG/);
    expect(r.errors[1]).toMatch(/empty/);
    expect(r.errors[2]).toMatch(/larger than/);
    expect(r.errors[3]).toMatch(/at most 3/);
  });
  it("parses retention days", () => {
    expect(parseRetention(" 14 ")).toEqual({ days: 14 });
    expect(parseRetention("0")).toHaveProperty("error");
    expect(parseRetention("4000")).toHaveProperty("error");
    expect(parseRetention("1.5")).toHaveProperty("error");
    expect(parseRetention("")).toHaveProperty("error");
    // Bounds set by the organisation's policy.
    expect(parseRetention("5", 7, 90)).toEqual({ error: "Choose between 7 and 90 days." });
    expect(parseRetention("90", 7, 90)).toEqual({ days: 90 });
    expect(managedHint("/etc/likeness/policy.json")).toBe("Set by your organisation's policy (/etc/likeness/policy.json).");
    expect(managedHint(null)).toBe("Set by your organisation's policy.");
  });
});

describe("image URLs", () => {
  it("uses the likeness scheme, encoding each part", () => {
    expect(imageUrl("output/abc", false)).toBe("likeness://localhost/output/abc");
    expect(imageUrl("input/a b/0", false)).toBe("likeness://localhost/input/a%20b/0");
    expect(imageUrl("output/abc", true)).toBe("http://likeness.localhost/output/abc");
  });
});

describe("gallery: favourites, export options", () => {
  it("puts favourites first and keeps the order otherwise", () => {
    const items = [
      { id: "a", favourite: false },
      { id: "b", favourite: true },
      { id: "c", favourite: false },
      { id: "d", favourite: true },
    ];
    expect(galleryOrder(items).map((i) => i.id)).toEqual(["b", "d", "a", "c"]);
    expect(galleryOrder([])).toEqual([]);
    expect(items.map((i) => i.id)).toEqual(["a", "b", "c", "d"]); // not sorted in place
  });

  it("checks name templates like the Rust side", () => {
    expect(templateError("")).toBeNull();
    expect(templateError("likeness-{preset}-{n}")).toBeNull();
    expect(templateError("{photo}_{date}_{size}")).toBeNull();
    expect(templateError("{stem}")).toMatch(/Unknown placeholder \{stem\}/);
    expect(templateError("a-{preset")).toMatch(/not closed/);
    expect(templateError("a}b")).toMatch(/no matching/);
  });

  it("reads the export size", () => {
    expect(exportSize("original", "")).toEqual({ max_side: null });
    expect(exportSize("2048", "")).toEqual({ max_side: 2048 });
    expect(exportSize("1024", "999")).toEqual({ max_side: 1024 });
    expect(exportSize("custom", " 800 ")).toEqual({ max_side: 800 });
    expect(exportSize("custom", "12")).toHaveProperty("error");
    expect(exportSize("custom", "9000")).toHaveProperty("error");
    expect(exportSize("custom", "1.5")).toHaveProperty("error");
  });

  it("says what was exported", () => {
    expect(exportMessage({ saved: false, files: [] })).toBe("Not exported.");
    expect(exportMessage({ saved: true, files: ["a.png"] })).toMatch(/^Saved as a\.png\./);
    expect(exportMessage({ saved: true, files: ["a.png", "b.png", "c.png", "d.png"] })).toMatch(/^Saved 4 files \(a\.png, b\.png, c\.png, …\)/);
  });
});

describe("batch progress", () => {
  const f = (state: string, progress = 0) => ({ name: state, state, progress, started_at: null, finished_at: null });

  it("counts finished photos, the running one's share, rate and time left", () => {
    const p = batchProgress([f("done"), f("failed"), f("running", 0.5), f("queued"), f("not-processed")], 1000, 1040);
    expect(p.total).toBe(4);
    expect(p.finished).toBe(2);
    expect(p.fraction).toBeCloseTo(2.5 / 4);
    expect(p.perSecond).toBeCloseTo(2 / 40);
    expect(p.remaining).toBeCloseTo((40 * 1.5) / 2.5);
    expect(batchLine(p)).toBe("2 of 4 photos · 3.0 photos/min · about 24 s left");
  });

  it("knows nothing about speed before the first photo and is done at the end", () => {
    const start = batchProgress([f("queued"), f("queued")], 1000, 1000);
    expect(start.perSecond).toBeNull();
    expect(start.remaining).toBeNull();
    expect(batchLine(start)).toBe("0 of 2 photos");
    const end = batchProgress([f("done"), f("cancelled")], 1000, 1002);
    expect(end.fraction).toBe(1);
    expect(end.remaining).toBe(0);
    expect(batchLine(end)).toBe("2 of 2 photos · 1.0 photos/s");
    expect(batchProgress([], 0, 1).fraction).toBe(1);
  });

  it("explains failures in plain words", () => {
    expect(batchFailureText("a symbolic link (not followed)")).toMatch(/link/);
    expect(batchFailureText("a folder (use --recursive)")).toMatch(/Include subfolders/);
    expect(batchFailureText("not a photo (JPEG, PNG, WebP or HEIC)")).toBe("Skipped: not a photo.");
    expect(batchFailureText("no face found in the photo")).toMatch(/No face/);
    expect(batchFailureText("broken.jpg: the image data is damaged or truncated (eof); re-export or re-copy the photo")).toMatch(/damaged or incomplete/);
    expect(failureHint("the image is 40x40 pixels; at least 64x64 is needed for a headshot")).toMatch(/too small/);
    expect(batchStateLabel("not-processed")).toBe("Not processed");
    expect(batchStateLabel("done")).toBe("Done");
  });
});

describe("generative look", () => {
  const step = (step: number, steps: number, variant = 1, variants = 1) => ({ step, steps, variant, variants });
  it("tells the denoising step, and the variant when there are several", () => {
    expect(stageLabel("generate", step(3, 20))).toBe("Generating backdrop and attire, step 3 of 20");
    expect(stageLabel("generate", step(5, 12, 2, 2))).toBe("Generating backdrop and attire, step 5 of 12 (variant 2 of 2)");
    expect(stageLabel("generate", step(0, 12))).toBe("Generating backdrop and attire, starting");
    expect(stageLabel("generate", null)).toBe("Generating backdrop and attire");
    expect(stageLabel("segment", step(3, 20))).toBe("Separating you from the background");
  });
  it("shows the working resolution and steps of a quality level", () => {
    const q = { resolution: 512, steps: 25, turbo_steps: 2 };
    expect(qualityHelp(q, false)).toBe("Works at 512 px, 25 denoising steps per variant.");
    expect(qualityHelp({ ...q, turbo_steps: 1 }, true)).toBe("Works at 512 px, 1 denoising step per variant.");
  });
  it("reads the seed: empty is random, otherwise a whole number", () => {
    expect(parseSeed("")).toEqual({ seed: null });
    expect(parseSeed(" 42 ")).toEqual({ seed: 42 });
    expect("error" in parseSeed("-1")).toBe(true);
    expect("error" in parseSeed("4.2")).toBe(true);
    expect("error" in parseSeed("1234567890123456")).toBe(true);
    const r = randomSeed(() => 0.5);
    expect(r).toBe(5e11);
    expect(parseSeed(String(randomSeed(() => 0.999999999999)))).not.toHaveProperty("error");
  });
  it("builds a Create job's settings: restoration and size in both looks, the generative fields when chosen", () => {
    const base = { preset: "square", backdrop: "gradient", format: "png" };
    expect(createJobSettings(base, 0.6, 1024, null)).toEqual({ ...base, restore: 0.6, size: 1024 });
    const gen = { seedText: "", model: "tiny", backdrop: "office", attire: "suit", lighting: "dramatic", quality: "draft", variants: 2 };
    expect(createJobSettings(base, 0.6, 1024, gen, () => 0.5)).toEqual({
      ...base,
      restore: 0.6,
      size: 1024,
      look: "generative",
      model: "tiny",
      backdrop: "office",
      attire: "suit",
      lighting: "dramatic",
      gen_quality: "draft",
      variants: 2,
      seed: 5e11,
    });
    expect(createJobSettings(base, null, null, { ...gen, seedText: "7" })).toMatchObject({ restore: null, size: null, seed: 7 });
    expect(createJobSettings(base, null, null, { ...gen, seedText: "x" })).toHaveProperty("error");
    expect(createJobSettings(base, null, null, { ...gen, model: "" })).toEqual({ error: "Choose a model for the generative look (import one on the Models screen)." });
  });
  it("maps a job's outputs to their photo and variant", () => {
    expect([0, 1, 2, 3].map((i) => outputPhoto(i, 2, 2))).toEqual([
      { photo: 0, variant: 1 },
      { photo: 0, variant: 2 },
      { photo: 1, variant: 1 },
      { photo: 1, variant: 2 },
    ]);
    expect(outputPhoto(2, 1, 3)).toEqual({ photo: 2, variant: 1 });
    // More outputs than expected never point past the last photo.
    expect(outputPhoto(9, 1, 2)).toEqual({ photo: 1, variant: 1 });
  });
});

describe("model import", () => {
  it("shows bytes and the file being read", () => {
    expect(importLine(512, 2048, "unet/model.safetensors")).toBe("512 B of 2 KB · unet/model.safetensors");
    expect(importLine(0, 0, "")).toBe("0 B of 0 B");
  });
  it("says whether the file is a known release", () => {
    const v = { id: "tiny", arch: "sd15-inpaint", official: "unknown", known: false, already_imported: false, warnings: [] };
    expect(importMessage(v)).toContain("Warning: its fingerprint");
    expect(importMessage(v)).toContain("Stable Diffusion (sd15-inpaint)");
    expect(importMessage({ ...v, arch: null, official: "GFPGANv1.4.pth", known: true })).toBe(
      "Imported “tiny”: GFPGANv1.4.pth. Its fingerprint matches the official release.",
    );
    expect(importMessage({ ...v, already_imported: true })).toBe("Already imported as “tiny”: nothing was copied.");
  });
  it("gives import errors a plain lead", () => {
    expect(errorText({ code: "corrupt", message: "x is truncated" })).toBe("The model file is damaged or incomplete. x is truncated");
    expect(errorText({ code: "policy", message: "p" })).toBe("Your organisation does not allow this. p");
  });
});

describe("deleting a job", () => {
  it("keeps a Delete that just replaced Cancel inert for the second click of a double-click", () => {
    expect(deleteArmed(undefined, 5)).toBe(true);
    expect(deleteArmed(1000, 1000)).toBe(false);
    expect(deleteArmed(1000, 1000 + DELETE_GRACE_MS - 1)).toBe(false);
    expect(deleteArmed(1000, 1000 + DELETE_GRACE_MS)).toBe(true);
  });
  it("asks first only when headshots would be lost", () => {
    expect(jobDeleteQuestion(0)).toBeNull();
    expect(jobDeleteQuestion(1)).toContain("its headshot is deleted");
    expect(jobDeleteQuestion(3)).toContain("its 3 headshots are deleted");
    expect(jobDeleteQuestion(2)).toContain("Files you exported stay");
  });
});
