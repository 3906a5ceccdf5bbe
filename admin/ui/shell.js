// What every page shares: who is signed in, toasts, error boxes, and per-page cleanups
// (timers of the Lag page's auto-refresh stop when the page is left).

import { h } from "./dom.js";

export const state = {
  me: null, // {role, name, tenant_id} from /whoami
  cleanups: [],
};

export const isOperator = () => state.me && state.me.role === "operator";

export function onLeave(callback) {
  state.cleanups.push(callback);
}

export function leavePage() {
  for (const callback of state.cleanups.splice(0)) {
    try {
      callback();
    } catch {
      // a cleanup failing must not keep the next page from rendering
    }
  }
}

let toastTimer = null;
export function toast(message, kind = "ok") {
  const node = document.getElementById("toast");
  node.textContent = message;
  node.className = `toast ${kind}`;
  node.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => {
    node.hidden = true;
  }, 4000);
}

/** The API's error as a readable box: the message, and the fields it names. */
export function errorBox(error) {
  const fields = (error.details || [])
    .map((d) => `${(d.loc || []).join(".")}: ${d.msg}`)
    .filter(Boolean);
  return h("div", { class: "error-box", role: "alert", dataset: { code: error.code || "" } },
    h("strong", {}, error.message || String(error)),
    fields.length ? h("ul", {}, fields.map((f) => h("li", {}, f))) : null);
}

export function showError(container, error) {
  container.replaceChildren(errorBox(error));
  container.hidden = false;
}

export function hashParams() {
  const hash = location.hash.replace(/^#/, "");
  const [path, search] = hash.split("?");
  return { path: path || "/", params: new URLSearchParams(search || "") };
}

export function go(path, params) {
  const search = params ? new URLSearchParams(params).toString() : "";
  const target = `#${path}${search ? `?${search}` : ""}`;
  if (location.hash === target) {
    window.dispatchEvent(new HashChangeEvent("hashchange"));
  } else {
    location.hash = target;
  }
}
