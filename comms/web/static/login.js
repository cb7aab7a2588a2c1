// Log in through POST /login (JSON) and follow ?next=; if a session already exists, go straight there.
"use strict";
(function () {
  const form = document.getElementById("login-form");
  const errorLine = document.getElementById("login-error");
  const next = form.elements.next.value || "/incidents";

  // A link from another site does not carry our SameSite=Strict cookie; this same-site request does.
  fetch("/api/v1/me", { credentials: "same-origin" }).then((r) => {
    if (r.ok) window.location.replace(next);
  }).catch(() => {});

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    errorLine.textContent = "";
    try {
      const response = await fetch("/login", {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({
          username: form.elements.username.value,
          password: form.elements.password.value,
          next: next,
        }),
      });
      const body = await response.json();
      if (response.ok) {
        window.location.assign(body.next || next);
      } else {
        errorLine.textContent = (body.error && body.error.message) || "Login failed (" + response.status + ")";
      }
    } catch (err) {
      errorLine.textContent = "Cannot reach the server: " + err;
    }
  });
})();
