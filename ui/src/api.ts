// Typed wrappers over the app's commands (window.__TAURI__, injected by Tauri: no bundler, no
// network). The page passes ids, never paths.

import type { IpcError } from "./logic.js";

interface TauriGlobal {
  core: {
    invoke<T>(cmd: string, args?: unknown, options?: { headers?: Record<string, string> }): Promise<T>;
  };
  event: {
    listen<T>(event: string, handler: (e: { payload: T }) => void): Promise<() => void>;
  };
}

declare global {
  interface Window {
    __TAURI__: TauriGlobal;
  }
}

export interface Choice {
  value: string;
  label: string;
}

export interface AppInfo {
  version: string;
  library_error: IpcError | null;
  privacy_acknowledged: boolean;
  retention_days: number | null;
  key_kind: string | null;
  data_dir: string | null;
  presets: Choice[];
  backdrops: Choice[];
  formats: Choice[];
  max_photos: number;
  max_photo_bytes: number;
  device: DeviceInfo | null;
  policy: PolicyView;
}

export interface ManagedView {
  managed: boolean;
  source: string | null;
}

export interface PolicyView {
  retention_days: ManagedView;
  retention_min_days: number;
  retention_max_days: number;
  retention_bounds: ManagedView;
  export_formats: string[];
  export_formats_managed: ManagedView;
  looks: string[];
  data_dir: ManagedView;
  models_dir: ManagedView;
  model_import_allowed: boolean;
  model_import: ManagedView;
  refused: string | null;
}

export interface DeviceInfo {
  choice: string;
  gpu_available: boolean;
  gpu_reason: string | null;
  active: string;
}

export interface ExportOptions {
  format: string;
  max_side: number | null;
  jpeg_quality: number;
  template: string;
}

export interface ExportResult {
  saved: boolean;
  files: string[];
}

export interface FolderToken {
  token: string;
  name: string;
}

export interface BatchFileView {
  name: string;
  state: string;
  progress: number;
  stage: string | null;
  error: string | null;
  started_at: number | null;
  finished_at: number | null;
}

export interface BatchReport {
  done: number;
  earlier: number;
  failed: number;
  cancelled: number;
  not_processed: number;
  failures: { file: string; reason: string }[];
  report_csv: string;
  report_json: string;
}

export interface BatchView {
  id: string;
  input_name: string;
  output_name: string;
  started_at: number;
  total: number;
  finished: number;
  files: BatchFileView[];
  warning: string | null;
  report: BatchReport | null;
}

export interface ModelView {
  id: string;
  task: string;
  purpose: string;
  description: string;
  bundled: boolean;
  state: "ok" | "missing" | "corrupt" | "not-installed";
  detail: string | null;
  license: string;
  has_license_text: boolean;
  bytes: number;
  imported: boolean;
  arch: string | null;
  known: boolean | null;
  linked: boolean;
}

export interface QualityChoice {
  value: string;
  label: string;
  steps: number;
  turbo_steps: number;
  resolution: number;
}

export interface DiffusionChoice {
  id: string;
  arch: string;
  unusable: string | null;
}

export interface CreateOptions {
  choices: { attires: Choice[]; lightings: Choice[]; backdrops: Choice[]; qualities: QualityChoice[]; max_variants: number };
  models: DiffusionChoice[];
  generative_available: boolean;
  generative_reason: string | null;
  restore_available: boolean;
  upscale_available: boolean;
}

export interface ImportView {
  id: string;
  arch: string | null;
  official: string;
  known: boolean;
  files: number;
  bytes: number;
  already_imported: boolean;
  warnings: string[];
}

export type ImportEvent =
  | { kind: "progress"; done: number; total: number; file: string }
  | { kind: "finished"; id: string }
  | { kind: "failed"; code: string; message: string };

export interface StepInfo {
  step: number;
  steps: number;
  variant: number;
  variants: number;
}

export interface StagedPhoto {
  id: string;
  name: string;
  size: number;
}

export interface OutputView {
  id: string;
  format: string;
  width: number;
  height: number;
  size: number;
  created_at: number;
  expires_at: number;
  favourite: boolean;
}

export interface JobView {
  id: string;
  group_id: string | null;
  state: "queued" | "running" | "done" | "failed" | "cancelled";
  stage: string | null;
  progress: number;
  error: string | null;
  created_at: number;
  started_at: number | null;
  finished_at: number | null;
  cancel_requested: boolean;
  inputs: string[];
  settings: Record<string, unknown> | null;
  outputs: OutputView[];
  /** A running generative job's denoising step (also after the page is reloaded). */
  step: StepInfo | null;
}

export interface StudioSettings {
  preset: string;
  backdrop: string;
  format: string;
  jpeg_quality: number;
  relight: number;
  retouch: number;
  max_size: number;
  look?: string;
  model?: string | null;
  attire?: string;
  lighting?: string;
  gen_quality?: string;
  variants?: number;
  seed?: number;
  restore?: number | null;
  size?: number | null;
}

export interface Preview {
  width: number;
  height: number;
  faces: { x: number; y: number; w: number; h: number; score: number }[];
  crop: [number, number][] | null;
  notes: string[];
}

export type JobEvent =
  | { kind: "started"; job: string; attempt: number }
  | { kind: "progress"; job: string; stage: string; fraction: number; step: StepInfo | null }
  | { kind: "finished"; job: string; state: string; error: string | null; outputs: string[] }
  | { kind: "warning"; job: string; message: string }
  | { kind: "worker_error"; code: string; message: string };

const call = <T>(cmd: string, args?: unknown, options?: { headers?: Record<string, string> }) =>
  window.__TAURI__.core.invoke<T>(cmd, args, options);

export const api = {
  appInfo: () => call<AppInfo>("app_info"),
  acknowledgePrivacy: () => call<void>("acknowledge_privacy"),
  pickPhotos: () => call<StagedPhoto[]>("pick_photos"),
  stagePhoto: (name: string, bytes: Uint8Array) =>
    call<StagedPhoto>("stage_photo", bytes, { headers: { "x-photo-name": encodeURIComponent(name) } }),
  unstagePhoto: (id: string) => call<void>("unstage_photo", { id }),
  previewPhoto: (id: string, preset: string) => call<Preview>("preview_photo", { id, preset }),
  createJob: (photos: string[], settings: StudioSettings) => call<string>("create_job", { photos, settings }),
  listJobs: () => call<JobView[]>("list_jobs"),
  cancelJob: (id: string) => call<string>("cancel_job", { id }),
  deleteJob: (id: string) => call<void>("delete_job", { id }),
  deleteOutput: (id: string) => call<void>("delete_output", { id }),
  exportOutput: (id: string, options: ExportOptions) => call<ExportResult>("export_output", { id, options }),
  exportOutputs: (ids: string[], options: ExportOptions) => call<ExportResult>("export_outputs", { ids, options }),
  setFavourite: (id: string, favourite: boolean) => call<void>("set_favourite", { id, favourite }),
  pickFolder: (purpose: "input" | "output") => call<FolderToken | null>("pick_folder", { purpose }),
  startBatch: (input: string, output: string, recursive: boolean, settings: StudioSettings, template: string) =>
    call<BatchView>("start_batch", { input, output, recursive, settings, template }),
  batchStatus: (id: string) => call<BatchView>("batch_status", { id }),
  cancelBatch: (id: string) => call<BatchView>("cancel_batch", { id }),
  listModels: () => call<ModelView[]>("list_models"),
  modelLicense: (id: string) => call<{ id: string; license: string; text: string }>("model_license", { id }),
  setDevice: (device: string) => call<DeviceInfo>("set_device", { device }),
  createOptions: () => call<CreateOptions>("create_options"),
  importModel: (kind: "file" | "folder") => call<ImportView | null>("import_model", { kind }),
  cancelImport: () => call<boolean>("cancel_import"),
  removeModel: (id: string) => call<void>("remove_model", { id }),
  verifyModel: (id: string) => call<ModelView>("verify_model", { id }),
  onImportEvent: (handler: (e: ImportEvent) => void) => window.__TAURI__.event.listen<ImportEvent>("import-event", (e) => handler(e.payload)),
  onBatchEvent: (handler: (e: { kind: string; batch: string }) => void) =>
    window.__TAURI__.event.listen<{ kind: string; batch: string }>("batch-event", (e) => handler(e.payload)),
  setRetentionDays: (days: number) => call<{ retention_days: number }>("set_retention_days", { days }),
  deleteAllData: () => call<void>("delete_all_data"),
  onJobEvent: (handler: (e: JobEvent) => void) => window.__TAURI__.event.listen<JobEvent>("job-event", (e) => handler(e.payload)),
};
