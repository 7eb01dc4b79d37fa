// The console in a real browser: Debian's Chromium, headless, driven by playwright-core,
// against a real query service over real ClickHouse with seeded events (the Rust test
// `console::` in tests/tests/it/console.rs seeds them and runs this script).
//
// Environment:
//   CONSOLE_URL        the query service (authentication off)
//   CONSOLE_AUTH_URL   the same store behind a service with tokens (optional)
//   CONSOLE_TOKEN      a good token for CONSOLE_AUTH_URL
//   CONSOLE_EXPECT     JSON: what was seeded (see `expect` below)
//   CONSOLE_SCENARIOS  comma-separated scenarios to run (default: all)
//   SCREENSHOTS        where to save screenshots (default target/console-screenshots)
//   CHROMIUM           the browser (default /usr/bin/chromium)
//
// Exits 0 when every scenario passed; otherwise prints what failed and exits 1.
import { mkdirSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
import { launch } from "./chromium.mjs";

const require = createRequire(import.meta.url);
const axeSource = readFileSync(require.resolve("axe-core/axe.min.js"), "utf8");

const base = need("CONSOLE_URL");
const expect = JSON.parse(need("CONSOLE_EXPECT"));
const shots = process.env.SCREENSHOTS ?? "target/console-screenshots";
mkdirSync(shots, { recursive: true });
const only = (process.env.CONSOLE_SCENARIOS ?? "").split(",").filter(Boolean);

function need(name) {
  const value = process.env[name];
  if (!value) {
    console.error(`browser.mjs: ${name} is not set`);
    process.exit(2);
  }
  return value;
}

function check(condition, message) {
  if (!condition) throw new Error(message);
}

/** Waits for `predicate` (run in the page) to hold, or fails naming `what`. */
async function until(page, what, predicate, arg, timeout = 15_000) {
  try {
    await page.waitForFunction(predicate, arg, { timeout, polling: 100 });
  } catch {
    throw new Error(`timed out waiting for ${what}`);
  }
}

/** Runs axe-core on the page; fails on serious or critical violations. */
async function accessible(page, where) {
  // Evaluated through the DevTools protocol: the page's own policy (no inline scripts)
  // stays in force for everything else.
  await page.evaluate(axeSource);
  const result = await page.evaluate(async () => {
    // eslint-disable-next-line no-undef
    const r = await axe.run(document, { resultTypes: ["violations"] });
    return r.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.map((n) => n.target.join(" ")).slice(0, 3) }));
  });
  const serious = result.filter((v) => v.impact === "serious" || v.impact === "critical");
  check(serious.length === 0, `${where}: accessibility violations: ${JSON.stringify(serious)}`);
  return result.length;
}

/** Waits for the events view without filters to be drawn: its form empty (the form is
 *  drawn again for each set of filters, so typing into it before then types into the view
 *  before; once drawn, it stays as the list loads) and events listed (perhaps, for a
 *  frame, still those of the view before). */
async function unfiltered(page) {
  await until(page, "the events view without filters", () =>
    location.hash === "#/events" &&
    [...document.querySelectorAll("form.filters input, form.filters select")].every((field) => field.value === "") &&
    document.querySelectorAll("li.event-card").length > 0,
  );
}

/** Runs in the page before the console: wraps IntersectionObserver so that a test can stage
 *  a race the browser allows but seldom runs. `sightlineStage.next()` marks the list end's
 *  observer now connected; when the console disconnects it, the notification the browser
 *  would have computed in the frame before (the list end in view) is delivered first, as
 *  when that notification's task runs before the task running the effects that disconnect
 *  it. */
function stageObserverRace() {
  const Native = window.IntersectionObserver;
  // The list end's observer now connected, if any.
  let listEnd = null;
  let staged = null;
  window.sightlineStage = {
    delivered: false,
    /** Stages the connected one; false while there is none (its effect has not run yet). */
    next() {
      staged = listEnd;
      return staged !== null;
    },
  };
  window.IntersectionObserver = class extends Native {
    constructor(callback, options) {
      super(callback, options);
      this.callback = callback;
    }
    observe(target) {
      if (target.classList.contains("list-end")) {
        this.target = target;
        listEnd = this;
      }
      super.observe(target);
    }
    disconnect() {
      if (this === listEnd) listEnd = null;
      if (this === staged) {
        staged = null;
        window.sightlineStage.delivered = true;
        this.callback([{ isIntersecting: true, target: this.target, intersectionRatio: 1 }], this);
      }
      super.disconnect();
    }
  };
}

/** The events listed on the page, in order, by id. */
function listed(page) {
  return page.$$eval("li.event-card", (cards) => cards.map((c) => c.dataset.eventId));
}

const scenarios = {
  // Load, scroll past a page, filter, open an event and see its picture with boxes.
  async events(page, errors) {
    await page.addInitScript(stageObserverRace);
    await page.goto(base + "/");
    await until(page, "the first page of events", () => document.querySelectorAll("li.event-card").length >= 50);
    const first = await listed(page);
    check(first[0] === expect.newest, `newest first: the first card is ${first[0]}, not ${expect.newest}`);
    // At once, while the pictures are still loading (their placeholders must pass too).
    await accessible(page, "events, pictures loading");
    // The cameras strip: each camera, with its latest picture in the cloud.
    const strip = await page.$$eval(".cameras-strip li", (tiles) => tiles.map((t) => t.dataset.cameraId));
    check(expect.cameras.every((c) => strip.includes(c)), `the cameras strip shows ${expect.cameras}: ${strip}`);
    await page.waitForSelector(`.cameras-strip li[data-camera-id="${expect.picture.camera}"] img`, { timeout: 15_000 });
    await accessible(page, "events");
    await page.screenshot({ path: join(shots, "events.png") });

    // Infinite scroll: every seeded event, each once, in order.
    for (let round = 0; round < 20; round++) {
      const count = await page.$$eval("li.event-card", (c) => c.length);
      if (count >= expect.total) break;
      await page.evaluate(() => window.scrollTo(0, document.body.scrollHeight));
      await page.waitForTimeout(300);
    }
    await until(page, "the end of the list", () => document.body.innerText.includes("End of the list."), undefined, 20_000).catch(async (e) => {
      const problem = await page.$eval(".problem", (p) => p.innerText).catch(() => "");
      throw new Error(`${e.message}${problem ? `; the page says: ${problem}` : ""}`);
    });
    const all = await listed(page);
    check(new Set(all).size === all.length, `an event is listed twice (${all.length} cards, ${new Set(all).size} distinct)`);
    check(all.length === expect.total, `scrolled to the end: ${all.length} events listed, ${expect.total} seeded`);
    check(all.join() === expect.order.join(), "events are listed newest first, as seeded");

    // Thumbnails load lazily: the ones near the top are pictures; placeholders where none.
    await page.evaluate(() => window.scrollTo(0, 0));
    const thumbnail = `li.event-card[data-event-id="${expect.picture.id}"] img`;
    await page.waitForSelector(thumbnail, { timeout: 15_000 });
    const src = await page.$eval(thumbnail, (img) => img.src);
    check(src.startsWith("blob:"), `a thumbnail is a blob URL fetched with the token, not ${src}`);

    // A filter, reflected in the URL, narrows the list.
    await page.fill('input[name="label"]', expect.filter.label);
    await page.fill('input[name="camera"]', expect.filter.camera);
    await page.click('button[type="submit"]');
    await until(page, "the filter in the URL", (label) => location.hash.includes(`label=${label}`), expect.filter.label);
    await until(page, "the filtered list", (n) => document.body.innerText.includes("End of the list.") && document.querySelectorAll("li.event-card").length === n, expect.filter.count);
    const filtered = await page.$$eval("li.event-card .card-title", (t) => t.map((x) => x.textContent));
    check(filtered.every((t) => t.includes(expect.filter.label)), `the filter shows only ${expect.filter.label}: ${filtered}`);
    // The same URL in a new tab shows the same view.
    const shared = page.url();
    const other = await page.context().newPage();
    await other.goto(shared);
    await until(other, "the shared view", (n) => document.querySelectorAll("li.event-card").length === n, expect.filter.count);
    await other.close();

    // A time range typed in the browser's zone (New York here) is sent as the same instant.
    const times = expect.times.map((t) => Math.floor(t / 1000) * 1000);
    const [from, to] = [times[60], times[20]]; // 40 events: one page
    const local = (ms) =>
      new Intl.DateTimeFormat("sv-SE", { timeZone: "America/New_York", dateStyle: "short", timeStyle: "medium" }).format(new Date(ms)).replace(" ", "T");
    await page.goto(base + "/#/events");
    await unfiltered(page);
    await page.fill('input[name="since"]', local(from));
    await page.fill('input[name="until"]', local(to));
    await page.getByRole("button", { name: "Apply" }).click();
    await until(page, "the range in the URL", (iso) => new URLSearchParams(location.hash.split("?")[1]).get("since") === iso, new Date(from).toISOString());
    const inRange = times.filter((t) => t >= from && t < to).length;
    await until(page, `the ${inRange} events of the range`, (n) => document.body.innerText.includes("End of the list.") && document.querySelectorAll("li.event-card").length === n, inRange);
    // Lists typed with spaces mean what they say; the picture filters are the API's.
    await page.goto(base + "/#/events");
    await unfiltered(page);
    await page.fill('input[name="label"]', " car , traffic light ");
    await page.getByRole("button", { name: "Apply" }).click();
    await until(page, "the list in the URL", () => new URLSearchParams(location.hash.split("?")[1]).get("label") === "car,traffic light");
    await until(page, "the first page of cars and traffic lights", () =>
      document.body.innerText.includes("50 events so far") &&
      [...document.querySelectorAll("li.event-card .card-title")].every((title) => title.textContent.includes("car")),
    );
    // The next filters, while the list end's observer of this list (with its cursor) is
    // still connected: the browser may deliver its notification (the list just emptied)
    // before the effects that disconnect it. That must not load this list's next page in
    // place of the list the new filters ask for.
    await until(page, "the list end's observer of the cars", () => window.sightlineStage.next());
    for (const [filter, count] of [
      ["has_snapshot=true", expect.snapshots],
      ["in_cloud=true", expect.in_cloud],
    ]) {
      await page.goto(base + `/#/events?${filter}`);
      await until(page, `${count} events with ${filter}`, (n) => document.body.innerText.includes("End of the list.") && document.querySelectorAll("li.event-card").length === n, count);
    }
    check(await page.evaluate(() => window.sightlineStage.delivered), "the late notification of the list end's observer was delivered");

    // Nothing matches: a clear empty state.
    await page.goto(base + "/#/events?label=unicorn");
    await until(page, "the empty state", () => document.body.innerText.includes("No events match these filters"));

    // Open the event with a picture: boxes over it, labels and scores, its track.
    await page.goto(base + "/#/events");
    await page.waitForSelector(`li.event-card[data-event-id="${expect.picture.id}"] a`);
    await page.click(`li.event-card[data-event-id="${expect.picture.id}"] a`);
    await page.waitForSelector(".event-picture img", { timeout: 15_000 });
    await until(page, "the picture decoded", () => {
      const img = document.querySelector(".event-picture img");
      return img && img.complete && img.naturalWidth > 0;
    });
    const natural = await page.$eval(".event-picture img", (img) => [img.naturalWidth, img.naturalHeight]);
    check(natural[0] === expect.picture.width && natural[1] === expect.picture.height, `the full picture (${natural}) is the uploaded one`);
    const boxes = await page.$$eval(".overlay .box", (b) => b.map((x) => ({ label: x.dataset.label, text: x.innerText, rect: x.getBoundingClientRect().toJSON() })));
    check(boxes.length === expect.picture.detections.length, `${boxes.length} boxes drawn for ${expect.picture.detections.length} detections`);
    const picture = await page.$eval(".event-picture img", (img) => img.getBoundingClientRect().toJSON());
    expect.picture.detections.forEach((d, i) => {
      const box = boxes[i];
      check(box.label === d.label && box.text.includes(`${Math.round(d.confidence * 100)}%`), `box ${i}: ${box.text}`);
      const edges = [
        (box.rect.left - picture.left) / picture.width,
        (box.rect.top - picture.top) / picture.height,
        (box.rect.right - picture.left) / picture.width,
        (box.rect.bottom - picture.top) / picture.height,
      ];
      const want = [d.bbox.x_min, d.bbox.y_min, d.bbox.x_max, d.bbox.y_max];
      check(edges.every((e, k) => Math.abs(e - want[k]) < 0.02), `box ${i} at ${edges.map((e) => e.toFixed(3))}, expected ${want}`);
    });
    if (expect.picture.track) {
      await until(page, "the track", (id) => document.body.innerText.includes(`Track ${id}`), expect.picture.track.id);
      const text = await page.innerText(".track");
      check(text.includes(expect.picture.track.duration), `the track's duration ${expect.picture.track.duration}: ${text}`);
      await until(page, "every track", (n) => document.querySelectorAll(".track").length === n, expect.picture.track.count);
      const paths = await page.$$eval(".overlay .path polyline", (p) => p.map((x) => x.getAttribute("points").split(" ").length));
      check(paths.length === expect.picture.track.count && paths.every((n) => n === expect.picture.track.points), `the tracks' paths are drawn: ${paths}`);
    }
    await accessible(page, "event");
    await page.screenshot({ path: join(shots, "event.png"), fullPage: true });

    // The range around it: the list link, and an export downloaded with the token.
    const [download] = await Promise.all([page.waitForEvent("download"), page.getByRole("button", { name: /Export these ten minutes/ }).click()]);
    const exported = readFileSync(await download.path(), "utf8").trim().split("\n");
    check(exported.some((line) => line.includes(expect.picture.id)), "the export around the event has the event");
    await page.getByRole("link", { name: `Events at ${expect.picture.camera} five minutes either side` }).click();
    await until(page, "the range around the event", (id) => document.querySelector(`li.event-card[data-event-id="${id}"]`) !== null, expect.picture.id);
    check(errors.length === 0, `console errors: ${errors.join(" | ")}`);
  },

  // The fleet: the offline edge first, marked, and the online one with its cameras.
  async fleet(page, errors) {
    await page.goto(base + "/#/fleet");
    await page.waitForSelector("table.fleet tbody tr");
    const rows = await page.$$eval("table.fleet tbody tr", (r) => r.map((x) => ({ id: x.dataset.edgeId, status: x.className, text: x.innerText })));
    check(rows[0].id === expect.offline && rows[0].status === "offline", `the offline edge first: ${JSON.stringify(rows[0])}`);
    const online = rows.find((r) => r.id === expect.online);
    check(online && online.status === "online", `${expect.online} is online`);
    for (const camera of expect.cameras) check(online.text.includes(camera), `${expect.online} shows camera ${camera}`);
    check(/3 unsent/.test(online.text), `the backlog shows: ${online.text}`);
    await accessible(page, "fleet");
    await page.screenshot({ path: join(shots, "fleet.png"), fullPage: true });
    // Sorting by id puts the online one first.
    await page.getByRole("link", { name: "Edge id" }).click();
    await until(page, "sorted by id", (id) => document.querySelector("table.fleet tbody tr")?.dataset.edgeId === id, expect.online);
    check(errors.length === 0, `console errors: ${errors.join(" | ")}`);
  },

  // Activity: the chart and its totals for the seeded labels.
  async activity(page, errors) {
    await page.goto(base + "/#/activity?range=24h&group_by=label");
    await page.waitForSelector("table.totals tbody tr", { timeout: 15_000 });
    await page.waitForSelector(".chart canvas");
    const drawn = await page.$eval(".chart [data-series]", (c) => ({ series: c.dataset.series, total: Number(c.dataset.total) }));
    const labels = Object.keys(expect.detections).sort();
    const sum = Object.values(expect.detections).reduce((a, b) => a + b, 0);
    check(drawn.series === labels.join("|") && drawn.total === sum, `the chart draws ${JSON.stringify(drawn)}, expected ${labels} totalling ${sum}`);
    const totals = Object.fromEntries(await page.$$eval("table.totals tbody tr", (r) => r.map((x) => [x.cells[0].innerText, Number(x.cells[1].innerText.replace(/[^0-9]/g, ""))])));
    for (const [label, count] of Object.entries(expect.detections)) check(totals[label] === count, `activity: ${label} ${totals[label]}, expected ${count}`);
    await accessible(page, "activity");
    await page.screenshot({ path: join(shots, "activity.png"), fullPage: true });
    check(errors.length === 0, `console errors: ${errors.join(" | ")}`);
  },

  // A phone: nothing wider than the screen, and the events readable.
  async phone(page, errors) {
    await page.setViewportSize({ width: 375, height: 812 });
    for (const [view, content] of [
      ["#/events", "li.event-card"],
      ["#/fleet", "table.fleet tbody tr"],
      ["#/activity", "table.totals tbody tr"],
      [`#/events/${expect.picture.id}`, ".event-picture img"],
    ]) {
      await page.goto(base + "/" + view);
      await page.waitForSelector(content, { timeout: 15_000 });
      const width = await page.evaluate(() => document.documentElement.scrollWidth);
      check(width <= 375, `${view} is ${width} px wide on a 375 px screen`);
    }
    await page.goto(base + "/#/events");
    await page.waitForSelector("li.event-card");
    await page.screenshot({ path: join(shots, "phone-events.png") });
    check(errors.length === 0, `console errors: ${errors.join(" | ")}`);
  },

  // The keyboard alone: skip link, tab to the first event, open it.
  async keyboard(page, errors) {
    await page.goto(base + "/");
    await page.waitForSelector("li.event-card");
    await page.keyboard.press("Tab");
    check((await page.evaluate(() => document.activeElement?.textContent)) === "Skip to content", "the first Tab reaches the skip link");
    const before = page.url();
    await page.keyboard.press("Enter");
    check(page.url() === before, `the skip link keeps the view (${before} became ${page.url()})`);
    check(await page.evaluate(() => document.activeElement?.id === "main"), "the skip link moves the focus to the content");
    // Tab until focus is on an event card's link, then Enter opens the event.
    for (let i = 0; i < 40; i++) {
      await page.keyboard.press("Tab");
      if (await page.evaluate(() => document.activeElement?.classList.contains("card-link"))) break;
    }
    check(await page.evaluate(() => document.activeElement?.classList.contains("card-link")), "Tab reaches an event");
    await page.keyboard.press("Enter");
    await until(page, "the event opened by keyboard", () => location.hash.startsWith("#/events/"));
    check(errors.length === 0, `console errors: ${errors.join(" | ")}`);
  },

  // The API unreachable after the page loaded (the network cut): a clear message, and a
  // retry that works once it is back.
  async unreachable(page, errors) {
    await page.goto(base + "/");
    await page.waitForSelector("li.event-card");
    await page.route("**/v1/**", (route) => route.abort("connectionrefused"));
    await page.goto(base + "/#/fleet");
    await until(page, "the unreachable message", () => document.body.innerText.includes("The query service cannot be reached"));
    await page.screenshot({ path: join(shots, "unreachable.png") });
    await page.unroute("**/v1/**");
    // The button: the message above it also says "try again".
    await page.getByRole("button", { name: "Try again" }).click();
    // At once, not at the view's next 10 s refresh.
    await page.waitForSelector("table.fleet tbody tr", { timeout: 5_000 });
    const unexpected = errors.filter((e) => !e.includes("net::ERR_CONNECTION_REFUSED") && !e.includes("Failed to load resource"));
    check(unexpected.length === 0, `console errors: ${unexpected.join(" | ")}`);
  },

  // With tokens on: the prompt, a bad token refused, a good one kept for the tab only.
  async auth(page, errors) {
    const url = process.env.CONSOLE_AUTH_URL;
    if (!url) return "skipped: CONSOLE_AUTH_URL not set";
    await page.goto(url + "/");
    await page.waitForSelector("text=This service needs a token");
    await accessible(page, "sign-in");
    await page.fill('input[name="token"]', "not-the-token-at-all");
    await page.click('button[type="submit"]');
    await page.waitForSelector("text=The service refused that token");
    await page.screenshot({ path: join(shots, "token-refused.png") });
    // A token of a client without the read scope is named as such.
    await page.fill('input[name="token"]', need("CONSOLE_EXPORT_TOKEN"));
    await page.click('button[type="submit"]');
    await page.waitForSelector("text=lacks the read scope");
    await page.fill('input[name="token"]', need("CONSOLE_TOKEN"));
    await page.click('button[type="submit"]');
    await page.waitForSelector("li.event-card", { timeout: 15_000 });
    // From here on, every request carries the token: no 401 is expected any more.
    errors.length = 0;
    check(!page.url().includes(need("CONSOLE_TOKEN")), "the token is never in the URL");
    const storage = await page.evaluate(() => ({ local: JSON.stringify(localStorage), session: sessionStorage.getItem("sightline.token") }));
    check(!storage.local.includes(need("CONSOLE_TOKEN")), "the token is not in localStorage");
    check(storage.session === need("CONSOLE_TOKEN"), "the token is kept for the tab");
    // Pictures come with the token.
    await page.goto(url + `/#/events/${expect.picture.id}`);
    await page.waitForSelector(".event-picture img", { timeout: 15_000 });
    // The 401s that brought the prompt up, and the refused token's, are expected.
    const unexpected = errors.filter((e) => !(e.includes("401") && (e.includes("Failed to load resource") || e.startsWith("(401 "))));
    check(unexpected.length === 0, `console errors: ${unexpected.join(" | ")}`);
  },
};

const browser = await launch();
const unknown = only.filter((name) => !(name in scenarios));
if (unknown.length) {
  console.error(`browser.mjs: no scenario ${unknown.join(", ")} (there are ${Object.keys(scenarios).join(", ")})`);
  process.exit(2);
}
const failures = [];
let ran = 0;
try {
  for (const [name, run] of Object.entries(scenarios)) {
    if (only.length && !only.includes(name)) continue;
    ran += 1;
    // A time zone that is not the machine's (UTC here), so a time zone mistake shows.
    const context = await browser.newContext({
      viewport: { width: 1280, height: 900 },
      acceptDownloads: true,
      timezoneId: "America/New_York",
    });
    const page = await context.newPage();
    const errors = [];
    page.on("console", (message) => message.type() === "error" && errors.push(message.text()));
    page.on("pageerror", (error) => errors.push(`uncaught: ${error.message}`));
    // Chromium's "Failed to load resource" does not say which: the responses do.
    page.on("response", (response) => response.status() >= 400 && errors.push(`(${response.status()} ${new URL(response.url()).pathname})`));
    const started = Date.now();
    try {
      const note = await run(page, errors);
      console.log(`ok   ${name} (${Date.now() - started} ms)${note ? ": " + note : ""}`);
    } catch (error) {
      failures.push(name);
      console.log(`FAIL ${name}: ${error.message}`);
      await page.screenshot({ path: join(shots, `failed-${name}.png`), fullPage: true }).catch(() => {});
    }
    await context.close();
  }
} finally {
  // Playwright gave the browser a new, empty profile of its own, and removes it here.
  await browser.close();
}
console.log(failures.length ? `${failures.length} of ${ran} scenario(s) failed: ${failures.join(", ")}` : `all ${ran} scenario(s) passed`);
process.exit(failures.length ? 1 : 0);
