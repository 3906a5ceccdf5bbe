// The admin UI's entry point: sign-in with a bearer token, the hash router, the navigation.
// Pages: #/bots, #/bots/<id> (chat configs), #/analytics, #/lag (operators).

import { get, token, whenUnauthorized } from "./api.js";
import { analyticsPage } from "./analytics.js";
import { botPage, botsPage } from "./bots.js";
import { h } from "./dom.js";
import { lagPage } from "./lag.js";
import { errorBox, hashParams, leavePage, state } from "./shell.js";

const $ = (id) => document.getElementById(id);

const ROUTES = [
  { pattern: /^\/bots$/, name: "bots", render: (root, _m, params) => botsPage(root, params) },
  { pattern: /^\/bots\/(\d+)$/, name: "bot", nav: "bots",
    render: (root, m, params) => botPage(root, Number(m[1]), params) },
  { pattern: /^\/analytics$/, name: "analytics",
    render: (root, _m, params) => analyticsPage(root, params) },
  { pattern: /^\/lag$/, name: "lag", render: (root) => lagPage(root) },
];

function showLogin(message) {
  leavePage();
  state.me = null;
  $("nav").hidden = true;
  $("who").hidden = true;
  $("page").hidden = true;
  $("page").replaceChildren();
  $("login").hidden = false;
  const error = $("login-error");
  error.textContent = message || "";
  error.hidden = !message;
  $("token").focus();
}

async function signIn(value) {
  token.set(value);
  try {
    state.me = await get("/whoami");
  } catch (err) {
    token.clear();
    showLogin(err.status === 401 ? "That token is not valid here." : err.message);
    return false;
  }
  const me = state.me;
  $("who-label").textContent = me.role === "operator"
    ? `${me.name} · operator`
    : `${me.name} · tenant ${me.tenant_id}`;
  for (const link of document.querySelectorAll("[data-operator-only]")) {
    link.hidden = me.role !== "operator";
  }
  $("login").hidden = true;
  $("nav").hidden = false;
  $("who").hidden = false;
  $("page").hidden = false;
  return true;
}

let renderId = 0;
async function render() {
  if (!state.me) return;
  leavePage();
  const { path, params } = hashParams();
  const route = ROUTES.find((r) => r.pattern.test(path));
  if (!route) {
    location.replace("#/bots");
    return;
  }
  const root = $("page");
  const mine = ++renderId;
  root.dataset.page = route.name;
  root.dataset.ready = "false";
  for (const link of document.querySelectorAll("[data-nav]")) {
    link.classList.toggle("active", link.dataset.nav === (route.nav || route.name));
  }
  root.replaceChildren(h("p", { class: "muted loading" }, "Loading…"));
  try {
    await route.render(root, path.match(route.pattern), params);
  } catch (err) {
    if (mine !== renderId || !state.me) return;
    root.replaceChildren(errorBox(err));
  }
  if (mine === renderId) root.dataset.ready = "true";
}

// after sign-in: the page in the address, or the bots (changing the hash renders it)
async function route() {
  if (!location.hash || location.hash === "#/" || location.hash === "#") {
    location.replace("#/bots");
  } else {
    await render();
  }
}

async function start() {
  whenUnauthorized(() => {
    token.clear();
    showLogin("Your token was refused: sign in again.");
  });
  $("login-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const input = $("token");
    const value = input.value.trim();
    input.value = "";
    if (value && (await signIn(value))) await route();
  });
  $("logout").addEventListener("click", () => {
    token.clear();
    showLogin();
  });
  window.addEventListener("hashchange", render);
  const saved = token.get();
  if (saved && (await signIn(saved))) {
    await route();
  } else if (!saved) {
    showLogin();
  }
}

start();
