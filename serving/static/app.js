// duorank explorer: plain DOM, no framework. Every string from the server or the user is
// rendered with textContent (never innerHTML), so titles and ids cannot inject markup.
"use strict";

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "duorank-token";

const state = {
  userId: null, // the dataset user whose history we start from (null: empty history)
  history: [], // events sent with /recommend when the history was edited, oldest first
  edited: false,
};

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

async function api(path, body) {
  const headers = { Accept: "application/json" };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = "Bearer " + token;
  const init = { headers };
  if (body !== undefined) {
    init.method = "POST";
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    throw new Error("the server did not answer (" + err.message + ")");
  }
  if (response.status === 401) {
    throw new Error("The server refused the API token: enter the right one above.");
  }
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    const detail = data && data.detail;
    const text = typeof detail === "string" ? detail : JSON.stringify(detail);
    throw new Error(`${path} answered ${response.status}: ${text}`);
  }
  return data;
}

async function guarded(fn) {
  clearError();
  try {
    await fn();
  } catch (err) {
    showError(err.message);
  }
}

function fmt(value, digits = 3) {
  return value === null || value === undefined ? "-" : Number(value).toFixed(digits);
}

// ---------------------------------------------------------------- users and history
async function findUsers(query) {
  const data = await api("/users?q=" + encodeURIComponent(query) + "&limit=10");
  const list = $("user-results");
  list.replaceChildren();
  if (!data.users.length) list.append(el("li", "No user id starts with that.", "muted"));
  for (const user of data.users) {
    const button = el("button", `user ${user.user_id} (${user.events} events)`);
    button.type = "button";
    button.addEventListener("click", () => guarded(() => pickUser(user.user_id)));
    const li = el("li");
    li.append(button);
    list.append(li);
  }
}

async function pickUser(userId) {
  const data = await api("/users/" + encodeURIComponent(userId) + "?limit=1000");
  state.userId = userId;
  state.history = data.history.slice().reverse(); // oldest first
  state.edited = false;
  $("user-results").replaceChildren();
  renderHistory();
  await recommend();
}

function startEmpty() {
  state.userId = null;
  state.history = [];
  state.edited = true;
  renderHistory();
  $("served").replaceChildren();
  $("first").replaceChildren();
  $("meta").textContent = "Add titles to the history to get recommendations.";
}

function renderHistory() {
  $("history-who").textContent = state.userId === null ? "(new user)" : `(user ${state.userId})`;
  const list = $("history");
  list.replaceChildren();
  const newest = state.history.slice().reverse();
  for (const event of newest) {
    const li = el("li");
    li.append(el("span", event.title, "title"));
    const rating = event.rating === null || event.rating === undefined ? "" : ` rated ${event.rating}`;
    li.append(el("span", rating, "muted"));
    list.append(li);
  }
  if (!newest.length) list.append(el("li", "nothing yet", "muted"));
}

async function findItems(query) {
  const data = await api("/items?q=" + encodeURIComponent(query) + "&limit=10");
  const list = $("item-results");
  list.replaceChildren();
  if (!data.items.length) list.append(el("li", "No title contains that.", "muted"));
  for (const item of data.items) {
    const button = el("button", "+ " + item.title);
    button.type = "button";
    button.addEventListener("click", () => guarded(() => addItem(item)));
    const li = el("li");
    li.append(button);
    list.append(li);
  }
}

async function addItem(item) {
  const last = state.history.reduce((t, e) => Math.max(t, e.timestamp || 0), 0);
  state.history.push({ ...item, timestamp: last + 60, rating: 5.0 });
  state.edited = true;
  $("item-results").replaceChildren();
  renderHistory();
  await recommend();
}

// ---------------------------------------------------------------- recommendations
function requestBody(secondStage) {
  const body = {
    k: Number($("k").value) || 10,
    candidates: Math.max(Number($("depth").value) || 100, Number($("k").value) || 10),
    explain: true,
    second_stage: secondStage,
  };
  if (state.userId !== null) body.user_id = state.userId;
  if (state.edited || state.userId === null) {
    body.history = state.history.map((e) => ({
      item_id: e.item_id,
      timestamp: e.timestamp,
      rating: e.rating === undefined ? null : e.rating,
    }));
  }
  return body;
}

async function recommend() {
  if (state.userId === null && !state.history.length) return;
  const compare = $("compare").checked;
  $("first-column").hidden = !compare;
  const served = await api("/recommend", requestBody(true));
  renderList($("served"), served.items);
  const timings = Object.entries(served.timings_ms)
    .map(([stage, ms]) => `${stage} ${ms.toFixed(1)} ms`)
    .join(", ");
  let meta = `index ${served.index_version}; ${timings}`;
  if (served.fallback) meta += `; fallback: ${served.fallback}`;
  $("meta").textContent = meta;
  if (compare) {
    const first = await api("/recommend", requestBody(false));
    renderList($("first"), first.items);
  }
}

function renderList(list, items) {
  list.replaceChildren();
  for (const item of items) {
    const li = el("li");
    li.dataset.itemId = item.item_id;
    li.append(el("div", item.title, "title"));
    const tags = el("div");
    for (const genre of item.genres || []) tags.append(el("span", genre, "tag"));
    li.append(tags);
    const scores = [`first stage ${fmt(item.retrieval_score)}`];
    if (item.rank_score !== null) scores.push(`ranking ${fmt(item.rank_score)}`);
    if (item.rerank_probability !== null) scores.push(`P(like) ${fmt(item.rerank_probability, 2)}`);
    li.append(el("div", scores.join(" · "), "scores"));
    const why = item.explanation;
    if (why) {
      const parts = [];
      if (why.sources.length) parts.push("from " + why.sources.join(", "));
      if (why.first_stage_rank) parts.push(`first-stage rank ${why.first_stage_rank}`);
      li.append(el("div", parts.join(" · "), "why"));
      if (why.because.length) {
        const names = why.because.map((b) => b.title);
        const list = names.length > 1
          ? names.slice(0, -1).join(", ") + " and " + names[names.length - 1]
          : names[0];
        li.append(el("div", "because you watched " + list, "why because"));
      }
      if (why.features.length) {
        const moved = why.features.map(
          (f) => `${f.feature} ${f.effect >= 0 ? "+" : ""}${f.effect.toFixed(2)}`,
        );
        li.append(el("div", "moved by " + moved.join(", "), "why"));
      }
    }
    list.append(li);
  }
  if (!items.length) list.append(el("li", "no recommendations", "muted"));
}

// ---------------------------------------------------------------- the evaluation report
async function loadReport() {
  const data = await api("/report");
  $("report-meta").textContent =
    `${data.file}: ${data.dataset && data.dataset.path ? data.dataset.path : ""} ` +
    `(${data.date || "no date"}, ${data.machine || "machine not recorded"}); ` +
    `best baseline: ${data.best_baseline}`;
  fillTable($("report-table"), METHOD_COLUMNS, data.methods);
  fillTable($("ablation-table"), ABLATION_COLUMNS, data.ablation);
  const plots = $("plots");
  plots.replaceChildren();
  for (const name of data.plots) {
    const img = el("img");
    img.alt = `${name} plot of the offline evaluation`;
    plots.append(img);
    const headers = {};
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = "Bearer " + token;
    const response = await fetch("/report/plots/" + name, { headers });
    if (response.ok) img.src = URL.createObjectURL(await response.blob());
  }
}

// [field, heading] pairs of the report's tables.
const METHOD_COLUMNS = [
  ["method", "method"], ["ndcg@10", "NDCG@10"], ["seeds_mean", "seeds' mean"],
  ["recall@10", "R@10"], ["recall@100", "R@100"], ["mrr@10", "MRR@10"], ["auc", "AUC"],
  ["coverage@10", "coverage"], ["max_item_share@10", "top item's users"],
  ["cold_max_item_share@10", "top cold item's users"], ["cold_recall@100", "cold R@100"],
];
const ABLATION_COLUMNS = [
  ["variant", "variant"], ["ndcg@10", "NDCG@10"], ["vs_first_stage", "/ first stage"],
  ["minus_first_stage", "difference"], ["minus_first_stage_se", "one s.e."], ["rounds", "trees"],
];

function fillTable(table, columns, rows) {
  table.replaceChildren();
  const head = el("tr");
  for (const [, heading] of columns) head.append(el("th", heading));
  table.append(head);
  for (const row of rows) {
    const tr = el("tr");
    for (const [field] of columns) {
      const v = row[field];
      let text = v === null || v === undefined ? "-" : String(v);
      if (typeof v === "number") text = Number.isInteger(v) ? String(v) : fmt(v, 4);
      tr.append(el("td", text));
    }
    table.append(tr);
  }
}

function showView(name) {
  const report = name === "report";
  $("user-view").hidden = report;
  $("report-view").hidden = !report;
  $("tab-user").setAttribute("aria-pressed", String(!report));
  $("tab-report").setAttribute("aria-pressed", String(report));
  if (report) guarded(loadReport);
}

// ---------------------------------------------------------------- wiring
$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("token").value);
  $("token").value = "";
  clearError();
});
$("user-form").addEventListener("submit", (event) => {
  event.preventDefault();
  guarded(() => findUsers($("user-query").value.trim()));
});
$("item-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const query = $("item-query").value.trim();
  if (query) guarded(() => findItems(query));
});
$("settings").addEventListener("submit", (event) => {
  event.preventDefault();
  guarded(recommend);
});
$("compare").addEventListener("change", () => guarded(recommend));
$("empty-history").addEventListener("click", startEmpty);
$("tab-user").addEventListener("click", () => showView("user"));
$("tab-report").addEventListener("click", () => showView("report"));
renderHistory();
