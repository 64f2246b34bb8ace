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

// "Edit a copy of it": the built-in text into the field, to start from, with
// "inherit" unticked so that it is what gets saved.
function copyInto(button) {
  const source = document.getElementById(button.dataset.copyFrom);
  const field = document.getElementById(button.dataset.copyTo);
  if (!source || !field) {
    return;
  }
  if (field.value.trim() && field.value !== source.textContent &&
      !window.confirm("Replace the text in the field with the built-in text?")) {
    return;
  }
  const box = document.querySelector(`input[data-controls="${CSS.escape(field.id)}"]`);
  if (box) {
    box.checked = false;
    syncInherit(box);
  }
  field.value = source.textContent;
  field.focus();
  field.setSelectionRange(0, 0);
  field.scrollTop = 0;
}

document.addEventListener("DOMContentLoaded", () => {
  for (const box of document.querySelectorAll("input[data-controls]")) {
    syncInherit(box);
    box.addEventListener("change", () => syncInherit(box));
  }
  for (const button of document.querySelectorAll("button[data-copy-from]")) {
    button.hidden = false;
    button.addEventListener("click", () => copyInto(button));
  }
  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) {
        event.preventDefault();
      }
    });
  }
});
