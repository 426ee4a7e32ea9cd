// Small DOM helpers for the console's pages. Text only ever goes in as text
// nodes: nothing here sets innerHTML, so recorded data cannot become markup.

// el("a", {href: "…", class: "x", onclick: fn, dataset: {k: "v"}}, "text", child, …)
// Attribute values of null, undefined or false are left out; true sets an empty attribute.
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      node.addEventListener(name.slice(2), value);
    } else if (name === "dataset") {
      Object.assign(node.dataset, value);
    } else if (name === "style") {
      throw new Error("el(): set element.style from code, not a style attribute (CSP)");
    } else {
      node.setAttribute(name, value === true ? "" : String(value));
    }
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(node, child);
    else if (child instanceof Node) node.append(child);
    else node.append(document.createTextNode(String(child)));
  }
}

// table([{key, label, render?, numeric?}], rows, {caption, testid, rowTestid?(row), rowAttrs?(row)})
// A <table> with <th scope="col"> headers; render(row) returns a Node or text.
export function table(columns, rows, options = {}) {
  const head = el("thead", {}, el("tr", {}, columns.map((c) =>
    el("th", { scope: "col", class: c.numeric ? "num" : null }, c.label))));
  const bodyRows = rows.map((row) => el(
    "tr",
    {
      "data-testid": options.rowTestid ? options.rowTestid(row) : null,
      ...(options.rowAttrs ? options.rowAttrs(row) : {}),
    },
    columns.map((c) => el("td", { class: c.numeric ? "num" : null },
      c.render ? c.render(row) : row[c.key] ?? "")),
  ));
  const tableNode = el(
    "table",
    { "data-testid": options.testid || null },
    options.caption ? el("caption", {}, options.caption) : null,
    head,
    el("tbody", {}, bodyRows),
  );
  const wrap = el("div", { class: "table-wrap" }, tableNode);
  if (rows.length === 0) wrap.append(el("p", { class: "empty" }, options.empty || "Nothing to show."));
  return wrap;
}

const integer = new Intl.NumberFormat("en-US");

// 1234567 → "1,234,567"; null → "–".
export function formatTokens(n) {
  if (n === null || n === undefined) return "–";
  return integer.format(n);
}

// Micro-dollars → "$1.234567" (small amounts keep their digits); null → "unpriced".
export function formatCost(micros) {
  if (micros === null || micros === undefined) return "unpriced";
  const dollars = micros / 1e6;
  const digits = Math.abs(dollars) >= 100 ? 2 : Math.abs(dollars) >= 1 ? 4 : 6;
  return "$" + dollars.toFixed(digits);
}

// An ISO timestamp → "2026-12-04 02:17:05 UTC" (UTC: the same for every operator).
export function formatTime(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  return d.toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC").replace(/Z$/, " UTC");
}

// Milliseconds → "850 ms" / "12.3 s".
export function formatDuration(ms) {
  if (ms === null || ms === undefined) return "–";
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(1)} s`;
}

// filtersForm([{name, label, type?: "text"|"select"|"datetime-local", options?: [[value, label]]}], onChange)
// A form whose state lives in the URL query: fields start from it, a change
// rewrites it (history.replaceState) and calls onChange(values).
export function filtersForm(fields, onChange) {
  const query = new URLSearchParams(location.search);
  const form = el("form", { class: "filters", role: "search", "data-testid": "filters" });
  const values = () => {
    const out = {};
    for (const f of fields) {
      const v = form.elements[f.name].value.trim();
      if (v !== "") out[f.name] = v;
    }
    return out;
  };
  for (const f of fields) {
    const id = `filter-${f.name}`;
    let input;
    if (f.type === "select") {
      input = el("select", { id, name: f.name, "data-testid": f.testid || id },
        el("option", { value: "" }, f.any || "any"),
        (f.options || []).map(([value, label]) => el("option", { value }, label ?? value)));
    } else {
      input = el("input", { id, name: f.name, type: f.type || "text", "data-testid": f.testid || id,
        placeholder: f.placeholder || null });
    }
    input.value = query.get(f.name) || "";
    form.append(el("div", { class: "field" }, el("label", { for: id }, f.label), input));
  }
  // Enter in a field fires "change" and then "submit", and a click on Apply
  // after typing fires "change" (on blur) and then "submit": the filters are
  // applied once for each set of values, not once for each event.
  let applied = query.toString();
  const changed = () => {
    const current = values();
    const next = new URLSearchParams(location.search);
    for (const f of fields) {
      if (current[f.name] !== undefined) next.set(f.name, current[f.name]);
      else next.delete(f.name);
    }
    const qs = next.toString();
    if (qs === applied) return;
    applied = qs;
    history.replaceState(null, "", location.pathname + (qs ? "?" + qs : ""));
    onChange(current);
  };
  form.addEventListener("change", changed);
  form.addEventListener("submit", (event) => { event.preventDefault(); changed(); });
  form.append(el("button", { type: "submit" }, "Apply"));
  form.values = values;
  return form;
}
