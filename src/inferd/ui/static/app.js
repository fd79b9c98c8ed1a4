// inferd's web UI: one module, three pages (catalogue, running models, playground), each a
// function that renders into <main> from the same HTTP API the CLI and SDKs use.

const TYPES = ["LLM", "embedding", "rerank", "audio", "image"];
const page = document.getElementById("page");

// ---- small helpers --------------------------------------------------------------------

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "text") el.textContent = value;
    else el.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

// With `inferd serve --auth`, every call carries the API key the user signed in with.
const KEY = "inferd-api-key";

class SignInNeeded extends Error {}

function authorized(options = {}) {
  const key = localStorage.getItem(KEY);
  return {
    ...options,
    headers: {
      "Content-Type": "application/json",
      ...(key ? { Authorization: `Bearer ${key}` } : {}),
      ...(options.headers || {}),
    },
  };
}

function thead(columns) {
  return h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col" }, c))));
}

async function api(path, options = {}) {
  const response = await fetch(path, authorized(options));
  const text = await response.text();
  const body = text ? JSON.parse(text) : null;
  if (response.status === 401) throw new SignInNeeded(body?.error?.message || "sign in");
  if (!response.ok) {
    const message = body?.error?.message || body?.detail || response.statusText;
    throw new Error(message);
  }
  return body;
}

function signInPage(reason) {
  const key = h("input", { id: "api-key", type: "password", autocomplete: "current-password", "aria-label": "API key" });
  const form = h(
    "form",
    { class: "stack signin" },
    h("h1", {}, "Sign in"),
    h("p", { class: "muted" }, "This server needs an API key (`inferd keys create` makes one on its machine)."),
    localStorage.getItem(KEY) ? h("p", { class: "error", role: "alert" }, reason) : null,
    h("label", {}, h("span", {}, "API key"), key),
    h("button", { type: "submit" }, "Sign in"),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    localStorage.setItem(KEY, key.value.trim());
    route();
  });
  page.replaceChildren(form);
  key.focus();
}

// Server-sent events over fetch, so they carry the key too (EventSource cannot send headers);
// `onEvent` gets each event's JSON and returns false to stop reading.
async function events(path, onEvent, options = {}) {
  const response = await fetch(path, authorized(options));
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    const message = body?.error?.message || `${path}: ${response.statusText || response.status}`;
    throw response.status === 401 ? new SignInNeeded(message) : new Error(message);
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      if (event.startsWith("data: ") && event !== "data: [DONE]") {
        if (onEvent(JSON.parse(event.slice(6))) === false) {
          reader.cancel();
          return;
        }
      }
    }
  }
}

function toast(message, kind = "info") {
  const box = document.getElementById("toast");
  box.textContent = message;
  box.className = `show ${kind}`;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => (box.className = ""), 6000);
}

function bytes(n) {
  if (!n) return "0 B";
  const units = ["B", "KB", "MB", "GB", "TB"];
  const i = Math.min(Math.floor(Math.log(n) / Math.log(1024)), units.length - 1);
  return `${(n / 1024 ** i).toFixed(i ? 1 : 0)} ${units[i]}`;
}

function size(text) {
  return String(text).replace("_", ".");
}

// ---- catalogue ------------------------------------------------------------------------

// Size filter buckets, in billions of parameters.
const SIZES = { "under 1B": [0, 1], "1B-10B": [1, 10], "10B-100B": [10, 100], "100B and up": [100, 1e9] };

const catalogState = {
  type: "LLM",
  query: "",
  ability: "",
  format: "",
  lang: "",
  size: "",
  cachedOnly: false,
  families: {},
  cached: new Set(),
};

async function catalogPage() {
  const search = h("input", {
    type: "search",
    id: "catalog-search",
    placeholder: "Search models",
    "aria-label": "Search models",
    value: catalogState.query,
    oninput: (e) => {
      catalogState.query = e.target.value.toLowerCase();
      renderCards();
    },
  });
  const typeSelect = h(
    "select",
    {
      id: "catalog-type",
      "aria-label": "Model type",
      onchange: async (e) => {
        catalogState.type = e.target.value;
        await loadFamilies();
        renderCards();
      },
    },
    TYPES.map((t) => h("option", { value: t, selected: t === catalogState.type }, t)),
  );
  const filter = (label, key, values) =>
    h(
      "select",
      {
        "aria-label": label,
        onchange: (e) => {
          catalogState[key] = e.target.value;
          renderCards();
        },
      },
      h("option", { value: "" }, `Any ${label.toLowerCase()}`),
      values.map((v) => h("option", { value: v, selected: catalogState[key] === v }, v)),
    );
  const abilities = ["chat", "generate", "tools", "vision", "reasoning", "embed", "rerank"];
  const formats = ["ggufv2", "pytorch", "awq", "gptq", "fp8", "ct2", "onnx"];
  const cachedOnly = h(
    "label",
    { class: "inline" },
    h("input", {
      type: "checkbox",
      checked: catalogState.cachedOnly,
      onchange: (e) => {
        catalogState.cachedOnly = e.target.checked;
        renderCards();
      },
    }),
    "Cached only",
  );
  const cards = h("div", { class: "cards", id: "cards" });
  page.replaceChildren(
    h("h1", {}, "Catalogue"),
    h(
      "div",
      { class: "toolbar" },
      search,
      typeSelect,
      filter("Ability", "ability", abilities),
      filter("Format", "format", formats),
      filter("Language", "lang", ["en", "zh", "multilingual"]),
      filter("Size", "size", Object.keys(SIZES)),
      cachedOnly,
    ),
    cards,
  );
  await loadFamilies();
  renderCards();
}

async function loadFamilies() {
  const type = catalogState.type;
  if (!catalogState.families[type]) {
    catalogState.families[type] = await api(`/v1/model_registrations/${type}?detailed=true`);
  }
  try {
    const cached = await api("/v1/cache/models");
    catalogState.cached = new Set(cached.list.map((e) => e.model_name));
  } catch {
    catalogState.cached = new Set();
  }
}

function renderCards() {
  const cards = document.getElementById("cards");
  if (!cards) return;
  const query = catalogState.query;
  const { ability, format, lang, size: bucket, cachedOnly } = catalogState;
  const sized = (f) =>
    (f.model_specs || []).some((spec) => {
      const billions = Number(String(spec.model_size_in_billions).replace("_", "."));
      const [low, high] = SIZES[bucket];
      return billions >= low && billions < high;
    });
  const speaks = (f) => {
    const langs = f.model_lang || [];
    return lang === "multilingual" ? langs.length > 2 : langs.includes(lang);
  };
  const families = (catalogState.families[catalogState.type] || []).filter(
    (f) =>
      (!query ||
        f.model_name.toLowerCase().includes(query) ||
        (f.model_description || "").toLowerCase().includes(query)) &&
      (!ability || (f.model_ability || []).includes(ability)) &&
      (!format || (f.model_specs || []).some((spec) => spec.model_format === format)) &&
      (!lang || speaks(f)) &&
      (!bucket || sized(f)) &&
      (!cachedOnly || catalogState.cached.has(f.model_name)),
  );
  cards.replaceChildren(
    ...families.slice(0, 200).map((f) => {
      const formats = [...new Set((f.model_specs || []).map((s) => s.model_format))];
      return h(
        "article",
        { class: "card", "data-model": f.model_name },
        h("h2", {}, f.model_name),
        h("p", { class: "muted" }, (f.model_description || "").slice(0, 140)),
        h(
          "p",
          { class: "tags" },
          (f.model_ability || []).map((a) => h("span", { class: "tag" }, a)),
          formats.map((x) => h("span", { class: "tag format" }, x)),
          catalogState.cached.has(f.model_name) ? h("span", { class: "tag cached" }, "cached") : null,
        ),
        h(
          "button",
          { type: "button", onclick: () => launchDialog(f) },
          `Launch ${f.model_name}`,
        ),
      );
    }),
  );
  if (!families.length) cards.append(h("p", { class: "muted" }, "No model matches."));
}

async function launchDialog(family) {
  let engines = {};
  try {
    engines = await api(`/v1/engines/${catalogState.type}/${encodeURIComponent(family.model_name)}`);
  } catch (error) {
    toast(error.message, "error");
  }
  // Only what runs on this machine: each engine's specs, where the engine is usable here.
  const choices = [];
  for (const [engine, rows] of Object.entries(engines)) {
    for (const row of rows) {
      for (const q of row.quantizations) {
        choices.push({ engine, ...row, quantization: q });
      }
    }
  }
  const usable = choices.filter((c) => c.usable !== false);
  const field = (label, control) => h("label", {}, h("span", {}, label), control);
  // "Automatic" leaves the choice to the server, which prefers what runs best here (GGUF on a
  // machine without a GPU).
  const choice = h(
    "select",
    { name: "choice", id: "launch-choice" },
    h("option", { value: "auto" }, "Automatic (best for this machine)"),
    usable.map((c, i) =>
      h(
        "option",
        { value: String(i) },
        `${c.engine} · ${c.model_format} · ${size(c.model_size_in_billions)}B · ${c.quantization}`,
      ),
    ),
  );
  const uid = h("input", { name: "model_uid", id: "launch-uid", placeholder: family.model_name });
  const replicas = h("input", { name: "replica", type: "number", min: "1", value: "1" });
  const gpus = h(
    "select",
    { name: "n_gpu" },
    h("option", { value: "auto" }, "auto"),
    h("option", { value: "0" }, "CPU only"),
    [1, 2, 4, 8].map((n) => h("option", { value: String(n) }, `${n} GPU${n > 1 ? "s" : ""}`)),
  );
  const idle = h("input", { name: "idle_timeout", type: "number", min: "1", placeholder: "never" });
  const options = h("textarea", {
    name: "options",
    rows: "3",
    placeholder: '{"n_ctx": 4096}',
    "aria-label": "Engine options (JSON)",
  });
  const progress = h("div", { class: "progress", hidden: true });
  const form = h(
    "form",
    { method: "dialog", class: "launch" },
    h("h2", {}, `Launch ${family.model_name}`),
    usable.length
      ? field("Engine, format, size, quantization", choice)
      : h("p", { class: "error" }, "No engine on this machine can serve this model."),
    field("Model UID", uid),
    field("Replicas", replicas),
    field("GPUs", gpus),
    field("Unload after idle seconds", idle),
    field("Engine options (JSON)", options),
    progress,
    h(
      "div",
      { class: "actions" },
      h("button", { type: "button", value: "cancel", onclick: () => dialog.close() }, "Close"),
      h("button", { type: "submit", id: "launch-submit", disabled: !usable.length }, "Launch"),
    ),
  );
  const dialog = h("dialog", { "aria-label": `Launch ${family.model_name}` }, form);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const picked = choice.value === "auto" ? null : usable[Number(choice.value)];
    let extra = {};
    if (options.value.trim()) {
      try {
        extra = JSON.parse(options.value);
      } catch {
        toast("Engine options must be a JSON object", "error");
        return;
      }
    }
    const body = {
      model_name: family.model_name,
      model_type: catalogState.type,
      ...(picked
        ? {
            model_engine: picked.engine,
            model_format: picked.model_format,
            model_size_in_billions: picked.model_size_in_billions,
            quantization: picked.quantization,
          }
        : {}),
      replica: Number(replicas.value || 1),
      n_gpu: gpus.value === "auto" ? "auto" : Number(gpus.value),
      ...(uid.value.trim() ? { model_uid: uid.value.trim() } : {}),
      ...(idle.value ? { idle_timeout: Number(idle.value) } : {}),
      ...extra,
    };
    form.querySelector("#launch-submit").disabled = true;
    try {
      const launched = await api("/v1/models?wait_ready=false", {
        method: "POST",
        body: JSON.stringify(body),
      });
      await followLaunch(launched.model_uid, progress);
      toast(`${launched.model_uid} is ready`);
    } catch (error) {
      progress.hidden = false;
      progress.replaceChildren(h("p", { class: "error", role: "alert" }, error.message));
    } finally {
      form.querySelector("#launch-submit").disabled = false;
    }
  });
  document.body.append(dialog);
  dialog.addEventListener("close", () => dialog.remove());
  dialog.showModal();
}

// Follows a launch's progress events until it is ready (resolves) or failed (rejects).
function followLaunch(uid, box) {
  box.hidden = false;
  const bar = h("progress", { max: "1", value: "0", "aria-label": `Launching ${uid}` });
  const stage = h("p", { class: "stage", id: "launch-stage" }, "starting");
  box.replaceChildren(bar, stage);
  return new Promise((resolve, reject) => {
    const follow = events(`/v1/models/${encodeURIComponent(uid)}/progress/events`, (state) => {
      bar.value = state.progress;
      let text = state.stage;
      const d = state.download;
      if (d) {
        text += ` ${bytes(d.done)} of ${bytes(d.total)}`;
        if (d.speed) text += `, ${bytes(d.speed)}/s`;
        if (d.eta) text += `, ${Math.round(d.eta)} s left`;
      }
      stage.textContent = text;
      if (state.stage === "ready" || state.stage === "idle") {
        resolve(state);
        return false;
      }
      if (state.stage === "failed" || state.stage === "terminated") {
        reject(new Error(state.error || `launch ${state.stage}`));
        return false;
      }
      return true;
    });
    follow.then(() => reject(new Error("the launch's progress stream ended early")), reject);
  });
}

// ---- running models -------------------------------------------------------------------

async function showLogs(uid) {
  const response = await fetch(`/v1/models/${encodeURIComponent(uid)}/logs?tail=300`, authorized());
  const text = await response.text();
  const log = h("pre", { class: "log" }, response.ok ? text || "(empty)" : text);
  const dialog = h(
    "dialog",
    { "aria-label": `Log of ${uid}`, class: "logs" },
    h("h2", {}, `Log of ${uid}`),
    log,
    h("div", { class: "actions" }, h("button", { type: "button", onclick: () => dialog.close() }, "Close")),
  );
  document.body.append(dialog);
  dialog.addEventListener("close", () => dialog.remove());
  dialog.showModal();
  log.scrollTop = log.scrollHeight;
}

function duration(seconds) {
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

async function runningPage() {
  const table = h("table", { id: "running" });
  page.replaceChildren(h("h1", {}, "Running models"), table);
  let last = { at: 0, served: {} };
  const act = async (label, work) => {
    try {
      await work();
      toast(label);
      refresh();
    } catch (error) {
      toast(error.message, "error");
    }
  };
  const refresh = async () => {
    if (!document.body.contains(table)) return;
    const models = (await api("/v1/models")).data;
    // Requests per second from how many each model served since the last look.
    const now = performance.now() / 1000;
    const served = Object.fromEntries(
      models.map((m) => [m.model_uid, m.replicas.reduce((n, r) => n + (r.served || 0), 0)]),
    );
    const previous = last;
    last = { at: now, served };
    const rate = (uid) =>
      uid in previous.served ? (served[uid] - previous.served[uid]) / (now - previous.at) : 0;
    table.replaceChildren(
      thead(["UID", "Name", "Type", "Engine", "Status", "Replicas", "GPUs", "Memory", "Up", "Req/s", ""]),
      h(
        "tbody",
        {},
        models.map((m) =>
          h(
            "tr",
            { "data-uid": m.model_uid },
            h("td", {}, m.model_uid),
            h("td", {}, m.model_name),
            h("td", {}, m.model_type),
            h("td", {}, m.model_engine),
            h("td", { class: `status ${m.status}` }, m.status),
            h("td", {}, `${m.replicas.filter((r) => r.status === "ready").length}/${m.replica}`),
            h("td", {}, (m.accelerators || []).join(", ") || "CPU"),
            h("td", {}, bytes(m.replicas.reduce((n, r) => n + (r.memory_bytes || 0), 0))),
            h("td", {}, duration(Date.now() / 1000 - m.created)),
            h("td", { class: "rate" }, previous.at ? rate(m.model_uid).toFixed(1) : "–"),
            h(
              "td",
              { class: "actions" },
              h(
                "button",
                {
                  type: "button",
                  class: "plain",
                  "aria-label": `Logs of ${m.model_uid}`,
                  onclick: () => showLogs(m.model_uid),
                },
                "Logs",
              ),
              h(
                "button",
                {
                  type: "button",
                  "aria-label": `Relaunch ${m.model_uid}`,
                  onclick: () =>
                    act(`${m.model_uid} relaunched`, async () => {
                      const uid = encodeURIComponent(m.model_uid);
                      await api(`/v1/models/${uid}`, { method: "DELETE" });
                      await api("/v1/models?wait_ready=false", {
                        method: "POST",
                        body: JSON.stringify(m.launch),
                      });
                    }),
                },
                "Relaunch",
              ),
              h(
                "button",
                {
                  type: "button",
                  class: "danger",
                  "aria-label": `Terminate ${m.model_uid}`,
                  onclick: () =>
                    act(`${m.model_uid} terminated`, () =>
                      api(`/v1/models/${encodeURIComponent(m.model_uid)}`, { method: "DELETE" }),
                    ),
                },
                "Terminate",
              ),
            ),
          ),
        ),
      ),
    );
    if (!models.length) table.append(h("caption", {}, "Nothing is running. Launch a model from the catalogue."));
  };
  await refresh();
  const timer = setInterval(() => (document.body.contains(table) ? refresh() : clearInterval(timer)), 3000);
}

// ---- playground -----------------------------------------------------------------------

async function playgroundPage() {
  const models = (await api("/v1/models")).data.filter((m) => m.status === "ready");
  if (!models.length) {
    page.replaceChildren(
      h("h1", {}, "Playground"),
      h("p", { class: "muted" }, "No model is ready. Launch one from the catalogue."),
    );
    return;
  }
  const select = h(
    "select",
    { id: "play-model", "aria-label": "Model" },
    models.map((m) => h("option", { value: m.model_uid }, `${m.model_uid} (${m.model_type})`)),
  );
  const side = h("aside", {}, h("label", {}, h("span", {}, "Model"), select));
  const main = h("section", {});
  const code = h("pre", { id: "snippet" });
  page.replaceChildren(
    h("h1", {}, "Playground"),
    h("div", { class: "playground" }, side, main),
  );
  const show = () => {
    const model = models.find((m) => m.model_uid === select.value);
    side.replaceChildren(side.firstChild);
    code.textContent = snippet(model);
    const panel = { embedding: embedPanel, rerank: rerankPanel }[model.model_type] || chatPanel;
    panel(model, side, main);
    side.append(h("details", {}, h("summary", {}, "Code"), code));
  };
  select.addEventListener("change", show);
  show();
}

function chatPanel(model, side, main) {
  const system = h("textarea", { id: "chat-system", rows: "2", "aria-label": "System prompt", placeholder: "System prompt (optional)" });
  const temperature = h("input", { id: "chat-temperature", type: "number", min: "0", max: "2", step: "0.1", value: "0.7", "aria-label": "Temperature" });
  const maxTokens = h("input", { id: "chat-max-tokens", type: "number", min: "1", value: "256", "aria-label": "Max tokens" });
  side.append(
    h("label", {}, h("span", {}, "System prompt"), system),
    h("label", {}, h("span", {}, "Temperature"), temperature),
    h("label", {}, h("span", {}, "Max tokens"), maxTokens),
  );
  const log = h("div", { id: "chat-log", class: "chat-log", "aria-live": "polite" });
  const input = h("textarea", { id: "chat-input", rows: "2", "aria-label": "Message", placeholder: "Say something" });
  const send = h("button", { type: "submit", id: "chat-send" }, "Send");
  const form = h("form", { class: "chat-form" }, input, send);
  const history = [];
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = input.value.trim();
    if (!text) return;
    input.value = "";
    history.push({ role: "user", content: text });
    log.append(h("div", { class: "msg user" }, text));
    const answer = h("div", { class: "msg assistant" });
    log.append(answer);
    send.disabled = true;
    try {
      const messages = system.value.trim()
        ? [{ role: "system", content: system.value.trim() }, ...history]
        : history;
      const reply = await streamChat(model.model_uid, messages, Number(temperature.value), Number(maxTokens.value), (token) => {
        answer.textContent += token;
        log.scrollTop = log.scrollHeight;
      });
      history.push({ role: "assistant", content: reply });
      answer.dataset.done = "true";
    } catch (error) {
      answer.classList.add("error");
      answer.textContent = error.message;
    } finally {
      send.disabled = false;
    }
  });
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  main.replaceChildren(log, form);
}

function embedPanel(model, side, main) {
  const texts = h("textarea", { id: "embed-input", rows: "5", "aria-label": "Texts, one per line" });
  texts.value = "The sea is deep.\nThe ocean is vast.\nI like trains.";
  const out = h("div", { id: "embed-result", role: "status" });
  const form = h("form", { class: "stack" }, h("label", {}, h("span", {}, "Texts, one per line"), texts), h("button", { type: "submit" }, "Embed"), out);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const input = texts.value.split("\n").map((t) => t.trim()).filter(Boolean);
    try {
      const result = await api("/v1/embeddings", { method: "POST", body: JSON.stringify({ model: model.model_uid, input }) });
      const vectors = result.data.map((d) => d.embedding);
      const cosine = (a, b) => {
        let dot = 0, na = 0, nb = 0;
        for (let i = 0; i < a.length; i++) { dot += a[i] * b[i]; na += a[i] * a[i]; nb += b[i] * b[i]; }
        return dot / Math.sqrt(na * nb);
      };
      out.replaceChildren(
        h("p", {}, `${vectors.length} vectors of ${vectors[0].length} dimensions, ${result.usage.prompt_tokens} tokens`),
        h("table", { class: "similarity" },
          h("caption", {}, "Cosine similarity"),
          h("tbody", {}, vectors.map((a, i) => h("tr", {}, h("th", { scope: "row" }, input[i]), vectors.map((b) => h("td", {}, cosine(a, b).toFixed(3)))))),
        ),
      );
    } catch (error) {
      out.replaceChildren(h("p", { class: "error" }, error.message));
    }
  });
  main.replaceChildren(form);
}

function rerankPanel(model, side, main) {
  const query = h("input", { id: "rerank-query", value: "Where do whales live?", "aria-label": "Query" });
  const docs = h("textarea", { id: "rerank-docs", rows: "5", "aria-label": "Documents, one per line" });
  docs.value = "Whales live in the ocean.\nTrains run on rails.\nThe sea is home to many animals.";
  const out = h("ol", { id: "rerank-result" });
  const form = h("form", { class: "stack" }, h("label", {}, h("span", {}, "Query"), query), h("label", {}, h("span", {}, "Documents, one per line"), docs), h("button", { type: "submit" }, "Rerank"), out);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const documents = docs.value.split("\n").map((t) => t.trim()).filter(Boolean);
    try {
      const result = await api("/v1/rerank", { method: "POST", body: JSON.stringify({ model: model.model_uid, query: query.value, documents }) });
      out.replaceChildren(...result.results.map((r) => h("li", {}, `${documents[r.index]} — ${r.relevance_score.toFixed(3)}`)));
    } catch (error) {
      out.replaceChildren(h("li", { class: "error" }, error.message));
    }
  });
  main.replaceChildren(form);
}

function snippet(model) {
  const base = `${location.origin}/v1`;
  const uid = model.model_uid;
  if (model.model_type === "embedding") {
    return `from openai import OpenAI

client = OpenAI(base_url="${base}", api_key="unused")
vectors = client.embeddings.create(model="${uid}", input=["one", "two"])

curl ${base}/embeddings -H 'Content-Type: application/json' \\
  -d '{"model": "${uid}", "input": ["one", "two"]}'`;
  }
  if (model.model_type === "rerank") {
    return `from xinference_client import RESTfulClient

model = RESTfulClient("${location.origin}").get_model("${uid}")
model.rerank(["doc one", "doc two"], "query")

curl ${base}/rerank -H 'Content-Type: application/json' \\
  -d '{"model": "${uid}", "query": "q", "documents": ["a", "b"]}'`;
  }
  return `from openai import OpenAI

client = OpenAI(base_url="${base}", api_key="unused")
reply = client.chat.completions.create(
    model="${uid}", messages=[{"role": "user", "content": "Hello"}]
)

from xinference_client import RESTfulClient
RESTfulClient("${location.origin}").get_model("${uid}").chat(
    messages=[{"role": "user", "content": "Hello"}]
)

curl ${base}/chat/completions -H 'Content-Type: application/json' \\
  -d '{"model": "${uid}", "messages": [{"role": "user", "content": "Hello"}]}'`;
}

// Streams a chat answer, calling `onToken` for each piece; resolves with the whole text.
async function streamChat(model, messages, temperature, maxTokens, onToken) {
  let text = "";
  const body = { model, messages, temperature, max_tokens: maxTokens, stream: true };
  await events(
    "/v1/chat/completions",
    (chunk) => {
      if (chunk.error) throw new Error(chunk.error.message);
      const token = chunk.choices?.[0]?.delta?.content || "";
      if (token) {
        text += token;
        onToken(token);
      }
    },
    { method: "POST", body: JSON.stringify(body) },
  );
  return text;
}

// ---- registrations ---------------------------------------------------------------------

// The JSON pasted in the second form starts as Xinference's v2 file for a local embedding model.
const EXAMPLE = {
  version: 2,
  model_name: "my-model",
  dimensions: 384,
  max_tokens: 512,
  language: ["en"],
  model_specs: [
    {
      model_format: "pytorch",
      model_hub: "huggingface",
      model_id: null,
      model_uri: "/path/to/the/model/folder",
      quantization: "none",
    },
  ],
};

// The weights' format, read off the path as the engines will: a .gguf file for llama.cpp, a
// .onnx Piper voice, a CTranslate2 Whisper folder for speech recognition, else a folder of
// safetensors (or a diffusers pipeline).
function formatOf(path, type) {
  if (/\.gguf$/i.test(path)) return "ggufv2";
  if (/\.onnx$/i.test(path)) return "onnx";
  return type === "audio" ? "ct2" : "pytorch";
}

// Xinference's v2 definition of what the guided form says, which the JSON form then shows.
function definitionFrom(type, fields) {
  const uri = fields.uri.trim();
  const spec = {
    model_format: formatOf(uri, type),
    model_size_in_billions: fields.size.trim() || "0",
    quantization: "none",
    model_uri: uri,
  };
  const base = { version: 2, model_name: fields.name.trim(), model_lang: ["en"] };
  if (type === "LLM") {
    const abilities = ["generate", ...fields.abilities];
    return {
      ...base,
      model_ability: abilities,
      model_family: fields.family.trim() || null,
      context_length: Number(fields.context) || null,
      chat_template: fields.template.trim() || null,
      model_specs: [spec],
    };
  }
  if (type === "embedding") {
    return { ...base, dimensions: Number(fields.dimensions), max_tokens: Number(fields.maxTokens) || 512, model_specs: [spec] };
  }
  if (type === "rerank") return { ...base, type: "unknown", max_tokens: Number(fields.maxTokens) || 512, model_specs: [spec] };
  return { ...base, model_family: fields.family.trim() || null, model_uri: uri, model_format: spec.model_format };
}

// A file picker that hands the chosen file's text to `use`.
function fileInput(accept, label, use) {
  return h("input", {
    type: "file",
    accept,
    "aria-label": label,
    onchange: async (e) => {
      const file = e.target.files[0];
      if (file) use(await file.text());
    },
  });
}

async function registrationsPage() {
  const type = h(
    "select",
    { id: "register-type", "aria-label": "Registration type" },
    TYPES.map((t) => h("option", { value: t, selected: t === "embedding" }, t)),
  );
  const persist = h("input", { type: "checkbox", id: "register-persist", checked: true });
  const result = h("p", { id: "register-result", role: "status" });
  const list = h("table", { id: "registrations" });

  // The guided form: a name, where the weights are, and what the type needs.
  const input = (attrs) => h("input", { type: "text", autocomplete: "off", ...attrs });
  const name = input({ id: "register-name", required: true, pattern: "[A-Za-z0-9][\\w.\\-]*" });
  const uri = input({ id: "register-uri", required: true, placeholder: "/models/my-model or /models/model.gguf" });
  const size = input({ id: "register-size", inputmode: "decimal", placeholder: "0.5" });
  const families = h("datalist", { id: "builtin-families" });
  const family = input({ id: "register-family", list: "builtin-families" });
  const abilityBox = (ability) => h("input", { type: "checkbox", value: ability, checked: ability === "chat" });
  const abilities = ["chat", "tools", "vision"].map(abilityBox);
  const context = input({ id: "register-context", inputmode: "numeric", placeholder: "the family's, else 2048" });
  const template = h("textarea", { id: "register-template", rows: "5", spellcheck: "false" });
  const templateFile = fileInput(".jinja,.j2,.txt,.json", "Load a template file", (text) => {
    // tokenizer_config.json carries the template as one of its keys.
    try {
      template.value = JSON.parse(text).chat_template ?? text;
    } catch {
      template.value = text;
    }
  });
  const dimensions = input({ id: "register-dimensions", inputmode: "numeric", value: "384" });
  const maxTokens = input({ id: "register-max-tokens", inputmode: "numeric", value: "512" });
  const only = (types, el) => {
    el.dataset.types = types.join(" ");
    return el;
  };
  const guided = h(
    "form",
    { class: "register", id: "register-form" },
    h("label", {}, h("span", {}, "Model name"), name),
    h("label", {}, h("span", {}, "Where the weights are: a folder, or a .gguf / .onnx file, on the server"), uri),
    only(["LLM"], h("label", {}, h("span", {}, "Size (billions of parameters)"), size)),
    only(["LLM", "audio", "image"], h("label", {}, h("span", {}, "Model family: a built-in model to take the template from, or a name of your own"), family)),
    only(
      ["LLM"],
      h(
        "fieldset",
        { class: "inline" },
        h("legend", {}, "Abilities (besides generate)"),
        abilities.map((box) => h("label", { class: "inline" }, box, box.value)),
      ),
    ),
    only(["LLM"], h("label", {}, h("span", {}, "Context length"), context)),
    only(["LLM"], h("label", {}, h("span", {}, "Chat template (Jinja, or a built-in model's name; empty: the family's, or the one the model carries)"), template)),
    only(["LLM"], h("label", {}, h("span", {}, "Or load the template from a file"), templateFile)),
    only(["embedding"], h("label", {}, h("span", {}, "Dimensions"), dimensions)),
    only(["embedding", "rerank"], h("label", {}, h("span", {}, "Max tokens"), maxTokens)),
    families,
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Check and register")),
  );
  const showFields = () => {
    for (const el of guided.querySelectorAll("[data-types]")) {
      el.hidden = !el.dataset.types.split(" ").includes(type.value);
    }
  };
  type.addEventListener("change", showFields);
  showFields();

  const definition = h("textarea", {
    id: "register-json",
    rows: "16",
    spellcheck: "false",
    "aria-label": "Model definition (JSON)",
  });
  definition.value = JSON.stringify(EXAMPLE, null, 2);
  const upload = fileInput(".json,application/json", "Load a JSON file", (text) => {
    definition.value = text;
  });
  const json = h(
    "form",
    { class: "register", id: "register-json-form" },
    h("label", {}, h("span", {}, "Model definition (Xinference's JSON)"), definition),
    h("label", {}, h("span", {}, "Or load a file"), upload),
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Register JSON")),
  );

  // The server checks the weights (they exist, are of the format, a chat model has a template)
  // before it saves anything; what it says is shown as it said it.
  const submit = async (model) => {
    try {
      const answer = await api(`/v1/model_registrations/${type.value}`, {
        method: "POST",
        body: JSON.stringify({ model, persist: persist.checked }),
      });
      result.className = "";
      const ignored = answer.ignored_fields?.length ? ` (ignored: ${answer.ignored_fields.join(", ")})` : "";
      result.textContent = `Registered ${answer.model_name}${ignored}`;
      delete catalogState.families[type.value];
      await refresh();
    } catch (error) {
      result.className = "error";
      result.textContent = error.message;
    }
  };
  guided.addEventListener("submit", async (event) => {
    event.preventDefault();
    const model = definitionFrom(type.value, {
      name: name.value,
      uri: uri.value,
      size: size.value,
      family: family.value,
      abilities: abilities.filter((b) => b.checked).map((b) => b.value),
      context: context.value,
      template: template.value,
      dimensions: dimensions.value,
      maxTokens: maxTokens.value,
    });
    definition.value = JSON.stringify(model, null, 2);
    await submit(model);
  });
  json.addEventListener("submit", async (event) => {
    event.preventDefault();
    let model;
    try {
      model = JSON.parse(definition.value);
    } catch (error) {
      result.className = "error";
      result.textContent = `Not JSON: ${error.message}`;
      return;
    }
    await submit(model);
  });
  api("/v1/model_registrations/LLM").then((rows) =>
    families.replaceChildren(...rows.filter((r) => r.is_builtin).map((r) => h("option", { value: r.model_name }))),
  );
  const refresh = async () => {
    const rows = [];
    for (const t of TYPES) {
      for (const f of await api(`/v1/model_registrations/${t}`)) {
        if (!f.is_builtin) rows.push({ type: t, name: f.model_name });
      }
    }
    list.replaceChildren(
      thead(["Name", "Type", ""]),
      h(
        "tbody",
        {},
        rows.map((r) =>
          h(
            "tr",
            { "data-registration": r.name },
            h("td", {}, r.name),
            h("td", {}, r.type),
            h(
              "td",
              { class: "actions" },
              h(
                "button",
                {
                  type: "button",
                  class: "danger",
                  "aria-label": `Unregister ${r.name}`,
                  onclick: async () => {
                    try {
                      await api(`/v1/model_registrations/${r.type}/${encodeURIComponent(r.name)}`, {
                        method: "DELETE",
                      });
                      delete catalogState.families[r.type];
                      await refresh();
                    } catch (error) {
                      toast(error.message, "error");
                    }
                  },
                },
                "Unregister",
              ),
            ),
          ),
        ),
      ),
    );
    if (!rows.length) list.append(h("caption", {}, "No custom models yet."));
  };
  page.replaceChildren(
    h("h1", {}, "Registrations"),
    h(
      "p",
      { class: "muted" },
      "Register weights you already have: point at their folder (or GGUF file); nothing is downloaded.",
    ),
    h("div", { class: "register-head" }, h("label", {}, h("span", {}, "Type"), type), h("label", { class: "inline" }, persist, "Keep it after a restart")),
    result,
    h(
      "div",
      { class: "two" },
      h("section", {}, h("h2", {}, "From a folder"), guided, h("details", {}, h("summary", {}, "Or paste Xinference's JSON"), json)),
      h("section", {}, h("h2", {}, "Custom models"), list),
    ),
  );
  await refresh();
}

// ---- cache ----------------------------------------------------------------------------

async function cachePage() {
  const table = h("table", { id: "cache" });
  page.replaceChildren(h("h1", {}, "Cache"), table);
  const refresh = async () => {
    const entries = (await api("/v1/cache/models")).list;
    const total = entries.reduce((sum, e) => sum + (e.size_bytes || 0), 0);
    table.replaceChildren(
      thead(["Model", "Variant", "Size", "Source", "Last used", ""]),
      h(
        "tbody",
        {},
        entries.map((e) =>
          h(
            "tr",
            { "data-version": e.model_version },
            h("td", {}, e.model_name),
            h("td", {}, `${e.model_format} · ${size(e.model_size_in_billions)}B · ${e.quantization}`),
            h("td", {}, bytes(e.size_bytes)),
            h("td", {}, e.source),
            h("td", {}, new Date(e.last_used * 1000).toLocaleString()),
            h(
              "td",
              { class: "actions" },
              h(
                "button",
                {
                  type: "button",
                  class: "danger",
                  "aria-label": `Remove ${e.model_version}`,
                  onclick: async () => {
                    try {
                      const version = encodeURIComponent(e.model_version);
                      await api(`/v1/cache/models?model_version=${version}`, { method: "DELETE" });
                      toast(`Removed ${e.model_version}`);
                      await refresh();
                    } catch (error) {
                      toast(error.message, "error");
                    }
                  },
                },
                "Remove",
              ),
            ),
          ),
        ),
      ),
      h("caption", {}, entries.length ? `${entries.length} cached, ${bytes(total)} in all` : "The cache is empty."),
    );
  };
  await refresh();
}

// ---- cluster --------------------------------------------------------------------------

async function clusterPage() {
  const cluster = await api("/v1/cluster/nodes");
  const share = (free, total) => (total ? 1 - free / total : 0);
  page.replaceChildren(
    h("h1", {}, "Cluster"),
    h("p", { class: "muted" }, cluster.mode === "ray" ? `Ray cluster at ${cluster.address}` : "One machine."),
    ...cluster.nodes.map((n) => {
      const ray = cluster.mode === "ray";
      const title = ray ? `${n.hostname || n.address} (${n.id.slice(0, 8)})` : n.node;
      const cpus = ray ? `${n.cpu_available} of ${n.cpu_total} CPUs free` : `inferd ${n.version} · ${n.cpu_count} CPUs`;
      return h(
        "section",
        { class: "node", "data-node": n.id },
        h("h2", {}, title, n.alive ? null : h("span", { class: "muted" }, " — down")),
        h("p", {}, cpus),
        h(
          "label",
          {},
          h("span", {}, `Memory: ${bytes(n.memory_total - n.memory_available)} of ${bytes(n.memory_total)}`),
          h("meter", { min: "0", max: "1", value: String(share(n.memory_available, n.memory_total)), "aria-label": "Memory in use" }),
        ),
        ray
          ? h("p", {}, n.gpu_total ? `${n.gpu_available} of ${n.gpu_total} GPUs free` : "No GPU: models run on the CPU.")
          : (n.gpus || []).map((g) =>
              h(
                "label",
                {},
                h("span", {}, `GPU ${g.index} ${g.name}: ${bytes(g.memory_total - g.memory_free)} of ${bytes(g.memory_total)}`),
                h("meter", { min: "0", max: "1", value: String(share(g.memory_free, g.memory_total)) }),
              ),
            ),
        ray || n.gpu_count ? null : h("p", { class: "muted" }, "No GPU: models run on the CPU."),
        h("h3", {}, "Models"),
        h(
          "ul",
          {},
          n.replicas.map((r) =>
            h("li", {}, `${r.model_uid}${r.replica ? ` #${r.replica}` : ""} (${r.engine}, ${r.status})`),
          ),
        ),
      );
    }),
  );
}

// ---- API keys (admins) -----------------------------------------------------------------

async function keysPage() {
  const auth = await api("/v1/cluster/auth");
  const table = h("table", { id: "keys" });
  const name = h("input", { id: "key-name", "aria-label": "Key name", required: true, pattern: "[\\w.\\-]{1,64}" });
  const models = h("input", { id: "key-models", "aria-label": "Models (uids, comma-separated; empty: all)" });
  const admin = h("input", { type: "checkbox", id: "key-admin" });
  const days = h("input", { id: "key-days", type: "number", min: "1", "aria-label": "Expires after days (empty: never)" });
  const made = h("p", { id: "key-made", role: "status" });
  const form = h(
    "form",
    { class: "stack" },
    h("label", {}, h("span", {}, "Name"), name),
    h("label", {}, h("span", {}, "Models (uids, comma-separated; empty: all)"), models),
    h("label", { class: "inline" }, admin, "Admin (launch, stop, register, manage keys)"),
    h("label", {}, h("span", {}, "Expires after days (empty: never)"), days),
    h("button", { type: "submit" }, "Create key"),
    made,
  );
  const refresh = async () => {
    const rows = await api("/v1/keys");
    table.replaceChildren(
      thead(["Name", "Admin", "Models", "Expires", ""]),
      h(
        "tbody",
        {},
        rows.map((k) =>
          h(
            "tr",
            { "data-key": k.name },
            h("td", {}, k.name),
            h("td", {}, k.admin ? "yes" : "no"),
            h("td", {}, k.models ? k.models.join(", ") : "all"),
            h("td", {}, k.expires ? new Date(k.expires * 1000).toLocaleDateString() : "never"),
            h(
              "td",
              { class: "actions" },
              h(
                "button",
                {
                  type: "button",
                  class: "danger",
                  "aria-label": `Revoke ${k.name}`,
                  onclick: async () => {
                    try {
                      await api(`/v1/keys/${encodeURIComponent(k.name)}`, { method: "DELETE" });
                      await refresh();
                    } catch (error) {
                      toast(error.message, "error");
                    }
                  },
                },
                "Revoke",
              ),
            ),
          ),
        ),
      ),
    );
  };
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const list = models.value.split(",").map((m) => m.trim()).filter(Boolean);
    try {
      const key = await api("/v1/keys", {
        method: "POST",
        body: JSON.stringify({
          name: name.value.trim(),
          admin: admin.checked,
          models: list.length ? list : null,
          ...(days.value ? { expires_days: Number(days.value) } : {}),
        }),
      });
      made.className = "";
      made.replaceChildren("Copy it now, it is not shown again: ", h("code", { id: "new-key" }, key.key));
      await refresh();
    } catch (error) {
      made.className = "error";
      made.textContent = error.message;
    }
  });
  page.replaceChildren(
    h("h1", {}, "API keys"),
    auth.auth
      ? ""
      : h("p", { class: "muted" }, "Auth is off on this server (start it with --auth): keys are kept but not asked for."),
    h("div", { class: "two" }, form, h("section", {}, table)),
    h(
      "p",
      {},
      h("button", { type: "button", class: "plain", onclick: () => { localStorage.removeItem(KEY); route(); } }, "Sign out of this page"),
    ),
  );
  await refresh();
}

// ---- routing --------------------------------------------------------------------------

const PAGES = {
  catalog: catalogPage,
  running: runningPage,
  playground: playgroundPage,
  registrations: registrationsPage,
  cache: cachePage,
  cluster: clusterPage,
  keys: keysPage,
};

async function route() {
  const name = location.hash.replace(/^#\//, "") || "catalog";
  const render = PAGES[name] || catalogPage;
  for (const link of document.querySelectorAll("nav a")) {
    link.toggleAttribute("aria-current", link.dataset.page === name);
  }
  try {
    await render();
  } catch (error) {
    if (error instanceof SignInNeeded) signInPage(error.message);
    else page.replaceChildren(h("p", { class: "error", role: "alert" }, error.message));
  }
}

window.addEventListener("hashchange", route);
route();
