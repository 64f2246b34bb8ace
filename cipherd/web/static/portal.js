// The portal's only script (the CSP allows no inline script): a live
// password strength meter, the "passwords differ" hint, select-all and
// confirmation in the inbox, and the print button.  Everything works
// without it; the server's checks are what count.
"use strict";

(function () {
  function strengthMeter(form) {
    var input = form.querySelector("input[data-strength]");
    var meter = form.querySelector("meter");
    var text = form.querySelector(".strength-text");
    if (!input || !meter || !text || !window.fetch) { return; }
    var timer = null;
    var asked = 0;
    function show(answer) {
      meter.hidden = false;
      meter.value = Math.min(100, Math.round(100 * answer.bits / Math.max(1, answer.needed)));
      text.textContent = answer.problem || text.dataset.ok || "";
      text.className = "help strength-text " + (answer.ok ? "ok" : "weak");
    }
    function ask() {
      if (!input.value) { meter.hidden = true; text.textContent = ""; return; }
      var mine = ++asked;
      var body = new URLSearchParams(new FormData(form));
      body.delete("confirm");
      body.delete("current");
      fetch("/strength", { method: "POST", body: body, credentials: "same-origin" })
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (answer) { if (answer && mine === asked) { show(answer); } })
        .catch(function () {});
    }
    input.addEventListener("input", function () {
      clearTimeout(timer);
      timer = setTimeout(ask, 300);
    });
  }

  function confirmMatch(confirm) {
    var original = document.getElementById(confirm.dataset.confirmOf);
    if (!original) { return; }
    function check() {
      confirm.setCustomValidity(confirm.value && confirm.value !== original.value
        ? confirm.dataset.mismatch : "");
    }
    confirm.addEventListener("input", check);
    original.addEventListener("input", check);
  }

  // Passkeys: the form's options (made by the server, with its challenge)
  // go to the browser's WebAuthn, its answer into the form, which is sent.
  function passkeyForm(form) {
    var pkc = window.PublicKeyCredential;
    if (!pkc || !pkc.parseCreationOptionsFromJSON || !pkc.parseRequestOptionsFromJSON) {
      return;  // the form stays hidden
    }
    var problem = form.querySelector(".passkey-problem");
    form.hidden = false;
    form.addEventListener("submit", function (event) {
      if (form.elements.credential.value) { return; }
      event.preventDefault();
      var create = form.dataset.passkeyCreate;
      var url = form.dataset.passkeyGetUrl;
      var options = url
        ? fetch(url, { credentials: "same-origin" }).then(function (r) { return r.json(); })
        : Promise.resolve(JSON.parse(create || form.dataset.passkeyGet));
      options.then(function (json) {
        return create
          ? navigator.credentials.create({ publicKey: pkc.parseCreationOptionsFromJSON(json) })
          : navigator.credentials.get({ publicKey: pkc.parseRequestOptionsFromJSON(json) });
      }).then(function (credential) {
        form.elements.credential.value = JSON.stringify(credential.toJSON());
        form.submit();
      }).catch(function (error) {
        if (problem) {
          problem.textContent = error && error.name === "NotAllowedError"
            ? (document.documentElement.lang === "nl" ? "Geannuleerd of niet toegestaan."
                                                        : "Cancelled or not allowed.")
            : String(error);
          problem.hidden = false;
        }
      });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("form[data-strength-form]").forEach(strengthMeter);
    document.querySelectorAll(
      "form[data-passkey-create], form[data-passkey-get], form[data-passkey-get-url]")
      .forEach(passkeyForm);
    document.querySelectorAll("input[data-confirm-of]").forEach(confirmMatch);
    document.querySelectorAll("input[data-select-all]").forEach(function (all) {
      all.addEventListener("change", function () {
        all.closest("form").querySelectorAll("input[name=id]").forEach(function (box) {
          box.checked = all.checked;
        });
      });
    });
    document.querySelectorAll("form[data-confirm]").forEach(function (form) {
      form.addEventListener("submit", function (event) {
        if (!window.confirm(form.dataset.confirm)) { event.preventDefault(); }
      });
    });
    document.querySelectorAll("button[data-print]").forEach(function (button) {
      button.hidden = false;
      button.addEventListener("click", function () { window.print(); });
    });
  });
}());
