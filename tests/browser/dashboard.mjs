// Loads the analytics dashboard in headless Chromium (Debian's /usr/bin/chromium, driven
// by playwright-core), logs in with the key, waits for the data, reads what the page
// shows, saves a screenshot, and prints it all as JSON for test_dashboard.py to check.
import { chromium } from "playwright-core";

const { DASHBOARD_URL, DASHBOARD_KEY, SCREENSHOT, CHROMIUM = "/usr/bin/chromium" } = process.env;
const browser = await chromium.launch({
  executablePath: CHROMIUM,
  headless: true,
  args: ["--no-sandbox", "--disable-dev-shm-usage"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 1500 } });
  const errors = [];
  page.on("pageerror", (error) => errors.push(String(error)));
  page.on("console", (message) => { if (message.type() === "error") errors.push(message.text()); });
  await page.goto(DASHBOARD_URL);
  const loginShown = await page.locator("#login").isVisible();
  await page.fill("#key", DASHBOARD_KEY);
  await page.click("#login-form button[type=submit]");
  await page.waitForFunction(() => Number(document.body.dataset.loaded || 0) >= 1, null, { timeout: 30000 });
  const shown = await page.evaluate(() => {
    const text = (id) => document.getElementById(id).textContent.trim();
    const tile = (id) => {
      const el = document.getElementById(id);
      return { met: el.dataset.met, cls: el.className, value: el.querySelector(".value").textContent.trim() };
    };
    const charts = {};
    for (const canvas of document.querySelectorAll("canvas")) {
      const chart = window.Chart.getChart(canvas);
      charts[canvas.id] = chart
        ? {
            type: chart.config.type,
            height: canvas.height,
            datasets: chart.data.datasets.map((d) => ({ label: d.label, points: d.data.length, data: d.data })),
            labels: chart.data.labels || [],
          }
        : null;
    }
    return {
      requests: text("n-requests"),
      tokens: text("n-tokens"),
      errors: text("n-errors"),
      cost: text("n-cost"),
      targets: {
        availability: tile("target-availability"),
        latency: tile("target-latency"),
        cache: tile("target-cache"),
      },
      charts,
    };
  });
  await page.screenshot({ path: SCREENSHOT, fullPage: true });
  console.log(JSON.stringify({ loginShown, errors, shown }));
} finally {
  await browser.close();
}
