// Audit: every change made through the console, the admin API or the CLI, newest first.
import { el, formatTime, table } from "../ui.js";

function detailText(detail) {
  if (!detail || typeof detail !== "object") return "";
  const parts = Object.entries(detail).map(([k, v]) => `${k}: ${typeof v === "string" ? v : JSON.stringify(v)}`);
  return parts.join("; ");
}

export async function render(root, ctx) {
  const message = el("p", { class: "error", role: "alert", "data-testid": "audit-error" });
  const holder = el("div");
  const more = el("button", { type: "button", "data-testid": "audit-more", hidden: true }, "Older entries");
  root.append(el("h1", {}, "Audit"), message, holder, el("p", {}, more));

  const entries = [];
  let before = null;
  const columns = [
    { key: "at", label: "When", render: (e) => formatTime(e.at) },
    { key: "actor_name", label: "Who" },
    { key: "via", label: "Through" },
    { key: "action", label: "Action", render: (e) => el("span", { class: "mono" }, e.action) },
    { key: "target", label: "Target" },
    { key: "detail", label: "Detail", render: (e) => el("span", { class: "mono" }, detailText(e.detail)) },
  ];

  async function load() {
    const query = before ? `audit?limit=100&before=${before}` : "audit?limit=100";
    try {
      const data = await ctx.api(query);
      entries.push(...data.entries);
      before = data.next_before;
      more.hidden = !before;
      holder.replaceChildren(table(columns, entries, {
        caption: "Changes, newest first",
        testid: "audit-table",
        rowTestid: () => "audit-row",
        rowAttrs: (e) => ({ "data-action": e.action, "data-target": e.target }),
        empty: "No changes recorded yet.",
      }));
    } catch (error) { message.textContent = error.message; }
  }
  more.addEventListener("click", load);
  await load();
}
