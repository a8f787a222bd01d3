// corral's dashboard: sign in with an API key, then the workload list or a workload
// (#/ and #/w/ID), capacity, the queue and the last hour beside them, all kept live by
// one event stream (GET /v1/events?follow=true, from an hour back for the plot).
// Signing out forgets the key and reloads the page: nothing of the last key's stays.

import { ApiError, call, followEvents, forgetKey, getJSON, storedKey, storeKey, whenUnauthorized } from "./api.js";
import { listView } from "./list.js";
import { overview } from "./overview.js";
import { workloadView } from "./workload.js";

const SIGNED_OUT = "corral.signedOut";
const $ = (id) => document.getElementById(id);

/** Forget the key and start again from a fresh page, saying why on the sign-in form. */
function signOut(message) {
  forgetKey();
  if (message) sessionStorage.setItem(SIGNED_OUT, message);
  location.replace(location.pathname);
}

function notice(message) {
  $("notice-text").textContent = message;
  $("notice").hidden = !message;
}

function showLogin() {
  const message = sessionStorage.getItem(SIGNED_OUT);
  sessionStorage.removeItem(SIGNED_OUT);
  $("login-view").hidden = false;
  const form = $("login");
  const input = $("key");
  const error = $("login-error");
  const submit = form.querySelector("button[type=submit]");
  const say = (text) => {
    error.textContent = text;
    error.hidden = !text;
  };
  say(message || "");
  input.focus();
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const key = input.value.trim();
    if (!key) {
      say("Paste an API key first.");
      return;
    }
    submit.disabled = true;
    say("");
    try {
      await call("v1/status", { key });
    } catch (err) {
      submit.disabled = false;
      if (err.status === 401) say(`That key was refused: ${err.message}.`);
      else if (err instanceof ApiError) say(`Could not sign in: ${err.message}`);
      else throw err;
      input.select();
      return;
    }
    storeKey(key);
    input.value = "";
    $("login-view").hidden = true;
    start();
  });
}

async function isAdmin() {
  try {
    await call("v1/workloads", { params: { all_users: "true", limit: 1 } });
    return true;
  } catch {
    return false; // 403: a user's key
  }
}

/** open: the server takes no key (corral serve --no-auth): no sign-in, no sign-out. */
async function start(open = false) {
  whenUnauthorized(() => signOut("Your key is no longer accepted (revoked?). Sign in again."));
  $("signout").addEventListener("click", () => signOut(""));
  $("signout").hidden = open;
  $("notice-close").addEventListener("click", () => notice(""));
  const admin = await isAdmin();
  $("role").textContent = open ? "no keys (--no-auth)" : admin ? "admin key" : "user key";
  $("session").hidden = false;
  $("app").hidden = false;

  const ctx = {
    admin,
    notice,
    navigate: (hash) => {
      location.hash = hash;
    },
  };
  const side = overview($("side"), ctx);
  let view = null;

  function route() {
    if (view) view.stop();
    notice("");
    const hash = location.hash || "#/";
    const match = hash.match(/^#\/w\/([0-9a-z]+)$/);
    const main = $("view");
    if (match) {
      view = workloadView(main, ctx, match[1]);
    } else {
      document.title = "corral";
      const query = hash.startsWith("#/?") ? hash.slice(3) : "";
      view = listView(main, ctx, query);
    }
    main.focus({ preventScroll: true });
    window.scrollTo(0, 0);
  }
  window.addEventListener("hashchange", route);
  route();

  const live = $("live");
  const stream = new AbortController();
  followEvents(
    "v1/events",
    { follow: "true", since_seconds: 3600 },
    {
      signal: stream.signal,
      onMessage: ({ event, data }) => {
        if (event !== "transition") return;
        side.event(data);
        if (view) view.event(data);
      },
      onState: (state, err) => {
        live.className = `live is-${state}`; // not "live live": Live's colour for all
        live.textContent = state === "live" ? "Live" : state === "failed" ? "Not live" : "Reconnecting…";
        live.title = err ? err.message : state === "live" ? "Updates as they happen" : "";
        if (state === "failed" && err && err.status !== 401) notice(`Live updates stopped: ${err.message}`);
      },
    },
  );
}

/** Whether the server asks for keys (ui/config.json, public): the API is not called
 * before there is a key (a 401 in the console on every visit otherwise). */
async function keysNeeded() {
  try {
    return (await getJSON("ui/config.json", {}, { key: "" })).keys !== false;
  } catch {
    return true; // the sign-in form says what is wrong when a key is tried
  }
}

async function main() {
  if (storedKey()) return start();
  if (await keysNeeded()) return showLogin();
  return start(true); // corral serve --no-auth
}

main();
