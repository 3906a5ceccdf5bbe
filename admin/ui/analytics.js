// The analytics dashboard of one tenant over a range of UTC days, from
// GET /api/v1/tenants/{tenant_id}/analytics?from=&to= (see docs/analytics.md for definitions).

import { get, query } from "./api.js";
import { barChart, emptyChart, lineChart } from "./charts.js";
import {
  addDays, clear, fmtMs, fmtNumber, fmtPercent, h, isoDay,
} from "./dom.js";
import { go, isOperator, state } from "./shell.js";

const DEFAULT_DAYS = 30;

function kpi(key, label, value, note) {
  return h("div", { class: "kpi", dataset: { kpi: key } },
    h("span", { class: "kpi-label" }, label),
    h("strong", { class: "kpi-value" }, value),
    note ? h("span", { class: "kpi-note muted" }, note) : null);
}

async function knownTenants() {
  if (!isOperator()) return [state.me.tenant_id];
  const bots = (await get("/bots")).items;
  return [...new Set(bots.map((b) => b.tenant_id))].sort();
}

function controls(tenants, tenant, from, to) {
  const tenantInput = isOperator()
    ? h("input", {
      id: "an-tenant", name: "tenant", list: "an-tenants", value: tenant, required: true,
      pattern: "[A-Za-z0-9][A-Za-z0-9._\\-]{0,63}", autocomplete: "off", placeholder: "tenant id",
    })
    : h("input", { id: "an-tenant", name: "tenant", value: tenant, disabled: true });
  const fromInput = h("input", { id: "an-from", name: "from", type: "date", value: from, required: true });
  const toInput = h("input", { id: "an-to", name: "to", type: "date", value: to, required: true });
  const apply = (first, last) => go("/analytics", {
    tenant: tenantInput.value.trim(), from: first, to: last,
  });
  const preset = (days) => h("button", {
    type: "button", class: "chip",
    on: { click: () => apply(addDays(toInput.value || isoDay(new Date()), -(days - 1)), toInput.value || isoDay(new Date())) },
  }, `${days} days`);
  const form = h("form", { class: "toolbar", id: "analytics-range" },
    h("label", {}, "Tenant ", tenantInput),
    h("datalist", { id: "an-tenants" }, tenants.map((t) => h("option", { value: t }))),
    h("label", {}, "From ", fromInput),
    h("label", {}, "To ", toInput),
    h("button", { type: "submit", class: "primary" }, "Show"),
    h("span", { class: "presets" }, preset(7), preset(30), preset(90)));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    apply(fromInput.value, toInput.value);
  });
  return form;
}

function topTable(items) {
  if (!items.length) {
    return h("p", { class: "empty muted", id: "top-unanswered" },
      "No unanswered questions in this range.");
  }
  return h("table", { class: "data", id: "top-unanswered" },
    h("thead", {}, h("tr", {}, ["#", "Question", "Times asked", "Last asked (UTC)"]
      .map((c) => h("th", {}, c)))),
    h("tbody", {}, items.map((q, i) => h("tr", { dataset: { count: q.count } },
      h("td", { class: "num" }, i + 1),
      h("td", { class: "question" }, q.question),
      h("td", { class: "num" }, q.count),
      h("td", { class: "mono" }, q.last_asked_at.replace("T", " ").slice(0, 16))))));
}

export async function analyticsPage(root, params) {
  const tenants = await knownTenants();
  const today = isoDay(new Date());
  const to = params.get("to") || today;
  const from = params.get("from") || addDays(to, -(DEFAULT_DAYS - 1));
  const tenant = isOperator() ? params.get("tenant") || tenants[0] || "" : state.me.tenant_id;

  const head = h("div", { class: "page-head" },
    h("h1", {}, "Analytics", tenant ? h("span", { class: "muted" }, ` · ${tenant}`) : null));
  const bar = controls(tenants, tenant, from, to);
  if (!tenant) {
    clear(root).append(head, bar,
      h("p", { class: "empty muted" }, "No tenant yet: add a bot first, or type a tenant id."));
    return;
  }
  const data = await get(`/tenants/${encodeURIComponent(tenant)}/analytics${query({ from, to })}`);
  const t = data.totals;
  const days = data.days.map((d) => d.day);
  const pick = (fn) => data.days.map(fn);

  const kpis = h("div", { class: "kpis", id: "kpis" },
    kpi("questions", "Questions", fmtNumber(t.questions)),
    kpi("answered", "Answered", fmtNumber(t.answered),
      t.questions ? fmtPercent(t.answered / t.questions) : null),
    kpi("unanswered", "Unanswered", fmtNumber(t.unanswered),
      t.questions ? fmtPercent(t.unanswered / t.questions) : null),
    kpi("failed", "Failed", fmtNumber(t.failed),
      t.questions ? fmtPercent(t.failed / t.questions) : null),
    kpi("active_users", "Active users", fmtNumber(t.active_users)),
    kpi("median_ms", "Median latency", fmtMs(t.latency.median_ms)),
    kpi("p95_ms", "p95 latency", fmtMs(t.latency.p95_ms)),
    kpi("feedback_ratio", "Positive feedback", fmtPercent(t.feedback_ratio),
      `${fmtNumber(t.feedback_up)} helpful · ${fmtNumber(t.feedback_down)} not helpful`));

  const charts = h("div", { class: "charts" },
    t.questions
      ? barChart({
        id: "questions",
        title: "Questions per day by outcome",
        days,
        series: [
          { key: "answered", label: "answered", values: pick((d) => d.answered) },
          { key: "unanswered", label: "unanswered", values: pick((d) => d.unanswered) },
          { key: "failed", label: "failed", values: pick((d) => d.failed) },
          { key: "pending", label: "pending", values: pick((d) => d.pending) },
        ],
        yFormat: (v) => fmtNumber(v),
      })
      : emptyChart("questions", "Questions per day by outcome", "No questions in this range."),
    t.latency.median_ms !== null
      ? lineChart({
        id: "latency",
        title: "Answer latency (median and p95)",
        days,
        series: [
          { key: "median", label: "median", values: pick((d) => d.latency.median_ms) },
          { key: "p95", label: "p95", values: pick((d) => d.latency.p95_ms) },
        ],
        yFormat: (v) => fmtMs(v),
      })
      : emptyChart("latency", "Answer latency (median and p95)", "No answers in this range."),
    t.feedback_up + t.feedback_down
      ? barChart({
        id: "feedback",
        title: `Feedback per day (${fmtPercent(t.feedback_ratio)} positive)`,
        days,
        stacked: false,
        series: [
          { key: "up", label: "helpful", values: pick((d) => d.feedback_up) },
          { key: "down", label: "not helpful", values: pick((d) => d.feedback_down) },
        ],
        yFormat: (v) => fmtNumber(v),
      })
      : emptyChart("feedback", "Feedback per day", "No feedback in this range."),
    t.active_users
      ? barChart({
        id: "active-users",
        title: `Active users per day (${fmtNumber(t.active_users)} over the range)`,
        days,
        series: [{ key: "users", label: "active users", values: pick((d) => d.active_users) }],
        yFormat: (v) => fmtNumber(v),
      })
      : emptyChart("active-users", "Active users per day", "Nobody asked in this range."));

  root.dataset.tenant = tenant;
  clear(root).append(head, bar,
    h("p", { class: "muted range" }, `${data.from} to ${data.to} (UTC), ${days.length} days`),
    kpis, charts,
    h("h2", {}, "Top unanswered questions"),
    h("div", { class: "card flush" }, topTable(data.top_unanswered)));
}
