// Refresh one incident's status line, state and timeline every 2 s from the JSON API.
"use strict";
(function () {
  const root = document.getElementById("incident");
  const id = root.dataset.id;
  const status = document.getElementById("status");
  const state = document.getElementById("state");
  const timeline = document.querySelector("#timeline tbody");

  function cell(text) {
    const td = document.createElement("td");
    td.textContent = text;
    return td;
  }

  async function refresh() {
    try {
      const response = await fetch("/api/v1/incidents/" + encodeURIComponent(id), { credentials: "same-origin" });
      if (!response.ok) return;
      const inc = await response.json();
      status.textContent = inc.status_line.text;
      status.className = "status tone-" + inc.status_line.tone;
      state.textContent = inc.state;
      const rows = inc.timeline.map((ev) => {
        const tr = document.createElement("tr");
        const data = document.createElement("td");
        const code = document.createElement("code");
        code.textContent = JSON.stringify(ev.data);
        data.appendChild(code);
        tr.append(cell(ev.seq), cell(ev.at), cell(ev.kind), cell(ev.source), data);
        return tr;
      });
      timeline.replaceChildren(...rows);
    } catch (err) {
      /* keep the last view; the next tick retries */
    }
  }
  setInterval(refresh, 2000);
})();
