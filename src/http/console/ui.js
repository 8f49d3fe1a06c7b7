// Small DOM helpers shared by the pages. Text always goes in as text (textContent), never as HTML.

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

export function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== undefined && v !== null) node.setAttribute(k, v);
  append(node, children);
  return node;
}

export function link(hash, text) {
  return el("a", { href: hash }, text);
}

export function ticketLink(id) {
  return link(`#/tickets/${encodeURIComponent(id)}`, id);
}

export function planLink(id) {
  return link(`#/plans/${encodeURIComponent(id)}`, id);
}

export function badge(status) {
  return el("span", { class: `badge s-${String(status).toLowerCase()}` }, status);
}

export function time(ms) {
  if (ms === undefined || ms === null) return "—";
  return new Date(ms).toISOString().replace("T", " ").replace("Z", "");
}

// "3m 05s", "-12s" (past), "2d 4h".
export function duration(ms) {
  const sign = ms < 0 ? "-" : "";
  let s = Math.floor(Math.abs(ms) / 1000);
  const d = Math.floor(s / 86400);
  const h = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  s %= 60;
  if (d) return `${sign}${d}d ${h}h`;
  if (h) return `${sign}${h}h ${String(m).padStart(2, "0")}m`;
  if (m) return `${sign}${m}m ${String(s).padStart(2, "0")}s`;
  return `${sign}${s}s`;
}

const FINISHED = new Set(["COMPLETED", "CANCELLED", "COMPENSATED"]);

export function finished(status) {
  return FINISHED.has(status);
}

// A live countdown to `deadline`: every element made here is refreshed once a second while it is on the page.
export function countdown(deadline, status) {
  const node = el("span", { class: "countdown", dataset: { deadline: String(deadline), status } });
  refresh(node);
  return node;
}

function refresh(node) {
  const left = Number(node.dataset.deadline) - Date.now();
  if (finished(node.dataset.status)) {
    node.textContent = "—";
    node.className = "countdown";
    return;
  }
  node.textContent = left < 0 ? `overdue ${duration(-left)}` : duration(left);
  node.className = `countdown ${left < 0 ? "late" : left < 60000 ? "soon" : ""}`;
}

setInterval(() => document.querySelectorAll(".countdown").forEach(refresh), 1000);

// Asks before an action; resolves true when confirmed. A <dialog>: focus moves into it and Escape cancels.
export function confirmAction(text, okLabel = "Confirm") {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent = text;
  document.getElementById("confirm-ok").textContent = okLabel;
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.returnValue = "cancel";
    dialog.showModal();
  });
}

// Where a page shows the API's answer to an action: its error message as the API gave it, or a success note.
export function messageBox() {
  const box = el("p", { class: "message", role: "status", "aria-live": "polite" });
  box.show = (text, isError) => {
    box.textContent = text;
    box.className = `message ${isError ? "error" : "ok"}`;
  };
  return box;
}

export function errorText(e) {
  return e && e.detail !== undefined ? `Refused (${e.status}): ${e.detail}` : String(e);
}

export function table(headers, rows, attrs = {}) {
  return el(
    "table",
    attrs,
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, rows),
  );
}

export function field(label, value) {
  return [el("dt", {}, label), el("dd", {}, value === undefined || value === null || value === "" ? "—" : value)];
}
