// The user's commands and what becomes of them: the API's 202 (or its error, marked on the
// field it names), then the outcome from the stream (a fill, a placed order, a rejection's
// reason), reported where the command was sent from. The stream can answer a command before
// its 202 arrives: outcomes are kept by command id for a while.
import type { Answer, TradeEvent } from "./api";
import { money, price, short } from "./format";
import { commandOf, digits, state, type Activity, type Where } from "./state";
import * as view from "./view";

const px = (sym: string | null | undefined, v: number | null | undefined) => (sym ? price(digits(sym), v) : "—");

/** Sends a command: `sending` while it goes, `queued` once the API took it (then its outcome
 * from the stream), or the API's error, marked on the field it names within `scope`. */
export async function send(
  where: Where,
  call: () => Promise<Answer<{ command_id: string }>>,
  text: { sending: string; queued: string },
  scope: ParentNode | null,
  button?: HTMLButtonElement,
): Promise<void> {
  view.status(where, "muted", text.sending);
  if (button) button.disabled = true;
  const r = await call();
  if (button) button.disabled = false;
  if (r.ok) {
    view.status(where, "muted", text.queued);
    expect(r.data.command_id, where);
    return;
  }
  if (r.error.field && scope) view.fieldError(scope, r.error.field, r.error.message);
  view.status(where, "error", r.error.message || `failed (${r.status})`);
}

/** What becomes of a resting order later, when no command of the page waits for it. */
export function orderNews(e: TradeEvent): void {
  const id = e.order_id ? short(e.order_id) : "";
  if (e.event_type === "TRADE_EXECUTED" && e.order_id) {
    view.status("ticket", "ok", `Order ${id} filled: ${e.action} ${e.volume} ${e.symbol} @ ${px(e.symbol, e.execution_price)}`);
  } else if (e.event_type === "ORDER_EXPIRED") view.status("ticket", "muted", `Order ${id} expired`);
  else if (e.event_type === "ORDER_REJECTED") view.status("ticket", "error", `Order ${id} refused: ${e.reason ?? "no reason given"}`);
}

/** Remembers the outcome of a command, and reports it if this page is waiting for it. */
export function outcome(e: Activity): void {
  const id = commandOf(e);
  if (!id) return;
  state.outcomes.set(id, e);
  if (state.outcomes.size > 200) state.outcomes.delete(state.outcomes.keys().next().value!);
  if (state.pending.has(id)) report(id, e);
}

/** Waits for the outcome of `commandId` (which may already be known). */
function expect(commandId: string, where: Where): void {
  state.pending.set(commandId, where);
  const known = state.outcomes.get(commandId);
  if (known) report(commandId, known);
}

/** Shows what became of a command the ticket, a row's buttons or the funds form sent. */
function report(commandId: string, e: Activity): void {
  const where = state.pending.get(commandId)!;
  state.pending.delete(commandId);
  const [kind, text] = describe(e);
  view.status(where, kind, text);
  if (e.event_type === "TRADE_REJECTED" && where === "ticket" && e.reason) view.rejectedField(e.reason);
}

function describe(e: Activity): ["ok" | "error" | "muted", string] {
  switch (e.event_type) {
    case "DEPOSIT":
    case "WITHDRAWAL":
      return ["ok", `${e.event_type === "DEPOSIT" ? "Deposited" : "Withdrew"} ${money(e.amount)} ${e.currency}${e.balance_after != null ? ` · balance ${money(e.balance_after)}` : ""}`];
    case "ACCOUNT_OPENED":
      return ["ok", `Account opened with ${money(e.amount)} ${e.currency}`];
    case "TRADE_REJECTED":
    case "ORDER_REJECTED":
      return ["error", `Rejected: ${e.reason ?? "no reason given"}`];
    case "TRADE_MODIFIED":
      return ["ok", `Modified ${short(e.trade_id ?? "")} · SL ${px(e.symbol, e.stop_loss)} · TP ${px(e.symbol, e.take_profit)}`];
    case "TRADE_EXECUTED":
      return ["ok", `Filled ${e.action} ${e.volume} ${e.symbol} @ ${px(e.symbol, e.execution_price)}`];
    case "TRADE_CLOSED":
      return ["ok", `Closed ${short(e.trade_id ?? "")} @ ${px(e.symbol, e.close_price)} · P/L ${money(e.profit)}`];
    case "TRADE_PARTIALLY_CLOSED":
      return ["ok", `Closed ${e.volume} of ${short(e.trade_id ?? "")} @ ${px(e.symbol, e.close_price)} · P/L ${money(e.profit)} · ${e.remaining_volume} open`];
    case "ORDER_PLACED":
      return ["ok", `Placed ${e.side} ${e.order_type} ${e.volume} ${e.symbol} @ ${px(e.symbol, e.limit_price ?? e.stop_price)} · ${e.time_in_force}`];
    case "ORDER_CANCELLED":
      return ["ok", `Cancelled order ${short(e.order_id ?? "")}`];
    case "ORDER_REPLACED":
      return ["ok", `Replaced order ${short(e.order_id ?? "")} · ${e.volume} @ ${px(e.symbol, e.limit_price ?? e.stop_price)}`];
    default:
      return ["muted", `${e.event_type}`];
  }
}
