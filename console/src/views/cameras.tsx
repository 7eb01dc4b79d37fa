// The cameras strip at the top of the events view: every camera seen in the last day, newest
// activity first, each with its latest picture in the cloud, so the first screen shows what
// each camera saw. A camera's picture is asked for only once its tile scrolls into view.
import { useEffect, useRef, useState } from "preact/hooks";
import { type Camera, type EventPage, getJson } from "../api";
import { Picture, THUMBNAIL_WIDTH } from "../common";
import { duration } from "../format";
import { href } from "../route";

const DAY_MS = 86_400_000;

export function CamerasStrip({ cameras, selected }: { cameras: Camera[]; selected?: string }) {
  if (cameras.length === 0) return null;
  const recent = [...cameras].sort((a, b) => Date.parse(b.last_seen) - Date.parse(a.last_seen));
  return (
    <section class="cameras-strip" aria-labelledby="cameras-title">
      <h2 id="cameras-title">Cameras, last 24 hours</h2>
      <ul>
        {recent.map((camera) => (
          <CameraTile key={camera.camera_id} camera={camera} selected={camera.camera_id === selected} />
        ))}
      </ul>
    </section>
  );
}

function CameraTile({ camera, selected }: { camera: Camera; selected: boolean }) {
  const tile = useRef<HTMLLIElement>(null);
  const [latestUrl, setLatest] = useState<string | null | undefined>(undefined);
  useEffect(() => {
    if (!tile.current) return;
    const observer = new IntersectionObserver((entries) => {
      if (!entries.some((e) => e.isIntersecting)) return;
      observer.disconnect();
      latestPicture(camera.camera_id).then(setLatest, () => setLatest(null));
    });
    observer.observe(tile.current);
    return () => observer.disconnect();
  }, [camera.camera_id]);
  const ago = (Date.now() - Date.parse(camera.last_seen)) / 1000;
  return (
    <li ref={tile} class={selected ? "selected" : undefined} data-camera-id={camera.camera_id}>
      <a href={href("/events", { camera: camera.camera_id })} aria-current={selected ? "true" : undefined}>
        <Picture
          path={latestUrl ? `${latestUrl}?max_width=${THUMBNAIL_WIDTH}` : undefined}
          alt={`The latest picture from ${camera.camera_id}`}
          class="thumbnail"
          empty={latestUrl === undefined ? "" : "No picture in the cloud today"}
        />
        <span class="card-text">
          <span class="card-title">{camera.camera_id}</span>
          <span class="muted">
            {camera.events.toLocaleString()} events, last {duration(Math.max(0, ago))} ago
          </span>
        </span>
      </a>
    </li>
  );
}

// Each camera's latest picture, asked for at most once a minute however often the view is
// shown, and only within the day the strip covers (never a scan of a camera's history).
const latest = new Map<string, { at: number; url: Promise<string | null> }>();
const LATEST_MS = 60_000;

function latestPicture(camera: string): Promise<string | null> {
  const known = latest.get(camera);
  if (known && Date.now() - known.at < LATEST_MS) return known.url;
  const query = new URLSearchParams({ camera, in_cloud: "true", since: dayAgo(), limit: "1" });
  const url = getJson<EventPage>(`/v1/events?${query}`).then((page) => page.events[0]?.snapshot_url ?? null);
  latest.set(camera, { at: Date.now(), url });
  url.catch(() => latest.delete(camera));
  return url;
}

/** A day ago, to the minute (so that requests within a minute are the same). */
function dayAgo(): string {
  return new Date(Math.floor((Date.now() - DAY_MS) / 60_000) * 60_000).toISOString();
}

/** Cameras seen in the last day (for the strip and the filter's suggestions). */
export function useCameras(): Camera[] {
  const [cameras, setCameras] = useState<Camera[]>([]);
  useEffect(() => {
    getJson<{ cameras: Camera[] }>(`/v1/cameras?since=${encodeURIComponent(dayAgo())}`).then(
      (answer) => setCameras(answer.cameras),
      // The strip and the suggestions are extras: the list says what is wrong, if anything.
      () => {},
    );
  }, []);
  return cameras;
}
