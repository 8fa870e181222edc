"use strict";
// The jobd dashboard: plain JavaScript, no dependencies, no build step.
// Everything the server sends is put in the page as text (textContent /
// Node.append of strings), never as HTML: payloads, results, errors and
// labels are user data. The page's CSP forbids inline scripts anyway.
(function () {
  const $ = (id) => document.getElementById(id);
  const main = $("main");
  let token = sessionStorage.getItem("jobd-token") || "";
  // What the current view holds open: a live stream, a poll timer.
  let abort = null;
  let timer = null;
  let refresh = null;
  // Jobs ticked on the jobs page, kept across live re-renders.
  const selected = new Set();
  // Who the token is (GET /v1/whoami): its role and the methods it may
  // call. Actions it may not use are not shown. Null until known, or when
  // the daemon refused the token: then no action is shown.
  let me = null;
  const may = (method) => !!me && (me.methods || []).includes(method);

  const STATES = ["waiting", "queued", "running", "retry_wait", "succeeded", "failed", "cancelled"];
  const TERMINAL = ["JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED"];

  /** An element with attributes and children (strings become text). */
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "onclick") e.addEventListener("click", v);
      else if (k === "onchange") e.addEventListener("change", v);
      else if (k === "onsubmit") e.addEventListener("submit", v);
      else if (k === "class") e.className = v;
      else if (k === "checked") e.checked = true;
      else e.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children.flat()) {
      if (c === undefined || c === null) continue;
      e.append(c instanceof Node ? c : String(c));
    }
    return e;
  }

  function banner(text, kind) {
    const b = $("banner");
    b.textContent = text || "";
    b.className = "banner " + (kind || "error");
    b.hidden = !text;
  }

  function authHeaders() {
    return token ? { authorization: "Bearer " + token } : {};
  }

  /** A JSON call; throws an Error carrying the google.rpc.Status body. */
  async function api(method, path, body) {
    const headers = authHeaders();
    if (body !== undefined) headers["content-type"] = "application/json";
    const res = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    let json = {};
    try {
      json = text ? JSON.parse(text) : {};
    } catch (_) {
      json = { message: text };
    }
    if (!res.ok) {
      const e = new Error(json.message || res.statusText);
      e.status = res.status;
      throw e;
    }
    return json;
  }

  function failed(e) {
    if (e.name === "AbortError") return;
    if (e.status === 401 && (e.message || "").startsWith("token not recognised")) {
      // The daemon tells a wrong token from a missing one.
      banner("This token is not recognised by the daemon: check it and enter it again above.");
      $("token").focus();
    } else if (e.status === 401) {
      banner("This daemon needs a token: enter one above.");
      $("token").focus();
    } else if (e.status === 403) {
      banner("Not allowed with this token: " + e.message);
    } else {
      banner(e.message || String(e));
    }
  }

  /** Server-sent events over fetch (EventSource cannot send a token). */
  async function stream(path, onEvent, signal) {
    const res = await fetch(path, { headers: authHeaders(), signal });
    if (!res.ok) {
      const j = await res.json().catch(() => ({}));
      const e = new Error(j.message || res.statusText);
      e.status = res.status;
      throw e;
    }
    setLive(true);
    const reader = res.body.getReader();
    const dec = new TextDecoder();
    let buf = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        buf += dec.decode(value, { stream: true });
        let i;
        while ((i = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          let event = "message";
          let data = "";
          for (const line of block.split("\n")) {
            if (line.startsWith("event: ")) event = line.slice(7);
            else if (line.startsWith("data: ")) data += line.slice(6);
          }
          if (data) onEvent(event, JSON.parse(data));
        }
      }
    } finally {
      setLive(false);
    }
  }

  function setLive(on) {
    $("live").className = on ? "live on" : "live";
  }

  /**
   * Keeps the current view fresh: every change of every job arrives over
   * /v1/events (WatchJobs) and re-renders (at most twice a second); if that
   * stream is not available, the view polls every 3 s.
   */
  function follow(render) {
    refresh = render;
    let pending = false;
    const again = () => {
      if (pending) return;
      pending = true;
      setTimeout(() => {
        pending = false;
        if (refresh === render) render().catch(failed);
      }, 500);
    };
    const signal = abort.signal;
    stream("/v1/events", (event) => {
      if (event === "message") again();
    }, signal)
      .catch(() => {})
      .finally(() => {
        if (signal.aborted || refresh !== render) return;
        timer = setInterval(() => render().catch(failed), 3000);
      });
  }

  function stop() {
    if (abort) abort.abort();
    abort = new AbortController();
    if (timer) clearInterval(timer);
    timer = null;
    refresh = null;
    setLive(false);
  }

  const short = (s) => (s || "").replace("JOB_STATE_", "").toLowerCase();
  const when = (t) => (t ? new Date(t).toLocaleString() : "");
  const num = (v) => Number(v || 0);

  /** A throughput bar's fill (CSSOM: the CSP refuses style attributes). */
  function fill(percent, kind) {
    const f = el("span", { class: kind ? "fill " + kind : "fill" });
    f.style.height = percent + "%";
    return f;
  }

  function stateBadge(state) {
    return el("span", { class: "state " + short(state) }, short(state));
  }

  /**
   * A table; a heading is text, or [text, "n"] for a column of numbers
   * (right-aligned under a right-aligned heading), or a node.
   */
  function table(headings, rows) {
    const th = (h) => (Array.isArray(h) ? el("th", { class: h[1] }, h[0]) : el("th", {}, h));
    return el(
      "table",
      {},
      el("thead", {}, el("tr", {}, headings.map(th))),
      el("tbody", {}, rows),
    );
  }

  /** What an empty page shows instead of an empty table. */
  function hint(id, ...text) {
    return el("p", { class: "hint", id }, ...text);
  }

  /** A job result or other bytes as text, cut to `max` characters. */
  function preview(b64, max) {
    if (!b64) return { text: "", cut: false };
    let bytes;
    try {
      bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    } catch (_) {
      return { text: "(not base64)", cut: false };
    }
    const text = new TextDecoder("utf-8", { fatal: false }).decode(bytes);
    return text.length > max
      ? { text: text.slice(0, max), cut: true }
      : { text, cut: false };
  }

  // ---- pages ----

  async function overview() {
    const render = async () => {
      const [kinds, recentFailed, stats] = await Promise.all([
        api("GET", "/v1/kinds"),
        api("GET", "/v1/jobs?state=failed&order=newest_first&page_size=10"),
        // The daemon counts finished jobs per minute as they finish.
        api("GET", "/v1/stats/throughput?minutes=10"),
      ]);
      const perMinute = (stats.minutes || []).map((m) => ({
        succeeded: num(m.succeeded),
        failed: num(m.failed),
        start: m.start,
      }));
      const peak = Math.max(1, ...perMinute.map((m) => m.succeeded + m.failed));
      const total = perMinute.reduce((t, m) => t + m.succeeded, 0);
      main.replaceChildren(
        el("h2", {}, "Kinds"),
        table(
          ["kind", "handler", ["queued", "n"], ["running", "n"], ["retry wait", "n"], ["failed", "n"], ["workers", "n"], "paused"],
          (kinds.kinds || []).map((k) =>
            el(
              "tr",
              { "data-kind": k.kind },
              el("td", {}, el("a", { href: "#/jobs?kind=" + encodeURIComponent(k.kind) }, k.kind)),
              el("td", {}, k.handler),
              el("td", { class: "n queued" }, num(k.queued)),
              el("td", { class: "n running" }, num(k.running)),
              el("td", { class: "n" }, num(k.retryWait)),
              el("td", { class: "n failed" }, num(k.failed)),
              el("td", { class: "n" }, num(k.connectedWorkers)),
              el("td", {}, k.paused ? el("span", { class: "paused" }, "paused") : ""),
            ),
          ),
        ),
        el("h2", {}, "Finished per minute (last 10 minutes; failed in red)"),
        el(
          "div",
          { class: "bars", id: "throughput", "data-succeeded": total },
          perMinute.map((m) =>
            el(
              "div",
              {
                class: "bar",
                title: when(m.start) + ": " + m.succeeded + " succeeded, " + m.failed + " failed",
              },
              fill(Math.round((m.failed / peak) * 100), "bad"),
              fill(Math.round((m.succeeded / peak) * 100)),
              el("span", { class: "label" }, m.succeeded + m.failed),
            ),
          ),
        ),
        el("h2", {}, "Recent failures"),
        table(
          ["job", "kind", "finished", "last error"],
          (recentFailed.jobs || []).map((j) =>
            el(
              "tr",
              {},
              el("td", { class: "id" }, el("a", { href: "#/job/" + encodeURIComponent(j.id) }, j.id)),
              el("td", {}, j.kind),
              el("td", { class: "t" }, when(j.finishedAt)),
              el("td", { class: "error" }, (j.lastError || "").slice(0, 200)),
            ),
          ),
        ),
      );
    };
    await render();
    follow(render);
  }

  async function jobs(query) {
    const q = new URLSearchParams(query);
    const render = async () => {
      const params = new URLSearchParams();
      for (const k of ["state", "kind", "page_token"]) if (q.get(k)) params.set(k, q.get(k));
      for (const l of (q.get("label") || "").split(",")) if (l.trim()) params.append("label", l.trim());
      params.set("page_size", q.get("page_size") || "50");
      params.set("order", "newest_first");
      const list = await api("GET", "/v1/jobs?" + params);
      const go = (changes) => {
        const next = new URLSearchParams(q);
        for (const [k, v] of Object.entries(changes)) v ? next.set(k, v) : next.delete(k);
        location.hash = "#/jobs?" + next;
      };
      const stateSel = el(
        "select",
        { id: "filter-state" },
        el("option", { value: "" }, "any state"),
        STATES.map((s) => el("option", { value: s, selected: q.get("state") === s }, s)),
      );
      const kindIn = el("input", { id: "filter-kind", placeholder: "kind", value: q.get("kind") || "" });
      const labelIn = el("input", { id: "filter-label", placeholder: "label k=v[,k=v]", value: q.get("label") || "" });
      // Ticking jobs is for bulk actions: only when the token may act.
      const bulkOk = may("RetryJobs") || may("Cancel");
      const rows = (list.jobs || []).map((j) =>
        el(
          "tr",
          { "data-id": j.id, "data-state": short(j.state) },
          bulkOk
            ? el(
                "td",
                {},
                el("input", {
                  type: "checkbox",
                  class: "pick",
                  checked: selected.has(j.id),
                  onchange: (e) => (e.target.checked ? selected.add(j.id) : selected.delete(j.id)),
                }),
              )
            : null,
          el("td", { class: "id" }, el("a", { href: "#/job/" + encodeURIComponent(j.id) }, j.id)),
          el("td", {}, j.kind),
          el("td", {}, stateBadge(j.state)),
          el("td", { class: "n" }, num(j.attempt) + "/" + num(j.maxAttempts)),
          el("td", { class: "t" }, when(j.createdAt)),
          el("td", { class: "error" }, (j.lastError || "").slice(0, 120)),
        ),
      );
      const pickAll = el("input", {
        type: "checkbox",
        id: "pick-all",
        title: "select every job on this page",
        "aria-label": "select all",
        onchange: (e) => {
          for (const j of list.jobs || []) e.target.checked ? selected.add(j.id) : selected.delete(j.id);
          for (const box of main.querySelectorAll("input.pick")) box.checked = e.target.checked;
        },
      });
      const headings = ["job", "kind", "state", ["attempt", "n"], "created", "last error"];
      main.replaceChildren(
        el(
          "form",
          {
            class: "filters",
            onsubmit: (e) => {
              e.preventDefault();
              go({ state: stateSel.value, kind: kindIn.value.trim(), label: labelIn.value.trim(), page_token: "" });
            },
          },
          stateSel,
          kindIn,
          labelIn,
          el("button", { type: "submit", id: "filter-apply" }, "Filter"),
        ),
        el(
          "div",
          { class: "actions" },
          may("RetryJobs")
            ? el("button", { id: "bulk-retry", onclick: () => bulk("retry").catch(failed) }, "Retry selected")
            : null,
          may("Cancel")
            ? el("button", { id: "bulk-cancel", onclick: () => bulk("cancel").catch(failed) }, "Cancel selected")
            : null,
          q.get("page_token") ? el("button", { id: "page-first", onclick: () => go({ page_token: "" }) }, "First page") : null,
          list.nextPageToken
            ? el("button", { id: "page-next", onclick: () => go({ page_token: list.nextPageToken }) }, "Next page")
            : null,
        ),
        (list.jobs || []).length
          ? table(bulkOk ? [pickAll, ...headings] : headings, rows)
          : hint("jobs-empty", "No jobs match. Submit one: jobd submit echo --payload hi"),
      );
    };
    const bulk = async (what) => {
      const ids = [...selected];
      if (!ids.length) return banner("Select jobs first.", "info");
      if (what === "retry") {
        const r = await api("POST", "/v1/jobs:retry", { ids });
        banner("Retried " + num(r.retried) + "; skipped " + (r.skipped || []).length + ".", "info");
      } else {
        let done = 0;
        const errors = [];
        for (const id of ids) {
          try {
            await api("POST", "/v1/jobs/" + encodeURIComponent(id) + ":cancel");
            done += 1;
          } catch (e) {
            errors.push(e.message);
          }
        }
        banner("Cancelled " + done + "." + (errors.length ? " " + errors.join("; ") : ""), errors.length ? "error" : "info");
      }
      selected.clear();
      await render();
    };
    await render();
    follow(render);
  }

  /**
   * The job page's workflow graph (GET /v1/jobs/{id}/graph, drawn by
   * graph.js): `kick()` on load and on each event of the job; it is
   * fetched again every 2 s while a job in it is unfinished (a parent's end
   * is no event of this job). `slot()` is its place on the page (empty for
   * a job in no workflow); `onRoot` gets the job as the graph saw it.
   */
  function jobGraph(path, id, signal, onRoot) {
    let view = [];
    let count;
    // `data-jobs`: how many jobs the last reply held (1: no workflow).
    const slot = () => el("div", { id: "job-graph-slot", "data-jobs": count }, view);
    const draw = async () => {
      const g = await api("GET", path + "/graph");
      const jobs = g.jobs || [];
      if (jobs[0]) onRoot(jobs[0]);
      count = jobs.length;
      const more = g.truncated || jobs.length > window.jobdGraph.MAX_NODES;
      view = jobs.length < 2 ? [] : [
        el("h3", {}, "Workflow (parents above, children below)"),
        el("div", { id: "job-graph", class: "graph" }, window.jobdGraph.draw(g)),
        more ? hint("job-graph-more", "More jobs are linked than shown: jobd graph " + id + " --depth N lists them.") : null,
      ];
      const at = $("job-graph-slot");
      if (at && !signal.aborted) at.replaceWith(slot());
      return jobs.length > 1 && jobs.some((j) => !TERMINAL.includes(j.state));
    };
    return { slot, kick: window.jobdGraph.poller(draw, signal) };
  }

  async function job(id) {
    const path = "/v1/jobs/" + encodeURIComponent(id);
    const signal = abort.signal;
    const waitingOn = (j) => num(j.waitingOn) + " of " + (j.parentIds || []).length + " parents";
    const graph = jobGraph(path, id, signal, (root) => {
      const dd = main.querySelector("dd[data-field='waiting on']");
      if (dd && root.state === "JOB_STATE_WAITING") dd.textContent = waitingOn(root);
    });
    let payload = { text: "", cut: false };
    // The log's tail: the newest LOG_TAIL lines, followed live.
    const LOG_TAIL = 200;
    const logLines = [];
    const logText = () => logLines.map((l) => "#" + l.attempt + " " + l.text).join("\n");
    const progressOf = (j) => {
      const p = j.progress;
      if (!p) return el("p", { id: "job-progress", class: "muted" }, "No progress reported.");
      const pct = Math.max(0, Math.min(100, Number(p.percent || 0)));
      // Set through the CSSOM: the page's CSP allows no style attributes.
      const fill = el("div", { class: "fill" });
      fill.style.width = pct + "%";
      return el(
        "div",
        { id: "job-progress", class: "progress" },
        el("div", { class: "track" }, fill),
        el("span", { class: "pct" }, pct + "%"),
        " ",
        el("span", { class: "msg" }, p.message || ""),
      );
    };
    const show = (j) => {
      const result = preview(j.result, 4096);
      const field = (name, value) => [el("dt", {}, name), el("dd", { "data-field": name }, value)];
      const actions = [];
      if (!TERMINAL.includes(j.state) && may("Cancel")) {
        actions.push(
          el("button", { id: "job-cancel", onclick: () => act(path + ":cancel") }, "Cancel"),
        );
      }
      if ((j.state === "JOB_STATE_FAILED" || j.state === "JOB_STATE_CANCELLED") && may("RetryJobs")) {
        actions.push(
          el("button", { id: "job-retry", onclick: () => act("/v1/jobs:retry", { ids: [j.id] }) }, "Retry"),
        );
      }
      main.replaceChildren(
        el("h2", {}, "Job ", el("code", { class: "id" }, j.id), " ", stateBadge(j.state)),
        el("div", { class: "actions" }, actions),
        el(
          "dl",
          { class: "job" },
          field("kind", j.kind),
          field("state", short(j.state)),
          field("attempt", num(j.attempt) + " of " + num(j.maxAttempts)),
          field("priority", num(j.priority)),
          field("labels", Object.entries(j.labels || {}).map(([k, v]) => k + "=" + v).join(", ")),
          field("idempotency key", j.idempotencyKey || ""),
          field("ordering key", j.orderingKey || ""),
          j.dedupKey ? field("dedup key", j.dedupKey) : null,
          field("created", when(j.createdAt)),
          field("started", when(j.startedAt)),
          field("finished", when(j.finishedAt)),
          field("next attempt", when(j.nextAttemptAt)),
          j.startBefore ? field("start before", when(j.startBefore)) : null,
          field("timeout", j.timeout || ""),
          field("payload size", num(j.payloadSize) + " bytes"),
          j.state === "JOB_STATE_WAITING" ? field("waiting on", waitingOn(j)) : null,
          (j.parentIds || []).length
            ? field("on parent failure", j.onDependencyFailure === "DEPENDENCY_FAILURE_RUN"
              ? "run anyway, once every parent has finished"
              : "cancelled if a parent fails or is cancelled")
            : null,
        ),
        graph.slot(),
        el("h3", {}, "Progress"),
        progressOf(j),
        el("h3", {}, "Log (newest " + LOG_TAIL + " lines)"),
        el("pre", { id: "job-log" }, logText()),
        el("h3", {}, "Last error"),
        el("pre", { id: "job-error", class: "error" }, j.lastError || ""),
        el("h3", {}, "Attempts"),
        attemptsOf(j),
        el("h3", {}, "Result", result.cut || j.resultTruncated ? " (first part)" : ""),
        el("pre", { id: "job-result" }, result.text),
        el("h3", {}, "Payload", payload.cut ? " (first part)" : ""),
        el("pre", { id: "job-payload" }, payload.text),
      );
    };
    // The attempt history: where each ran and how it ended (a success
    // clears lastError; what went wrong before stays here).
    const attemptsOf = (j) => el(
      "table",
      { id: "job-attempts" },
      el("tr", {}, ...["#", "outcome", "worker", "started", "ended", "error"].map((h) => el("th", {}, h))),
      ...(j.attempts || []).map((a) => el(
        "tr",
        {},
        el("td", { class: "num" }, num(a.attempt)),
        el("td", {}, a.outcome),
        el("td", {}, a.worker || ""),
        el("td", { class: "date" }, when(a.startedAt)),
        el("td", { class: "date" }, when(a.finishedAt)),
        el("td", { class: "error" }, (a.error || "").slice(0, 200)),
      )),
    );
    const act = (p, body) =>
      api("POST", p, body === undefined ? undefined : body)
        .then(() => banner("", ""))
        .catch(failed);
    const first = await api("GET", path);
    // GetStatus alone carries the payload's first 4 KiB; it never changes.
    payload = preview(first.payloadPreview, 4096);
    const whole = Number(first.job.payloadSize || 0);
    if (first.payloadPreview && atob(first.payloadPreview).length < whole) payload.cut = true;
    show(first.job);
    graph.kick();
    refresh = null;
    // The job's own stream: each state change, live; it ends at a terminal
    // state (a retry puts the job back: follow it again).
    const watch = async () => {
      while (!signal.aborted) {
        let last = null;
        await stream(path + "/events", (event, data) => {
          if (event === "message") {
            last = data.job;
            show(data.job);
            graph.kick();
          } else {
            banner(data.message);
          }
        }, signal);
        if (!last || TERMINAL.includes(last.state)) {
          // Wait for a retry to put it back in play.
          await new Promise((r) => setTimeout(r, 1000));
          if (signal.aborted) return;
          const now = (await api("GET", path)).job;
          show(now);
          if (TERMINAL.includes(now.state)) continue;
        }
      }
    };
    watch().catch(failed);
    // The log, followed live from the first line (it ends with the job).
    const followLog = async () => {
      let after = 0;
      while (!signal.aborted) {
        await stream(path + "/logs?follow=true&after=" + after, (event, data) => {
          if (event !== "message") return;
          after = Number(data.seq);
          logLines.push(data);
          if (logLines.length > LOG_TAIL) logLines.shift();
          const pre = $("job-log");
          if (pre) pre.textContent = logText();
        }, signal);
        // Ended with the job; a retry may write more.
        await new Promise((r) => setTimeout(r, 2000));
      }
    };
    followLog().catch(() => {});
  }

  async function kinds() {
    const render = async () => {
      const list = await api("GET", "/v1/kinds");
      main.replaceChildren(
        el("h2", {}, "Kinds"),
        table(
          ["kind", "handler", ["concurrency", "n"], ["queued", "n"], ["running", "n"], "state", "actions"],
          (list.kinds || []).map((k) =>
            el(
              "tr",
              { "data-kind": k.kind },
              el("td", {}, k.kind),
              el("td", {}, k.handler),
              el("td", { class: "n" }, num(k.concurrency)),
              el("td", { class: "n" }, num(k.queued)),
              el("td", { class: "n" }, num(k.running)),
              el("td", { class: "kind-state" }, k.paused ? "paused" : "running"),
              el(
                "td",
                {},
                !may(k.paused ? "ResumeKind" : "PauseKind") ? null : el(
                  "button",
                  {
                    id: (k.paused ? "resume-" : "pause-") + k.kind,
                    onclick: () =>
                      api("POST", "/v1/kinds/" + encodeURIComponent(k.kind) + (k.paused ? ":resume" : ":pause"))
                        .then(render)
                        .catch(failed),
                  },
                  k.paused ? "Resume" : "Pause",
                ),
              ),
            ),
          ),
        ),
      );
    };
    await render();
    follow(render);
  }

  /**
   * The create form of the schedules page (CreateSchedule): the fields of a
   * [[schedules]] entry. The daemon checks them as it checks the config and
   * its refusal (naming the field) shows in the banner.
   */
  function scheduleForm(kindNames, done) {
    const input = (id, placeholder, attrs) => el("input", Object.assign({ id, placeholder, "aria-label": placeholder }, attrs || {}));
    const id = input("schedule-id", "id", { required: true });
    const kind = el(
      "select",
      { id: "schedule-kind", "aria-label": "kind" },
      kindNames.map((k) => el("option", { value: k }, k)),
    );
    const cron = input("schedule-cron", "cron, e.g. 0 3 * * *", { required: true });
    const tz = input("schedule-timezone", "time zone (UTC)");
    const payload = input("schedule-payload", "payload");
    const labels = input("schedule-labels", "labels k=v[,k=v]");
    const overlap = el(
      "select",
      { id: "schedule-overlap", "aria-label": "overlap" },
      el("option", { value: "SCHEDULE_OVERLAP_ALLOW" }, "overlap: allow"),
      el("option", { value: "SCHEDULE_OVERLAP_SKIP" }, "overlap: skip"),
    );
    const catchup = input("schedule-catchup", "catchup, e.g. 600s");
    return el(
      "form",
      {
        class: "filters",
        id: "schedule-create",
        onsubmit: (e) => {
          e.preventDefault();
          const schedule = {
            id: id.value.trim(),
            kind: kind.value,
            cron: cron.value.trim(),
            timezone: tz.value.trim(),
            payload: payload.value,
            labels: {},
            overlap: overlap.value,
          };
          for (const l of labels.value.split(",")) {
            if (!l.trim()) continue;
            const i = l.indexOf("=");
            if (i < 0) return banner("labels: " + JSON.stringify(l.trim()) + " is not k=v");
            schedule.labels[l.slice(0, i).trim()] = l.slice(i + 1).trim();
          }
          if (catchup.value.trim()) schedule.catchup = catchup.value.trim();
          const f = e.target;
          api("POST", "/v1/schedules", { schedule })
            .then((r) => {
              f.reset();
              banner("Created schedule " + r.schedule.id + ".", "info");
              return done();
            })
            .catch(failed);
        },
      },
      id,
      kind,
      cron,
      tz,
      payload,
      labels,
      overlap,
      catchup,
      el("button", { type: "submit", id: "schedule-create-submit" }, "Create schedule"),
    );
  }

  async function schedules() {
    // The table re-renders on live updates; the form stays put (a user
    // typing in it keeps focus and text). Its kinds come from ListKinds.
    // The form is added once the token is known to may create.
    const holder = el("div", { id: "schedules-list" });
    const formBox = el("div", {});
    let form = false;
    main.replaceChildren(el("h2", {}, "Schedules"), holder, formBox);
    const render = async () => {
      if (!form && may("CreateSchedule")) {
        form = true;
        const kinds = await api("GET", "/v1/kinds").catch(() => ({ kinds: [] }));
        formBox.replaceChildren(
          el("h3", {}, "New schedule"),
          scheduleForm((kinds.kinds || []).map((k) => k.kind), () => render()),
        );
      }
      const list = await api("GET", "/v1/schedules");
      const post = (s, verb) => () =>
        api("POST", "/v1/schedules/" + encodeURIComponent(s.id) + ":" + verb)
          .then((r) => {
            if (r.job) banner("Submitted job " + r.job.id + ".", "info");
            return render();
          })
          .catch(failed);
      const remove = (s) => () => {
        if (!confirm("Delete schedule " + s.id + "? Its fires stop on every instance.")) return;
        api("DELETE", "/v1/schedules/" + encodeURIComponent(s.id))
          .then(() => {
            banner("Deleted schedule " + s.id + ".", "info");
            return render();
          })
          .catch(failed);
      };
      if (!(list.schedules || []).length) {
        holder.replaceChildren(
          hint(
            "schedules-empty",
            form ? "No schedules. Create one below, or add one to the config file and restart jobd:"
              : "No schedules. Add one to the config file and restart jobd:",
            el("pre", {}, '[[schedules]]\nid = "nightly"\nkind = "echo"\ncron = "0 3 * * *"'),
          ),
        );
        return;
      }
      const stored = (s) => s.source === "SCHEDULE_SOURCE_API";
      holder.replaceChildren(
        table(
          ["schedule", "kind", "cron", "time zone", "next fire", "last job", "defined in", "actions"],
          (list.schedules || []).map((s) =>
            el(
              "tr",
              { "data-schedule": s.id, "data-source": stored(s) ? "api" : "config" },
              el("td", {}, s.id),
              el("td", {}, s.kind),
              el("td", {}, el("code", {}, s.cron)),
              el("td", {}, s.timezone),
              el("td", { class: "t" }, s.paused ? "paused" : when(s.nextFireAt)),
              el("td", { class: "id" }, s.lastJobId ? el("a", { href: "#/job/" + encodeURIComponent(s.lastJobId) }, s.lastJobId) : ""),
              el("td", {}, stored(s) ? "API" : "config"),
              el(
                "td",
                {},
                may("TriggerSchedule") ? el("button", { onclick: post(s, "trigger") }, "Run now") : null,
                may(s.paused ? "ResumeSchedule" : "PauseSchedule")
                  ? el("button", { onclick: post(s, s.paused ? "resume" : "pause") }, s.paused ? "Resume" : "Pause")
                  : null,
                stored(s) && may("DeleteSchedule")
                  ? el("button", { class: "delete", onclick: remove(s) }, "Delete")
                  : null,
              ),
            ),
          ),
        ),
      );
    };
    await render();
    follow(render);
  }

  async function workers() {
    const render = async () => {
      const list = await api("GET", "/v1/workers");
      if (!(list.workers || []).length) {
        main.replaceChildren(
          el("h2", {}, "Workers"),
          hint(
            "workers-empty",
            "No workers connected. Declare a kind with handler = \"remote\", then run a worker for it:",
            el("pre", {}, "jobd work --kind KIND -- COMMAND"),
            "(or a Python / TypeScript SDK worker).",
          ),
        );
        return;
      }
      main.replaceChildren(
        el("h2", {}, "Workers"),
        table(
          ["worker", "session", "kinds", ["in flight", "n"], "address", "connected", "last seen"],
          (list.workers || []).map((w) =>
            el(
              "tr",
              {},
              el("td", {}, w.workerId),
              el("td", { class: "id" }, w.sessionId),
              el("td", {}, (w.kinds || []).join(", ")),
              el("td", { class: "n" }, num(w.inFlight) + "/" + num(w.maxInFlight)),
              el("td", { class: "id" }, w.address),
              el("td", { class: "t" }, when(w.connectedAt)),
              el("td", { class: "t" }, when(w.lastSeen)),
            ),
          ),
        ),
      );
    };
    await render();
    follow(render);
  }

  /** Asks who the token is; on a refusal, no action is shown. */
  async function identify() {
    try {
      me = await api("GET", "/v1/whoami");
      $("role").textContent = !me.authEnabled
        ? ""
        : "role: " + me.role + (may("RetryJobs") || may("Submit") ? "" : " (read only)");
    } catch (e) {
      me = null;
      $("role").textContent = "";
      throw e;
    }
  }

  function route() {
    stop();
    banner("", "");
    const hash = location.hash.slice(1) || "/overview";
    const [path, query] = hash.split("?");
    const parts = path.split("/").filter(Boolean);
    for (const a of document.querySelectorAll("nav a")) {
      a.className = a.id === "nav-" + parts[0] ? "active" : "";
    }
    let page;
    switch (parts[0]) {
      case "jobs":
        page = jobs(query || "");
        break;
      case "job":
        page = job(decodeURIComponent(parts[1] || ""));
        break;
      case "kinds":
        page = kinds();
        break;
      case "schedules":
        page = schedules();
        break;
      case "workers":
        page = workers();
        break;
      default:
        page = overview();
    }
    page.catch(failed);
  }

  /** Learns who the token is, then shows the page. */
  function start() {
    identify()
      .catch(failed)
      .finally(route);
  }

  $("token").value = token;
  $("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    token = $("token").value.trim();
    sessionStorage.setItem("jobd-token", token);
    start();
  });
  window.addEventListener("hashchange", route);
  start();
})();
