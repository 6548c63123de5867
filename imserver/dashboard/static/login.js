import { applyLabels, toggleLang } from "/dashboard/static/i18n.js";

applyLabels();
document.getElementById("lang-toggle").addEventListener("click", toggleLang);
document.getElementById("login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const error = document.getElementById("login-error");
  error.hidden = true;
  const credential = document.getElementById("credential").value;
  const resp = await fetch("/dashboard/login", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ credential }),
    credentials: "same-origin",
  });
  if (resp.ok) {
    location.assign("/dashboard/");
    return;
  }
  let message = `HTTP ${resp.status}`;
  try {
    const body = await resp.json();
    message = `${body.error.message} (${body.error.code})`;
  } catch (_) { /* not JSON: keep the status */ }
  error.textContent = message;
  error.hidden = false;
});
