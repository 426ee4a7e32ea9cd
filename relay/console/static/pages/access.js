// Users and tokens: users (and the admin role), tokens (created once, revoked), groups
// and their members, budgets. Each change is audited by the server.
import { el, formatCost, formatTime, table } from "../ui.js";

function input(id, label, attrs = {}) {
  return el("div", { class: "field" }, el("label", { for: id }, label),
    el("input", { id, name: id, "data-testid": id, autocomplete: "off", ...attrs }));
}

function select(id, label, options, attrs = {}) {
  return el("div", { class: "field" }, el("label", { for: id }, label),
    el("select", { id, name: id, "data-testid": id, ...attrs },
      options.map(([value, text]) => el("option", { value }, text ?? value))));
}

function section(title, testid, ...children) {
  return el("section", { "aria-labelledby": `${testid}-h`, "data-testid": testid },
    el("h2", { id: `${testid}-h` }, title), ...children);
}

export async function render(root, ctx) {
  const message = el("p", { class: "error", role: "alert", "data-testid": "access-error" });
  const users = el("div");
  const created = el("div", { "data-testid": "token-created-box" });
  const tokens = el("div");
  const groups = el("div");
  const budgets = el("div");
  let userNames = [];
  let groupNames = [];

  const fail = (error) => { message.textContent = error.message; };
  const done = (text) => { message.textContent = ""; ctx.status(text); };

  async function post(path, body, text, confirmText) {
    if (confirmText && !window.confirm(confirmText)) return null;
    try {
      const answer = await ctx.api(path, { method: "POST", body });
      done(text);
      await load();
      return answer;
    } catch (error) { fail(error); return null; }
  }

  const userSelect = el("select", { id: "token-create-user", name: "user", "data-testid": "token-create-user" });
  const memberUser = el("select", { id: "group-member-user", "data-testid": "group-member-user" });
  const memberGroup = el("select", { id: "group-member-group", "data-testid": "group-member-group" });
  const fillSelect = (node, names) => {
    const chosen = node.value;
    node.replaceChildren(...names.map((n) => el("option", { value: n }, n)));
    if (names.includes(chosen)) node.value = chosen;
  };

  async function loadUsers() {
    const data = await ctx.api("users");
    userNames = data.users.map((u) => u.name);
    fillSelect(userSelect, userNames);
    fillSelect(memberUser, userNames);
    users.replaceChildren(table(
      [
        { key: "name", label: "User" },
        { key: "is_admin", label: "Role", render: (u) => u.is_admin ? el("span", { class: "badge ok" }, "admin") : "user" },
        { key: "active_tokens", label: "Active tokens", numeric: true },
        { key: "created_at", label: "Created", render: (u) => formatTime(u.created_at) },
        { key: "actions", label: "Actions", render: (u) => el("button", {
          type: "button", "data-testid": `user-admin-${u.name}`,
          onclick: () => post(`users/${encodeURIComponent(u.name)}/admin`, { admin: !u.is_admin },
            u.is_admin ? `${u.name} is no longer an admin.` : `${u.name} is an admin.`,
            u.is_admin ? null : `Make ${u.name} an admin? Their tokens will open the console.`),
        }, u.is_admin ? "Revoke admin" : "Make admin") },
      ],
      data.users,
      { testid: "users-table", rowTestid: (u) => `user-row-${u.name}`, empty: "No users yet." },
    ));
  }

  async function loadTokens() {
    const data = await ctx.api("tokens");
    tokens.replaceChildren(table(
      [
        { key: "id", label: "Token id", render: (t) => el("span", { class: "mono" }, t.id) },
        { key: "user", label: "User" },
        { key: "status", label: "Status", render: (t) => el("span",
          { class: t.status === "active" ? "badge ok" : "badge bad", "data-testid": `token-status-${t.id}` }, t.status) },
        { key: "created_at", label: "Created", render: (t) => formatTime(t.created_at) },
        { key: "expires_at", label: "Expires", render: (t) => t.expires_at ? formatTime(t.expires_at) : "never" },
        { key: "last_used_at", label: "Last used", render: (t) => formatTime(t.last_used_at) },
        { key: "actions", label: "Actions", render: (t) => t.status === "revoked" ? "" : el("button", {
          type: "button", class: "danger", "data-testid": `token-revoke-${t.id}`,
          "aria-label": `Revoke token ${t.id} of ${t.user}`,
          onclick: () => post(`tokens/${t.id}/revoke`, {}, `Revoked token ${t.id}.`,
            `Revoke token ${t.id} of ${t.user}? Requests with it are refused from now on.`),
        }, "Revoke") },
      ],
      data.tokens,
      { testid: "tokens-table", rowTestid: (t) => `token-row-${t.id}`,
        rowAttrs: (t) => ({ "data-status": t.status }), empty: "No tokens yet." },
    ));
  }

  async function loadGroups() {
    const data = await ctx.api("groups");
    groupNames = data.groups.map((g) => g.name);
    fillSelect(memberGroup, groupNames);
    groups.replaceChildren(table(
      [
        { key: "name", label: "Group" },
        { key: "members", label: "Members", render: (g) => g.members.length ? g.members.join(", ") : "–" },
        { key: "actions", label: "Actions", render: (g) => el("button", {
          type: "button", class: "danger", "data-testid": `group-remove-${g.name}`,
          onclick: () => post(`groups/${encodeURIComponent(g.name)}/remove`, {}, `Removed group ${g.name}.`,
            `Remove group ${g.name}, and its budgets?`),
        }, "Remove") },
      ],
      data.groups,
      { testid: "groups-table", rowTestid: (g) => `group-row-${g.name}`, empty: "No groups yet." },
    ));
  }

  async function loadBudgets() {
    let data;
    try { data = await ctx.api("budgets"); } catch (error) {
      budgets.replaceChildren(el("p", { class: "empty" }, `Budgets cannot be listed: ${error.message}`));
      return;
    }
    const rows = data.budgets || [];
    budgets.replaceChildren(table(
      [
        { key: "name", label: "Budget" },
        { key: "scope", label: "For", render: (b) => `${b.scope === "key" ? "token" : b.scope} ${b.subject_name}` },
        { key: "model", label: "Model", render: (b) => b.model || "(all)" },
        { key: "period", label: "Period" },
        { key: "limit_micros", label: "Limit", numeric: true, render: (b) => formatCost(b.limit_micros) },
        { key: "spent_micros", label: "Spent", numeric: true, render: (b) => formatCost(b.spent_micros) },
        { key: "percent", label: "Used", numeric: true, render: (b) => el("span",
          { class: b.state === "ok" ? "badge ok" : "badge bad", "data-testid": `budget-used-${b.name}` },
          `${b.percent}%${b.state === "over" ? " (over)" : b.state === "soft" ? " (soft limit)" : ""}`) },
        { key: "actions", label: "Actions", render: (b) => el("button", {
          type: "button", class: "danger", "data-testid": `budget-remove-${b.name}`,
          onclick: () => post(`budgets/${encodeURIComponent(b.name)}/remove`, {}, `Removed budget ${b.name}.`,
            `Remove budget ${b.name}?`),
        }, "Remove") },
      ],
      rows,
      { testid: "budgets-table", rowTestid: (b) => `budget-row-${b.name}`, empty: "No budgets." },
    ));
  }

  async function load() {
    await Promise.all([loadUsers(), loadTokens(), loadGroups(), loadBudgets()]);
  }

  // -- forms ----------------------------------------------------------------------------------
  const userForm = el("form", { class: "filters", "data-testid": "user-create-form" },
    input("user-create-name", "New user's name", { required: true, maxlength: 128 }),
    el("div", { class: "field" }, el("label", {},
      el("input", { type: "checkbox", id: "user-create-admin", "data-testid": "user-create-admin" }), " Admin")),
    el("button", { type: "submit", "data-testid": "user-create-submit" }, "Create user"));
  userForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const name = userForm.elements["user-create-name"].value.trim();
    const admin = userForm.elements["user-create-admin"].checked;
    if (await post("users", { name, admin }, `Created user ${name}.`)) userForm.reset();
  });

  const tokenForm = el("form", { class: "filters", "data-testid": "token-create-form" },
    el("div", { class: "field" }, el("label", { for: "token-create-user" }, "For user"), userSelect),
    input("token-create-expires", "Expires after (e.g. 30d; empty: never)", { maxlength: 32, placeholder: "30d" }),
    el("button", { type: "submit", "data-testid": "token-create-submit" }, "Create token"));
  tokenForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const expires = tokenForm.elements["token-create-expires"].value.trim();
    const body = { user: userSelect.value };
    if (expires) body.expires = expires;
    const answer = await post("tokens", body, "Created a token: copy it now, it is not shown again.");
    if (!answer) return;
    const value = el("code", { "data-testid": "token-created-value", class: "mono" }, answer.token);
    created.replaceChildren(el("div", { class: "card", role: "status" },
      el("p", {}, `Token ${answer.id} for ${answer.user}. It is shown only this once: copy it now.`),
      value, " ",
      el("button", { type: "button", "data-testid": "token-created-copy",
        onclick: async () => { try { await navigator.clipboard.writeText(answer.token); ctx.status("Copied."); } catch { ctx.status("Select the token and copy it."); } } }, "Copy"),
      " ",
      el("button", { type: "button", "data-testid": "token-created-dismiss", onclick: () => created.replaceChildren() }, "Done")));
  });

  const groupForm = el("form", { class: "filters", "data-testid": "group-create-form" },
    input("group-create-name", "New group's name", { required: true, maxlength: 128 }),
    el("button", { type: "submit", "data-testid": "group-create-submit" }, "Create group"));
  groupForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const name = groupForm.elements["group-create-name"].value.trim();
    if (await post("groups", { name }, `Created group ${name}.`)) groupForm.reset();
  });

  const memberForm = el("form", { class: "filters", "data-testid": "group-member-form" },
    el("div", { class: "field" }, el("label", { for: "group-member-group" }, "Group"), memberGroup),
    el("div", { class: "field" }, el("label", { for: "group-member-user" }, "User"), memberUser),
    el("button", { type: "submit", "data-testid": "group-member-add" }, "Add to group"),
    el("button", { type: "button", "data-testid": "group-member-remove", onclick: () =>
      post(`groups/${encodeURIComponent(memberGroup.value)}/members/remove`, { user: memberUser.value },
        `Removed ${memberUser.value} from ${memberGroup.value}.`) }, "Remove from group"));
  memberForm.addEventListener("submit", (event) => {
    event.preventDefault();
    post(`groups/${encodeURIComponent(memberGroup.value)}/members`, { user: memberUser.value },
      `Added ${memberUser.value} to ${memberGroup.value}.`);
  });

  const budgetForm = el("form", { class: "filters", "data-testid": "budget-set-form" },
    input("budget-name", "Budget name", { required: true, maxlength: 128 }),
    select("budget-scope", "For a", [["user"], ["group"], ["token", "token (id)"]]),
    input("budget-subject", "User, group or token id", { required: true, maxlength: 128 }),
    input("budget-limit", "Limit in US dollars", { required: true, inputmode: "decimal", maxlength: 32 }),
    select("budget-period", "Per", [["month"], ["week"], ["day"]]),
    input("budget-model", "Only this model (empty: all)", { maxlength: 256 }),
    input("budget-soft", "Soft limit %", { type: "number", min: 1, max: 100, value: 80 }),
    el("button", { type: "submit", "data-testid": "budget-set-submit" }, "Set budget"));
  budgetForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const f = budgetForm.elements;
    const body = {
      name: f["budget-name"].value.trim(),
      limit: f["budget-limit"].value.trim(),
      period: f["budget-period"].value,
      soft_percent: Number.parseInt(f["budget-soft"].value || "80", 10),
      [f["budget-scope"].value]: f["budget-subject"].value.trim(),
    };
    const model = f["budget-model"].value.trim();
    if (model) body.model = model;
    if (await post("budgets", body, `Set budget ${body.name}.`)) budgetForm.reset();
  });

  root.append(
    el("h1", {}, "Users and tokens"),
    message,
    section("Users", "users", users, userForm),
    section("Tokens", "tokens", created, tokens, tokenForm),
    section("Groups", "groups", groups, groupForm, memberForm),
    section("Budgets", "budgets", budgets, budgetForm),
  );
  try { await load(); } catch (error) { fail(error); }
}
