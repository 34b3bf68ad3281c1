// The template editor (templates/documents/authoring/edit.html): keeps each file's line
// numbers beside its text while it scrolls, and takes a problem's link to its line.
// Without it the page still works: the numbers line up for the first 40 lines.
(function () {
  "use strict";
  function gutterOf(textarea) {
    return textarea.parentElement.querySelector(".gutter");
  }
  function goToLine(textarea, line) {
    var lines = textarea.value.split("\n");
    var start = 0;
    for (var i = 0; i < line - 1 && i < lines.length; i++) start += lines[i].length + 1;
    var end = start + (lines[line - 1] || "").length;
    textarea.focus();
    textarea.setSelectionRange(start, end);
    var height = textarea.scrollHeight / Math.max(lines.length, 1);
    textarea.scrollTop = Math.max(0, (line - 3) * height);
  }
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll(".code textarea").forEach(function (textarea) {
      var gutter = gutterOf(textarea);
      textarea.addEventListener("scroll", function () { gutter.scrollTop = textarea.scrollTop; });
      textarea.addEventListener("input", function () {
        var count = textarea.value.split("\n").length;
        var shown = gutter.querySelectorAll("span").length;
        for (var n = shown + 1; n <= count + 1; n++) {
          var span = document.createElement("span");
          span.textContent = n;
          gutter.appendChild(span);
          gutter.appendChild(document.createTextNode("\n"));
        }
      });
    });
    document.querySelectorAll("#problems a[data-line]").forEach(function (link) {
      var line = parseInt(link.getAttribute("data-line"), 10);
      if (!line) return;
      link.addEventListener("click", function (event) {
        var textarea = document.querySelector(link.getAttribute("href"));
        if (!textarea) return;
        event.preventDefault();
        goToLine(textarea, line);
      });
    });
  });
})();
