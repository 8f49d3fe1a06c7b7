// The console's shell: sign-in, the section links, and which page the address (after #) shows.

import { ApiError, get, setToken, token } from "./api.js";
import * as tickets from "./tickets.js";
import * as ticket from "./ticket.js";
import * as plans from "./plans.js";
import * as risk from "./risk.js";
import * as webhooks from "./webhooks.js";
import * as system from "./system.js";

const view = document.getElementById("view");
let me = null;
let cleanup = null;

// `#/tickets/<id>` → [ticket, [id]]; the first segment picks the page, the rest are its parameters.
function route() {
  // A malformed escape (`%E0`) is taken as written rather than breaking the page.
  const decode = (p) => {
    try {
      return decodeURIComponent(p);
    } catch {
      return p;
    }
  };
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decode);
  const [section, ...rest] = parts;
  if (me.kind === "ticket") return [ticket, [rest[0] || me.ticket_id], "tickets"];
  switch (section) {
    case "tickets":
      return rest.length ? [ticket, rest, "tickets"] : [tickets, [], "tickets"];
    case "plans":
      return [plans, rest, "plans"];
    case "risk":
      return [risk, [], "risk"];
    case "webhooks":
      return [webhooks, rest, "webhooks"];
    case "system":
      return [system, [], "system"];
    default:
      return [tickets, [], "tickets"];
  }
}

function show() {
  if (cleanup) cleanup();
  cleanup = null;
  const [page, params, section] = route();
  for (const a of document.querySelectorAll("#nav a[data-section]")) {
    if (a.dataset.section === section) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  view.replaceChildren();
  cleanup = page.render(view, params, { me }) || null;
}

function signedIn(who) {
  me = who;
  const nav = document.getElementById("nav");
  // A ticket token sees its ticket only: no sections to offer.
  nav.hidden = me.kind === "ticket";
  document.getElementById("who").textContent =
    me.kind === "anonymous" ? "no sign-in (AUTH_MODE=disabled)" : `${me.kind}: ${me.subject}`;
  document.getElementById("signout").hidden = me.kind === "anonymous";
  window.addEventListener("hashchange", show);
  show();
}

function signIn(message) {
  me = null;
  window.removeEventListener("hashchange", show);
  if (cleanup) cleanup();
  cleanup = null;
  document.getElementById("nav").hidden = true;
  document.getElementById("signout").hidden = true;
  document.getElementById("who").textContent = "";
  const form = document.getElementById("signin-template").content.cloneNode(true);
  view.replaceChildren(form);
  const error = document.getElementById("signin-error");
  error.textContent = message || "";
  const input = document.getElementById("token");
  input.focus();
  document.getElementById("signin").addEventListener("submit", async (e) => {
    e.preventDefault();
    setToken(input.value.trim().replace(/^Bearer\s+/i, ""));
    try {
      signedIn(await get("/api/v1/me"));
    } catch (err) {
      setToken("");
      error.textContent = err instanceof ApiError ? `Refused (${err.status}): ${err.detail}` : String(err);
    }
  });
}

document.getElementById("signout").addEventListener("click", () => {
  setToken("");
  location.hash = "";
  signIn("Signed out.");
});

// Start: with a token kept in this tab, or none (AUTH_MODE=disabled answers without one).
(async () => {
  try {
    signedIn(await get("/api/v1/me"));
  } catch (err) {
    const kept = token();
    setToken("");
    signIn(kept && err instanceof ApiError ? `The kept token was refused: ${err.detail}` : "");
  }
})();
