// duorank explorer: plain DOM, no framework. Every string from the server or the user is
// rendered with textContent (never innerHTML), so titles and ids cannot inject markup.
"use strict";

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "duorank-token";
const RATINGS = [0.5, 1, 1.5, 2, 2.5, 3, 3.5, 4, 4.5, 5];
const SOURCE_NAMES = {
  tower: "your taste profile",
  covisit: "titles watched together with yours",
  als: "people with tastes like yours",
  popular: "what is popular now",
  popularity: "what is popular overall",
};

const state = {
  userId: null, // the dataset user whose history we start from (null: empty history)
  history: [], // events sent with /recommend when the history was edited, oldest first
  edited: false,
  knownUsers: [], // a page of user ids, for the examples and the random pick
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

function setTokenStatus(text, cls) {
  const status = $("token-status");
  status.textContent = text;
  status.className = "status " + (cls || "");
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
    setTokenStatus("not connected", "bad");
    throw new Error("The server refused the API token: enter the right one above.");
  }
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    const detail = data && data.detail;
    const text = typeof detail === "string" ? detail : JSON.stringify(detail);
    const error = new Error(`${path} answered ${response.status}: ${text}`);
    error.status = response.status;
    throw error;
  }
  return data;
}

// One call at a time: every button waits, and the page says it is working.
let running = 0;
function setBusy(busy) {
  running += busy ? 1 : -1;
  const on = running > 0;
  document.body.setAttribute("aria-busy", String(on));
  for (const button of document.querySelectorAll("main button, #token-form button")) {
    button.disabled = on;
  }
}

async function guarded(fn) {
  clearError();
  setBusy(true);
  try {
    await fn();
  } catch (err) {
    showError(err.message);
  } finally {
    setBusy(false);
  }
}

function fmt(value, digits = 3) {
  return value === null || value === undefined ? "-" : Number(value).toFixed(digits);
}

function titleList(names) {
  return names.length > 1
    ? names.slice(0, -1).join(", ") + " and " + names[names.length - 1]
    : names[0];
}

// ---------------------------------------------------------------- token and start
async function checkToken() {
  // Any data route tells whether the token works; this one also gives example users.
  try {
    const data = await api("/users?q=&limit=50");
    state.knownUsers = data.users.map((u) => u.user_id);
    setTokenStatus("connected", "good");
    renderExamples();
    return true;
  } catch (err) {
    if (!$("token-status").textContent) setTokenStatus("not connected", "bad");
    return false;
  }
}

function renderExamples() {
  const box = $("examples");
  box.replaceChildren();
  for (const userId of state.knownUsers.slice(0, 5)) {
    const button = el("button", `user ${userId}`);
    button.type = "button";
    button.addEventListener("click", () => guarded(() => pickUser(userId)));
    box.append(button);
  }
}

function randomUser() {
  if (!state.knownUsers.length) throw new Error("Connect with the API token first.");
  const userId = state.knownUsers[Math.floor(Math.random() * state.knownUsers.length)];
  return pickUser(userId);
}

function updateLink() {
  const params = new URLSearchParams();
  if (state.userId !== null) params.set("user", state.userId);
  params.set("k", String(Number($("k").value) || 10));
  history.replaceState(null, "", "?" + params.toString());
}

// ---------------------------------------------------------------- users and history
async function findUsers(query) {
  const data = await api("/users?q=" + encodeURIComponent(query) + "&limit=10");
  if (query && data.users.some((u) => u.user_id === query)) {
    await pickUser(query); // an exact id loads at once; anything else lists the ids it starts
    return;
  }
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
  $("start").hidden = true;
  renderHistory();
  updateLink();
  await recommend();
}

function startEmpty() {
  state.userId = null;
  state.history = [];
  state.edited = true;
  $("start").hidden = true;
  renderHistory();
  updateLink();
  for (const id of ["served", "first"]) $(id).replaceChildren();
  for (const id of ["served-by", "summary", "depth-note"]) $(id).textContent = "";
  $("meta").textContent = "Add titles to the history to get recommendations.";
}

function renderHistory() {
  $("history-who").textContent = state.userId === null ? "(new user)" : `(user ${state.userId})`;
  const list = $("history");
  list.replaceChildren();
  const newest = state.history.slice().reverse();
  for (const event of newest) {
    const li = el("li", null, "chip");
    li.append(el("span", event.title, "title"));
    const select = el("select");
    select.setAttribute("aria-label", `rating of ${event.title}`);
    select.append(el("option", "no rating"));
    select.options[0].value = "";
    for (const r of RATINGS) {
      const option = el("option", `${r} ★`);
      option.value = String(r);
      if (event.rating === r) option.selected = true;
      select.append(option);
    }
    select.addEventListener("change", () => {
      event.rating = select.value === "" ? null : Number(select.value);
      state.edited = true;
      guarded(recommend);
    });
    li.append(select);
    const remove = el("button", "×", "remove");
    remove.type = "button";
    remove.setAttribute("aria-label", `remove ${event.title}`);
    remove.addEventListener("click", () => {
      state.history.splice(state.history.indexOf(event), 1);
      state.edited = true;
      renderHistory();
      guarded(recommend);
    });
    li.append(remove);
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
  $("start").hidden = true;
  renderHistory();
  await recommend();
}

// ---------------------------------------------------------------- recommendations
function requestBody(secondStage) {
  const k = Number($("k").value) || 10;
  const body = {
    k,
    candidates: Math.max(Number($("depth").value) || 100, k),
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
  $("meta").textContent = "Loading…";
  const compare = $("compare").checked;
  $("first-column").hidden = !compare;
  $("lists").classList.toggle("single", !compare);
  const served = await api("/recommend", requestBody(true));
  const timings = Object.entries(served.timings_ms)
    .map(([stage, ms]) => `${stage} ${ms.toFixed(1)} ms`)
    .join(", ");
  let meta = `index ${served.index_version}; ${timings}`;
  if (served.fallback) meta += `; fallback: ${served.fallback}`;
  for (const warning of served.warnings || []) meta += `; ${warning}`;
  $("meta").textContent = meta;
  $("served-by").textContent = `Served by the ${served.served_by}: ${served.served_because}.`;
  let first = null;
  if (compare) first = await api("/recommend", requestBody(false));
  renderComparison(served.items, first ? first.items : null);
  updateLink();
}

// How each served item compares with the first stage's list, and the other way round.
function renderComparison(servedItems, firstItems) {
  const firstPos = new Map((firstItems || []).map((it, n) => [it.item_id, n + 1]));
  const servedPos = new Map(servedItems.map((it, n) => [it.item_id, n + 1]));
  const marks = servedItems.map((it, n) => {
    if (!firstItems) return null;
    const was = firstPos.get(it.item_id);
    if (was === undefined) return { text: "new", cls: "new" };
    const delta = was - (n + 1);
    if (delta > 0) return { text: `moved up ${delta}`, cls: "up" };
    if (delta < 0) return { text: `moved down ${-delta}`, cls: "down" };
    return { text: "same", cls: "same" };
  });
  renderList($("served"), servedItems, marks);
  if (!firstItems) {
    $("summary").textContent = "";
    $("depth-note").textContent = "";
    return;
  }
  const firstMarks = firstItems.map((it) =>
    servedPos.has(it.item_id) ? null : { text: "dropped", cls: "dropped" },
  );
  renderList($("first"), firstItems, firstMarks);
  const kept = servedItems.filter((it) => firstPos.has(it.item_id));
  const shift = kept.length
    ? kept.reduce((s, it) => s + Math.abs(firstPos.get(it.item_id) - servedPos.get(it.item_id)), 0) /
      kept.length
    : 0;
  $("summary").textContent =
    `Overlap with the first stage: ${kept.length} of ${servedItems.length}; ` +
    `${servedItems.length - kept.length} new; mean shift of the kept items ` +
    `${shift.toFixed(1)} places.`;
  const depth = Math.max(Number($("depth").value) || 100, Number($("k").value) || 10);
  const deep = servedItems.filter(
    (it) => it.explanation && it.explanation.first_stage_rank > depth,
  ).length;
  $("depth-note").textContent = deep
    ? `${deep} served item(s) have a first-stage rank beyond the candidate depth (${depth}): ` +
      "other sources (titles watched together, people like you, what is popular) proposed them."
    : "";
}

function strengthWord(strength) {
  if (strength >= 0.5) return "strong";
  if (strength >= 0.25) return "moderate";
  return "slight";
}

function renderList(list, items, marks) {
  list.replaceChildren();
  items.forEach((item, n) => {
    const li = el("li");
    li.dataset.itemId = item.item_id;
    const head = el("div");
    head.append(el("span", item.title, "title"));
    const mark = marks && marks[n];
    if (mark) {
      head.append(el("span", mark.text, "mark " + mark.cls));
      li.dataset.mark = mark.cls;
      if (mark.cls === "dropped") li.classList.add("dropped");
    }
    li.append(head);
    const tags = el("div");
    for (const genre of item.genres || []) tags.append(el("span", genre, "tag"));
    li.append(tags);
    // The ranking score sorts the list; where the first stage sorted it, the two are one.
    const scores =
      item.ranking_score === item.first_stage_score
        ? [`first-stage score ${fmt(item.first_stage_score)} (sorts this list)`]
        : [`ranking score ${fmt(item.ranking_score)}`, `first stage ${fmt(item.first_stage_score)}`];
    if (item.p_like !== null) scores.push(`P(like) ${fmt(item.p_like, 2)}`);
    li.append(el("div", scores.join(" · "), "scores"));
    const why = item.explanation;
    if (why) renderWhy(li, why);
    list.append(li);
  });
  if (!items.length) list.append(el("li", "no recommendations", "muted"));
}

function renderWhy(li, why) {
  if (why.movement) li.append(el("div", why.movement, "why movement"));
  if (why.reasons && why.reasons.length) {
    const box = el("ul", null, "reasons");
    for (const r of why.reasons) {
      const arrow = r.direction === "up" ? "↑" : "↓";
      const row = el("li", `${arrow} ${r.text}`, "reason " + r.direction);
      row.append(el("span", ` (${strengthWord(r.strength)})`, "strength"));
      box.append(row);
    }
    li.append(box);
  }
  if (why.because.length) {
    li.append(el("div", "because you watched " + titleList(why.because.map((b) => b.title)), "why because"));
  } else if (why.sources.length && why.sources[0] !== "popularity") {
    li.append(el("div", "no single title of yours stands out for this one", "why because"));
  }
  if (why.sources.length) {
    const names = why.sources.map((s) => SOURCE_NAMES[s] || s);
    li.append(el("div", "proposed by " + titleList(names), "why sources"));
  }
}

// ---------------------------------------------------------------- the evaluation report
// [field, heading, definition] of the report's tables.
const METHOD_COLUMNS = [
  ["method", "method", "The method evaluated (baselines first, then the first and second stages)."],
  ["ndcg@10", "NDCG@10", "Held-out item's discounted gain in the top 10, full catalog ranked."],
  ["seeds_mean", "seeds' mean", "NDCG@10 averaged over the seeds, where a method has several."],
  ["recall@10", "R@10", "Share of users whose held-out item is in the top 10."],
  ["recall@100", "R@100", "Share of users whose held-out item is in the top 100."],
  ["mrr@10", "MRR@10", "Mean reciprocal rank of the held-out item, 0 beyond 10."],
  ["auc", "AUC", "P(like) separating liked from disliked held-out items."],
  ["coverage@10", "coverage", "Share of the catalog in anyone's top 10."],
  ["max_item_share@10", "top item's users", "Share of users shown the most shown item."],
  ["cold_max_item_share@10", "top cold item's users", "The same for items with few events."],
  ["cold_recall@100", "cold R@100", "R@100 on held-out items with fewer than 5 events."],
];
const ABLATION_COLUMNS = [
  ["variant", "variant"], ["ndcg@10", "NDCG@10"], ["vs_first_stage", "/ first stage"],
  ["minus_first_stage", "difference"], ["minus_first_stage_se", "one s.e."], ["rounds", "trees"],
];
const LOWER_IS_BETTER = new Set(["max_item_share@10", "cold_max_item_share@10"]);
const PLOT_CAPTIONS = {
  recall: "Recall@K on the test split for every method: higher is better at every K.",
  calibration: "Predicted P(like) against the observed like rate: on the diagonal is calibrated.",
};

async function loadReport() {
  const data = await api("/report");
  renderRunCard(data);
  fillTable($("report-table"), METHOD_COLUMNS, data.methods, {
    highlightRow: (row) => row.method === data.server.serves,
    best: true,
  });
  const defs = $("definitions");
  defs.replaceChildren();
  for (const [, heading, definition] of METHOD_COLUMNS) {
    defs.append(el("dt", heading));
    defs.append(el("dd", definition));
  }
  fillTable($("ablation-table"), ABLATION_COLUMNS, data.ablation, {});
  const plots = $("plots");
  plots.replaceChildren();
  for (const name of data.plots) {
    const figure = el("figure");
    const img = el("img");
    img.alt = `${name} plot of the offline evaluation`;
    figure.append(img);
    figure.append(el("figcaption", PLOT_CAPTIONS[name] || name));
    plots.append(figure);
    const headers = {};
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = "Bearer " + token;
    const response = await fetch("/report/plots/" + name, { headers });
    if (response.ok) img.src = URL.createObjectURL(await response.blob());
  }
}

function renderRunCard(data) {
  const card = $("run-card");
  card.replaceChildren();
  const dataset = data.dataset && data.dataset.path ? data.dataset.path.split("/").pop() : "-";
  const rows = [
    ["report", data.file],
    ["dataset", dataset],
    ["date", data.date || "not recorded"],
    ["commit", data.commit ? data.commit.slice(0, 10) : "not recorded"],
    ["machine", data.machine ? `${data.machine}, ${data.cores || "?"} cores` : "not recorded"],
    ["best baseline", data.best_baseline],
  ];
  const list = el("dl");
  for (const [key, value] of rows) {
    list.append(el("dt", key));
    list.append(el("dd", value));
  }
  card.append(list);
  const server = data.server;
  const same = server.same_dataset
    ? `the same dataset as this server (${server.dataset})`
    : `another dataset than this server's (${server.dataset || "unknown"})`;
  card.append(
    el(
      "p",
      `This report's models were trained by \`duorank eval\` on ${same}; it does not describe ` +
        `the model files this server loaded (index ${server.index_version}). The highlighted ` +
        `row is what this server serves (${server.serves}); bold is each column's best.`,
      "muted",
    ),
  );
}

function fillTable(table, columns, rows, options) {
  table.replaceChildren();
  const head = el("tr");
  for (const [, heading, definition] of columns) {
    const th = el("th", heading);
    if (definition) th.title = definition;
    head.append(th);
  }
  table.append(head);
  const best = {};
  if (options.best) {
    for (const [field] of columns.slice(1)) {
      const values = rows.map((r) => r[field]).filter((v) => typeof v === "number");
      if (values.length) best[field] = LOWER_IS_BETTER.has(field) ? Math.min(...values) : Math.max(...values);
    }
  }
  for (const row of rows) {
    const tr = el("tr");
    if (options.highlightRow && options.highlightRow(row)) tr.className = "served-row";
    for (const [field] of columns) {
      const v = row[field];
      let text = v === null || v === undefined ? "-" : String(v);
      if (typeof v === "number") text = Number.isInteger(v) ? String(v) : fmt(v, 4);
      const td = el("td", text);
      if (field in best && v === best[field]) td.className = "best";
      tr.append(td);
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
  setTokenStatus("checking…", "");
  guarded(async () => {
    if (!(await checkToken())) {
      throw new Error("The server refused the API token: enter the right one above.");
    }
  });
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
$("random-user").addEventListener("click", () => guarded(randomUser));
$("tab-user").addEventListener("click", () => showView("user"));
$("tab-report").addEventListener("click", () => showView("report"));
renderHistory();

// A deep link (/?user=42&k=10) opens that user; otherwise the start panel waits.
(async () => {
  const params = new URLSearchParams(location.search);
  if (params.get("k")) $("k").value = params.get("k");
  setBusy(true);
  const connected = await checkToken().finally(() => setBusy(false));
  if (params.get("user") && connected) await guarded(() => pickUser(params.get("user")));
})();
