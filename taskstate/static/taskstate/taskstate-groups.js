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
