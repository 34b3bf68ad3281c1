// Live progress of a campaign: polls its JSON every 2 s while it can still move, and updates
// the bar and the counts in place (no reload, nothing from another origin).
(function () {
  "use strict";
  var box = document.getElementById("progress");
  if (!box) { return; }
  var moving = ["scheduled", "sending", "paused", "approved"];
  function text(id, value) {
    var el = document.getElementById(id);
    if (el) { el.textContent = value; }
  }
  function render(p) {
    var bar = document.getElementById("progress-bar");
    bar.value = p.percent;
    bar.textContent = p.percent + "%";
    text("progress-done", p.done);
    text("progress-total", p.total);
    text("progress-percent", p.percent);
    text("progress-rate", p.rate_per_minute);
    text("progress-eta", p.eta_seconds ? p.eta_seconds + " s left" : "—");
    text("progress-skipped", p.recipients.skipped);
    text("campaign-state", p.state.replace("_", " "));
    var body = document.getElementById("progress-deliveries");
    body.textContent = "";
    Object.keys(p.deliveries).forEach(function (channel) {
      var row = document.createElement("tr");
      var name = document.createElement("td");
      var counts = document.createElement("td");
      name.textContent = channel;
      counts.textContent = Object.keys(p.deliveries[channel]).map(function (s) {
        return s + ": " + p.deliveries[channel][s];
      }).join(" ");
      row.appendChild(name);
      row.appendChild(counts);
      body.appendChild(row);
    });
    box.dataset.state = p.state;
  }
  function poll() {
    fetch(box.dataset.url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (p) {
        if (p) { render(p); }
        if (!p || moving.indexOf(p.state) >= 0) { window.setTimeout(poll, 2000); }
      })
      .catch(function () { window.setTimeout(poll, 5000); });
  }
  if (moving.indexOf(box.dataset.state) >= 0) { window.setTimeout(poll, 1000); }
}());
