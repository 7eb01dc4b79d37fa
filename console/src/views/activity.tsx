// Activity: detections (or distinct objects and their dwell time, from tracks) per interval
// over a chosen range, by label or camera, as a chart and as a table.
import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";
import { useEffect, useRef } from "preact/hooks";
import { type Bucket, type Stats, getJson } from "../api";
import { Empty, Loading, Problem, useLoad } from "../common";
import { duration, percent } from "../format";
import { href } from "../route";

/** Range presets: how many buckets back, and the bucket that keeps the chart readable. */
const RANGES = {
  "1h": { buckets: 60, interval: "1m", name: "Last hour" },
  "24h": { buckets: 24, interval: "1h", name: "Last 24 hours" },
  "7d": { buckets: 7 * 24, interval: "1h", name: "Last 7 days" },
  "30d": { buckets: 30, interval: "1d", name: "Last 30 days" },
} as const;

/** The browser's time zone: buckets start on its hours and days, as the chart shows them. */
const TZ = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";

/** The start of the bucket after the one `at` is in, in local time. */
function nextBoundary(at: Date, interval: string): Date {
  const d = new Date(at);
  if (interval === "1m") {
    d.setSeconds(0, 0);
    d.setMinutes(d.getMinutes() + 1);
  } else if (interval === "1h") {
    d.setMinutes(0, 0, 0);
    d.setHours(d.getHours() + 1);
  } else {
    d.setHours(0, 0, 0, 0);
    d.setDate(d.getDate() + 1);
  }
  return d;
}

/** `n` buckets before `at` (local days are 23 to 25 hours around a clock change). */
function back(at: Date, interval: string, n: number): Date {
  const d = new Date(at);
  if (interval === "1m") d.setMinutes(d.getMinutes() - n);
  else if (interval === "1h") d.setTime(d.getTime() - n * 3_600_000);
  else d.setDate(d.getDate() - n);
  return d;
}
type RangeName = keyof typeof RANGES;
const GROUPS = ["label", "camera", "none"] as const;
const MEASURES = [
  ["detections", "Detections"],
  ["objects", "Objects (tracks) and dwell"],
] as const;
const PALETTE = ["#2f6fde", "#d9480f", "#2b8a3e", "#ae3ec9", "#e67700", "#0c8599", "#c2255c", "#5c940d"];

function pick<T extends string>(value: string | null, allowed: readonly T[], fallback: T): T {
  return allowed.includes(value as T) ? (value as T) : fallback;
}

export function ActivityView({ params }: { params: URLSearchParams }) {
  const range = pick(params.get("range"), Object.keys(RANGES) as RangeName[], "24h");
  const group = pick(params.get("group_by"), GROUPS, "label");
  const measure = pick(params.get("measure"), MEASURES.map(([m]) => m), "detections");
  const preset = RANGES[range];
  // Whole buckets of the browser's time zone, ending at the next boundary: hour and day
  // buckets then come from the hourly rollup (in whole-hour zones), fast at any age.
  const untilDate = nextBoundary(new Date(), preset.interval);
  const until = untilDate.getTime();
  const since = back(untilDate, preset.interval, preset.buckets).getTime();
  const base = {
    measure,
    group_by: group,
    tz: TZ,
    since: new Date(since).toISOString(),
    until: new Date(until).toISOString(),
  };
  const stats = useLoad(
    () =>
      Promise.all([
        getJson<Stats>(`/v1/stats?${new URLSearchParams({ ...base, interval: preset.interval })}`),
        getJson<Stats>(`/v1/stats?${new URLSearchParams({ ...base, interval: "all" })}`),
      ]),
    [range, group, measure, until],
  );
  const link = (change: Record<string, string>) => href("/activity", { range, group_by: group, measure, ...change });
  return (
    <section aria-labelledby="activity-title">
      <h1 id="activity-title">Activity</h1>
      <nav class="choices" aria-label="Range, grouping and measure">
        <span>Range:</span>
        {(Object.keys(RANGES) as RangeName[]).map((r) => (
          <a key={r} href={link({ range: r })} aria-current={r === range ? "true" : undefined}>
            {RANGES[r].name}
          </a>
        ))}
        <span>By:</span>
        {GROUPS.map((g) => (
          <a key={g} href={link({ group_by: g })} aria-current={g === group ? "true" : undefined}>
            {g === "none" ? "all together" : g}
          </a>
        ))}
        <span>Count:</span>
        {MEASURES.map(([m, name]) => (
          <a key={m} href={link({ measure: m })} aria-current={m === measure ? "true" : undefined}>
            {name}
          </a>
        ))}
      </nav>
      {stats.loading && !stats.value && <Loading what="activity" />}
      {stats.error !== undefined && <Problem error={stats.error} retry={stats.retry} />}
      {stats.value && stats.value[1].buckets.length === 0 && (
        <Empty>Nothing was {measure === "objects" ? "tracked to its end" : "detected"} in this range.</Empty>
      )}
      {stats.value && stats.value[1].buckets.length > 0 && (
        <>
          <Chart stats={stats.value[0]} group={group} measure={measure} since={since} until={until} interval={preset.interval} />
          <Totals totals={stats.value[1]} group={group} measure={measure} />
        </>
      )}
    </section>
  );
}

function groupOf(bucket: Bucket, group: string): string {
  if (group === "label") return bucket.label ?? "?";
  if (group === "camera") return bucket.camera_id ?? "?";
  return "all";
}

function valueOf(bucket: Bucket, measure: string): number {
  return (measure === "objects" ? bucket.objects : bucket.detections) ?? 0;
}

function Chart(props: { stats: Stats; group: string; measure: string; since: number; until: number; interval: string }) {
  const holder = useRef<HTMLDivElement>(null);
  useEffect(() => {
    const element = holder.current;
    if (!element) return;
    const { stats, group, measure, since, until, interval } = props;
    const xs: number[] = [];
    for (let t = new Date(since); t.getTime() < until; t = back(t, interval, -1)) xs.push(t.getTime() / 1000);
    const index = new Map(xs.map((x, i) => [x, i]));
    const series = new Map<string, number[]>();
    for (const bucket of stats.buckets) {
      const name = groupOf(bucket, group);
      if (!series.has(name)) series.set(name, new Array(xs.length).fill(0));
      const i = index.get(Date.parse(bucket.start) / 1000);
      if (i !== undefined) series.get(name)![i] += valueOf(bucket, measure);
    }
    const names = [...series.keys()].sort();
    // What is drawn, for the browser tests (a canvas cannot be read back).
    element.dataset.series = names.join("|");
    element.dataset.total = String([...series.values()].flat().reduce((a, b) => a + b, 0));
    const options: uPlot.Options = {
      width: element.clientWidth,
      height: 280,
      series: [
        {},
        ...names.map((name, i) => ({
          label: name,
          stroke: PALETTE[i % PALETTE.length],
          width: 2,
          points: { show: false },
        })),
      ],
      axes: [{}, { label: measure === "objects" ? "objects" : "detections", size: 60 }],
      scales: { x: { time: true } },
      legend: { live: false },
    };
    const plot = new uPlot(options, [xs, ...names.map((n) => series.get(n)!)], element);
    const resize = new ResizeObserver(() => plot.setSize({ width: element.clientWidth, height: 280 }));
    resize.observe(element);
    return () => {
      resize.disconnect();
      plot.destroy();
    };
  }, [props.stats, props.group, props.measure]);
  return (
    <figure class="chart">
      <div ref={holder} role="img" aria-label={`${props.measure} per interval; the table below has the totals`} />
    </figure>
  );
}

function Totals({ totals, group, measure }: { totals: Stats; group: string; measure: string }) {
  const rows = [...totals.buckets].sort((a, b) => valueOf(b, measure) - valueOf(a, measure));
  return (
    <table class="totals">
      <caption>Totals over the range</caption>
      <thead>
        <tr>
          <th scope="col">{group === "none" ? "All" : group === "label" ? "Label" : "Camera"}</th>
          <th scope="col">{measure === "objects" ? "Objects" : "Detections"}</th>
          {measure === "objects" && <th scope="col">Dwell, median</th>}
          {measure === "objects" && <th scope="col">Dwell, 95th percentile</th>}
          <th scope="col">Best score</th>
        </tr>
      </thead>
      <tbody>
        {rows.map((bucket) => (
          <tr key={groupOf(bucket, group)}>
            <th scope="row">
              {group === "label" ? (
                <a href={href("/events", { label: bucket.label })}>{bucket.label}</a>
              ) : group === "camera" ? (
                <a href={href("/events", { camera: bucket.camera_id })}>{bucket.camera_id}</a>
              ) : (
                "all"
              )}
            </th>
            <td>{valueOf(bucket, measure).toLocaleString()}</td>
            {measure === "objects" && <td>{duration(bucket.dwell_p50_secs ?? NaN)}</td>}
            {measure === "objects" && <td>{duration(bucket.dwell_p95_secs ?? NaN)}</td>}
            <td>{percent(bucket.max_confidence)}</td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}
