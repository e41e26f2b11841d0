// Catalogue niceties; the page works the same without them (the form has submit buttons).
(function () {
  "use strict";
  var form = document.getElementById("catalog-form");
  if (!form) {
    return;
  }
  // Ticking a facet value or choosing a sort order applies it at once.
  form.addEventListener("change", function (event) {
    var target = event.target;
    if (target.matches("input[type=checkbox], select")) {
      form.requestSubmit ? form.requestSubmit() : form.submit();
    }
  });
  // Do not send an empty search box: it keeps shared URLs short.
  form.addEventListener("formdata", function (event) {
    if (event.formData.get("q") === "") {
      event.formData.delete("q");
    }
  });
})();
