// The operator console: fetches /console/data.json with the operator credential and draws
// the charts with the vendored Chart.js (no hand-drawn SVG). The credential comes from the
// URL fragment (#token=...), which browsers never send to the server or write to logs.
// Once every chart has rendered, the page writes what it drew (labels, data, and how many
// canvas pixels are painted) into <pre id="rendered">, which the headless-browser test reads.
"use strict";

(function () {
  const COLORS = ["#c0392b", "#2471a3", "#239b56", "#b9770e", "#7d3c98", "#5d6d7e"];

  function token() {
    const m = /(?:^|[#&])token=([^&]+)/.exec(window.location.hash);
    return m ? decodeURIComponent(m[1]) : null;
  }

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }

  function table(container, columns, rows) {
    const t = el("table");
    const head = el("tr");
    columns.forEach((c) => head.appendChild(el("th", c)));
    t.appendChild(head);
    rows.forEach((r) => {
      const tr = el("tr");
      columns.forEach((c) => tr.appendChild(el("td", r[c] === null ? "" : r[c])));
      t.appendChild(tr);
    });
    if (!rows.length) {
      const tr = el("tr");
      const td = el("td", "none", "empty");
      td.colSpan = columns.length;
      tr.appendChild(td);
      t.appendChild(tr);
    }
    container.replaceChildren(t);
  }

  function painted(canvas) {
    // How many pixels of the canvas are not transparent: proof the chart drew something.
    const ctx = canvas.getContext("2d");
    const px = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
    let n = 0;
    for (let i = 3; i < px.length; i += 4) if (px[i] !== 0) n++;
    return n;
  }

  function draw(id, spec) {
    const canvas = document.getElementById(id);
    const chart = new window.Chart(canvas, {
      type: spec.type,
      data: {
        labels: spec.labels,
        datasets: spec.datasets.map((d, i) => ({
          label: d.label,
          data: d.data,
          backgroundColor: spec.type === "doughnut" ? COLORS : COLORS[i % COLORS.length],
        })),
      },
      options: {
        animation: false,
        responsive: false,
        plugins: { title: { display: true, text: spec.title } },
        scales: spec.type === "doughnut" ? {} : { y: { beginAtZero: true, ticks: { precision: 0 } } },
      },
    });
    return {
      type: chart.config.type,
      labels: chart.data.labels.slice(),
      datasets: chart.data.datasets.map((d) => ({ label: d.label, data: d.data.slice() })),
      painted: painted(canvas),
    };
  }

  function report(result) {
    const out = document.getElementById("rendered");
    out.textContent = JSON.stringify(result);
    document.body.dataset.rendered = result.error ? "error" : "ok";
  }

  async function main() {
    const status = document.getElementById("status");
    const headers = {};
    const t = token();
    if (t) headers.Authorization = "Bearer " + t;
    let resp;
    try {
      resp = await fetch("data.json", { headers: headers, cache: "no-store" });
    } catch (e) {
      status.textContent = "cannot reach the platform: " + e;
      report({ error: "fetch failed" });
      return;
    }
    if (!resp.ok) {
      status.textContent =
        resp.status === 401 || resp.status === 403
          ? "operator credential needed: open this page as /console/#token=<operator token>"
          : "the platform answered " + resp.status;
      report({ error: "HTTP " + resp.status });
      return;
    }
    const data = await resp.json();
    const rendered = { charts: {}, generated_at: data.generated_at };
    for (const [id, spec] of Object.entries(data.charts)) rendered.charts[id] = draw(id, spec);
    table(document.getElementById("overdue-summaries"),
      ["unit", "name", "department", "quarter", "status", "due", "received_at"],
      data.overdue_summaries);
    table(document.getElementById("overdue-lifts"),
      ["unit", "entry_id", "measure", "revoked_at", "due", "days_overdue"],
      data.overdue_lifts);
    table(document.getElementById("units"),
      ["unit", "name", "department", "region", "freshness", "last_list_version",
        "versions_behind", "last_report_at"],
      data.units);
    table(document.getElementById("flags"), ["unit", "quarter", "kind", "measure", "reasons"],
      data.flags.map((f) => Object.assign({}, f, { reasons: f.reasons.join("; ") })));
    status.textContent =
      "as of " + data.generated_at + ", list version " + (data.current_version ?? "unknown") +
      "; summaries due " + data.due_days + " days after each quarter, lifts within " +
      data.lift_working_days + " working days";
    rendered.overdue_summaries = data.overdue_summaries.length;
    rendered.overdue_lifts = data.overdue_lifts.length;
    report(rendered);
  }

  main().catch((e) => report({ error: String(e) }));
})();
