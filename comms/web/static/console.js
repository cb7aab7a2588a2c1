// The radiologist's console: receives the room's video and audio from the media gateway and sends the
// radiologist's microphone (and camera, if there is one). Shows frames decoded and the audio level.
"use strict";
(function () {
  const root = document.getElementById("console");
  const code = root.dataset.room;
  const video = document.getElementById("room-video");
  const player = document.getElementById("room-audio");
  const state = document.getElementById("console-state");
  const health = document.getElementById("console-health");
  let pc = null;
  let frames = 0;

  function gathered(conn) {
    return new Promise((resolve) => {
      if (conn.iceGatheringState === "complete") return resolve();
      conn.addEventListener("icegatheringstatechange", () => {
        if (conn.iceGatheringState === "complete") resolve();
      });
      setTimeout(resolve, 3000);
    });
  }

  function countFrames() {
    if (!("requestVideoFrameCallback" in HTMLVideoElement.prototype)) return;
    const step = () => {
      frames += 1;
      video.requestVideoFrameCallback(step);
    };
    video.requestVideoFrameCallback(step);
  }

  async function connect() {
    let local = null;
    try {
      local = await navigator.mediaDevices.getUserMedia({ audio: true, video: true });
    } catch (err) {
      try {
        local = await navigator.mediaDevices.getUserMedia({ audio: true });
      } catch (err2) {
        local = null;
      }
    }
    const info = await fetch("/api/v1/rooms/" + encodeURIComponent(code) + "/media", { cache: "no-store" });
    const iceServers = info.ok ? (await info.json()).ice_servers || [] : [];
    pc = new RTCPeerConnection({ iceServers: iceServers });
    if (local) local.getTracks().forEach((t) => pc.addTrack(t, local));
    if (!local || local.getAudioTracks().length === 0) pc.addTransceiver("audio", { direction: "recvonly" });
    if (!local || local.getVideoTracks().length === 0) pc.addTransceiver("video", { direction: "recvonly" });
    pc.ontrack = (event) => {
      if (event.track.kind === "video") {
        video.srcObject = new MediaStream([event.track]);
        video.play().catch(() => {});
        countFrames();
      } else {
        player.srcObject = new MediaStream([event.track]);
        player.play().catch(() => {});
      }
    };
    pc.onconnectionstatechange = () => {
      state.textContent = "Connection: " + pc.connectionState;
      state.dataset.state = pc.connectionState;
    };
    await pc.setLocalDescription(await pc.createOffer());
    await gathered(pc);
    const response = await fetch("/api/v1/rooms/" + encodeURIComponent(code) + "/console/offer", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ sdp: pc.localDescription.sdp }),
    });
    if (!response.ok) {
      state.textContent = "Could not join the room: HTTP " + response.status;
      state.dataset.state = "error";
      return;
    }
    const answer = await response.json();
    await pc.setRemoteDescription({ type: "answer", sdp: answer.sdp });
  }

  async function sample() {
    if (!pc) return;
    const report = await pc.getStats();
    let decoded = 0, energy = 0, width = 0, height = 0;
    report.forEach((s) => {
      if (s.type === "inbound-rtp" && s.kind === "video") {
        decoded = s.framesDecoded || 0;
        width = s.frameWidth || 0;
        height = s.frameHeight || 0;
      } else if (s.type === "inbound-rtp" && s.kind === "audio") {
        energy = s.totalAudioEnergy || 0;
      }
    });
    health.dataset.framesDecoded = String(decoded);
    health.dataset.framesShown = String(frames);
    health.dataset.audioEnergy = String(energy);
    health.textContent = "Video " + width + "×" + height + " · " + decoded + " frames decoded · audio energy " +
      energy.toFixed(3);
  }

  setInterval(() => sample().catch(() => {}), 500);
  connect().catch((err) => {
    state.textContent = "Could not join the room: " + err;
    state.dataset.state = "error";
  });
})();
