// The room's live session: publishes the tablet's camera and microphone to the media gateway over WebRTC,
// plays what the gateway sends back (the radiologist), reconnects by itself, and shows the session's health
// (connection, RTT, loss, jitter, bitrate, resolution) and any media alarm from the gateway.
"use strict";
(function () {
  const root = document.getElementById("room");
  const section = document.getElementById("media");
  if (!root || !section) return;
  const code = root.dataset.room;
  const tokenKey = "comms.roomToken." + code;
  const preview = document.getElementById("media-preview");
  const player = document.getElementById("media-audio");
  const remote = document.getElementById("media-remote");
  const health = document.getElementById("media-health");
  const alarm = document.getElementById("media-alarm");
  const base = "/api/v1/rooms/" + encodeURIComponent(code) + "/media";

  let stream = null;
  let pc = null;
  let iceServers = [];
  let retryMs = 1000;
  let retryTimer = null;
  let lastBytes = null;
  let lastAt = null;
  let disconnectedSince = null;
  let available = true;

  function token() {
    return localStorage.getItem(tokenKey);
  }

  function api(path, options) {
    const opts = options || {};
    opts.headers = Object.assign({ Authorization: "Bearer " + token() }, opts.headers || {});
    opts.credentials = "omit";
    opts.cache = "no-store";
    return fetch(path, opts);
  }

  function show(state, text) {
    health.dataset.state = state;
    health.textContent = text;
  }

  function schedule() {
    if (retryTimer !== null) return;
    retryTimer = setTimeout(() => {
      retryTimer = null;
      connect();
    }, retryMs);
    retryMs = Math.min(retryMs * 2, 10000);
  }

  function gathered(conn) {
    return new Promise((resolve) => {
      if (conn.iceGatheringState === "complete") return resolve();
      const done = () => {
        if (conn.iceGatheringState === "complete") resolve();
      };
      conn.addEventListener("icegatheringstatechange", done);
      setTimeout(resolve, 3000);
    });
  }

  async function connect() {
    if (!token()) return schedule();
    try {
      // ask the server first: without a media gateway the page never touches the camera
      const status = await api(base);
      if (status.status === 404) {
        available = false;
        show("unavailable", "Video link: not available on this server");
        return;
      }
      if (status.ok) iceServers = (await status.json()).ice_servers || [];
      if (!stream) {
        stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: { width: 640, height: 480 } });
        preview.srcObject = stream;
      }
    } catch (err) {
      show("error", "Video link: camera or server unavailable (" + err + ") — retrying");
      return schedule();
    }
    if (pc) pc.close();
    const conn = new RTCPeerConnection({ iceServers: iceServers });
    pc = conn;
    stream.getTracks().forEach((t) => conn.addTrack(t, stream));
    conn.ontrack = (event) => {
      if (event.track.kind === "audio") {
        player.srcObject = new MediaStream([event.track]);
        player.play().catch(() => {});
      } else {
        remote.srcObject = new MediaStream([event.track]);
        remote.play().catch(() => {});
      }
    };
    conn.onconnectionstatechange = () => {
      if (conn !== pc) return;
      const s = conn.connectionState;
      if (s === "connected") {
        retryMs = 1000;
        disconnectedSince = null;
      } else if (s === "failed" || s === "closed") {
        show("reconnecting", "Video link lost — reconnecting…");
        schedule();
      } else if (s === "disconnected") {
        disconnectedSince = disconnectedSince || Date.now();
      }
    };
    try {
      await conn.setLocalDescription(await conn.createOffer());
      await gathered(conn);
      const response = await api(base + "/offer", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ sdp: conn.localDescription.sdp }),
      });
      if (!response.ok) throw new Error("HTTP " + response.status);
      const answer = await response.json();
      await conn.setRemoteDescription({ type: "answer", sdp: answer.sdp });
      section.hidden = false;
    } catch (err) {
      show("error", "Video link: could not connect (" + err.message + ") — retrying");
      schedule();
    }
  }

  async function sample() {
    if (!pc) return;
    if (disconnectedSince !== null && Date.now() - disconnectedSince > 5000) {
      disconnectedSince = null;
      show("reconnecting", "Video link interrupted — reconnecting…");
      connect();
      return;
    }
    const report = await pc.getStats();
    let rtt = null, lost = 0, jitter = null, bytes = 0, width = 0, height = 0, energy = 0;
    report.forEach((s) => {
      if (s.type === "candidate-pair" && s.nominated && s.currentRoundTripTime !== undefined) {
        rtt = s.currentRoundTripTime * 1000;
      } else if (s.type === "remote-inbound-rtp") {
        lost += s.packetsLost || 0;
        if (s.kind === "audio" && s.jitter !== undefined) jitter = s.jitter * 1000;
      } else if (s.type === "outbound-rtp") {
        bytes += s.bytesSent || 0;
        if (s.kind === "video") {
          width = s.frameWidth || 0;
          height = s.frameHeight || 0;
        }
      } else if (s.type === "inbound-rtp" && s.kind === "audio") {
        energy = s.totalAudioEnergy || 0;
      } else if (s.type === "inbound-rtp" && s.kind === "video") {
        health.dataset.remoteFrames = String(s.framesDecoded || 0);
      }
    });
    const now = performance.now();
    const kbps = lastBytes === null ? 0 : ((bytes - lastBytes) * 8) / (now - lastAt);
    lastBytes = bytes;
    lastAt = now;
    health.dataset.audioEnergy = String(energy);
    health.dataset.rtt = rtt === null ? "" : rtt.toFixed(1);
    const state = pc.connectionState;
    if (state === "connected") {
      show(
        "connected",
        "Video link: connected · RTT " + (rtt === null ? "–" : rtt.toFixed(0) + " ms") + " · lost " + lost +
          " · jitter " + (jitter === null ? "–" : jitter.toFixed(0) + " ms") + " · " + kbps.toFixed(0) +
          " kbit/s · " + width + "×" + height
      );
    } else if (health.dataset.state !== "reconnecting") {
      show(state, "Video link: " + state);
    }
  }

  async function alarms() {
    if (!token() || !available) return;
    try {
      const response = await api(base);
      if (!response.ok) return;
      const status = await response.json();
      const lost = status.alarms || [];
      alarm.hidden = lost.length === 0;
      alarm.dataset.alarm = lost.join(",");
      alarm.textContent = lost.length
        ? "Media lost from " + lost.join(", ") + " — restoring; the call is kept up"
        : "";
    } catch (err) {
      /* the status line above already shows a lost connection */
    }
  }

  // for support staff and the end-to-end tests: the live connection (read-only use)
  window.roomMedia = { connection: () => pc };

  setInterval(() => sample().catch(() => {}), 1000);
  setInterval(alarms, 2000);
  connect();
})();
