// Catalogue niceties; the page works the same without them (the form has submit buttons).
(function () {
  "use strict";
  var form = document.getElementById("catalog-form");
  if (!form) {
    return;
  }
  // On a phone the filters come before the products: fold the ones not in use so the
  // products are a short scroll away. Without JS they simply stay as the server sent them.
  if (window.matchMedia("(max-width: 55.99rem)").matches) {
    form.querySelectorAll("details.facet[open]").forEach(function (facet) {
      if (!facet.querySelector("input:checked")) {
        facet.open = false;
      }
    });
  }
  // Ticking a facet value applies it at once; the shopper is told so before using the
  // boxes (a change of page on input must be announced). The sort menu keeps its button,
  // since some browsers fire "change" on every arrow key.
  var heading = document.getElementById("facets-title");
  if (heading) {
    var note = document.createElement("p");
    note.className = "hint";
    note.textContent = "Filters apply as soon as you tick them.";
    heading.insertAdjacentElement("afterend", note);
  }
  form.addEventListener("change", function (event) {
    if (event.target.matches("input[type=checkbox]")) {
      if (form.requestSubmit) {
        form.requestSubmit();
      } else {
        form.submit();
      }
    }
  });
  // Do not send an empty search box: it keeps shared URLs short.
  form.addEventListener("formdata", function (event) {
    if (event.formData.get("q") === "") {
      event.formData.delete("q");
    }
  });
})();
