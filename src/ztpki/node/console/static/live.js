// The overview's live part: fetched again every 5 seconds and swapped in whole (the server
// renders it; the page reads the same without JavaScript, only not live).
(function () {
  "use strict";
  var live = document.getElementById("live");
  if (!live) { return; }
  function refresh() {
    fetch(live.dataset.src, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (answer) {
        if (!answer.ok || answer.redirected) { throw new Error(String(answer.status)); }
        return answer.text();
      })
      .then(function (html) {
        var parsed = new DOMParser().parseFromString(html, "text/html");
        var fragment = parsed.querySelector("main") || parsed.body;
        live.replaceChildren.apply(live, Array.prototype.slice.call(fragment.childNodes));
        live.dataset.refreshed = String(Date.now());
      })
      .catch(function () { live.dataset.stale = "yes"; });
  }
  window.setInterval(refresh, 5000);
})();
