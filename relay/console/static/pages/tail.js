// Live tail: interceptions as they finish, pushed by the relay over server-sent events.
// Pause buffers what arrives (bounded) and Resume shows it; the filters are the server's.
import { el, filtersForm, formatCost, formatDuration, formatTime, formatTokens } from "../ui.js";

const SHOWN = 200; // rows kept on the page
const BUFFERED = 1000; // events kept while paused

export async function render(root, ctx) {
  const list = el("ol", { class: "tail", "data-testid": "tail-list", "aria-live": "polite", reversed: true });
  const state = el("span", { "data-testid": "tail-state", class: "badge" }, "connecting");
  const notice = el("p", { class: "status", "data-testid": "tail-missed", role: "status" });
  const pause = el("button", { type: "button", "data-testid": "tail-pause", "aria-pressed": "false" }, "Pause");
  const count = el("span", { "data-testid": "tail-buffered" });
  let paused = false;
  let buffer = [];
  let droppedWhilePaused = 0;
  let missed = 0;
  let source = null;

  function item(e) {
    const tokens = `${formatTokens(e.input_tokens)} in / ${formatTokens(e.output_tokens)} out`;
    const link = el("a", { href: `${ctx.base}interceptions/${encodeURIComponent(e.id)}` }, e.model || "(no model)");
    return el("li", { "data-testid": "tail-item", "data-id": e.id, "data-status": e.status, class: `tail-${e.status}` },
      el("span", { class: "mono" }, formatTime(e.ended_at || e.started_at)), " ",
      el("span", { class: e.status === "completed" ? "badge ok" : "badge bad" }, e.status), " ",
      link, " · ", e.provider, " · ", e.user || e.user_id || "(no user)", " · ", e.client, " · ",
      tokens, " · ", formatCost(e.cost_micros), " · ", formatDuration(e.duration_ms),
      e.error_type ? el("span", { class: "error" }, ` · ${e.error_type}`) : null);
  }

  const empty = el("p", { class: "empty", "data-testid": "tail-empty" },
    "Nothing yet: interceptions appear here as they finish.");

  function show(e) {
    empty.hidden = true;
    list.prepend(item(e));
    while (list.children.length > SHOWN) list.lastElementChild.remove();
  }

  function noteMissed() {
    const parts = [];
    if (missed) parts.push(`${missed} interception(s) were not delivered (this viewer fell behind)`);
    if (droppedWhilePaused) parts.push(`${droppedWhilePaused} dropped while paused`);
    notice.textContent = parts.join("; ");
  }

  function connect(values) {
    if (source) source.close();
    const qs = new URLSearchParams(values).toString();
    source = new EventSource(`${ctx.base}api/tail${qs ? "?" + qs : ""}`);
    state.textContent = "connecting";
    source.addEventListener("open", () => { state.textContent = "live"; state.className = "badge ok"; });
    source.addEventListener("error", () => {
      // EventSource retries by itself while the server allows; closed means refused.
      const closed = source.readyState === EventSource.CLOSED;
      state.textContent = closed ? "closed (reload to retry)" : "reconnecting";
      state.className = "badge bad";
    });
    source.addEventListener("missed", (event) => {
      missed += JSON.parse(event.data).missed;
      noteMissed();
    });
    source.addEventListener("interception", (event) => {
      const e = JSON.parse(event.data);
      if (!paused) { show(e); return; }
      buffer.push(e);
      if (buffer.length > BUFFERED) { buffer.shift(); droppedWhilePaused += 1; noteMissed(); }
      count.textContent = `${buffer.length} waiting`;
    });
  }

  pause.addEventListener("click", () => {
    paused = !paused;
    pause.textContent = paused ? "Resume" : "Pause";
    pause.setAttribute("aria-pressed", String(paused));
    if (!paused) {
      for (const e of buffer) show(e);
      buffer = [];
      count.textContent = "";
    }
  });

  const filters = filtersForm([
    { name: "provider", label: "Provider", testid: "tail-filter-provider" },
    { name: "model", label: "Model", testid: "tail-filter-model" },
    { name: "user", label: "User", testid: "tail-filter-user" },
    { name: "client", label: "Client", testid: "tail-filter-client" },
    { name: "status", label: "Status", type: "select", testid: "tail-filter-status",
      options: [["completed"], ["failed"], ["cancelled"], ["refused"], ["interrupted"]] },
  ], (values) => {
    list.replaceChildren();
    empty.hidden = false;
    buffer = [];
    count.textContent = "";
    connect(values);
  });

  root.append(
    el("h1", {}, "Live tail"),
    el("p", {}, "Interceptions of this relay process as they finish. ", state, " ", pause, " ", count),
    filters, notice, empty, list,
  );
  window.addEventListener("pagehide", () => source && source.close());
  connect(filters.values());
}
