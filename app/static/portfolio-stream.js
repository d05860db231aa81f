/**
 * portfolio-stream.js — the browser client of `/ws/portfolio` (no build step, no dependencies).
 *
 * It keeps a local, latest-value copy of the signed-in user's portfolio (positions by symbol,
 * orders by id, the account) and tells the page what changed through DOM events:
 *
 *   const stream = new PortfolioStream({ channels: ["positions", "orders", "account"] });
 *   stream.addEventListener("change", (e) => render(stream, e.detail));
 *   stream.addEventListener("statechange", (e) => showIndicator(e.detail.state));
 *   stream.start();
 *
 * Transport policy:
 * - reads `/api/realtime/config`; when the WebSocket is enabled it connects, subscribes, applies
 *   the `snapshot` and every `batch`, checks that `seq` grows by one and asks for a `resync`
 *   (a fresh snapshot) when it does not;
 * - sends an application-level `ping` every heartbeat interval and drops a socket that has been
 *   silent for two intervals;
 * - reconnects with exponential backoff and full jitter (ceiling 1000 ms, 2000 ms, 4000 ms, ...),
 *   at most 10 attempts in a row; a close with 1013 (server at its connection limit) backs off
 *   longer and never retries almost at once; a close with 4001 (the session ended: logged out,
 *   expired, user removed) is not retried at all: the stream stops and says `unauthorized`,
 *   and the page sends the user to sign in;
 * - when the WebSocket is disabled by the feature flag or cannot be reached, it falls back
 *   within 5 s to polling `/api/portfolio` every 5 s, keeps trying the WebSocket, and switches
 *   back (stopping the polling) as soon as the socket is live again.
 *
 * Console lines follow the operator runbook, e.g.
 *   [PortfolioStream] Connecting to: ws://localhost:5000/ws/portfolio
 *   [PortfolioStream] Reconnecting in 1000ms (attempt 1/10)
 *   [Realtime] Position updated: AAPL +$550.00
 */

import { formatDecimal, formatSignedMoney } from "./format.js";

const TAG = "[PortfolioStream]";
const REALTIME = "[Realtime]";

/** Close code of a deliberate close by this client (`stop()`). */
export const CLOSE_NORMAL = 1000;
/** WebSocket close code the server uses when a connection limit is reached. */
export const CLOSE_TRY_AGAIN_LATER = 1013;
/** Close code this client uses when it gives up on a silent socket. */
export const CLOSE_HEARTBEAT_TIMEOUT = 4000;
/** Close code the server uses when the session behind the socket has ended: sign in again. */
export const CLOSE_SESSION_ENDED = 4001;

/**
 * Connection states, as shown by the page's indicator (`data-state`).
 * @readonly
 * @enum {string}
 */
export const ConnectionState = Object.freeze({
  /** First connection attempt in progress. */
  CONNECTING: "connecting",
  /** WebSocket open and subscribed: updates arrive as they happen. */
  LIVE: "live",
  /** The socket dropped; a new attempt is scheduled or running. */
  RECONNECTING: "reconnecting",
  /** No socket, but `/api/portfolio` answers: updates every poll interval. */
  POLLING: "polling",
  /** Neither the socket nor the REST fallback reaches the server. */
  OFFLINE: "offline",
  /** `stop()` was called. */
  STOPPED: "stopped",
});

/**
 * @typedef {object} PortfolioStreamOptions
 * @property {string[]} [channels] channels to subscribe to (`positions`, `orders`, `account`)
 * @property {string} [configUrl] where the realtime configuration is read
 * @property {string} [portfolioUrl] the REST snapshot used while polling
 * @property {number} [baseDelayMs] backoff ceiling of the first reconnect attempt
 * @property {number} [maxDelayMs] largest backoff ceiling for ordinary failures
 * @property {number} [maxAttempts] reconnect attempts in a row before resting
 * @property {number} [limitBackoffFactor] how much longer to back off after a 1013 close
 * @property {number} [limitMaxDelayMs] largest backoff ceiling after a 1013 close
 * @property {number} [restAfterMaxAttemptsMs] pause after `maxAttempts` failures before a new round
 * @property {number} [fallbackAfterMs] how long without a live socket before polling starts (< 5 s)
 * @property {number} [connectTimeoutMs] an opening handshake that takes longer counts as failed
 * @property {number} [configRecheckMs] how often a disabled stream re-reads the configuration
 * @property {() => number} [random] source of jitter in [0, 1)
 * @property {Pick<Console, "log" | "info" | "warn" | "error">} [logger] where log lines go
 */

/** @type {Required<PortfolioStreamOptions>} */
const DEFAULTS = Object.freeze({
  channels: ["positions", "orders", "account"],
  configUrl: "/api/realtime/config",
  portfolioUrl: "/api/portfolio",
  baseDelayMs: 1000,
  maxDelayMs: 30000,
  maxAttempts: 10,
  limitBackoffFactor: 5,
  limitMaxDelayMs: 120000,
  restAfterMaxAttemptsMs: 60000,
  fallbackAfterMs: 3000,
  connectTimeoutMs: 10000,
  configRecheckMs: 30000,
  random: () => Math.random(),
  logger: console,
});

/** Used until `/api/realtime/config` has answered. */
const DEFAULT_CONFIG = Object.freeze({
  enabled: true,
  wsPath: "/ws/portfolio",
  pollIntervalMs: 5000,
  heartbeatIntervalMs: 15000,
});

/**
 * The wait before reconnect attempt `attempt`: exponential backoff with full jitter, a uniform
 * delay in [0, base * 2^(attempt-1)] capped at `maxDelayMs`. After a 1013 close (the server is
 * at its connection limit) the ceiling is `limitBackoffFactor` times larger (capped at
 * `limitMaxDelayMs`) and the delay is drawn from its upper half, so such a server is never
 * retried almost at once.
 * @param {number} attempt 1-based attempt number
 * @param {number | null} closeCode the close code that ended the previous socket, if any
 * @param {Pick<Required<PortfolioStreamOptions>, "baseDelayMs" | "maxDelayMs" |
 *   "limitBackoffFactor" | "limitMaxDelayMs" | "random">} [options]
 * @returns {number} whole milliseconds
 */
export function reconnectDelay(attempt, closeCode, options = DEFAULTS) {
  const o = { ...DEFAULTS, ...options };
  const ceiling = Math.min(o.maxDelayMs, o.baseDelayMs * 2 ** (attempt - 1));
  if (closeCode === CLOSE_TRY_AGAIN_LATER) {
    const limited = Math.min(o.limitMaxDelayMs, ceiling * o.limitBackoffFactor);
    return Math.round(limited / 2 + o.random() * (limited / 2));
  }
  return Math.round(o.random() * ceiling);
}

/**
 * Streams one user's portfolio from `/ws/portfolio`, with a polling fallback.
 *
 * Events (all `CustomEvent`s, dispatched on the instance):
 * - `statechange` — `{ state, previous }`, a {@link ConnectionState} value
 * - `change` — `{ source: "snapshot"|"batch"|"poll", reset, positions, closed, orders, account }`:
 *   `reset` is true when whole channels were replaced; otherwise the lists name what changed
 * - `reconnecting` — `{ attempt, maxAttempts, delayMs, code }` before each scheduled attempt
 * - `unauthorized` — `{ reason }`: the session is gone (a 4001 close, or the REST fallback
 *   answered 401)
 * - `servererror` — `{ code, message }` of a protocol `error` frame
 */
export class PortfolioStream extends EventTarget {
  /** @param {PortfolioStreamOptions} [options] */
  constructor(options = {}) {
    super();
    /** @type {Required<PortfolioStreamOptions>} */
    this.options = { ...DEFAULTS, ...options };
    /** @type {Map<string, object>} open positions by symbol */
    this.positions = new Map();
    /** @type {Map<string, object>} open and recent orders by order id */
    this.orders = new Map();
    /** @type {object | null} the account (equity, cash, buyingPower, updatedAt) */
    this.account = null;
    /** @type {string} current {@link ConnectionState} */
    this.state = ConnectionState.STOPPED;
    /** @type {string | null} the server's id for the current socket */
    this.connectionId = null;
    /** @type {Date | null} when data last arrived (socket or poll) */
    this.lastUpdateAt = null;

    this._config = { ...DEFAULT_CONFIG };
    this._stopped = true;
    /** @type {WebSocket | null} */
    this._ws = null;
    this._live = false;
    this._seq = 0;
    this._resyncPending = false;
    this._attempt = 0;
    this._lastHeard = 0;
    this._disabled = false;
    this._polling = false;
    this._pollOk = false;
    this._pollFailed = false;
    this._timers = { reconnect: 0, fallback: 0, poll: 0, ping: 0, connect: 0, recheck: 0 };
  }

  /** Start streaming (idempotent). Resolves once the first connection attempt has begun. */
  async start() {
    if (!this._stopped) return;
    this._stopped = false;
    this._attempt = 0;
    this._setState(ConnectionState.CONNECTING);
    this._armFallback();
    const config = await this._loadConfig();
    if (this._stopped) return;
    if (config === null) {
      this._scheduleReconnect(null);
    } else if (!config.enabled) {
      this._enterDisabled();
    } else {
      this._open();
    }
  }

  /** Stop streaming: close the socket, cancel every timer, stop polling. */
  stop() {
    this._stopped = true;
    for (const name of Object.keys(this._timers)) this._clearTimer(name);
    this._polling = false;
    this._dropSocket(CLOSE_NORMAL, "Client stopped");
    this._setState(ConnectionState.STOPPED);
  }

  /** How often the REST fallback polls: the server's `pollIntervalMs` (POLL_INTERVAL_MS). */
  get pollIntervalMs() {
    return this._config.pollIntervalMs;
  }

  /**
   * Positions sorted by symbol.
   * @returns {object[]}
   */
  positionList() {
    return [...this.positions.values()].sort((a, b) => a.symbol.localeCompare(b.symbol));
  }

  /**
   * Orders, newest first.
   * @param {number} [limit]
   * @returns {object[]}
   */
  orderList(limit = 50) {
    return [...this.orders.values()]
      .sort((a, b) => String(b.timestamp || "").localeCompare(String(a.timestamp || "")))
      .slice(0, limit);
  }

  // --- configuration -------------------------------------------------------------------

  /** @returns {Promise<typeof DEFAULT_CONFIG | null>} null when the server is unreachable */
  async _loadConfig() {
    try {
      const response = await fetch(this.options.configUrl, {
        credentials: "same-origin",
        cache: "no-store",
      });
      if (!response.ok) return null;
      this._config = { ...DEFAULT_CONFIG, ...(await response.json()) };
      return this._config;
    } catch {
      return null;
    }
  }

  _socketUrl() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return `${scheme}//${location.host}${this._config.wsPath}`;
  }

  // --- the socket ----------------------------------------------------------------------

  _open() {
    if (this._stopped || this._ws) return;
    const url = this._socketUrl();
    this.options.logger.info(`${TAG} Connecting to: ${url}`);
    if (this.state !== ConnectionState.CONNECTING) this._refreshState();
    let ws;
    try {
      ws = new WebSocket(url);
    } catch (error) {
      this.options.logger.error(`${TAG} WebSocket connection error`, error);
      this._scheduleReconnect(null);
      return;
    }
    this._ws = ws;
    this._seq = 0;
    this._resyncPending = false;
    let opened = false;
    this._setTimer("connect", this.options.connectTimeoutMs, () => {
      this.options.logger.error(`${TAG} WebSocket connection error`, "handshake timed out");
      this._dropSocket(CLOSE_HEARTBEAT_TIMEOUT, "Handshake timeout");
      this._afterClose(null, false);
    });
    ws.onopen = () => {
      opened = true;
      this._clearTimer("connect");
      this._lastHeard = Date.now();
    };
    ws.onerror = () => this.options.logger.error(`${TAG} WebSocket connection error`);
    ws.onmessage = (event) => this._onMessage(event.data);
    ws.onclose = (event) => {
      if (ws !== this._ws) return;
      this._ws = null;
      this._clearTimer("connect");
      this._afterClose(event.code, opened, event.reason);
    };
  }

  /** Detach and close the current socket without waiting for the closing handshake. */
  _dropSocket(code, reason) {
    const ws = this._ws;
    this._ws = null;
    this._live = false;
    this._clearTimer("ping");
    if (!ws) return;
    ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
    try {
      ws.close(code, reason);
    } catch {
      ws.close();
    }
  }

  /**
   * The socket is gone (or never opened): schedule the next attempt and make sure the page
   * keeps getting data through the REST fallback meanwhile.
   * @param {number | null} code close code, null when no close frame was seen
   * @param {boolean} opened whether the handshake had completed
   * @param {string} [reason]
   */
  _afterClose(code, opened, reason = "") {
    const wasLive = this._live;
    this._live = false;
    this.connectionId = null;
    this._clearTimer("ping");
    if (this._stopped) return;
    if (wasLive) {
      const why = reason ? `, reason=${reason}` : "";
      this.options.logger.warn(`${TAG} Connection closed: code=${code}${why}`);
    }
    if (code === CLOSE_SESSION_ENDED) {
      // Reconnecting would only be refused with 401: the user has to sign in again.
      this.options.logger.warn(`${TAG} Session ended; not reconnecting`);
      this.stop();
      this._emit("unauthorized", { reason });
      return;
    }
    this._armFallback();
    this._scheduleReconnect(code);
    if (!opened) this._checkDisabled();
  }

  /** A refused handshake may mean the flag was turned off: ask the configuration. */
  async _checkDisabled() {
    const config = await this._loadConfig();
    if (config && !config.enabled && !this._stopped && !this._live) this._enterDisabled();
  }

  _scheduleReconnect(code) {
    if (this._stopped || this._timers.reconnect || this._disabled) return;
    const { maxAttempts } = this.options;
    if (this._attempt >= maxAttempts) {
      this.options.logger.warn(
        `${TAG} Giving up after ${maxAttempts} attempts; polling ${this.options.portfolioUrl}` +
          ` and trying again in ${this.options.restAfterMaxAttemptsMs}ms`,
      );
      this._startPolling();
      this._setTimer("reconnect", this.options.restAfterMaxAttemptsMs, () => {
        this._attempt = 0;
        this._retry();
      });
      this._refreshState();
      return;
    }
    this._attempt += 1;
    const delayMs = reconnectDelay(this._attempt, code, this.options);
    this.options.logger.warn(
      `${TAG} Reconnecting in ${delayMs}ms (attempt ${this._attempt}/${maxAttempts})`,
    );
    this._setTimer("reconnect", delayMs, () => this._retry());
    this._refreshState();
    this._emit("reconnecting", { attempt: this._attempt, maxAttempts, delayMs, code });
  }

  async _retry() {
    if (this._stopped || this._ws) return;
    const config = await this._loadConfig();
    if (this._stopped || this._ws) return;
    if (config && !config.enabled) {
      this._enterDisabled();
      return;
    }
    // An unreachable configuration endpoint still gets a socket attempt: it logs the failure
    // the way operators expect and costs nothing more than the fetch did.
    this._open();
  }

  // --- messages ------------------------------------------------------------------------

  _onMessage(data) {
    this._lastHeard = Date.now();
    let message;
    try {
      message = JSON.parse(data);
    } catch {
      this.options.logger.warn(`${TAG} Ignoring a frame that is not JSON`);
      return;
    }
    switch (message.type) {
      case "connected":
        this._onConnected(message);
        break;
      case "subscribed":
        this.options.logger.info(
          `${TAG} Subscribed to channels: ${JSON.stringify(message.channels).replaceAll('","', '", "')}`,
        );
        break;
      case "snapshot":
        this._checkSeq(message.seq);
        this._resyncPending = false;
        this._attempt = 0; // a snapshot means the connection really works
        this._applySnapshot(message, "snapshot");
        break;
      case "batch":
        this._checkSeq(message.seq);
        this._applyBatch(message);
        break;
      case "pong":
        break;
      case "error":
        this.options.logger.warn(`${TAG} Server error: ${message.code}: ${message.message}`);
        this._emit("servererror", { code: message.code, message: message.message });
        break;
      default:
        break;
    }
  }

  _onConnected(message) {
    this.connectionId = message.connectionId;
    this._live = true;
    this._disabled = false;
    this._clearTimer("fallback");
    this._clearTimer("recheck");
    this._stopPolling();
    this.options.logger.info(`${TAG} Connected successfully`);
    this._send({ type: "subscribe", channels: this.options.channels });
    const interval = message.heartbeatIntervalMs || this._config.heartbeatIntervalMs;
    this._setTimer("ping", interval, () => this._heartbeat(interval), true);
    this._refreshState();
  }

  /** Ping the server; drop the socket when nothing was heard for two intervals. */
  _heartbeat(interval) {
    const silentMs = Date.now() - this._lastHeard;
    if (silentMs > 2 * interval) {
      this.options.logger.warn(
        `${TAG} No message from the server for ${Math.round(silentMs / 1000)}s; reconnecting`,
      );
      this._dropSocket(CLOSE_HEARTBEAT_TIMEOUT, "Heartbeat timeout");
      this._afterClose(CLOSE_HEARTBEAT_TIMEOUT, true);
      return;
    }
    this._send({ type: "ping" });
  }

  _checkSeq(seq) {
    const expected = this._seq + 1;
    this._seq = seq;
    if (seq === expected || this._resyncPending) return;
    this.options.logger.warn(
      `${TAG} Sequence gap: expected seq ${expected}, got ${seq}; requesting resync`,
    );
    this._resyncPending = true;
    this._send({ type: "resync" });
  }

  _send(message) {
    if (this._ws && this._ws.readyState === WebSocket.OPEN) {
      this._ws.send(JSON.stringify(message));
    }
  }

  // --- state ---------------------------------------------------------------------------

  /**
   * Replace whole channels (a socket snapshot or a REST poll).
   * @param {{ positions?: object[], orders?: object[], account?: object | null }} body
   * @param {"snapshot" | "poll"} source
   */
  _applySnapshot(body, source) {
    if (Array.isArray(body.positions)) {
      this.positions = new Map(body.positions.map((p) => [p.symbol, p]));
    }
    if (Array.isArray(body.orders)) {
      this.orders = new Map(body.orders.map((o) => [o.orderId, o]));
    }
    if ("account" in body) this.account = body.account ?? null;
    this.lastUpdateAt = new Date();
    this._emit("change", {
      source,
      reset: true,
      positions: [...this.positions.keys()],
      closed: [],
      orders: [...this.orders.keys()],
      account: "account" in body,
    });
  }

  /** Apply only what changed, and log it the way the runbook shows. */
  _applyBatch(batch) {
    const log = this.options.logger;
    const positions = batch.positions || [];
    const closed = batch.closedPositions || [];
    const orders = batch.orders || [];
    for (const position of positions) {
      this.positions.set(position.symbol, position);
      log.info(
        `${REALTIME} Position updated: ${position.symbol} ${formatSignedMoney(position.unrealizedPnl)}`,
      );
    }
    for (const symbol of closed) {
      this.positions.delete(symbol);
      log.info(`${REALTIME} Position closed: ${symbol}`);
    }
    for (const order of orders) {
      this.orders.set(order.orderId, order);
      log.info(
        `${REALTIME} Order updated: ${order.symbol} ${order.side} ${order.qty} ${order.status}`,
      );
    }
    const accountChanged = Boolean(batch.account);
    if (accountChanged) {
      this.account = batch.account;
      log.info(`${REALTIME} Account updated: equity = ${formatDecimal(batch.account.equity, 2)}`);
    }
    this.lastUpdateAt = new Date();
    this._emit("change", {
      source: "batch",
      reset: false,
      positions: positions.map((p) => p.symbol),
      closed,
      orders: orders.map((o) => o.orderId),
      account: accountChanged,
    });
  }

  // --- polling fallback ----------------------------------------------------------------

  _enterDisabled() {
    if (!this._disabled) {
      this.options.logger.info(`${TAG} Realtime updates are disabled on the server`);
    }
    this._disabled = true;
    this._clearTimer("reconnect");
    this._attempt = 0;
    this._startPolling();
    this._setTimer("recheck", this.options.configRecheckMs, async () => {
      const config = await this._loadConfig();
      if (this._stopped) return;
      if (config && config.enabled) {
        this._disabled = false;
        this._open();
      } else {
        this._enterDisabled();
      }
    });
  }

  /** Poll if no live socket appears within `fallbackAfterMs` (the contract says 5 s). */
  _armFallback() {
    if (this._polling || this._timers.fallback) return;
    this._setTimer("fallback", this.options.fallbackAfterMs, () => {
      if (!this._live && !this._stopped) this._startPolling();
    });
  }

  _startPolling() {
    this._clearTimer("fallback");
    if (this._polling || this._stopped) return;
    this._polling = true;
    this._pollOk = false;
    this._pollFailed = false;
    this.options.logger.warn(
      `${TAG} Falling back to polling ${this.options.portfolioUrl} every ${this._config.pollIntervalMs}ms`,
    );
    this._poll();
  }

  _stopPolling() {
    if (this._polling) this.options.logger.info(`${TAG} Live again; polling stopped`);
    this._polling = false;
    this._pollOk = false;
    this._pollFailed = false;
    this._clearTimer("poll");
  }

  async _poll() {
    if (!this._polling) return;
    try {
      const response = await fetch(this.options.portfolioUrl, {
        credentials: "same-origin",
        cache: "no-store",
        headers: { Accept: "application/json" },
      });
      if (response.status === 401) {
        this._emit("unauthorized", { reason: "session expired" });
        throw new Error("session expired");
      }
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const body = await response.json();
      if (!this._polling) return; // the socket came back while we waited
      this._pollOk = true;
      this._pollFailed = false;
      this._applySnapshot(body, "poll");
    } catch (error) {
      if (!this._polling) return;
      if (!this._pollFailed) {
        this.options.logger.warn(`${TAG} Polling ${this.options.portfolioUrl} failed: ${error.message}`);
      }
      this._pollOk = false;
      this._pollFailed = true;
    }
    this._refreshState();
    this._setTimer("poll", this._config.pollIntervalMs, () => this._poll());
  }

  // --- plumbing ------------------------------------------------------------------------

  _refreshState() {
    let state;
    if (this._stopped) state = ConnectionState.STOPPED;
    else if (this._live) state = ConnectionState.LIVE;
    else if (this._polling && this._pollOk) state = ConnectionState.POLLING;
    else if (this._polling && this._pollFailed) state = ConnectionState.OFFLINE;
    else if (this.state === ConnectionState.CONNECTING && this._attempt === 0) {
      state = ConnectionState.CONNECTING;
    } else state = ConnectionState.RECONNECTING;
    this._setState(state);
  }

  _setState(state) {
    if (state === this.state) return;
    const previous = this.state;
    this.state = state;
    this._emit("statechange", { state, previous });
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  _setTimer(name, delayMs, callback, repeat = false) {
    this._clearTimer(name);
    const run = () => {
      if (!repeat) this._timers[name] = 0;
      callback();
    };
    this._timers[name] = repeat ? setInterval(run, delayMs) : setTimeout(run, delayMs);
  }

  _clearTimer(name) {
    const id = this._timers[name];
    if (id) {
      clearTimeout(id);
      clearInterval(id);
    }
    this._timers[name] = 0;
  }
}
