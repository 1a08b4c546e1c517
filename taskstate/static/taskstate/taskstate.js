/* dramatiq-taskstate: keep each task list's event stream alive.
 *
 * htmx's hx-sse reconnects when an open stream ends or fails. Two cases it leaves alone:
 * a first connection that fails (it is then an ordinary failed request), and a connection
 * that dies silently (a laptop waking up, a proxy or NAT forgetting it). django-eventstream
 * sends a keep-alive every 20 seconds, so a stream silent for much longer, a browser that
 * just came back online, or a failed first connection (after a growing pause) gets a
 * fresh connection. Every new connection starts with a "stream-open" event, on which the
 * list re-reads its rows from the server.
 */
(function () {
  "use strict";
  var SILENT_MS = 50000;
  var MAX_PAUSE_MS = 60000;
  var SELECTOR = "[data-taskstate-stream]";

  function isStream(element) {
    return element && element.matches && element.matches(SELECTOR);
  }

  function heard(stream) {
    stream.taskstateHeardAt = Date.now();
  }

  function restart(stream, pause) {
    if (!stream.isConnected) return;
    var fresh = stream.cloneNode(false);
    fresh.taskstatePause = pause || 0;
    heard(fresh);
    stream.replaceWith(fresh);
    window.htmx.process(fresh);
  }

  function each(fn) {
    Array.prototype.forEach.call(document.querySelectorAll(SELECTOR), fn);
  }

  document.addEventListener("htmx:sse:before:message", function (event) {
    if (isStream(event.target)) heard(event.target);
  });
  document.addEventListener("htmx:sse:after:connection", function (event) {
    if (isStream(event.target)) {
      heard(event.target);
      event.target.taskstatePause = 0;
    }
  });
  // A first connection that failed is not retried by hx-sse: try again, pausing longer each time.
  ["htmx:error", "htmx:response:error"].forEach(function (name) {
    document.addEventListener(name, function (event) {
      var stream = event.target;
      if (!isStream(stream) || stream.taskstateRetrying) return;
      stream.taskstateRetrying = true;
      var pause = Math.min(Math.max((stream.taskstatePause || 0) * 2, 1000), MAX_PAUSE_MS);
      window.setTimeout(function () { restart(stream, pause); }, pause);
    });
  });
  document.addEventListener("DOMContentLoaded", function () { each(heard); });
  window.addEventListener("online", function () { each(function (s) { restart(s); }); });
  window.setInterval(function () {
    each(function (stream) {
      if (Date.now() - (stream.taskstateHeardAt || Date.now()) > SILENT_MS) restart(stream);
    });
  }, 5000);
})();
