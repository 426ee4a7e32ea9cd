// Helpers shared by the read pages (sessions, session, interception, spend).
// Text goes in as text nodes only (el() of ui.js); nothing here sets innerHTML.
import { el, formatCost, formatTokens } from "./ui.js";

// A query string of the page's own filters (those in `names`) plus `extra`.
export function queryOf(names, values, extra = {}) {
  const q = new URLSearchParams();
  for (const name of names) if (values[name]) q.set(name, values[name]);
  for (const [name, value] of Object.entries(extra)) if (value) q.set(name, value);
  const text = q.toString();
  return text ? "?" + text : "";
}

// The filter values in the page's URL right now.
export function currentFilters(names) {
  const query = new URLSearchParams(location.search);
  const out = {};
  for (const name of names) {
    const v = query.get(name);
    if (v) out[name] = v;
  }
  return out;
}

// A <input type="datetime-local"> value ("2026-12-04T02:17") is UTC here (the
// pages show UTC): sent as RFC 3339 with a Z.
export function asUtc(value) {
  if (!value) return value;
  return /[zZ]|[+-]\d\d:\d\d$/.test(value) ? value : value + (value.length === 16 ? ":00Z" : "Z");
}

export const STATUSES = ["completed", "failed", "cancelled", "interrupted", "refused", "in_progress"];

export function statusBadge(status) {
  const good = status === "completed";
  const running = status === "in_progress";
  return el("span", { class: `badge ${good ? "ok" : running ? "" : "bad"}`, "data-status": status }, status);
}

export function duration(startIso, endIso) {
  if (!startIso || !endIso) return null;
  return new Date(endIso).getTime() - new Date(startIso).getTime();
}

// Sums of an interception's token usage rows.
export function usageTotals(usages) {
  const t = { input: 0, output: 0, cacheRead: 0, cacheWrite: 0, cost: 0, unpriced: 0 };
  for (const u of usages || []) {
    t.input += u.input_tokens;
    t.output += u.output_tokens;
    t.cacheRead += u.cache_read_tokens;
    t.cacheWrite += u.cache_write_tokens;
    if (u.cost_micros === null || u.cost_micros === undefined) t.unpriced += 1;
    else t.cost += u.cost_micros;
  }
  return t;
}

// "$0.0123" or "$0.0123 + 2 unpriced" or "unpriced".
export function costText(micros, unpriced) {
  if (unpriced && !micros) return "unpriced";
  return formatCost(micros || 0) + (unpriced ? ` + ${formatTokens(unpriced)} unpriced` : "");
}

export function shorten(text, most = 120) {
  if (!text) return "";
  const flat = String(text).replace(/\s+/g, " ").trim();
  return flat.length > most ? flat.slice(0, most - 1) + "…" : flat;
}

// A definition list from [label, value (text or Node), testid?] triples.
export function facts(items, testid) {
  return el("dl", { class: "facts", "data-testid": testid || null },
    items.filter(Boolean).map(([label, value, id]) => [
      el("dt", {}, label),
      el("dd", { "data-testid": id || null }, value ?? "–"),
    ]));
}

export function addStylesheet(href) {
  if (document.querySelector(`link[rel="stylesheet"][href="${CSS.escape(href)}"]`)) return;
  document.head.append(el("link", { rel: "stylesheet", href }));
}

// The read pages' own few rules.
export function readStyles(base) {
  addStylesheet(base + "static/read.css");
}

let plotLoading = null;

// The vendored uPlot (static/vendor/README.md): a classic script defining window.uPlot.
export function loadPlot(base) {
  if (window.uPlot) return Promise.resolve(window.uPlot);
  if (!plotLoading) {
    addStylesheet(base + "static/vendor/uPlot.min.css");
    plotLoading = new Promise((resolve, reject) => {
      const script = el("script", { src: base + "static/vendor/uPlot.iife.min.js" });
      script.addEventListener("load", () => resolve(window.uPlot));
      script.addEventListener("error", () => reject(new Error("the plot library did not load")));
      document.head.append(script);
    });
  }
  return plotLoading;
}
