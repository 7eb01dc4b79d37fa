// Events, newest first: filters kept in the URL, thumbnails loaded as they scroll into view,
// and the next page fetched on the keyset cursor when the end of the list comes near.
import { useEffect, useRef, useState } from "preact/hooks";
import { type ApiEvent, ApiError, type Camera, type EventPage, getJson } from "../api";
import { CamerasStrip, useCameras } from "./cameras";
import { Empty, Picture, Problem, THUMBNAIL_WIDTH } from "../common";
import { fromLocalInput, percent, toLocalInput, when } from "../format";
import { href, navigate } from "../route";

/** Events per page: a screenful or two on a desktop, and cheap on a large store. */
export const PAGE_SIZE = 50;

const FIRST_EVENTS_MARK = "sightline:first-events";

/** The filters the events view takes from the URL, by their API names. */
export const FILTERS = [
  "camera",
  "edge",
  "label",
  "zone",
  "since",
  "until",
  "min_confidence",
  "has_snapshot",
  "in_cloud",
] as const;

type Filters = Partial<Record<(typeof FILTERS)[number], string>>;

export function filtersOf(params: URLSearchParams): Filters {
  const filters: Filters = {};
  for (const name of FILTERS) {
    const value = params.get(name);
    if (value) filters[name] = value;
  }
  return filters;
}

// A service whose max_limit is below PAGE_SIZE refuses it: then its own default is asked for.
let pageSize: number | undefined = PAGE_SIZE;

function query(filters: Filters, cursor: string | null): string {
  const params = new URLSearchParams(pageSize ? { limit: String(pageSize) } : {});
  for (const [name, value] of Object.entries(filters)) if (value) params.set(name, value);
  if (cursor) params.set("cursor", cursor);
  return `/v1/events?${params}`;
}

interface Listing {
  /** The filters (`key`) these events are for. */
  key: string;
  events: ApiEvent[];
  /** Where the next page starts; null at the end. */
  cursor: string | null;
  loading: boolean;
  error?: unknown;
  /** The API gave back events already listed: only a fresh start helps. */
  repeated?: boolean;
}

/** The list last shown, with its scroll position, so that coming back to it (from an
 *  event) within RESTORE_MS finds it as it was, not reloaded from the top. Later, it loads
 *  afresh, with what arrived meanwhile. */
let remembered: { key: string; listing: Listing; seen: Set<string>; scrollY: number; at: number } | undefined;
const RESTORE_MS = 5 * 60_000;

export function EventsView({ params }: { params: URLSearchParams }) {
  const filters = filtersOf(params);
  const key = JSON.stringify(filters);
  const restored =
    remembered?.key === key && !remembered.listing.loading && Date.now() - remembered.at < RESTORE_MS
      ? remembered
      : undefined;
  const [listing, setListing] = useState<Listing>(
    restored?.listing ?? { key, events: [], cursor: null, loading: true },
  );
  const cameras = useCameras();
  const seen = useRef(restored?.seen ?? new Set<string>());
  const generation = useRef(0);

  const load = (cursor: string | null, reset: boolean) => {
    const mine = ++generation.current;
    setListing((l) => ({ ...(reset ? { key, events: [], cursor: null } : l), loading: true, error: undefined }));
    getJson<EventPage>(query(filters, cursor)).then(
      (page) => {
        if (mine !== generation.current) return;
        if (reset) seen.current = new Set();
        // A page must bring events not shown yet: a cursor that gives back what it already
        // gave would otherwise scroll forever.
        const fresh = page.events.filter((e) => !seen.current.has(e.event_id));
        if (page.events.length > 0 && fresh.length < page.events.length) {
          setListing((l) => ({
            ...l,
            loading: false,
            repeated: true,
            error: new Error(
              `The API repeated ${page.events.length - fresh.length} event(s) already listed; stopped loading more.`,
            ),
          }));
          return;
        }
        fresh.forEach((e) => seen.current.add(e.event_id));
        setListing((l) => ({
          key,
          events: reset ? fresh : [...l.events, ...fresh],
          cursor: page.next_cursor,
          loading: false,
        }));
      },
      (error) => {
        if (mine !== generation.current) return;
        if (error instanceof ApiError && error.parameter === "limit" && pageSize) {
          pageSize = undefined;
          load(cursor, reset);
          return;
        }
        setListing((l) => ({ ...l, loading: false, error }));
      },
    );
  };

  useEffect(() => {
    if (restored) {
      // Back to the list it was: where it was.
      requestAnimationFrame(() => window.scrollTo(0, restored.scrollY));
      return;
    }
    load(null, true);
  }, [key]);
  // Remembered as it changes (not the list of the filters before, still on screen for the
  // render in which the filters change); the scroll position when the view goes.
  useEffect(() => {
    if (listing.key !== key) return;
    const scrollY = remembered?.key === key ? remembered.scrollY : 0;
    remembered = { key, listing, seen: seen.current, scrollY, at: Date.now() };
  }, [key, listing]);
  useEffect(
    () => () => {
      if (remembered) remembered.scrollY = window.scrollY;
    },
    [],
  );

  // When the first page is on screen: the first-screen bench (tests/first-screen.mjs) reads
  // this mark, and so can anyone profiling the console in their browser.
  const shown = listing.events.length > 0;
  useEffect(() => {
    if (shown && performance.getEntriesByName(FIRST_EVENTS_MARK).length === 0) performance.mark(FIRST_EVENTS_MARK);
  }, [shown]);

  // What is on screen, for callbacks an earlier render made: the list end's observer lives
  // until the effects after a change run, and the browser can call it in between (say, as
  // new filters empty the list). A page asked for under other filters, or from a cursor
  // already followed, must not load: it would take the place of the list the filters ask for.
  const current = useRef({ key, cursor: listing.cursor, loading: listing.loading });
  current.current = { key, cursor: listing.cursor, loading: listing.loading };
  const more = (cursor: string | null) => {
    const now = current.current;
    if (!cursor || now.key !== key || now.cursor !== cursor || now.loading) return;
    // Until the next render: a second call meanwhile is not a second load.
    now.loading = true;
    load(cursor, false);
  };

  // The next page when the end of the list comes within a screen.
  const end = useRef<HTMLDivElement>(null);
  useEffect(() => {
    if (!end.current || !listing.cursor || listing.loading || listing.error) return;
    const observer = new IntersectionObserver(
      (entries) => entries.some((e) => e.isIntersecting) && more(listing.cursor),
      { rootMargin: "600px" },
    );
    observer.observe(end.current);
    return () => observer.disconnect();
  }, [listing.cursor, listing.loading, listing.error]);

  const retry = () =>
    listing.repeated || listing.events.length === 0 ? load(null, true) : load(listing.cursor, false);
  return (
    <section aria-labelledby="events-title">
      <h1 id="events-title">Events</h1>
      <CamerasStrip cameras={cameras} selected={filters.camera} />
      <FilterForm filters={filters} cameras={cameras} />
      <p class="summary" role="status" aria-live="polite">
        {listing.events.length > 0 &&
          `${listing.events.length} event${listing.events.length === 1 ? "" : "s"}${listing.cursor ? " so far" : ""}, newest first`}
      </p>
      {listing.events.length > 0 && (
        <ol class="events" aria-label="Events, newest first">
          {listing.events.map((event) => (
            <EventCard key={event.event_id} event={event} />
          ))}
        </ol>
      )}
      {!listing.loading && !listing.error && listing.events.length === 0 && (
        <Empty>
          {Object.keys(filters).length > 0
            ? "No events match these filters. Widen the time range or clear a filter."
            : "No events yet. They appear here as the edges send them."}
        </Empty>
      )}
      {listing.error !== undefined && <Problem error={listing.error} retry={retry} />}
      <div ref={end} class="list-end">
        {/* One button that stays put while the next page loads, so keyboard focus stays too. */}
        {listing.cursor && !listing.error && (
          <button
            type="button"
            onClick={() => more(listing.cursor)}
            aria-disabled={listing.loading ? "true" : undefined}
          >
            {listing.loading ? "Loading events…" : "Load more"}
          </button>
        )}
        {listing.loading && !listing.cursor && <p role="status">Loading events…</p>}
        {!listing.loading && !listing.cursor && listing.events.length > 0 && !listing.error && (
          <p class="muted">End of the list.</p>
        )}
      </div>
    </section>
  );
}

function EventCard({ event }: { event: ApiEvent }) {
  const best = [...event.detections].sort((a, b) => b.confidence - a.confidence);
  const labels = best.map((d) => `${d.label} ${percent(d.confidence)}`).join(", ");
  return (
    <li class="event-card" data-event-id={event.event_id}>
      <a href={href(`/events/${event.event_id}`)} class="card-link">
        <Picture
          path={event.snapshot_url && `${event.snapshot_url}?max_width=${THUMBNAIL_WIDTH}`}
          alt={`${event.camera_id}: ${labels || "no detections"}`}
          class="thumbnail"
          empty={event.snapshot ? "The picture stayed on the edge" : "No picture taken"}
        />
        <span class="card-text">
          <span class="card-title">{best.length ? best.map((d) => d.label).filter(unique).join(", ") : "no detections"}</span>
          <time dateTime={event.captured_at}>{when(event.captured_at)}</time>
          <span class="muted">
            {event.camera_id} · {event.edge_id}
          </span>
          <span class="muted">{labels}</span>
        </span>
      </a>
    </li>
  );
}

function unique<T>(value: T, index: number, all: T[]): boolean {
  return all.indexOf(value) === index;
}

function FilterForm({ filters, cameras }: { filters: Filters; cameras: Camera[] }) {
  const edges = [...new Set(cameras.flatMap((c) => c.edges))].sort();
  const submit = (e: Event) => {
    e.preventDefault();
    const form = new FormData(e.currentTarget as HTMLFormElement);
    const text = (name: string) => String(form.get(name) ?? "").trim() || undefined;
    // "person, car" means person and car: the API takes lists without spaces.
    const list = (name: string) =>
      text(name)
        ?.split(",")
        .map((part) => part.trim())
        .filter(Boolean)
        .join(",") || undefined;
    navigate("/events", {
      camera: list("camera"),
      edge: list("edge"),
      label: list("label"),
      zone: list("zone"),
      since: fromLocalInput(text("since") ?? ""),
      until: fromLocalInput(text("until") ?? ""),
      min_confidence: text("min_confidence"),
      has_snapshot: text("has_snapshot"),
      in_cloud: text("in_cloud"),
    });
  };
  const active = Object.keys(filters).length;
  // Open on a wide screen; on a phone the list comes first and the filters fold away.
  const wide = typeof matchMedia === "function" && matchMedia("(min-width: 700px)").matches;
  return (
    <details class="filter-panel" open={wide || undefined}>
      <summary>Filters{active ? ` (${active} on)` : ""}</summary>
    <form class="filters" onSubmit={submit} key={JSON.stringify(filters)} aria-label="Filter events">
      <label>
        Camera
        <input name="camera" list="cameras" defaultValue={filters.camera} placeholder="any" autocomplete="off" />
      </label>
      <label>
        Edge
        <input name="edge" list="edges" defaultValue={filters.edge} placeholder="any" autocomplete="off" />
      </label>
      <label>
        Label
        <input name="label" defaultValue={filters.label} placeholder="person, car" autocomplete="off" />
      </label>
      <label>
        Zone
        <input name="zone" defaultValue={filters.zone} placeholder="any" autocomplete="off" />
      </label>
      <label>
        From
        <input name="since" type="datetime-local" step="1" defaultValue={toLocalInput(filters.since ?? null)} />
      </label>
      <label>
        Until
        <input name="until" type="datetime-local" step="1" defaultValue={toLocalInput(filters.until ?? null)} />
      </label>
      <label>
        Confidence at least
        <input
          name="min_confidence"
          type="number"
          min="0"
          max="1"
          step="any"
          defaultValue={filters.min_confidence}
          placeholder="0–1"
        />
      </label>
      <YesNo name="has_snapshot" label="Picture taken" value={filters.has_snapshot} />
      <YesNo name="in_cloud" label="Picture in the cloud" value={filters.in_cloud} />
      <div class="filter-actions">
        <button type="submit">Apply</button>
        <a href={href("/events")}>Clear</a>
      </div>
      <datalist id="cameras">
        {cameras.map((c) => (
          <option key={c.camera_id} value={c.camera_id} />
        ))}
      </datalist>
      <datalist id="edges">
        {edges.map((edge) => (
          <option key={edge} value={edge} />
        ))}
      </datalist>
    </form>
    </details>
  );
}

/** A filter that is `true`, `false` or not given. */
function YesNo({ name, label, value }: { name: string; label: string; value?: string }) {
  return (
    <label>
      {label}
      <select name={name}>
        {[
          ["", "any"],
          ["true", "yes"],
          ["false", "no"],
        ].map(([option, text]) => (
          <option key={option} value={option} selected={(value ?? "") === option}>
            {text}
          </option>
        ))}
      </select>
    </label>
  );
}
