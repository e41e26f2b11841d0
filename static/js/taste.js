// The heart and "Not interested" without a page load. Without JavaScript (or fetch) every
// such button posts the page's #taste-form to its formaction and the server redirects back;
// here the same click goes to the button's JSON API (data-api) and the page changes at once.
(function () {
  "use strict";
  var form = document.getElementById("taste-form");
  if (!form || !window.fetch) {
    return;
  }
  var token = form.querySelector("input[name=csrf_token]");
  var notice = null;
  // One call at a time: an anonymous shopper's taste lives in the cookie session, so two
  // calls in flight together would each store their own change and the later would undo
  // the earlier. Each waits for the answer (and its cookie) of the one before.
  var queue = Promise.resolve();

  function send(url, method) {
    var call = queue.then(function () {
      return fetch(url, {
        method: method,
        credentials: "same-origin",
        headers: { "X-CSRFToken": token.value, Accept: "application/json" },
      });
    });
    queue = call.catch(function () {});
    return call.then(function (response) {
      if (!response.ok) {
        throw new Error("HTTP " + response.status);
      }
      return response.json();
    });
  }

  // One message at the foot of the window (a live region), with an optional action button.
  function say(text, actionLabel, action) {
    if (!notice) {
      notice = document.createElement("div");
      notice.className = "taste-notice";
      notice.setAttribute("role", "status");
      document.body.appendChild(notice);
    }
    notice.textContent = "";
    var message = document.createElement("span");
    message.textContent = text;
    notice.appendChild(message);
    var actionButton = null;
    if (action) {
      actionButton = document.createElement("button");
      actionButton.type = "button";
      actionButton.className = "button-secondary";
      actionButton.textContent = actionLabel;
      actionButton.addEventListener("click", action);
      notice.appendChild(actionButton);
    }
    var close = document.createElement("button");
    close.type = "button";
    close.className = "link-button";
    close.textContent = "Dismiss";
    close.addEventListener("click", function () {
      notice.hidden = true;
    });
    notice.appendChild(close);
    notice.hidden = false;
    return actionButton;
  }

  function likeButtons(productId) {
    return document.querySelectorAll(
      'button[data-taste="like"][data-product-id="' + productId + '"]'
    );
  }

  function showLiked(productId, liked) {
    likeButtons(productId).forEach(function (button) {
      button.setAttribute("aria-pressed", liked ? "true" : "false");
      button.formAction = liked ? button.dataset.unlikeUrl : button.dataset.likeUrl;
    });
  }

  function toggleLike(button) {
    var productId = button.dataset.productId;
    var liked = button.getAttribute("aria-pressed") !== "true";
    showLiked(productId, liked);
    return send(button.dataset.api, liked ? "POST" : "DELETE")
      .then(function (body) {
        showLiked(productId, body.liked);
      })
      .catch(function () {
        showLiked(productId, !liked);
        say("Your like could not be saved. Please try again.");
      });
  }

  // Every recommendation card of this product (it may be in more than one list).
  function removeCards(productId) {
    var removed = [];
    document
      .querySelectorAll('button[data-taste="not-interested"][data-product-id="' + productId + '"]')
      .forEach(function (button) {
        var card = button.closest(".product-card");
        if (card && card.parentNode) {
          removed.push({ card: card, parent: card.parentNode, next: card.nextSibling });
          card.parentNode.removeChild(card);
        }
      });
    return removed;
  }

  function restoreCards(removed) {
    removed.forEach(function (place) {
      place.parent.insertBefore(place.card, place.next);
    });
  }

  function notInterested(button) {
    var productId = button.dataset.productId;
    var name = button.dataset.productName;
    var removed = removeCards(productId);
    return send(button.dataset.api, "POST")
      .then(function (body) {
        showLiked(productId, body.liked);
        var undo = say("“" + name + "” will not be recommended again.", "Undo", function () {
          send(button.dataset.api, "DELETE")
            .then(function () {
              restoreCards(removed);
              say("“" + name + "” may be recommended again.");
            })
            .catch(function () {
              say("That could not be undone here. Your likes and history page can.");
            });
        });
        // The button that had focus is gone: keep keyboard users next to what happened.
        undo.focus();
      })
      .catch(function () {
        restoreCards(removed);
        say("That could not be saved. Please try again.");
      });
  }

  form.addEventListener("submit", function (event) {
    var button = event.submitter;
    if (!button || !button.dataset || !button.dataset.api) {
      return; // an ordinary post
    }
    event.preventDefault();
    if (button.dataset.busy) {
      return;
    }
    button.dataset.busy = "1";
    var done = function () {
      delete button.dataset.busy;
    };
    var work = button.dataset.taste === "like" ? toggleLike(button) : notInterested(button);
    work.then(done, done);
  });
})();
