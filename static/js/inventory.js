// Admin inventory pages: live progress of a bulk import, and of a product's index job.
// Without JavaScript the pages still work: the import page reloads itself (noscript meta
// refresh) and both pages have a reload link, which this script hides.
(function () {
  "use strict";

  document.querySelectorAll(".js-hidden").forEach(function (el) {
    el.hidden = true;
  });

  function getJSON(url) {
    return fetch(url, {
      credentials: "same-origin",
      headers: { Accept: "application/json" },
      cache: "no-store"
    }).then(function (response) {
      if (!response.ok) {
        throw new Error("HTTP " + response.status);
      }
      return response.json();
    });
  }

  function setField(root, name, value) {
    root.querySelectorAll('[data-field="' + name + '"]').forEach(function (el) {
      el.textContent = value === null || value === undefined ? "" : String(value);
    });
  }

  // -- bulk import progress ------------------------------------------------------------
  var job = document.getElementById("import-progress");
  if (job && job.dataset.finished !== "1") {
    var bar = document.getElementById("import-bar");
    var url = job.dataset.progressUrl;
    var failures = 0;
    var statusText = function (data) {
      if (data.status === "done") { return "Done"; }
      if (data.status === "failed") { return "Failed"; }
      if (data.status === "queued") { return "Queued: waiting for a worker"; }
      return data.stage_label + "…";
    };
    var poll = function () {
      getJSON(url).then(function (data) {
        failures = 0;
        bar.value = data.percent;
        bar.textContent = data.percent + "%";
        setField(job, "percent_text", data.percent + "%");
        setField(job, "status_text", statusText(data));
        ["rows_done", "rows_total", "inserted", "updated", "unchanged", "skipped",
         "duplicates", "index_done", "index_total"].forEach(function (name) {
          setField(job, name, data[name]);
        });
        setField(job, "eta", data.eta || "—");
        setField(job, "message", data.message || "");
        if (data.finished) {
          // The report is rendered by the server: show it.
          window.location.reload();
        } else {
          window.setTimeout(poll, 1000);
        }
      }).catch(function () {
        failures += 1;
        window.setTimeout(poll, Math.min(30000, 2000 * failures));
      });
    };
    window.setTimeout(poll, 500);
  }

  // -- a product's index job -------------------------------------------------------------
  var panel = document.getElementById("product-index-job");
  if (panel) {
    var jobUrl = panel.dataset.url;
    var list = panel.querySelector('[data-field="duplicates"]');
    var warned = document.getElementById("duplicate-warning") !== null;
    var rounds = 0;
    var showDuplicates = function (items) {
      if (warned || !items.length) {
        return;
      }
      list.textContent = "";
      var intro = document.createElement("li");
      intro.textContent = "Possible duplicates found: ";
      var reload = document.createElement("a");
      reload.href = window.location.pathname;
      reload.textContent = "review them";
      intro.appendChild(reload);
      list.appendChild(intro);
      items.forEach(function (item) {
        var li = document.createElement("li");
        var img = document.createElement("img");
        img.src = item.image_url;
        img.alt = "";
        img.width = 30;
        img.height = 40;
        img.className = "admin-thumb";
        var link = document.createElement("a");
        link.href = item.edit_url;
        link.textContent = item.id + ": " + item.name;
        li.appendChild(img);
        li.appendChild(document.createTextNode(" "));
        li.appendChild(link);
        li.appendChild(document.createTextNode(" (" + item.detail + ")"));
        list.appendChild(li);
      });
      list.hidden = false;
    };
    var pollJob = function () {
      rounds += 1;
      getJSON(jobUrl).then(function (data) {
        setField(panel, "label", data.job.label);
        panel.dataset.state = data.job.state;
        if (!data.reviewed) {
          showDuplicates(data.duplicates);
        }
        if ((data.job.state === "queued" || data.job.state === "running") && rounds < 400) {
          window.setTimeout(pollJob, 1500);
        }
      }).catch(function () {
        if (rounds < 400) {
          window.setTimeout(pollJob, 5000);
        }
      });
    };
    if (panel.dataset.state === "queued" || panel.dataset.state === "running") {
      window.setTimeout(pollJob, 1000);
    }
  }
})();
