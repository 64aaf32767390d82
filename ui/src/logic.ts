// Pure logic of the UI (no DOM, no IPC): formatting, progress and time estimates, validation.
// Unit-tested by Vitest (logic.test.ts).

export const DAY = 86_400;

/** Whole days (rounded up) until an output is deleted; 0 once it is due. */
export function daysLeft(expiresAt: number, nowSec: number): number {
  const left = expiresAt - nowSec;
  return left <= 0 ? 0 : Math.ceil(left / DAY);
}

export function daysLeftLabel(expiresAt: number, nowSec: number): string {
  const d = daysLeft(expiresAt, nowSec);
  if (d === 0) return "Deleted automatically today";
  if (d === 1) return "Deleted automatically tomorrow";
  return `Deleted automatically in ${d} days`;
}

/** How long a job's Delete stays inert after it took the place of Cancel under the pointer: the
 * second click of a double-click on Cancel must not delete the job it just cancelled. */
export const DELETE_GRACE_MS = 800;

/** Whether a job's Delete may act now; `endedAt` is when this view saw the job stop (ms), if it did. */
export function deleteArmed(endedAt: number | undefined, nowMs: number): boolean {
  return endedAt === undefined || nowMs - endedAt >= DELETE_GRACE_MS;
}

/** The question asked before a job with headshots is deleted; null when there is nothing to lose. */
export function jobDeleteQuestion(outputs: number): string | null {
  if (outputs <= 0) return null;
  const what = outputs === 1 ? "its headshot is" : `its ${outputs} headshots are`;
  return `The job and ${what} deleted now. Files you exported stay where you saved them. This cannot be undone.`;
}

/** "42 s", "3 min 05 s", "1 h 02 min". */
export function formatDuration(seconds: number): string {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${String(s % 60).padStart(2, "0")} s`;
  return `${Math.floor(m / 60)} h ${String(m % 60).padStart(2, "0")} min`;
}

/** Progress as a whole percentage in [0, 100]. */
export function percent(fraction: number): number {
  if (!Number.isFinite(fraction)) return 0;
  return Math.round(Math.min(1, Math.max(0, fraction)) * 100);
}

/** Seconds left, extrapolated from the time spent so far; null until it means something. */
export function remainingSeconds(fraction: number, startedAt: number | null, nowSec: number): number | null {
  if (startedAt === null || !Number.isFinite(fraction) || fraction < 0.05 || fraction >= 1) return null;
  const spent = nowSec - startedAt;
  if (spent <= 0) return null;
  return (spent * (1 - fraction)) / fraction;
}

export interface JobTimes {
  state: string;
  created_at: number;
  started_at: number | null;
  finished_at: number | null;
  progress: number;
}

/** "Elapsed 12 s · about 30 s left" for a running job; the total time for a finished one. */
export function timeLine(job: JobTimes, nowSec: number): string {
  if (job.started_at === null) return job.state === "queued" ? "Waiting to start" : "";
  const end = job.finished_at ?? nowSec;
  const elapsed = `Elapsed ${formatDuration(end - job.started_at)}`;
  if (job.state !== "running") return elapsed;
  const rem = remainingSeconds(job.progress, job.started_at, nowSec);
  if (rem === null) return elapsed;
  return rem < 1 ? `${elapsed} · almost done` : `${elapsed} · about ${formatDuration(rem)} left`;
}

const STAGES: Record<string, string> = {
  decode: "Reading the photo",
  detect: "Finding the face",
  landmarks: "Mapping the face",
  framing: "Framing",
  segment: "Separating you from the background",
  composite: "Building the studio look",
  generate: "Generating backdrop and attire",
  upscale: "Upscaling",
  encode: "Saving",
};

export interface Step {
  step: number;
  steps: number;
  variant: number;
  variants: number;
}

/** "Generating backdrop and attire, step 3 of 20" (and which variant, when there are several). */
export function stageLabel(stage: string | null | undefined, step?: Step | null): string {
  if (!stage) return "";
  const label = STAGES[stage] ?? stage;
  if (stage !== "generate" || !step || step.steps <= 0) return label;
  if (step.step <= 0) return `${label}, starting`;
  const variant = step.variants > 1 ? ` (variant ${step.variant} of ${step.variants})` : "";
  return `${label}, step ${Math.min(step.step, step.steps)} of ${step.steps}${variant}`;
}

/** The help under the quality choice: working resolution and steps (a Turbo model takes fewer). */
export function qualityHelp(q: { resolution: number; steps: number; turbo_steps: number }, turbo: boolean): string {
  const steps = turbo ? q.turbo_steps : q.steps;
  return `Works at ${q.resolution} px, ${steps} denoising step${steps === 1 ? "" : "s"} per variant.`;
}

/** The seed typed by the person: empty for a random one, else a whole number. */
export function parseSeed(text: string): { seed: number | null } | { error: string } {
  const t = text.trim();
  if (t === "") return { seed: null };
  if (!/^\d{1,15}$/.test(t)) return { error: "The seed is a whole number (up to 15 digits), or empty for a random one." };
  return { seed: Number(t) };
}

/** A random seed that fits the seed field (so a job's seed can be typed again). */
export function randomSeed(rand: () => number = Math.random): number {
  return Math.floor(rand() * 1e12);
}

/** The generative look's fields of the Create form, as read from the page. */
export interface GenerativeFields {
  seedText: string;
  model: string;
  backdrop: string;
  attire: string;
  lighting: string;
  quality: string;
  variants: number;
}

/**
 * A Create job's settings: the studio settings with restoration and the output size, which apply to
 * both looks (the generative look restores the face before painting and upscales each variant), plus
 * the generative look's own fields when it is chosen (`gen` not null).
 */
export function createJobSettings<S extends object>(
  base: S,
  restore: number | null,
  size: number | null,
  gen: GenerativeFields | null,
  rand: () => number = Math.random,
): (S & Record<string, unknown>) | { error: string } {
  const out = { ...base, restore, size };
  if (!gen) return out;
  const seed = parseSeed(gen.seedText);
  if ("error" in seed) return seed;
  if (!gen.model) return { error: "Choose a model for the generative look (import one on the Models screen)." };
  return {
    ...out,
    look: "generative",
    model: gen.model,
    backdrop: gen.backdrop,
    attire: gen.attire,
    lighting: gen.lighting,
    gen_quality: gen.quality,
    variants: gen.variants,
    seed: seed.seed ?? randomSeed(rand),
  };
}

/** Which photo an output of a job comes from: a generative job makes `variants` outputs per photo, in photo order. */
export function outputPhoto(index: number, variants: number, photos: number): { photo: number; variant: number } {
  const v = Math.max(1, Math.floor(variants));
  const photo = Math.min(Math.floor(index / v), Math.max(0, photos - 1));
  return { photo, variant: (index % v) + 1 };
}

/** Import progress: "1.2 MB of 3.4 MB · unet/diffusion_pytorch_model.safetensors". */
export function importLine(done: number, total: number, file: string): string {
  const parts = [`${formatBytes(done)} of ${formatBytes(total)}`];
  if (file) parts.push(file);
  return parts.join(" · ");
}

/** What the page says after an import. */
export function importMessage(v: { id: string; arch: string | null; official: string; known: boolean; already_imported: boolean; warnings: string[] }): string {
  if (v.already_imported) return `Already imported as “${v.id}”: nothing was copied.`;
  const what = v.arch ? `Stable Diffusion (${v.arch})` : v.official;
  const known = v.known ? "Its fingerprint matches the official release." : "Warning: its fingerprint (sha256) is not a known official release; use it only if you trust where it came from.";
  return `Imported “${v.id}”: ${what}. ${known}`;
}

const STATES: Record<string, string> = {
  queued: "Waiting",
  running: "Working",
  done: "Done",
  failed: "Failed",
  cancelled: "Cancelled",
};

export function stateLabel(state: string): string {
  return STATES[state] ?? state;
}

export interface IpcError {
  code: string;
  message: string;
}

export function isIpcError(e: unknown): e is IpcError {
  return typeof e === "object" && e !== null && typeof (e as IpcError).code === "string" && typeof (e as IpcError).message === "string";
}

/** Plain words for an error from a command. */
export function errorText(e: unknown): string {
  if (isIpcError(e)) {
    const lead: Record<string, string> = {
      key_unavailable: "Likeness cannot unlock its encrypted storage.",
      library_locked: "Likeness is already open in another window.",
      disk_full: "The disk is full.",
      not_enough_memory: "There is not enough memory for this model.",
      models_missing: "The face models are missing.",
      library_damaged: "Likeness's storage is damaged.",
      corrupt: "The model file is damaged or incomplete.",
      unsupported: "This is not a model Likeness can use.",
      policy: "Your organisation does not allow this.",
    };
    return lead[e.code] ? `${lead[e.code]} ${e.message}` : e.message;
  }
  if (e instanceof Error) return e.message;
  return String(e);
}

/** What a failed job's message means for the person, with what to do. */
export function failureHint(message: string | null | undefined): string {
  const m = (message ?? "").toLowerCase();
  if (m.includes("no face")) return "No face was found. Use a photo where your face is clearly visible, facing the camera.";
  if (m.includes("damaged") || m.includes("truncated")) return "The file is damaged or incomplete. Copy or export the photo again and retry.";
  if (m.includes("too small") || m.includes("is needed for a headshot")) return "The photo is too small. Use a larger photo (at least 256 pixels on each side).";
  if (m.includes("not an image") || m.includes("format") || m.includes("decode"))
    return "The file could not be read as a photo. Use a JPEG, PNG or WebP photo.";
  if (m.includes("not enough memory"))
    return "This computer does not have enough free memory for this model. Close other programs, or choose a smaller model, and start the job again.";
  if (m.includes("full")) return "The disk is full. Free some space and start the job again.";
  return "Something went wrong. Try again, or try another photo.";
}

export interface PhotoCandidate {
  name: string;
  size: number;
  type: string;
}

const TYPES = ["image/jpeg", "image/png", "image/webp"];
const EXTS = [".jpg", ".jpeg", ".png", ".webp"];

/** Splits dropped files into those to send and plain-words reasons for the rest. */
export function validatePhotos<T extends PhotoCandidate>(
  files: T[],
  alreadyStaged: number,
  max: number,
  maxBytes: number,
): { accepted: T[]; errors: string[] } {
  const accepted: T[] = [];
  const errors: string[] = [];
  for (const f of files) {
    const lower = f.name.toLowerCase();
    const typeOk = TYPES.includes(f.type) || (f.type === "" && EXTS.some((x) => lower.endsWith(x)));
    if (!typeOk) {
      errors.push(`${f.name} is not a JPEG, PNG or WebP photo.`);
    } else if (f.size === 0) {
      errors.push(`${f.name} is empty.`);
    } else if (f.size > maxBytes) {
      errors.push(`${f.name} is larger than ${Math.floor(maxBytes / (1024 * 1024))} MB.`);
    } else if (alreadyStaged + accepted.length >= max) {
      errors.push(`${f.name} was not added: a job takes at most ${max} photos.`);
    } else {
      accepted.push(f);
    }
  }
  return { accepted, errors };
}

/** Retention days typed by the person: an integer within the bounds (1..3650 unless the
 * organisation's policy sets others), or an error in plain words. */
export function parseRetention(text: string, min = 1, max = 3650): { days: number } | { error: string } {
  const t = text.trim();
  if (!/^\d+$/.test(t)) return { error: "Enter a whole number of days." };
  const days = Number(t);
  if (days < min || days > max) return { error: `Choose between ${min} and ${max} days.` };
  return { days };
}

/** The hint under a setting the organisation manages. */
export function managedHint(source: string | null): string {
  return source ? `Set by your organisation's policy (${source}).` : "Set by your organisation's policy.";
}

/** URL of an image served by the app's `likeness:` scheme (Windows maps custom schemes to http). */
export function imageUrl(path: string, windows: boolean): string {
  const clean = path.split("/").map(encodeURIComponent).join("/");
  return windows ? `http://likeness.localhost/${clean}` : `likeness://localhost/${clean}`;
}

export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(0)} KB`;
  return `${(n / (1024 * 1024)).toFixed(1)} MB`;
}

// ---- Gallery ----

/** Favourites first, otherwise the order given (stable). */
export function galleryOrder<T extends { favourite: boolean }>(items: T[]): T[] {
  return items.map((item, i) => ({ item, i })).sort((a, b) => Number(b.item.favourite) - Number(a.item.favourite) || a.i - b.i).map((x) => x.item);
}

export const EXPORT_PLACEHOLDERS = ["preset", "id", "n", "photo", "date", "size"];

/** Checks a file name template in the page (the Rust side checks again); null when fine. */
export function templateError(template: string, known: string[] = EXPORT_PLACEHOLDERS): string | null {
  const t = template.trim();
  if (t === "") return null; // the default template is used
  let rest = t;
  for (;;) {
    const open = rest.indexOf("{");
    const close = rest.indexOf("}");
    if (open < 0) return close >= 0 ? "A '}' has no matching '{'." : null;
    if (close >= 0 && close < open) return "A '}' has no matching '{'.";
    const end = rest.indexOf("}", open);
    if (end < 0) return "A '{' is not closed.";
    const key = rest.slice(open + 1, end);
    if (!known.includes(key)) return `Unknown placeholder {${key}}; use ${known.map((k) => `{${k}}`).join(", ")}.`;
    rest = rest.slice(end + 1);
  }
}

/** The export size: "original", "2048", "1024" or "custom" with a typed number of pixels. */
export function exportSize(choice: string, custom: string): { max_side: number | null } | { error: string } {
  if (choice === "original") return { max_side: null };
  if (choice === "custom") {
    const t = custom.trim();
    if (!/^\d+$/.test(t)) return { error: "Enter the longest side in whole pixels." };
    const n = Number(t);
    if (n < 64 || n > 8192) return { error: "Choose a size between 64 and 8192 pixels." };
    return { max_side: n };
  }
  const n = Number(choice);
  return Number.isInteger(n) && n > 0 ? { max_side: n } : { error: `Unknown size ${choice}.` };
}

/** What the page says after an export. */
export function exportMessage(r: { saved: boolean; files: string[] }): string {
  if (!r.saved) return "Not exported.";
  if (r.files.length === 1) return `Saved as ${r.files[0]}. Exported files are yours to keep.`;
  return `Saved ${r.files.length} files (${r.files.slice(0, 3).join(", ")}${r.files.length > 3 ? ", …" : ""}). Exported files are yours to keep.`;
}

// ---- Batch ----

export interface BatchFile {
  name: string;
  state: string;
  progress: number;
  started_at: number | null;
  finished_at: number | null;
}

export interface BatchProgress {
  finished: number;
  total: number;
  /** Overall fraction, counting the running photo's own progress. */
  fraction: number;
  /** Photos per second so far; null until one has finished. */
  perSecond: number | null;
  /** Seconds left at that rate; null when unknown. */
  remaining: number | null;
}

const FINISHED = ["done", "failed", "cancelled"];

/** Overall progress of a batch: photos finished, rate and time left. */
export function batchProgress(files: BatchFile[], startedAt: number, nowSec: number): BatchProgress {
  const taken = files.filter((f) => f.state !== "not-processed");
  const total = taken.length;
  const finished = taken.filter((f) => FINISHED.includes(f.state)).length;
  const partial = taken.filter((f) => f.state === "running").reduce((s, f) => s + Math.min(1, Math.max(0, f.progress)), 0);
  const fraction = total === 0 ? 1 : Math.min(1, (finished + partial) / total);
  const spent = nowSec - startedAt;
  const perSecond = finished > 0 && spent > 0 ? finished / spent : null;
  let remaining: number | null = null;
  if (finished >= total) remaining = 0;
  else if (fraction > 0.02 && spent > 0) remaining = (spent * (1 - fraction)) / fraction;
  return { finished, total, fraction, perSecond, remaining };
}

/** "3 of 10 photos · 0.25 photos/s · about 28 s left". */
export function batchLine(p: BatchProgress): string {
  const parts = [`${p.finished} of ${p.total} photo${p.total === 1 ? "" : "s"}`];
  if (p.perSecond !== null) {
    parts.push(p.perSecond >= 1 ? `${p.perSecond.toFixed(1)} photos/s` : `${(p.perSecond * 60).toFixed(1)} photos/min`);
  }
  if (p.finished < p.total && p.remaining !== null) parts.push(`about ${formatDuration(p.remaining)} left`);
  return parts.join(" · ");
}

/** A batch file's state in words. */
export function batchStateLabel(state: string): string {
  return state === "not-processed" ? "Not processed" : stateLabel(state);
}

/** Plain words for why a batch file failed or was not processed. */
export function batchFailureText(reason: string | null | undefined): string {
  const m = (reason ?? "").toLowerCase();
  if (m.includes("symbolic link")) return "Skipped: it is a link (links are never followed).";
  if (m.includes("not a photo")) return "Skipped: not a photo.";
  if (m.includes("a folder (use")) return "Skipped: a subfolder (turn on “Include subfolders” to take its photos).";
  if (m.includes("empty")) return "The file is empty.";
  return failureHint(reason);
}
