// Progressive enhancement only: every form works without this file.
"use strict";

// An "inherit" checkbox disables the value it controls, so what is entered
// is what gets saved.
function syncInherit(box) {
  const field = document.getElementById(box.dataset.controls);
  if (field) {
    field.disabled = box.checked;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  for (const box of document.querySelectorAll("input[data-controls]")) {
    syncInherit(box);
    box.addEventListener("change", () => syncInherit(box));
  }
  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) {
        event.preventDefault();
      }
    });
  }
});
