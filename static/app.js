// Copy buttons and a size check before upload. No inline script: the CSP forbids it.
"use strict";

function showCopied(button, text) {
  const note = document.querySelector(".copied");
  button.textContent = text;
  if (note) { note.textContent = text === "Copied!" ? "Copied to the clipboard." : text; }
  setTimeout(() => { button.textContent = "Copy"; }, 2000);
}

document.addEventListener("click", async (event) => {
  const button = event.target.closest("button.copy");
  if (!button) { return; }
  try {
    await navigator.clipboard.writeText(button.dataset.copy);
    showCopied(button, "Copied!");
  } catch (err) {
    const field = document.getElementById("short-url");
    if (field) { field.select(); }
    showCopied(button, "Press Ctrl+C to copy");
  }
});

document.addEventListener("submit", (event) => {
  const form = event.target;
  const max = Number(form.dataset.maxBytes || 0);
  const input = form.querySelector("input[type=file]");
  if (!max || !input || !input.files.length || input.files[0].size <= max) { return; }
  event.preventDefault();
  let error = form.querySelector(".error.size");
  if (!error) {
    error = document.createElement("p");
    error.className = "error size";
    error.id = "file-size-error";
    error.setAttribute("role", "alert");
    input.insertAdjacentElement("afterend", error);
  }
  error.textContent = `That file is larger than the ${max / 1048576} MB limit; choose a smaller file.`;
  input.setAttribute("aria-invalid", "true");
  input.setAttribute("aria-describedby", error.id);
});
