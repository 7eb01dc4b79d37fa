// Time to the console's first screen in a real browser (Debian's Chromium, headless): from
// the start of navigation to the first page of events drawn (the console's
// `sightline:first-events` performance mark), ROUNDS times, each in a new
// browser context (nothing cached). Run by the query bench (tests/benches/query.rs) against
// its 10M-event store; prints one JSON line: {"rounds", "p50_ms", "p95_ms", "max_ms"}.
import { launch } from "./chromium.mjs";

const base = process.env.CONSOLE_URL;
const rounds = Number(process.env.ROUNDS ?? 20);
if (!base) {
  console.error("first-screen.mjs: CONSOLE_URL is not set");
  process.exit(2);
}
const browser = await launch();
const samples = [];
try {
  for (let i = 0; i < rounds; i++) {
    const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    const page = await context.newPage();
    await page.goto(base + "/");
    // The console marks the moment its first page of events is drawn.
    await page.waitForFunction(() => performance.getEntriesByName("sightline:first-events").length > 0, undefined, {
      timeout: 30_000,
      polling: 50,
    });
    samples.push(await page.evaluate(() => performance.getEntriesByName("sightline:first-events")[0].startTime));
    await context.close();
  }
} finally {
  await browser.close();
}
samples.sort((a, b) => a - b);
const at = (q) => samples[Math.min(samples.length - 1, Math.round((samples.length - 1) * q))];
console.log(JSON.stringify({ rounds, p50_ms: at(0.5), p95_ms: at(0.95), max_ms: samples.at(-1) }));
