// The Likeness page: Create, Queue, Gallery and Preferences over the app's commands.
// Everything shown is built with DOM calls (no HTML strings), so file names can't inject markup.

import { api, type AppInfo, type BatchView, type CreateOptions, type ExportOptions, type ImportEvent, type JobEvent, type JobView, type ModelView, type OutputView, type Preview, type StagedPhoto, type StepInfo, type StudioSettings } from "./api.js";
import {
  batchFailureText,
  createJobSettings,
  batchLine,
  batchProgress,
  batchStateLabel,
  daysLeftLabel,
  deleteArmed,
  jobDeleteQuestion,
  errorText,
  exportMessage,
  exportSize,
  failureHint,
  galleryOrder,
  importLine,
  importMessage,
  managedHint,
  outputPhoto,
  qualityHelp,
  templateError,
  formatBytes,
  imageUrl,
  parseRetention,
  percent,
  stageLabel,
  stateLabel,
  timeLine,
  validatePhotos,
} from "./logic.js";

const windows = navigator.userAgent.includes("Windows");
const img = (path: string) => imageUrl(path, windows);
const nowSec = () => Date.now() / 1000;

function $(id: string): HTMLElement {
  const el = document.getElementById(id);
  if (!el) throw new Error(`missing #${id}`);
  return el;
}
const $input = (id: string) => $(id) as HTMLInputElement;
const $select = (id: string) => $(id) as HTMLSelectElement;
const $dialog = (id: string) => $(id) as HTMLDialogElement;

type Attrs = Record<string, string | boolean | number | ((e: Event) => void)>;
function h(tag: string, attrs: Attrs = {}, ...children: (Node | string | null)[]): HTMLElement {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (typeof v === "function") el.addEventListener(k.replace(/^on/, ""), v);
    else if (v === true) el.setAttribute(k, "");
    else if (v !== false) el.setAttribute(k, String(v));
  }
  for (const c of children) if (c !== null) el.append(c);
  return el;
}
const SVG = "http://www.w3.org/2000/svg";
function s(tag: string, attrs: Record<string, string | number>): SVGElement {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  return el;
}

let info: AppInfo | null = null;
let staged: StagedPhoto[] = [];
const previews = new Map<string, Preview | "loading" | string>();
let jobs: JobView[] = [];
let createOpts: CreateOptions | null = null;
/** The denoising step of running generative jobs, from their progress events. */
const steps = new Map<string, StepInfo>();

function announce(text: string) {
  $("status").textContent = text;
}
function banner(text: string | null) {
  const b = $("banner");
  b.hidden = !text;
  b.textContent = text ?? "";
}

// ---- tabs (arrow keys move between them, as in the WAI-ARIA tabs pattern) ----
const TABS = ["create", "queue", "gallery", "batch", "models", "prefs"];
function showTab(name: string, focus = true) {
  for (const t of TABS) {
    const tab = $(`tab-${t}`);
    const on = t === name;
    tab.setAttribute("aria-selected", String(on));
    tab.tabIndex = on ? 0 : -1;
    $(t).hidden = !on;
    if (on && focus) tab.focus();
  }
  if (name === "queue" || name === "gallery") void refreshJobs();
  if (name === "models") void refreshModels();
}
function setupTabs() {
  TABS.forEach((t, i) => {
    const tab = $(`tab-${t}`);
    tab.addEventListener("click", () => showTab(t));
    tab.addEventListener("keydown", (e) => {
      const k = (e as KeyboardEvent).key;
      const next = k === "ArrowRight" ? i + 1 : k === "ArrowLeft" ? i - 1 : k === "Home" ? 0 : k === "End" ? TABS.length - 1 : null;
      if (next === null) return;
      e.preventDefault();
      showTab(TABS[(next + TABS.length) % TABS.length]);
    });
  });
}

// ---- Create ----
function settings(prefix = ""): StudioSettings {
  return {
    preset: $select(`${prefix}preset`).value,
    backdrop: $select(`${prefix}backdrop`).value,
    format: $select(`${prefix}format`).value,
    jpeg_quality: 92,
    relight: Number($input("relight").value) / 100,
    retouch: Number($input("retouch").value) / 100,
    max_size: 2048,
  };
}

const isGenerative = () => $input("look-generative").checked;

/** The Create form's settings: the studio ones, and the generative look's when chosen. */
function createSettings(): StudioSettings | { error: string } {
  const restore = $input("restore").checked ? Number($input("restore-strength").value) / 100 : null;
  const size = $select("out-size").value ? Number($select("out-size").value) : null;
  const gen = isGenerative()
    ? {
        seedText: $input("seed").value,
        model: $select("gen-model").value,
        backdrop: $select("gen-backdrop").value,
        attire: $select("attire").value,
        lighting: $select("lighting").value,
        quality: $select("gen-quality").value,
        variants: Number($input("variants").value),
      }
    : null;
  return createJobSettings(settings(), restore, size, gen);
}

/** The generative look, restoration and upscaling as the installed models allow. */
async function loadCreateOptions() {
  try {
    createOpts = await api.createOptions();
  } catch (e) {
    $("look-reason").textContent = errorText(e);
    return;
  }
  const o = createOpts;
  const keep = { attire: $select("attire").value, lighting: $select("lighting").value, q: $select("gen-quality").value, b: $select("gen-backdrop").value };
  fillSelect("attire", o.choices.attires);
  fillSelect("lighting", o.choices.lightings);
  fillSelect("gen-backdrop", o.choices.backdrops);
  fillSelect("gen-quality", o.choices.qualities);
  if (keep.attire) $select("attire").value = keep.attire;
  if (keep.lighting) $select("lighting").value = keep.lighting;
  if (keep.b) $select("gen-backdrop").value = keep.b;
  $select("gen-quality").value = keep.q || "draft";
  const models = $select("gen-model");
  models.replaceChildren(
    ...o.models.map((m) => {
      const opt = h("option", { value: m.id, disabled: m.unusable !== null }, `${m.id} (${m.arch})${m.unusable ? ` — ${m.unusable}` : ""}`);
      return opt;
    }),
  );
  const firstUsable = o.models.find((m) => m.unusable === null);
  if (firstUsable) models.value = firstUsable.id;
  $input("variants").max = String(o.choices.max_variants);
  const gen = $input("look-generative");
  gen.disabled = !o.generative_available;
  $("look-reason").textContent = o.generative_reason ?? "Repaints the backdrop (and clothes, with an attire) with the model; your face stays your own pixels.";
  if (gen.disabled && gen.checked) $input("look-studio").checked = true;
  updateLook();
}

function updateLook() {
  const gen = isGenerative();
  $("gen-fields").hidden = !gen;
  $("studio-fields").hidden = gen;
  // Restoration and the output size apply to both looks: the generative look restores the face
  // before painting around it, and upscales each variant when the crop is smaller than the size.
  const restoreOk = createOpts?.restore_available === true;
  const restore = $input("restore");
  restore.disabled = !restoreOk;
  if (!restoreOk) restore.checked = false;
  $input("restore-strength").disabled = !restore.checked;
  $("restore-help").textContent = createOpts?.restore_available
    ? "Sharpens a soft face with GFPGAN, blended with your own pixels by the strength."
    : "Needs the GFPGAN v1.4 model: import GFPGANv1.4.pth on the Models screen.";
  $("size-help").textContent = createOpts?.upscale_available
    ? "The short side. A crop smaller than this is enlarged with Real-ESRGAN."
    : "The short side. A crop smaller than this is resized (no upscaling model is installed).";
  updatePreviews();
}

const GEN_SWATCHES: Record<string, string> = {
  "studio-grey": "linear-gradient(#9a9ea3, #6b6e73)",
  white: "#ffffff",
  office: "linear-gradient(90deg, #c9c3b5, #e8e4da 40%, #9fb0c0)",
  bookshelf: "repeating-linear-gradient(90deg, #7a4e2d 0 6px, #b08050 6px 9px, #4f6b3a 9px 14px, #a33 14px 17px)",
  outdoor: "linear-gradient(#bfe0f5, #8fbf73)",
};

/** The small pictures of the chosen attire, lighting and backdrop, and the quality's cost. */
function updatePreviews() {
  const attire = $select("attire").value || "keep";
  const lighting = $select("lighting").value || "soft-studio";
  const a = createOpts?.choices.attires.find((c) => c.value === attire);
  const l = createOpts?.choices.lightings.find((c) => c.value === lighting);
  const ai = $("attire-preview") as HTMLImageElement;
  ai.src = `icons/attire-${attire}.svg`;
  ai.alt = a ? `Preview: ${a.label}` : "";
  const li = $("lighting-preview") as HTMLImageElement;
  li.src = `icons/lighting-${lighting}.svg`;
  li.alt = l ? `Preview: ${l.label}` : "";
  $("gen-swatch").style.background = GEN_SWATCHES[$select("gen-backdrop").value] ?? "#888";
  const q = createOpts?.choices.qualities.find((c) => c.value === $select("gen-quality").value);
  const model = createOpts?.models.find((m) => m.id === $select("gen-model").value);
  $("quality-help").textContent = q ? qualityHelp(q, model?.arch === "sd-turbo") : "";
  $("variants-out").textContent = $input("variants").value;
}

function fillSelect(id: string, choices: { value: string; label: string }[]) {
  const sel = $select(id);
  sel.replaceChildren(...choices.map((c) => h("option", { value: c.value }, c.label)));
}

const SWATCHES: Record<string, string> = {
  gradient: "linear-gradient(#a9adb2, #5c5f64)",
  white: "#ffffff",
  "light-grey": "#d8d9db",
  charcoal: "#2d2f33",
  navy: "#1e2a45",
  blur: "linear-gradient(90deg, #8a9a7b, #c7b9a0, #7b8a9a)",
};
function updateSwatch() {
  const v = $select("backdrop").value;
  const sw = $("swatch");
  if (v.startsWith("image:")) {
    sw.style.background = "repeating-linear-gradient(45deg, #9aa, #9aa 6px, #bcc 6px, #bcc 12px)";
  } else {
    sw.style.background = SWATCHES[v] ?? "#888";
  }
}

function renderStaged() {
  const list = $("staged");
  list.replaceChildren(
    ...staged.map((p) => {
      const photo = h("img", { src: img(`staged/${p.id}`), alt: `Your photo ${p.name}` });
      const thumb = h("div", { class: "thumb" }, photo);
      const pv = previews.get(p.id);
      const notes: HTMLElement[] = [];
      if (pv === "loading") notes.push(h("p", { class: "note" }, "Finding your face…"));
      else if (typeof pv === "string") notes.push(h("p", { class: "note" }, pv));
      else if (pv) {
        // Show the whole crop, also where it reaches past the photo (that part is filled in).
        const box = viewBox(pv);
        thumb.style.aspectRatio = `${box.w} / ${box.h}`;
        Object.assign(photo.style, {
          left: `${(-box.x / box.w) * 100}%`,
          top: `${(-box.y / box.h) * 100}%`,
          width: `${(pv.width / box.w) * 100}%`,
          height: `${(pv.height / box.h) * 100}%`,
          objectFit: "fill",
          inset: "auto",
        });
        const svg = s("svg", { viewBox: `${box.x} ${box.y} ${box.w} ${box.h}`, preserveAspectRatio: "none", "aria-hidden": "true" });
        for (const f of pv.faces.slice(0, 1)) svg.append(s("rect", { class: "face", x: f.x, y: f.y, width: f.w, height: f.h }));
        if (pv.crop) svg.append(s("polygon", { class: "crop", points: pv.crop.map((c) => c.join(",")).join(" ") }));
        thumb.append(svg);
        notes.push(h("p", { class: "note" }, pv.faces.length ? "Face found; dashed: the crop." : ""));
        for (const n of pv.notes) notes.push(h("p", { class: "note" }, n));
      }
      return h(
        "li",
        { "data-photo": p.id },
        thumb,
        h("p", { class: "name", title: p.name }, `${p.name} · ${formatBytes(p.size)}`),
        ...notes,
        h("button", { type: "button", onclick: () => void removeStaged(p.id), "aria-label": `Remove ${p.name}` }, "Remove"),
      );
    }),
  );
  const max = info?.max_photos ?? 3;
  ($("start") as HTMLButtonElement).disabled = staged.length === 0;
  $("start-help").textContent = staged.length === 0 ? "Add at least one photo to start." : `${staged.length} of ${max} photos. One headshot per photo.`;
}

/** The region covering the photo and its crop, in photo pixels. */
function viewBox(pv: Preview): { x: number; y: number; w: number; h: number } {
  const xs = [0, pv.width, ...(pv.crop ?? []).map((c) => c[0])];
  const ys = [0, pv.height, ...(pv.crop ?? []).map((c) => c[1])];
  const x = Math.min(...xs);
  const y = Math.min(...ys);
  return { x, y, w: Math.max(...xs) - x, h: Math.max(...ys) - y };
}

async function loadPreview(id: string) {
  previews.set(id, "loading");
  renderStaged();
  try {
    previews.set(id, await api.previewPhoto(id, $select("preset").value));
  } catch (e) {
    previews.set(id, errorText(e));
  }
  renderStaged();
}

function addStaged(photos: StagedPhoto[]) {
  staged.push(...photos);
  renderStaged();
  announce(`${photos.length} photo${photos.length === 1 ? "" : "s"} added`);
  for (const p of photos) void loadPreview(p.id);
}

async function removeStaged(id: string) {
  try {
    await api.unstagePhoto(id);
  } catch {
    // Already gone on the Rust side: drop it here too.
  }
  staged = staged.filter((p) => p.id !== id);
  previews.delete(id);
  renderStaged();
  $("pick").focus();
}

async function dropFiles(files: File[]) {
  const errors = $("photo-errors");
  const max = info?.max_photos ?? 3;
  const { accepted, errors: problems } = validatePhotos(files, staged.length, max, info?.max_photo_bytes ?? 40 << 20);
  const added: StagedPhoto[] = [];
  for (const f of accepted) {
    try {
      added.push(await api.stagePhoto(f.name, new Uint8Array(await f.arrayBuffer())));
    } catch (e) {
      problems.push(errorText(e));
    }
  }
  errors.replaceChildren(...problems.map((p) => h("p", {}, p)));
  if (added.length) addStaged(added);
}

function setupCreate() {
  const zone = $("dropzone");
  // A drop outside the zone must not navigate the window to the file.
  for (const ev of ["dragover", "drop"]) document.addEventListener(ev, (e) => e.preventDefault());
  zone.addEventListener("dragover", (e) => {
    e.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    const files = Array.from((e as DragEvent).dataTransfer?.files ?? []);
    void dropFiles(files);
  });
  $("pick").addEventListener("click", async () => {
    try {
      const room = (info?.max_photos ?? 3) - staged.length;
      if (room <= 0) {
        $("photo-errors").replaceChildren(h("p", {}, "A job takes at most 3 photos: remove one first."));
        return;
      }
      const picked = await api.pickPhotos();
      $("photo-errors").replaceChildren();
      if (picked.length) addStaged(picked);
    } catch (e) {
      $("photo-errors").replaceChildren(h("p", {}, errorText(e)));
    }
  });
  $select("preset").addEventListener("change", () => staged.forEach((p) => void loadPreview(p.id)));
  $select("backdrop").addEventListener("change", updateSwatch);
  for (const id of ["look-studio", "look-generative"]) $input(id).addEventListener("change", updateLook);
  for (const id of ["attire", "lighting", "gen-quality", "gen-model", "gen-backdrop"]) $select(id).addEventListener("change", updatePreviews);
  $input("variants").addEventListener("input", updatePreviews);
  $input("restore").addEventListener("change", () => ($input("restore-strength").disabled = !$input("restore").checked));
  $input("restore-strength").addEventListener("input", () => ($("restore-out").textContent = `${$input("restore-strength").value}%`));
  for (const r of ["relight", "retouch"]) {
    $input(r).addEventListener("input", () => ($(`${r}-out`).textContent = `${$input(r).value}%`));
  }
  $("style-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    if (!staged.length) return;
    const chosen = createSettings();
    if ("error" in chosen) {
      $("photo-errors").replaceChildren(h("p", {}, chosen.error));
      return;
    }
    const start = $("start") as HTMLButtonElement;
    start.disabled = true;
    try {
      await api.createJob(
        staged.map((p) => p.id),
        chosen,
      );
      staged = [];
      previews.clear();
      renderStaged();
      $("photo-errors").replaceChildren();
      announce("Job started");
      await refreshJobs();
      showTab("queue");
    } catch (e) {
      $("photo-errors").replaceChildren(h("p", {}, errorText(e)));
      start.disabled = staged.length === 0;
    }
  });
}

// ---- Queue ----
function jobTitle(j: JobView): string {
  const names = j.inputs.length ? j.inputs.join(", ") : "photo";
  const preset = typeof j.settings?.preset === "string" ? ` · ${info?.presets.find((p) => p.value === j.settings?.preset)?.label ?? j.settings.preset}` : "";
  return names + preset;
}

function renderJob(j: JobView): HTMLElement {
  const active = j.state === "queued" || j.state === "running";
  const actions = h("div", { class: "actions" });
  if (active) {
    actions.append(
      h("button", { type: "button", disabled: j.cancel_requested, onclick: () => void act(() => api.cancelJob(j.id), "Job cancelled"), "aria-label": `Cancel job ${jobTitle(j)}` }, j.cancel_requested ? "Cancelling…" : "Cancel"),
    );
  } else {
    actions.append(h("button", { type: "button", onclick: () => askDeleteJob(j), "aria-label": `Delete job ${jobTitle(j)}` }, "Delete"));
  }
  const stage = j.state === "running" ? stageLabel(j.stage, steps.get(j.id) ?? j.step) : "";
  const li = h(
    "li",
    { class: "job", "data-job": j.id, "data-state": j.state },
    h("div", { class: "title" }, jobTitle(j), h("span", { class: `state ${j.state}` }, stateLabel(j.state))),
    actions,
    h("div", { class: "muted", "data-role": "line" }, [stage, timeLine(j, nowSec())].filter(Boolean).join(" · ")),
  );
  if (active) {
    li.append(h("progress", { max: 100, value: percent(j.progress), "aria-label": `Progress of ${jobTitle(j)}`, "aria-valuetext": `${percent(j.progress)}%` }));
  }
  if (j.state === "failed") li.append(h("p", { class: "error" }, `${failureHint(j.error)} (${j.error ?? "unknown error"})`));
  return li;
}

/** Jobs made on the Create screen (a batch's jobs show on the Batch screen). */
const ownJobs = () => jobs.filter((j) => !j.group_id);

// When this view saw each job stop (performance.now()): its Delete replaces its Cancel in place.
const shownActive = new Set<string>();
const endedAt = new Map<string, number>();

let deletingJob: JobView | null = null;
function askDeleteJob(j: JobView) {
  if (!deleteArmed(endedAt.get(j.id), performance.now())) return;
  const question = jobDeleteQuestion(j.outputs.length);
  if (!question) return void act(() => api.deleteJob(j.id), "Job deleted");
  deletingJob = j;
  $("job-delete-body").textContent = question;
  $dialog("confirm-job-delete").showModal();
}

function setupJobDelete() {
  const d = $dialog("confirm-job-delete");
  $("job-delete-no").addEventListener("click", () => d.close());
  $("job-delete-yes").addEventListener("click", () => {
    const j = deletingJob;
    deletingJob = null;
    d.close();
    if (j) void act(() => api.deleteJob(j.id), "Job and its headshots deleted");
  });
  // Focus goes back to the job's Delete when it is kept, else to the list's first button.
  d.addEventListener("close", () => {
    const kept = deletingJob?.id;
    deletingJob = null;
    const back = kept ? $("jobs").querySelector(`[data-job="${CSS.escape(kept)}"] button`) : null;
    ((back ?? $("jobs").querySelector("[data-job] button") ?? $("tab-queue")) as HTMLElement).focus();
  });
}

function renderJobs() {
  const list = $("jobs");
  const focusedJob = (document.activeElement?.closest("[data-job]") as HTMLElement | null)?.dataset.job;
  const mine = ownJobs();
  const now = performance.now();
  for (const j of mine) {
    const active = j.state === "queued" || j.state === "running";
    if (active) shownActive.add(j.id);
    else if (shownActive.delete(j.id)) endedAt.set(j.id, now);
  }
  list.replaceChildren(...mine.map(renderJob));
  $("queue-empty").hidden = mine.length > 0;
  const active = mine.filter((j) => j.state === "queued" || j.state === "running").length;
  $("queue-count").textContent = active ? String(active) : "";
  if (focusedJob) (list.querySelector(`[data-job="${CSS.escape(focusedJob)}"] button`) as HTMLElement | null)?.focus();
  renderGallery();
}

async function act(f: () => Promise<unknown>, done: string) {
  try {
    await f();
    announce(done);
    banner(null);
  } catch (e) {
    banner(errorText(e));
  }
  await refreshJobs();
}

let refreshing: Promise<void> | null = null;
let refreshAgain = false;
async function refreshJobs(): Promise<void> {
  // One list call at a time; a request made meanwhile runs once more afterwards.
  if (refreshing) {
    refreshAgain = true;
    return refreshing;
  }
  refreshing = (async () => {
    do {
      refreshAgain = false;
      try {
        jobs = await api.listJobs();
        renderJobs();
      } catch (e) {
        banner(errorText(e));
      }
    } while (refreshAgain);
    refreshing = null;
  })();
  return refreshing;
}

function onJobEvent(e: JobEvent) {
  if (batchId) scheduleBatchRefresh();
  if (e.kind === "progress") {
    const j = jobs.find((x) => x.id === e.job);
    if (!j) return void refreshJobs();
    j.progress = e.fraction;
    j.stage = e.stage;
    if (e.step) steps.set(e.job, e.step);
    else steps.delete(e.job);
    j.state = "running";
    j.started_at ??= nowSec();
    const row = $("jobs").querySelector(`[data-job="${CSS.escape(e.job)}"]`);
    if (row) {
      const bar = row.querySelector("progress");
      if (bar) {
        bar.value = percent(e.fraction);
        bar.setAttribute("aria-valuetext", `${percent(e.fraction)}%`);
      }
      const line = row.querySelector('[data-role="line"]');
      if (line) line.textContent = [stageLabel(j.stage, steps.get(j.id)), timeLine(j, nowSec())].filter(Boolean).join(" · ");
      const state = row.querySelector(".state");
      if (state) state.textContent = stateLabel("running");
    } else renderJobs();
  } else if (e.kind === "finished") {
    steps.delete(e.job);
    void refreshJobs();
    if (e.state === "done") announce(`Headshot ready: see the Gallery`);
    else if (e.state === "failed") announce(`A job failed: ${failureHint(e.error)}`);
  } else if (e.kind === "worker_error") {
    banner(errorText({ code: e.code, message: e.message }));
  } else if (e.kind === "started") {
    void refreshJobs();
  }
}

// ---- Gallery ----
const selected = new Set<string>();

function renderGallery() {
  const list = $("outputs");
  const focused = (document.activeElement?.closest("[data-output]") as HTMLElement | null)?.dataset.output;
  const focusedAction = (document.activeElement as HTMLElement | null)?.dataset?.action;
  const entries: { j: JobView; o: OutputView; n: number }[] = [];
  for (const j of ownJobs()) j.outputs.forEach((o, n) => entries.push({ j, o, n }));
  const ordered = galleryOrder(entries.map((e) => ({ ...e, favourite: e.o.favourite })));
  const live = new Set(entries.map((e) => e.o.id));
  for (const id of [...selected]) if (!live.has(id)) selected.delete(id);
  const items = ordered.map(({ j, o, n: index }) => {
    const generative = j.settings?.look === "generative";
    const variants = generative && typeof j.settings?.variants === "number" ? j.settings.variants : 1;
    const { photo: n, variant } = outputPhoto(index, variants, Math.max(1, j.inputs.length));
    const before = h("img", { class: "before", src: img(`input/${j.id}/${n}`), alt: `Before: ${j.inputs[n] ?? "your photo"}` });
    const slider = h("input", { type: "range", min: 0, max: 100, value: 50, "aria-label": "Before and after: slide to compare" }) as HTMLInputElement;
    const setClip = () => (before.style.clipPath = `inset(0 ${100 - Number(slider.value)}% 0 0)`);
    slider.addEventListener("input", setClip);
    // Photos are kept only while a job needs them (and in memory for this session's jobs).
    before.addEventListener("error", () => (before.remove(), slider.remove()), { once: true });
    const msg = h("p", { class: "meta", role: "status" });
    const compare = h("div", { class: "compare" }, h("img", { class: "after", src: img(`output/${o.id}`), alt: `Headshot from ${j.inputs[n] ?? "your photo"}` }), before, slider);
    compare.style.aspectRatio = `${o.width} / ${o.height}`;
    const name = j.inputs[n] ?? "headshot";
    const check = h("input", { type: "checkbox", "data-action": "select", "aria-label": `Select ${name} for export`, onchange: (e: Event) => toggleSelected(o.id, (e.target as HTMLInputElement).checked) }) as HTMLInputElement;
    check.checked = selected.has(o.id);
    queueMicrotask(setClip);
    return h(
      "li",
      { class: `output${o.favourite ? " favourite" : ""}${variants > 1 ? " variant" : ""}`, "data-output": o.id, "data-job": j.id, "data-variant": variant },
      compare,
      variants > 1 ? h("p", { class: "meta variant-tag" }, `Variant ${variant} of ${variants}`) : null,
      h("p", { class: "meta" }, `${o.width}×${o.height} ${o.format.toUpperCase()} · ${formatBytes(o.size)}`),
      h("p", { class: "meta muted", "data-role": "expiry" }, daysLeftLabel(o.expires_at, nowSec()) + (o.favourite ? ", even as a favourite" : "")),
      h(
        "div",
        { class: "actions" },
        h(
          "button",
          { type: "button", class: "star", "data-action": "favourite", "aria-pressed": String(o.favourite), "aria-label": `Favourite: ${name}`, title: o.favourite ? "Remove from favourites" : "Add to favourites", onclick: () => void toggleFavourite(o.id, !o.favourite) },
          o.favourite ? "★" : "☆",
        ),
        h("button", { type: "button", class: "primary", "data-action": "export", onclick: () => void exportOne(o.id, msg) }, "Export…"),
        h("button", { type: "button", "data-action": "delete", onclick: () => void act(() => api.deleteOutput(o.id), "Headshot deleted") }, "Delete"),
        h("label", { class: "check inline" }, check, "Select"),
      ),
      msg,
    );
  });
  list.replaceChildren(...items);
  $("gallery-empty").hidden = items.length > 0;
  $("export-form").hidden = items.length === 0;
  $("gallery-count").textContent = items.length ? String(items.length) : "";
  updateSelection();
  if (focused) (list.querySelector(`[data-output="${CSS.escape(focused)}"] [data-action="${focusedAction ?? "favourite"}"]`) as HTMLElement | null)?.focus();
}

function toggleSelected(id: string, on: boolean) {
  if (on) selected.add(id);
  else selected.delete(id);
  updateSelection();
}

function updateSelection() {
  const n = selected.size;
  const b = $("export-selected") as HTMLButtonElement;
  b.disabled = n === 0;
  b.textContent = n ? `Export ${n} selected…` : "Export selected…";
}

async function toggleFavourite(id: string, on: boolean) {
  await act(() => api.setFavourite(id, on), on ? "Added to favourites" : "Removed from favourites");
}

/** The export options of the form, or what is wrong with them. */
function exportOptions(): ExportOptions | { error: string } {
  const size = exportSize($select("export-size").value, $input("export-custom").value);
  if ("error" in size) return size;
  const template = $input("export-template").value;
  const bad = templateError(template);
  if (bad) return { error: bad };
  return { format: $select("export-format").value, max_side: size.max_side, jpeg_quality: 92, template };
}

async function exportOne(id: string, msg: HTMLElement) {
  const options = exportOptions();
  if ("error" in options) {
    msg.textContent = options.error;
    return;
  }
  try {
    msg.textContent = exportMessage(await api.exportOutput(id, options));
  } catch (e) {
    msg.textContent = errorText(e);
  }
}

function setupGallery() {
  $select("export-size").addEventListener("change", () => ($("export-custom-box").hidden = $select("export-size").value !== "custom"));
  $("export-form").addEventListener("submit", (e) => e.preventDefault());
  $("select-all").addEventListener("click", () => {
    for (const j of ownJobs()) for (const o of j.outputs) selected.add(o.id);
    renderGallery();
  });
  $("export-selected").addEventListener("click", async () => {
    const msg = $("export-msg");
    const options = exportOptions();
    if ("error" in options) {
      msg.textContent = options.error;
      return;
    }
    try {
      msg.textContent = exportMessage(await api.exportOutputs([...selected], options));
    } catch (e) {
      msg.textContent = errorText(e);
    }
  });
}

// ---- Batch ----
const folders: { input: { token: string; name: string } | null; output: { token: string; name: string } | null } = { input: null, output: null };
let batchId: string | null = null;
let batchView: BatchView | null = null;
let batchTimer: number | null = null;

function updateBatchStart() {
  ($("batch-start") as HTMLButtonElement).disabled = !(folders.input && folders.output);
}

function scheduleBatchRefresh() {
  if (batchTimer !== null) return;
  batchTimer = window.setTimeout(() => {
    batchTimer = null;
    void refreshBatch();
  }, 250);
}

async function refreshBatch() {
  if (!batchId) return;
  try {
    renderBatch(await api.batchStatus(batchId));
  } catch (e) {
    $("batch-errors").replaceChildren(h("p", {}, errorText(e)));
  }
}

function renderBatch(v: BatchView) {
  batchView = v;
  $("batch-run").hidden = false;
  $("batch-run-title").textContent = `Batch: ${v.input_name} → ${v.output_name}`;
  const p = batchProgress(v.files, v.started_at, nowSec());
  const bar = $("batch-progress") as HTMLProgressElement;
  bar.value = percent(p.fraction);
  bar.setAttribute("aria-valuetext", `${percent(p.fraction)}%`);
  $("batch-line").textContent = v.report ? `${p.finished} of ${p.total} photos · finished` : batchLine(p);
  ($("batch-cancel") as HTMLButtonElement).disabled = v.report !== null;
  ($("batch-cancel") as HTMLElement).hidden = v.report !== null;
  $("batch-files").replaceChildren(
    ...v.files.map((f) => {
      const li = h(
        "li",
        { "data-file": f.name, "data-state": f.state },
        h("span", { class: "name", title: f.name }, f.name),
        h("span", { class: `state ${f.state}` }, batchStateLabel(f.state)),
      );
      if (f.state === "running") {
        li.append(h("progress", { max: 100, value: percent(f.progress), "aria-label": `Progress of ${f.name}`, "aria-valuetext": `${percent(f.progress)}%` }));
        if (f.stage) li.append(h("span", { class: "muted small" }, stageLabel(f.stage)));
      }
      if ((f.state === "failed" || f.state === "not-processed") && f.error) li.append(h("p", { class: f.state === "failed" ? "error" : "muted small" }, batchFailureText(f.error)));
      return li;
    }),
  );
  if (v.warning && !v.report) $("batch-errors").replaceChildren(h("p", {}, `A headshot could not be saved yet: ${v.warning}`));
  const summary = $("batch-summary");
  if (!v.report) {
    summary.replaceChildren();
    return;
  }
  const r = v.report;
  const parts = [`${r.done} made`];
  if (r.earlier) parts.push(`${r.earlier} done by an earlier run`);
  if (r.failed) parts.push(`${r.failed} failed`);
  if (r.cancelled) parts.push(`${r.cancelled} cancelled`);
  if (r.not_processed) parts.push(`${r.not_processed} not processed`);
  const lines: HTMLElement[] = [h("p", { class: "summary" }, `Finished: ${parts.join(", ")}.`)];
  if (r.report_csv) lines.push(h("p", { class: "muted" }, `The headshots and the report (${r.report_csv}, ${r.report_json}) are in ${v.output_name}.`));
  if (r.failures.length)
    lines.push(h("ul", { class: "failures", "aria-label": "What did not work" }, ...r.failures.map((f) => h("li", {}, h("strong", {}, f.file), `: ${batchFailureText(f.reason)}`))));
  summary.replaceChildren(...lines);
  if (batchId === v.id) announce(`Batch finished: ${parts.join(", ")}`);
}

function setupBatch() {
  for (const which of ["input", "output"] as const) {
    $(`batch-${which === "input" ? "in" : "out"}`).addEventListener("click", async () => {
      try {
        const f = await api.pickFolder(which);
        if (f) {
          folders[which] = f;
          const label = $(`batch-${which === "input" ? "in" : "out"}-name`);
          label.textContent = f.name;
          label.classList.remove("muted");
        }
        $("batch-errors").replaceChildren();
      } catch (e) {
        $("batch-errors").replaceChildren(h("p", {}, errorText(e)));
      }
      updateBatchStart();
    });
  }
  $("batch-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    if (!folders.input || !folders.output) return;
    const start = $("batch-start") as HTMLButtonElement;
    start.disabled = true;
    try {
      const v = await api.startBatch(folders.input.token, folders.output.token, $input("batch-recursive").checked, settings("batch-"), $input("batch-template").value);
      batchId = v.id;
      $("batch-errors").replaceChildren();
      renderBatch(v);
      announce("Batch started");
    } catch (err) {
      $("batch-errors").replaceChildren(h("p", {}, errorText(err)));
    }
    updateBatchStart();
  });
  $("batch-cancel").addEventListener("click", async () => {
    if (!batchId) return;
    try {
      renderBatch(await api.cancelBatch(batchId));
      announce("Batch cancelled");
    } catch (e) {
      $("batch-errors").replaceChildren(h("p", {}, errorText(e)));
    }
  });
}

// ---- Models ----
const MODEL_STATES: Record<string, string> = { ok: "OK", missing: "Missing", corrupt: "Damaged", "not-installed": "Not installed (optional)" };

async function refreshModels() {
  const msg = $("models-msg");
  msg.textContent = "Checking the models…";
  try {
    const models = await api.listModels();
    renderModels(models);
    // An optional model the user has not imported is not a problem.
    const bad = models.filter((m) => m.state !== "ok" && m.state !== "not-installed").length;
    const present = models.filter((m) => m.state === "ok").length;
    msg.textContent = bad ? `${bad} model${bad === 1 ? " needs" : "s need"} attention.` : `All ${present} installed models are present and intact.`;
  } catch (e) {
    msg.textContent = errorText(e);
  }
}

function renderModels(models: ModelView[]) {
  const importAllowed = info?.policy.model_import_allowed !== false;
  $("model-list").replaceChildren(
    ...models.map((m) => {
      const msg = h("p", { class: "meta", role: "status" });
      const kind = m.bundled ? " bundled" : m.state === "not-installed" ? " optional" : m.linked ? " imported (linked)" : " imported";
      return h(
        "li",
        { class: "model card", "data-model": m.id, "data-state": m.state },
        h("div", { class: "title" }, h("strong", {}, m.id), h("span", { class: `state ${m.state === "ok" ? "done" : m.state === "not-installed" ? "queued" : "failed"}` }, MODEL_STATES[m.state] ?? m.state), h("span", { class: "muted small" }, kind)),
        h("p", {}, m.purpose),
        h("p", { class: "muted small" }, `${m.description}${m.description ? " · " : ""}${formatBytes(m.bytes)}`),
        m.known === true ? h("p", { class: "muted small", "data-role": "sha" }, "Fingerprint (sha256) matches the official release.") : null,
        m.known === false ? h("p", { class: "warning", "data-role": "sha" }, "Warning: unknown file (its sha256 is not a known official release). Use it only if you trust where it came from.") : null,
        m.detail ? h("p", { class: m.state === "not-installed" ? "muted small" : "error" }, m.detail) : null,
        h(
          "p",
          { class: "row" },
          m.license ? h("span", {}, `License: ${m.license}`) : null,
          m.has_license_text ? h("button", { type: "button", "data-action": "license", onclick: () => void showLicense(m.id), "aria-label": `License text of ${m.id}` }, "License text") : null,
          m.state !== "not-installed" ? h("button", { type: "button", "data-action": "verify", onclick: () => void verifyModel(m.id, msg), "aria-label": `Verify ${m.id}` }, "Verify") : null,
          m.imported && m.state !== "not-installed"
            ? h("button", { type: "button", "data-action": "remove", disabled: !importAllowed, onclick: () => askRemove(m.id), "aria-label": `Remove ${m.id}` }, "Remove")
            : null,
        ),
        msg,
      );
    }),
  );
}

async function verifyModel(id: string, msg: HTMLElement) {
  msg.textContent = "Checking the fingerprint…";
  try {
    const m = await api.verifyModel(id);
    msg.textContent = m.state === "ok" ? "Verified: the files are intact." : `${MODEL_STATES[m.state] ?? m.state}: ${m.detail ?? ""}`;
  } catch (e) {
    msg.textContent = errorText(e);
  }
}

let removing: string | null = null;
function askRemove(id: string) {
  removing = id;
  $("remove-body").textContent = `“${id}” is removed from Likeness. Files you imported it from stay where they are. Jobs that use it will fail until it is imported again.`;
  $dialog("confirm-remove").showModal();
}

let importing = false;
function setImporting(on: boolean) {
  importing = on;
  const allowed = info?.policy.model_import_allowed !== false;
  for (const id of ["import-file", "import-folder"]) ($(id) as HTMLButtonElement).disabled = on || !allowed;
  $("import-run").hidden = !on;
}

function onImportEvent(e: ImportEvent) {
  if (e.kind !== "progress") return;
  const bar = $("import-progress") as HTMLProgressElement;
  const pct = e.total > 0 ? percent(e.done / e.total) : 0;
  bar.value = pct;
  bar.setAttribute("aria-valuetext", `${pct}%`);
  $("import-line").textContent = importLine(e.done, e.total, e.file);
}

async function importModel(kind: "file" | "folder") {
  if (importing) return;
  const msg = $("import-msg");
  setImporting(true);
  ($("import-progress") as HTMLProgressElement).value = 0;
  $("import-line").textContent = "Waiting for your choice…";
  msg.textContent = "";
  try {
    const v = await api.importModel(kind);
    if (v) {
      ($("import-progress") as HTMLProgressElement).value = 100;
      msg.textContent = [importMessage(v), ...v.warnings].join(" ");
      msg.dataset.done = v.id;
      await refreshModels();
      await loadCreateOptions();
    } else msg.textContent = "";
  } catch (e) {
    msg.textContent = isCancelled(e) ? "Import cancelled; nothing was imported." : errorText(e);
  }
  setImporting(false);
}

const isCancelled = (e: unknown) => typeof e === "object" && e !== null && (e as { code?: string }).code === "cancelled";

function setupModels() {
  $("import-file").addEventListener("click", () => void importModel("file"));
  $("import-folder").addEventListener("click", () => void importModel("folder"));
  $("import-cancel").addEventListener("click", () => void api.cancelImport());
  const d = $dialog("confirm-remove");
  $("remove-no").addEventListener("click", () => d.close());
  $("remove-yes").addEventListener("click", async () => {
    d.close();
    if (!removing) return;
    const id = removing;
    removing = null;
    try {
      await api.removeModel(id);
      $("models-msg").textContent = `Removed “${id}”.`;
    } catch (e) {
      $("models-msg").textContent = errorText(e);
    }
    await refreshModels();
    await loadCreateOptions();
  });
  const allowed = info?.policy.model_import_allowed !== false;
  $("import-managed").hidden = allowed;
  setImporting(false);
}

async function showLicense(id: string) {
  const d = $dialog("license");
  try {
    const l = await api.modelLicense(id);
    $("license-title").textContent = `${l.id}: ${l.license}`;
    $("license-text").textContent = l.text;
    d.showModal();
    $("license-text").focus();
  } catch (e) {
    $("models-msg").textContent = errorText(e);
  }
}

// ---- Preferences ----
/** Managed settings: a badge, the reason, and the control disabled where nothing is left to choose. */
function applyPolicy() {
  const p = info?.policy;
  if (!p) return;
  const bounds = p.retention_bounds.managed || p.retention_days.managed;
  $("retention-managed").hidden = !bounds;
  const input = $input("retention");
  if (bounds) {
    const fixed = p.retention_min_days === p.retention_max_days;
    $("retention-help").textContent = fixed
      ? `${managedHint(p.retention_bounds.source ?? p.retention_days.source)} Headshots are deleted after ${p.retention_max_days} days.`
      : `${managedHint(p.retention_bounds.source ?? p.retention_days.source)} Choose between ${p.retention_min_days} and ${p.retention_max_days} days. Exported files are never touched.`;
    input.disabled = fixed;
    (document.querySelector("#retention-form button[type=submit]") as HTMLButtonElement).disabled = fixed;
  }
  $("data-dir-managed").hidden = !p.data_dir.managed;
  $("models-managed").hidden = !p.models_dir.managed;
  // Formats the organisation does not allow stay visible, disabled, with the reason.
  $("export-format-managed").hidden = !p.export_formats_managed.managed;
  const allowed = (v: string) => v === "original" || p.export_formats.includes(v === "jpeg" ? "jpg" : v);
  for (const id of ["export-format", "format", "batch-format"]) {
    const sel = $select(id);
    for (const o of Array.from(sel.options)) {
      if (!allowed(o.value)) {
        o.disabled = true;
        if (!o.textContent?.endsWith("(blocked by your organisation)")) o.textContent = `${o.textContent} (blocked by your organisation)`;
      }
    }
    if (sel.selectedOptions[0]?.disabled) {
      const first = Array.from(sel.options).find((o) => !o.disabled);
      if (first) sel.value = first.value;
    }
  }
}

function renderDevice() {
  const d = info?.device;
  const gpu = $input("device-gpu");
  const cpu = $input("device-cpu");
  cpu.checked = d?.choice !== "gpu";
  gpu.checked = d?.choice === "gpu";
  gpu.disabled = !d?.gpu_available;
  $("device-reason").textContent = d?.gpu_available ? "Uses your graphics card: faster for large models." : (d?.gpu_reason ?? "No GPU can be used.");
}

function setupPrefs() {
  for (const r of ["device-cpu", "device-gpu"]) {
    $input(r).addEventListener("change", async () => {
      const choice = $input("device-gpu").checked ? "gpu" : "cpu";
      try {
        const d = await api.setDevice(choice);
        if (info) info.device = d;
        $("device-msg").textContent = d.active === d.choice ? `Saved: ${choice.toUpperCase()}.` : `Saved: ${choice.toUpperCase()} is used from the next start of Likeness.`;
      } catch (e) {
        $("device-msg").textContent = errorText(e);
        renderDevice();
  applyPolicy();
      }
    });
  }
  $("license-close").addEventListener("click", () => $dialog("license").close());
  $("retention-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const parsed = parseRetention($input("retention").value, info?.policy.retention_min_days ?? 1, info?.policy.retention_max_days ?? 3650);
    const msg = $("retention-msg");
    if ("error" in parsed) {
      msg.textContent = parsed.error;
      return;
    }
    try {
      const s = await api.setRetentionDays(parsed.days);
      msg.textContent = `Saved: deleted after ${s.retention_days} days.`;
      await refreshJobs();
    } catch (err) {
      msg.textContent = errorText(err);
    }
  });
  const confirm = $dialog("confirm-delete");
  $("delete-all").addEventListener("click", () => confirm.showModal());
  $("confirm-no").addEventListener("click", () => confirm.close());
  confirm.addEventListener("close", () => $("delete-all").focus());
  $("confirm-yes").addEventListener("click", async () => {
    confirm.close();
    try {
      await api.deleteAllData();
      staged = [];
      previews.clear();
      renderStaged();
      $("delete-msg").textContent = "All your photos, jobs and headshots were deleted.";
    } catch (e) {
      $("delete-msg").textContent = errorText(e);
    }
    await refreshJobs();
  });
}

// ---- start ----
async function start() {
  setupTabs();
  setupCreate();
  setupGallery();
  setupJobDelete();
  setupBatch();
  setupPrefs();
  // Keep elapsed / remaining times and days left current.
  setInterval(() => {
    if (jobs.some((j) => j.state === "running") && !$("queue").hidden) renderJobs();
    if (batchView && !batchView.report && !$("batch").hidden) void refreshBatch();
  }, 1000);
  await api.onJobEvent(onJobEvent);
  await api.onBatchEvent(() => void refreshBatch());
  await api.onImportEvent(onImportEvent);
  info = await api.appInfo();
  document.body.dataset.ready = "true";
  $("version").textContent = info.version;
  if (info.library_error) {
    $("fatal-body").textContent = errorText(info.library_error);
    $dialog("fatal").showModal();
    return;
  }
  for (const prefix of ["", "batch-"]) {
    fillSelect(`${prefix}preset`, info.presets);
    fillSelect(`${prefix}backdrop`, info.backdrops);
    fillSelect(`${prefix}format`, info.formats);
  }
  renderDevice();
  updateSwatch();
  setupModels();
  await loadCreateOptions();
  $input("retention").value = String(info.retention_days ?? 30);
  $("data-dir").textContent = info.data_dir ?? "";
  $("key-kind").textContent = info.key_kind === "passphrase" ? "key from your passphrase" : "key in the OS keyring";
  renderStaged();
  if (!info.privacy_acknowledged) {
    const d = $dialog("privacy");
    d.addEventListener("cancel", (e) => e.preventDefault()); // must be acknowledged
    $("privacy-ok").addEventListener("click", async () => {
      try {
        await api.acknowledgePrivacy();
        d.close();
        $("pick").focus();
      } catch (e) {
        banner(errorText(e));
      }
    });
    d.showModal();
  }
  await refreshJobs();
}

start().catch((e) => banner(errorText(e)));
