// Switchyard console: live refresh of [data-refresh] fragments, select-all and selection counts
// for bulk forms, and confirmation of dangerous buttons. Plain DOM, no framework; the pages work
// without it (forms post, links link), it only saves reloading.
"use strict";

(function () {
  var REFRESH_MS = 3000;

  // Re-fetch each [data-refresh] element's fragment every few seconds while the tab is visible.
  // The fragment is HTML the server rendered (and escaped); a redirect means the session ended.
  function refresh(el) {
    if (document.hidden || el.dataset.busy) return;
    el.dataset.busy = "1";
    fetch(el.dataset.refresh, { credentials: "same-origin", redirect: "follow" })
      .then(function (r) {
        if (r.redirected) { window.location.reload(); return null; }
        return r.ok ? r.text() : null;
      })
      .then(function (html) {
        if (html !== null) {
          el.innerHTML = html;
          el.dataset.refreshed = String(Number(el.dataset.refreshed || 0) + 1);
        }
      })
      .catch(function () {})
      .then(function () { delete el.dataset.busy; });
  }

  function counts() {
    document.querySelectorAll("[data-count-of]").forEach(function (el) {
      var name = el.dataset.countOf;
      var n = document.querySelectorAll('input[type=checkbox][name="' + name + '"]:checked').length;
      el.textContent = n + " selected";
    });
  }

  document.addEventListener("change", function (e) {
    var t = e.target;
    if (t.dataset && t.dataset.selectAll) {
      document.querySelectorAll('input[type=checkbox][name="' + t.dataset.selectAll + '"]')
        .forEach(function (box) { box.checked = t.checked; });
    }
    counts();
  });

  document.addEventListener("click", function (e) {
    var t = e.target.closest ? e.target.closest("[data-confirm]") : null;
    if (t && !window.confirm(t.dataset.confirm)) e.preventDefault();
  });

  document.addEventListener("DOMContentLoaded", function () {
    counts();
    document.querySelectorAll("[data-refresh]").forEach(function (el) {
      setInterval(function () { refresh(el); }, REFRESH_MS);
    });
  });
})();
