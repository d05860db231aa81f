/**
 * sparkline.js — a tiny time-series plot drawn as inline SVG (no library, CSP-friendly:
 * only elements and attributes, colours come from the stylesheet).
 */

const SVG_NS = "http://www.w3.org/2000/svg";
// Plot area inside the 320 x 90 viewBox; the margins hold the axis labels.
const BOX = { left: 36, right: 314, top: 8, bottom: 70 };

/**
 * @param {string} tag
 * @param {Record<string, string | number>} attrs
 * @param {string} [text]
 * @returns {SVGElement}
 */
function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

/** A round upper bound for the y axis: 1, 2, 5, 10, 20, 50, ... */
function niceMax(value, integer) {
  if (!(value > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  const step = [1, 2, 5, 10].find((m) => m * power >= value) * power;
  return integer ? Math.max(1, Math.ceil(step)) : step;
}

/** "12", "3.5", "0.25", "1.2k" */
function label(value) {
  if (value >= 1000) return `${(value / 1000).toFixed(value >= 10000 ? 0 : 1)}k`;
  if (Number.isInteger(value)) return String(value);
  return value.toFixed(value < 1 ? 2 : 1);
}

/** "60 s ago", "4 min ago" */
function ago(ms) {
  const seconds = Math.round(ms / 1000);
  return seconds < 120 ? `${seconds} s ago` : `${Math.round(seconds / 60)} min ago`;
}

/**
 * Draw `points` ([epoch-ms, value] pairs, oldest first) into `target`, replacing its content.
 * @param {SVGSVGElement} target an <svg> with viewBox "0 0 320 90"
 * @param {Array<[number, number]>} points
 * @param {{ from: number, to: number, integer?: boolean }} range time axis bounds (epoch ms)
 */
export function drawSparkline(target, points, { from, to, integer = false }) {
  const top = niceMax(Math.max(0, ...points.map((p) => p[1])), integer);
  const x = (t) => BOX.left + ((t - from) / (to - from)) * (BOX.right - BOX.left);
  const y = (v) => BOX.bottom - (v / top) * (BOX.bottom - BOX.top);
  const nodes = [
    svg("line", { class: "grid", x1: BOX.left, x2: BOX.right, y1: BOX.top, y2: BOX.top }),
    svg("line", { class: "grid", x1: BOX.left, x2: BOX.right, y1: y(top / 2), y2: y(top / 2) }),
    svg("line", { class: "axis", x1: BOX.left, x2: BOX.right, y1: BOX.bottom, y2: BOX.bottom }),
    svg("text", { class: "tick", x: BOX.left - 5, y: BOX.top + 4, "text-anchor": "end" }, label(top)),
    svg("text", { class: "tick", x: BOX.left - 5, y: BOX.bottom + 3, "text-anchor": "end" }, "0"),
    svg("text", { class: "tick", x: BOX.left, y: BOX.bottom + 15, "text-anchor": "start" },
      ago(to - from)),
    svg("text", { class: "tick", x: BOX.right, y: BOX.bottom + 15, "text-anchor": "end" }, "now"),
  ];
  const visible = points.filter(([t]) => t >= from);
  if (visible.length === 0) {
    nodes.push(svg("text", { class: "tick", x: (BOX.left + BOX.right) / 2, y: 42,
      "text-anchor": "middle" }, "collecting data…"));
  } else {
    const coords = visible.map(([t, v]) => `${x(t).toFixed(1)},${y(v).toFixed(1)}`);
    const first = x(visible[0][0]).toFixed(1);
    const last = x(visible.at(-1)[0]).toFixed(1);
    nodes.push(
      svg("path", { class: "area", d: `M${first},${BOX.bottom} L${coords.join(" L")} L${last},${BOX.bottom} Z` }),
      svg("polyline", { class: "line", points: coords.join(" ") }),
      svg("circle", { class: "point", r: 2.5, cx: last, cy: y(visible.at(-1)[1]).toFixed(1) }),
    );
  }
  target.replaceChildren(...nodes);
  target.dataset.points = String(visible.length);
}
