/**
 * login.js — the /login form: posts JSON to /api/auth/login and goes back to `?next=`
 * (same-site paths only).
 */
import { api, ApiError, safeNext } from "./ui.js";

const form = /** @type {HTMLFormElement} */ (document.getElementById("login-form"));
const errorBox = /** @type {HTMLElement} */ (document.getElementById("login-error"));
const submit = /** @type {HTMLButtonElement} */ (document.getElementById("login-submit"));

/** @param {string} message */
function showError(message) {
  errorBox.textContent = message;
  errorBox.hidden = false;
}

/**
 * A sentence for the person at the keyboard.
 * @param {unknown} error
 * @returns {string}
 */
function describe(error) {
  if (!(error instanceof ApiError)) return "Cannot reach the server. Check your connection and try again.";
  if (error.status === 401) return "Invalid username or password.";
  if (error.status === 429) {
    const seconds = Number(error.headers?.get("Retry-After"));
    const wait = Number.isFinite(seconds) && seconds > 0
      ? ` in ${seconds >= 90 ? `${Math.ceil(seconds / 60)} minutes` : `${seconds} seconds`}`
      : " later";
    return `Too many failed attempts. Try again${wait}.`;
  }
  if (error.status === 400) return "Enter a username and a password.";
  return `Login failed: ${error.message}`;
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  errorBox.hidden = true;
  const data = new FormData(form);
  const username = String(data.get("username") || "").trim();
  const password = String(data.get("password") || "");
  if (!username || !password) {
    showError("Enter a username and a password.");
    return;
  }
  submit.disabled = true;
  try {
    await api("/api/auth/login", { method: "POST", body: { username, password } });
    const next = new URLSearchParams(location.search).get("next");
    location.assign(safeNext(next));
  } catch (error) {
    showError(describe(error));
    form.elements.namedItem("password").value = "";
    submit.disabled = false;
  }
});
