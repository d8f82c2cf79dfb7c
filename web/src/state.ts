// The page's state: the session, the pairs (`GET /api/symbols`), the quotes, and the account.
//
// One source for the account's figures: the latest ACCOUNT_STATUS (`GET .../account`, then
// every status on the stream: after every command and every few seconds). Balance, equity,
// margin, free margin, margin level, the floating P/L (equity less balance) and each open
// position's price, profit, swap and commission are all the engine's at that status's time,
// so they always agree with each other; the page computes none of them from its quotes.
//
// The open positions and pending orders are the status's too (`GET .../positions` and
// `.../orders?status=open` on load), with the trade events that came after it laid on top
// (a fill, a close, a placed or cancelled order shows at once; its figures come with the next
// status, moments later). The history is the account's activities (`GET .../activities`, a
// window of days back) with the live deals and transactions in front.
import type { AccountStatus, OrderView, PositionView, SymbolSpec, Timeframe, TradeEvent } from "./api";
import type { RiskAlert, Signal, Tick, Transaction } from "./stream";

export interface Session { token: string; userId: string; email: string; expiresAt?: number }
export interface Quote { bid: number; ask: number; mid: number; ts: number; dir: number }

/** An open position as the page shows it: a status's view, or (until the next status) one
 * made from its fill, with the figures not yet valued (`null`). */
export interface Position {
  trade_id: string; symbol: string; side: PositionView["side"]; volume: number; open_price: number;
  stop_loss: number | null; take_profit: number | null; trailing_stop_pips: number | null; opened_at: number;
  current_price: number | null; profit: number | null; swap: number | null; commission: number | null;
}

/** A line of the history: a deal (fill, close, partial close, swap charge) or money in/out. */
export type Activity = TradeEvent | Transaction;

/** What a command was sent from, so its outcome is reported there. */
export type Where = "ticket" | "funds";

export type Tab = "positions" | "orders" | "history" | "order-history";

/** The account's figures, all from one status. */
export interface Figures {
  balance: number; equity: number; floating: number; margin: number; freeMargin: number;
  marginLevel: number | null; currency: string; openPositions: number; asOf: number;
}

const HISTORY_KINDS = new Set<string>(["TRADE_EXECUTED", "TRADE_CLOSED", "TRADE_PARTIALLY_CLOSED", "SWAP_CHARGED", "DEPOSIT", "WITHDRAWAL", "ACCOUNT_OPENED"]);

export const state = {
  session: null as Session | null,
  /** The pairs traded here, in the server's order: digits, pip, contract size, volume bounds. */
  symbols: new Map<string, SymbolSpec>(),
  watch: [] as string[],
  selected: "EURUSD",
  tf: "1m" as Timeframe,
  tab: "positions" as Tab,
  /** The position or order whose fields are being edited in the blotter. */
  editing: null as string | null,
  quotes: new Map<string, Quote>(),
  /** The latest status: the account's figures. */
  account: null as AccountStatus | null,
  /** The positions and orders of the latest snapshot, and its time. */
  base: { asOf: -Infinity, positions: [] as PositionView[], orders: [] as OrderView[] },
  /** Trade events newer than `base`, laid on top of it. */
  recent: [] as TradeEvent[],
  positions: new Map<string, Position>(),
  orders: new Map<string, OrderView>(),
  /** Newest first. */
  history: [] as Activity[],
  /** How far back the history goes, ms before now. */
  historyDays: 7,
  /** Every order, newest first (`orders?status=all`), once asked for. */
  pastOrders: null as OrderView[] | null,
  /** This session's order events (and fills of orders), in arrival order, laid on
   * `pastOrders`: the audit store may answer before it holds the latest. */
  orderNews: [] as TradeEvent[],
  signals: [] as Signal[],
  /** command_id -> where its outcome is reported. */
  pending: new Map<string, Where>(),
  /** Outcomes by command_id: the stream can answer a command before its 202 reaches us. */
  outcomes: new Map<string, Activity>(),
};

export function resetData(): void {
  state.quotes.clear(); state.positions.clear(); state.orders.clear(); state.history = []; state.signals = [];
  state.account = null; state.base = { asOf: -Infinity, positions: [], orders: [] }; state.recent = [];
  state.pending.clear(); state.outcomes.clear(); state.pastOrders = null; state.orderNews = []; state.editing = null; state.historyDays = 7;
}

export function spec(symbol: string): SymbolSpec | undefined { return state.symbols.get(symbol); }
export function digits(symbol: string): number { return spec(symbol)?.digits ?? 5; }

// ---------------------------------------------------------------- quotes

export function applyTick(symbol: string, t: Tick): void {
  const prev = state.quotes.get(symbol);
  const mid = +t.mid;
  state.quotes.set(symbol, { bid: +t.bid, ask: +t.ask, mid, ts: t.timestamp, dir: prev ? Math.sign(mid - prev.mid) || prev.dir : 0 });
}

/** The spread of `symbol`'s quote in pips. */
export function spreadPips(symbol: string): number | null {
  const q = state.quotes.get(symbol);
  const pip = spec(symbol)?.pip;
  return q && pip ? (q.ask - q.bid) / pip : null;
}

// ---------------------------------------------------------------- the account

/** An account status (from the stream or `GET .../account`): the figures, and the positions
 * and orders it carries. An older one than the page has changes nothing. */
export function applyStatus(s: AccountStatus): boolean {
  if (state.account && s.timestamp < state.account.timestamp) return false;
  state.account = s;
  setBase(s.positions ?? [], s.orders ?? [], s.timestamp);
  return true;
}

/** The positions and orders as of `asOf` (a status's time), if newer than what the page has. */
export function setBase(positions: PositionView[], orders: OrderView[], asOf: number): void {
  if (asOf < state.base.asOf) return;
  state.base = { asOf, positions, orders };
  state.recent = state.recent.filter((e) => e.timestamp > asOf);
  rebuild();
}

/** The account's figures from the latest status; `null` before the first. */
export function figures(): Figures | null {
  const a = state.account;
  if (!a) return null;
  return {
    balance: a.balance, equity: a.equity, floating: Math.round((a.equity - a.balance) * 100) / 100,
    margin: a.margin, freeMargin: a.free_margin, marginLevel: a.margin_level ?? null,
    currency: a.currency, openPositions: a.open_positions, asOf: a.timestamp,
  };
}

function fromView(p: PositionView): Position {
  return {
    trade_id: p.trade_id, symbol: p.symbol, side: p.side, volume: p.volume, open_price: p.open_price,
    stop_loss: p.stop_loss ?? null, take_profit: p.take_profit ?? null, trailing_stop_pips: p.trailing_stop_pips ?? null,
    opened_at: p.opened_at, current_price: p.current_price, profit: p.profit, swap: p.swap, commission: p.commission,
  };
}

function rebuild(): void {
  state.positions = new Map(state.base.positions.map((p) => [p.trade_id, fromView(p)]));
  state.orders = new Map(state.base.orders.map((o) => [o.order_id, { ...o }]));
  for (const e of [...state.recent].sort((a, b) => a.timestamp - b.timestamp)) layOn(e);
}

/** A trade event's effect on the open positions and pending orders. Each is idempotent, so
 * laying an event on a snapshot that already holds it changes nothing. */
function layOn(e: TradeEvent): void {
  const p = e.trade_id ? state.positions.get(e.trade_id) : undefined;
  switch (e.event_type) {
    case "TRADE_EXECUTED":
      if (e.order_id) state.orders.delete(e.order_id);
      if (e.trade_id && !p && e.symbol && e.action && e.volume != null) {
        state.positions.set(e.trade_id, {
          trade_id: e.trade_id, symbol: e.symbol, side: e.action, volume: e.volume,
          open_price: e.open_price ?? e.execution_price ?? NaN, stop_loss: e.stop_loss ?? null,
          take_profit: e.take_profit ?? null, trailing_stop_pips: e.trailing_stop_pips ?? null, opened_at: e.timestamp,
          current_price: null, profit: null, swap: null, commission: e.commission ?? null,
        });
      }
      break;
    case "TRADE_CLOSED":
      if (e.trade_id) state.positions.delete(e.trade_id);
      break;
    case "TRADE_PARTIALLY_CLOSED":
      if (p && e.remaining_volume != null && p.volume !== e.remaining_volume) {
        p.volume = e.remaining_volume;
        p.profit = null; // valued again by the next status
      }
      break;
    case "TRADE_MODIFIED":
      if (p) { p.stop_loss = e.stop_loss ?? null; p.take_profit = e.take_profit ?? null; }
      break;
    case "ORDER_PLACED": {
      const o = orderOf(e);
      if (o && !state.orders.has(o.order_id)) state.orders.set(o.order_id, o);
      break;
    }
    case "ORDER_REPLACED": {
      const o = e.order_id ? state.orders.get(e.order_id) : undefined;
      if (o) replaced(o, e);
      break;
    }
    case "ORDER_CANCELLED":
    case "ORDER_EXPIRED":
    case "ORDER_REJECTED":
      if (e.order_id) state.orders.delete(e.order_id);
      break;
    default:
  }
}

/** The order an `ORDER_PLACED` places. */
function orderOf(e: TradeEvent): OrderView | null {
  const side = e.side ?? e.action;
  if (!e.order_id || !e.symbol || !e.order_type || !side || e.volume == null) return null;
  return {
    order_id: e.order_id, symbol: e.symbol, order_type: e.order_type, side, volume: e.volume,
    limit_price: e.limit_price, stop_price: e.stop_price, stop_loss: e.stop_loss, take_profit: e.take_profit,
    time_in_force: e.time_in_force ?? "GTC", expires_at: e.expires_at, status: "PENDING", placed_at: e.timestamp,
  };
}

function replaced(o: OrderView, e: TradeEvent): void {
  o.volume = e.volume ?? o.volume; o.limit_price = e.limit_price; o.stop_price = e.stop_price;
  o.stop_loss = e.stop_loss; o.take_profit = e.take_profit; o.expires_at = e.expires_at;
}

/** The state each order event leaves its order in (as `orders?status=all` tells it). */
const ORDER_STATE: Partial<Record<TradeEvent["event_type"], OrderView["status"]>> = {
  ORDER_PLACED: "PENDING", ORDER_REPLACED: "PENDING", ORDER_TRIGGERED: "PENDING", ORDER_CANCELLED: "CANCELLED",
  ORDER_EXPIRED: "EXPIRED", ORDER_REJECTED: "REJECTED", TRADE_EXECUTED: "FILLED",
};

/** Every order, newest first: the last answer of `orders?status=all` with this session's
 * order events on it (an order that left the book never goes back to `PENDING`). `null`
 * until asked for. */
export function pastOrders(): OrderView[] | null {
  if (!state.pastOrders) return null;
  const byId = new Map(state.pastOrders.map((o) => [o.order_id, { ...o }]));
  for (const e of state.orderNews) {
    const status = ORDER_STATE[e.event_type];
    if (!status || !e.order_id) continue;
    let o = byId.get(e.order_id);
    if (!o && e.event_type === "ORDER_PLACED") {
      const placed = orderOf(e);
      if (placed) byId.set(placed.order_id, (o = placed));
    }
    if (!o || (o.status !== "PENDING" && status === "PENDING")) continue;
    o.status = status;
    if (e.event_type === "ORDER_REPLACED") replaced(o, e);
  }
  return [...byId.values()].sort((a, b) => b.placed_at - a.placed_at || (a.order_id < b.order_id ? 1 : -1));
}

/** A trade event from the stream: on the positions and orders, and in the history. */
export function applyTrade(e: TradeEvent): void {
  if (e.timestamp > state.base.asOf && !state.recent.some((r) => r.event_id === e.event_id)) {
    state.recent.push(e);
    layOn(e);
  }
  addHistory(e);
  if (e.event_type === "TRADE_MODIFIED" && state.editing === e.trade_id && e.command_id) state.editing = null;
  if (e.event_type === "ORDER_REPLACED" && state.editing === e.order_id) state.editing = null;
  if (e.order_id && ORDER_STATE[e.event_type]) {
    state.orderNews.push(e);
    if (state.orderNews.length > 500) state.orderNews.shift();
  }
}

// ---------------------------------------------------------------- history

/** Whether an activity of the API (an event as published) is one the history shows. */
export function asActivity(v: Record<string, unknown>): Activity | null {
  return typeof v.event_type === "string" && typeof v.event_id === "string" && typeof v.timestamp === "number" && HISTORY_KINDS.has(v.event_type)
    ? (v as unknown as Activity)
    : null;
}

/** Adds deals and transactions to the history (once each, newest first). */
export function addHistory(...items: Activity[]): void {
  const seen = new Set(state.history.map((h) => h.event_id));
  const fresh = items.filter((e) => HISTORY_KINDS.has(e.event_type) && !seen.has(e.event_id) && seen.add(e.event_id));
  if (!fresh.length) return;
  state.history = [...fresh, ...state.history].sort((a, b) => b.timestamp - a.timestamp);
}

/** Whether an activity is money in or out, or the account's opening (else it is a deal). */
export function isTransaction(e: Activity): e is Transaction {
  return e.event_type === "DEPOSIT" || e.event_type === "WITHDRAWAL" || e.event_type === "ACCOUNT_OPENED";
}

/** The command an outcome answers: a trade event's `command_id`, a transaction's `reference`. */
export function commandOf(e: Activity): string | undefined {
  return "command_id" in e ? (e.command_id ?? undefined) : "reference" in e ? e.reference : undefined;
}

export function applySignal(s: Signal): void {
  state.signals.unshift(s);
  state.signals.length = Math.min(state.signals.length, 60);
}

export type { RiskAlert };
