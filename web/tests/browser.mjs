// The dashboard in headless Chromium (Debian's `chromium`, driven by playwright-core; no
// Playwright browser download), against a running suho:
//
//   node web/tests/browser.mjs <base-url> [artifacts-dir]
//
// The browser is $SUHO_CHROMIUM, else /usr/bin/chromium. Screenshots go to the artifacts
// directory (default target/browser-artifacts). Exit status 0 when every scenario passed.
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

const base = process.argv[2];
const artifacts = process.argv[3] ?? "target/browser-artifacts";
if (!base) {
  console.error("usage: node web/tests/browser.mjs <base-url> [artifacts-dir]");
  process.exit(2);
}
mkdirSync(artifacts, { recursive: true });
const executablePath = process.env.SUHO_CHROMIUM || "/usr/bin/chromium";
const started = Date.now();
const log = (...a) => console.log(`[${((Date.now() - started) / 1000).toFixed(1)}s]`, ...a);
const T = 30_000;

function assert(cond, message) {
  if (!cond) throw new Error(`assertion failed: ${message}`);
}
const num = (s) => Number(String(s).replace(/[^0-9.\-]/g, ""));

async function shot(page, name) {
  const path = join(artifacts, `${name}.png`);
  await page.screenshot({ path });
  log("screenshot", path);
}

/** Registers `email`, logs in, and waits until the stream is live. */
async function signIn(page, email) {
  const response = await page.goto(base, { waitUntil: "domcontentloaded" });
  // The page runs under the gateway's policy: no inline script, no framing.
  const csp = response.headers()["content-security-policy"] ?? "";
  assert(/script-src 'self';/.test(csp) && /frame-ancestors 'none'/.test(csp), `the dashboard's CSP: ${csp}`);
  await page.fill("#email", email);
  await page.fill("#password", "correct horse battery");
  await page.click("#register");
  await page.waitForFunction(
    () => /Registered/.test(document.querySelector("#auth-error")?.textContent ?? ""),
    null,
    { timeout: T },
  );
  await page.click("#login");
  await page.waitForSelector('[data-testid="connection"][data-state="live"]', { timeout: T });
  log(email, "logged in, stream live");
}

async function bid(page, sym) {
  return page.textContent(`[data-testid="bid-${sym}"]`);
}

/** Waits until the ticket reports an outcome matching `pattern` (or a rejection); its text. */
async function ticketOutcome(page, pattern) {
  await page.waitForFunction(
    (src) => new RegExp(`${src}|Rejected`).test(document.querySelector('[data-testid="ticket-status"]')?.textContent ?? ""),
    pattern.source,
    { timeout: T },
  );
  return page.textContent('[data-testid="ticket-status"]');
}

const browser = await chromium.launch({
  executablePath,
  headless: true,
  args: ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
});
let failed = false;
const pages = [];
try {
  // ------------------------------------------------------------ user A: a whole trade
  const ctxA = await browser.newContext({ viewport: { width: 1440, height: 900 } });
  const a = await ctxA.newPage();
  pages.push(["a", a]);
  a.on("pageerror", (e) => { log("page error (A):", e.message); failed = true; });
  a.on("console", (m) => { if (/Content.Security.Policy/i.test(m.text())) { log("CSP violation (A):", m.text()); failed = true; } });
  const stamp = Date.now();
  await signIn(a, `browser-a-${stamp}@example.com`);

  // Prices move: EURUSD's bid shows a price, then another.
  await a.waitForFunction(() => /\d\.\d{5}/.test(document.querySelector('[data-testid="bid-EURUSD"]')?.textContent ?? ""), null, { timeout: T });
  const first = await bid(a, "EURUSD");
  await a.waitForFunction((f) => document.querySelector('[data-testid="bid-EURUSD"]')?.textContent !== f, first, { timeout: T });
  log("EURUSD moved:", first, "->", await bid(a, "EURUSD"));
  // The chart drew (a canvas from lightweight-charts, with candles from /ws).
  await a.waitForFunction(() => window.suho && document.querySelector("#chart canvas"), null, { timeout: T });

  // A bad order: the API's 422 names the field, and the ticket shows it under that field.
  await a.fill("#t-volume", "0.123");
  await a.click('[data-testid="buy"]');
  await a.waitForFunction(() => (document.querySelector('[data-err="volume"]')?.textContent ?? "").length > 0, null, { timeout: T });
  log("invalid volume:", await a.textContent('[data-err="volume"]'));
  assert(await a.$eval("#t-volume", (e) => e.classList.contains("invalid")), "the volume field is marked invalid");

  // A good one: filled, a position with live profit, the account's margin in use.
  await a.fill("#t-volume", "0.10");
  await a.click('[data-testid="buy"]');
  const filled = await ticketOutcome(a, /Filled/);
  log("order:", filled);
  assert(/Filled BUY 0.1 EURUSD/.test(filled), `the ticket reports the fill, got: ${filled}`);
  await a.waitForSelector('[data-testid="position"]', { timeout: T });
  await a.waitForFunction(() => /\d/.test(document.querySelector('[data-testid="position"] [data-testid="profit"]')?.textContent ?? ""), null, { timeout: T });
  await a.waitForFunction(() => Number((document.querySelector('[data-testid="margin"]')?.textContent ?? "0").replace(/,/g, "")) > 0, null, { timeout: T });
  const balanceOpen = num(await a.textContent('[data-testid="balance"]'));
  const margin = num(await a.textContent('[data-testid="margin"]'));
  const free = num(await a.textContent('[data-testid="free-margin"]'));
  log("with the trade open: balance", balanceOpen, "margin", margin, "free margin", free);
  assert(balanceOpen > 0 && margin > 0, "balance and margin shown");
  assert(free < balanceOpen + 50, "free margin is reduced by the margin in use");
  assert((await a.$$('[data-testid="position"]')).length === 1, "one open position");

  // Stops on the open position: a stop that is not a price is refused by the API, naming the
  // field; then a stop loss and a take profit either side of the market are set.
  await a.click('[data-testid="position"] [data-testid="modify"]');
  await a.fill('[data-testid="edit-stop_loss"]', "abc");
  await a.click('[data-testid="position"] [data-testid="save"]');
  await a.waitForFunction(() => document.querySelector('[data-testid="edit-stop_loss"]')?.classList.contains("invalid"), null, { timeout: T });
  log("invalid stop loss:", await a.textContent('[data-testid="ticket-status"]'));
  const bidNow = num(await bid(a, "EURUSD"));
  const sl = (bidNow - 0.005).toFixed(5);
  const tp = (bidNow + 0.005).toFixed(5);
  await a.fill('[data-testid="edit-stop_loss"]', sl);
  await a.fill('[data-testid="edit-take_profit"]', tp);
  await a.click('[data-testid="position"] [data-testid="save"]');
  const modified = await ticketOutcome(a, /Modified/);
  log("modify:", modified);
  assert(/Modified/.test(modified), `the ticket reports the modification, got: ${modified}`);
  await a.waitForFunction(
    ([sl, tp]) => { const t = document.querySelector('[data-testid="position"]')?.textContent ?? ""; return t.includes(sl) && t.includes(tp); },
    [sl, tp],
    { timeout: T },
  );

  // Another timeframe: the chart reloads its history at 5m and draws the forming 5m candle
  // from the stream; then back to 1m.
  for (const tf of ["5m", "1m"]) {
    await a.click(`[data-testid="timeframes"] button[data-tf="${tf}"]`);
    await a.waitForFunction(
      (tf) => window.suho.state.tf === tf && document.querySelector("#tf button.on")?.textContent === tf && window.suho.bars() > 0,
      tf,
      { timeout: T },
    );
    log(`chart at ${tf}:`, await a.evaluate(() => window.suho.bars()), "bars");
  }
  await a.waitForTimeout(1500); // a few more ticks, so the screenshot shows a moving profit
  await shot(a, "dashboard-trade-open");

  // The stream recovers by itself after a drop, and resumes from its positions: an order
  // filled while it was down still shows up, though the page reloads nothing.
  await a.evaluate(() => window.suho.dropFor(3000));
  await a.waitForSelector('[data-testid="connection"][data-state="reconnecting"]', { timeout: T });
  const offline = await a.evaluate(async () => {
    const s = window.suho.state.session;
    const r = await fetch("/api/trade/open", {
      method: "POST",
      headers: { authorization: `Bearer ${s.token}`, "content-type": "application/json" },
      body: JSON.stringify({ symbol: "EURUSD", type: "SELL", volume: 0.05 }),
    });
    return r.status;
  });
  assert(offline === 202, `the order sent while offline is queued (${offline})`);
  await a.waitForSelector('[data-testid="connection"][data-state="live"]', { timeout: T });
  await a.waitForFunction(() => document.querySelectorAll('[data-testid="position"]').length === 2, null, { timeout: T });
  log("reconnected; the fill made while offline arrived through the resume");

  // Close both: the positions go, the margin is released, the balance moves by the profits.
  await a.click('[data-testid="position"] [data-testid="close"]');
  const closed = await ticketOutcome(a, /Closed/);
  log("close:", closed);
  assert(/Closed/.test(closed), `the ticket reports the close, got: ${closed}`);
  await a.waitForFunction(() => document.querySelectorAll('[data-testid="position"]').length === 1, null, { timeout: T });
  await a.click('[data-testid="position"] [data-testid="close"]');
  await a.waitForFunction(() => document.querySelectorAll('[data-testid="position"]').length === 0, null, { timeout: T });
  await a.waitForFunction(() => (document.querySelector('[data-testid="margin"]')?.textContent ?? "") === "0.00", null, { timeout: T });
  const profits = await a.evaluate(() => window.suho.state.history.filter((e) => e.event_type === "TRADE_CLOSED").map((e) => Number(e.profit)));
  const profit = profits.reduce((x, y) => x + y, 0);
  const balanceAfter = num(await a.textContent('[data-testid="balance"]'));
  log("closed with profits", profits, "balance now", balanceAfter);
  assert(profits.length === 2 && Number.isFinite(profit), "both closes carry the realised profit");
  assert(Math.abs(balanceAfter - (balanceOpen + profit)) < 0.005, `balance ${balanceAfter} = ${balanceOpen} + ${profit}`);
  await a.click("#tab-history");
  await a.waitForFunction(() => /TRADE_CLOSED/.test(document.querySelector('[data-testid="blotter"]')?.textContent ?? ""), null, { timeout: T });
  await shot(a, "dashboard-after-close");
  await a.click("#tab-positions");

  // Money in and out: a deposit raises the balance by its amount, an amount in fractions of
  // a cent is refused by the API, a withdrawal beyond the free margin by the engine.
  await a.fill("#f-amount", "12.345");
  await a.click('[data-testid="deposit"]');
  await a.waitForFunction(() => (document.querySelector('#funds [data-err="amount"]')?.textContent ?? "").length > 0, null, { timeout: T });
  log("invalid amount:", await a.textContent('#funds [data-err="amount"]'));
  await a.fill("#f-amount", "1000.50");
  await a.click('[data-testid="deposit"]');
  await a.waitForFunction(() => /Deposited|Rejected/.test(document.querySelector('[data-testid="funds-status"]')?.textContent ?? ""), null, { timeout: T });
  const deposited = await a.textContent('[data-testid="funds-status"]');
  log("deposit:", deposited);
  assert(/Deposited 1,000.50/.test(deposited), `the deposit is confirmed, got: ${deposited}`);
  await a.waitForFunction(
    (want) => Math.abs(Number((document.querySelector('[data-testid="balance"]')?.textContent ?? "").replace(/[^0-9.\-]/g, "")) - want) < 0.005,
    balanceAfter + 1000.5,
    { timeout: T },
  );
  await a.fill("#f-amount", "900000000");
  await a.click('[data-testid="withdraw"]');
  await a.waitForFunction(() => /Withdrew|Rejected/.test(document.querySelector('[data-testid="funds-status"]')?.textContent ?? ""), null, { timeout: T });
  const refused = await a.textContent('[data-testid="funds-status"]');
  log("withdrawal beyond free margin:", refused);
  assert(/Rejected/.test(refused), `the withdrawal is rejected, got: ${refused}`);

  // ------------------------------------------------------------ user B beside A
  const ctxB = await browser.newContext({ viewport: { width: 1440, height: 900 } });
  const b = await ctxB.newPage();
  pages.push(["b", b]);
  b.on("pageerror", (e) => { log("page error (B):", e.message); failed = true; });
  b.on("console", (m) => { if (/Content.Security.Policy/i.test(m.text())) { log("CSP violation (B):", m.text()); failed = true; } });
  await signIn(b, `browser-b-${stamp}@example.com`);

  // A trades again, while B watches the same market.
  await a.selectOption("#t-symbol", "GBPUSD");
  await a.fill("#t-volume", "0.20");
  await a.click('[data-testid="sell"]');
  const second = await ticketOutcome(a, /Filled SELL/);
  assert(/Filled SELL 0.2 GBPUSD/.test(second), `A's second fill, got: ${second}`);
  await a.waitForSelector('[data-testid="position"]', { timeout: T });
  // Give B's stream every chance to (wrongly) show it.
  await b.waitForTimeout(2000);
  const bState = await b.evaluate(() => ({
    positions: window.suho.state.positions.size,
    history: window.suho.state.history.length,
    account: window.suho.state.account,
  }));
  log("B sees:", JSON.stringify(bState));
  assert(bState.positions === 0 && bState.history === 0 && bState.account === null, "B sees none of A's events");
  assert((await b.$$('[data-testid="position"]')).length === 0, "no position rows for B");
  assert(/\d\.\d{5}/.test(await bid(b, "EURUSD")), "B sees the market");
  await shot(a, "two-users-a");
  await shot(b, "two-users-b");

  // A risk alert cannot be missed: B's order over the default 10-lot limit is rejected by the
  // engine with a RISK_LIMIT_BREACH, shown in a banner; A's dashboard shows none.
  await b.fill("#t-volume", "20");
  await b.click('[data-testid="buy"]');
  const rejected = await ticketOutcome(b, /Rejected/);
  log("B's oversized order:", rejected);
  assert(/Rejected/.test(rejected), `B's order is rejected, got: ${rejected}`);
  await b.waitForSelector('[data-testid="risk-banner"]:not(.hidden)', { timeout: T });
  const banner = await b.textContent('[data-testid="risk-banner"]');
  log("B's banner:", banner.trim());
  assert(/RISK_LIMIT_BREACH/.test(banner), "the banner names the alert");
  await shot(b, "risk-alert-b");
  assert(await a.$eval('[data-testid="risk-banner"]', (e) => e.classList.contains("hidden")), "A sees no alert of B's");
  log("PASS: every browser scenario");
} catch (e) {
  failed = true;
  console.error("FAIL:", e?.stack ?? e);
  for (const [name, page] of pages) {
    await shot(page, `failure-${name}`).catch(() => undefined);
  }
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
