// One event: its picture with the detection boxes drawn over it, each detection's label and
// score, the tracks it belongs to (start, end, duration, path), and the range around it to
// look at, export or replay.
import { useEffect, useState } from "preact/hooks";
import { ApiError, type EventDetail, type Track, download, getJson } from "../api";
import { Loading, Picture, Problem, useLoad } from "../common";
import { duration, percent, when } from "../format";
import { href } from "../route";

/** The range around an event that its links look at: five minutes either side. */
const AROUND_MS = 5 * 60_000;

/** Box colours, one per detection in turn; readable over pictures and in both themes. */
const COLOURS = ["#ffd60a", "#00e5ff", "#ff4d9d", "#7dff6a", "#ff8c1a", "#b388ff"];

export function EventView({ id }: { id: string }) {
  const event = useLoad(() => getJson<EventDetail>(`/v1/events/${encodeURIComponent(id)}`), [id]);
  // A track answers 404 until its edge sent its first record: then it is not shown. Any
  // other failure is said.
  const tracks = useLoad(
    () =>
      event.value
        ? Promise.all(
            event.value.tracks.map((t) =>
              getJson<Track>(t.href).catch((e) => {
                if (e instanceof ApiError && e.status === 404) return null;
                throw e;
              }),
            ),
          )
        : Promise.resolve([] as (Track | null)[]),
    [event.value?.event_id, event.value?.tracks.length],
  );
  const [pictureShown, setPictureShown] = useState(false);
  useEffect(() => setPictureShown(false), [id]);
  if (event.loading && !event.value) return <Loading what="the event" />;
  if (event.error || !event.value) {
    // Not an id (400) or no such event (404): both are "not found" to a person.
    const notYet = event.error instanceof ApiError && (event.error.status === 404 || event.error.status === 400);
    return (
      <section>
        <h1>Event</h1>
        <Problem
          error={notYet ? new Error("No event has this id (an event just listed can take a moment to be found).") : event.error}
          retry={event.retry}
        />
        <p>
          <a href={href("/events")}>Back to events</a>
        </p>
      </section>
    );
  }
  const e = event.value;
  const at = Date.parse(e.captured_at);
  const around = {
    camera: e.camera_id,
    since: new Date(at - AROUND_MS).toISOString(),
    until: new Date(at + AROUND_MS).toISOString(),
  };
  const known = (tracks.value ?? []).filter((t): t is Track => t !== null);
  return (
    <section aria-labelledby="event-title">
      <p>
        <a href={href("/events")}>← Events</a>
      </p>
      <h1 id="event-title">
        {e.detections.map((d) => d.label).filter((l, i, all) => all.indexOf(l) === i).join(", ") || "No detections"}{" "}
        <span class="muted">at {e.camera_id}</span>
      </h1>
      <div class="event-layout">
        <figure class="event-picture">
          <div class="overlay-holder">
            <Picture
              path={e.snapshot_url}
              lazy={false}
              alt={`What camera ${e.camera_id} saw at ${when(e.captured_at)}`}
              class="full"
              onLoad={() => setPictureShown(true)}
            />
            {pictureShown && (
              <div class="overlay" aria-hidden="true">
                {known.map((t) => (
                  <svg key={t.id} class="path" viewBox="0 0 1 1" preserveAspectRatio="none">
                    <polyline points={t.path.map((p) => `${p.x},${p.y}`).join(" ")} />
                  </svg>
                ))}
                {e.detections.map((d, i) => (
                  <div
                    key={i}
                    class="box"
                    data-label={d.label}
                    style={{
                      left: `${d.bbox.x_min * 100}%`,
                      top: `${d.bbox.y_min * 100}%`,
                      width: `${(d.bbox.x_max - d.bbox.x_min) * 100}%`,
                      height: `${(d.bbox.y_max - d.bbox.y_min) * 100}%`,
                      borderColor: COLOURS[i % COLOURS.length],
                    }}
                  >
                    <span style={{ background: COLOURS[i % COLOURS.length] }}>
                      {d.label} {percent(d.confidence)}
                    </span>
                  </div>
                ))}
              </div>
            )}
          </div>
          <figcaption>
            {e.snapshot_url
              ? "Boxes show each detection; lines show the tracks' paths."
              : e.snapshot
                ? "The edge took a picture of this event; it is not in the cloud (the edge's upload rules did not send it, or it has not arrived yet)."
                : "The edge took no picture of this event."}
          </figcaption>
        </figure>
        <div class="event-facts">
          <dl>
            <dt>Captured</dt>
            <dd>
              <time dateTime={e.captured_at}>{when(e.captured_at)}</time>
            </dd>
            <dt>Camera</dt>
            <dd>{e.camera_id}</dd>
            <dt>Edge</dt>
            <dd>{e.edge_id}</dd>
            <dt>Model</dt>
            <dd>
              {e.model.name} {e.model.version} ({e.inference_ms.toFixed(1)} ms)
            </dd>
            <dt>Event id</dt>
            <dd class="mono">{e.event_id}</dd>
          </dl>
          <table class="detections">
            <caption>Detections</caption>
            <thead>
              <tr>
                <th scope="col">Label</th>
                <th scope="col">Score</th>
                <th scope="col">Zones</th>
                <th scope="col">Track</th>
              </tr>
            </thead>
            <tbody>
              {e.detections.map((d, i) => (
                <tr key={i}>
                  <td>
                    <span class="swatch" style={{ background: COLOURS[i % COLOURS.length] }} aria-hidden="true" />
                    {d.label}
                  </td>
                  <td>{percent(d.confidence)}</td>
                  <td>{d.zones?.length ? d.zones.join(", ") : "–"}</td>
                  <td>{d.track_id ?? "–"}</td>
                </tr>
              ))}
            </tbody>
          </table>
          {known.map((t) => (
            <TrackFacts key={t.id} track={t} />
          ))}
          {tracks.error !== undefined && <Problem error={tracks.error} retry={tracks.retry} />}
          <h2>Around this event</h2>
          <ul class="actions">
            <li>
              <a href={href("/events", around)}>Events at {e.camera_id} five minutes either side</a>
            </li>
            <li>
              <ExportButton around={around} />
            </li>
            <li>
              <ReplayForm around={around} />
            </li>
          </ul>
        </div>
      </div>
    </section>
  );
}

function TrackFacts({ track }: { track: Track }) {
  return (
    <div class="track">
      <h2>
        Track {track.id} <span class="muted">({track.label})</span>
      </h2>
      <dl>
        <dt>Started</dt>
        <dd>{when(track.started_at)}</dd>
        <dt>{track.ended_by ? "Ended" : "Last seen"}</dt>
        <dd>
          {when(track.last_seen_at)}
          {track.ended_by ? ` (${track.ended_by.replace(/_/g, " ")})` : " (still in view as far as the cloud knows)"}
        </dd>
        <dt>In view</dt>
        <dd>{duration(track.duration_secs)}</dd>
        <dt>Frames</dt>
        <dd>
          {track.frames}, best score {percent(track.max_confidence)}
        </dd>
        {track.zones.length > 0 && (
          <>
            <dt>Zones</dt>
            <dd>
              {track.zones
                .map((z) => `${z.zone} from ${when(z.entered_at)}${z.exited_at ? ` to ${when(z.exited_at)}` : ""}`)
                .join("; ")}
            </dd>
          </>
        )}
      </dl>
    </div>
  );
}

type Around = { camera: string; since: string; until: string };

function ExportButton({ around }: { around: Around }) {
  const [state, setState] = useState<{ busy?: boolean; error?: unknown }>({});
  const run = () => {
    setState({ busy: true });
    const params = new URLSearchParams({ ...around, sort: "oldest" });
    download(`/v1/events/export?${params}`, `sightline-${around.camera}-${around.since.slice(0, 19)}.ndjson`).then(
      () => setState({}),
      (error) => setState({ error }),
    );
  };
  return (
    <>
      <button type="button" onClick={run} disabled={state.busy}>
        {state.busy ? "Exporting…" : "Export these ten minutes (NDJSON)"}
      </button>
      {state.error !== undefined && <Problem error={state.error} />}
    </>
  );
}

function ReplayForm({ around }: { around: Around }) {
  const [state, setState] = useState<{ busy?: boolean; error?: unknown; started?: string }>({});
  const submit = (e: Event) => {
    e.preventDefault();
    const subject = String(new FormData(e.currentTarget as HTMLFormElement).get("subject") ?? "").trim();
    setState({ busy: true });
    const params = new URLSearchParams({ ...around, subject, encoding: "json" });
    getJson<{ id: string }>(`/v1/replay?${params}`, { method: "POST" }).then(
      (progress) => setState({ started: progress.id }),
      (error) => setState({ error }),
    );
  };
  return (
    <form class="replay" onSubmit={submit}>
      <label>
        Replay these ten minutes to NATS subject
        <input name="subject" defaultValue={`replay.console.${around.camera}`} required />
      </label>
      <button type="submit" disabled={state.busy}>
        Replay
      </button>
      {state.started && (
        <p role="status">
          Replay {state.started} started: <span class="mono">GET /v1/replay/{state.started}</span> shows its progress.
        </p>
      )}
      {state.error !== undefined && <Problem error={state.error} />}
    </form>
  );
}
