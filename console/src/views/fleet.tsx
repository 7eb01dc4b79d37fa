// The fleet: every edge as its latest heartbeat shows it, offline ones first by default,
// refreshed ten seconds after each answer while the tab is visible.
import { type Edge, getJson } from "../api";
import { Empty, Loading, Problem, useLoad } from "../common";
import { bytes, duration, when } from "../format";
import { href } from "../route";

const SORTS = [
  ["status", "Offline first"],
  ["edge", "Edge id"],
  ["backlog", "Largest backlog"],
] as const;

const REFRESH_MS = 10_000;

export function FleetView({ params }: { params: URLSearchParams }) {
  const sort = SORTS.some(([s]) => s === params.get("sort")) ? params.get("sort")! : "status";
  const status = params.get("status") ?? "";
  const query = new URLSearchParams({ sort, ...(status ? { status } : {}) });
  const fleet = useLoad(() => getJson<{ count: number; edges: Edge[] }>(`/v1/edges?${query}`), [sort, status], REFRESH_MS);
  const edges = fleet.value?.edges ?? [];
  const offline = edges.filter((e) => e.status === "offline").length;
  return (
    <section aria-labelledby="fleet-title">
      <h1 id="fleet-title">Edges and cameras</h1>
      <nav class="choices" aria-label="Order and filter">
        <span>Order:</span>
        {SORTS.map(([value, name]) => (
          <a key={value} href={href("/fleet", { sort: value, status })} aria-current={value === sort ? "true" : undefined}>
            {name}
          </a>
        ))}
        <span>Show:</span>
        {[
          ["", "all"],
          ["offline", "offline"],
          ["online", "online"],
        ].map(([value, name]) => (
          <a key={value} href={href("/fleet", { sort, status: value })} aria-current={value === status ? "true" : undefined}>
            {name}
          </a>
        ))}
      </nav>
      {fleet.value && (
        <p class="summary" role="status">
          {edges.length} edge{edges.length === 1 ? "" : "s"}
          {offline > 0 ? `, ${offline} offline` : ""}.
        </p>
      )}
      {fleet.loading && !fleet.value && <Loading what="the fleet" />}
      {fleet.error !== undefined && <Problem error={fleet.error} retry={fleet.retry} />}
      {fleet.value && edges.length === 0 && (
        <Empty>
          {status
            ? `No ${status} edges.`
            : "No edge has reported yet. An edge appears here with its first heartbeat."}
        </Empty>
      )}
      {edges.length > 0 && (
        <div class="table-scroll" tabIndex={0} role="region" aria-label="Edges">
          <table class="fleet">
            <thead>
              <tr>
                <th scope="col" aria-sort={sort === "status" ? "ascending" : undefined}>
                  Status
                </th>
                <th scope="col" aria-sort={sort === "edge" ? "ascending" : undefined}>
                  Edge
                </th>
                <th scope="col">Last heartbeat</th>
                <th scope="col" aria-sort={sort === "backlog" ? "descending" : undefined}>
                  Backlog
                </th>
                <th scope="col">Storage</th>
                <th scope="col">Clock</th>
                <th scope="col">Uploads</th>
                <th scope="col">Cameras</th>
              </tr>
            </thead>
            <tbody>
              {edges.map((edge) => (
                <EdgeRow key={edge.edge_id} edge={edge} />
              ))}
            </tbody>
          </table>
        </div>
      )}
    </section>
  );
}

function EdgeRow({ edge }: { edge: Edge }) {
  const storage = edge.storage;
  return (
    <tr class={edge.status} data-edge-id={edge.edge_id}>
      <td>
        <span class={`status ${edge.status}`}>{edge.status}</span>
      </td>
      <td>
        <a href={href("/events", { edge: edge.edge_id })}>{edge.edge_id}</a>
        <div class="muted">agent {edge.agent_version || "?"}</div>
      </td>
      <td>
        {duration(edge.seconds_since_heartbeat)} ago
        <div class="muted">
          <time dateTime={edge.last_heartbeat_at}>{when(edge.last_heartbeat_at)}</time>, every{" "}
          {edge.interval_secs || 30} s
        </div>
      </td>
      <td>
        {edge.backlog.events.toLocaleString()} unsent
        {edge.backlog.oldest_unsent_age_secs != null && (
          <div class="muted">oldest {duration(edge.backlog.oldest_unsent_age_secs)}</div>
        )}
      </td>
      <td>
        {storage.limit_bytes > 0 ? (
          <>
            {bytes(storage.used_bytes)} of {bytes(storage.limit_bytes)}
            {storage.used_percent != null && ` (${storage.used_percent.toFixed(0)}%)`}
          </>
        ) : (
          <span class="muted">not reported</span>
        )}
        <div class="muted">{storage.free_bytes != null ? `${bytes(storage.free_bytes)} free on disk` : ""}</div>
      </td>
      <td>{edge.clock_offset_ms == null ? "–" : `${edge.clock_offset_ms > 0 ? "+" : ""}${edge.clock_offset_ms} ms`}</td>
      <td>
        {edge.uploads.pending} pending
        <div class="muted">
          {edge.uploads.sent} sent{edge.uploads.dropped ? `, ${edge.uploads.dropped} dropped` : ""}
        </div>
      </td>
      <td>
        {edge.cameras.length === 0 ? (
          <span class="muted">none reported</span>
        ) : (
          <ul class="cameras">
            {edge.cameras.map((c) => (
              <li key={c.camera_id}>
                <a href={href("/events", { camera: c.camera_id, edge: edge.edge_id })}>{c.camera_id}</a>{" "}
                <span class={`state ${c.state}`}>{c.state}</span> {c.fps.toFixed(1)} fps
                {c.errors > 0 && <span class="muted">, {c.errors} errors</span>}
              </li>
            ))}
          </ul>
        )}
      </td>
    </tr>
  );
}
