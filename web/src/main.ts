// suho's trading dashboard: the HTTP API for login, history and orders, and one WebSocket
// (/ws) for quotes, candles, signals and the user's own events (resumed from its positions
// after a reconnect, see ARCHITECTURE.md "Decisions where the contract is silent").
import "./style.css";
import {
  CandlestickSeries,
  ColorType,
  createChart,
  type CandlestickData,
  type IChartApi,
  type ISeriesApi,
  type UTCTimestamp,
} from "lightweight-charts";

// ---------------------------------------------------------------- types and state

type Json = Record<string, any>;
interface Session { token: string; userId: string; email: string; expiresAt?: number }
interface Quote { bid: number; ask: number; mid: number; ts: number; dir: number }
interface Position {
  trade_id: string; symbol: string; action: "BUY" | "SELL"; volume: number;
  open_price: number; stop_loss?: number; take_profit?: number; timestamp: number;
}

/** A pair as the server trades it (`GET /api/symbols`): the one source of the symbol list,
 * price digits and contract size. */
interface SymbolSpec {
  symbol: string; display: string; base: string; quote: string; digits: number; pip: number;
  contract_size: number; min_volume: number; max_volume: number; volume_step: number;
}
const DEFAULT_WATCH = ["EURUSD", "GBPUSD", "USDJPY", "AUDUSD", "USDCHF"];
const TIMEFRAMES = ["1m", "5m", "15m", "30m", "1h", "4h", "1d"];
/** The pairs traded here, in the server's order, loaded before the dashboard is shown. */
const symbols = new Map<string, SymbolSpec>();

const state = {
  session: null as Session | null,
  watch: [] as string[],
  followed: new Set<string>(),
  selected: "EURUSD",
  tf: "1m",
  // The position whose stops are being edited in the blotter.
  editing: null as string | null,
  quotes: new Map<string, Quote>(),
  positions: new Map<string, Position>(),
  history: [] as Json[],
  signals: [] as Json[],
  account: null as Json | null,
  // Last position per "topic:partition", for resume.
  resume: new Map<string, number>(),
  pending: new Map<string, string>(), // command_id -> which status line reports it
  // Outcomes by command_id: the stream can answer a command before its 202 reaches us.
  outcomes: new Map<string, Json>(),
  tab: "positions" as "positions" | "history",
};

const $ = <T extends HTMLElement = HTMLElement>(sel: string) => document.querySelector(sel) as T;
const app = $("#app");

function esc(s: unknown): string {
  return String(s ?? "").replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}
function digits(sym: string): number { return symbols.get(sym)?.digits ?? 5; }
function px(sym: string, v: number | undefined | null): string {
  return v == null || !Number.isFinite(v) ? "—" : v.toFixed(digits(sym));
}
function money(v: number | undefined | null): string {
  return v == null || !Number.isFinite(Number(v))
    ? "—"
    : Number(v).toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
}
function time(ms: number): string {
  return new Date(ms).toISOString().slice(11, 19);
}
function short(id: string): string { return `#${String(id).replace(/^trd_/, "").slice(0, 8)}`; }
function cls(v: number): string { return v > 0 ? "up" : v < 0 ? "down" : ""; }

// ---------------------------------------------------------------- HTTP

async function api(method: string, path: string, body?: unknown): Promise<{ status: number; data: any }> {
  const headers: Record<string, string> = {};
  if (body !== undefined) headers["content-type"] = "application/json";
  if (state.session) headers.authorization = `Bearer ${state.session.token}`;
  const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await res.text();
  let data: any = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = { message: text }; }
  if (res.status === 401 && state.session && !path.startsWith("/api/auth/")) logout(false);
  return { status: res.status, data };
}

// ---------------------------------------------------------------- auth view

function showAuth(message = "") {
  closeSocket();
  app.className = "";
  app.innerHTML = `
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
  const creds = () => ({ email: $<HTMLInputElement>("#email").value.trim(), password: $<HTMLInputElement>("#password").value });
  const err = (m: string, ok = false) => { const e = $("#auth-error"); e.textContent = m; e.className = ok ? "ok" : "error"; };
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const r = await api("POST", "/api/auth/login", creds());
    if (r.status === 200) {
      state.session = {
        token: r.data.access_token, userId: r.data.user_id, email: r.data.email,
        expiresAt: Date.now() + r.data.expires_in * 1000,
      };
      sessionStorage.setItem("suho.session", JSON.stringify(state.session));
      scheduleRefresh();
      showDashboard();
    } else err(r.data?.message ?? `login failed (${r.status})`);
  });
  $("#register").addEventListener("click", async () => {
    if (!form.reportValidity()) return;
    const r = await api("POST", "/api/auth/register", creds());
    if (r.status === 201) err("Registered. Log in to start trading.", true);
    else err(r.data?.message ?? `registration failed (${r.status})`);
  });
}

// ---------------------------------------------------------------- token refresh

let refreshTimer: number | undefined;

/** Renews the access token a minute before it expires (or at 80% of its life, if shorter),
 * and hands the new one to the open stream, so neither drops. When the server refuses (the
 * session is over), the user logs in again. */
function scheduleRefresh() {
  if (refreshTimer) clearTimeout(refreshTimer);
  refreshTimer = undefined;
  const s = state.session;
  if (!s?.expiresAt) return;
  const left = s.expiresAt - Date.now();
  const at = Math.max(1_000, Math.min(left - 60_000, left * 0.8));
  refreshTimer = window.setTimeout(refresh, at);
}

async function refresh() {
  const s = state.session;
  if (!s) return;
  const r = await api("POST", "/api/auth/refresh").catch(() => null);
  if (!r) { refreshTimer = window.setTimeout(refresh, 10_000); return; }
  if (r.status === 401 || r.status === 403) { logout(false); return; }
  if (r.status !== 200) { refreshTimer = window.setTimeout(refresh, 10_000); return; }
  s.token = r.data.access_token;
  s.expiresAt = Date.now() + r.data.expires_in * 1000;
  sessionStorage.setItem("suho.session", JSON.stringify(s));
  send({ action: "auth", token: s.token });
  scheduleRefresh();
}

async function logout(callApi = true) {
  if (refreshTimer) clearTimeout(refreshTimer);
  refreshTimer = undefined;
  if (callApi && state.session) await api("POST", "/api/auth/logout").catch(() => undefined);
  state.session = null;
  sessionStorage.removeItem("suho.session");
  resetData();
  showAuth(callApi ? "" : "Your session ended. Log in again.");
}

function resetData() {
  state.quotes.clear(); state.positions.clear(); state.history = []; state.signals = [];
  state.account = null; state.resume.clear(); state.pending.clear(); state.outcomes.clear(); state.followed.clear();
}

// ---------------------------------------------------------------- dashboard view

let chart: IChartApi | null = null;
let series: ISeriesApi<"Candlestick"> | null = null;
let lastBar = 0;

function showDashboard() {
  const s = state.session!;
  app.className = "";
  app.innerHTML = `
  <header class="top">
    <div class="brand">suho<span>.</span></div>
    <span class="conn connecting" id="conn" data-testid="connection">Connecting</span>
    <div class="spacer"></div>
    <span class="muted" data-testid="user-email">${esc(s.email)}</span>
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
      <section class="panel"><h2>Account</h2><div class="body"><dl class="kv num" id="account" data-testid="account"></dl>
        <form class="funds" id="funds" novalidate>
          <div class="field"><label for="f-amount">Amount</label><input id="f-amount" class="num" placeholder="e.g. 1000.00" inputmode="decimal" />
            <div class="error" data-err="amount"></div></div>
          <div class="two">
            <button type="button" id="deposit" data-testid="deposit">Deposit</button>
            <button type="button" id="withdraw" data-testid="withdraw">Withdraw</button>
          </div>
          <div class="status" id="funds-status" data-testid="funds-status"></div>
        </form></div></section>
      <section class="panel ticket"><h2>Order ticket</h2><div class="body">
        <form id="ticket" novalidate>
          <div class="field"><label for="t-symbol">Symbol</label><select id="t-symbol">${[...symbols.keys()].map((p) => `<option>${p}</option>`).join("")}</select></div>
          <div class="field"><label for="t-volume">Volume (lots)</label><input id="t-volume" class="num" value="0.10" inputmode="decimal" />
            <div class="error" data-err="volume"></div></div>
          <div class="two">
            <div class="field"><label for="t-sl">Stop loss</label><input id="t-sl" class="num" placeholder="optional" inputmode="decimal" /><div class="error" data-err="stop_loss"></div></div>
            <div class="field"><label for="t-tp">Take profit</label><input id="t-tp" class="num" placeholder="optional" inputmode="decimal" /><div class="error" data-err="take_profit"></div></div>
          </div>
          <div class="sides">
            <button type="button" class="sell" id="sell" data-testid="sell">SELL<small class="num" id="sell-px">—</small></button>
            <button type="button" class="buy" id="buy" data-testid="buy">BUY<small class="num" id="buy-px">—</small></button>
          </div>
          <div class="status" id="ticket-status" data-testid="ticket-status"></div>
        </form></div></section>
    </aside>
    <section class="panel signals"><h2>Signals</h2><div class="body"><ul class="feed" id="signals" data-testid="signals"></ul></div></section>
    <section class="panel blotter"><h2><div class="tabs">
        <button id="tab-positions" class="on">Positions <span id="pos-count"></span></button>
        <button id="tab-history">History</button></div>
        <span class="spacer"></span><span class="num" id="floating" data-testid="floating"></span></h2>
      <div class="body"><table><thead id="blotter-head"></thead><tbody id="blotter" data-testid="blotter"></tbody></table></div></section>
  </main>`;
  $("#logout").addEventListener("click", () => logout(true));
  $("#risk-dismiss").addEventListener("click", () => { $("#risk-banner").classList.add("hidden"); document.body.classList.remove("with-banner"); });
  $("#buy").addEventListener("click", () => order("BUY"));
  $("#sell").addEventListener("click", () => order("SELL"));
  $("#t-symbol").addEventListener("change", () => select($<HTMLSelectElement>("#t-symbol").value));
  $("#tab-positions").addEventListener("click", () => { state.tab = "positions"; render(); });
  $("#tab-history").addEventListener("click", () => { state.tab = "history"; render(); });
  $("#deposit").addEventListener("click", () => funds("deposit"));
  $("#withdraw").addEventListener("click", () => funds("withdraw"));
  $("#tf").addEventListener("click", (ev) => {
    const b = (ev.target as HTMLElement).closest("button[data-tf]") as HTMLButtonElement | null;
    if (b && b.dataset.tf !== state.tf) { state.tf = b.dataset.tf!; select(state.selected); }
  });
  $("#blotter").addEventListener("click", (ev) => {
    const b = (ev.target as HTMLElement).closest("button") as HTMLButtonElement | null;
    if (!b) return;
    if (b.dataset.close) closeTrade(b.dataset.close, b);
    else if (b.dataset.edit) { state.editing = b.dataset.edit; render(); }
    else if (b.dataset.cancel) { state.editing = null; render(); }
    else if (b.dataset.save) modifyTrade(b.dataset.save, b);
  });
  $("#blotter").addEventListener("keydown", (ev) => {
    const input = ev.target as HTMLInputElement;
    if (ev.key === "Enter" && input.dataset.stop && state.editing) {
      modifyTrade(state.editing, document.querySelector<HTMLButtonElement>(`button[data-save="${state.editing}"]`));
    } else if (ev.key === "Escape" && state.editing) { state.editing = null; render(); }
  });
  $("#quotes").addEventListener("click", (ev) => {
    const tr = (ev.target as HTMLElement).closest("tr[data-sym]") as HTMLElement | null;
    if (tr) select(tr.dataset.sym!);
  });
  makeChart();
  select(state.selected);
  loadHistory();
  loadAccount();
  connect();
  render();
}

function makeChart() {
  const el = $("#chart");
  chart = createChart(el, {
    autoSize: true,
    layout: { background: { type: ColorType.Solid, color: "#121722" }, textColor: "#7d889c", attributionLogo: false },
    grid: { vertLines: { color: "#1a2130" }, horzLines: { color: "#1a2130" } },
    rightPriceScale: { borderColor: "#232b3d" },
    timeScale: { borderColor: "#232b3d", timeVisible: true, secondsVisible: false, rightOffset: 6, barSpacing: 8 },
    crosshair: { mode: 0 },
  });
  series = chart.addSeries(CandlestickSeries, {
    upColor: "#26a69a", downColor: "#ef5350", borderVisible: false,
    wickUpColor: "#26a69a", wickDownColor: "#ef5350",
  });
}

function bar(c: Json): CandlestickData<UTCTimestamp> {
  return { time: Math.floor(c.start / 1000) as UTCTimestamp, open: +c.open, high: +c.high, low: +c.low, close: +c.close };
}

async function select(sym: string) {
  state.selected = sym;
  const tf = state.tf;
  document.querySelectorAll<HTMLButtonElement>("#tf button").forEach((b) => b.classList.toggle("on", b.dataset.tf === tf));
  const sel = $<HTMLSelectElement>("#t-symbol");
  if (sel) sel.value = sym;
  $("#chart-sym").textContent = sym;
  series?.applyOptions({ priceFormat: { type: "price", precision: digits(sym), minMove: 1 / 10 ** digits(sym) } });
  series?.setData([]);
  lastBar = 0;
  follow();
  const r = await api("GET", `/api/market/${sym}/candles?tf=${tf}&limit=300`);
  if (state.selected !== sym || state.tf !== tf || r.status !== 200 || !Array.isArray(r.data)) return;
  const bars = r.data.map(bar);
  // Live updates may have arrived while the history loaded: keep the newer.
  const live = lastBar ? series?.data().slice(-1)[0] : undefined;
  const merged = bars.filter((b: CandlestickData<UTCTimestamp>) => !live || b.time < (live.time as number));
  if (live) merged.push(live as CandlestickData<UTCTimestamp>);
  series?.setData(merged);
  lastBar = merged.length ? (merged[merged.length - 1].time as number) : 0;
  chart?.timeScale().scrollToRealTime();
  render();
}

function onCandle(c: Json) {
  if (c.symbol !== state.selected || c.timeframe !== state.tf || !series) return;
  const b = bar(c);
  if ((b.time as number) < lastBar) return;
  series.update(b);
  lastBar = b.time as number;
}

// ---------------------------------------------------------------- data from the API

async function loadHistory() {
  // The compliance query, from the beginning: open positions are those executed and not closed.
  const r = await api("GET", `/api/user/${state.session!.userId}/trades?from=0&to=${Date.now() + 60_000}`);
  if (r.status !== 200 || !Array.isArray(r.data)) return;
  const seen = new Set(state.history.map((e) => e.event_id));
  for (const e of r.data) if (!seen.has(e.event_id)) applyTrade(e, false);
  render();
}

async function loadAccount() {
  const r = await api("GET", `/api/user/${state.session!.userId}/account`);
  if (r.status === 200 && (!state.account || r.data.timestamp >= state.account.timestamp)) {
    state.account = r.data;
    render();
  }
}

// ---------------------------------------------------------------- WebSocket

let socket: WebSocket | null = null;
/** Whether the current socket has said `authenticated` (a later one answers a renewal). */
let authed = false;
let retry = 0;
let retryTimer: number | undefined;
let holdUntil = 0; // tests: stay disconnected until then

function setConn(kind: string, text: string) {
  const el = document.getElementById("conn");
  if (el) { el.className = `conn ${kind}`; el.textContent = text; el.dataset.state = kind; }
}

function closeSocket() {
  if (retryTimer) clearTimeout(retryTimer);
  retryTimer = undefined;
  if (socket) { socket.onclose = null; socket.close(1000); socket = null; }
}

function connect() {
  closeSocket();
  const s = state.session;
  if (!s) return;
  const proto = location.protocol === "https:" ? "wss" : "ws";
  let url = `${proto}://${location.host}/ws?token=${encodeURIComponent(s.token)}`;
  if (state.resume.size) {
    url += `&resume=${encodeURIComponent([...state.resume].map(([k, o]) => `${k}:${o}`).join(","))}`;
  }
  setConn(retry ? "reconnecting" : "connecting", retry ? "Reconnecting" : "Connecting");
  const ws = new WebSocket(url);
  socket = ws;
  authed = false;
  ws.onmessage = (m) => { try { onMessage(JSON.parse(m.data)); } catch (e) { console.warn("bad message", e); } };
  ws.onclose = (ev) => {
    if (socket !== ws) return;
    socket = null;
    state.followed.clear();
    if (ev.code === 1008 || ev.code === 4401) { logout(false); return; }
    retry += 1;
    const delay = Math.max(Math.min(10_000, 500 * 2 ** Math.min(retry - 1, 5)), holdUntil - Date.now());
    setConn("reconnecting", `Reconnecting in ${Math.ceil(delay / 1000)}s`);
    retryTimer = window.setTimeout(connect, delay);
  };
}

function send(msg: Json) {
  if (socket?.readyState === WebSocket.OPEN) socket.send(JSON.stringify(msg));
}

/** Follows the watchlist, the chart's symbol, the open positions' symbols and what their
 * profit converts through. */
function follow() {
  const want = new Set([...state.watch, state.selected]);
  for (const p of state.positions.values()) {
    want.add(p.symbol);
    const conv = conversion(p.symbol);
    if (conv) want.add(conv.sym);
  }
  const missing = [...want].filter((s) => !state.followed.has(s));
  if (missing.length && socket?.readyState === WebSocket.OPEN) {
    send({ action: "subscribe", symbols: missing });
    for (const m of missing) state.followed.add(m);
  }
}

function onMessage(m: Json) {
  if (m.channel === "control") {
    if (m.event === "authenticated" && authed) return; // a renewed token: nothing changes
    if (m.event === "authenticated") {
      authed = true;
      state.watch = Array.isArray(m.symbols) && m.symbols.length ? m.symbols : DEFAULT_WATCH;
      state.followed = new Set(m.symbols ?? []);
      follow();
    } else if (m.event === "ready") {
      for (const p of m.positions ?? []) remember(p);
      retry = 0;
      setConn("live", "Live");
      // Whatever happened while the socket was down and the log no longer explains (e.g. a
      // status older than the positions) comes from the API.
      loadAccount();
    } else if (m.event === "subscribed" && Array.isArray(m.symbols)) {
      state.followed = new Set(m.symbols);
    }
    return;
  }
  if (m.channel === "market") return onMarket(m.subject as string, m.data);
  if (m.channel === "user") {
    if (m.position) remember(m.position);
    onUser(m.topic, m.data);
    return;
  }
  if (m.channel === "error") console.warn("ws error", m);
}

function remember(position: string) {
  const i = position.lastIndexOf(":");
  if (i < 0) return;
  const key = position.slice(0, i);
  const offset = Number(position.slice(i + 1));
  if (!(offset <= (state.resume.get(key) ?? -Infinity))) state.resume.set(key, offset);
}

function onMarket(subject: string, d: Json) {
  const parts = subject.split(".");
  if (parts[0] === "market" && parts[2] === "tick") {
    const sym = parts[1];
    const prev = state.quotes.get(sym);
    const mid = +d.mid;
    state.quotes.set(sym, { bid: +d.bid, ask: +d.ask, mid, ts: d.timestamp, dir: prev ? Math.sign(mid - prev.mid) || prev.dir : 0 });
    schedule();
  } else if (parts[0] === "market" && parts[2] === state.tf) {
    onCandle(d);
  } else if (parts[0] === "signals") {
    state.signals.unshift(d);
    state.signals.length = Math.min(state.signals.length, 60);
    schedule();
  }
}

function onUser(topic: string, d: Json) {
  if (topic === "user.trades") applyTrade(d, true);
  else if (topic === "user.mt5_status") {
    if (!state.account || d.timestamp >= state.account.timestamp) state.account = d;
  } else if (topic === "user.risk_alerts") riskAlert(d);
  else if (topic === "user.transactions") {
    state.history.unshift({ ...d, _kind: "transaction" });
    // A deposit or withdrawal carries its command's id as `reference`.
    if (d.reference) outcome({ ...d, command_id: d.reference });
  }
  schedule();
}

function applyTrade(e: Json, live: boolean) {
  if (state.history.some((h) => h.event_id === e.event_id)) return;
  const t = e.event_type;
  if (t === "TRADE_EXECUTED" && e.trade_id) {
    state.positions.set(e.trade_id, {
      trade_id: e.trade_id, symbol: e.symbol, action: e.action, volume: +e.volume,
      open_price: +(e.open_price ?? e.execution_price), stop_loss: e.stop_loss, take_profit: e.take_profit,
      timestamp: e.timestamp,
    });
  } else if (t === "TRADE_CLOSED" && e.trade_id) {
    state.positions.delete(e.trade_id);
  } else if (t === "TRADE_PARTIALLY_CLOSED" && e.trade_id) {
    const p = state.positions.get(e.trade_id);
    if (p) p.volume = +e.remaining_volume;
  } else if (t === "TRADE_MODIFIED" && e.trade_id) {
    const p = state.positions.get(e.trade_id);
    if (p) { p.stop_loss = e.stop_loss; p.take_profit = e.take_profit; }
  }
  if (live) state.history.unshift(e); else state.history.splice(0, 0, e);
  if (!live) state.history.sort((a, b) => b.timestamp - a.timestamp);
  if (live && e.command_id) outcome(e);
  if (t === "TRADE_MODIFIED" && state.editing === e.trade_id) state.editing = null;
  follow();
}

/** Remembers the outcome of a command, and reports it if this page is waiting for it. */
function outcome(e: Json) {
  state.outcomes.set(e.command_id, e);
  if (state.outcomes.size > 200) state.outcomes.delete(state.outcomes.keys().next().value!);
  if (state.pending.has(e.command_id)) report(e);
}

/** Shows what became of a command the ticket, a position's buttons or the funds form sent. */
function report(e: Json) {
  const where = state.pending.get(e.command_id);
  state.pending.delete(e.command_id);
  const st = $(where === "funds" ? "#funds-status" : "#ticket-status");
  const t = e.event_type;
  if (t === "TRADE_REJECTED") { st.className = "status error"; st.textContent = `Rejected: ${e.reason ?? "no reason given"}`; }
  else if (t === "DEPOSIT" || t === "WITHDRAWAL") {
    st.className = "status ok";
    st.textContent = `${t === "DEPOSIT" ? "Deposited" : "Withdrew"} ${money(e.amount)} ${e.currency}${e.balance_after != null ? ` · balance ${money(e.balance_after)}` : ""}`;
  }
  else if (t === "TRADE_MODIFIED") {
    st.className = "status ok";
    st.textContent = `Modified ${short(e.trade_id)} · SL ${e.stop_loss != null ? px(e.symbol, +e.stop_loss) : "—"} · TP ${e.take_profit != null ? px(e.symbol, +e.take_profit) : "—"}`;
  }
  else if (t === "TRADE_EXECUTED") { st.className = "status ok"; st.textContent = `Filled ${e.action} ${e.volume} ${e.symbol} @ ${px(e.symbol, +e.execution_price)}`; }
  else if (t === "TRADE_CLOSED") { st.className = "status ok"; st.textContent = `Closed ${short(e.trade_id)} @ ${px(e.symbol, +e.close_price)} · P/L ${money(e.profit)}`; }
  else if (t === "TRADE_PARTIALLY_CLOSED") { st.className = "status ok"; st.textContent = `Closed ${e.volume} of ${short(e.trade_id)} @ ${px(e.symbol, +e.close_price)} · P/L ${money(e.profit)} · ${e.remaining_volume} open`; }
  else if (t === "ORDER_PLACED") { st.className = "status ok"; st.textContent = `Placed ${e.side} ${e.order_type} ${e.volume} ${e.symbol} @ ${px(e.symbol, +(e.limit_price ?? e.stop_price))} · ${e.time_in_force}`; }
  else if (t === "ORDER_CANCELLED" || t === "ORDER_REPLACED") { st.className = "status ok"; st.textContent = `${t === "ORDER_CANCELLED" ? "Cancelled" : "Replaced"} ${e.order_id}`; }
}

/** Waits for the outcome of `commandId` (which may already be known). */
function expectOutcome(commandId: string, where: "ticket" | "funds") {
  state.pending.set(commandId, where);
  const known = state.outcomes.get(commandId);
  if (known) report(known);
}

function riskAlert(d: Json) {
  const banner = $("#risk-banner");
  $("#risk-text").textContent = `${d.event_type}: ${d.message}${d.margin_level != null ? ` (margin level ${money(d.margin_level)}%)` : ""}`;
  banner.classList.remove("hidden", "flash");
  void banner.offsetWidth;
  banner.classList.add("flash");
  document.body.classList.add("with-banner");
  state.history.unshift({ ...d, _kind: "alert" });
}

// ---------------------------------------------------------------- orders

function readNumber(id: string): number | string | undefined {
  const raw = $<HTMLInputElement>(id).value.trim();
  if (!raw) return undefined;
  const n = Number(raw);
  return Number.isFinite(n) ? n : raw; // the API names the field of anything not a number
}

async function order(side: "BUY" | "SELL") {
  const st = $("#ticket-status");
  document.querySelectorAll<HTMLElement>("#ticket [data-err]").forEach((e) => (e.textContent = ""));
  document.querySelectorAll("#ticket input").forEach((e) => e.classList.remove("invalid"));
  const body: Json = { symbol: $<HTMLSelectElement>("#t-symbol").value, type: side, volume: readNumber("#t-volume") ?? "" };
  const sl = readNumber("#t-sl"); if (sl !== undefined) body.stop_loss = sl;
  const tp = readNumber("#t-tp"); if (tp !== undefined) body.take_profit = tp;
  body.client_order_id = crypto.randomUUID();
  st.className = "status muted"; st.textContent = `Sending ${side}…`;
  const r = await api("POST", "/api/trade/open", body);
  if (r.status === 202) {
    st.className = "status muted"; st.textContent = `Queued ${side} ${body.volume} ${body.symbol} · waiting for the fill`;
    expectOutcome(r.data.command_id, "ticket");
  } else {
    const field = r.data?.field as string | undefined;
    const slot = field ? document.querySelector<HTMLElement>(`#ticket [data-err="${field}"]`) : null;
    if (slot) {
      slot.textContent = r.data.message;
      slot.parentElement?.querySelector("input")?.classList.add("invalid");
    }
    st.className = "status error";
    st.textContent = r.data?.message ?? `order failed (${r.status})`;
  }
}

async function closeTrade(id: string, button: HTMLButtonElement) {
  button.disabled = true;
  const st = $("#ticket-status");
  const r = await api("POST", "/api/trade/close", { trade_id: id });
  if (r.status === 202) {
    st.className = "status muted"; st.textContent = `Closing ${short(id)}…`;
    expectOutcome(r.data.command_id, "ticket");
  } else {
    button.disabled = false;
    st.className = "status error"; st.textContent = r.data?.message ?? `close failed (${r.status})`;
  }
}

/** Sends the stops typed into an edited position's row. */
async function modifyTrade(id: string, button: HTMLButtonElement | null) {
  const st = $("#ticket-status");
  const row = document.querySelector(`[data-trade="${id}"]`);
  const inputs = row ? [...row.querySelectorAll<HTMLInputElement>("input[data-stop]")] : [];
  inputs.forEach((i) => i.classList.remove("invalid"));
  const body: Json = { trade_id: id };
  for (const i of inputs) {
    const raw = i.value.trim();
    if (raw) body[i.dataset.stop!] = Number.isFinite(Number(raw)) ? Number(raw) : raw;
  }
  if (button) button.disabled = true;
  const r = await api("POST", "/api/trade/modify", body);
  if (button) button.disabled = false;
  if (r.status === 202) {
    st.className = "status muted"; st.textContent = `Modifying ${short(id)}…`;
    expectOutcome(r.data.command_id, "ticket");
  } else {
    const field = r.data?.field as string | undefined;
    inputs.find((i) => i.dataset.stop === field)?.classList.add("invalid");
    st.className = "status error"; st.textContent = r.data?.message ?? `modify failed (${r.status})`;
  }
}

/** A deposit to, or a withdrawal from, the paper account. */
async function funds(kind: "deposit" | "withdraw") {
  const st = $("#funds-status");
  const slot = $('#funds [data-err="amount"]');
  const input = $<HTMLInputElement>("#f-amount");
  slot.textContent = ""; input.classList.remove("invalid");
  const r = await api("POST", `/api/user/${state.session!.userId}/${kind}`, { amount: readNumber("#f-amount") ?? "" });
  if (r.status === 202) {
    st.className = "status muted"; st.textContent = kind === "deposit" ? "Deposit queued…" : "Withdrawal queued…";
    expectOutcome(r.data.command_id, "funds");
  } else {
    if (r.data?.field === "amount") { slot.textContent = r.data.message; input.classList.add("invalid"); }
    st.className = "status error"; st.textContent = r.data?.message ?? `${kind} failed (${r.status})`;
  }
}

// ---------------------------------------------------------------- profit

/** How to turn the quote currency of `sym` into USD: through which pair, multiply or divide. */
function conversion(sym: string): { sym: string; mul: boolean } | null {
  const q = sym.slice(3);
  if (q === "USD") return null;
  if (symbols.has(`${q}USD`)) return { sym: `${q}USD`, mul: true };
  if (symbols.has(`USD${q}`)) return { sym: `USD${q}`, mul: false };
  return null;
}

function profit(p: Position): number | null {
  const q = state.quotes.get(p.symbol);
  if (!q) return null;
  const close = p.action === "BUY" ? q.bid : q.ask;
  const contract = symbols.get(p.symbol)?.contract_size;
  if (contract == null) return null;
  const raw = (p.action === "BUY" ? close - p.open_price : p.open_price - close) * p.volume * contract;
  const conv = conversion(p.symbol);
  if (!conv) return raw;
  const c = state.quotes.get(conv.sym);
  if (!c) return null;
  return conv.mul ? raw * c.mid : raw / c.mid;
}

// ---------------------------------------------------------------- rendering (batched per frame)

const lastHtml = new WeakMap<Element, string>();
/** Sets `el`'s HTML only when it changed (an unchanged panel keeps its DOM, focus and hover). */
function setHtml(el: Element, html: string) {
  if (lastHtml.get(el) === html) return;
  lastHtml.set(el, html);
  el.innerHTML = html;
}

interface Row { key: string; cls?: string; attrs?: Record<string, string>; cells: [string, string][] }
/** Keyed rows: a row keeps its element while its key stays, and only the cells whose HTML
 * changed are rewritten, so a button in a row stays clickable while prices stream. */
function syncRows(tbody: HTMLElement, rows: Row[], empty: string) {
  if (!rows.length) { setHtml(tbody, empty); return; }
  if (lastHtml.has(tbody)) { lastHtml.delete(tbody); tbody.innerHTML = ""; }
  const keep = new Set(rows.map((r) => r.key));
  for (const tr of [...tbody.children] as HTMLElement[]) if (!keep.has(tr.dataset.key ?? "")) tr.remove();
  rows.forEach((r, i) => {
    let tr = [...tbody.children].find((c) => (c as HTMLElement).dataset.key === r.key) as HTMLTableRowElement | undefined;
    if (!tr) {
      tr = document.createElement("tr");
      tr.dataset.key = r.key;
      for (const [k, v] of Object.entries(r.attrs ?? {})) tr.setAttribute(k, v);
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
function schedule() {
  if (scheduled) return;
  scheduled = true;
  requestAnimationFrame(() => { scheduled = false; render(); });
}

function render() {
  if (!state.session || !document.getElementById("quotes")) return;
  const watch = state.watch.length ? state.watch : DEFAULT_WATCH;
  syncRows($("#quotes"), watch.map((sym) => {
    const q = state.quotes.get(sym);
    const dir = q ? (q.dir > 0 ? "tick-up" : q.dir < 0 ? "tick-down" : "") : "";
    const spread = q ? ((q.ask - q.bid) * (sym.endsWith("JPY") ? 100 : 10_000)).toFixed(1) : "—";
    return {
      key: sym, cls: sym === state.selected ? "sel" : "",
      attrs: { "data-sym": sym, "data-testid": `quote-${sym}` },
      cells: [
        ["", `<b>${sym.slice(0, 3)}</b>/${sym.slice(3)}`],
        [`r num ${dir}`, `<span data-testid="bid-${sym}">${px(sym, q?.bid)}</span>`],
        [`r num ${dir}`, px(sym, q?.ask)],
        ["r num muted", spread],
      ],
    };
  }), "");

  const sq = state.quotes.get(state.selected);
  $("#chart-px").textContent = sq ? px(state.selected, sq.mid) : "";
  const ticketSym = $<HTMLSelectElement>("#t-symbol").value;
  const tq = state.quotes.get(ticketSym);
  $("#buy-px").textContent = px(ticketSym, tq?.ask);
  $("#sell-px").textContent = px(ticketSym, tq?.bid);

  // Account: the engine's latest status, and the floating P/L of the open positions now.
  let floating = 0;
  let known = true;
  for (const p of state.positions.values()) {
    const v = profit(p);
    if (v == null) known = false; else floating += v;
  }
  const a = state.account;
  const row = (k: string, v: string, id: string, c = "") => `<dt>${k}</dt><dd class="${c}" data-testid="${id}">${v}</dd>`;
  setHtml($("#account"), a
    ? row("Balance", `${money(a.balance)} ${esc(a.currency)}`, "balance")
      + row("Equity", money(a.equity), "equity")
      + row("Margin", money(a.margin), "margin")
      + row("Free margin", money(a.free_margin), "free-margin")
      + row("Margin level", a.margin_level == null ? "—" : `${money(a.margin_level)}%`, "margin-level",
        a.margin_level != null && +a.margin_level < 200 ? "down" : "")
      + row("Floating P/L", state.positions.size ? (known ? money(floating) : "…") : "—", "floating-pl", cls(floating))
      + row("Open positions", String(a.open_positions), "open-positions")
    : `<dt>Balance</dt><dd data-testid="balance">—</dd><dt class="muted" style="grid-column:1/3">The paper account opens with your first order.</dt>`);

  $("#pos-count").textContent = state.positions.size ? `(${state.positions.size})` : "";
  setHtml($("#floating"), state.positions.size && known ? `<span class="${cls(floating)}">${money(floating)}</span>` : "");
  $("#tab-positions").className = state.tab === "positions" ? "on" : "";
  $("#tab-history").className = state.tab === "history" ? "on" : "";
  if (state.tab === "positions") {
    setHtml($("#blotter-head"), `<tr><th>Ticket</th><th>Time</th><th>Symbol</th><th>Side</th><th class="r">Volume</th><th class="r">Open</th><th class="r">Current</th><th class="r">SL</th><th class="r">TP</th><th class="r">Profit</th><th></th></tr>`);
    const rows = [...state.positions.values()].sort((x, y) => y.timestamp - x.timestamp).map((p): Row => {
      const q = state.quotes.get(p.symbol);
      const v = profit(p);
      return {
        key: p.trade_id, attrs: { "data-testid": "position", "data-trade": p.trade_id },
        cells: [
          ["num muted", `<span title="${esc(p.trade_id)}">${esc(short(p.trade_id))}</span>`], ["num", time(p.timestamp)], ["", esc(p.symbol)],
          ["", `<span class="badge ${esc(p.action)}">${esc(p.action)}</span>`], ["r num", p.volume.toFixed(2)],
          ["r num", px(p.symbol, p.open_price)], ["r num", px(p.symbol, q ? (p.action === "BUY" ? q.bid : q.ask) : null)],
          ...stops(p),
          [`r num ${cls(v ?? 0)}`, `<span data-testid="profit">${money(v)}</span>`],
          ["r actions", state.editing === p.trade_id
            ? `<button class="small primary" data-save="${esc(p.trade_id)}" data-testid="save">Save</button><button class="small" data-cancel="1">Cancel</button>`
            : `<button class="small" data-edit="${esc(p.trade_id)}" data-testid="modify">SL/TP</button><button class="small" data-close="${esc(p.trade_id)}" data-testid="close">Close</button>`],
        ],
      };
    });
    syncRows($("#blotter"), rows, `<tr><td colspan="11" class="empty">No open positions</td></tr>`);
  } else {
    setHtml($("#blotter-head"), `<tr><th>Time</th><th>Event</th><th>Symbol</th><th>Side</th><th class="r">Volume</th><th class="r">Price</th><th class="r">Profit</th><th>Details</th></tr>`);
    const rows = state.history.slice(0, 200).map((e) => {
      const price = e.close_price ?? e.execution_price ?? e.open_price;
      const costs = [e.commission != null ? `commission ${money(e.commission)}` : "", e.swap != null ? `swap ${money(e.swap)}` : ""].filter(Boolean).join(" · ");
      const what = e.reason ?? e.message ?? (e.amount != null ? `${money(e.amount)} ${esc(e.currency)}` : (e.trade_id ? short(e.trade_id) : e.order_id ?? ""));
      const detail = [what, costs].filter(Boolean).join(" · ");
      return `<tr data-testid="history-row"><td class="num">${time(e.timestamp)}</td><td>${esc(e.event_type)}</td><td>${esc(e.symbol ?? "")}</td>
        <td>${e.action ? `<span class="badge ${esc(e.action)}">${esc(e.action)}</span>` : ""}</td><td class="r num">${e.volume ?? ""}</td>
        <td class="r num">${price != null && e.symbol ? px(e.symbol, +price) : ""}</td><td class="r num ${cls(+(e.profit ?? 0))}">${e.profit != null ? money(e.profit) : ""}</td>
        <td class="muted">${esc(detail)}</td></tr>`;
    });
    const body = $("#blotter");
    if ([...body.children].some((c) => (c as HTMLElement).dataset.key)) { body.innerHTML = ""; lastHtml.delete(body); }
    setHtml(body, rows.join("") || `<tr><td colspan="8" class="empty">No trades yet</td></tr>`);
  }

  setHtml($("#signals"), state.signals.map((s) =>
    `<li data-testid="signal"><span class="num muted">${time(s.timestamp)}</span><span class="badge ${esc(s.direction)}">${esc(s.direction)}</span>
      <span>${esc(s.symbol)} <span class="muted">${esc(s.strategy)}</span></span><span class="num muted">${Math.round(+s.confidence * 100)}%</span></li>`,
  ).join("") || `<li class="empty" style="display:block">Waiting for the strategies' next signal…<br><small>On a fresh platform each strategy needs 20 or more closed 1m candles of a symbol (the online model about 70) before its first signal.</small></li>`);
}

/** A position's stop loss and take profit cells: prices, or inputs while it is edited. */
function stops(p: Position): [string, string][] {
  const shown = (v: number | undefined) => (v != null ? px(p.symbol, +v) : "");
  if (state.editing !== p.trade_id) {
    return [["r num", shown(p.stop_loss) || "—"], ["r num", shown(p.take_profit) || "—"]];
  }
  const input = (field: string, v: number | undefined) =>
    `<input class="num stop" data-stop="${field}" data-testid="edit-${field}" value="${esc(shown(v))}" placeholder="—" title="empty: unchanged" inputmode="decimal" />`;
  return [["r num", input("stop_loss", p.stop_loss)], ["r num", input("take_profit", p.take_profit)]];
}

// ---------------------------------------------------------------- start

// A quote's age matters to a trader: dim the connection when no tick came for a while.
setInterval(() => {
  const el = document.getElementById("conn");
  if (!el || el.dataset.state !== "live") return;
  const newest = Math.max(0, ...[...state.quotes.values()].map((q) => q.ts));
  if (newest && Date.now() - newest > 10_000) el.textContent = "Live · no ticks";
  else el.textContent = "Live";
}, 2000);

const saved = sessionStorage.getItem("suho.session");
if (saved) {
  try { state.session = JSON.parse(saved); } catch { state.session = null; }
}
/** Loads the pairs traded here; retried until the server answers (nothing can be shown or
 * sized without them). */
async function loadSymbols(): Promise<void> {
  for (let wait = 500; ; wait = Math.min(wait * 2, 5000)) {
    try {
      const r = await fetch("/api/symbols");
      if (r.ok) {
        const body = (await r.json()) as { symbols: SymbolSpec[] };
        for (const spec of body.symbols) symbols.set(spec.symbol, spec);
        return;
      }
    } catch { /* the server is not up yet */ }
    await new Promise((done) => setTimeout(done, wait));
  }
}

loadSymbols().then(() => {
  if (state.session) { scheduleRefresh(); showDashboard(); } else showAuth();
});

// For the browser tests and for debugging from the console.
(window as any).suho = {
  state,
  /** The bars the chart holds. */
  bars: () => series?.data().length ?? 0,
  /** Drops the stream and stays offline for `ms` before reconnecting (with resume). */
  dropFor: (ms: number) => { holdUntil = Date.now() + ms; socket?.close(4000, "test"); },
};
