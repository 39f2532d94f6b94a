// The comfy-gateway console: backends live (Server-Sent Events), recent prompts, users' stored preferences.
// Every value from the gateway is put in the page as text (textContent), never as markup. The admin token is
// kept in sessionStorage for this tab and sent only as an Authorization header, never in a URL.
"use strict";

const TOKEN_KEY = "comfy-gateway-admin-token";
const PROMPTS_REFRESH_MS = 5000;
const THUMBS_KEPT = 200;

const $ = (id) => document.getElementById(id);
let backendNames = [];
let defaultBackend = null;
let openPrompt = null; // the prompt id whose details are shown
const thumbs = new Map(); // view query -> object URL

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null) continue;
    if (key === "className") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("data-")) node.dataset[key.slice(5).replace(/-(.)/g, (_, c) => c.toUpperCase())] = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

function authHeaders(extra) {
  const headers = Object.assign({}, extra || {});
  if (token()) headers.Authorization = "Bearer " + token();
  return headers;
}

async function api(path, options) {
  const opts = Object.assign({}, options || {});
  opts.headers = authHeaders(opts.headers);
  opts.cache = "no-store";
  const response = await fetch(path, opts);
  let body = null;
  try {
    body = await response.json();
  } catch (e) {
    body = null;
  }
  if (!response.ok) {
    const why = body && (body.error && body.error.message || body.message) || response.statusText;
    const error = new Error(response.status + ": " + why);
    error.status = response.status;
    throw error;
  }
  return body;
}

function refusalText(error) {
  if (error.status === 401 || error.status === 403) {
    return "Refused (" + error.message + "). Enter the admin token above.";
  }
  return "Could not load: " + error.message;
}

function showMessage(id, text, isError) {
  const node = $(id);
  node.textContent = text || "";
  node.classList.toggle("error", !!isError);
}

// --- admin token ----------------------------------------------------------------------------------------------

function showTokenState() {
  $("token-state").textContent = token() ? "token in use (this tab only)" : "no token";
}

$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const value = $("token").value.trim();
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  $("token").value = "";
  showTokenState();
  loadPrompts();
  loadUsers();
});

$("token-forget").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  showTokenState();
  loadPrompts();
  loadUsers();
});

// --- backends ---------------------------------------------------------------------------------------------------

function clock(unixSeconds) {
  return new Date(unixSeconds * 1000).toLocaleTimeString();
}

function backendCard(b) {
  const state = b.up === undefined ? "unknown" : b.up ? "up" : "down";
  const title = el("h3", {}, el("span", { text: b.name }),
    el("span", { className: "status " + state, text: state === "unknown" ? "checking" : state }),
    b.default ? el("span", { className: "tag", text: "default" }) : null,
    b.embedded ? el("span", { className: "tag", text: "embedded" }) : null,
    b.pool ? el("span", { className: "tag", text: "member " + b.member + " of pool " + b.pool }) : null);
  const rows = [["URL", b.url], ["Kind", b.kind]];
  if (b.seen_kind !== undefined) rows.push(["Answers as", b.seen_kind + (b.seen_version ? " " + b.seen_version : "")]);
  if (b.latency_ms !== undefined) rows.push(["Latency", b.latency_ms + " ms"]);
  if (b.queue_depth !== undefined) rows.push(["Queue", String(b.queue_depth)]);
  if (b.circuit !== undefined && b.circuit.state !== undefined) {
    const retry = b.circuit.retry_in_seconds ? " (retried in " + Math.ceil(b.circuit.retry_in_seconds) + " s)" : "";
    rows.push(["Circuit", String(b.circuit.state) + retry]);
  }
  if (b.node_classes !== undefined) rows.push(["Node classes", String(b.node_classes)]);
  if (b.model_files !== undefined) {
    const folders = Object.entries(b.model_files).map(([folder, count]) => folder + " " + count);
    if (folders.length) rows.push(["Model files", folders.join(", ")]);
  }
  if (b.last_error !== undefined) rows.push(["Last error", b.last_error]);
  if (b.reason !== undefined) rows.push(["Not ready", b.reason]);
  if (b.checked_at !== undefined) rows.push(["Checked", clock(b.checked_at)]);
  const list = el("dl");
  for (const [name, value] of rows) list.append(el("dt", { text: name }), el("dd", { text: value }));
  return el("article", { className: "card backend", "data-backend": b.name, "data-state": state }, title, list);
}

function renderBackends(list) {
  $("backends").replaceChildren(...list.map(backendCard));
  // what a user or a filter may choose: a pool by its name, once, not its members
  const names = [...new Set(list.map((b) => b.pool || b.name))];
  const fresh = names.join("\n") !== backendNames.join("\n");
  backendNames = names;
  const first = list.find((b) => b.default);
  defaultBackend = first ? first.pool || first.name : null;
  if (fresh) fillBackendSelects();
}

function fillBackendSelects() {
  const filter = $("filter-backend");
  const chosen = filter.value;
  filter.replaceChildren(el("option", { value: "", text: "any" }), ...backendNames.map((n) => el("option", { value: n, text: n })));
  filter.value = backendNames.includes(chosen) ? chosen : "";
  $("user-add-backend").replaceChildren(...backendNames.map((n) => el("option", { value: n, text: n })));
}

function followBackends() {
  const live = $("live");
  const source = new EventSource("/gateway/console/events");
  source.addEventListener("open", () => {
    live.textContent = "live";
    live.classList.add("live");
  });
  source.addEventListener("backends", (event) => {
    live.textContent = "live";
    live.classList.add("live");
    renderBackends(JSON.parse(event.data).backends);
  });
  source.addEventListener("error", () => {
    live.textContent = "reconnecting…";
    live.classList.remove("live");
  });
}

// --- prompts ------------------------------------------------------------------------------------------------------

function viewQuery(ref) {
  return new URLSearchParams({ filename: ref.filename, subfolder: ref.subfolder, type: ref.type }).toString();
}

async function thumbnail(ref) {
  const query = viewQuery(ref);
  const img = el("img", { alt: ref.filename, loading: "lazy", "data-view": query });
  let url = thumbs.get(query);
  if (url === undefined) {
    // Fetched with the token in a header (an <img src> could carry it only in the URL).
    fetch("/view?" + query, { headers: authHeaders() }).then(async (response) => {
      if (!response.ok) return;
      url = URL.createObjectURL(await response.blob());
      thumbs.set(query, url);
      if (thumbs.size > THUMBS_KEPT) {
        const [oldest, oldUrl] = thumbs.entries().next().value;
        thumbs.delete(oldest);
        URL.revokeObjectURL(oldUrl);
      }
      img.src = url;
    }).catch(() => {});
  } else {
    img.src = url;
  }
  return img;
}

function when(unixSeconds) {
  return new Date(unixSeconds * 1000).toLocaleString();
}

async function promptRow(p) {
  const images = await Promise.all(p.outputs.map(thumbnail));
  const more = p.output_count > p.outputs.length ? el("span", { className: "tag", text: "+" + (p.output_count - p.outputs.length) }) : null;
  const summary = el("button", { type: "button", "aria-expanded": String(openPrompt === p.prompt_id) },
    el("span", { className: "id", text: p.prompt_id }),
    el("span", { className: "state " + p.state, text: p.state }),
    el("span", { className: "meta" },
      el("span", { text: "backend " + p.backend }),
      el("span", { text: "route " + (p.route || "none") }),
      el("span", { text: "user " + (p.user === null ? "none" : p.user) }),
      el("span", { text: when(p.submitted_at) }),
      p.duration_seconds !== undefined ? el("span", { text: p.duration_seconds.toFixed(2) + " s" }) : null,
      p.guardrails.length ? el("span", { className: "guardrails" }, "guardrails ",
        ...p.guardrails.map((action) => el("span", { className: "tag guardrail", text: action }))) : null),
    images.length || more ? el("span", { className: "thumbs" }, ...images, more) : null);
  const item = el("li", { className: "prompt", "data-prompt-id": p.prompt_id, "data-backend": p.backend,
    "data-route": p.route || "", "data-state": p.state, "data-guardrails": p.guardrails.join(" ") }, summary);
  summary.addEventListener("click", () => {
    openPrompt = openPrompt === p.prompt_id ? null : p.prompt_id;
    const existing = item.querySelector(".details");
    if (existing) {
      existing.remove();
      summary.setAttribute("aria-expanded", "false");
    } else {
      summary.setAttribute("aria-expanded", "true");
      item.append(promptDetails(p));
    }
  });
  if (openPrompt === p.prompt_id) item.append(promptDetails(p));
  return item;
}

function guardrailList(p) {
  if (!p.guardrails.length) return el("p", { className: "guardrails-none", text: "The guardrails changed nothing." });
  const items = p.guardrails.map((action, i) => el("li", { "data-action": action },
    el("code", { text: action }), " — ", el("span", { text: p.guardrail_notes[i] || "" })));
  return el("div", { className: "guardrails-done" },
    el("p", {}, el("strong", { text: "What the guardrails did:" })), el("ul", {}, ...items));
}

function promptDetails(p) {
  const history = el("pre", { className: "history", text: "loading the history entry…" });
  const box = el("div", { className: "details" },
    el("p", { className: "why" }, el("strong", { text: "Why " + p.backend + ": " }), el("span", { text: p.route_reason })),
    guardrailList(p),
    el("p", {}, el("strong", { text: "History entry " }), el("span", { text: "(GET /history/{id} through the gateway)" })),
    history);
  fetch("/history/" + encodeURIComponent(p.prompt_id), { headers: authHeaders(), cache: "no-store" })
    .then(async (response) => {
      const body = await response.json().catch(() => null);
      if (!response.ok) {
        history.textContent = "refused: " + response.status;
        return;
      }
      const entry = body && body[p.prompt_id];
      history.textContent = entry ? JSON.stringify(entry, null, 2) : "no history entry yet (queued or running)";
    })
    .catch((e) => { history.textContent = "could not load: " + e.message; });
  return box;
}

let promptsLoading = false;

async function loadPrompts() {
  if (promptsLoading) return;
  promptsLoading = true;
  const params = new URLSearchParams();
  for (const [name, id] of [["backend", "filter-backend"], ["user", "filter-user"], ["state", "filter-state"]]) {
    const value = $(id).value.trim();
    if (value) params.set(name, value);
  }
  try {
    const body = await api("/gateway/console/prompts?" + params.toString());
    const rows = await Promise.all(body.prompts.map(promptRow));
    const focused = document.activeElement && document.activeElement.closest(".prompt");
    const focusedId = focused ? focused.dataset.promptId : null;
    $("prompts").replaceChildren(...rows);
    const again = rows.find((row) => row.dataset.promptId === focusedId);
    if (again) again.querySelector("button").focus(); // a refresh keeps the keyboard where it was
    showMessage("prompts-message", rows.length ? rows.length + " prompts, newest first" : "no prompts match", false);
  } catch (error) {
    $("prompts").replaceChildren();
    showMessage("prompts-message", refusalText(error), true);
  } finally {
    promptsLoading = false;
  }
}

$("prompt-filters").addEventListener("submit", (event) => {
  event.preventDefault();
  loadPrompts();
});
$("prompts-refresh").addEventListener("click", loadPrompts);
for (const id of ["filter-backend", "filter-state"]) $(id).addEventListener("change", loadPrompts);

// --- users ----------------------------------------------------------------------------------------------------------

async function setPreference(user, backend) {
  const path = "/gateway/preferences/" + encodeURIComponent(user);
  if (backend === null) {
    await api(path, { method: "DELETE" });
  } else {
    await api(path, { method: "PUT", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ backend }) });
  }
}

function userRow(entry, index) {
  const group = el("fieldset", {}, el("legend", { text: "Backend for " + entry.user }));
  const choices = [...backendNames.map((n) => [n, n]), [null, "default (" + defaultBackend + ")"]];
  choices.forEach(([value, label], i) => {
    const id = "user-" + index + "-" + i;
    const input = el("input", { type: "radio", name: "user-" + index, id, value: value === null ? "" : value,
      "data-backend": value === null ? "" : value });
    input.checked = value === entry.backend;
    input.addEventListener("change", async () => {
      try {
        await setPreference(entry.user, value);
        showMessage("users-message", "Saved: " + entry.user + " → " + (value === null ? "default" : value), false);
      } catch (error) {
        showMessage("users-message", refusalText(error), true);
      }
      loadUsers(true);
    });
    group.append(el("label", { for: id }, input, label));
  });
  return el("li", { className: "user", "data-user": entry.user, "data-backend": entry.backend },
    el("span", { className: "name", text: entry.user }), group);
}

async function loadUsers(keepMessage) {
  try {
    const body = await api("/gateway/console/users");
    if (!backendNames.length) {
      backendNames = body.backends;
      defaultBackend = body.default;
      fillBackendSelects();
    }
    $("users").replaceChildren(...body.users.map(userRow));
    const note = body.truncated ? " (the first " + body.users.length + ")" : "";
    if (keepMessage) return; // the outcome of the change just made stays in view
    showMessage("users-message", body.users.length ? body.users.length + " users with a stored preference" + note : "no stored preferences", false);
  } catch (error) {
    $("users").replaceChildren();
    showMessage("users-message", refusalText(error), true);
  }
}

$("user-add").addEventListener("submit", async (event) => {
  event.preventDefault();
  const user = $("user-add-name").value.trim();
  if (!user) return;
  try {
    await setPreference(user, $("user-add-backend").value);
    $("user-add-name").value = "";
    showMessage("users-message", "Saved: " + user + " → " + $("user-add-backend").value, false);
  } catch (error) {
    showMessage("users-message", refusalText(error), true);
  }
  loadUsers(true);
});

// --- start ------------------------------------------------------------------------------------------------------

showTokenState();
followBackends();
loadUsers();
loadPrompts();
setInterval(() => {
  if (!document.hidden) loadPrompts();
}, PROMPTS_REFRESH_MS);
