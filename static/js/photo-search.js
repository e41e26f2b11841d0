// Photo search niceties; every page works without them (plain file fields, a refresh link
// and a <noscript> meta refresh on pages that wait for a result, typed crop edges).
(function () {
  "use strict";

  // A box over a photo that the shopper drags (and resizes by its corner) to choose the part
  // to search. The four number fields (percent of the photo: left, top, width, height) stay
  // the source of truth and the keyboard's way in: the box draws what they say, and dragging
  // writes them. Returns {set(box), whole()}.
  var MIN_SIDE = 6; // percent; the server refuses 5 or less
  function cropEditor(stage, fields) {
    var inputs = {};
    ["x", "y", "w", "h"].forEach(function (key) {
      inputs[key] = fields.querySelector("input[name=crop_" + key + "]");
    });
    if (!inputs.x || !inputs.y || !inputs.w || !inputs.h) {
      return null;
    }
    var box = document.createElement("div");
    box.className = "crop-box";
    box.setAttribute("data-crop-box", "");
    box.setAttribute("aria-hidden", "true"); // the number fields are the accessible control
    var handle = document.createElement("span");
    handle.className = "crop-handle";
    handle.setAttribute("data-crop-handle", "");
    box.appendChild(handle);
    stage.appendChild(box);
    stage.classList.add("crop-stage-active");

    function clamp(value, low, high) {
      return Math.min(Math.max(value, low), high);
    }
    function number(input, fallback) {
      var value = parseFloat(input.value);
      return isFinite(value) ? value : fallback;
    }
    function tidy(r) {
      var w = clamp(r.w, MIN_SIDE, 100);
      var h = clamp(r.h, MIN_SIDE, 100);
      return { x: clamp(r.x, 0, 100 - w), y: clamp(r.y, 0, 100 - h), w: w, h: h };
    }
    function read() {
      return tidy({
        x: number(inputs.x, 0),
        y: number(inputs.y, 0),
        w: number(inputs.w, 100),
        h: number(inputs.h, 100),
      });
    }
    function draw(r) {
      box.style.left = r.x + "%";
      box.style.top = r.y + "%";
      box.style.width = r.w + "%";
      box.style.height = r.h + "%";
    }
    function write(r) {
      ["x", "y", "w", "h"].forEach(function (key) {
        inputs[key].value = (Math.round(r[key] * 10) / 10).toString();
      });
    }
    function set(r) {
      r = tidy(r);
      draw(r);
      write(r);
    }
    Object.keys(inputs).forEach(function (key) {
      inputs[key].addEventListener("input", function () {
        draw(read());
      });
    });

    // Drag the box to move it, its corner to resize it, or anywhere else to draw a new one.
    var drag = null;
    function percentAt(event) {
      var rect = stage.getBoundingClientRect();
      return {
        x: clamp(((event.clientX - rect.left) / rect.width) * 100, 0, 100),
        y: clamp(((event.clientY - rect.top) / rect.height) * 100, 0, 100),
      };
    }
    stage.addEventListener("pointerdown", function (event) {
      if (event.button !== 0) {
        return;
      }
      event.preventDefault();
      var mode = event.target === handle ? "resize" : box.contains(event.target) ? "move" : "draw";
      drag = { mode: mode, at: percentAt(event), box: read() };
      stage.setPointerCapture(event.pointerId);
    });
    stage.addEventListener("pointermove", function (event) {
      if (!drag) {
        return;
      }
      var at = percentAt(event);
      var dx = at.x - drag.at.x;
      var dy = at.y - drag.at.y;
      var r = drag.box;
      if (drag.mode === "move") {
        set({ x: r.x + dx, y: r.y + dy, w: r.w, h: r.h });
      } else if (drag.mode === "resize") {
        set({ x: r.x, y: r.y, w: clamp(r.w + dx, MIN_SIDE, 100 - r.x), h: clamp(r.h + dy, MIN_SIDE, 100 - r.y) });
      } else if (Math.abs(dx) > 1 || Math.abs(dy) > 1) {
        // A new box once the pointer has really moved: a click alone changes nothing.
        var x = Math.min(at.x, drag.at.x);
        var y = Math.min(at.y, drag.at.y);
        set({ x: x, y: y, w: Math.abs(dx), h: Math.abs(dy) });
      }
    });
    function stop(event) {
      if (drag && stage.hasPointerCapture(event.pointerId)) {
        stage.releasePointerCapture(event.pointerId);
      }
      drag = null;
    }
    stage.addEventListener("pointerup", stop);
    stage.addEventListener("pointercancel", stop);

    draw(read());
    return {
      set: set,
      whole: function () {
        set({ x: 0, y: 0, w: 100, h: 100 });
      },
    };
  }

  // Results pages: the box starts where the search looked (or on the product found).
  document.querySelectorAll("[data-crop-form]").forEach(function (form) {
    var stage = document.querySelector("[data-crop-stage]");
    if (stage) {
      cropEditor(stage, form);
    }
  });

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
    // The crop box goes over the preview; its fields show once there is a photo to crop.
    var form = zone.closest("form");
    var fields = form && form.querySelector("[data-crop-fields]");
    var editor = null;
    var stage = null;
    if (preview && fields) {
      stage = document.createElement("div");
      stage.className = "crop-stage";
      stage.hidden = true;
      preview.parentNode.insertBefore(stage, preview);
      stage.appendChild(preview);
      editor = cropEditor(stage, fields);
      var reset = fields.querySelector("[data-crop-reset]");
      if (editor && reset) {
        reset.addEventListener("click", editor.whole);
      }
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
      if (editor) {
        editor.whole(); // a new photo: start from all of it (the worker finds the product)
      }
      if (!file || !/^image\//.test(file.type)) {
        preview.hidden = true;
        preview.removeAttribute("src");
        if (stage) {
          stage.hidden = true;
          fields.hidden = true;
        }
        return;
      }
      shown = URL.createObjectURL(file);
      preview.src = shown;
      preview.hidden = false;
      if (stage && editor) {
        stage.hidden = false;
        fields.hidden = false;
      }
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

  // Result pages that are still waiting: ask the API until the answer differs from what the
  // page shows (the results, a failure, or "unavailable" while no worker takes searches), then
  // reload. A page that says "unavailable" keeps asking: a worker that comes back answers.
  var job = document.querySelector("[data-job-status]");
  if (!job || ["queued", "running"].indexOf(job.getAttribute("data-state")) < 0) {
    return;
  }
  var shown = job.getAttribute("data-status") || "pending";
  var url = job.getAttribute("data-job-status");
  // A search takes about 30 ms in the worker: the first check comes soon after the page.
  var delay = 80;
  var started = Date.now();
  function poll() {
    fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" })
      .then(function (response) {
        return response.json();
      })
      .then(function (body) {
        if (body.status === shown) {
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
