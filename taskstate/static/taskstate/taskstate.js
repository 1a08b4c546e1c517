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
 * before); a task's bar also carries when its row was written (data-taskstate-updated,
 * microseconds), which tells apart the progress reports of one attempt: they share a key.
 * Events from the sender and from workers travel different roads and may arrive out of
 * order; before htmx swaps anything, an incoming row or bar older than the one shown is
 * replaced by a copy of the one shown, so the swap leaves it as it is. A row
 * removed from the page (dismissed, here or in another tab) is left out of any later swap:
 * a resync read before the removal would otherwise bring it back. A row swapped for a
 * newer copy keeps the keyboard focus: on the same control, else on its description.
 *
 * While a stream is down the list says "Reconnecting…" and marks its rows as possibly out
 * of date (data-taskstate-stale); the resync that follows a new connection clears both.
 * A server that cannot stream at all (WSGI: runserver, gunicorn) answers with a
 * "stream-unavailable" error: the list then says what the server needs, once, and asks
 * again only after a long pause that grows each time (htmx would ask twice a second).
 * Times (<time data-taskstate-relative>) read "2 minutes ago" in the list's language, with
 * the date and time in the browser's time zone on hover. A task seen to finish is announced
 * once in the list's live region; while the tab is hidden, the page title counts finished
 * tasks and, if the user opted in with the list's "Notify me" button, the browser shows a
 * notification (lists with data-taskstate-notify only; the permission prompt comes from
 * that button alone, never on page load).
 */
(function () {
  "use strict";
  var SILENT_MS = 50000;
  var MAX_PAUSE_MS = 5000;
  var UNAVAILABLE_PAUSE_MS = 300000;
  var MAX_UNAVAILABLE_PAUSE_MS = 3600000;
  var UNAVAILABLE = "data-taskstate-unavailable";
  var SELECTOR = "[data-taskstate-stream]";

  function isStream(element) {
    return element && element.matches && element.matches(SELECTOR);
  }

  function heard(stream) {
    stream.taskstateHeardAt = Date.now();
  }

  function restart(stream, pause) {
    if (!stream.isConnected) return;
    // Asking again a server that said it cannot stream: its message stays until it can.
    if (!stream.hasAttribute(UNAVAILABLE)) markStale(stream, true);
    var fresh = stream.cloneNode(false);
    fresh.taskstatePause = pause || 0;
    fresh.taskstateUnavailablePause = stream.taskstateUnavailablePause || 0;
    heard(fresh);
    stream.replaceWith(fresh);
    window.htmx.process(fresh);
  }

  // --- connection state -----------------------------------------------------------------
  function listOf(element) {
    return element && element.closest ? element.closest(".taskstate") : null;
  }

  function markStale(element, stale) {
    var list = listOf(element);
    if (!list) return;
    var rows = list.querySelector(".taskstate-rows");
    var indicator = list.querySelector("[data-taskstate-connection]");
    if (rows) rows.toggleAttribute("data-taskstate-stale", stale);
    if (indicator) {
      var text = stale ? indicator.getAttribute("data-taskstate-reconnecting") : "";
      if (indicator.textContent !== text) indicator.textContent = text;
      indicator.classList.remove("taskstate-connection-off");
    }
  }

  document.addEventListener("htmx:sse:before:connection", function (event) {
    var connection = event.detail && event.detail.connection;
    if (isStream(event.target) && connection && connection.attempt > 0) markStale(event.target, true);
  });
  document.addEventListener("htmx:sse:error", function (event) {
    if (isStream(event.target)) markStale(event.target, true);
  });
  // The resync after a (re)connection brought the rows up to date.
  document.addEventListener("htmx:after:swap", function (event) {
    var target = event.target;
    if (target && target.matches && target.matches(".taskstate-rows")) markStale(target, false);
  });

  function each(fn) {
    Array.prototype.forEach.call(document.querySelectorAll(SELECTOR), fn);
  }

  // The server cannot stream (django-eventstream's error event, condition from the view).
  // The element is replaced, which ends htmx's reconnection loop; a copy asks again later.
  document.addEventListener("stream-error", function (event) {
    var stream = event.target;
    if (!isStream(stream)) return;
    var condition = "";
    try { condition = JSON.parse(event.detail.data).condition; } catch (e) { return; }
    if (condition !== "stream-unavailable") return;
    var list = listOf(stream);
    var indicator = list && list.querySelector("[data-taskstate-connection]");
    if (indicator) {
      var text = indicator.getAttribute(UNAVAILABLE) || "";
      if (indicator.textContent !== text) indicator.textContent = text;
      indicator.classList.add("taskstate-connection-off");
    }
    var rows = list && list.querySelector(".taskstate-rows");
    if (rows) rows.removeAttribute("data-taskstate-stale");
    var pause = Math.min(Math.max((stream.taskstateUnavailablePause || 0) * 2, UNAVAILABLE_PAUSE_MS),
                         MAX_UNAVAILABLE_PAUSE_MS);
    var waiting = stream.cloneNode(false);
    waiting.setAttribute(UNAVAILABLE, "");
    waiting.taskstateUnavailablePause = pause;
    stream.replaceWith(waiting);
    window.setTimeout(function () { restart(waiting); }, pause);
  });
  document.addEventListener("stream-open", function (event) {
    if (isStream(event.target)) event.target.removeAttribute(UNAVAILABLE);
  });

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
      stream.removeAttribute(UNAVAILABLE); // no answer at all this time: the usual pauses
      markStale(stream, true);
      stream.taskstateRetrying = true;
      var pause = Math.min(Math.max((stream.taskstatePause || 0) * 2, 1000), MAX_PAUSE_MS);
      window.setTimeout(function () { restart(stream, pause); }, pause);
    });
  });
  function numberOf(element, name) {
    var value = element.getAttribute(name);
    return value === null || value === "" ? NaN : Number(value);
  }

  function isOlder(element, than) {
    var order = numberOf(element, "data-taskstate-order");
    var shown = numberOf(than, "data-taskstate-order");
    if (order !== shown) return order < shown;
    return numberOf(element, "data-taskstate-updated") < numberOf(than, "data-taskstate-updated");
  }

  // Rows this page saw removed (dismissed here or in another tab, deleted). A removed task
  // never comes back, but a resync read before its removal may still carry it.
  var removed = new Set();

  function noteRemoval(task) {
    var target = task.target;
    if (task.swapSpec && task.swapSpec.style === "delete" && target && target.id &&
        target.id.indexOf("taskstate-task-") === 0) removed.add(target.id);
  }

  // Swap tasks (htmx 4: the detail of htmx:before:swap) each carry a fragment to insert.
  function keepNewer(fragment) {
    if (!fragment || !fragment.querySelectorAll) return;
    var incoming = fragment.querySelectorAll("[id][data-taskstate-order]");
    Array.prototype.forEach.call(incoming, function (element) {
      if (!fragment.contains(element)) return; // inside a row already replaced
      if (removed.has(element.id)) { element.remove(); return; }
      var shown = document.getElementById(element.id);
      if (!shown || !shown.hasAttribute("data-taskstate-order")) return;
      if (isOlder(element, shown)) element.replaceWith(shown.cloneNode(true));
    });
  }

  document.addEventListener("htmx:before:swap", function (event) {
    var tasks = event.detail && event.detail.tasks;
    if (!tasks) return;
    tasks.forEach(noteRemoval);
    tasks.forEach(function (task) { keepNewer(task.fragment); });
  });

  // --- focus ---------------------------------------------------------------------------
  // A row swapped for its next state would take the keyboard focus away with it (htmx
  // keeps focus only in innerHTML and outerHTML swaps, and only on an element with an id).
  // The focus moves to the same control in the new row (the same form: Cancel, Retry,
  // Dismiss; else the same classes or element), never to another action: without one it
  // goes to the row's description, from which Tab reaches the row's controls.
  var CONTROLS = "button, a[href], summary, [tabindex]:not([tabindex='-1'])";
  // A swap ends within milliseconds; an older record (a deleted row's swap ends unheard)
  // must not pull back a focus the user let go of since.
  var FOCUS_KEPT_MS = 1000;
  var focusedControl = null;

  function controlKey(control) {
    var owner = control.closest("form") || control;
    var classes = Array.prototype.filter.call(owner.classList, function (name) {
      return name.indexOf("htmx-") !== 0; // htmx-request and the like come and go
    });
    return classes.join(" ") || owner.tagName;
  }

  function focusIn(element) {
    element.focus({preventScroll: true});
    return document.activeElement === element;
  }

  document.addEventListener("htmx:before:swap", function () {
    var active = document.activeElement;
    var row = active && active.closest && active.closest("li[id^='taskstate-task-']");
    // Kept when the focus is already lost: a swap of another row may come in between.
    if (row) focusedControl = {row: row.id, key: controlKey(active), at: Date.now()};
  });
  document.addEventListener("htmx:after:swap", function () {
    var was = focusedControl;
    var active = document.activeElement;
    if (!was) return;
    focusedControl = null;
    if (active && active !== document.body) return; // the swap left the focus where it was
    if (Date.now() - was.at > FOCUS_KEPT_MS) return;
    var row = document.getElementById(was.row);
    if (!row) return; // removed: dismissed, here or in another tab
    var same = Array.prototype.filter.call(row.querySelectorAll(CONTROLS), function (control) {
      return controlKey(control) === was.key;
    });
    if (same.length && focusIn(same[0])) return;
    var description = row.querySelector(".taskstate-description");
    if (!description) return;
    if (!description.hasAttribute("tabindex")) description.setAttribute("tabindex", "-1");
    focusIn(description);
  });
  // --- times ---------------------------------------------------------------------------
  var UNITS = [["year", 31536000], ["month", 2592000], ["week", 604800], ["day", 86400],
               ["hour", 3600], ["minute", 60]];

  function languageOf(element) {
    var owner = element.closest("[lang]");
    return (owner && owner.getAttribute("lang")) || undefined;
  }

  function relative(seconds, lang) {
    var format = new Intl.RelativeTimeFormat(lang, {numeric: "auto"});
    for (var i = 0; i < UNITS.length; i++) {
      if (Math.abs(seconds) >= UNITS[i][1]) {
        return format.format(-Math.floor(seconds / UNITS[i][1]), UNITS[i][0]);
      }
    }
    if (seconds < 10) return format.format(0, "second"); // "now"
    return format.format(-Math.floor(seconds / 10) * 10, "second");
  }

  function showTimes(root) {
    if (!window.Intl || !Intl.RelativeTimeFormat) return;
    var times = (root || document).querySelectorAll("time[data-taskstate-relative]");
    Array.prototype.forEach.call(times, function (time) {
      var when = new Date(time.getAttribute("datetime"));
      if (isNaN(when.getTime())) return;
      var lang = languageOf(time);
      try {
        var text = relative((Date.now() - when.getTime()) / 1000, lang);
        if (time.textContent !== text) time.textContent = text;
        if (!time.title) {
          time.title = new Intl.DateTimeFormat(lang, {dateStyle: "medium", timeStyle: "long"})
            .format(when);
        }
      } catch (e) { /* an unknown language tag: keep the server's text */ }
    });
  }

  // --- finished tasks: announced once, counted in the title, notified --------------------
  var COMPLETE = {done: true, failed: true, skipped: true, cancelled: true};
  var known = {};
  var hiddenFinished = 0;
  var plainTitle = null;
  var NOTIFY_KEY = "taskstate-notify";

  function rows() {
    return document.querySelectorAll(".taskstate li.taskstate-task[id]");
  }

  function remember() {
    Array.prototype.forEach.call(rows(), function (row) { known[row.id] = row.dataset.status; });
  }

  function textOf(row, selector) {
    var element = row.querySelector(selector);
    return element ? element.textContent.trim() : "";
  }

  function notifyWanted() {
    try {
      return window.Notification && Notification.permission === "granted" &&
        window.localStorage.getItem(NOTIFY_KEY) === "on";
    } catch (e) { return false; }
  }

  function finished(row, list) {
    var name = textOf(row, ".taskstate-description");
    var state = textOf(row, ".taskstate-status-text") || row.dataset.status;
    var announcer = list.querySelector("[data-taskstate-announcer]");
    if (announcer) {
      var line = document.createElement("p");
      line.textContent = name + ": " + state;
      announcer.appendChild(line);
      while (announcer.childNodes.length > 3) announcer.removeChild(announcer.firstChild);
    }
    if (!list.hasAttribute("data-taskstate-notify") || document.visibilityState === "visible") return;
    if (plainTitle === null) plainTitle = document.title;
    hiddenFinished += 1;
    document.title = "(" + hiddenFinished + ") " + plainTitle;
    if (notifyWanted()) {
      try {
        new Notification(name, {body: state, tag: row.id, lang: languageOf(row) || ""});
      } catch (e) { /* some mobile browsers allow notifications from a service worker only */ }
    }
  }

  function look() {
    Array.prototype.forEach.call(rows(), function (row) {
      var before = known[row.id];
      var now = row.dataset.status;
      known[row.id] = now;
      if (COMPLETE[now] && before !== now && !COMPLETE[before]) {
        var list = listOf(row);
        if (list) finished(row, list);
      }
    });
    showTimes();
  }

  var looking = false;
  function lookSoon() {
    if (looking) return;
    looking = true;
    window.setTimeout(function () { looking = false; look(); }, 0);
  }

  document.addEventListener("visibilitychange", function () {
    if (document.visibilityState === "visible" && plainTitle !== null) {
      document.title = plainTitle;
      plainTitle = null;
      hiddenFinished = 0;
    }
  });

  function setUpNotifyButton(button) {
    if (!window.Notification || Notification.permission === "denied") return;
    var update = function () { button.setAttribute("aria-pressed", notifyWanted() ? "true" : "false"); };
    update();
    button.hidden = false;
    button.addEventListener("click", function () {
      if (notifyWanted()) {
        window.localStorage.setItem(NOTIFY_KEY, "off");
        update();
        return;
      }
      Promise.resolve(Notification.requestPermission()).then(function (permission) {
        if (permission === "granted") window.localStorage.setItem(NOTIFY_KEY, "on");
        if (permission === "denied") button.hidden = true;
        update();
      });
    });
  }

  function start() {
    each(heard);
    remember();
    showTimes();
    new MutationObserver(lookSoon).observe(document.body, {
      childList: true, subtree: true, attributes: true, attributeFilter: ["data-status"]
    });
    Array.prototype.forEach.call(
      document.querySelectorAll("[data-taskstate-notify-button]"), setUpNotifyButton);
    window.setInterval(showTimes, 10000);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
  // A stream waiting out a server that cannot stream asks again when its pause ends only.
  window.addEventListener("online", function () {
    each(function (s) { if (!s.hasAttribute(UNAVAILABLE)) restart(s); });
  });
  window.setInterval(function () {
    each(function (stream) {
      if (stream.hasAttribute(UNAVAILABLE)) return;
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
    if (!list || !window.htmx || !list.isConnected) return;
    // A row swapped in moments ago may not be set up by htmx yet: a trigger on a list
    // without its hx-get listener would load nothing (process() skips a list set up).
    window.htmx.process(list);
    window.htmx.trigger(list, "taskstate-expand");
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
