"use strict";
// The job page's workflow graph: a GetJobGraph reply drawn as SVG by this
// script (no library). Parents above, children below, in layers by their
// distance from the job; each node a link to its job's page, coloured by its
// state through app.css (the same colours as the state badges). Kinds and
// ids go in as text nodes, never as markup.
window.jobdGraph = (function () {
  const NS = "http://www.w3.org/2000/svg";
  // Node size and gaps (px); a graph of more nodes than MAX_NODES shows the
  // first ones the daemon found (nearest first).
  const W = 168;
  const H = 42;
  const GAP_X = 20;
  const GAP_Y = 52;
  const PAD = 6;
  const MAX_NODES = 150;

  function svg(tag, attrs, ...children) {
    const e = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== undefined && v !== null) e.setAttribute(k, String(v));
    }
    for (const c of children) if (c !== null) e.append(c instanceof Node ? c : String(c));
    return e;
  }

  const short = (s) => (s || "").replace("JOB_STATE_", "").toLowerCase();
  const cut = (s, n) => (s.length > n ? s.slice(0, n - 1) + "\u2026" : s);

  /** Neighbours of each id along `edges`, `from` → `to`. */
  function adjacency(edges, from, to) {
    const m = new Map();
    for (const e of edges) {
      if (!m.has(e[from])) m.set(e[from], []);
      m.get(e[from]).push(e[to]);
    }
    return m;
  }

  /** Ids reachable from `root` in `next` (root excluded). */
  function reach(root, next) {
    const seen = new Set();
    const queue = [root];
    while (queue.length) {
      for (const n of next.get(queue.shift()) || []) {
        if (n !== root && !seen.has(n)) {
          seen.add(n);
          queue.push(n);
        }
      }
    }
    return seen;
  }

  /**
   * Each job's layer: 0 for the job, k below for a descendant at the end
   * of a longest path of k edges, -k above for an ancestor; so every edge
   * points down. The graph is acyclic: the relaxation ends within as many
   * rounds as there are jobs.
   */
  function layers(root, edges, up, down) {
    const layer = new Map([[root, 0]]);
    for (const n of up) layer.set(n, -1);
    for (const n of down) layer.set(n, 1);
    for (let round = 0; round <= layer.size; round += 1) {
      let changed = false;
      for (const { parent: p, child: c } of edges) {
        if (down.has(c) && (p === root || down.has(p)) && layer.get(c) < layer.get(p) + 1) {
          layer.set(c, layer.get(p) + 1);
          changed = true;
        }
        if (up.has(p) && (c === root || up.has(c)) && layer.get(p) > layer.get(c) - 1) {
          layer.set(p, layer.get(c) - 1);
          changed = true;
        }
      }
      if (!changed) break;
    }
    return layer;
  }

  /**
   * x and y of each job: layers outward from the job's, each ordered by
   * the mean x of its neighbours already placed (fewer crossings), and
   * centred on the widest layer.
   */
  function place(order, layer, parentsOf, childrenOf) {
    const rows = new Map();
    for (const id of order) {
      const k = layer.get(id);
      if (!rows.has(k)) rows.set(k, []);
      rows.get(k).push(id);
    }
    const keys = [...rows.keys()];
    const top = Math.min(...keys);
    const widest = Math.max(...[...rows.values()].map((r) => r.length));
    const width = widest * W + (widest - 1) * GAP_X;
    const pos = new Map();
    const down = keys.filter((k) => k >= 0).sort((a, b) => a - b);
    const up = keys.filter((k) => k < 0).sort((a, b) => b - a);
    for (const k of [...down, ...up]) {
      const near = k >= 0 ? parentsOf : childrenOf;
      const mean = (id) => {
        const xs = (near.get(id) || []).filter((n) => pos.has(n)).map((n) => pos.get(n).x);
        return xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : 0;
      };
      const row = rows.get(k);
      const means = new Map(row.map((id) => [id, mean(id)]));
      row.sort((a, b) => means.get(a) - means.get(b));
      const offset = (width - (row.length * W + (row.length - 1) * GAP_X)) / 2;
      row.forEach((id, i) => {
        pos.set(id, { x: PAD + offset + i * (W + GAP_X), y: PAD + (k - top) * (H + GAP_Y) });
      });
    }
    const height = (Math.max(...keys) - top + 1) * (H + GAP_Y) - GAP_Y;
    return { pos, width: width + 2 * PAD, height: height + 2 * PAD };
  }

  function node(job, at, self) {
    const state = short(job.state);
    return svg(
      "a",
      {
        href: "#/job/" + encodeURIComponent(job.id),
        class: "node " + state + (self ? " self" : ""),
        "data-id": job.id,
        "data-state": state,
      },
      svg("title", {}, job.kind + " " + job.id + ": " + state),
      svg("rect", { x: at.x, y: at.y, width: W, height: H, rx: 6 }),
      svg("text", { x: at.x + 10, y: at.y + 17, class: "kind" }, cut(job.kind || "", 20)),
      svg(
        "text",
        { x: at.x + 10, y: at.y + 33, class: "sub" },
        state + " \u00b7 \u2026" + job.id.slice(-8),
      ),
    );
  }

  function edge(e, pos) {
    const a = pos.get(e.parent);
    const b = pos.get(e.child);
    const [x1, y1, x2, y2] = [a.x + W / 2, a.y + H, b.x + W / 2, b.y - 2];
    const bend = Math.max(16, (y2 - y1) / 2);
    return svg("path", {
      class: "edge",
      "data-parent": e.parent,
      "data-child": e.child,
      d: `M${x1},${y1} C${x1},${y1 + bend} ${x2},${y2 - bend} ${x2},${y2}`,
      "marker-end": "url(#jobd-arrow)",
    });
  }

  /** The `<svg>` for a GetJobGraph reply (its first job is the page's). */
  function draw(graph) {
    const jobs = (graph.jobs || []).slice(0, MAX_NODES);
    const root = jobs[0].id;
    const byId = new Map(jobs.map((j) => [j.id, j]));
    const edges = (graph.edges || []).filter((e) => byId.has(e.parent) && byId.has(e.child));
    const parentsOf = adjacency(edges, "child", "parent");
    const childrenOf = adjacency(edges, "parent", "child");
    const up = reach(root, parentsOf);
    const down = reach(root, childrenOf);
    const shown = jobs.filter((j) => j.id === root || up.has(j.id) || down.has(j.id));
    const layer = layers(root, edges, up, down);
    const { pos, width, height } = place(shown.map((j) => j.id), layer, parentsOf, childrenOf);
    const drawn = edges.filter((e) => pos.has(e.parent) && pos.has(e.child));
    const arrow = svg(
      "marker",
      { id: "jobd-arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto" },
      svg("path", { d: "M0,0 L10,5 L0,10 z" }),
    );
    return svg(
      "svg",
      {
        id: "job-graph-svg",
        width,
        height,
        viewBox: `0 0 ${width} ${height}`,
        role: "img",
        "aria-label": shown.length + " jobs, " + drawn.length + " dependencies",
        "data-nodes": shown.length,
        "data-edges": drawn.length,
      },
      svg("defs", {}, arrow),
      svg("g", { class: "edges" }, ...drawn.map((e) => edge(e, pos))),
      svg("g", { class: "nodes" }, ...shown.map((j) => node(j, pos.get(j.id), j.id === root))),
    );
  }

  /**
   * Keeps a view fresh: the returned `kick()` calls `load` (async; true
   * while what it shows may still change) now, and again every POLL_MS
   * while it says so, for at most POLL_FOR_MS after the last kick, until
   * `signal` aborts. One call at a time: kicks during one (a burst of
   * progress events) make one more call, GAP_MS after it. A failed load
   * stops the polling until the next kick.
   */
  const POLL_MS = 2000;
  const GAP_MS = 500;
  const POLL_FOR_MS = 30 * 60 * 1000;
  function poller(load, signal) {
    let [busy, again, until, next] = [false, false, 0, null];
    const run = async () => {
      if (signal.aborted) return;
      if (busy) return void (again = true);
      busy = true;
      clearTimeout(next);
      let live = false;
      try {
        for (;;) {
          again = false;
          live = await load();
          if (!again || signal.aborted) break;
          await new Promise((r) => setTimeout(r, GAP_MS));
        }
      } catch (_) {
        live = false;
      } finally {
        busy = false;
      }
      clearTimeout(next);
      if (live && !signal.aborted && Date.now() < until) next = setTimeout(run, POLL_MS);
    };
    return () => {
      until = Date.now() + POLL_FOR_MS;
      run();
    };
  }

  return { draw, poller, MAX_NODES };
})();
