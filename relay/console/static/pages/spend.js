// Spend: tokens and cost per day as plots (uPlot, vendored), a table by one
// dimension with totals, a CSV export, and the budgets (GET api/spend,
// api/spend.csv, api/budgets). Filters live in the URL query.
import { el, filtersForm, formatCost, formatTime, formatTokens, table } from "../ui.js";
import { currentFilters, loadPlot, queryOf, readStyles } from "../read.js";

const FILTERS = ["user", "model", "provider", "client", "since", "until"];
const DIMENSIONS = ["model", "user", "provider", "client", "day"];
const COLOURS = ["#1f6feb", "#d1242f", "#1a7f37", "#9a6700", "#8250df", "#bf3989", "#0a7ea4", "#57606a"];
const MOST_SERIES = 7; // then "other"

// An axis tick in dollars: below a cent, two significant digits (a day of a few
// small requests is $0.0004, which two decimals would show as $0.00 on every tick).
function dollars(v) {
  const n = Number(v);
  if (n === 0) return "$0";
  if (Math.abs(n) >= 100) return "$" + n.toFixed(0);
  if (Math.abs(n) >= 0.01) return "$" + n.toFixed(2);
  return "$" + n.toPrecision(2);
}

export async function render(root, ctx) {
  readStyles(ctx.base);
  const charts = el("div", { class: "charts" });
  const tableBox = el("div");
  const totalsBox = el("p", { "data-testid": "spend-totals" });
  const budgetsBox = el("section", { "aria-labelledby": "budgets-h" });
  const note = el("p", { class: "status", role: "status", "aria-live": "polite", "data-testid": "spend-note" });
  const csv = el("a", { "data-testid": "spend-csv", download: "" }, "Download CSV");
  const plots = [];

  const form = filtersForm(
    [
      { name: "group_by", label: "Group by", type: "select", testid: "spend-group-by", any: "model",
        options: DIMENSIONS.filter((d) => d !== "model").map((d) => [d, d]) },
      { name: "user", label: "User", testid: "spend-filter-user" },
      { name: "model", label: "Model", testid: "spend-filter-model" },
      { name: "provider", label: "Provider", testid: "spend-filter-provider" },
      { name: "client", label: "Client", testid: "spend-filter-client" },
      { name: "since", label: "Since (UTC day)", type: "date", testid: "spend-filter-since" },
      { name: "until", label: "Until (UTC day, excluded)", type: "date", testid: "spend-filter-until" },
    ],
    () => load(),
  );

  root.replaceChildren(
    el("h1", {}, "Spend"),
    form, note,
    el("section", { "aria-labelledby": "spend-plots-h" },
      el("h2", { id: "spend-plots-h" }, "Per day"), charts),
    el("section", { "aria-labelledby": "spend-table-h" },
      el("h2", { id: "spend-table-h" }, "Totals"), tableBox, totalsBox, el("p", {}, csv)),
    budgetsBox,
  );

  async function load() {
    const values = currentFilters([...FILTERS, "group_by"]);
    const dim = DIMENSIONS.includes(values.group_by) ? values.group_by : "model";
    const filterQuery = (groupBy) => queryOf(FILTERS, values, { group_by: groupBy });
    csv.setAttribute("href", ctx.base + "api/spend.csv" + filterQuery(dim));
    note.textContent = "Loading…";
    try {
      const [daily, byDim, budgets] = await Promise.all([
        ctx.api("spend" + filterQuery(dim === "day" ? "day" : "day," + dim)),
        ctx.api("spend" + filterQuery(dim)),
        ctx.api("budgets"),
      ]);
      note.textContent = `From ${formatTime(daily.since)}${daily.until ? " to " + formatTime(daily.until) : " to now"}.`;
      drawTable(byDim, dim);
      drawBudgets(budgets.budgets);
      await drawCharts(daily, dim);
    } catch (error) {
      note.textContent = "";
      tableBox.replaceChildren(el("p", { role: "alert", class: "error", "data-testid": "spend-error" }, error.message));
    }
  }

  function drawTable(report, dim) {
    tableBox.replaceChildren(table(
      [
        { label: dim, render: (r) => r[dim] ?? "–" },
        { label: "Requests", numeric: true, render: (r) => formatTokens(r.requests) },
        { label: "Input", numeric: true, render: (r) => formatTokens(r.input_tokens) },
        { label: "Output", numeric: true, render: (r) => formatTokens(r.output_tokens) },
        { label: "Cache read", numeric: true, render: (r) => formatTokens(r.cache_read_tokens) },
        { label: "Cache write", numeric: true, render: (r) => formatTokens(r.cache_write_tokens) },
        { label: "Tool calls", numeric: true, render: (r) => formatTokens(r.tool_calls) },
        { label: "Cost", numeric: true, render: (r) => formatCost(r.cost_micros) },
        { label: "Unpriced rows", numeric: true, render: (r) => formatTokens(r.unpriced) },
      ],
      report.rows,
      { caption: `Spend by ${dim}`, testid: "spend-table", rowTestid: () => "spend-row",
        rowAttrs: (r) => ({ "data-value": r[dim] ?? "" }), empty: "No usage in this period." },
    ));
    const t = report.totals;
    totalsBox.textContent = `Total: ${formatTokens(t.requests)} requests, `
      + `${formatTokens(t.input_tokens + t.cache_read_tokens + t.cache_write_tokens)} input tokens, `
      + `${formatTokens(t.output_tokens)} output tokens, ${formatCost(t.cost_micros)}`
      + (t.unpriced ? ` (+ ${formatTokens(t.unpriced)} unpriced usage rows)` : "");
  }

  async function drawCharts(report, dim) {
    for (const p of plots.splice(0)) p.destroy();
    charts.replaceChildren();
    if (report.rows.length === 0) {
      charts.append(el("p", { class: "empty" }, "Nothing to plot."));
      return;
    }
    const uPlot = await loadPlot(ctx.base);
    const days = dayRange(report.since, report.until, report.rows);
    const index = new Map(days.map((d, n) => [d, n]));
    // The largest series by cost, then the rest as "other".
    const byName = new Map();
    for (const r of report.rows) {
      const name = dim === "day" ? "all" : String(r[dim] ?? "–");
      byName.set(name, (byName.get(name) || 0) + r.cost_micros + 1e-9 * r.output_tokens);
    }
    const names = [...byName.keys()].sort((a, b) => byName.get(b) - byName.get(a));
    const shown = names.length > MOST_SERIES + 1 ? names.slice(0, MOST_SERIES) : names;
    const seriesOf = (name) => (shown.includes(name) ? name : "other");
    const labels = shown.length < names.length ? [...shown, "other"] : shown;
    const cost = labels.map(() => days.map(() => 0));
    const tokens = labels.map(() => days.map(() => 0));
    for (const r of report.rows) {
      const s = labels.indexOf(seriesOf(dim === "day" ? "all" : String(r[dim] ?? "–")));
      const d = index.get(r.day);
      if (s < 0 || d === undefined) continue;
      cost[s][d] += r.cost_micros / 1e6;
      tokens[s][d] += r.input_tokens + r.cache_read_tokens + r.cache_write_tokens + r.output_tokens;
    }
    const xs = days.map((d) => Date.parse(d + "T00:00:00Z") / 1000);
    const width = Math.max(280, Math.min(charts.clientWidth || 900, 1100));
    const make = (title, testid, values, format) => {
      const box = el("figure", { class: "chart", "data-testid": testid },
        el("figcaption", {}, title));
      charts.append(box);
      const opts = {
        title,
        width,
        height: 260,
        tzDate: (ts) => uPlot.tzDate(new Date(ts * 1e3), "Etc/UTC"),
        scales: { x: { time: true } },
        axes: [
          { space: 50, incrs: [86400, 2 * 86400, 7 * 86400, 14 * 86400, 28 * 86400],
            values: (u, ticks) => ticks.map((t) => new Date(t * 1000).toISOString().slice(5, 10)) },
          { values: (u, ticks) => ticks.map(format), size: 70 },
        ],
        series: [
          { label: "day", value: (u, v) => (v === null ? "–" : new Date(v * 1000).toISOString().slice(0, 10)) },
          ...labels.map((label, n) => ({
            label, stroke: COLOURS[n % COLOURS.length], width: 2,
            points: { show: true, size: 5 }, value: (u, v) => (v === null ? "–" : format(v)),
          })),
        ],
      };
      const plot = new uPlot(opts, [xs, ...values], box);
      box.querySelector("canvas")?.setAttribute("aria-hidden", "true");
      // uPlot's legend is a table whose series names are <th>: they head their rows.
      for (const th of box.querySelectorAll("th")) th.setAttribute("scope", "row");
      box.setAttribute("aria-label", `${title}: the table below holds the same figures`);
      plots.push(plot);
    };
    make(`Cost per day by ${dim} (US $)`, "spend-chart", cost, dollars);
    make(`Tokens per day by ${dim}`, "spend-tokens-chart", tokens, (v) => formatTokens(Math.round(v)));
  }

  function drawBudgets(budgets) {
    budgetsBox.replaceChildren(
      el("h2", { id: "budgets-h" }, "Budgets"),
      table(
        [
          { label: "Budget", key: "name" },
          { label: "Applies to", render: (b) => `${b.scope} ${b.subject_name}` + (b.model ? ` · ${b.model}` : "") },
          { label: "Period", render: (b) => `${b.period} from ${formatTime(b.period_start)}` },
          { label: "Spent", numeric: true, render: (b) => formatCost(b.spent_micros) },
          { label: "Limit", numeric: true, render: (b) => formatCost(b.limit_micros) },
          { label: "Used", render: (b) => el("span", { class: "used" },
            el("meter", { min: "0", max: "100", low: String(b.soft_percent), high: "99.999", optimum: "0",
              value: String(Math.min(b.percent, 100)), "aria-label": `${b.name}: ${b.percent}% used` }),
            ` ${b.percent}%`) },
          { label: "State", render: (b) => el("span", {
            class: `badge ${b.state === "ok" ? "ok" : "bad"}`, "data-testid": "budget-state" }, b.state) },
        ],
        budgets,
        { caption: "Budgets and how close each is to its limit", testid: "budgets-table",
          rowTestid: (b) => `budget-row-${b.name}`, empty: "No budgets are set." },
      ),
    );
  }

  let resizeTimer = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => {
      const width = Math.max(280, Math.min(charts.clientWidth || 900, 1100));
      for (const p of plots) p.setSize({ width, height: 260 });
    }, 150);
  });

  await load();
}

// Every UTC day of the report's period ("YYYY-MM-DD"), at most 400 (then the days that have rows).
function dayRange(sinceIso, untilIso, rows) {
  const start = new Date(sinceIso);
  const end = untilIso ? new Date(untilIso) : new Date();
  const out = [];
  const d = new Date(Date.UTC(start.getUTCFullYear(), start.getUTCMonth(), start.getUTCDate()));
  while (d < end && out.length < 400) {
    out.push(d.toISOString().slice(0, 10));
    d.setUTCDate(d.getUTCDate() + 1);
  }
  if (out.length >= 400) return [...new Set(rows.map((r) => r.day))].sort();
  return out;
}
