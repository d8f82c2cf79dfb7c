// The page's DOM: the sign-in form, the dashboard's layout, its rendering from the state
// (batched per animation frame; a panel whose HTML did not change keeps its DOM, focus and
// typed values) and the forms, read into the API's request types. It sends nothing itself:
// what the user asks for goes to the `Actions` that main.ts wires to the API.
import {
  CandlestickSeries, ColorType, createChart,
  type CandlestickData, type IChartApi, type ISeriesApi, type UTCTimestamp,
} from "lightweight-charts";
import type {
  Candle, CancelOrderRequest, CloseTradeRequest, Credentials, ModifyTradeRequest, OpenTradeRequest,
  OrderType, OrderView, ReplaceOrderRequest, Side, TimeInForce, Timeframe,
} from "./api";
import { esc, lots, money, price, short, sign, time, utcInput, when } from "./format";
import { digits, figures, isTransaction, pastOrders, spreadPips, state, type Activity, type Position, type Tab, type Where } from "./state";
import type { ConnState } from "./stream";

export const TIMEFRAMES: Timeframe[] = ["1m", "5m", "15m", "30m", "1h", "4h", "1d"];
const ORDER_TYPES: [OrderType, string][] = [["MARKET", "Market"], ["LIMIT", "Limit"], ["STOP", "Stop"], ["STOP_LIMIT", "Stop-limit"]];
/** The times in force the contract allows with each kind of order, the default first. */
const TIFS: Record<"market" | "pending", TimeInForce[]> = { market: ["IOC", "FOK"], pending: ["GTC", "DAY", "GTD"] };

export interface Actions {
  logout(): void;
  select(symbol: string): void;
  timeframe(tf: Timeframe): void;
  tab(tab: Tab): void;
  /** Starts (an id) or ends (`null`) editing a position's stops or an order's fields. */
  edit(id: string | null): void;
  open(req: OpenTradeRequest): void;
  close(req: CloseTradeRequest, button: HTMLButtonElement): void;
  modify(req: ModifyTradeRequest, button: HTMLButtonElement): void;
  cancel(req: CancelOrderRequest, button: HTMLButtonElement): void;
  replace(req: ReplaceOrderRequest, button: HTMLButtonElement): void;
  funds(kind: "deposit" | "withdraw", amount: number): void;
  /** The history a week further back. */
  earlier(): void;
}

const $ = <T extends HTMLElement = HTMLElement>(sel: string) => document.querySelector(sel) as T;
const app = () => $("#app");
const px = (sym: string, v: number | null | undefined) => price(digits(sym), v);

// ---------------------------------------------------------------- sign-in

export function showAuth(message: string, on: { login(c: Credentials): void; register(c: Credentials): void }): void {
  app().className = "";
  app().innerHTML = `
  <div class="auth">
    <form id="auth-form" autocomplete="on">
      <h1>suho<span class="up">.</span></h1>
      <div class="muted">Multi-tenant FX trading · paper account</div>
      <div class="field"><label for="email">Email</label>
        <input id="email" name="email" type="email" required autocomplete="username" /></div>
      <div class="field"><label for="password">Password</label>
        <input id="password" name="password" type="password" required minlength="8" autocomplete="current-password" /></div>
      <div class="error" id="auth-error" data-testid="auth-error">${esc(message)}</div>
      <div class="row">
        <button type="submit" class="primary" id="login">Log in</button>
        <button type="button" id="register">Register</button>
      </div>
    </form>
  </div>`;
  const form = $<HTMLFormElement>("#auth-form");
  const creds = (): Credentials => ({ email: $<HTMLInputElement>("#email").value.trim(), password: $<HTMLInputElement>("#password").value });
  form.addEventListener("submit", (ev) => { ev.preventDefault(); on.login(creds()); });
  $("#register").addEventListener("click", () => { if (form.reportValidity()) on.register(creds()); });
}

export function authMessage(text: string, ok = false): void {
  const e = document.getElementById("auth-error");
  if (e) { e.textContent = text; e.className = ok ? "ok" : "error"; }
}

// ---------------------------------------------------------------- the dashboard's layout

let chart: IChartApi | null = null;
let series: ISeriesApi<"Candlestick"> | null = null;
let lastBar = 0;

export function showDashboard(email: string, act: Actions): void {
  app().className = "";
  app().innerHTML = `
  <header class="top">
    <div class="brand">suho<span>.</span></div>
    <span class="conn connecting" id="conn" data-testid="connection">Connecting</span>
    <div class="spacer"></div>
    <span class="muted" data-testid="user-email">${esc(email)}</span>
    <button class="small" id="logout">Log out</button>
  </header>
  <div class="banner hidden" id="risk-banner" role="alert" data-testid="risk-banner">
    <span class="icon">⚠</span><span id="risk-text"></span><div class="spacer"></div>
    <button class="small" id="risk-dismiss">Dismiss</button>
  </div>
  <main class="grid">
    <section class="panel watch"><h2>Watchlist</h2>
      <div class="body"><table class="quotes"><thead><tr><th>Symbol</th><th class="r">Bid</th><th class="r">Ask</th><th class="r">Spr</th></tr></thead>
      <tbody id="quotes" data-testid="quotes"></tbody></table></div></section>
    <section class="panel chart"><h2><span class="sym" id="chart-sym"></span>
      <div class="tabs tf" id="tf" data-testid="timeframes">${TIMEFRAMES.map((t) => `<button data-tf="${t}">${t}</button>`).join("")}</div>
      <span class="px num" id="chart-px"></span></h2><div id="chart" data-testid="chart"></div></section>
    <aside class="side">
      <section class="panel"><h2>Account <span class="spacer"></span><span class="num asof" id="as-of" data-testid="as-of"></span></h2>
        <div class="body"><dl class="kv num" id="account" data-testid="account"></dl>
        <form class="funds" id="funds" novalidate>
          <div class="field"><label for="f-amount">Amount</label><input id="f-amount" class="num" placeholder="e.g. 1000.00" inputmode="decimal" />
            <div class="error" data-err="amount"></div></div>
          <div class="two">
            <button type="button" id="deposit" data-testid="deposit">Deposit</button>
            <button type="button" id="withdraw" data-testid="withdraw">Withdraw</button>
          </div>
          <div class="status" id="funds-status" data-testid="funds-status"></div>
        </form></div></section>
      <section class="panel ticket"><h2>Order ticket</h2><div class="body">${ticketHtml()}</div></section>
    </aside>
    <section class="panel signals"><h2>Signals</h2><div class="body"><ul class="feed" id="signals" data-testid="signals"></ul></div></section>
    <section class="panel blotter"><h2><div class="tabs" id="tabs">
        <button data-tab="positions" id="tab-positions">Positions <span id="pos-count"></span></button>
        <button data-tab="orders" id="tab-orders" data-testid="tab-orders">Orders <span id="ord-count"></span></button>
        <button data-tab="history" id="tab-history">History</button>
        <button data-tab="order-history" id="tab-order-history">Order history</button></div>
        <span class="spacer"></span><span class="num" id="floating" data-testid="floating"></span></h2>
      <div class="body"><table><thead id="blotter-head"></thead><tbody id="blotter" data-testid="blotter"></tbody></table>
        <div id="blotter-foot"></div></div></section>
  </main>`;
  $("#logout").addEventListener("click", () => act.logout());
  $("#risk-dismiss").addEventListener("click", () => { $("#risk-banner").classList.add("hidden"); document.body.classList.remove("with-banner"); });
  $("#buy").addEventListener("click", () => { const r = readTicket("BUY"); if (r) act.open(r); });
  $("#sell").addEventListener("click", () => { const r = readTicket("SELL"); if (r) act.open(r); });
  $("#t-symbol").addEventListener("change", () => act.select($<HTMLSelectElement>("#t-symbol").value));
  $("#t-type").addEventListener("change", ticketFields);
  $("#t-tif").addEventListener("change", ticketFields);
  $("#tabs").addEventListener("click", (ev) => {
    const b = (ev.target as HTMLElement).closest<HTMLButtonElement>("button[data-tab]");
    if (b) act.tab(b.dataset.tab as Tab);
  });
  $("#deposit").addEventListener("click", () => { const a = readAmount(); if (a !== undefined) act.funds("deposit", a); });
  $("#withdraw").addEventListener("click", () => { const a = readAmount(); if (a !== undefined) act.funds("withdraw", a); });
  $("#tf").addEventListener("click", (ev) => {
    const b = (ev.target as HTMLElement).closest<HTMLButtonElement>("button[data-tf]");
    if (b && b.dataset.tf !== state.tf) act.timeframe(b.dataset.tf as Timeframe);
  });
  $("#blotter").addEventListener("click", (ev) => blotterClick(ev, act));
  $("#blotter").addEventListener("keydown", (ev) => {
    const input = ev.target as HTMLElement;
    if (!(input instanceof HTMLInputElement) || !state.editing) return;
    if (ev.key === "Enter") document.querySelector<HTMLButtonElement>(`[data-key="${CSS.escape(state.editing)}"] button[data-save]`)?.click();
    else if (ev.key === "Escape") act.edit(null);
  });
  $("#blotter-foot").addEventListener("click", (ev) => { if ((ev.target as HTMLElement).closest("#earlier")) act.earlier(); });
  $("#quotes").addEventListener("click", (ev) => {
    const tr = (ev.target as HTMLElement).closest<HTMLElement>("tr[data-sym]");
    if (tr) act.select(tr.dataset.sym!);
  });
  makeChart();
  ticketFields();
}

function ticketHtml(): string {
  const err = (f: string) => `<div class="error" data-err="${f}"></div>`;
  return `
  <form id="ticket" novalidate>
    <div class="two">
      <div class="field"><label for="t-symbol">Symbol</label><select id="t-symbol">${[...state.symbols.keys()].map((p) => `<option>${p}</option>`).join("")}</select>${err("symbol")}</div>
      <div class="field"><label for="t-type">Order type</label><select id="t-type" data-testid="order-type">${ORDER_TYPES.map(([v, l]) => `<option value="${v}">${l}</option>`).join("")}</select>${err("order_type")}</div>
    </div>
    <div class="two">
      <div class="field"><label for="t-volume">Volume (lots)</label><input id="t-volume" class="num" value="0.10" inputmode="decimal" />${err("volume")}</div>
      <div class="field"><label for="t-tif">Time in force</label><select id="t-tif" data-testid="time-in-force"></select>${err("time_in_force")}</div>
    </div>
    <div class="two">
      <div class="field" data-for="LIMIT STOP_LIMIT"><label for="t-limit">Limit price</label><input id="t-limit" class="num" inputmode="decimal" data-testid="limit-price" />${err("limit_price")}</div>
      <div class="field" data-for="STOP STOP_LIMIT"><label for="t-stop">Stop price</label><input id="t-stop" class="num" inputmode="decimal" data-testid="stop-price" />${err("stop_price")}</div>
    </div>
    <div class="field" data-for="GTD"><label for="t-expires">Expires (UTC)</label><input id="t-expires" type="datetime-local" data-testid="expires" />${err("expires_at")}</div>
    <div class="two">
      <div class="field"><label for="t-sl">Stop loss</label><input id="t-sl" class="num" placeholder="optional" inputmode="decimal" />${err("stop_loss")}</div>
      <div class="field"><label for="t-tp">Take profit</label><input id="t-tp" class="num" placeholder="optional" inputmode="decimal" />${err("take_profit")}</div>
    </div>
    <div class="field"><label for="t-trail">Trailing stop (pips)</label><input id="t-trail" class="num" placeholder="optional" inputmode="decimal" data-testid="trailing" />${err("trailing_stop_pips")}</div>
    <div class="sides">
      <button type="button" class="sell" id="sell" data-testid="sell">SELL<small class="num" id="sell-px">—</small></button>
      <button type="button" class="buy" id="buy" data-testid="buy">BUY<small class="num" id="buy-px">—</small></button>
    </div>
    <div class="status" id="ticket-status" data-testid="ticket-status"></div>
  </form>`;
}

/** Shows the ticket's fields for its order type and time in force, and the times in force
 * that type allows. */
function ticketFields(): void {
  const type = $<HTMLSelectElement>("#t-type").value as OrderType;
  const tif = $<HTMLSelectElement>("#t-tif");
  const allowed = TIFS[type === "MARKET" ? "market" : "pending"];
  if ([...tif.options].map((o) => o.value).join() !== allowed.join()) {
    const was = tif.value as TimeInForce;
    tif.innerHTML = allowed.map((t) => `<option>${t}</option>`).join("");
    tif.value = allowed.includes(was) ? was : allowed[0];
  }
  const on = new Set([type, tif.value]);
  document.querySelectorAll<HTMLElement>("#ticket [data-for]").forEach((f) => {
    f.classList.toggle("hidden", !f.dataset.for!.split(" ").some((k) => on.has(k)));
  });
  const expires = $<HTMLInputElement>("#t-expires");
  if (tif.value === "GTD" && !expires.value) expires.value = utcInput(Date.now() + 3_600_000);
}

// ---------------------------------------------------------------- reading forms

/** An input that is not a number: the field's error, shown before anything is sent. */
const BAD = Symbol("bad");

/** The number typed into `input` (`undefined` when empty); `BAD` (and the field marked) when
 * it is not one. */
function numberIn(input: HTMLInputElement, field: string, scope: ParentNode): number | undefined | typeof BAD {
  const raw = input.value.trim();
  if (!raw) return undefined;
  const n = Number(raw);
  if (Number.isFinite(n)) return n;
  fieldError(scope, field, `${field} must be a number`);
  return BAD;
}

/** Clears the error marks of `scope` (a form or a row). */
export function clearErrors(scope: ParentNode): void {
  scope.querySelectorAll<HTMLElement>("[data-err]").forEach((e) => (e.textContent = ""));
  scope.querySelectorAll("input.invalid, select.invalid").forEach((e) => e.classList.remove("invalid"));
}

/** Marks `field` of `scope` invalid with `message` (under the field where it has a slot). */
export function fieldError(scope: ParentNode, field: string, message: string): boolean {
  const slot = scope.querySelector<HTMLElement>(`[data-err="${field}"]`);
  const input = scope.querySelector<HTMLElement>(`[data-field="${field}"]`) ?? slot?.parentElement?.querySelector("input, select");
  if (slot) slot.textContent = message;
  input?.classList.add("invalid");
  return Boolean(slot || input);
}

function readTicket(side: Side): OpenTradeRequest | null {
  const form = $("#ticket");
  clearErrors(form);
  const type = $<HTMLSelectElement>("#t-type").value as OrderType;
  const tif = $<HTMLSelectElement>("#t-tif").value as TimeInForce;
  const n = (id: string, field: string) => numberIn($<HTMLInputElement>(id), field, form);
  const volume = n("#t-volume", "volume");
  const limit = type === "LIMIT" || type === "STOP_LIMIT" ? n("#t-limit", "limit_price") : undefined;
  const stop = type === "STOP" || type === "STOP_LIMIT" ? n("#t-stop", "stop_price") : undefined;
  const sl = n("#t-sl", "stop_loss");
  const tp = n("#t-tp", "take_profit");
  const trail = n("#t-trail", "trailing_stop_pips");
  let expires: number | undefined;
  if (tif === "GTD") {
    const raw = $<HTMLInputElement>("#t-expires").value;
    expires = raw ? Date.parse(`${raw}:00Z`) : undefined;
    if (expires === undefined || !Number.isFinite(expires)) { fieldError(form, "expires_at", "expires_at: a GTD order needs an expiry"); return null; }
  }
  if (volume === undefined) fieldError(form, "volume", "volume is required");
  const values = [volume, limit, stop, sl, tp, trail];
  if (volume === undefined || values.includes(BAD)) { ticketStatus("error", "Check the marked fields"); return null; }
  const num = (v: number | undefined | typeof BAD) => (v === BAD ? undefined : v);
  const req: OpenTradeRequest = {
    symbol: $<HTMLSelectElement>("#t-symbol").value, type: side, volume: volume as number,
    order_type: type, time_in_force: tif, client_order_id: crypto.randomUUID(),
  };
  if (num(limit) !== undefined) req.limit_price = num(limit);
  if (num(stop) !== undefined) req.stop_price = num(stop);
  if (expires !== undefined) req.expires_at = expires;
  if (num(sl) !== undefined) req.stop_loss = num(sl);
  if (num(tp) !== undefined) req.take_profit = num(tp);
  if (num(trail) !== undefined) req.trailing_stop_pips = num(trail);
  return req;
}

function readAmount(): number | undefined {
  const form = $("#funds");
  clearErrors(form);
  const v = numberIn($<HTMLInputElement>("#f-amount"), "amount", form);
  if (v === undefined) fieldError(form, "amount", "amount is required");
  return v === BAD ? undefined : v;
}

function row(key: string): HTMLElement | null {
  return document.querySelector<HTMLElement>(`#blotter tr[data-key="${CSS.escape(key)}"]`);
}

function blotterClick(ev: MouseEvent, act: Actions): void {
  const b = (ev.target as HTMLElement).closest<HTMLButtonElement>("button");
  if (!b) return;
  const d = b.dataset;
  if (d.edit) act.edit(d.edit);
  else if (d.unedit) act.edit(null);
  else if (d.close) {
    const tr = row(d.close)!;
    clearErrors(tr);
    const v = numberIn(tr.querySelector<HTMLInputElement>("input[data-field=volume]")!, "volume", tr);
    if (v === BAD) return;
    const p = state.positions.get(d.close);
    act.close(v === undefined || (p && v === p.volume) ? { trade_id: d.close } : { trade_id: d.close, volume: v }, b);
  } else if (d.save && state.positions.has(d.save)) {
    const tr = row(d.save)!;
    clearErrors(tr);
    const req: ModifyTradeRequest = { trade_id: d.save };
    for (const i of tr.querySelectorAll<HTMLInputElement>("input[data-stop]")) {
      const v = numberIn(i, i.dataset.stop!, tr);
      if (v === BAD) { ticketStatus("error", `${i.dataset.stop} must be a price`); return; }
      if (v !== undefined) req[i.dataset.stop as "stop_loss" | "take_profit"] = v;
    }
    act.modify(req, b);
  } else if (d.save && state.orders.has(d.save)) {
    const o = state.orders.get(d.save)!;
    const tr = row(d.save)!;
    clearErrors(tr);
    const req: ReplaceOrderRequest = { order_id: o.order_id };
    for (const i of tr.querySelectorAll<HTMLInputElement>("input[data-field]")) {
      const f = i.dataset.field as "volume" | "limit_price" | "stop_price" | "stop_loss" | "take_profit" | "expires_at";
      if (f === "expires_at") {
        const at = i.value ? Date.parse(`${i.value}:00Z`) : NaN;
        if (Number.isFinite(at) && at !== o.expires_at) req.expires_at = at;
        continue;
      }
      const v = numberIn(i, f, tr);
      if (v === BAD) { ticketStatus("error", `${f} must be a number`); return; }
      if (v !== undefined && v !== o[f]) req[f] = v;
    }
    if (Object.keys(req).length === 1) { ticketStatus("muted", "Nothing to change"); return; }
    act.replace(req, b);
  } else if (d.cancel) act.cancel({ order_id: d.cancel }, b);
}

// ---------------------------------------------------------------- status lines, banner, connection

export function status(where: Where, kind: "ok" | "error" | "muted", text: string): void {
  const st = document.getElementById(where === "funds" ? "funds-status" : "ticket-status");
  if (st) { st.className = `status ${kind}`; st.textContent = text; }
}
const ticketStatus = (kind: "ok" | "error" | "muted", text: string) => status("ticket", kind, text);

/** Marks the ticket field a rejection's reason names (the engine's reasons name them). */
export function rejectedField(reason: string): void {
  const form = document.getElementById("ticket");
  if (!form) return;
  const names: [RegExp, string][] = [
    [/limit_price/, "limit_price"], [/stop_price/, "stop_price"], [/expires_at/, "expires_at"],
    [/trailing stop/, "trailing_stop_pips"], [/^stop loss/, "stop_loss"], [/^take profit/, "take_profit"], [/^volume|lots/, "volume"],
  ];
  const hit = names.find(([re]) => re.test(reason));
  if (hit) fieldError(form, hit[1], reason);
}

export function setConn(kind: ConnState, text: string): void {
  const el = document.getElementById("conn");
  if (el) { el.className = `conn ${kind}`; el.textContent = text; el.dataset.state = kind; }
}

/** A quote's age matters to a trader: the connection dims when no tick came for a while. */
export function staleness(newest: number): void {
  const el = document.getElementById("conn");
  if (!el || el.dataset.state !== "live") return;
  el.textContent = newest && Date.now() - newest > 10_000 ? "Live · no ticks" : "Live";
}

export function riskBanner(text: string): void {
  const banner = $("#risk-banner");
  if (!banner) return;
  $("#risk-text").textContent = text;
  banner.classList.remove("hidden", "flash");
  void banner.offsetWidth;
  banner.classList.add("flash");
  document.body.classList.add("with-banner");
}

// ---------------------------------------------------------------- chart

function makeChart(): void {
  chart = createChart($("#chart"), {
    autoSize: true,
    layout: { background: { type: ColorType.Solid, color: "#121722" }, textColor: "#7d889c", attributionLogo: false },
    grid: { vertLines: { color: "#1a2130" }, horzLines: { color: "#1a2130" } },
    rightPriceScale: { borderColor: "#232b3d" },
    timeScale: { borderColor: "#232b3d", timeVisible: true, secondsVisible: false, rightOffset: 6, barSpacing: 8 },
    crosshair: { mode: 0 },
  });
  series = chart.addSeries(CandlestickSeries, {
    upColor: "#26a69a", downColor: "#ef5350", borderVisible: false, wickUpColor: "#26a69a", wickDownColor: "#ef5350",
  });
}

function bar(c: Candle): CandlestickData<UTCTimestamp> {
  return { time: Math.floor(c.start / 1000) as UTCTimestamp, open: +c.open, high: +c.high, low: +c.low, close: +c.close };
}

/** Empties the chart for `sym` at the state's timeframe. */
export function chartReset(sym: string): void {
  document.querySelectorAll<HTMLButtonElement>("#tf button").forEach((b) => b.classList.toggle("on", b.dataset.tf === state.tf));
  const sel = document.querySelector<HTMLSelectElement>("#t-symbol");
  if (sel) sel.value = sym;
  $("#chart-sym").textContent = sym;
  const d = digits(sym);
  series?.applyOptions({ priceFormat: { type: "price", precision: d, minMove: 1 / 10 ** d } });
  series?.setData([]);
  lastBar = 0;
}

/** The history of candles; live ones that came while it loaded are kept. */
export function chartHistory(candles: Candle[]): void {
  const live = lastBar ? series?.data().slice(-1)[0] : undefined;
  const merged = candles.map(bar).filter((b) => !live || b.time < (live.time as number));
  if (live) merged.push(live as CandlestickData<UTCTimestamp>);
  series?.setData(merged);
  lastBar = merged.length ? (merged[merged.length - 1].time as number) : 0;
  chart?.timeScale().scrollToRealTime();
}

export function chartCandle(c: Candle): void {
  if (!series) return;
  const b = bar(c);
  if ((b.time as number) < lastBar) return;
  series.update(b);
  lastBar = b.time as number;
}

export function chartBars(): number { return series?.data().length ?? 0; }

// ---------------------------------------------------------------- rendering

const lastHtml = new WeakMap<Element, string>();
/** Sets `el`'s HTML only when it changed (an unchanged panel keeps its DOM, focus and hover). */
function setHtml(el: Element, html: string): void {
  if (lastHtml.get(el) === html) return;
  lastHtml.set(el, html);
  el.innerHTML = html;
}

interface Row { key: string; cls?: string; attrs?: Record<string, string>; cells: [string, string][] }
/** Keyed rows: a row keeps its element while its key stays, and only the cells whose HTML
 * changed are rewritten, so a button or a typed value in a row stays while data streams. */
function syncRows(tbody: HTMLElement, rows: Row[], empty: string): void {
  if (!rows.length) { setHtml(tbody, empty); return; }
  if (lastHtml.has(tbody)) { lastHtml.delete(tbody); tbody.innerHTML = ""; }
  const keep = new Set(rows.map((r) => r.key));
  for (const tr of [...tbody.children] as HTMLElement[]) if (!keep.has(tr.dataset.key ?? "")) tr.remove();
  rows.forEach((r, i) => {
    let tr = ([...tbody.children] as HTMLElement[]).find((c) => c.dataset.key === r.key) as HTMLTableRowElement | undefined;
    const attrs = Object.entries(r.attrs ?? {});
    if (tr && (tr.cells.length !== r.cells.length || attrs.some(([k, v]) => tr!.getAttribute(k) !== v))) { tr.remove(); tr = undefined; }
    if (!tr) {
      tr = document.createElement("tr");
      tr.dataset.key = r.key;
      for (const [k, v] of attrs) tr.setAttribute(k, v);
      for (let c = 0; c < r.cells.length; c++) tr.appendChild(document.createElement("td"));
    }
    tr.className = r.cls ?? "";
    r.cells.forEach(([cls, html], c) => {
      const td = tr!.children[c] as HTMLElement;
      if (td.className !== cls) td.className = cls;
      if (lastHtml.get(td) !== html) { lastHtml.set(td, html); td.innerHTML = html; }
    });
    if (tbody.children[i] !== tr) tbody.insertBefore(tr, tbody.children[i] ?? null);
  });
}

let scheduled = false;
export function schedule(): void {
  if (scheduled) return;
  scheduled = true;
  requestAnimationFrame(() => { scheduled = false; render(); });
}

const badge = (side: string | null | undefined) => (side ? `<span class="badge ${esc(side)}">${esc(side)}</span>` : "");

export function render(): void {
  if (!state.session || !document.getElementById("quotes")) return;
  renderQuotes();
  renderAccount();
  const tabs: Tab[] = ["positions", "orders", "history", "order-history"];
  for (const t of tabs) document.getElementById(`tab-${t}`)!.className = state.tab === t ? "on" : "";
  $("#pos-count").textContent = state.positions.size ? `(${state.positions.size})` : "";
  $("#ord-count").textContent = state.orders.size ? `(${state.orders.size})` : "";
  const body = $("#blotter");
  // Keyed rows and plain HTML do not mix: switching tabs starts the table afresh.
  if (body.dataset.tab !== state.tab) { body.innerHTML = ""; lastHtml.delete(body); body.dataset.tab = state.tab; }
  if (state.tab === "positions") renderPositions(body);
  else if (state.tab === "orders") renderOrders(body);
  else if (state.tab === "history") renderHistory(body);
  else renderPastOrders(body);
  setHtml($("#blotter-foot"), state.tab === "history"
    ? `<div class="foot muted">The last ${state.historyDays} days · <button class="small" id="earlier" data-testid="earlier">Earlier</button></div>` : "");
  renderSignals();
}

function renderQuotes(): void {
  const watch = state.watch.length ? state.watch : [...state.symbols.keys()].slice(0, 5);
  syncRows($("#quotes"), watch.map((sym) => {
    const q = state.quotes.get(sym);
    const dir = q ? (q.dir > 0 ? "tick-up" : q.dir < 0 ? "tick-down" : "") : "";
    const spr = spreadPips(sym);
    return {
      key: sym, cls: sym === state.selected ? "sel" : "",
      attrs: { "data-sym": sym, "data-testid": `quote-${sym}` },
      cells: [
        ["", `<b>${sym.slice(0, 3)}</b>/${sym.slice(3)}`],
        [`r num ${dir}`, `<span data-testid="bid-${sym}">${px(sym, q?.bid)}</span>`],
        [`r num ${dir}`, px(sym, q?.ask)],
        ["r num muted", spr == null ? "—" : spr.toFixed(1)],
      ],
    };
  }), "");
  const sq = state.quotes.get(state.selected);
  $("#chart-px").textContent = sq ? px(state.selected, sq.mid) : "";
  const tq = state.quotes.get(state.selected);
  $("#buy-px").textContent = px(state.selected, tq?.ask);
  $("#sell-px").textContent = px(state.selected, tq?.bid);
}

function renderAccount(): void {
  // Every figure from the one latest status (see state.ts).
  const f = figures();
  const line = (k: string, v: string, id: string, c = "") => `<dt>${k}</dt><dd class="${c}" data-testid="${id}">${v}</dd>`;
  setHtml($("#account"), f
    ? line("Balance", `${money(f.balance)} ${esc(f.currency)}`, "balance")
      + line("Equity", money(f.equity), "equity")
      + line("Floating P/L", money(f.floating), "floating-pl", sign(f.floating))
      + line("Margin", money(f.margin), "margin")
      + line("Free margin", money(f.freeMargin), "free-margin")
      + line("Margin level", f.marginLevel == null ? "—" : `${money(f.marginLevel)}%`, "margin-level", f.marginLevel != null && f.marginLevel < 200 ? "down" : "")
      + line("Open positions", String(f.openPositions), "open-positions")
    : `<dt>Balance</dt><dd data-testid="balance">—</dd><dt class="muted" style="grid-column:1/3">The paper account opens moments after registration.</dt>`);
  $("#as-of").textContent = f ? `as of ${time(f.asOf)}` : "";
  $("#as-of").title = "The engine's valuation: it comes after every command and every few seconds";
  setHtml($("#floating"), f && f.openPositions ? `<span class="${sign(f.floating)}" title="floating P/L as of ${time(f.asOf)}">${money(f.floating)}</span>` : "");
}

function renderPositions(body: HTMLElement): void {
  setHtml($("#blotter-head"), `<tr><th>Ticket</th><th>Symbol</th><th>Side</th><th class="r">Volume</th><th class="r">Open</th><th class="r">Current</th><th class="r">SL</th><th class="r">TP</th><th class="r" title="Commission">Comm.</th><th class="r">Swap</th><th class="r">Profit</th><th></th></tr>`);
  const rows = [...state.positions.values()].sort((x, y) => y.opened_at - x.opened_at).map((p): Row => ({
    key: p.trade_id, attrs: { "data-testid": "position", "data-trade": p.trade_id },
    cells: [
      ["num muted", `<span title="${esc(p.trade_id)}, opened ${when(p.opened_at)}">${esc(short(p.trade_id))}</span>`], ["", esc(p.symbol)],
      ["", badge(p.side)], ["r num", `<span data-testid="volume">${lots(p.volume)}</span>`],
      ["r num", px(p.symbol, p.open_price)], ["r num", px(p.symbol, p.current_price)],
      ...stops(p),
      ["r num muted", `<span data-testid="commission">${money(p.commission)}</span>`], ["r num muted", `<span data-testid="swap">${money(p.swap)}</span>`],
      [`r num ${sign(p.profit)}`, `<span data-testid="profit">${p.profit == null ? "…" : money(p.profit)}</span>`],
      ["r actions", state.editing === p.trade_id
        ? `<button class="small primary" data-save="${esc(p.trade_id)}" data-testid="save">Save</button><button class="small" data-unedit="1">Cancel</button>`
        : `<button class="small" data-edit="${esc(p.trade_id)}" data-testid="modify">SL/TP</button>`
          + `<input class="num vol" data-field="volume" data-testid="close-volume" placeholder="${lots(p.volume)}" title="lots to close (empty: all)" inputmode="decimal" />`
          + `<button class="small" data-close="${esc(p.trade_id)}" data-testid="close">Close</button>`],
    ],
  }));
  syncRows(body, rows, `<tr><td colspan="12" class="empty">No open positions</td></tr>`);
}

/** A position's stop loss (with its trailing distance) and take profit cells: prices, or
 * inputs while it is edited. */
function stops(p: Position): [string, string][] {
  const shown = (v: number | null) => (v != null ? px(p.symbol, v) : "");
  const trail = p.trailing_stop_pips != null
    ? ` <span class="trail" data-testid="trail" title="trailing stop: the stop loss follows the price ${p.trailing_stop_pips} pips behind">trail ${p.trailing_stop_pips.toFixed(1)}</span>` : "";
  if (state.editing !== p.trade_id) {
    return [["r num", `<span data-testid="sl">${shown(p.stop_loss) || "—"}</span>${trail}`], ["r num", `<span data-testid="tp">${shown(p.take_profit) || "—"}</span>`]];
  }
  const input = (field: string, v: number | null) =>
    `<input class="num stop" data-stop="${field}" data-field="${field}" data-testid="edit-${field}" value="${esc(shown(v))}" placeholder="—" title="empty: unchanged" inputmode="decimal" />`;
  return [["r num", input("stop_loss", p.stop_loss) + trail], ["r num", input("take_profit", p.take_profit)]];
}

function orderPrice(o: OrderView): string {
  const parts = [o.stop_price != null ? `stop ${px(o.symbol, o.stop_price)}` : "", o.limit_price != null ? `limit ${px(o.symbol, o.limit_price)}` : ""];
  return parts.filter(Boolean).join(" · ");
}
const typeName = (t: OrderType) => ORDER_TYPES.find(([v]) => v === t)?.[1] ?? t;

function renderOrders(body: HTMLElement): void {
  setHtml($("#blotter-head"), `<tr><th>Order</th><th>Placed</th><th>Symbol</th><th>Side</th><th>Type</th><th class="r">Volume</th><th class="r">Price</th><th class="r">SL</th><th class="r">TP</th><th>Time in force</th><th></th></tr>`);
  const rows = [...state.orders.values()].sort((x, y) => y.placed_at - x.placed_at).map((o): Row => {
    const editing = state.editing === o.order_id;
    const input = (field: string, v: number | null | undefined, d = digits(o.symbol)) =>
      `<input class="num stop" data-field="${field}" data-testid="edit-order-${field}" value="${v == null ? "" : v.toFixed(d)}" placeholder="—" inputmode="decimal" />`;
    const priceCell = editing
      ? [o.order_type === "STOP" || o.order_type === "STOP_LIMIT" ? input("stop_price", o.stop_price) : "",
        o.order_type === "LIMIT" || o.order_type === "STOP_LIMIT" ? input("limit_price", o.limit_price) : ""].join(" ")
      : orderPrice(o);
    const tif = editing && o.time_in_force === "GTD"
      ? `GTD <input type="datetime-local" data-field="expires_at" data-testid="edit-order-expires_at" value="${o.expires_at ? utcInput(o.expires_at) : ""}" />`
      : `${o.time_in_force}${o.expires_at ? ` <span class="muted">to ${when(o.expires_at)}</span>` : ""}`;
    return {
      key: o.order_id, attrs: { "data-testid": "order", "data-order": o.order_id },
      cells: [
        ["num muted", `<span title="${esc(o.order_id)}">${esc(short(o.order_id))}</span>`], ["num", time(o.placed_at)], ["", esc(o.symbol)],
        ["", badge(o.side)], ["", esc(typeName(o.order_type))],
        ["r num", editing ? input("volume", o.volume, 2) : lots(o.volume)],
        ["r num", `<span data-testid="order-price">${priceCell}</span>`],
        ["r num", editing ? input("stop_loss", o.stop_loss) : px(o.symbol, o.stop_loss)],
        ["r num", editing ? input("take_profit", o.take_profit) : px(o.symbol, o.take_profit)],
        ["num", tif],
        ["r actions", editing
          ? `<button class="small primary" data-save="${esc(o.order_id)}" data-testid="order-save">Save</button><button class="small" data-unedit="1">Back</button>`
          : `<button class="small" data-edit="${esc(o.order_id)}" data-testid="order-modify">Modify</button><button class="small" data-cancel="${esc(o.order_id)}" data-testid="order-cancel">Cancel</button>`],
      ],
    };
  });
  syncRows(body, rows, `<tr><td colspan="11" class="empty">No pending orders</td></tr>`);
}

function renderHistory(body: HTMLElement): void {
  setHtml($("#blotter-head"), `<tr><th>Time</th><th>Event</th><th>Symbol</th><th>Side</th><th class="r">Volume</th><th class="r">Price</th><th class="r">Profit</th><th class="r">Commission</th><th class="r">Swap</th><th>Details</th></tr>`);
  const rows = state.history.slice(0, 300).map((e: Activity) => {
    if (isTransaction(e)) {
      const after = e.balance_after != null ? ` · balance ${money(e.balance_after)}` : "";
      return `<tr data-testid="history-row"><td class="num">${time(e.timestamp)}</td><td>${esc(e.event_type)}</td><td></td><td></td><td></td><td></td>
        <td class="r num ${e.event_type === "WITHDRAWAL" ? "down" : "up"}">${money(e.event_type === "WITHDRAWAL" ? -e.amount : e.amount)}</td><td></td><td></td>
        <td class="muted">${esc(`${money(e.amount)} ${e.currency}${after}`)}</td></tr>`;
    }
    const sym = e.symbol ?? "";
    const at = e.close_price ?? e.execution_price ?? e.open_price;
    // A deal without a commission or swap field paid none.
    const cost = (v: number | null | undefined) => (v != null ? money(v) : e.event_type === "SWAP_CHARGED" ? "" : money(0));
    const volume = e.event_type === "TRADE_PARTIALLY_CLOSED" && e.remaining_volume != null
      ? `${lots(e.volume)} <span class="muted">of ${lots((e.volume ?? 0) + e.remaining_volume)}</span>` : e.volume != null ? lots(e.volume) : "";
    const detail = [e.trade_id ? short(e.trade_id) : "", e.order_id ? `order ${short(e.order_id)}` : "", e.reason ?? ""].filter(Boolean).join(" · ");
    return `<tr data-testid="history-row" data-event="${esc(e.event_type)}"><td class="num">${time(e.timestamp)}</td><td>${esc(e.event_type)}</td><td>${esc(sym)}</td>
      <td>${badge(e.action)}</td><td class="r num">${volume}</td>
      <td class="r num">${at != null && sym ? px(sym, at) : ""}</td><td class="r num ${sign(e.profit)}">${e.profit != null ? money(e.profit) : ""}</td>
      <td class="r num muted" data-testid="commission">${cost(e.commission)}</td><td class="r num muted" data-testid="swap">${cost(e.swap)}</td>
      <td class="muted">${esc(detail)}</td></tr>`;
  });
  setHtml(body, rows.join("") || `<tr><td colspan="10" class="empty">No trades yet</td></tr>`);
}

function renderPastOrders(body: HTMLElement): void {
  setHtml($("#blotter-head"), `<tr><th>Placed</th><th>Order</th><th>Symbol</th><th>Side</th><th>Type</th><th class="r">Volume</th><th class="r">Price</th><th>Time in force</th><th>Status</th></tr>`);
  const all = pastOrders();
  if (!all) { setHtml(body, `<tr><td colspan="9" class="empty">Loading…</td></tr>`); return; }
  const rows = all.slice(0, 300).map((o) =>
    `<tr data-testid="order-history-row"><td class="num">${when(o.placed_at)}</td><td class="num muted" title="${esc(o.order_id)}">${esc(short(o.order_id))}</td><td>${esc(o.symbol)}</td>
      <td>${badge(o.side)}</td><td>${esc(typeName(o.order_type))}</td><td class="r num">${lots(o.volume)}</td><td class="r num">${orderPrice(o)}</td>
      <td>${esc(o.time_in_force)}${o.expires_at ? ` <span class="muted">to ${when(o.expires_at)}</span>` : ""}</td><td data-testid="order-status">${esc(o.status)}</td></tr>`);
  setHtml(body, rows.join("") || `<tr><td colspan="9" class="empty">No orders yet</td></tr>`);
}

function renderSignals(): void {
  setHtml($("#signals"), state.signals.map((s) =>
    `<li data-testid="signal"><span class="num muted">${time(s.timestamp)}</span>${badge(s.direction)}
      <span>${esc(s.symbol)} <span class="muted">${esc(s.strategy)}</span></span><span class="num muted">${Math.round(+s.confidence * 100)}%</span></li>`,
  ).join("") || `<li class="empty" style="display:block">Waiting for the strategies' next signal…<br><small>On a fresh platform each strategy needs 20 or more closed 1m candles of a symbol (the online model about 70) before its first signal.</small></li>`);
}
