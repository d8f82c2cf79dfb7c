// The dashboard in headless Chromium (Debian's `chromium`, driven by playwright-core; no
// Playwright browser download), against a running suho:
//
//   node web/tests/browser.mjs <base-url> [artifacts-dir]
//
// The browser is $SUHO_CHROMIUM, else /usr/bin/chromium. Screenshots go to the artifacts
// directory (default target/browser-artifacts). Exit status 0 when every scenario passed.
//
// Prices come from the platform's synthetic feed (a seeded random walk, 30 ticks a second per
// pair): nothing here sets them, so what needs the market to come to a price either moves
// the price to the market (a limit replaced a pipette under the ask) or waits for either of
// two chances (a trailing stop on each side of the market).
import { chromium } from "playwright-core";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { GENERATED, SAVED, generate, serialize } from "../scripts/gen-api.mjs";

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

// The dashboard's types cannot drift from the API: the checked-in src/api.gen.ts and
// openapi.json are what `npm run gen:api` makes of this server's document.
let failed = false;
{
  const served = await (await fetch(`${base}/api/openapi.json`)).json();
  const want = await generate(served);
  const typesOk = readFileSync(GENERATED, "utf8") === want;
  const docOk = readFileSync(SAVED, "utf8") === serialize(served);
  if (typesOk && docOk) log("web/src/api.gen.ts and web/openapi.json match the served /api/openapi.json");
  else {
    failed = true;
    const at = join(artifacts, "openapi.json");
    writeFileSync(at, serialize(served));
    writeFileSync(join(artifacts, "api.gen.ts"), want);
    console.error(`FAIL: ${typesOk ? "" : "web/src/api.gen.ts "}${docOk ? "" : "web/openapi.json "}differ from what the server's /api/openapi.json gives; `
      + `regenerate with: (cd web && npm run gen:api -- --from ${at})`);
  }
}

const browser = await chromium.launch({
  executablePath,
  headless: true,
  args: ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
});
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
  // The account is there from registration, before any order, with its opening balance.
  await a.waitForFunction(() => /10,000\.00/.test(document.querySelector('[data-testid="balance"]')?.textContent ?? ""), null, { timeout: T });
  log("opening balance:", await a.textContent('[data-testid="balance"]'));

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
  // B's own account opened at its registration: its history is that opening, its status
  // its own, nothing of A's.
  const bState = await b.evaluate(() => ({
    me: window.suho.state.session?.userId,
    positions: window.suho.state.positions.size,
    history: window.suho.state.history.map((e) => [e.user_id, e.event_type]),
    account: window.suho.state.account && {
      user_id: window.suho.state.account.user_id,
      open_positions: window.suho.state.account.open_positions,
    },
  }));
  log("B sees:", JSON.stringify(bState));
  assert(
    bState.positions === 0
      && bState.history.every(([user, type]) => user === bState.me && type === "ACCOUNT_OPENED")
      && (bState.account === null || (bState.account.user_id === bState.me && bState.account.open_positions === 0)),
    "B sees none of A's events",
  );
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

  // ------------------------------------------------------------ user C: pending orders, partial close, trailing stops
  const ctxC = await browser.newContext({ viewport: { width: 1600, height: 1000 } });
  const c = await ctxC.newPage();
  pages.push(["c", c]);
  c.on("pageerror", (e) => { log("page error (C):", e.message); failed = true; });
  c.on("console", (m) => { if (/Content.Security.Policy/i.test(m.text())) { log("CSP violation (C):", m.text()); failed = true; } });
  await signIn(c, `browser-c-${stamp}@example.com`);
  await c.waitForFunction(() => /\d\.\d{5}/.test(document.querySelector("#buy-px")?.textContent ?? ""), null, { timeout: T });
  const ask = async () => num(await c.textContent("#buy-px"));
  const bidC = async () => num(await c.textContent("#sell-px"));
  const count = (sel) => c.evaluate((sel) => document.querySelectorAll(sel).length, sel);

  // The ticket offers the pending kinds: a limit shows its price field, and the times in
  // force of a pending order (a market order's are IOC and FOK).
  assert(JSON.stringify(await c.$$eval('[data-testid="time-in-force"] option', (o) => o.map((x) => x.value))) === '["IOC","FOK"]', "a market order's times in force");
  await c.selectOption('[data-testid="order-type"]', "LIMIT");
  assert(await c.isVisible('[data-testid="limit-price"]') && !(await c.isVisible('[data-testid="stop-price"]')), "a limit shows its limit price only");
  assert(JSON.stringify(await c.$$eval('[data-testid="time-in-force"] option', (o) => o.map((x) => x.value))) === '["GTC","DAY","GTD"]', "a pending order's times in force");

  // A BUY LIMIT above the ask would fill at once: the engine refuses it, and the reason shows
  // on the limit price.
  await c.fill("#t-volume", "0.10");
  await c.fill('[data-testid="limit-price"]', ((await ask()) + 0.005).toFixed(5));
  await c.click('[data-testid="buy"]');
  const refusedLimit = await ticketOutcome(c, /Placed/);
  log("buy limit above the ask:", refusedLimit);
  assert(/Rejected: .*limit_price/.test(refusedLimit), `the limit is refused naming limit_price, got: ${refusedLimit}`);
  assert(await c.$eval('[data-testid="limit-price"]', (e) => e.classList.contains("invalid")), "the limit price is marked");

  // A GTD SELL LIMIT far above the market rests with its expiry, is listed under Orders, and
  // is cancelled; the order history remembers it.
  await c.selectOption('[data-testid="time-in-force"]', "GTD");
  assert(await c.isVisible('[data-testid="expires"]'), "a GTD order shows its expiry");
  const expires = new Date(Date.now() + 2 * 3_600_000).toISOString().slice(0, 16);
  await c.fill('[data-testid="expires"]', expires);
  await c.fill('[data-testid="limit-price"]', ((await bidC()) + 0.005).toFixed(5));
  await c.click('[data-testid="sell"]');
  const placedSell = await ticketOutcome(c, /Placed SELL LIMIT/);
  log("GTD sell limit:", placedSell);
  assert(/Placed SELL LIMIT 0.1 EURUSD @ [\d.]+ · GTD/.test(placedSell), `the sell limit rests, got: ${placedSell}`);
  await c.click('[data-testid="tab-orders"]');
  await c.waitForSelector('[data-testid="order"]', { timeout: T });
  const sellRow = await c.textContent('[data-testid="order"]');
  assert(/SELL/.test(sellRow) && /Limit/.test(sellRow) && sellRow.includes(`GTD to ${expires.slice(5).replace("T", " ")}`), `the order row: ${sellRow}`);
  await c.click('[data-testid="order"] [data-testid="order-cancel"]');
  const cancelled = await ticketOutcome(c, /Cancelled/);
  log("cancel:", cancelled);
  assert(/Cancelled order/.test(cancelled), `the cancel is confirmed, got: ${cancelled}`);
  await c.waitForFunction(() => document.querySelectorAll('[data-testid="order"]').length === 0, null, { timeout: T });
  await c.click("#tab-order-history");
  await c.waitForFunction(() => /CANCELLED/.test(document.querySelector('[data-testid="order-history-row"]')?.textContent ?? ""), null, { timeout: T });
  log("the order history shows it CANCELLED");

  // A BUY LIMIT 20 pips under the ask rests. A move above the ask is refused naming
  // limit_price, and the order keeps its price; it is then moved (replace) a pipette under
  // the ask, which the feed soon reaches: it fills and opens a position. A move the market
  // overtook first is refused the same way: moved again.
  await c.selectOption('[data-testid="time-in-force"]', "GTC");
  await c.fill('[data-testid="limit-price"]', ((await ask()) - 0.002).toFixed(5));
  await c.click('[data-testid="buy"]');
  const placedBuy = await ticketOutcome(c, /Placed BUY LIMIT/);
  log("buy limit:", placedBuy);
  assert(/Placed BUY LIMIT 0.1 EURUSD @ [\d.]+ · GTC/.test(placedBuy), `the buy limit rests, got: ${placedBuy}`);
  await c.click('[data-testid="tab-orders"]');
  await c.waitForSelector('[data-testid="order"]', { timeout: T });
  await c.waitForTimeout(1000);
  assert((await count('[data-testid="order"]')) === 1 && (await count('[data-testid="position"]')) === 0, "the limit rests, no position yet");
  const orderId = await c.getAttribute('[data-testid="order"]', "data-order");
  let filledAt = null;
  for (let attempt = 1; attempt <= 8 && !filledAt; attempt++) {
    if (await c.isVisible('[data-testid="order"] [data-testid="order-modify"]')) await c.click('[data-testid="order"] [data-testid="order-modify"]');
    await c.waitForSelector('[data-testid="edit-order-limit_price"]', { timeout: T });
    const to = ((await ask()) + (attempt === 1 ? 0.001 : -0.00001)).toFixed(5);
    await c.fill('[data-testid="edit-order-limit_price"]', to);
    await c.click('[data-testid="order"] [data-testid="order-save"]');
    const moved = await ticketOutcome(c, /Replaced|filled/);
    log(`replace ${attempt} to ${to}:`, moved);
    if (/Rejected/.test(moved)) {
      assert(/limit_price/.test(moved), `a refused move names limit_price: ${moved}`);
      const kept = await c.evaluate((id) => window.suho.state.orders.get(id)?.limit_price, orderId);
      assert(kept != null && kept < num(to), `the refused move left the order's price, got ${kept}`);
      continue;
    }
    assert(attempt > 1, `a move above the ask is refused, got: ${moved}`);
    filledAt = await c.waitForFunction(
      (id) => !window.suho.state.orders.has(id) && window.suho.state.positions.size === 1 && document.querySelector('[data-testid="ticket-status"]').textContent,
      orderId,
      { timeout: 10_000 },
    ).then((h) => h.jsonValue()).catch(() => null);
  }
  assert(filledAt, "the buy limit filled");
  log("limit filled:", filledAt);
  await c.waitForFunction(() => document.querySelectorAll('[data-testid="order"]').length === 0, null, { timeout: T });
  await c.click("#tab-positions");
  await c.waitForSelector('[data-testid="position"]', { timeout: T });
  const limitTrade = await c.getAttribute('[data-testid="position"]', "data-trade");
  const row = (id) => `[data-testid="position"][data-trade="${id}"]`;

  // A partial close: 0.04 of the 0.10 closes, 0.06 stays open under the same ticket.
  await c.fill(`${row(limitTrade)} [data-testid="close-volume"]`, "0.04");
  await c.click(`${row(limitTrade)} [data-testid="close"]`);
  const partial = await ticketOutcome(c, /Closed/);
  log("partial close:", partial);
  assert(/Closed 0.04 of .* 0.06 open/.test(partial), `the partial close is confirmed, got: ${partial}`);
  await c.waitForFunction((sel) => document.querySelector(sel)?.textContent === "0.06", `${row(limitTrade)} [data-testid="volume"]`, { timeout: T });
  assert((await count('[data-testid="position"]')) === 1, "the remainder is the one position");
  await c.click("#tab-history");
  await c.waitForSelector('[data-testid="history-row"][data-event="TRADE_PARTIALLY_CLOSED"]', { timeout: T });
  const heads = await c.$$eval("#blotter-head th", (t) => t.map((x) => x.textContent));
  assert(heads.includes("Commission") && heads.includes("Swap"), `the history shows commission and swap: ${heads}`);
  await c.click("#tab-positions");

  // Trailing stops on both sides of two markets: whichever way a price goes first, a stop
  // loss follows it, a pip at a time, in its position's favour.
  await c.selectOption('[data-testid="order-type"]', "MARKET");
  await c.fill("#t-volume", "0.05");
  await c.fill('[data-testid="trailing"]', "10");
  const trailed = [];
  for (const sym of ["EURUSD", "GBPUSD"]) {
    await c.selectOption("#t-symbol", sym);
    await c.waitForFunction(() => /\d\.\d{5}/.test(document.querySelector("#buy-px")?.textContent ?? ""), null, { timeout: T });
    for (const side of ["buy", "sell"]) {
      const before = await c.evaluate(() => [...window.suho.state.positions.keys()]);
      await c.click(`[data-testid="${side}"]`);
      const f = await ticketOutcome(c, /Filled/);
      assert(/Filled/.test(f), `the trailing ${side} on ${sym} fills, got: ${f}`);
      const id = await c.waitForFunction(
        (before) => [...window.suho.state.positions.keys()].find((k) => !before.includes(k)),
        before,
        { timeout: T },
      ).then((h) => h.jsonValue());
      trailed.push(id);
    }
  }
  await c.fill('[data-testid="trailing"]', "");
  await c.selectOption("#t-symbol", "EURUSD");
  const stopsNow = () => c.evaluate((ids) => ids.map((id) => {
    const tr = document.querySelector(`[data-testid="position"][data-trade="${id}"]`);
    return tr && { id, side: tr.querySelector(".badge")?.textContent, sl: Number(tr.querySelector('[data-testid="sl"]')?.textContent), trail: tr.querySelector('[data-testid="trail"]')?.textContent };
  }), trailed);
  await c.waitForFunction((ids) => ids.every((id) => /\d/.test(document.querySelector(`[data-testid="position"][data-trade="${id}"] [data-testid="sl"]`)?.textContent ?? "")), trailed, { timeout: T });
  const startStops = await stopsNow();
  log("trailing stops start at:", JSON.stringify(startStops));
  assert(startStops.every((p) => p && p.trail === "trail 10.0" && Number.isFinite(p.sl)), "each trailing position shows its stop and its distance");
  const trailMoved = await c.waitForFunction((start) => {
    for (const p of start) {
      const sl = Number(document.querySelector(`[data-testid="position"][data-trade="${p.id}"] [data-testid="sl"]`)?.textContent);
      if (Number.isFinite(sl) && (p.side === "BUY" ? sl > p.sl : sl < p.sl)) return { ...p, now: sl };
    }
    return false;
  }, startStops, { timeout: 120_000, polling: 250 }).then((h) => h.jsonValue());
  log("a trailing stop moved:", JSON.stringify(trailMoved));

  // One source for the figures: the floating P/L is the equity less the balance, and the
  // positions' profits and swaps (from the same status) add up to it.
  await c.waitForFunction(() => [...document.querySelectorAll('[data-testid="position"] [data-testid="profit"]')].every((e) => /\d/.test(e.textContent)), null, { timeout: T });
  const fig = await c.evaluate(() => {
    const n = (s) => Number(String(s).replace(/[^0-9.\-]/g, ""));
    const t = (id) => n(document.querySelector(`[data-testid="${id}"]`)?.textContent);
    const rows = [...document.querySelectorAll('[data-testid="position"]')].map((tr) => ({
      profit: n(tr.querySelector('[data-testid="profit"]').textContent), swap: n(tr.querySelector('[data-testid="swap"]').textContent),
    }));
    return { balance: t("balance"), equity: t("equity"), floating: t("floating-pl"), rows };
  });
  const sum = fig.rows.reduce((s, r) => s + r.profit + r.swap, 0);
  log("figures:", JSON.stringify(fig), "sum of the positions", sum.toFixed(2));
  assert(Math.abs(fig.equity - fig.balance - fig.floating) < 0.011, "floating P/L = equity - balance");
  assert(Math.abs(sum - fig.floating) <= 0.005 * fig.rows.length + 0.011, `the positions add up to the floating P/L (${sum} vs ${fig.floating})`);
  await shot(c, "orders-c");
  if (!failed) log("PASS: every browser scenario");
} catch (e) {
  failed = true;
  console.error("FAIL:", e?.stack ?? e);
  for (const [name, page] of pages) {
    // What the page showed and waited for, for the reader of a failure.
    const seen = await page.evaluate(() => ({
      ticket: document.querySelector('[data-testid="ticket-status"]')?.textContent,
      connection: document.querySelector('[data-testid="connection"]')?.dataset.state,
      editing: window.suho?.state.editing,
      pending: [...(window.suho?.state.pending.keys() ?? [])],
    })).catch(() => undefined);
    log(`page ${name} at the failure:`, JSON.stringify(seen));
    await shot(page, `failure-${name}`).catch(() => undefined);
  }
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
