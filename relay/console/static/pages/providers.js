// Providers: list, enable/disable, add, update, remove. Keys are only ever shown masked;
// an update that leaves the keys field empty keeps the keys.
import { el, table } from "../ui.js";

const TYPES = ["anthropic", "openai", "bedrock", "copilot"];
const TEXT_FIELDS = [
  ["base_url", "Base URL", "url"],
  ["bedrock_region", "Bedrock region", "text"],
  ["bedrock_access_key", "AWS access key id", "text"],
  ["bedrock_access_key_secret", "AWS secret access key", "password"],
  ["bedrock_model", "Bedrock model", "text"],
  ["bedrock_small_fast_model", "Bedrock small/fast model", "text"],
  ["bedrock_base_url", "Bedrock base URL", "url"],
];

function field(prefix, name, label, type, value = "") {
  const id = `${prefix}-${name.replaceAll("_", "-")}`;
  const input = el("input", { id, name, type, "data-testid": id, autocomplete: "off" });
  input.value = value;
  return el("div", { class: "field" }, el("label", { for: id }, label), input);
}

function keysField(prefix, hint) {
  const id = `${prefix}-keys`;
  return el("div", { class: "field" },
    el("label", { for: id }, "Keys (one per line, at most 5)"),
    el("textarea", { id, name: "keys", rows: 3, "data-testid": id, autocomplete: "off",
      spellcheck: "false", "aria-describedby": `${id}-hint` }),
    el("small", { id: `${id}-hint` }, hint));
}

function keysFrom(form) {
  return form.elements.keys.value.split("\n").map((k) => k.trim()).filter((k) => k !== "");
}

export async function render(root, ctx) {
  const message = el("p", { class: "error", role: "alert", "data-testid": "providers-error" });
  const list = el("div", { "data-testid": "providers-list" });
  const editor = el("div", { "data-testid": "provider-editor" });
  root.append(el("h1", {}, "Providers"), message, list, editor);

  const fail = (error) => { message.textContent = error.message; };
  const done = (text) => { message.textContent = ""; ctx.status(text); };

  async function act(path, text, confirmText) {
    if (confirmText && !window.confirm(confirmText)) return;
    try {
      await ctx.api(path, { method: "POST", body: {} });
      done(text);
      await load();
    } catch (error) { fail(error); }
  }

  function row(p) {
    const toggle = el("button", {
      type: "button",
      "data-testid": `provider-toggle-${p.name}`,
      "aria-label": `${p.enabled ? "Disable" : "Enable"} ${p.name}`,
      onclick: () => p.enabled
        ? act(`providers/${encodeURIComponent(p.name)}/disable`, `Disabled ${p.name}.`,
          `Disable provider ${p.name}? Requests to it will be refused.`)
        : act(`providers/${encodeURIComponent(p.name)}/enable`, `Enabled ${p.name}.`),
    }, p.enabled ? "Disable" : "Enable");
    const edit = el("button", { type: "button", "data-testid": `provider-edit-${p.name}`,
      "aria-label": `Edit ${p.name}`, onclick: () => showEditor(p) }, "Edit");
    const remove = el("button", {
      type: "button", class: "danger", "data-testid": `provider-remove-${p.name}`,
      "aria-label": `Remove ${p.name}`,
      onclick: () => act(`providers/${encodeURIComponent(p.name)}/remove`, `Removed ${p.name}.`,
        `Remove provider ${p.name}? This cannot be undone.`),
    }, "Remove");
    return el("span", { class: "actions" }, toggle, " ", edit, " ", remove);
  }

  async function load() {
    const data = await ctx.api("providers");
    list.replaceChildren(table(
      [
        { key: "name", label: "Name" },
        { key: "type", label: "Type" },
        { key: "source", label: "Source" },
        { key: "enabled", label: "State", render: (p) => el("span",
          { class: p.enabled ? "badge ok" : "badge bad", "data-testid": `provider-state-${p.name}` },
          p.enabled ? "enabled" : "disabled") },
        { key: "endpoint", label: "Endpoint", render: (p) => el("span", { class: "mono" }, p.endpoint || "(AWS region)") },
        { key: "credentials", label: "Credentials", render: (p) => el("span",
          { class: "mono", "data-testid": `provider-keys-${p.name}` }, p.credentials) },
        { key: "actions", label: "Actions", render: row },
      ],
      data.providers,
      {
        caption: "Every provider, enabled or not",
        testid: "providers-table",
        rowTestid: (p) => `provider-row-${p.name}`,
        rowAttrs: (p) => ({ "data-enabled": String(p.enabled) }),
        empty: "No providers yet.",
      },
    ));
  }

  function showEditor(p) {
    const form = el("form", { "data-testid": "provider-edit-form", class: "stack" },
      el("h2", {}, `Edit ${p.name}`),
      TEXT_FIELDS.filter(([name]) => name !== "bedrock_access_key_secret")
        .filter(([name]) => p.type === "bedrock" || !name.startsWith("bedrock"))
        .map(([name, label, type]) => field("provider-edit", name, label, type,
          name === "bedrock_access_key" ? "" : p[name] || "")),
      p.type === "bedrock" ? field("provider-edit", "bedrock_access_key_secret",
        "AWS secret access key (empty: keep)", "password") : null,
      keysField("provider-edit", `Now: ${p.keys.length ? p.keys.join(", ") : "none"}. Leave empty to keep them.`),
      el("div", { class: "field" }, el("label", {},
        el("input", { type: "checkbox", name: "clear_keys", "data-testid": "provider-edit-clear-keys" }),
        " Remove every key")),
      el("div", { class: "field" }, el("label", {},
        el("input", { type: "checkbox", name: "responses_websocket", checked: p.responses_websocket,
          "data-testid": "provider-edit-responses-websocket" }),
        " Responses API over WebSocket (openai)")),
      el("button", { type: "submit", class: "primary", "data-testid": "provider-edit-submit" }, "Save"),
      " ",
      el("button", { type: "button", onclick: () => editor.replaceChildren() }, "Cancel"));
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const changes = {};
      for (const [name] of TEXT_FIELDS) {
        const input = form.elements[name];
        if (!input) continue;
        const value = input.value.trim();
        if (name === "bedrock_access_key" || name === "bedrock_access_key_secret") {
          if (value !== "") changes[name] = value; // empty: keep
        } else if (value !== (p[name] || "")) {
          changes[name] = value;
        }
      }
      const keys = keysFrom(form);
      if (form.elements.clear_keys.checked) changes.keys = [];
      else if (keys.length) changes.keys = keys;
      const ws = form.elements.responses_websocket.checked;
      if (ws !== p.responses_websocket) changes.responses_websocket = ws;
      if (Object.keys(changes).length === 0) { fail(new Error("Nothing changed.")); return; }
      try {
        await ctx.api(`providers/${encodeURIComponent(p.name)}`, { method: "POST", body: changes });
        editor.replaceChildren();
        done(`Updated ${p.name}.`);
        await load();
      } catch (error) { fail(error); }
    });
    editor.replaceChildren(form);
    form.querySelector("input, textarea")?.focus();
  }

  const typeSelect = el("select", { id: "provider-add-type", name: "type", "data-testid": "provider-add-type" },
    TYPES.map((t) => el("option", { value: t }, t)));
  const addForm = el("form", { "data-testid": "provider-add-form", class: "stack" },
    field("provider-add", "name", "Name (a-z, 0-9, -)", "text"),
    el("div", { class: "field" }, el("label", { for: "provider-add-type" }, "Type"), typeSelect),
    TEXT_FIELDS.map(([name, label, type]) => field("provider-add", name, label, type)),
    keysField("provider-add", "Stored in the database; shown masked from now on."),
    el("button", { type: "submit", class: "primary", "data-testid": "provider-add-submit" }, "Add provider"));
  addForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = { name: addForm.elements.name.value.trim(), type: typeSelect.value };
    for (const [name] of TEXT_FIELDS) {
      const value = addForm.elements[name].value.trim();
      if (value !== "") body[name] = value;
    }
    const keys = keysFrom(addForm);
    if (keys.length) body.keys = keys;
    try {
      await ctx.api("providers", { method: "POST", body });
      addForm.reset();
      done(`Added ${body.name}.`);
      await load();
    } catch (error) { fail(error); }
  });
  root.append(el("details", { "data-testid": "provider-add" },
    el("summary", {}, "Add a provider"), addForm));

  // -- prices (US dollars per million tokens; usage is priced once, when recorded) --------
  const prices = el("div", { "data-testid": "prices-list" });
  // Micro-dollars per million tokens as dollars, all their digits: 800000 → "$0.8".
  const perMillion = (micros) => (micros === null || micros === undefined ? "–" : `$${micros / 1e6}`);
  async function loadPrices() {
    const data = await ctx.api("prices");
    priceCount.textContent = `(${data.prices.length})`;
    prices.replaceChildren(table(
      [
        { key: "provider_type", label: "Type" },
        { key: "model", label: "Model", render: (p) => el("span", { class: "mono" }, p.model) },
        { key: "effective_from", label: "From" },
        { key: "input_micros", label: "Input", numeric: true, render: (p) => perMillion(p.input_micros) },
        { key: "output_micros", label: "Output", numeric: true, render: (p) => perMillion(p.output_micros) },
        { key: "cache_read_micros", label: "Cache read", numeric: true, render: (p) => perMillion(p.cache_read_micros) },
        { key: "cache_write_micros", label: "Cache write", numeric: true, render: (p) => perMillion(p.cache_write_micros) },
        { key: "source", label: "Source" },
        { key: "actions", label: "Actions", render: (p) => el("button", {
          type: "button", class: "danger", "data-testid": `price-remove-${p.provider_type}-${p.model}`,
          "aria-label": `Remove the price of ${p.provider_type} ${p.model}`,
          onclick: async () => {
            if (!window.confirm(`Remove every price of ${p.provider_type} ${p.model}? Its usage is then unpriced.`)) return;
            try {
              await ctx.api("prices/remove", { method: "POST", body: { provider_type: p.provider_type, model: p.model } });
              done(`Removed the price of ${p.model}.`);
              await loadPrices();
            } catch (error) { fail(error); }
          },
        }, "Remove") },
      ],
      data.prices,
      { caption: "Prices in force, US dollars per million tokens", testid: "prices-table",
        rowTestid: (p) => `price-row-${p.provider_type}-${p.model}`, empty: "No prices." },
    ));
  }
  const priceType = el("select", { id: "price-set-type", "data-testid": "price-set-type" },
    TYPES.map((t) => el("option", { value: t }, t)));
  const priceForm = el("form", { class: "filters", "data-testid": "price-set-form" },
    el("div", { class: "field" }, el("label", { for: "price-set-type" }, "Type"), priceType),
    field("price-set", "model", "Model (or a prefix ending in *)", "text"),
    field("price-set", "input", "Input $/M", "text"),
    field("price-set", "output", "Output $/M", "text"),
    field("price-set", "cache_read", "Cache read $/M (empty: input)", "text"),
    field("price-set", "cache_write", "Cache write $/M (empty: input)", "text"),
    field("price-set", "effective_from", "From (YYYY-MM-DD, empty: today)", "text"),
    el("button", { type: "submit", "data-testid": "price-set-submit" }, "Set price"));
  priceForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = { provider_type: priceType.value };
    for (const name of ["model", "input", "output", "cache_read", "cache_write", "effective_from"]) {
      const value = priceForm.elements[name].value.trim();
      if (value !== "") body[name] = value;
    }
    try {
      await ctx.api("prices", { method: "POST", body });
      priceForm.reset();
      done(`Set the price of ${body.model}.`);
      await loadPrices();
    } catch (error) { fail(error); }
  });
  const priceCount = el("span", { "data-testid": "prices-count" });
  root.append(el("h2", {}, "Prices"), el("details", { "data-testid": "prices" },
    el("summary", {}, "Prices in force ", priceCount), prices, priceForm));

  try { await load(); await loadPrices(); } catch (error) { fail(error); }
}
