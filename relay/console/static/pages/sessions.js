// Sessions: client sessions newest first (GET api/sessions), filters in the URL query.
import { el, filtersForm, formatTime, formatTokens, table } from "../ui.js";
import { STATUSES, asUtc, costText, currentFilters, queryOf, readStyles } from "../read.js";

const FILTERS = ["user", "client", "model", "provider", "status", "since", "until"];

export async function render(root, ctx) {
  readStyles(ctx.base);
  const list = el("div", { "data-testid": "sessions-list" });
  const more = el("button", { type: "button", "data-testid": "sessions-more", hidden: true }, "Older sessions");
  const note = el("p", { class: "status", role: "status", "aria-live": "polite", "data-testid": "sessions-note" });
  let cursor = null;
  let rows = [];

  const form = filtersForm(
    [
      { name: "user", label: "User", testid: "sessions-filter-user" },
      { name: "client", label: "Client", testid: "sessions-filter-client", placeholder: "claude-code" },
      { name: "model", label: "Model", testid: "sessions-filter-model" },
      { name: "provider", label: "Provider", testid: "sessions-filter-provider" },
      { name: "status", label: "Status", type: "select", testid: "sessions-filter-status",
        options: STATUSES.map((s) => [s, s]) },
      { name: "since", label: "Since (UTC)", type: "datetime-local", testid: "sessions-filter-since" },
      { name: "until", label: "Until (UTC)", type: "datetime-local", testid: "sessions-filter-until" },
    ],
    () => load(true),
  );

  root.replaceChildren(
    el("h1", {}, "Sessions"),
    el("p", { class: "lede" },
      "A client session is one user's requests with one session id (Claude Code, Codex, …); "
      + "requests without one are grouped per user, a gap of over 30 minutes starting a new session."),
    form, note, list, more,
  );

  function draw() {
    list.replaceChildren(table(
      [
        { label: "Last request", render: (s) => el("a", {
          href: ctx.base + "sessions/" + encodeURIComponent(s.key), "data-testid": "session-link",
        }, formatTime(s.last_started_at)) },
        { label: "User", render: (s) => s.user ?? (s.user_id ? s.user_id : "–") },
        { label: "Client", render: (s) => s.clients.join(", ") },
        { label: "Session", render: (s) => s.kind === "client"
          ? el("code", { class: "mono", title: s.client_session_id }, s.client_session_id)
          : el("span", { class: "muted" }, "grouped by time") },
        { label: "Models", render: (s) => s.models.join(", ") },
        { label: "Requests", numeric: true, render: (s) => formatTokens(s.requests) + (s.capped ? "+" : "") },
        { label: "Failed", numeric: true, render: (s) => formatTokens(s.failed) },
        { label: "Input tokens", numeric: true, render: (s) => formatTokens(s.input_tokens + s.cache_read_tokens + s.cache_write_tokens) },
        { label: "Output tokens", numeric: true, render: (s) => formatTokens(s.output_tokens) },
        { label: "Cost", numeric: true, render: (s) => costText(s.cost_micros, s.unpriced) },
      ],
      rows,
      {
        caption: "Sessions, newest first",
        testid: "sessions-table",
        rowTestid: () => "session-row",
        rowAttrs: (s) => ({ "data-key": s.key, "data-session-id": s.client_session_id || null }),
        empty: "No sessions match.",
      },
    ));
    more.hidden = !cursor;
  }

  // Only the newest load draws: an older one still on its way (filters changed
  // while it ran) is dropped, so no session is listed twice or under old filters.
  let generation = 0;

  async function load(fresh) {
    const mine = ++generation;
    const values = currentFilters(FILTERS);
    values.since = asUtc(values.since);
    values.until = asUtc(values.until);
    const from = fresh ? null : cursor;
    note.textContent = "Loading…";
    try {
      const page = await ctx.api("sessions" + queryOf(FILTERS, values, { cursor: from }));
      if (mine !== generation) return;
      rows = fresh ? page.sessions : rows.concat(page.sessions);
      cursor = page.next_cursor;
      note.textContent = page.partial
        ? `Read ${formatTokens(page.scanned)} requests for this page; older sessions may follow.`
        : "";
      draw();
    } catch (error) {
      if (mine !== generation) return;
      note.textContent = "";
      list.replaceChildren(el("p", { role: "alert", class: "error", "data-testid": "sessions-error" }, error.message));
    }
  }

  more.addEventListener("click", () => load(false));
  await load(true);
}
