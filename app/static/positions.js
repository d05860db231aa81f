/**
 * positions.js — /admin/positions: the signed-in user's live portfolio.
 *
 * Renders the PortfolioStream's state (account cards, positions, recent orders), flashes cells
 * whose value changed, and shows the connection indicator (`data-state`: live, reconnecting,
 * polling, offline). Admins also get the test-trade form.
 */
import { formatDecimal, formatSignedMoney, sumMoney, trimDecimal } from "./format.js";
import { ConnectionState, PortfolioStream } from "./portfolio-stream.js";
import {
  api,
  clockTime,
  currentUser,
  el,
  flashNode,
  installFlashCleanup,
  redirectToLogin,
  setText,
  setupHeader,
} from "./ui.js";

const RECENT_ORDERS = 20;

const INDICATOR_LABELS = {
  [ConnectionState.CONNECTING]: ["Connecting…", "Connecting to the live stream"],
  [ConnectionState.LIVE]: ["Live", "Updates arrive as they happen"],
  [ConnectionState.RECONNECTING]: ["Reconnecting…", "The live stream dropped; reconnecting"],
  [ConnectionState.POLLING]: ["Polling", "Live stream unavailable; refreshing periodically"],
  [ConnectionState.OFFLINE]: ["Offline", "The server cannot be reached"],
  [ConnectionState.STOPPED]: ["Stopped", "Not connected"],
};

const money = (value) => formatDecimal(value, 2, { grouping: true });
const sign = (value) => Math.sign(Number(value) || 0);

/** Connection indicator in the header. */
function showState(state, detail = "") {
  const indicator = document.getElementById("connection");
  const [label, title] = INDICATOR_LABELS[state] || [state, ""];
  indicator.dataset.state = state;
  indicator.querySelector(".label").textContent = label;
  indicator.title = detail || title;
}

/** @param {HTMLElement} node @param {string | undefined} value */
function setPnlClass(node, value) {
  const direction = sign(value);
  node.classList.toggle("gain", direction > 0);
  node.classList.toggle("loss", direction < 0);
}

/**
 * Update one numeric cell; flash green when it went up, red when it went down.
 * @param {HTMLElement} cell
 * @param {string} text
 * @param {string | undefined} raw the exact value, compared with the previous one
 * @param {boolean} flash
 */
function setNumber(cell, text, raw, flash) {
  const previous = cell.dataset.raw;
  cell.dataset.raw = raw ?? "";
  const direction = previous === undefined ? 0 : sign(Number(raw) - Number(previous));
  setText(cell, text, { flash, direction });
}

class PositionsView {
  constructor() {
    this.body = document.querySelector("#positions tbody");
    this.empty = document.getElementById("positions-empty");
    /** @type {Map<string, HTMLTableRowElement>} */
    this.rows = new Map();
  }

  /** @param {object[]} positions sorted by symbol @param {boolean} flash */
  render(positions, flash) {
    const seen = new Set();
    positions.forEach((position, index) => {
      seen.add(position.symbol);
      let row = this.rows.get(position.symbol);
      const added = !row;
      if (added) {
        row = this.createRow(position.symbol);
        this.rows.set(position.symbol, row);
      }
      if (this.body.children[index] !== row) this.body.insertBefore(row, this.body.children[index] || null);
      this.fill(row, position, flash && !added);
      if (added && flash) flashNode(row, 0);
    });
    for (const [symbol, row] of this.rows) {
      if (!seen.has(symbol)) {
        row.remove();
        this.rows.delete(symbol);
      }
    }
    this.empty.hidden = positions.length > 0;
  }

  createRow(symbol) {
    const cells = ["symbol", "qty", "avg", "price", "value", "pnl"].map((name) =>
      el("td", {
        class: name === "symbol" ? "sym" : name === "avg" || name === "value" ? "num opt" : "num",
        dataset: { col: name },
      }),
    );
    cells[0].textContent = symbol;
    return el("tr", { dataset: { symbol } }, ...cells);
  }

  fill(row, p, flash) {
    const cell = (name) => row.querySelector(`[data-col="${name}"]`);
    setNumber(cell("qty"), trimDecimal(p.qty), p.qty, flash);
    setNumber(cell("avg"), money(p.avgEntryPrice), p.avgEntryPrice, flash);
    setNumber(cell("price"), money(p.currentPrice), p.currentPrice, flash);
    setNumber(cell("value"), money(p.marketValue), p.marketValue, flash);
    const pnl = cell("pnl");
    const percent = p.unrealizedPnlPercent !== undefined && p.unrealizedPnlPercent !== null
      ? ` (${formatDecimal(p.unrealizedPnlPercent, 2, { sign: true })}%)`
      : "";
    setNumber(pnl, `${formatSignedMoney(p.unrealizedPnl, { grouping: true })}${percent}`,
      p.unrealizedPnl, flash);
    setPnlClass(pnl, p.unrealizedPnl);
  }
}

class OrdersView {
  constructor() {
    this.body = document.querySelector("#orders tbody");
    this.empty = document.getElementById("orders-empty");
  }

  /** @param {object[]} orders newest first @param {Set<string>} changed */
  render(orders, changed) {
    const rows = orders.map((order) => {
      const row = el(
        "tr",
        { dataset: { orderId: order.orderId, status: order.status } },
        el("td", {}, clockTime(order.timestamp)),
        el("td", { class: "sym" }, order.symbol),
        el("td", { class: `side side-${order.side}` }, order.side),
        el("td", { class: "opt" }, order.type || "—"),
        el("td", { class: "num" }, trimDecimal(order.qty)),
        el("td", { class: "num opt" }, trimDecimal(order.filledQty)),
        el("td", { class: "num opt" }, order.filledAvgPrice ? money(order.filledAvgPrice) : "—"),
        el("td", {}, el("span", { class: `status status-${order.status}` }, order.status)),
      );
      if (changed.has(order.orderId)) flashNode(row, 0);
      return row;
    });
    this.body.replaceChildren(...rows);
    this.empty.hidden = orders.length > 0;
  }
}

class AccountView {
  /** @param {object | null} account @param {object[]} positions @param {boolean} flash */
  render(account, positions, flash) {
    const cells = {
      equity: document.getElementById("equity"),
      cash: document.getElementById("cash"),
      buyingPower: document.getElementById("buying-power"),
    };
    for (const [field, node] of Object.entries(cells)) {
      const value = account ? account[field] : undefined;
      setNumber(node, account ? `$${money(value)}` : "—", value, flash);
    }
    const total = document.getElementById("total-pnl");
    if (positions.length === 0) {
      setText(total, "—", { flash: false });
      setPnlClass(total, "0");
      return;
    }
    const sum = sumMoney(positions.map((p) => p.unrealizedPnl));
    setNumber(total, formatSignedMoney(sum, { grouping: true }), sum, flash);
    setPnlClass(total, sum);
  }
}

/** The admin-only test-trade form. */
function setupTestTrade(user) {
  const panel = document.getElementById("test-trade-panel");
  const form = /** @type {HTMLFormElement} */ (document.getElementById("test-trade"));
  const result = document.getElementById("test-trade-result");
  panel.hidden = false;
  form.elements.namedItem("username").value = user.username;
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const data = new FormData(form);
    const button = form.querySelector("button");
    button.disabled = true;
    result.className = "form-result";
    result.textContent = "Placing order…";
    try {
      const { order } = await api("/api/admin/test-trade", {
        method: "POST",
        body: {
          username: String(data.get("username")).trim(),
          symbol: String(data.get("symbol")).trim().toUpperCase(),
          side: String(data.get("side")),
          qty: String(data.get("qty")),
        },
      });
      result.classList.add("ok");
      result.textContent = `Order placed: ${order.side ?? ""} ${order.qty ?? ""} ${order.symbol ?? ""}`
        + ` (${order.status ?? "accepted"}, order ${String(order.orderId ?? order.id ?? "?").slice(0, 8)})`;
    } catch (error) {
      result.classList.add("error");
      result.textContent = `Order not placed: ${error.message}`;
    } finally {
      button.disabled = false;
    }
  });
}

async function main() {
  installFlashCleanup();
  const user = await currentUser();
  setupHeader(user);
  if (user.isAdmin) setupTestTrade(user);

  const positionsView = new PositionsView();
  const ordersView = new OrdersView();
  const accountView = new AccountView();
  const updatedAt = document.getElementById("updated-at");
  let rendered = false;

  const stream = new PortfolioStream({ channels: ["positions", "orders", "account"] });
  window.portfolioStream = stream; // for operators poking at the console
  stream.addEventListener("statechange", (event) => {
    const { state } = event.detail;
    const seconds = stream.pollIntervalMs / 1000;
    showState(state, state === ConnectionState.POLLING
      ? `Live stream unavailable; refreshing every ${seconds} s` : "");
  });
  stream.addEventListener("reconnecting", (event) => {
    const { attempt, maxAttempts, delayMs } = event.detail;
    showState(stream.state, `Next connection attempt in ${delayMs} ms (${attempt}/${maxAttempts})`);
  });
  stream.addEventListener("unauthorized", () => redirectToLogin());
  stream.addEventListener("change", (event) => {
    const flash = rendered; // the first render is not news
    const positions = stream.positionList();
    positionsView.render(positions, flash);
    ordersView.render(stream.orderList(RECENT_ORDERS),
      new Set(flash && !event.detail.reset ? event.detail.orders : []));
    accountView.render(stream.account, positions, flash);
    updatedAt.textContent = `Updated ${clockTime(stream.lastUpdateAt)}`
      + (event.detail.source === "poll" ? " (polling)" : "");
    rendered = true;
  });
  await stream.start();
}

main().catch((error) => {
  if (error?.status !== 401) console.error("[PortfolioStream] Page failed to start", error);
});
