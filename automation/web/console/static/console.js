// Live refresh control, the console's only hand-written script. htmx polls elements
// marked data-live; this cancels a poll while the tab is hidden or the person ticked
// "Pause live updates", and shows that switch (useless without JavaScript) at all.
document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll(".live-switch").forEach(function (el) { el.hidden = false; });
});
document.addEventListener("htmx:beforeRequest", function (event) {
  var source = event.detail.elt;
  if (!source || !source.hasAttribute("data-live")) return;
  var paused = document.querySelector("[data-pause-live]");
  if (document.hidden || (paused && paused.checked)) event.preventDefault();
});
