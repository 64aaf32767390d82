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
}

export interface JobView {
  id: string;
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
}

export interface StudioSettings {
  preset: string;
  backdrop: string;
  format: string;
  jpeg_quality: number;
  relight: number;
  retouch: number;
  max_size: number;
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
  | { kind: "progress"; job: string; stage: string; fraction: number }
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
  exportOutput: (id: string) => call<{ saved: boolean; file_name: string | null }>("export_output", { id }),
  setRetentionDays: (days: number) => call<{ retention_days: number }>("set_retention_days", { days }),
  deleteAllData: () => call<void>("delete_all_data"),
  onJobEvent: (handler: (e: JobEvent) => void) => window.__TAURI__.event.listen<JobEvent>("job-event", (e) => handler(e.payload)),
};
