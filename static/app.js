// Progressive enhancement only: every form works without this file. No inline script
// anywhere, because the Content-Security-Policy forbids it.
"use strict";

const announcer = () => document.getElementById("announcer");

function say(message) {
  const region = announcer();
  if (region) { region.textContent = message; }
}

// The Clipboard API needs a secure context (HTTPS or localhost); a plain-HTTP page falls
// back to the older copy command on a temporary, off-screen text area.
async function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    try {
      await navigator.clipboard.writeText(text);
      return true;
    } catch (err) { /* denied: try the fallback */ }
  }
  const area = document.createElement("textarea");
  area.value = text;
  area.setAttribute("readonly", "");
  area.className = "visually-hidden";
  document.body.appendChild(area);
  area.select();
  let copied = false;
  try { copied = document.execCommand("copy"); } catch (err) { copied = false; }
  area.remove();
  return copied;
}

function showCopyResult(button, copied) {
  const note = document.querySelector(".copied");
  const message = copied ? "Copied to the clipboard." : "Could not copy: select the link and press Ctrl+C.";
  button.textContent = copied ? "Copied" : "Copy";
  button.classList.toggle("done", copied);
  if (note) { note.textContent = message; }
  say(copied ? `Copied ${button.dataset.copy} to the clipboard.` : message);
  if (!copied) {
    const field = document.getElementById("short-url");
    if (field) { field.focus(); field.select(); }
  }
  clearTimeout(button.resetTimer);
  button.resetTimer = setTimeout(() => {
    button.textContent = "Copy";
    button.classList.remove("done");
    if (note) { note.textContent = ""; }
  }, 2500);
}

document.addEventListener("click", async (event) => {
  const button = event.target.closest("button.copy");
  if (!button) { return; }
  showCopyResult(button, await copyText(button.dataset.copy));
});

// A file over the limit is refused here, before a long upload the server would refuse.
function tooLarge(form, input, max) {
  let error = form.querySelector(".error.size");
  if (!error) {
    error = document.createElement("p");
    error.className = "error size";
    error.id = "file-size-error";
    error.setAttribute("role", "alert");
    input.insertAdjacentElement("afterend", error);
  }
  const limit = (max / 1048576).toLocaleString("en", { maximumFractionDigits: 1 });
  error.textContent = `That file is larger than the ${limit} MB limit; choose a smaller file.`;
  input.closest(".field")?.classList.add("invalid");
  input.setAttribute("aria-invalid", "true");
  const described = (input.getAttribute("aria-describedby") || "").split(" ");
  if (!described.includes(error.id)) {
    input.setAttribute("aria-describedby", [...described, error.id].join(" ").trim());
  }
  input.focus();
}

// The date and time field has no time zone: send the browser's offset from UTC at the
// chosen moment (daylight saving included). Without script the server reads it as UTC.
function sendUtcOffset(form) {
  const offset = form.querySelector(".utc-offset");
  const expires = form.querySelector("input[name=expires_at]");
  if (offset && expires && expires.value) {
    offset.value = String(-new Date(expires.value).getTimezoneOffset());
  }
}

document.addEventListener("submit", (event) => {
  const form = event.target;
  sendUtcOffset(form);
  const max = Number(form.dataset.maxBytes || 0);
  const input = form.querySelector("input[type=file]");
  if (max && input && input.files.length && input.files[0].size > max) {
    event.preventDefault();
    tooLarge(form, input, max);
    return;
  }
  const button = form.querySelector("button[type=submit]");
  if (input && button) { button.textContent = "Uploading…"; }
});

// A new choice of file clears the size error; the server checks the size again anyway.
document.addEventListener("change", (event) => {
  const input = event.target;
  const error = input.form?.querySelector(".error.size");
  if (input.type !== "file" || !error) { return; }
  error.remove();
  input.removeAttribute("aria-invalid");
  input.closest(".field")?.classList.remove("invalid");
  const described = input.getAttribute("aria-describedby").split(" ").filter((id) => id !== error.id);
  input.setAttribute("aria-describedby", described.join(" "));
});

// Back from the result page: the upload button may still say "Uploading…".
window.addEventListener("pageshow", () => {
  const button = document.querySelector("#file-form button[type=submit]");
  if (button) { button.textContent = "Upload and shorten"; }
});

document.querySelectorAll("button.copy[hidden]").forEach((button) => { button.hidden = false; });
