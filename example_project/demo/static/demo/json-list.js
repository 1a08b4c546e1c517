/* The user's task list from taskstate's JSON endpoints: no htmx, no build step.
 *
 * fetch() reads the list (taskstate:json-list) whenever the stream opens or is reset, so a
 * missed event never leaves the page wrong for long; EventSource (taskstate:json-events)
 * brings each change: "task" (a whole row), "progress" (a bar) and "removed" (ids). A row
 * or bar is shown only if its order is not lower than the one on the page: events and a
 * list read may arrive out of turn, and a task never moves backwards. The payloads follow
 * taskstate/static/taskstate/task.schema.json.
 */
(function () {
  "use strict";

  var root = document.getElementById("json-tasks");
  if (!root) return;
  var rows = document.getElementById("json-rows");
  var connection = root.querySelector("[data-json-connection]");
  var csrfToken = root.dataset.csrfToken;
  var shown = new Map(); // task id -> the payload on the page
  var arrivedDuringRead = null; // ids changed by events while a list read is under way

  function element(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function actionButton(label, name, url) {
    var button = element("button", "taskstate-button", label);
    button.type = "button";
    button.setAttribute("aria-label", label + " " + name);
    button.addEventListener("click", function () { post(url, button); });
    var wrapper = element("span", label === "Retry" ? "taskstate-retry" : "");
    wrapper.appendChild(button);
    return wrapper;
  }

  function timeText(iso) {
    var time = element("time", "taskstate-time", new Date(iso).toLocaleTimeString());
    time.dateTime = iso;
    return time;
  }

  function build(task) {
    var li = element("li", "taskstate-task taskstate-status-" + task.status +
      (task.complete ? " taskstate-complete" : ""));
    li.id = "json-task-" + task.id;
    li.dataset.status = task.status;
    var head = element("div", "taskstate-task-head");
    var badge = element("span", "taskstate-badge");
    var icon = element("span", "taskstate-icon");
    icon.setAttribute("aria-hidden", "true");
    badge.append(icon, element("span", "taskstate-status-text", task.label));
    var name = element("span", "taskstate-description", task.description);
    name.id = "json-description-" + task.id;
    var meta = element("span", "taskstate-meta");
    var when = task.times.finished || task.times.started;
    if (when) meta.append(task.times.finished ? "ended " : "started ", timeText(when));
    var actions = element("span", "taskstate-actions");
    if (task.result_url) {
      var open = element("a", "taskstate-button taskstate-open", "Open");
      open.href = task.result_url;
      open.setAttribute("aria-label", "Open the result of " + task.description);
      actions.appendChild(open);
    }
    if (task.actions.cancel) actions.appendChild(actionButton("Cancel", task.description, task.actions.cancel));
    if (task.actions.retry) actions.appendChild(actionButton("Retry", task.description, task.actions.retry));
    if (task.actions.dismiss) actions.appendChild(actionButton("Dismiss", task.description, task.actions.dismiss));
    head.append(badge, name, meta, actions);
    li.appendChild(head);
    li.appendChild(buildProgress(task.id, task.progress));
    if (task.group) {
      li.appendChild(element("p", "taskstate-group-counts",
        task.group.done + " of " + task.group.total + " done" +
        (task.group.failed ? " · " + task.group.failed + " failed" : "")));
    }
    if (task.error && (task.error.message || task.error.type)) {
      li.appendChild(element("p", "taskstate-error", task.error.message || task.error.type));
    }
    return li;
  }

  function buildProgress(id, progress) {
    var box = element("div", "taskstate-progress");
    var bar = element("progress", "taskstate-bar", progress.percent + " %");
    bar.max = 100;
    bar.value = progress.percent;
    bar.setAttribute("role", "progressbar");
    bar.setAttribute("aria-valuemin", "0");
    bar.setAttribute("aria-valuemax", "100");
    bar.setAttribute("aria-valuenow", String(progress.percent));
    bar.setAttribute("aria-labelledby", "json-description-" + id);
    box.append(bar, element("span", "taskstate-percent", progress.percent + " %"));
    if (progress.message) box.appendChild(element("span", "taskstate-progress-message", progress.message));
    return box;
  }

  function upsert(task) {
    var old = shown.get(task.id);
    if (old && old.order > task.order) return; // an older state, arrived late
    if (arrivedDuringRead) arrivedDuringRead.add(task.id);
    shown.set(task.id, task);
    var row = build(task);
    var current = document.getElementById("json-task-" + task.id);
    if (current) {
      current.replaceWith(row);
      return;
    }
    // Newest first: ids grow with each task sent.
    var after = Array.prototype.find.call(rows.children, function (other) {
      return Number(other.id.slice("json-task-".length)) < task.id;
    });
    rows.insertBefore(row, after || null);
  }

  function progress(event) {
    var task = shown.get(event.id);
    if (!task || (event.order !== null && task.order > event.order)) return;
    // A list read under way may carry this attempt's older bar, at the same order.
    if (arrivedDuringRead) arrivedDuringRead.add(event.id);
    task.progress = event.progress;
    var row = document.getElementById("json-task-" + event.id);
    var box = row && row.querySelector(".taskstate-progress");
    if (box) box.replaceWith(buildProgress(event.id, event.progress));
  }

  function remove(ids) {
    ids.forEach(function (id) {
      shown.delete(id);
      if (arrivedDuringRead) arrivedDuringRead.add(id);
      var row = document.getElementById("json-task-" + id);
      if (row) row.remove();
    });
  }

  function resync() {
    // The database is the truth: read the list, keep what events brought meanwhile.
    arrivedDuringRead = new Set();
    return fetch(root.dataset.listUrl, { headers: { Accept: "application/json" }, credentials: "same-origin" })
      .then(function (response) {
        if (!response.ok) throw new Error("the list answered " + response.status);
        return response.json();
      })
      .then(function (page) {
        var listed = new Set(page.tasks.map(function (task) { return task.id; }));
        var changed = arrivedDuringRead;
        arrivedDuringRead = null;
        Array.from(shown.keys()).forEach(function (id) {
          if (!listed.has(id) && !changed.has(id)) remove([id]);
        });
        page.tasks.slice().reverse().forEach(function (task) {
          if (!changed.has(task.id)) upsert(task);
        });
        root.dataset.synced = "true";
      })
      .catch(function (error) {
        arrivedDuringRead = null;
        connection.textContent = "Could not read the list: " + error.message;
      });
  }

  function post(url, button) {
    if (button) button.disabled = true;
    return fetch(url, {
      method: "POST",
      headers: { Accept: "application/json", "X-CSRFToken": csrfToken },
      credentials: "same-origin",
    })
      .then(function (response) { return response.json().then(function (body) { return [response, body]; }); })
      .then(function (answer) {
        var response = answer[0], body = answer[1];
        if (!response.ok) {
          connection.textContent = body.error || "The server answered " + response.status;
          if (button) button.disabled = false;
          return;
        }
        if (body.task) upsert(body.task);
        remove(body.removed);
      })
      .catch(function () {
        connection.textContent = "The server did not answer; try again.";
        if (button) button.disabled = false;
      });
  }

  var source = new EventSource(root.dataset.eventsUrl);
  source.addEventListener("stream-open", function () {
    connection.textContent = "";
    resync().then(function () { root.dataset.live = "true"; });
  });
  source.addEventListener("stream-reset", resync);
  source.addEventListener("task", function (event) { upsert(JSON.parse(event.data)); });
  source.addEventListener("progress", function (event) { progress(JSON.parse(event.data)); });
  source.addEventListener("removed", function (event) { remove(JSON.parse(event.data).ids); });
  source.addEventListener("error", function () {
    delete root.dataset.live;
    connection.textContent = source.readyState === EventSource.CLOSED
      ? "Live updates stopped: reload the page." : "Reconnecting…";
  });

  var dismissAll = root.querySelector("[data-json-dismiss-all]");
  dismissAll.addEventListener("click", function () {
    post(root.dataset.seenAllUrl, dismissAll).then(function () { dismissAll.disabled = false; });
  });

  // Start buttons post in the background: the page keeps its stream, and the new task's
  // row arrives on it. Without JavaScript the forms post and come back here.
  document.querySelectorAll("form[data-json-start]").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      fetch(form.action, {
        method: "POST",
        body: new FormData(form),
        headers: { Accept: "application/json" },
        credentials: "same-origin",
      });
    });
  });
})();
