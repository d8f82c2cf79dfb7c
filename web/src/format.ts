// How the page writes numbers, prices, money and times. Price digits come from the symbol's
// spec (`GET /api/symbols`), never from a table here.

/** `s` made safe to put in HTML text or an attribute. */
export function esc(s: unknown): string {
  return String(s ?? "").replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

/** A price with `digits` decimals, or a dash. */
export function price(digits: number, v: number | null | undefined): string {
  return v == null || !Number.isFinite(v) ? "—" : v.toFixed(digits);
}

/** Money to the cent with thousands separators, or a dash. */
export function money(v: number | null | undefined): string {
  return v == null || !Number.isFinite(v)
    ? "—"
    : v.toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
}

/** Lots, two decimals. */
export function lots(v: number | null | undefined): string {
  return v == null || !Number.isFinite(v) ? "—" : v.toFixed(2);
}

/** A time of day in UTC, `HH:MM:SS`. */
export function time(ms: number): string {
  return new Date(ms).toISOString().slice(11, 19);
}

/** A date and time in UTC, `MM-DD HH:MM`. */
export function when(ms: number): string {
  return new Date(ms).toISOString().slice(5, 16).replace("T", " ");
}

/** The value of a `datetime-local` input for `ms`, read as UTC (the page shows UTC). */
export function utcInput(ms: number): string {
  return new Date(ms).toISOString().slice(0, 16);
}

/** A position's or order's id, shortened for a table: `#1a2b3c4d`. */
export function short(id: string): string {
  return `#${id.replace(/^(trd|ord)_/, "").slice(0, 8)}`;
}

/** `up` / `down` by sign, for colouring. */
export function sign(v: number | null | undefined): string {
  return v == null ? "" : v > 0 ? "up" : v < 0 ? "down" : "";
}
