// airlock console: small progressive enhancements. Every page works without this file.
"use strict";
(function () {
  // The live apply log: while a run applies, poll its status and log and show them as text.
  var live = document.getElementById("live");
  if (live && live.dataset.url && live.dataset.status === "applying") {
    var status = document.getElementById("live-status");
    var log = document.getElementById("live-log");
    var timer = setInterval(function () {
      fetch(live.dataset.url, { credentials: "same-origin", headers: { "Accept": "application/json" } })
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (j) {
          if (!j) { return; }
          if (status) { status.textContent = j.status; }
          if (log && typeof j.log === "string") { log.textContent = j.log; }
          if (j.status !== "applying") { clearInterval(timer); window.location.reload(); }
        })
        .catch(function () {});
    }, 2000);
  }
  // Approve: the button waits until the destroy count is typed exactly (the server checks again).
  var confirm = document.getElementById("confirm-destroy");
  var approve = document.getElementById("approve-button");
  if (confirm && approve && !approve.hasAttribute("data-refused")) {
    var want = confirm.dataset.destroys;
    var sync = function () { approve.disabled = confirm.value.trim() !== want; };
    confirm.addEventListener("input", sync);
    sync();
  }
})();
