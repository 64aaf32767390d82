// The Likeness page: Create, Queue, Gallery and Preferences over the app's commands.
// Everything shown is built with DOM calls (no HTML strings), so file names can't inject markup.

import { api, type AppInfo, type JobEvent, type JobView, type Preview, type StagedPhoto, type StudioSettings } from "./api.js";
import {
  daysLeftLabel,
  errorText,
  failureHint,
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

function announce(text: string) {
  $("status").textContent = text;
}
function banner(text: string | null) {
  const b = $("banner");
  b.hidden = !text;
  b.textContent = text ?? "";
}

// ---- tabs (arrow keys move between them, as in the WAI-ARIA tabs pattern) ----
const TABS = ["create", "queue", "gallery", "prefs"];
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
function settings(): StudioSettings {
  return {
    preset: $select("preset").value,
    backdrop: $select("backdrop").value,
    format: $select("format").value,
    jpeg_quality: 92,
    relight: Number($input("relight").value) / 100,
    retouch: Number($input("retouch").value) / 100,
    max_size: 2048,
  };
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
  for (const r of ["relight", "retouch"]) {
    $input(r).addEventListener("input", () => ($(`${r}-out`).textContent = `${$input(r).value}%`));
  }
  $("style-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    if (!staged.length) return;
    const start = $("start") as HTMLButtonElement;
    start.disabled = true;
    try {
      await api.createJob(
        staged.map((p) => p.id),
        settings(),
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
    actions.append(h("button", { type: "button", onclick: () => void act(() => api.deleteJob(j.id), "Job deleted"), "aria-label": `Delete job ${jobTitle(j)}` }, "Delete"));
  }
  const stage = j.state === "running" ? stageLabel(j.stage) : "";
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

function renderJobs() {
  const list = $("jobs");
  const focusedJob = (document.activeElement?.closest("[data-job]") as HTMLElement | null)?.dataset.job;
  list.replaceChildren(...jobs.map(renderJob));
  $("queue-empty").hidden = jobs.length > 0;
  const active = jobs.filter((j) => j.state === "queued" || j.state === "running").length;
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
  if (e.kind === "progress") {
    const j = jobs.find((x) => x.id === e.job);
    if (!j) return void refreshJobs();
    j.progress = e.fraction;
    j.stage = e.stage;
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
      if (line) line.textContent = [stageLabel(j.stage), timeLine(j, nowSec())].filter(Boolean).join(" · ");
      const state = row.querySelector(".state");
      if (state) state.textContent = stateLabel("running");
    } else renderJobs();
  } else if (e.kind === "finished") {
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
function renderGallery() {
  const list = $("outputs");
  const items: HTMLElement[] = [];
  for (const j of jobs) {
    j.outputs.forEach((o, n) => {
      const before = h("img", { class: "before", src: img(`input/${j.id}/${n}`), alt: `Before: ${j.inputs[n] ?? "your photo"}` });
      const slider = h("input", { type: "range", min: 0, max: 100, value: 50, "aria-label": "Before and after: slide to compare" }) as HTMLInputElement;
      const setClip = () => (before.style.clipPath = `inset(0 ${100 - Number(slider.value)}% 0 0)`);
      slider.addEventListener("input", setClip);
      // Photos are kept only while a job needs them (and in memory for this session's jobs).
      before.addEventListener("error", () => (before.remove(), slider.remove()), { once: true });
      const msg = h("p", { class: "meta", role: "status" });
      const compare = h("div", { class: "compare" }, h("img", { class: "after", src: img(`output/${o.id}`), alt: `Headshot from ${j.inputs[n] ?? "your photo"}` }), before, slider);
      compare.style.aspectRatio = `${o.width} / ${o.height}`;
      items.push(
        h(
          "li",
          { class: "output", "data-output": o.id },
          compare,
          h("p", { class: "meta" }, `${o.width}×${o.height} ${o.format.toUpperCase()} · ${formatBytes(o.size)}`),
          h("p", { class: "meta muted", "data-role": "expiry" }, daysLeftLabel(o.expires_at, nowSec())),
          h(
            "div",
            { class: "actions" },
            h("button", { type: "button", class: "primary", "data-action": "export", onclick: () => void exportOutput(o.id, msg) }, "Export…"),
            h("button", { type: "button", "data-action": "delete", onclick: () => void act(() => api.deleteOutput(o.id), "Headshot deleted") }, "Delete"),
          ),
          msg,
        ),
      );
      queueMicrotask(setClip);
    });
  }
  list.replaceChildren(...items);
  $("gallery-empty").hidden = items.length > 0;
  $("gallery-count").textContent = items.length ? String(items.length) : "";
}

async function exportOutput(id: string, msg: HTMLElement) {
  try {
    const r = await api.exportOutput(id);
    msg.textContent = r.saved ? `Saved as ${r.file_name ?? "a file"}. Exported files are yours to keep.` : "Not exported.";
  } catch (e) {
    msg.textContent = errorText(e);
  }
}

// ---- Preferences ----
function setupPrefs() {
  $("retention-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const parsed = parseRetention($input("retention").value);
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
  setupPrefs();
  // Keep elapsed / remaining times and days left current.
  setInterval(() => {
    if (jobs.some((j) => j.state === "running") && !$("queue").hidden) renderJobs();
  }, 1000);
  await api.onJobEvent(onJobEvent);
  info = await api.appInfo();
  document.body.dataset.ready = "true";
  $("version").textContent = info.version;
  if (info.library_error) {
    $("fatal-body").textContent = errorText(info.library_error);
    $dialog("fatal").showModal();
    return;
  }
  fillSelect("preset", info.presets);
  fillSelect("backdrop", info.backdrops);
  fillSelect("format", info.formats);
  updateSwatch();
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
