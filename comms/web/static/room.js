// The room button: keeps the room's device token in localStorage, raises an incident through the JSON API and
// polls it every data-poll-ms (500 ms) so the status line follows the escalation.
"use strict";
(function () {
  const root = document.getElementById("room");
  const code = root.dataset.room;
  const pollMs = parseInt(root.dataset.pollMs, 10) || 500;
  const tokenKey = "comms.roomToken." + code;
  const incidentKey = "comms.roomIncident." + code;

  const roomName = document.getElementById("room-name");
  const tokenForm = document.getElementById("token-form");
  const tokenInput = document.getElementById("token-input");
  const tokenError = document.getElementById("token-error");
  const panel = document.getElementById("panel");
  const button = document.getElementById("alert-button");
  const status = document.getElementById("status");
  const newAlert = document.getElementById("new-alert");

  let token = null;
  let pollTimer = null;
  let failures = 0;

  function setStatus(text, tone) {
    status.textContent = text;
    status.className = "status tone-" + tone;
    status.dataset.tone = tone;
  }

  async function errorMessage(response) {
    try {
      const body = await response.json();
      return body.error.message;
    } catch (err) {
      return "HTTP " + response.status;
    }
  }

  function api(path, options) {
    const opts = options || {};
    opts.headers = Object.assign({ Authorization: "Bearer " + token }, opts.headers || {});
    opts.credentials = "omit";
    opts.cache = "no-store";
    return fetch(path, opts);
  }

  function askForToken(message) {
    localStorage.removeItem(tokenKey);
    token = null;
    panel.hidden = true;
    tokenForm.hidden = false;
    tokenError.textContent = message || "";
    tokenInput.focus();
  }

  async function checkToken() {
    try {
      const response = await api("/api/v1/rooms/" + encodeURIComponent(code));
      if (response.status === 401 || response.status === 403) {
        askForToken("Token refused: " + (await errorMessage(response)));
        return;
      }
      if (response.ok) {
        const room = await response.json();
        roomName.textContent = room.name + " · " + room.site.name;
      }
    } catch (err) {
      setStatus("Cannot reach the server — if this is an emergency, call the code team by phone", "error");
    }
    tokenForm.hidden = true;
    panel.hidden = false;
    const open = localStorage.getItem(incidentKey);
    if (open) follow(open);
  }

  function stopPolling() {
    if (pollTimer !== null) clearTimeout(pollTimer);
    pollTimer = null;
  }

  function follow(id) {
    stopPolling();
    failures = 0;
    button.disabled = true;
    const tick = async () => {
      let again = true;
      let settled = false;
      try {
        const response = await api("/api/v1/incidents/" + encodeURIComponent(id));
        if (response.ok) {
          failures = 0;
          const inc = await response.json();
          setStatus(inc.status_line.text, inc.status_line.tone);
          settled = inc.status_line.tone !== "calling";
          button.disabled = !settled;
          newAlert.hidden = !settled;
          again = inc.status_line.tone !== "closed";
        } else if (response.status === 404 || response.status === 403) {
          localStorage.removeItem(incidentKey);
          setStatus("", "closed");
          button.disabled = false;
          again = false;
        } else {
          failures += 1;
        }
      } catch (err) {
        failures += 1;
      }
      if (failures >= 3) {
        setStatus("Connection lost — retrying… (call the code team by phone if this lasts)", "error");
      }
      // once accepted or exhausted the line changes rarely: poll every 5 s instead of every 500 ms
      pollTimer = again ? setTimeout(tick, settled ? 5000 : pollMs) : null;
    };
    tick();
  }

  async function raise() {
    const chosen = document.querySelector('input[name="severity"]:checked');
    const severity = chosen ? chosen.value : "severe";
    button.disabled = true;
    newAlert.hidden = true;
    setStatus("Sending alert…", "calling");
    try {
      const response = await api("/api/v1/incidents", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ room: code, severity: severity }),
      });
      if (response.status === 201) {
        const created = await response.json();
        localStorage.setItem(incidentKey, created.id);
        setStatus("Alert " + created.code + " raised — finding who is on call…", "calling");
        follow(created.id);
        return;
      }
      if (response.status === 401) {
        askForToken("Token refused: " + (await errorMessage(response)));
      }
      setStatus("Alert NOT sent: " + (await errorMessage(response)) + " — call the code team by phone", "error");
    } catch (err) {
      setStatus("Alert NOT sent: cannot reach the server — call the code team by phone", "error");
    }
    button.disabled = false;
  }

  tokenForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const value = tokenInput.value.trim();
    if (!value) return;
    localStorage.setItem(tokenKey, value);
    token = value;
    tokenInput.value = "";
    checkToken();
  });
  button.addEventListener("click", raise);
  newAlert.addEventListener("click", () => {
    stopPolling();
    localStorage.removeItem(incidentKey);
    newAlert.hidden = true;
    button.disabled = false;
    setStatus("", "closed");
  });

  // ?token=... is taken once, kept in localStorage, and removed from the address bar and history.
  const params = new URLSearchParams(window.location.search);
  if (params.has("token")) {
    const fromUrl = params.get("token").trim();
    if (fromUrl) localStorage.setItem(tokenKey, fromUrl);
    params.delete("token");
    const rest = params.toString();
    window.history.replaceState(null, "", window.location.pathname + (rest ? "?" + rest : ""));
  }
  token = localStorage.getItem(tokenKey);
  if (token) {
    checkToken();
  } else {
    askForToken("");
  }
})();
