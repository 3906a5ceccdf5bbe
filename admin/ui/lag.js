// Consumer lag per group/topic/partition from GET /api/v1/lag (operators only): the figures
// of `onyx-wa lag --json`. Auto-refresh lets the server's evaluator see movement over its
// window, so WARN / STALL / STOP show up like in `onyx-wa lag --watch`.

import { get } from "./api.js";
import { badge, clear, fmtNumber, fmtSeconds, h } from "./dom.js";
import { errorBox, isOperator, onLeave } from "./shell.js";

const REFRESH_MS = 5000;
const STATUS_KIND = { OK: "ok", WARN: "warn", STALL: "bad", STOP: "bad", ERR: "bad" };

function statusBadge(status) {
  return badge(status, STATUS_KIND[status] || "");
}

function table(report) {
  if (!report.groups.length) {
    return h("p", { class: "empty muted", id: "lag-table" }, "No consumer groups found.");
  }
  const body = [];
  for (const g of report.groups) {
    body.push(h("tr", { class: "group-row", dataset: { group: g.group, status: g.status } },
      h("th", { colspan: 5, scope: "rowgroup" }, g.group,
        g.error ? h("span", { class: "error-inline" }, ` ${g.error}`) : null),
      h("td", { class: "num", dataset: { field: "lag" } }, fmtNumber(g.lag)),
      h("td", { class: "num" }, fmtSeconds(g.lag_seconds)),
      h("td", {}, statusBadge(g.status))));
    for (const p of g.partitions) {
      body.push(h("tr", {
        class: "partition-row",
        dataset: { group: g.group, topic: p.topic, partition: p.partition, status: p.status },
      },
      h("td", {}, ""),
      h("td", { class: "mono" }, p.topic),
      h("td", { class: "num" }, p.partition),
      h("td", { class: "num", dataset: { field: "committed" } },
        p.committed === null ? "–" : fmtNumber(p.committed)),
      h("td", { class: "num", dataset: { field: "end" } }, fmtNumber(p.end)),
      h("td", { class: "num", dataset: { field: "lag" } }, fmtNumber(p.lag)),
      h("td", { class: "num", dataset: { field: "lag_seconds" } }, fmtSeconds(p.lag_seconds)),
      h("td", {}, statusBadge(p.status),
        p.error ? h("span", { class: "error-inline" }, ` ${p.error}`) : null)));
    }
  }
  return h("table", { class: "data", id: "lag-table" },
    h("thead", {}, h("tr", {}, ["Group", "Topic", "Partition", "Committed", "End", "Lag",
      "Lag (age)", "Status"].map((c) => h("th", {}, c)))),
    h("tbody", {}, body));
}

function summary(report) {
  const worst = report.groups.map((g) => g.status);
  const bad = worst.filter((s) => s !== "OK").length;
  const total = report.groups.reduce((sum, g) => sum + g.lag, 0);
  const oldest = Math.max(0, ...report.groups.map((g) => g.lag_seconds));
  return h("div", { class: "kpis", id: "lag-summary" },
    h("div", { class: "kpi", dataset: { kpi: "groups" } },
      h("span", { class: "kpi-label" }, "Groups"), h("strong", { class: "kpi-value" },
        fmtNumber(report.groups.length))),
    h("div", { class: "kpi", dataset: { kpi: "unhealthy" } },
      h("span", { class: "kpi-label" }, "Not OK"), h("strong", { class: "kpi-value" },
        fmtNumber(bad))),
    h("div", { class: "kpi", dataset: { kpi: "lag" } },
      h("span", { class: "kpi-label" }, "Total lag"), h("strong", { class: "kpi-value" },
        fmtNumber(total)), h("span", { class: "kpi-note muted" }, "records")),
    h("div", { class: "kpi", dataset: { kpi: "lag_seconds" } },
      h("span", { class: "kpi-label" }, "Oldest unconsumed"), h("strong", { class: "kpi-value" },
        fmtSeconds(oldest))));
}

export async function lagPage(root) {
  const head = h("div", { class: "page-head" }, h("h1", {}, "Consumer lag"));
  if (!isOperator()) {
    clear(root).append(head, h("p", { class: "card muted", id: "lag-forbidden" },
      "Consumer lag is deployment-wide (every tenant shares the topics): operators only."));
    return;
  }
  const body = h("div", { id: "lag-body" });
  const stamp = h("span", { class: "muted", id: "lag-at" });
  const auto = h("input", { type: "checkbox", id: "lag-auto" });
  let timer = null;
  let left = false;

  async function refresh() {
    try {
      const report = await get("/lag");
      if (left) return;
      stamp.textContent = `collected ${new Date(report.at * 1000).toISOString()
        .replace("T", " ").slice(0, 19)} UTC`;
      body.replaceChildren(summary(report), h("div", { class: "card flush" }, table(report)));
    } catch (err) {
      if (!left) body.replaceChildren(errorBox(err));
    }
  }
  function schedule() {
    clearInterval(timer);
    timer = auto.checked ? setInterval(refresh, REFRESH_MS) : null;
  }
  auto.addEventListener("change", schedule);
  onLeave(() => {
    left = true;
    clearInterval(timer);
  });
  const tools = h("div", { class: "toolbar" },
    h("button", { type: "button", class: "primary", id: "lag-refresh", on: { click: refresh } },
      "Refresh"),
    h("label", {}, auto, ` auto-refresh every ${REFRESH_MS / 1000} s`),
    stamp);
  clear(root).append(head,
    h("p", { class: "muted" },
      "Committed and end offsets per group, topic and partition; lag in records and as the age "
      + "of the oldest unconsumed record. The status (OK, WARN, STALL, STOP, ERR) is judged "
      + "over the last refreshes, as ", h("code", {}, "onyx-wa lag --watch"), " does."),
    tools, body);
  await refresh();
}
