// The /ws stream: quotes, candles and signals of the followed symbols, and the user's own
// events. It reconnects by itself with a backoff and resumes from the last position it got
// on each partition, so no event is missed or repeated (ARCHITECTURE.md, "Decisions where the
// contract is silent"). The messages are typed here: the OpenAPI document describes the
// upgrade, not the frames; the user events' payloads are its schemas where it has them.
import type { AccountStatus, Candle, TradeEvent } from "./api";

/** `market.{SYM}.tick` (contract "Market data domain"). */
export interface Tick { symbol: string; bid: number; ask: number; mid: number; spread: number; timestamp: number; source?: string }
/** `signals.{strategy}.{SYM}`. */
export interface Signal {
  signal_id: string; strategy: string; symbol: string; direction: "BUY" | "SELL" | "FLAT";
  confidence: number; price: number; timestamp: number; model?: string;
}
/** A `DEPOSIT`, `WITHDRAWAL` or `ACCOUNT_OPENED` (the opening balance, sent at registration)
 * on `user.transactions` (`reference`: its command's id). */
export interface Transaction {
  event_id: string; event_type: "DEPOSIT" | "WITHDRAWAL" | "ACCOUNT_OPENED"; user_id: string; amount: number;
  currency: string; balance_after?: number; reference?: string; timestamp: number;
}
/** A `MARGIN_CALL`, `STOP_OUT` or `RISK_LIMIT_BREACH` on `user.risk_alerts`. */
export interface RiskAlert {
  event_id: string; event_type: "MARGIN_CALL" | "STOP_OUT" | "RISK_LIMIT_BREACH"; user_id: string;
  margin_level?: number; message: string; trade_ids?: string[]; timestamp: number;
}

/** One of the user's events, by topic. */
export type UserEvent =
  | { topic: "user.trades"; data: TradeEvent }
  | { topic: "user.mt5_status"; data: AccountStatus }
  | { topic: "user.risk_alerts"; data: RiskAlert }
  | { topic: "user.transactions"; data: Transaction };

/** A market message, by kind of subject. */
export type MarketMessage =
  | { kind: "tick"; symbol: string; data: Tick }
  | { kind: "candle"; symbol: string; timeframe: string; data: Candle }
  | { kind: "signal"; data: Signal };

type ServerMessage =
  | { channel: "control"; event: "authenticated"; user_id: string; symbols?: string[] }
  | { channel: "control"; event: "ready"; events: number; positions?: string[] }
  | { channel: "control"; event: "subscribed" | "unsubscribed"; symbols?: string[] }
  | { channel: "market"; subject: string; data: Tick | Candle | Signal }
  | ({ channel: "user"; position?: string } & UserEvent)
  | { channel: "error"; error: string; field?: string; message: string };

export type ConnState = "connecting" | "reconnecting" | "live";

export interface StreamHandlers {
  state(kind: ConnState, text: string): void;
  /** Connected and authenticated: the user's watchlist (followed by default). */
  authenticated(watchlist: string[]): void;
  /** Every event up to now (or since the resume positions) has arrived. */
  ready(): void;
  market(m: MarketMessage): void;
  user(e: UserEvent): void;
  /** The server refused the token: the session is over. */
  refused(): void;
}

/** The stream of one signed-in session. */
export class Stream {
  private socket: WebSocket | null = null;
  /** Whether the current socket said `authenticated` (a later one answers a renewal). */
  private authed = false;
  private retry = 0;
  private retryTimer: number | undefined;
  /** Tests: stay disconnected until then. */
  private holdUntil = 0;
  /** The last position per `topic:partition`, for the resume. */
  private readonly resume = new Map<string, number>();
  private followed = new Set<string>();
  private wanted = new Set<string>();

  constructor(
    private readonly token: () => string | null,
    private readonly on: StreamHandlers,
  ) {}

  connect(): void {
    this.close();
    const token = this.token();
    if (!token) return;
    const proto = location.protocol === "https:" ? "wss" : "ws";
    let url = `${proto}://${location.host}/ws?token=${encodeURIComponent(token)}`;
    if (this.resume.size) {
      url += `&resume=${encodeURIComponent([...this.resume].map(([k, o]) => `${k}:${o}`).join(","))}`;
    }
    this.on.state(this.retry ? "reconnecting" : "connecting", this.retry ? "Reconnecting" : "Connecting");
    const ws = new WebSocket(url);
    this.socket = ws;
    this.authed = false;
    ws.onmessage = (m) => {
      let msg: ServerMessage;
      try { msg = JSON.parse(String(m.data)) as ServerMessage; } catch (e) { console.warn("bad message", e); return; }
      this.receive(msg);
    };
    ws.onclose = (ev) => {
      if (this.socket !== ws) return;
      this.socket = null;
      this.followed.clear();
      if (ev.code === 1008 || ev.code === 4401) { this.on.refused(); return; }
      this.retry += 1;
      const delay = Math.max(Math.min(10_000, 500 * 2 ** Math.min(this.retry - 1, 5)), this.holdUntil - Date.now());
      this.on.state("reconnecting", `Reconnecting in ${Math.ceil(delay / 1000)}s`);
      this.retryTimer = window.setTimeout(() => this.connect(), delay);
    };
  }

  /** Closes the stream for good (a new `connect` opens it again). */
  close(): void {
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    if (this.socket) { this.socket.onclose = null; this.socket.close(1000); this.socket = null; }
  }

  /** Hands a renewed token to the open stream, so it does not drop. */
  renew(token: string): void { this.send({ action: "auth", token }); }

  /** Follows `symbols` (and keeps what it follows already). */
  follow(symbols: Iterable<string>): void {
    for (const s of symbols) this.wanted.add(s);
    const missing = [...this.wanted].filter((s) => !this.followed.has(s));
    if (missing.length && this.socket?.readyState === WebSocket.OPEN) {
      this.send({ action: "subscribe", symbols: missing });
      for (const m of missing) this.followed.add(m);
    }
  }

  /** Tests: drops the stream and stays offline for `ms` before reconnecting (with resume). */
  dropFor(ms: number): void {
    this.holdUntil = Date.now() + ms;
    this.socket?.close(4000, "test");
  }

  private send(msg: { action: string; [k: string]: unknown }): void {
    if (this.socket?.readyState === WebSocket.OPEN) this.socket.send(JSON.stringify(msg));
  }

  private receive(m: ServerMessage): void {
    switch (m.channel) {
      case "control":
        if (m.event === "authenticated") {
          if (this.authed) return; // a renewed token: nothing changes
          this.authed = true;
          this.followed = new Set(m.symbols ?? []);
          this.on.authenticated(m.symbols ?? []);
          this.follow([]);
        } else if (m.event === "ready") {
          for (const p of m.positions ?? []) this.remember(p);
          this.retry = 0;
          this.on.state("live", "Live");
          this.on.ready();
        } else {
          this.followed = new Set(m.symbols ?? []);
        }
        return;
      case "market":
        this.market(m.subject, m.data);
        return;
      case "user":
        if (m.position) this.remember(m.position);
        this.on.user(m);
        return;
      case "error":
        console.warn("ws error", m);
    }
  }

  private market(subject: string, data: Tick | Candle | Signal): void {
    const [root, sym, kind] = subject.split(".");
    if (root === "market" && kind === "tick") this.on.market({ kind: "tick", symbol: sym, data: data as Tick });
    else if (root === "market") this.on.market({ kind: "candle", symbol: sym, timeframe: kind, data: data as Candle });
    else if (root === "signals") this.on.market({ kind: "signal", data: data as Signal });
  }

  private remember(position: string): void {
    const i = position.lastIndexOf(":");
    if (i < 0) return;
    const key = position.slice(0, i);
    const offset = Number(position.slice(i + 1));
    if (!(offset <= (this.resume.get(key) ?? -Infinity))) this.resume.set(key, offset);
  }
}
