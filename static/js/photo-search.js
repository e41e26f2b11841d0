// Photo search niceties; every page works without them (plain file fields, a refresh link
// and a <noscript> meta refresh on pages that wait for a result).
(function () {
  "use strict";

  // Upload pages: drop a photo onto the field's area, and see a preview of what was chosen.
  document.querySelectorAll("[data-drop-zone]").forEach(function (zone) {
    var input = zone.querySelector("input[type=file]");
    var preview = zone.querySelector("[data-preview]");
    var hint = zone.querySelector(".drop-hint");
    if (!input) {
      return;
    }
    zone.classList.add("drop-zone-active");
    if (hint) {
      hint.hidden = false;
    }
    var shown = null;
    function showPreview() {
      if (!preview) {
        return;
      }
      if (shown) {
        URL.revokeObjectURL(shown);
        shown = null;
      }
      var file = input.files && input.files[0];
      if (!file || !/^image\//.test(file.type)) {
        preview.hidden = true;
        preview.removeAttribute("src");
        return;
      }
      shown = URL.createObjectURL(file);
      preview.src = shown;
      preview.hidden = false;
    }
    input.addEventListener("change", showPreview);
    ["dragenter", "dragover"].forEach(function (name) {
      zone.addEventListener(name, function (event) {
        event.preventDefault();
        zone.classList.add("drop-zone-over");
      });
    });
    ["dragleave", "drop"].forEach(function (name) {
      zone.addEventListener(name, function () {
        zone.classList.remove("drop-zone-over");
      });
    });
    zone.addEventListener("drop", function (event) {
      event.preventDefault();
      var files = event.dataTransfer && event.dataTransfer.files;
      if (!files || !files.length) {
        return;
      }
      // Keep only the first file: the field takes one photo.
      var transfer = new DataTransfer();
      transfer.items.add(files[0]);
      input.files = transfer.files;
      showPreview();
    });
  });

  // Result pages that are still waiting: ask the API until the job ends, then reload.
  var job = document.querySelector("[data-job-status]");
  if (!job || ["queued", "running"].indexOf(job.getAttribute("data-state")) < 0) {
    return;
  }
  var url = job.getAttribute("data-job-status");
  var delay = 250;
  var started = Date.now();
  function poll() {
    fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" })
      .then(function (response) {
        return response.json();
      })
      .then(function (body) {
        if (body.status === "pending") {
          schedule();
        } else {
          window.location.reload();
        }
      })
      .catch(schedule);
  }
  function schedule() {
    // Quick at first (most searches take well under a second), then every two seconds.
    if (Date.now() - started > 5 * 60 * 1000) {
      return;
    }
    delay = Math.min(delay * 1.5, 2000);
    window.setTimeout(poll, delay);
  }
  window.setTimeout(poll, delay);
})();
