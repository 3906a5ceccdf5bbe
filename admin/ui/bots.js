// Bots (list, add, enable/disable, rotate a secret) and one bot's chat configs (list, add,
// edit, delete). Secrets are write-only: inputs are password fields that are cleared as soon as
// the request is sent, and the API never returns them (only has_<secret> flags are shown).

import { del, get, patch, post, put } from "./api.js";
import { badge, clear, field, h } from "./dom.js";
import { go, isOperator, showError, state, toast } from "./shell.js";

const SECRETS = ["access_token", "app_secret", "verify_token", "onyx_api_key"];
const SECRET_LABELS = {
  access_token: "access token",
  app_secret: "app secret",
  verify_token: "verify token",
  onyx_api_key: "Onyx API key",
};

function secretInput(name, required) {
  return h("input", {
    name, type: "password", autocomplete: "new-password", spellcheck: "false", required,
  });
}

function text(name, attrs) {
  return h("input", { name, type: "text", autocomplete: "off", spellcheck: "false", ...attrs });
}

function list(value) {
  return value.split(",").map((v) => v.trim()).filter(Boolean);
}

function enabledBadge(bot) {
  return bot.enabled ? badge("enabled", "ok") : badge("disabled", "off");
}

function secretFlags(bot) {
  return h("span", { class: "flags" }, SECRETS.map((name) => {
    const set = bot[`has_${name}`];
    return h("span", {
      class: `flag ${set ? "set" : "unset"}`,
      title: `${SECRET_LABELS[name]}: ${set ? "set (write-only)" : "not set"}`,
      dataset: { secret: name, set: String(set) },
    }, `${set ? "✓" : "–"} ${SECRET_LABELS[name]}`);
  }));
}

async function toggle(bot, done) {
  const action = bot.enabled ? "disable" : "enable";
  try {
    const changed = await post(`/bots/${bot.id}/${action}`);
    toast(`${changed.name} is ${changed.enabled ? "enabled" : "disabled"}`);
    await done();
  } catch (err) {
    toast(err.message, "bad");
  }
}

// --- rotate a secret -----------------------------------------------------------------------

function rotateDialog(bot, done) {
  const message = h("div", { hidden: true });
  const value = secretInput("value", true);
  const which = h("select", { name: "secret" },
    SECRETS.map((name) => h("option", { value: name }, SECRET_LABELS[name])));
  const dialog = h("dialog", { class: "card", id: "rotate-dialog" });
  const form = h("form", { method: "dialog", autocomplete: "off" },
    h("h2", {}, `Replace a secret of ${bot.name}`),
    h("p", { class: "muted" },
      "The new value is sent once and never shown again, here or anywhere else. Running "
      + "processes use it within the bot cache TTL."),
    field("Secret", which),
    field("New value", value),
    message,
    h("div", { class: "actions" },
      h("button", { type: "submit", class: "primary", value: "replace" }, "Replace"),
      h("button", { type: "button", on: { click: () => dialog.close() } }, "Cancel")));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const secret = which.value;
    const body = { value: value.value };
    value.value = ""; // the secret leaves the page now
    try {
      await put(`/bots/${bot.id}/secrets/${secret}`, body);
      dialog.close();
      toast(`${SECRET_LABELS[secret]} of ${bot.name} replaced`);
      await done();
    } catch (err) {
      showError(message, err);
    }
  });
  dialog.append(form);
  dialog.addEventListener("close", () => dialog.remove());
  document.body.append(dialog);
  dialog.showModal();
  value.focus();
}

// --- add a bot -------------------------------------------------------------------------------

function addBotForm(done) {
  const message = h("div", { hidden: true });
  const tenant = text("tenant_id", {
    required: isOperator(), pattern: "[A-Za-z0-9][A-Za-z0-9._\\-]{0,63}",
    placeholder: isOperator() ? "acme" : state.me.tenant_id,
    value: isOperator() ? null : state.me.tenant_id, disabled: !isOperator(),
  });
  const inputs = {
    phone_number_id: text("phone_number_id", {
      required: true, inputmode: "numeric", pattern: "[0-9]{1,32}", placeholder: "106540352242922",
    }),
    name: text("name", { placeholder: "Acme support" }),
    display_phone_number: text("display_phone_number", { placeholder: "+1 555 0100" }),
    access_token: secretInput("access_token", true),
    app_secret: secretInput("app_secret", true),
    verify_token: secretInput("verify_token", true),
  };
  const form = h("form", { class: "grid-form", id: "add-bot", autocomplete: "off" },
    field("Tenant", tenant, isOperator() ? null : "your tenant"),
    field("Phone number id", inputs.phone_number_id, "Meta's numeric id of the number"),
    field("Name", inputs.name),
    field("Display number", inputs.display_phone_number),
    field("Access token", inputs.access_token, "write-only"),
    field("App secret", inputs.app_secret, "write-only"),
    field("Verify token", inputs.verify_token, "write-only"),
    h("div", { class: "actions wide" },
      h("button", { type: "submit", class: "primary" }, "Add bot")),
    message);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = {};
    for (const [name, input] of Object.entries(inputs)) {
      if (input.value.trim()) body[name] = input.value.trim();
    }
    if (isOperator()) body.tenant_id = tenant.value.trim();
    for (const name of SECRETS) if (inputs[name]) inputs[name].value = "";
    try {
      const bot = await post("/bots", body);
      form.reset();
      toast(`Bot ${bot.name} (#${bot.id}) added`);
      await done();
    } catch (err) {
      showError(message, err);
    }
  });
  return h("details", { class: "card", id: "add-bot-card" },
    h("summary", {}, "Add a bot"), form);
}

// --- the bots page ---------------------------------------------------------------------------

export async function botsPage(root, params) {
  const filter = isOperator() ? params.get("tenant") || "" : "";
  const all = (await get("/bots")).items;
  const bots = filter ? all.filter((b) => b.tenant_id === filter) : all;
  const tenants = [...new Set(all.map((b) => b.tenant_id))].sort();
  const reload = () => botsPage(root, params);

  const head = h("div", { class: "page-head" },
    h("h1", {}, "Bots"),
    isOperator()
      ? h("label", { class: "inline" }, "Tenant ",
        h("select", {
          id: "tenant-filter",
          on: { change: (e) => go("/bots", e.target.value ? { tenant: e.target.value } : null) },
        }, h("option", { value: "" }, "all tenants"),
        tenants.map((t) => h("option", { value: t, selected: t === filter }, t))))
      : h("span", { class: "muted" }, `tenant ${state.me.tenant_id}`));

  const rows = bots.map((bot) => h("tr", { dataset: { botId: bot.id, tenant: bot.tenant_id } },
    h("td", { class: "num" }, bot.id),
    h("td", {}, h("a", { href: `#/bots/${bot.id}`, class: "bot-name" }, bot.name)),
    isOperator() ? h("td", {}, bot.tenant_id) : null,
    h("td", { class: "mono" }, bot.phone_number_id),
    h("td", {}, bot.display_phone_number || "–"),
    h("td", {}, bot.answer_backend),
    h("td", {}, secretFlags(bot)),
    h("td", { class: "status" }, enabledBadge(bot)),
    h("td", { class: "actions" },
      h("a", { class: "button", href: `#/bots/${bot.id}` }, "Chat configs"),
      h("button", {
        type: "button", class: bot.enabled ? "warn" : "", dataset: { action: "toggle" },
        on: { click: () => toggle(bot, reload) },
      }, bot.enabled ? "Disable" : "Enable"),
      h("button", {
        type: "button", dataset: { action: "rotate" },
        on: { click: () => rotateDialog(bot, reload) },
      }, "Rotate secret"))));

  const table = bots.length
    ? h("table", { class: "data", id: "bots" },
      h("thead", {}, h("tr", {},
        ["ID", "Name", isOperator() ? "Tenant" : null, "Phone number id", "Number", "Backend",
          "Secrets", "Status", ""].filter((c) => c !== null).map((c) => h("th", {}, c)))),
      h("tbody", {}, rows))
    : h("p", { class: "empty muted", id: "bots" }, "No bots yet.");

  const wasOpen = root.querySelector("#add-bot-card")?.open;
  const add = addBotForm(reload);
  if (wasOpen) add.open = true;
  clear(root).append(head, h("div", { class: "card flush" }, table), add);
}

// --- one bot's chat configs ------------------------------------------------------------------

function configSummary(config) {
  const filters = Object.keys(config.answer_filters || {});
  return [
    h("td", { class: "num" }, config.id),
    h("td", {}, config.match_kind, config.is_default ? " " : null,
      config.is_default ? badge("default", "info") : null),
    h("td", { class: "mono" }, config.match_value || "–"),
    h("td", { class: "num" }, config.persona_id ?? "–"),
    h("td", {}, config.document_sets.join(", ") || "–"),
    h("td", {}, config.allowed_senders === null ? "everyone" : config.allowed_senders.join(", ")),
    h("td", {}, config.respond_tag_only ? "yes" : "no"),
    h("td", {}, config.show_sources ? "yes" : "no"),
    h("td", {}, filters.length ? filters.join(", ") : "–"),
    h("td", { class: "status" }, config.disabled ? badge("disabled", "off") : badge("active", "ok")),
  ];
}

function configForm(bot, config, done) {
  const editing = config !== null;
  const c = config || {
    match_kind: "default", match_value: null, persona_id: null, document_sets: [],
    allowed_senders: null, follow_up_contacts: [], answer_filters: {},
    respond_tag_only: false, show_sources: true, disabled: false,
  };
  const message = h("div", { hidden: true });
  const kind = h("select", { name: "match_kind", disabled: editing },
    [["default", "default (every other chat)"], ["wa_id", "wa_id (one person)"],
      ["group", "group"]].map(([v, label]) =>
      h("option", { value: v, selected: v === c.match_kind }, label)));
  const value = text("match_value", {
    value: c.match_value, disabled: editing || c.match_kind === "default",
    placeholder: "wa_id, BSUID or group id",
  });
  kind.addEventListener("change", () => {
    value.disabled = kind.value === "default";
    if (value.disabled) value.value = "";
  });
  const persona = h("input", {
    name: "persona_id", type: "number", min: 0, value: c.persona_id ?? null,
  });
  const docs = text("document_sets", { value: c.document_sets.join(", ") });
  const senders = text("allowed_senders", {
    value: c.allowed_senders === null ? "" : c.allowed_senders.join(", "),
    placeholder: "empty: everyone",
  });
  const followUps = text("follow_up_contacts", { value: c.follow_up_contacts.join(", ") });
  const filters = h("textarea", { name: "answer_filters", rows: 2, spellcheck: "false" });
  filters.value = JSON.stringify(c.answer_filters || {});
  const box = (name, checked) => h("input", { name, type: "checkbox", checked });
  const tagOnly = box("respond_tag_only", c.respond_tag_only);
  const sources = box("show_sources", c.show_sources);
  const disabled = box("disabled", c.disabled);

  const form = h("form", {
    class: "grid-form", id: editing ? `edit-config-${c.id}` : "add-config", autocomplete: "off",
  },
  field("Match", kind, editing ? "fixed once created" : null),
  field("Match value", value),
  field("Persona id", persona),
  field("Document sets", docs, "comma-separated"),
  field("Allowed senders", senders, "comma-separated; empty: everyone"),
  field("Follow-up contacts", followUps, "comma-separated"),
  field("Answer filters (JSON)", filters, "source_types, tags, time_cutoff_days"),
  h("div", { class: "checks" },
    h("label", {}, tagOnly, " respond only when tagged"),
    h("label", {}, sources, " show sources"),
    h("label", {}, disabled, " disabled")),
  h("div", { class: "actions wide" },
    h("button", { type: "submit", class: "primary" }, editing ? "Save changes" : "Add chat config"),
    editing ? h("button", { type: "button", on: { click: () => done(false) } }, "Cancel") : null),
  message);

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    let answerFilters;
    try {
      answerFilters = JSON.parse(filters.value || "{}");
    } catch {
      showError(message, { message: "answer filters must be a JSON object" });
      return;
    }
    const next = {
      persona_id: persona.value === "" ? null : Number(persona.value),
      document_sets: list(docs.value),
      allowed_senders: senders.value.trim() ? list(senders.value) : null,
      follow_up_contacts: list(followUps.value),
      answer_filters: answerFilters,
      respond_tag_only: tagOnly.checked,
      show_sources: sources.checked,
      disabled: disabled.checked,
    };
    try {
      if (editing) {
        const changes = {};
        for (const [name, v] of Object.entries(next)) {
          if (JSON.stringify(v) !== JSON.stringify(c[name])) changes[name] = v;
        }
        await patch(`/bots/${bot.id}/chat-configs/${c.id}`, changes);
        toast(`Chat config #${c.id} saved`);
      } else {
        const body = { match_kind: kind.value, ...next };
        if (kind.value !== "default") body.match_value = value.value.trim();
        const made = await post(`/bots/${bot.id}/chat-configs`, body);
        toast(`Chat config #${made.id} added`);
      }
      await done(true);
    } catch (err) {
      showError(message, err);
    }
  });
  return form;
}

export async function botPage(root, botId) {
  const [bot, configs] = await Promise.all([
    get(`/bots/${botId}`),
    get(`/bots/${botId}/chat-configs`),
  ]);
  const reload = () => botPage(root, botId);

  const facts = h("dl", { class: "facts" },
    [["Tenant", bot.tenant_id], ["Phone number id", bot.phone_number_id],
      ["Number", bot.display_phone_number || "–"], ["Backend", bot.answer_backend],
      ["Onyx URL", bot.onyx_base_url || "–"], ["Throughput", `${bot.throughput_per_s} msg/s`]]
      .map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]),
    h("dt", {}, "Secrets"), h("dd", {}, secretFlags(bot)),
    h("dt", {}, "Status"), h("dd", { class: "status" }, enabledBadge(bot)));

  const editor = h("div", { id: "config-editor" });
  const rows = configs.items.map((config) => {
    const row = h("tr", { dataset: { configId: config.id } }, configSummary(config));
    let armed = false;
    const remove = h("button", {
      type: "button", class: "warn", dataset: { action: "delete" },
      on: {
        click: async () => {
          if (!armed) { // a second click confirms (no native dialogs)
            armed = true;
            remove.textContent = "Really delete?";
            setTimeout(() => {
              armed = false;
              remove.textContent = "Delete";
            }, 4000);
            return;
          }
          try {
            await del(`/bots/${bot.id}/chat-configs/${config.id}`);
            toast(`Chat config #${config.id} deleted`);
            await reload();
          } catch (err) {
            toast(err.message, "bad");
          }
        },
      },
    }, "Delete");
    const edit = h("button", {
      type: "button", dataset: { action: "edit" },
      on: {
        click: () => {
          editor.replaceChildren(h("div", { class: "card" },
            h("h2", {}, `Edit chat config #${config.id}`),
            configForm(bot, config, (changed) => (changed ? reload()
              : editor.replaceChildren()))));
          editor.scrollIntoView({ block: "nearest" });
        },
      },
    }, "Edit");
    row.append(h("td", { class: "actions" }, edit, remove));
    return row;
  });

  const table = rows.length
    ? h("table", { class: "data", id: "chat-configs" },
      h("thead", {}, h("tr", {}, ["ID", "Match", "Value", "Persona", "Document sets",
        "Allowed senders", "Tag only", "Sources", "Filters", "Status", ""]
        .map((c) => h("th", {}, c)))),
      h("tbody", {}, rows))
    : h("p", { class: "empty muted", id: "chat-configs" },
      "No chat configs: every chat gets the built-in defaults.");

  clear(root).append(
    h("p", { class: "crumbs" }, h("a", { href: "#/bots" }, "Bots"), " / ", bot.name),
    h("div", { class: "page-head" },
      h("h1", {}, bot.name, " ", h("span", { class: "muted" }, `#${bot.id}`)),
      h("div", { class: "actions" },
        h("button", {
          type: "button", class: bot.enabled ? "warn" : "", dataset: { action: "toggle" },
          on: { click: () => toggle(bot, reload) },
        }, bot.enabled ? "Disable" : "Enable"),
        h("a", { class: "button", href: `#/analytics?${new URLSearchParams({ tenant: bot.tenant_id })}` },
          "Analytics"))),
    h("div", { class: "card" }, facts),
    h("h2", {}, "Chat configs"),
    h("div", { class: "card flush" }, table),
    editor,
    h("details", { class: "card", id: "add-config-card" },
      h("summary", {}, "Add a chat config"), configForm(bot, null, reload)),
  );
}
