// The console's only way out: the public query API (/v1/...), on the origin that served the
// page. The token, when the service asks for one, lives in this tab's sessionStorage: never
// in the URL, never in localStorage.

const TOKEN_KEY = "sightline.token";

/** A failed call, as the API describes it (`{"error": {"code", "message"}}`). */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly parameter?: string,
  ) {
    super(message);
  }

  /** The service could not be reached at all (down, or the network). */
  get unreachable(): boolean {
    return this.status === 0;
  }
}

export const token = {
  get: (): string | null => sessionStorage.getItem(TOKEN_KEY),
  set: (value: string) => {
    forgetPictures();
    sessionStorage.setItem(TOKEN_KEY, value);
  },
  clear: () => {
    forgetPictures();
    sessionStorage.removeItem(TOKEN_KEY);
  },
};

type Listener = () => void;
const unauthorizedListeners = new Set<Listener>();

/** Calls `listener` whenever the API answers 401; returns the unsubscribe. */
export function onUnauthorized(listener: Listener): () => void {
  unauthorizedListeners.add(listener);
  return () => unauthorizedListeners.delete(listener);
}

async function send(path: string, init: RequestInit = {}, bearer = token.get()): Promise<Response> {
  const headers = new Headers(init.headers);
  if (bearer) headers.set("Authorization", `Bearer ${bearer}`);
  let response: Response;
  try {
    response = await fetch(path, { ...init, headers });
  } catch {
    throw new ApiError(0, "unreachable", "The query service cannot be reached.");
  }
  if (response.ok) return response;
  let code = "http_" + response.status;
  let message = `The query service answered ${response.status} ${response.statusText}.`;
  let parameter: string | undefined;
  try {
    const body = await response.json();
    if (body?.error?.message) {
      code = String(body.error.code);
      message = String(body.error.message);
      parameter = body.error.parameter;
    }
  } catch {
    // Not the API's JSON error (a proxy's page, say): keep the status line.
  }
  // A 401 to a candidate being checked is the prompt's to say, not a new prompt.
  if (response.status === 401 && bearer === token.get()) unauthorizedListeners.forEach((listener) => listener());
  throw new ApiError(response.status, code, message, parameter);
}

/** `GET path` (or another method) as JSON. */
export async function getJson<T>(path: string, init?: RequestInit): Promise<T> {
  const response = await send(path, init);
  return (await response.json()) as T;
}

/**
 * Checks `candidate` against the service without keeping it: `ok`, `refused` (not a token
 * of this service) or `no-read` (a token whose client lacks the read scope).
 */
export async function checkToken(candidate: string): Promise<"ok" | "refused" | "no-read"> {
  try {
    await send("/v1/edges?status=offline", {}, candidate);
    return "ok";
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) return "refused";
    if (e instanceof ApiError && e.status === 403) return "no-read";
    throw e;
  }
}

/** Downloads `path` (with the token) as a file named `filename`. */
export async function download(path: string, filename: string): Promise<void> {
  const blob = await (await send(path)).blob();
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = filename;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

// Pictures: an <img src> cannot carry the token, so they are fetched and shown from blob
// URLs, the most recent kept up to PICTURE_BYTES in all (older ones are revoked), and all of
// them forgotten when the token changes (they were fetched with the old one).
const PICTURE_BYTES = 64 * 1024 * 1024;
interface Kept {
  url: Promise<string | null>;
  bytes: number;
}
const pictures = new Map<string, Kept>();
let pictureBytes = 0;

function release(path: string) {
  const kept = pictures.get(path);
  if (!kept) return;
  pictures.delete(path);
  pictureBytes -= kept.bytes;
  kept.url.then((u) => u && URL.revokeObjectURL(u)).catch(() => {});
}

function forgetPictures() {
  [...pictures.keys()].forEach(release);
}

/** A blob URL of the picture at `path`, or null when the cloud has none (404). */
export function picture(path: string): Promise<string | null> {
  const known = pictures.get(path);
  if (known) {
    pictures.delete(path);
    pictures.set(path, known);
    return known.url;
  }
  const kept: Kept = { url: Promise.resolve(null), bytes: 0 };
  kept.url = send(path)
    .then(async (response) => {
      const blob = await response.blob();
      if (pictures.get(path) !== kept) {
        // Forgotten while it loaded (a new token): shown once, then let go.
        const url = URL.createObjectURL(blob);
        setTimeout(() => URL.revokeObjectURL(url), 60_000);
        return url;
      }
      kept.bytes = blob.size;
      pictureBytes += blob.size;
      // Oldest first out, never the one just fetched.
      for (const oldest of pictures.keys()) {
        if (pictureBytes <= PICTURE_BYTES || oldest === path) break;
        release(oldest);
      }
      return URL.createObjectURL(blob);
    })
    .catch((e) => {
      if (pictures.get(path) === kept) pictures.delete(path);
      if (e instanceof ApiError && e.status === 404) return null;
      throw e;
    });
  pictures.set(path, kept);
  return kept.url;
}

// The API's shapes, as far as the console reads them (openapi.json has them whole).

export interface BoundingBox {
  x_min: number;
  y_min: number;
  x_max: number;
  y_max: number;
}

export interface Detection {
  label: string;
  class_id: number;
  confidence: number;
  bbox: BoundingBox;
  track_id: number | null;
  zones?: string[];
}

export interface ApiEvent {
  event_id: string;
  edge_id: string;
  camera_id: string;
  captured_at: string;
  frame_seq: number;
  motion_score: number;
  detections: Detection[];
  model: { name: string; version: string };
  inference_ms: number;
  snapshot: string | null;
  description: string | null;
  attributes: Record<string, string>;
  snapshot_url?: string;
}

export interface EventPage {
  count: number;
  events: ApiEvent[];
  next_cursor: string | null;
}

export interface EventDetail extends ApiEvent {
  tracks: { id: string; label: string; href: string }[];
}

export interface Track {
  id: string;
  edge_id: string;
  camera_id: string;
  track_id: number;
  label: string;
  started_at: string;
  last_seen_at: string;
  duration_secs: number;
  ended_by: string | null;
  frames: number;
  max_confidence: number;
  path: { at: string; x: number; y: number }[];
  zones: { zone: string; entered_at: string; exited_at: string | null }[];
}

export interface Camera {
  camera_id: string;
  edges: string[];
  first_seen: string;
  last_seen: string;
  events: number;
}

export interface EdgeCamera {
  camera_id: string;
  state: string;
  fps: number;
  events_created: number;
  errors: number;
}

export interface Edge {
  edge_id: string;
  status: "online" | "offline";
  last_heartbeat_at: string;
  seconds_since_heartbeat: number;
  interval_secs: number;
  agent_version: string;
  uptime_secs: number;
  backlog: { events: number; oldest_unsent_at: string | null; oldest_unsent_age_secs: number | null };
  storage: {
    used_bytes: number;
    limit_bytes: number;
    free_bytes: number | null;
    used_percent: number | null;
  };
  clock_offset_ms: number | null;
  cpu_percent: number;
  rss_bytes: number;
  uploads: { pending: number; sent: number; dropped: number; errors: number; bytes: number };
  cameras: EdgeCamera[];
}

export interface Bucket {
  start: string;
  camera_id?: string;
  label?: string;
  zone?: string;
  detections?: number;
  objects?: number;
  dwell_p50_secs?: number;
  dwell_p95_secs?: number;
  max_confidence: number;
}

export interface Stats {
  measure: string;
  interval: string;
  group_by: string;
  since: string;
  until: string;
  source: string;
  buckets: Bucket[];
}
