// Live updates for the telework relay console: the server sends `changed` on /events when the
// machines or sessions tables change, and the page fetches itself again and swaps the table.
"use strict";
(function () {
  document.addEventListener("submit", function (e) {
    var message = e.target.getAttribute("data-confirm");
    if (message && !window.confirm(message)) { e.preventDefault(); }
  });
  var live = document.getElementById("live");
  if (!live || !window.EventSource) { return; }
  var refresh = function () {
    fetch(window.location.href, { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
      .then(function (html) {
        var fresh = new DOMParser().parseFromString(html, "text/html").getElementById("live");
        if (fresh) { document.getElementById("live").replaceWith(fresh); }
      })
      .catch(function () {});
  };
  var events = new EventSource("/events");
  events.addEventListener("changed", refresh);
})();
