// The HTTP API, typed from its OpenAPI document: `api.gen.ts` is generated from the served
// `/api/openapi.json` (`npm run gen:api`), and every request and answer here takes its shape
// from it, so a change of the API is a type error here rather than a surprise in the page.
import type { components, paths } from "./api.gen";

type Schemas = components["schemas"];
export type AccountStatus = Schemas["AccountStatus"];
export type PositionView = Schemas["PositionView"];
export type OrderView = Schemas["OrderView"];
export type TradeEvent = Schemas["TradeEvent"];
export type TradeEventType = Schemas["TradeEventType"];
export type SymbolSpec = Schemas["SymbolSpec"];
export type Candle = Schemas["Candle"];
export type ErrorBody = Schemas["ErrorBody"];
export type Side = Schemas["Side"];
export type OrderType = Schemas["OrderType"];
export type TimeInForce = Schemas["TimeInForce"];
export type Credentials = Schemas["Credentials"];
export type OpenTradeRequest = Schemas["OpenTradeRequest"];
export type CloseTradeRequest = Schemas["CloseTradeRequest"];
// The served document states "at least one of these fields" as an `anyOf` of `required`
// beside the properties; openapi-typescript makes that a union with the whole object, whose
// other members lack the id. The request is the member that has the id.
export type ModifyTradeRequest = Extract<Schemas["ModifyTradeRequest"], { trade_id: string }>;
export type CancelOrderRequest = Schemas["CancelOrderRequest"];
export type ReplaceOrderRequest = Extract<Schemas["ReplaceOrderRequest"], { order_id: string }>;
export type MoneyRequest = Schemas["MoneyRequest"];
export type Timeframe = Schemas["Timeframe"];

type Method = "get" | "post" | "put" | "delete";
type Op<P extends keyof paths, M extends Method> = NonNullable<paths[P][M]>;
type JsonOf<R> = R extends { content: { "application/json": infer T } } ? T : null;
type Responses<O> = O extends { responses: infer R } ? R : never;
/** What an operation answers on success (its 2xx). */
type Success<O> = {
  [S in keyof Responses<O>]: S extends 200 | 201 | 202 | 204 ? JsonOf<Responses<O>[S]> : never;
}[keyof Responses<O>];
type BodyOf<O> = O extends { requestBody: { content: { "application/json": infer B } } } ? B : undefined;
type PathOf<O> = O extends { parameters: { path: infer P } } ? P : undefined;
type QueryOf<O> = O extends { parameters: { query?: infer Q } } ? Q : undefined;
/** A request's parts: the path's parameters, the query and the JSON body, each as the
 * operation declares them. */
type Parts<O> = { path?: PathOf<O>; query?: QueryOf<O>; body?: BodyOf<O> };

/** An answer: the success body, or the API's error body (a network failure reads as
 * `unavailable`). */
export type Answer<T> = { ok: true; status: number; data: T } | { ok: false; status: number; error: ErrorBody };

/** The error body of an answer that is not one, e.g. a proxy's page. */
function errorOf(status: number, data: unknown, text: string): ErrorBody {
  if (data && typeof data === "object" && "message" in data && "error" in data) return data as ErrorBody;
  return { error: status >= 500 || status === 0 ? "unavailable" : "internal", message: text || `HTTP ${status}` };
}

/** The HTTP client: the bearer token from `token()`, and `onExpired` when a signed-in call
 * is answered 401 (the session is over). */
export class Api {
  constructor(
    private readonly token: () => string | null,
    private readonly onExpired: () => void,
  ) {}

  /** `method path` with `parts`, typed by the operation. */
  async call<P extends keyof paths, M extends Method>(
    method: M,
    path: P,
    parts: Parts<Op<P, M>> = {},
  ): Promise<Answer<Success<Op<P, M>>>> {
    let url: string = path;
    for (const [k, v] of Object.entries(parts.path ?? {})) url = url.replace(`{${k}}`, encodeURIComponent(String(v)));
    const query = Object.entries(parts.query ?? {}).filter(([, v]) => v !== undefined && v !== null);
    if (query.length) url += `?${new URLSearchParams(query.map(([k, v]) => [k, String(v)])).toString()}`;
    const headers: Record<string, string> = {};
    if (parts.body !== undefined) headers["content-type"] = "application/json";
    const token = this.token();
    if (token) headers.authorization = `Bearer ${token}`;
    let res: Response;
    try {
      res = await fetch(url, {
        method: method.toUpperCase(),
        headers,
        body: parts.body === undefined ? undefined : JSON.stringify(parts.body),
      });
    } catch (e) {
      return { ok: false, status: 0, error: { error: "unavailable", message: `the server cannot be reached (${String(e)})` } };
    }
    const text = await res.text();
    let data: unknown = null;
    try { data = text ? JSON.parse(text) : null; } catch { data = null; }
    if (res.status === 401 && token && !url.startsWith("/api/auth/")) this.onExpired();
    if (res.ok) return { ok: true, status: res.status, data: data as Success<Op<P, M>> };
    return { ok: false, status: res.status, error: errorOf(res.status, data, text) };
  }

  // ------------------------------------------------------------ accounts
  register(body: Credentials) { return this.call("post", "/api/auth/register", { body }); }
  login(body: Credentials) { return this.call("post", "/api/auth/login", { body }); }
  refresh() { return this.call("post", "/api/auth/refresh"); }
  logout() { return this.call("post", "/api/auth/logout"); }

  // ------------------------------------------------------------ market
  symbols() { return this.call("get", "/api/symbols"); }
  candles(symbol: string, tf: Timeframe, limit: number) {
    return this.call("get", "/api/market/{symbol}/candles", { path: { symbol }, query: { tf, limit } });
  }

  // ------------------------------------------------------------ the user's account
  account(user_id: string) { return this.call("get", "/api/user/{user_id}/account", { path: { user_id } }); }
  positions(user_id: string) { return this.call("get", "/api/user/{user_id}/positions", { path: { user_id } }); }
  orders(user_id: string, status: "open" | "all") {
    return this.call("get", "/api/user/{user_id}/orders", { path: { user_id }, query: { status } });
  }
  activities(user_id: string, query: { from?: number; to?: number; cursor?: string; limit?: number }) {
    return this.call("get", "/api/user/{user_id}/activities", { path: { user_id }, query });
  }
  deposit(user_id: string, body: MoneyRequest) { return this.call("post", "/api/user/{user_id}/deposit", { path: { user_id }, body }); }
  withdraw(user_id: string, body: MoneyRequest) { return this.call("post", "/api/user/{user_id}/withdraw", { path: { user_id }, body }); }

  // ------------------------------------------------------------ trading
  open(body: OpenTradeRequest) { return this.call("post", "/api/trade/open", { body }); }
  close(body: CloseTradeRequest) { return this.call("post", "/api/trade/close", { body }); }
  modify(body: ModifyTradeRequest) { return this.call("post", "/api/trade/modify", { body }); }
  cancel(body: CancelOrderRequest) { return this.call("post", "/api/trade/cancel", { body }); }
  replace(body: ReplaceOrderRequest) { return this.call("post", "/api/trade/replace", { body }); }
}
