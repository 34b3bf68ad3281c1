// The dashboard's "Work in progress" table: polls /ops/progress.json every 2 s and moves each
// bar, adds work that started and drops work that left, without reloading. Built with DOM
// calls (no innerHTML), nothing from another origin. Without JavaScript the table shows the
// figures of when the page was loaded.
(function () {
  "use strict";
  var table = document.getElementById("work");
  if (!table || !table.dataset.url) { return; }
  var body = table.tBodies[0];

  function cell(tag, text, className) {
    var el = document.createElement(tag);
    if (tag === "th") { el.scope = "row"; }
    if (className) { el.className = className; }
    if (text !== undefined) { el.textContent = text; }
    return el;
  }

  function link(href, text) {
    var a = document.createElement("a");
    a.href = href;
    a.textContent = text;
    return a;
  }

  function row(w) {
    var tr = document.createElement("tr");
    tr.dataset.key = w.key;
    var name = cell("th");
    name.appendChild(w.url ? link(w.url, w.label) : document.createTextNode(w.label));
    var bar = document.createElement("progress");
    bar.max = 100;
    bar.setAttribute("aria-label", w.label);
    var barCell = cell("td");
    barCell.appendChild(bar);
    var recon = cell("td");
    if (w.reconcile_url) { recon.appendChild(link(w.reconcile_url, "Reconcile")); } else { recon.textContent = "\u2013"; }
    tr.appendChild(name);
    tr.appendChild(cell("td", "", "work-state"));
    tr.appendChild(barCell);
    tr.appendChild(cell("td", "", "work-done"));
    tr.appendChild(recon);
    return tr;
  }

  function render(work) {
    var seen = {};
    var existing = {};
    Array.prototype.forEach.call(body.querySelectorAll("tr[data-key]"), function (tr) {
      existing[tr.dataset.key] = tr;
    });
    work.forEach(function (w) {
      var tr = existing[w.key] || row(w);
      seen[w.key] = true;
      var bar = tr.querySelector("progress");
      bar.value = w.percent;
      bar.textContent = w.percent + " %";
      tr.querySelector(".work-state").textContent = w.state;
      tr.querySelector(".work-done").textContent = w.done + " of " + w.total + " (" + w.percent + " %)";
      body.appendChild(tr);  // keeps the server's order
    });
    Object.keys(existing).forEach(function (key) {
      if (!seen[key]) { body.removeChild(existing[key]); }
    });
    var none = body.querySelector("tr.work-none");
    if (work.length && none) { body.removeChild(none); }
    if (!work.length && !none) {
      var empty = document.createElement("tr");
      empty.className = "work-none";
      var td = cell("td", "No long work under way.", "muted");
      td.colSpan = 5;
      empty.appendChild(td);
      body.appendChild(empty);
    }
  }

  function poll() {
    fetch(table.dataset.url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (p) {
        if (p) { render(p.work); }
        window.setTimeout(poll, p ? 2000 : 5000);
      })
      .catch(function () { window.setTimeout(poll, 5000); });
  }
  window.setTimeout(poll, 1000);
}());
