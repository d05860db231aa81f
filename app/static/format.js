/**
 * format.js — numbers as the pages and the console lines show them (no build step).
 *
 * The server sends money and quantities as exact decimal strings; everything here works on
 * the digits (BigInt), never through binary floating point: "0.125" rounds to "0.13", and a
 * P&L of "550" reads "+$550.00" as in the runbook's `[Realtime] Position updated: AAPL +$550.00`.
 */

/**
 * Formats an exact decimal string (as the server sends money) to `dp` places, rounding half
 * away from zero, without going through binary floating point.
 * @param {string | number | null | undefined} value
 * @param {number} [dp] decimal places
 * @param {{ sign?: boolean, grouping?: boolean }} [opts] `sign`: always show + or -;
 *   `grouping`: thousands separators
 * @returns {string} the formatted number, or "—" when the value is missing or not a number
 */
export function formatDecimal(value, dp = 2, { sign = false, grouping = false } = {}) {
  if (value === null || value === undefined || value === "") return "—";
  const match = /^\s*([+-])?(\d*)(?:\.(\d*))?\s*$/.exec(String(value));
  if (!match || (match[2] === "" && !match[3])) {
    const number = Number(value);
    if (!Number.isFinite(number)) return "—";
    return formatDecimal(number.toFixed(dp + 2), dp, { sign, grouping });
  }
  const negativeInput = match[1] === "-";
  const whole = match[2] || "0";
  const fraction = (match[3] || "").padEnd(dp + 1, "0");
  let scaled = BigInt(whole + fraction.slice(0, dp));
  if (Number(fraction[dp]) >= 5) scaled += 1n;
  const negative = negativeInput && scaled !== 0n;
  const digits = scaled.toString().padStart(dp + 1, "0");
  let integer = digits.slice(0, digits.length - dp);
  if (grouping) integer = integer.replace(/\B(?=(\d{3})+(?!\d))/g, ",");
  const body = dp > 0 ? `${integer}.${digits.slice(digits.length - dp)}` : integer;
  if (negative) return `-${body}`;
  return sign ? `+${body}` : body;
}

/**
 * A signed dollar amount as in the runbook: `+$550.00`, `-$12.30`.
 * @param {string | number | null | undefined} value
 * @param {{ grouping?: boolean }} [opts]
 * @returns {string}
 */
export function formatSignedMoney(value, { grouping = false } = {}) {
  const text = formatDecimal(value, 2, { sign: true, grouping });
  return text === "—" ? text : `${text[0]}$${text.slice(1)}`;
}

/**
 * A decimal string with trailing fractional zeros removed ("10.000" -> "10").
 * @param {string | number | null | undefined} value
 * @returns {string}
 */
export function trimDecimal(value) {
  if (value === null || value === undefined || value === "") return "—";
  const text = String(value);
  return text.includes(".") ? text.replace(/\.?0+$/, "") : text;
}

/**
 * Exact sum of decimal money strings, to the cent ("1.10" + "2.205" -> "3.31").
 * @param {Array<string | number | null | undefined>} values
 * @returns {string}
 */
export function sumMoney(values) {
  let cents = 0n;
  for (const value of values) {
    const text = formatDecimal(value, 2);
    if (text !== "—") cents += BigInt(text.replace(".", ""));
  }
  const negative = cents < 0n;
  const digits = (negative ? -cents : cents).toString().padStart(3, "0");
  return `${negative ? "-" : ""}${digits.slice(0, -2)}.${digits.slice(-2)}`;
}

/**
 * A whole count with the browser's grouping ("15,420"); a missing count is 0.
 * @param {number | null | undefined} value
 * @returns {string}
 */
export function formatCount(value) {
  return Number(value ?? 0).toLocaleString();
}

/**
 * Seconds as "1h 02m", "4m 10s" or "12s" (rounded to the second, never negative).
 * @param {number | null | undefined} seconds
 * @returns {string}
 */
export function formatDuration(seconds) {
  const s = Math.max(0, Math.round(Number(seconds) || 0));
  const pad = (n) => String(n).padStart(2, "0");
  if (s >= 3600) return `${Math.floor(s / 3600)}h ${pad(Math.floor((s % 3600) / 60))}m`;
  if (s >= 60) return `${Math.floor(s / 60)}m ${pad(s % 60)}s`;
  return `${s}s`;
}

/**
 * Milliseconds as "0.42 ms", "12.5 ms" or "1,250 ms": finer below 1 ms and 100 ms, where a
 * round trip on a LAN lives.
 * @param {number | null | undefined} value
 * @returns {string} the figure with its unit, or "—" when there is none
 */
export function formatMilliseconds(value) {
  if (value === null || value === undefined || value === "") return "—";
  const number = Number(value);
  if (!Number.isFinite(number)) return "—";
  const magnitude = Math.abs(number);
  const dp = magnitude < 1 ? 2 : magnitude < 100 ? 1 : 0;
  return `${formatDecimal(number.toFixed(dp + 2), dp, { grouping: true })} ms`;
}
