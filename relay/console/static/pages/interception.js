// One interception: what was asked, the tool calls with their inputs, the
// thoughts, the tokens and cost (GET api/interceptions/{id}).
import { el, formatCost, formatDuration, formatTime, formatTokens, table } from "../ui.js";
import { costText, duration, facts, readStyles, statusBadge, usageTotals } from "../read.js";

function pretty(text) {
  try {
    return JSON.stringify(JSON.parse(text), null, 2);
  } catch {
    return text;
  }
}

export async function render(root, ctx) {
  readStyles(ctx.base);
  const id = ctx.params[0] || "";
  let found;
  try {
    found = await ctx.api("interceptions/" + encodeURIComponent(id));
  } catch (error) {
    const text = error.status === 404 ? "There is no such interception." : error.message;
    root.replaceChildren(el("h1", {}, "Interception"),
      el("p", { role: "alert", class: "error", "data-testid": "interception-error-page" }, text));
    return;
  }
  const i = found.interception;
  const totals = usageTotals(i.token_usages);
  const back = found.session_key
    ? el("a", { href: ctx.base + "sessions/" + encodeURIComponent(found.session_key),
      "data-testid": "interception-session-link" }, "← Its session")
    : el("a", { href: ctx.base + "sessions" }, "← Sessions");

  root.replaceChildren(
    el("p", {}, back),
    el("h1", {}, `${i.model} · ${formatTime(i.started_at)}`),
    facts([
      ["Status", statusBadge(i.status), "interception-status"],
      i.error_type || i.error_message
        ? ["Error", `${i.error_type ?? ""}${i.error_message ? ": " + i.error_message : ""}`, "interception-error"]
        : null,
      ["User", i.initiator_name ?? i.initiator_id ?? "–", "interception-user"],
      ["Provider", `${i.provider_name} (${i.provider_type})`],
      ["Model", i.model, "interception-model"],
      ["Route", el("code", { class: "mono" }, i.route)],
      ["Client", i.client],
      ["Client session id", i.client_session_id ? el("code", { class: "mono" }, i.client_session_id) : "–"],
      ["Started", formatTime(i.started_at)],
      ["Ended", formatTime(i.ended_at)],
      ["Duration", formatDuration(duration(i.started_at, i.ended_at)), "interception-duration"],
      ["Credential", i.credential_kind + (i.credential_hint ? ` (${i.credential_hint})` : "")],
      ["User agent", i.user_agent ?? "–"],
      ["Id", el("code", { class: "mono" }, i.id)],
    ], "interception-facts"),

    el("section", { "aria-labelledby": "i-tokens" },
      el("h2", { id: "i-tokens" }, "Tokens and cost"),
      table(
        [
          { label: "Response", render: (u) => u.provider_response_id ?? "–" },
          { label: "Input", numeric: true, render: (u) => formatTokens(u.input_tokens) },
          { label: "Output", numeric: true, render: (u) => formatTokens(u.output_tokens) },
          { label: "Cache read", numeric: true, render: (u) => formatTokens(u.cache_read_tokens) },
          { label: "Cache write", numeric: true, render: (u) => formatTokens(u.cache_write_tokens) },
          { label: "Priced as", render: (u) => u.price_model ?? "unpriced" },
          { label: "Cost", numeric: true, render: (u) => formatCost(u.cost_micros) },
        ],
        i.token_usages,
        { caption: "Token usage (input excludes cache reads and writes)", testid: "interception-tokens",
          rowTestid: () => "interception-token-row", empty: "No token usage was recorded." },
      ),
      el("p", { "data-testid": "interception-total" },
        `Total: ${formatTokens(totals.input + totals.cacheRead + totals.cacheWrite)} in, `
        + `${formatTokens(totals.output)} out, ${costText(totals.cost, totals.unpriced)}`),
    ),

    el("section", { "aria-labelledby": "i-prompt" },
      el("h2", { id: "i-prompt" }, "Prompt"),
      i.prompt === null || i.prompt === undefined
        ? el("p", { class: "empty" }, "No prompt was recorded.")
        : el("pre", { "data-testid": "interception-prompt" }, i.prompt),
      i.prompt_truncated
        ? el("p", { class: "muted" }, `Stored cut; the whole prompt was ${formatTokens(i.prompt_original_bytes)} bytes.`)
        : null,
    ),

    el("section", { "aria-labelledby": "i-tools" },
      el("h2", { id: "i-tools" }, `Tool calls (${i.tool_usages.length})`),
      i.tool_usages.length === 0 ? el("p", { class: "empty" }, "No tool calls.") : null,
      i.tool_usages.map((t) => el("article", { class: "tool-call", "data-testid": "interception-tool-call",
        "data-tool": t.name },
        el("h3", {}, el("code", { class: "mono", "data-testid": "interception-tool-name" }, t.name),
          t.injected ? " (injected: run by the relay on an MCP server)" : ""),
        el("p", { class: "muted" }, `call id ${t.tool_call_id}`),
        el("pre", { "data-testid": "interception-tool-input" }, pretty(t.input)),
        t.invocation_error
          ? el("p", { class: "error", role: "note" }, `Invocation error: ${t.invocation_error}`)
          : null,
      )),
    ),

    el("section", { "aria-labelledby": "i-thoughts" },
      el("h2", { id: "i-thoughts" }, `Thoughts (${i.thoughts.length})`),
      i.thoughts.length === 0 ? el("p", { class: "empty" }, "No thoughts were recorded.") : null,
      i.thoughts.map((t) => el("pre", { class: "thought", "data-testid": "interception-thought" }, t)),
    ),
  );
}
