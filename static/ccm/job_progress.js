// Moves a send job's progress bar without reloading: polls the job's progress.json every
// two seconds until the job is completed or cancelled. The page works without it (the figures
// are those of when it was loaded).
(function () {
  "use strict";
  var bar = document.getElementById("job-progress");
  if (!bar || !bar.dataset.url) { return; }
  var text = document.getElementById("job-progress-text");
  var state = document.getElementById("job-state");
  var states = document.getElementById("job-states");

  function render(p) {
    bar.value = p.percent;
    bar.textContent = p.percent + " %";
    var line = p.done + " of " + p.accepted + " done (" + p.percent + " %)";
    if (p.rate_per_s) { line += ", " + p.rate_per_s + " a second"; }
    if (p.eta_s !== null && p.eta_s !== undefined) { line += ", about " + Math.round(p.eta_s) + " s left"; }
    text.textContent = line + ".";
    state.textContent = p.state_label;
    while (states.firstChild) { states.removeChild(states.firstChild); }
    Object.keys(p.by_state).forEach(function (name) {
      var dt = document.createElement("dt");
      dt.textContent = name;
      var dd = document.createElement("dd");
      dd.textContent = p.by_state[name];
      states.appendChild(dt);
      states.appendChild(dd);
    });
  }

  function poll() {
    fetch(bar.dataset.url, { headers: { Accept: "application/json" }, credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (p) {
        if (!p) { return setTimeout(poll, 5000); }
        render(p);
        if (p.state !== "completed" && p.state !== "cancelled") { setTimeout(poll, 2000); }
      })
      .catch(function () { setTimeout(poll, 5000); });
  }
  setTimeout(poll, 1000);
})();
