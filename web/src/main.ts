// suho's trading dashboard: wires the typed HTTP client (api.ts), the /ws stream (stream.ts),
// the page's state (state.ts), its DOM (view.ts) and the user's commands with their outcomes
// (commands.ts). Sign-in and token renewal live here.
import "./style.css";
import { Api } from "./api";
import { orderNews, outcome, send } from "./commands";
import { money, short } from "./format";
import {
  addHistory, applySignal, applyStatus, applyTick, applyTrade, asActivity, resetData, setBase, state, type Activity,
} from "./state";
import { Stream, type UserEvent } from "./stream";
import * as view from "./view";

const api = new Api(() => state.session?.token ?? null, () => logout(false));
let stream: Stream | null = null;
let historyLoaded = false;

// ---------------------------------------------------------------- session

function showAuth(message = ""): void {
  stream?.close();
  stream = null;
  view.showAuth(message, {
    login: async (creds) => {
      const r = await api.login(creds);
      if (!r.ok) { view.authMessage(r.error.message || `login failed (${r.status})`); return; }
      state.session = { token: r.data.access_token, userId: r.data.user_id, email: r.data.email, expiresAt: Date.now() + r.data.expires_in * 1000 };
      sessionStorage.setItem("suho.session", JSON.stringify(state.session));
      scheduleRefresh();
      showDashboard();
    },
    register: async (creds) => {
      const r = await api.register(creds);
      if (r.ok) view.authMessage("Registered. Log in to start trading.", true);
      else view.authMessage(r.error.message || `registration failed (${r.status})`);
    },
  });
}

let refreshTimer: number | undefined;

/** Renews the access token a minute before it expires (or at 80% of its life, if shorter),
 * and hands the new one to the open stream, so neither drops. When the server refuses (the
 * session is over), the user logs in again. */
function scheduleRefresh(): void {
  if (refreshTimer) clearTimeout(refreshTimer);
  refreshTimer = undefined;
  const s = state.session;
  if (!s?.expiresAt) return;
  const left = s.expiresAt - Date.now();
  refreshTimer = window.setTimeout(refresh, Math.max(1_000, Math.min(left - 60_000, left * 0.8)));
}

async function refresh(): Promise<void> {
  const s = state.session;
  if (!s) return;
  const r = await api.refresh();
  if (!r.ok && (r.status === 401 || r.status === 403)) { logout(false); return; }
  if (!r.ok) { refreshTimer = window.setTimeout(refresh, 10_000); return; }
  s.token = r.data.access_token;
  s.expiresAt = Date.now() + r.data.expires_in * 1000;
  sessionStorage.setItem("suho.session", JSON.stringify(s));
  stream?.renew(s.token);
  scheduleRefresh();
}

async function logout(callApi = true): Promise<void> {
  if (refreshTimer) clearTimeout(refreshTimer);
  refreshTimer = undefined;
  if (callApi && state.session) await api.logout();
  state.session = null;
  sessionStorage.removeItem("suho.session");
  resetData();
  historyLoaded = false;
  showAuth(callApi ? "" : "Your session ended. Log in again.");
}

// ---------------------------------------------------------------- the dashboard

function showDashboard(): void {
  view.showDashboard(state.session!.email, actions);
  stream = new Stream(() => state.session?.token ?? null, {
    state: view.setConn,
    authenticated: (watchlist) => {
      state.watch = watchlist.length ? watchlist : [...state.symbols.keys()].slice(0, 5);
      stream?.follow([...state.watch, state.selected]);
    },
    ready: () => {
      // What happened while the socket was down and the log no longer explains (e.g. a
      // status older than the positions) comes from the API.
      loadSnapshot();
      if (!historyLoaded) { historyLoaded = true; loadHistory(); }
    },
    market: (m) => {
      if (m.kind === "tick") applyTick(m.symbol, m.data);
      else if (m.kind === "candle") { if (m.symbol === state.selected && m.timeframe === state.tf) view.chartCandle(m.data); return; }
      else applySignal(m.data);
      view.schedule();
    },
    user: onUser,
    refused: () => logout(false),
  });
  stream.connect();
  select(state.selected);
  view.render();
}

async function select(sym: string): Promise<void> {
  state.selected = sym;
  const tf = state.tf;
  view.chartReset(sym);
  stream?.follow([sym]);
  view.render();
  const r = await api.candles(sym, tf, 300);
  if (state.selected !== sym || state.tf !== tf || !r.ok) return;
  view.chartHistory(r.data);
  view.render();
}

/** The account's latest status, positions and pending orders (all three from the audit
 * store's latest ACCOUNT_STATUS). */
async function loadSnapshot(): Promise<void> {
  const user = state.session!.userId;
  const [account, positions, orders] = await Promise.all([api.account(user), api.positions(user), api.orders(user, "open")]);
  if (!state.session || state.session.userId !== user) return;
  if (account.ok) applyStatus(account.data);
  if (positions.ok && orders.ok && positions.data.as_of != null) setBase(positions.data.positions, orders.data.orders, positions.data.as_of);
  view.schedule();
}

/** The account's activities (deals, money in and out, swaps) of the last `historyDays`. */
async function loadHistory(): Promise<void> {
  const user = state.session!.userId;
  const from = Date.now() - state.historyDays * 86_400_000;
  let cursor: string | undefined;
  for (let page = 0; page < 20; page++) {
    const r = await api.activities(user, { from, cursor, limit: 500 });
    if (!r.ok || state.session?.userId !== user) return;
    addHistory(...r.data.activities.map(asActivity).filter((a): a is Activity => a !== null));
    view.schedule();
    if (!r.data.next_cursor) return;
    cursor = r.data.next_cursor;
  }
}

async function loadPastOrders(): Promise<void> {
  const r = await api.orders(state.session!.userId, "all");
  if (r.ok) { state.pastOrders = r.data.orders; view.schedule(); }
}

function onUser(e: UserEvent): void {
  switch (e.topic) {
    case "user.trades":
      applyTrade(e.data);
      outcome(e.data);
      orderNews(e.data);
      break;
    case "user.mt5_status":
      applyStatus(e.data);
      break;
    case "user.risk_alerts": {
      const d = e.data;
      view.riskBanner(`${d.event_type}: ${d.message}${d.margin_level != null ? ` (margin level ${money(d.margin_level)}%)` : ""}`);
      break;
    }
    case "user.transactions":
      addHistory(e.data);
      outcome(e.data);
  }
  view.schedule();
}

const rowOf = (b: HTMLElement) => b.closest("tr");

const actions: view.Actions = {
  logout: () => logout(true),
  select: (sym) => { select(sym); },
  timeframe: (tf) => { state.tf = tf; select(state.selected); },
  tab: (tab) => {
    state.tab = tab;
    state.editing = null;
    if (tab === "order-history") loadPastOrders();
    view.render();
  },
  edit: (id) => { state.editing = id; view.render(); },
  earlier: () => { state.historyDays += 7; loadHistory(); },
  open: (req) => {
    const what = `${req.type} ${req.order_type && req.order_type !== "MARKET" ? `${req.order_type} ` : ""}${req.volume} ${req.symbol}`;
    send("ticket", () => api.open(req), {
      sending: `Sending ${what}…`,
      queued: `Queued ${what} · waiting for the ${req.order_type && req.order_type !== "MARKET" ? "order" : "fill"}`,
    }, document.getElementById("ticket"));
  },
  close: (req, b) => send("ticket", () => api.close(req), {
    sending: `Closing ${req.volume ?? "all"} of ${short(req.trade_id)}…`, queued: `Closing ${short(req.trade_id)}…`,
  }, rowOf(b), b),
  modify: (req, b) => send("ticket", () => api.modify(req), { sending: `Modifying ${short(req.trade_id)}…`, queued: `Modifying ${short(req.trade_id)}…` }, rowOf(b), b),
  cancel: (req, b) => send("ticket", () => api.cancel(req), { sending: `Cancelling ${short(req.order_id)}…`, queued: `Cancelling ${short(req.order_id)}…` }, rowOf(b), b),
  replace: (req, b) => send("ticket", () => api.replace(req), { sending: `Replacing ${short(req.order_id)}…`, queued: `Replacing ${short(req.order_id)}…` }, rowOf(b), b),
  funds: (kind, amount) => {
    const user = state.session!.userId;
    send("funds", () => (kind === "deposit" ? api.deposit(user, { amount }) : api.withdraw(user, { amount })), {
      sending: kind === "deposit" ? "Depositing…" : "Withdrawing…",
      queued: kind === "deposit" ? "Deposit queued…" : "Withdrawal queued…",
    }, document.getElementById("funds"));
  },
};

// ---------------------------------------------------------------- start

setInterval(() => view.staleness(Math.max(0, ...[...state.quotes.values()].map((q) => q.ts))), 2000);

/** Loads the pairs traded here; retried until the server answers (nothing can be shown or
 * sized without them). */
async function loadSymbols(): Promise<void> {
  for (let wait = 500; ; wait = Math.min(wait * 2, 5000)) {
    const r = await api.symbols();
    if (r.ok) {
      for (const s of r.data.symbols) state.symbols.set(s.symbol, s);
      return;
    }
    await new Promise((done) => setTimeout(done, wait));
  }
}

const saved = sessionStorage.getItem("suho.session");
if (saved) {
  try { state.session = JSON.parse(saved); } catch { state.session = null; }
}
loadSymbols().then(() => {
  if (!state.symbols.has(state.selected)) state.selected = state.symbols.keys().next().value ?? state.selected;
  if (state.session) { scheduleRefresh(); showDashboard(); } else showAuth();
});

// For the browser tests and for debugging from the console.
declare global { interface Window { suho: unknown } }
window.suho = {
  state,
  /** The bars the chart holds. */
  bars: view.chartBars,
  /** Drops the stream and stays offline for `ms` before reconnecting (with resume). */
  dropFor: (ms: number) => stream?.dropFor(ms),
};
