/**
 * ui.js — small helpers shared by the pages: JSON requests, element building, the header
 * (signed-in user, navigation, logout) and safe redirects. No framework, no inline script.
 */

/** An error from the HTTP API, carrying its status and machine-readable code. */
export class ApiError extends Error {
  /**
   * @param {number} status
   * @param {string} code
   * @param {string} message
   * @param {Headers} [headers]
   */
  constructor(status, code, message, headers) {
    super(message);
    this.status = status;
    this.code = code;
    this.headers = headers;
  }
}

/**
 * Fetch JSON from the API (same-origin cookies, never cached).
 * @param {string} url
 * @param {{ method?: string, body?: unknown }} [init]
 * @returns {Promise<any>} the decoded body
 * @throws {ApiError} on a non-2xx answer; a TypeError when the server cannot be reached
 */
export async function api(url, { method = "GET", body } = {}) {
  const init = {
    method,
    credentials: "same-origin",
    cache: "no-store",
    headers: { Accept: "application/json" },
  };
  // State-changing requests must be JSON (the server's CSRF rule), even without a body.
  if (body !== undefined || method !== "GET") {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body ?? {});
  }
  const response = await fetch(url, init);
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    throw new ApiError(
      response.status,
      data.error || "http_error",
      data.message || `HTTP ${response.status}`,
      response.headers,
    );
  }
  return data;
}

/**
 * Build an element: `el("td", { class: "num", dataset: { symbol } }, "12.00")`.
 * @param {string} tag
 * @param {Record<string, any>} [attrs] attributes; `dataset` sets data-* attributes
 * @param {...(Node | string | null | undefined)} children
 * @returns {HTMLElement}
 */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

/**
 * A same-site path to go back to after login, or the default; never another origin.
 * @param {string | null} next
 * @param {string} [fallback]
 * @returns {string}
 */
export function safeNext(next, fallback = "/admin/positions") {
  if (!next || !next.startsWith("/") || next.startsWith("//") || next.includes("\\")) {
    return fallback;
  }
  return next;
}

// Set by this tab's logout button, which goes to /login itself: the server then ends the
// page's live socket (4001) too, and that must not send the page elsewhere meanwhile.
let signingOut = false;

/** Send the browser to the login page, asking it to come back here. */
export function redirectToLogin() {
  if (signingOut) return;
  const here = location.pathname + location.search;
  location.assign(`/login?next=${encodeURIComponent(here)}`);
}

/**
 * The signed-in user, or a redirect to the login page.
 * @returns {Promise<{ userId: string, username: string, isAdmin: boolean }>}
 */
export async function currentUser() {
  try {
    const { user } = await api("/api/auth/me");
    return user;
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) redirectToLogin();
    throw error;
  }
}

/**
 * Fill the page header: who is signed in, the admin link, the logout button.
 * @param {{ username: string, isAdmin: boolean }} user
 */
export function setupHeader(user) {
  const name = document.getElementById("user-name");
  if (name) name.textContent = user.username;
  for (const link of document.querySelectorAll("[data-admin-only]")) {
    link.hidden = !user.isAdmin;
  }
  const logout = document.getElementById("logout");
  if (logout) {
    logout.addEventListener("click", async () => {
      logout.disabled = true;
      signingOut = true;
      await api("/api/auth/logout", { method: "POST" }).catch(() => {});
      location.assign("/login");
    });
  }
}

/**
 * Put text in a node and, when it differs from what was there, flash it briefly.
 * @param {HTMLElement} node
 * @param {string} text
 * @param {{ flash?: boolean, direction?: number }} [opts] `direction` > 0 flashes green,
 *   < 0 red, 0 neutral
 * @returns {boolean} whether the text changed
 */
export function setText(node, text, { flash = true, direction = 0 } = {}) {
  if (node.textContent === text) return false;
  node.textContent = text;
  if (flash) flashNode(node, direction);
  return true;
}

/**
 * Restart the flash animation on a node.
 * @param {HTMLElement} node
 * @param {number} [direction]
 */
export function flashNode(node, direction = 0) {
  node.classList.remove("flash", "flash-up", "flash-down");
  void node.offsetWidth; // restart the CSS animation
  node.classList.add(direction > 0 ? "flash-up" : direction < 0 ? "flash-down" : "flash");
}

/** Remove the flash classes when their animation ends (one listener for the page). */
export function installFlashCleanup() {
  document.addEventListener("animationend", (event) => {
    const target = /** @type {HTMLElement} */ (event.target);
    if (event.animationName.startsWith("flash")) {
      target.classList.remove("flash", "flash-up", "flash-down");
    }
  });
}

/**
 * Local time of an ISO timestamp, e.g. "14:03:27".
 * @param {string | Date | null | undefined} value
 * @returns {string}
 */
export function clockTime(value) {
  if (!value) return "—";
  const date = value instanceof Date ? value : new Date(value);
  if (Number.isNaN(date.getTime())) return "—";
  return date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}
