// The console's page loader: the shell names its page in <body data-page>;
// the page's module, ./pages/<page>.js, draws it with render(root, ctx).
import { el } from "./ui.js";

const body = document.body;
const page = body.dataset.page || "";
const base = body.dataset.base || "";
const actor = body.dataset.actor || "";
const csrfMeta = document.querySelector('meta[name="csrf-token"]');
const csrf = csrfMeta ? csrfMeta.getAttribute("content") || "" : "";
const root = document.getElementById("page");
const statusLine = document.getElementById("status");

// The page path's segments after the first: sessions/<key> → [key].
function pageParams() {
  const below = location.pathname.startsWith(base) ? location.pathname.slice(base.length) : "";
  return below.split("/").slice(1).filter((s) => s !== "").map((s) => decodeURIComponent(s));
}

// One console API call (path below api/): the parsed JSON, or an Error with the server's message.
async function api(path, { method = "GET", body = undefined } = {}) {
  const headers = { accept: "application/json" };
  const init = { method, headers, credentials: "same-origin" };
  if (method !== "GET") {
    headers["x-csrf-token"] = csrf;
    if (body !== undefined) {
      headers["content-type"] = "application/json";
      init.body = JSON.stringify(body);
    }
  }
  const response = await fetch(base + "api/" + path, init);
  if (response.status === 401) {
    // The session ended (signed out elsewhere, token or admin role revoked).
    location.assign(base + "signin?next=" + encodeURIComponent(location.pathname.slice(base.length)));
    throw new Error("signed out: sign in again");
  }
  const type = response.headers.get("content-type") || "";
  const data = type.startsWith("application/json") ? await response.json() : await response.text();
  if (!response.ok) {
    const message = data && data.message ? data.message : `${response.status} ${response.statusText}`;
    const error = new Error(message);
    error.status = response.status;
    error.code = data && data.error;
    throw error;
  }
  return data;
}

function status(text) {
  statusLine.textContent = text || "";
}

function navigate(url) {
  location.assign(url);
}

function markNav() {
  for (const link of document.querySelectorAll("nav a[data-nav]")) {
    if (link.dataset.nav.split(" ").includes(page)) link.setAttribute("aria-current", "page");
  }
}

function notAvailable(message) {
  root.replaceChildren(
    el("h1", {}, "Not available"),
    el("p", { role: "alert", "data-testid": "page-unavailable" }, message),
  );
}

async function main() {
  markNav();
  root.replaceChildren();
  if (!/^[a-z][a-z0-9-]*$/.test(page)) {
    notAvailable("This page is not available.");
    return;
  }
  let module;
  try {
    module = await import(`./pages/${page}.js`);
  } catch (error) {
    notAvailable(`The ${page} page is not available in this relay.`);
    console.error(error);
    return;
  }
  const ctx = {
    api, csrf, actor, base, params: pageParams(), query: new URLSearchParams(location.search),
    navigate, status,
  };
  try {
    await module.render(root, ctx);
  } catch (error) {
    root.append(el("p", { role: "alert", class: "error", "data-testid": "page-error" }, String(error.message || error)));
    console.error(error);
  }
}

main();
