// One session: its summary and its interceptions in order (GET api/sessions/{key}).
import { el, formatDuration, formatTime, formatTokens, table } from "../ui.js";
import { costText, duration, facts, readStyles, shorten, statusBadge, usageTotals } from "../read.js";

export async function render(root, ctx) {
  readStyles(ctx.base);
  const key = ctx.params[0] || "";
  const heading = el("h1", {}, "Session");
  const summaryBox = el("section", { "aria-labelledby": "session-summary-h" });
  const list = el("section", { "aria-labelledby": "session-requests-h" });
  const more = el("button", { type: "button", "data-testid": "session-more", hidden: true }, "Later requests");
  root.replaceChildren(
    el("p", {}, el("a", { href: ctx.base + "sessions" }, "← Sessions")),
    heading, summaryBox, list, more,
  );
  let cursor = null;
  let rows = [];
  let first = true;

  async function load() {
    const q = new URLSearchParams();
    if (cursor) q.set("cursor", cursor);
    const path = "sessions/" + encodeURIComponent(key) + (q.toString() ? "?" + q : "");
    let page;
    try {
      page = await ctx.api(path);
    } catch (error) {
      const text = error.status === 404 ? "There is no such session." : error.message;
      list.replaceChildren(el("p", { role: "alert", class: "error", "data-testid": "session-error" }, text));
      return;
    }
    if (first) {
      drawSummary(page.summary);
      first = false;
    }
    rows = rows.concat(page.interceptions);
    cursor = page.next_cursor;
    drawList();
  }

  function drawSummary(s) {
    heading.textContent = s.kind === "client"
      ? `Session ${shorten(s.client_session_id, 60)}`
      : `Requests of ${s.user ?? "no user"} from ${formatTime(s.first_started_at)}`;
    summaryBox.replaceChildren(
      el("h2", { id: "session-summary-h" }, "Summary"),
      facts([
        ["User", s.user ?? s.user_id ?? "–", "session-user"],
        ["Client", s.clients.join(", "), "session-client"],
        s.kind === "client"
          ? ["Client session id", el("code", { class: "mono" }, s.client_session_id), "session-id"]
          : ["Grouping", "no session id: this user's requests with gaps of at most 30 minutes"],
        ["Models", s.models.join(", "), "session-models"],
        ["Providers", s.providers.join(", ")],
        ["Requests", formatTokens(s.requests) + (s.capped ? " (the newest counted)" : ""), "session-requests"],
        ["Failed", formatTokens(s.failed)],
        ["First request", formatTime(s.first_started_at)],
        ["Last request", formatTime(s.last_started_at)],
        ["Span", formatDuration(duration(s.first_started_at, s.last_ended_at || s.last_started_at))],
        ["Input tokens", formatTokens(s.input_tokens)],
        ["Output tokens", formatTokens(s.output_tokens)],
        ["Cache read / write", `${formatTokens(s.cache_read_tokens)} / ${formatTokens(s.cache_write_tokens)}`],
        ["Tool calls", formatTokens(s.tool_calls)],
        ["Cost", costText(s.cost_micros, s.unpriced), "session-cost"],
      ], "session-summary"),
    );
  }

  function drawList() {
    list.replaceChildren(
      el("h2", { id: "session-requests-h" }, "Requests, in order"),
      table(
        [
          { label: "#", numeric: true, render: (i) => String(rows.indexOf(i) + 1) },
          { label: "Started", render: (i) => el("a", {
            href: ctx.base + "interceptions/" + encodeURIComponent(i.id), "data-testid": "interception-link",
          }, formatTime(i.started_at)) },
          { label: "Model", key: "model" },
          { label: "Status", render: (i) => statusBadge(i.status) },
          { label: "Duration", numeric: true, render: (i) => formatDuration(duration(i.started_at, i.ended_at)) },
          { label: "Prompt", render: (i) => shorten(i.prompt, 100) },
          { label: "Tool calls", render: (i) => i.tool_usages.map((t) => t.name).join(", ") },
          { label: "Tokens in / out", numeric: true, render: (i) => {
            const t = usageTotals(i.token_usages);
            return `${formatTokens(t.input + t.cacheRead + t.cacheWrite)} / ${formatTokens(t.output)}`;
          } },
          { label: "Cost", numeric: true, render: (i) => {
            const t = usageTotals(i.token_usages);
            return costText(t.cost, t.unpriced);
          } },
          { label: "Error", render: (i) => i.error_type ? `${i.error_type}: ${shorten(i.error_message, 80)}` : "" },
        ],
        rows,
        {
          caption: "The session's requests, oldest first",
          testid: "session-interceptions",
          rowTestid: () => "session-interception-row",
          rowAttrs: (i) => ({ "data-id": i.id }),
        },
      ),
    );
    more.hidden = !cursor;
  }

  more.addEventListener("click", load);
  await load();
}
