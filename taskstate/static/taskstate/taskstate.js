/* dramatiq-taskstate: keep each task list's event stream alive.
 *
 * htmx's hx-sse reconnects when an open stream ends or fails. Two cases it leaves alone:
 * a first connection that fails (it is then an ordinary failed request), and a connection
 * that dies silently (a laptop waking up, a proxy or NAT forgetting it). django-eventstream
 * sends a keep-alive every 20 seconds, so a stream silent for much longer, a browser that
 * just came back online, or a failed first connection (after a growing pause) gets a
 * fresh connection. Every new connection starts with a "stream-open" event, on which the
 * list re-reads its rows from the server.
 *
 * It also keeps the page from going backwards. Rows and progress bars carry their task's
 * order key (data-taskstate-order: each state of a task has a higher one than the state
 * before). Events from the sender and from workers travel different roads and may arrive
 * out of order; before htmx swaps anything, an incoming row or bar older than the one
 * shown is replaced by a copy of the one shown, so the swap leaves it as it is.
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
  function orderOf(element) {
    var value = element.getAttribute("data-taskstate-order");
    return value === null || value === "" ? NaN : Number(value);
  }

  // Swap tasks (htmx 4: the detail of htmx:before:swap) each carry a fragment to insert.
  function keepNewer(fragment) {
    if (!fragment || !fragment.querySelectorAll) return;
    var incoming = fragment.querySelectorAll("[id][data-taskstate-order]");
    Array.prototype.forEach.call(incoming, function (element) {
      if (!fragment.contains(element)) return; // inside a row already replaced
      var shown = document.getElementById(element.id);
      if (!shown || !shown.hasAttribute("data-taskstate-order")) return;
      if (orderOf(shown) > orderOf(element)) element.replaceWith(shown.cloneNode(true));
    });
  }

  document.addEventListener("htmx:before:swap", function (event) {
    var tasks = event.detail && event.detail.tasks;
    if (!tasks) return;
    tasks.forEach(function (task) { keepNewer(task.fragment); });
  });
  document.addEventListener("DOMContentLoaded", function () { each(heard); });
  window.addEventListener("online", function () { each(function (s) { restart(s); }); });
  window.setInterval(function () {
    each(function (stream) {
      if (Date.now() - (stream.taskstateHeardAt || Date.now()) > SILENT_MS) restart(stream);
    });
  }, 5000);
})();

/* dramatiq-taskstate: the expandable rows of groups and pipelines.
 *
 * A group's row holds a closed <details> with an empty list of its children. Opening it
 * loads the children (htmx GET of the children partial). The row itself is replaced
 * whenever the group changes (at most once per GROUP_INTERVAL): an open list stays open,
 * keeps what it showed, and reloads, so the children follow the group live while shown
 * and cost nothing while closed.
 */
(function () {
  "use strict";
  var SELECTOR = "details[data-taskstate-children]";

  function listOf(details) {
    return details.querySelector("ul[hx-get]");
  }

  function load(details) {
    var list = listOf(details);
    if (list && window.htmx) window.htmx.trigger(list, "taskstate-expand");
  }

  // toggle does not bubble: listen in the capture phase.
  document.addEventListener("toggle", function (event) {
    var details = event.target;
    if (details.matches && details.matches(SELECTOR) && details.open) load(details);
  }, true);

  document.addEventListener("htmx:before:swap", function (event) {
    var tasks = event.detail && event.detail.tasks;
    if (!tasks) return;
    tasks.forEach(function (task) {
      var fragment = task.fragment;
      if (!fragment || !fragment.querySelectorAll) return;
      Array.prototype.forEach.call(fragment.querySelectorAll(SELECTOR), function (incoming) {
        var list = listOf(incoming);
        var shownList = list && document.getElementById(list.id);
        var shown = shownList && shownList.closest(SELECTOR);
        if (!shown || !shown.open) return;
        incoming.setAttribute("open", "");
        list.innerHTML = shownList.innerHTML;
        list.setAttribute("data-taskstate-reload", "");
      });
    });
  });

  document.addEventListener("htmx:after:swap", function () {
    Array.prototype.forEach.call(
      document.querySelectorAll("ul[data-taskstate-reload]"),
      function (list) {
        list.removeAttribute("data-taskstate-reload");
        var details = list.closest(SELECTOR);
        if (details && details.open) load(details);
      }
    );
  });
})();
