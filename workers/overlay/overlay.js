/* vidrec live overlay: a stream's newest snapshot with the boxes of *that* frame's result drawn over it.
 *
 * Results arrive by server-sent events (GET /streams/{id}/events, `event: result` = the FrameResult JSON) and
 * update the text at once; snapshots (GET /streams/{id}/frame.jpg) are fetched one after the other, at most
 * ~10 per second, and drawn with the result whose frame_index matches the snapshot's X-Frame-Index — never
 * with another frame's boxes. With Service.http_read_auth the page's ?access_token= goes on every request
 * (EventSource and image loads cannot send an Authorization header).
 *
 * For tests, window.vidrecOverlay.drawn describes what the canvas shows (see render()).
 */
(function () {
  "use strict";

  // Box colours (RGB); keep in step with --labelled / --unlabelled in overlay.css.
  var COLORS = { labelled: [0, 230, 118], unlabelled: [255, 179, 0] };
  var LINE_WIDTH = 2;
  var MAX_RESULTS = 120;          // results kept by frame_index
  var RESULT_WAIT_MS = 1000;      // how long a snapshot waits for its result before it is shown without boxes
  var MIN_FETCH_INTERVAL_MS = 100; // at most ~10 snapshots per second
  var RETRY_NO_SNAPSHOT_MS = 300;
  var RETRY_ERROR_MS = 1000;
  var EVENTS_REOPEN_MS = 2000;
  var STREAMS_REFRESH_MS = 5000;
  var RATE_WINDOW = 30;           // results used for the results-per-second figure

  var params = new URLSearchParams(window.location.search);
  var token = params.get("access_token");

  var el = {
    select: document.getElementById("stream"),
    state: document.getElementById("state"),
    errors: document.getElementById("errors"),
    canvas: document.getElementById("canvas"),
    note: document.getElementById("note"),
    shownFrame: document.getElementById("shown-frame"),
    latencyShown: document.getElementById("latency-shown"),
    latencyNewest: document.getElementById("latency-newest"),
    fps: document.getElementById("fps"),
    resultsSeen: document.getElementById("results-seen"),
    serviceLatency: document.getElementById("service-latency"),
  };
  var ctx = el.canvas.getContext("2d");

  var overlay = {
    stream_id: null,
    drawn: null,        // {stream_id, frame_index, pts, capture_time, frame_width, frame_height, canvas_width,
                        //  canvas_height, has_result, boxes: [{bbox, canvas_rect, label, score, det_class, det_score, kind}]}
    draws: 0,
    resultsSeen: 0,
    state: null,
    errors: [],
    colors: COLORS,
    lineWidth: LINE_WIDTH,
  };
  window.vidrecOverlay = overlay;

  var current = null;   // the selected stream's session (see selectStream)
  var errors = {};      // source -> message
  var knownStreams = [];

  // -- helpers ---------------------------------------------------------------------------------------------
  function apiUrl(path) {
    if (!token) return path;
    return path + (path.indexOf("?") >= 0 ? "&" : "?") + "access_token=" + encodeURIComponent(token);
  }

  function streamPath(id, tail) {
    return "/streams/" + encodeURIComponent(id) + "/" + tail;
  }

  function sleep(ms) {
    return new Promise(function (resolve) { setTimeout(resolve, ms); });
  }

  function authMessage() {
    return token
      ? "401 Unauthorized: the service refused this page's access_token."
      : "401 Unauthorized: this service needs an access token — open the page with ?access_token=<token>.";
  }

  function setError(source, message) {
    if (errors[source] === message) return;
    errors[source] = message;
    renderErrors();
  }

  function clearError(source) {
    if (!(source in errors)) return;
    delete errors[source];
    renderErrors();
  }

  function renderErrors() {
    var messages = Object.keys(errors).map(function (k) { return errors[k]; });
    // one auth message is enough, whichever request met it first
    messages = messages.filter(function (m, i) { return messages.indexOf(m) === i; });
    overlay.errors = messages;
    el.errors.textContent = messages.join("\n");
    el.errors.hidden = messages.length === 0;
  }

  async function errorText(response) {
    try {
      var body = await response.json();
      if (body && body.error) return body.error;
    } catch (e) { /* not JSON */ }
    return "HTTP " + response.status;
  }

  function fmtMs(value) {
    if (typeof value !== "number" || !isFinite(value)) return "–";
    return (value >= 100 ? value.toFixed(0) : value.toFixed(1)) + " ms";
  }

  function setNote(text) {
    el.note.textContent = text || "";
    el.note.hidden = !text;
  }

  function setState(state, reason) {
    overlay.state = state || null;
    el.state.textContent = "state: " + (state || "…") + (reason ? " (" + reason + ")" : "");
    el.state.className = "state state-" + (state || "unknown");
  }

  // -- the stream picker -------------------------------------------------------------------------------------
  async function loadStreams() {
    var response;
    try {
      response = await fetch(apiUrl("/streams"), { cache: "no-store" });
    } catch (e) {
      setError("streams", "connection lost: cannot reach the service (" + e.message + ")");
      return false;
    }
    clearError("streams");  // the service answered
    if (response.status === 401) {
      setError("auth", authMessage());
      return false;
    }
    if (!response.ok) {
      setError("streams", "GET /streams: " + (await errorText(response)));
      return false;
    }
    clearError("streams");
    clearError("auth");
    var body = await response.json();
    knownStreams = (body.streams || []).map(function (s) { return { id: String(s.id), state: s.state }; });
    fillPicker();
    return true;
  }

  var pickerSignature = null;

  function fillPicker() {
    var wanted = current ? current.id : params.get("stream");
    var ids = knownStreams.map(function (s) { return s.id; });
    var signature = JSON.stringify([wanted, knownStreams]);
    if (signature === pickerSignature) return;  // unchanged: leave the picker alone (it may be open)
    pickerSignature = signature;
    el.select.textContent = "";
    knownStreams.forEach(function (s) {
      var option = document.createElement("option");
      option.value = s.id;
      option.textContent = s.id + (s.state ? " — " + s.state : "");
      el.select.appendChild(option);
    });
    if (wanted && ids.indexOf(wanted) < 0) {
      // asked for (or showing) a stream the service does not list: keep it selectable, say so
      var missing = document.createElement("option");
      missing.value = wanted;
      missing.textContent = wanted + " — not listed";
      el.select.appendChild(missing);
      setError("picker", "stream \"" + wanted + "\" is not configured on this service");
    } else {
      clearError("picker");
    }
    if (!ids.length && !wanted) {
      var none = document.createElement("option");
      none.value = "";
      none.textContent = "no streams";
      el.select.appendChild(none);
      el.select.disabled = true;
      setNote("no streams configured");
      return;
    }
    el.select.disabled = false;
    var chosen = wanted || ids[0];
    el.select.value = chosen;
    if (!current || current.id !== chosen) selectStream(chosen);
  }

  el.select.addEventListener("change", function () {
    if (el.select.value) selectStream(el.select.value);
  });

  // -- one selected stream -----------------------------------------------------------------------------------
  function selectStream(id) {
    if (current) closeSession(current);
    current = {
      id: id,
      alive: true,
      results: new Map(),   // frame_index -> FrameResult, insertion order = arrival order
      newest: null,
      captureTimes: [],
      source: null,
      reopenTimer: null,
      waiting: null,        // {frameIndex, resolve} while a snapshot waits for its result
      shown: null,          // the snapshot on the canvas: {frame_index, pts, capture_time, frameW, frameH, bitmap, result}
    };
    overlay.stream_id = id;
    overlay.drawn = null;
    clearError("events");
    clearError("frames");
    setState(null);
    el.shownFrame.textContent = "–";
    el.latencyShown.textContent = "–";
    el.latencyNewest.textContent = "–";
    el.fps.textContent = "–";
    el.serviceLatency.textContent = "";
    ctx.clearRect(0, 0, el.canvas.width, el.canvas.height);
    setNote("waiting for the first snapshot…");
    params.set("stream", id);
    try {
      window.history.replaceState(null, "", window.location.pathname + "?" + params.toString());
    } catch (e) { /* a page opened from a file: no history to rewrite */ }
    openEvents(current);
    snapshotLoop(current);
  }

  function closeSession(session) {
    session.alive = false;
    if (session.source) session.source.close();
    if (session.reopenTimer) clearTimeout(session.reopenTimer);
    if (session.waiting) session.waiting.resolve(null);
    if (session.shown && session.shown.bitmap) session.shown.bitmap.close();
  }

  // -- results (server-sent events) ------------------------------------------------------------------------
  function openEvents(session) {
    if (!session.alive) return;
    var url = apiUrl(streamPath(session.id, "events"));
    var source = new EventSource(url);
    session.source = source;
    source.onopen = function () {
      if (session !== current) return;
      clearError("events");
      clearError("auth");
    };
    source.addEventListener("result", function (event) {
      if (session !== current) return;
      var result;
      try { result = JSON.parse(event.data); } catch (e) { return; }
      onResult(session, result);
    });
    source.addEventListener("state", function (event) {
      if (session !== current) return;
      var data;
      try { data = JSON.parse(event.data); } catch (e) { return; }
      setState(data.state, data.reason);
      el.serviceLatency.textContent = serviceLatencyText(data.latency_ms);
    });
    source.onerror = function (event) {
      if (session !== current) return;
      if (event && typeof event.data === "string") {
        // the server's own `event: error` (e.g. Redis unreachable) before it ends the stream
        var message = event.data;
        try { message = JSON.parse(event.data).error || message; } catch (e) { /* plain text */ }
        setError("events-server", "result stream: " + message);
        return;
      }
      if (source.readyState === EventSource.CLOSED) {
        // The server answered with an error (EventSource hides the status): ask once more to learn it.
        diagnoseEvents(session, url);
        session.reopenTimer = setTimeout(function () { openEvents(session); }, EVENTS_REOPEN_MS);
      } else {
        setError("events", "connection lost: the result stream dropped — reconnecting…");
      }
    };
  }

  async function diagnoseEvents(session, url) {
    var controller = new AbortController();
    try {
      var response = await fetch(url, { cache: "no-store", signal: controller.signal });
      if (session !== current) return;
      if (response.status === 401) {
        clearError("events");  // reachable, but refused
        setError("auth", authMessage());
      } else if (!response.ok) {
        setError("events", "result stream refused: " + (await errorText(response)));
      } else {
        setError("events", "connection lost: the result stream closed — reconnecting…");
      }
    } catch (e) {
      if (session === current) setError("events", "connection lost: cannot reach the service — reconnecting…");
    } finally {
      controller.abort();
    }
  }

  function serviceLatencyText(latency) {
    if (typeof latency === "number") return "service latency: " + fmtMs(latency);
    if (!latency || typeof latency !== "object") return "";
    if (typeof latency.total === "number") return "service latency (last result): " + fmtMs(latency.total);
    var parts = Object.keys(latency).filter(function (k) { return typeof latency[k] === "number"; })
      .slice(0, 4).map(function (k) { return k + " " + fmtMs(latency[k]); });
    return parts.length ? "service latency: " + parts.join(", ") : "";
  }

  function onResult(session, result) {
    if (result.stream_id !== session.id || typeof result.frame_index !== "number") return;
    clearError("events-server");
    var results = session.results;
    results.delete(result.frame_index);
    results.set(result.frame_index, result);
    while (results.size > MAX_RESULTS) results.delete(results.keys().next().value);
    overlay.resultsSeen += 1;
    el.resultsSeen.textContent = String(overlay.resultsSeen);
    if (!session.newest || result.frame_index >= session.newest.frame_index) {
      session.newest = result;
      el.latencyNewest.textContent = fmtMs(result.latency_ms && result.latency_ms.total) + " (#" + result.frame_index + ")";
      if (result.stream_state) setState(result.stream_state);
      var times = session.captureTimes;
      times.push(result.capture_time);
      if (times.length > RATE_WINDOW) times.shift();
      var span = times[times.length - 1] - times[0];
      if (times.length > 1 && span > 0) el.fps.textContent = ((times.length - 1) / span).toFixed(1) + "/s";
    }
    if (session.waiting && session.waiting.frameIndex === result.frame_index) {
      session.waiting.resolve(result);
    } else if (session.shown && !session.shown.result && session.shown.frame_index === result.frame_index) {
      session.shown.result = result;  // late: the frame is still on screen, so its boxes go on it now
      render(session);
    }
  }

  function waitForResult(session, frameIndex) {
    var found = session.results.get(frameIndex);
    if (found) return Promise.resolve(found);
    return new Promise(function (resolve) {
      var timer = setTimeout(function () { finish(null); }, RESULT_WAIT_MS);
      function finish(result) {
        clearTimeout(timer);
        if (session.waiting && session.waiting.frameIndex === frameIndex) session.waiting = null;
        resolve(result);
      }
      session.waiting = { frameIndex: frameIndex, resolve: finish };
    });
  }

  // -- snapshots ---------------------------------------------------------------------------------------------
  async function snapshotLoop(session) {
    var lastStart = -Infinity;
    while (session.alive) {
      var wait = lastStart + MIN_FETCH_INTERVAL_MS - performance.now();
      if (wait > 0) await sleep(wait);
      if (!session.alive) return;
      lastStart = performance.now();
      var pause;
      try {
        pause = await fetchAndDraw(session);
      } catch (e) {
        if (!session.alive) return;
        setError("frames", "connection lost: cannot fetch snapshots (" + e.message + ")");
        pause = RETRY_ERROR_MS;
      }
      if (pause) await sleep(pause);
    }
  }

  function numHeader(headers, name) {
    var value = headers.get(name);
    if (value === null || value === "") return null;
    var number = Number(value);
    return isFinite(number) ? number : null;
  }

  async function fetchAndDraw(session) {
    var response = await fetch(apiUrl(streamPath(session.id, "frame.jpg")), { cache: "no-store" });
    if (!session.alive) return 0;
    clearError("frames");  // the service answered
    if (response.status === 401) {
      setError("auth", authMessage());
      return RETRY_ERROR_MS;
    }
    if (response.status === 404) {
      var why = await errorText(response);
      if (!session.shown) setNote("waiting for the first snapshot… (" + why + ")");
      return RETRY_NO_SNAPSHOT_MS;
    }
    if (!response.ok) {
      setError("frames", "snapshots unavailable: " + (await errorText(response)));
      return RETRY_ERROR_MS;
    }
    clearError("auth");
    var headers = response.headers;
    var frameIndex = numHeader(headers, "X-Frame-Index");
    var blob = await response.blob();
    if (!session.alive) return 0;
    if (frameIndex === null) {
      setError("frames", "snapshot without an X-Frame-Index header: boxes cannot be matched");
      return RETRY_ERROR_MS;
    }
    if (session.shown && session.shown.frame_index === frameIndex) return 0;  // nothing new yet
    var bitmap = await createImageBitmap(blob);
    if (!session.alive) { bitmap.close(); return 0; }
    var frame = {
      frame_index: frameIndex,
      pts: numHeader(headers, "X-Pts"),
      capture_time: numHeader(headers, "X-Capture-Time"),
      frameW: numHeader(headers, "X-Frame-Width"),
      frameH: numHeader(headers, "X-Frame-Height"),
      bitmap: bitmap,
      result: null,
    };
    frame.result = await waitForResult(session, frameIndex);
    if (!session.alive) { bitmap.close(); return 0; }
    if (session.shown && session.shown.bitmap) session.shown.bitmap.close();
    session.shown = frame;
    render(session);
    return 0;
  }

  // -- drawing -----------------------------------------------------------------------------------------------
  function rgb(color) {
    return "rgb(" + color.join(",") + ")";
  }

  function render(session) {
    var shown = session.shown;
    var bitmap = shown.bitmap;
    if (el.canvas.width !== bitmap.width) el.canvas.width = bitmap.width;
    if (el.canvas.height !== bitmap.height) el.canvas.height = bitmap.height;
    ctx.drawImage(bitmap, 0, 0);
    var result = shown.result;
    // the boxes' coordinate space: the frame's own size (header), else the result's
    var frameW = shown.frameW || (result && result.width) || bitmap.width;
    var frameH = shown.frameH || (result && result.height) || bitmap.height;
    var sx = el.canvas.width / frameW;
    var sy = el.canvas.height / frameH;
    var boxes = [];
    if (result) {
      result.objects.forEach(function (obj) {
        var b = obj.bbox;
        var labelled = obj.label !== null && obj.label !== undefined;
        boxes.push({
          bbox: b.slice(),
          canvas_rect: [b[0] * sx, b[1] * sy, (b[2] - b[0]) * sx, (b[3] - b[1]) * sy],
          label: labelled ? obj.label : null,
          score: labelled ? obj.score : null,
          det_class: obj.det_class,
          det_score: obj.det_score,
          kind: labelled ? "labelled" : "unlabelled",
        });
      });
      // Tags first, rectangles over them: every box's outline stays whole where tags overlap.
      ctx.font = "12px system-ui, sans-serif";
      ctx.textBaseline = "top";
      boxes.forEach(function (box) { drawTag(box); });
      ctx.lineWidth = LINE_WIDTH;
      // unlabelled first so recognised boxes are on top
      boxes.filter(function (b) { return b.kind === "unlabelled"; }).concat(
        boxes.filter(function (b) { return b.kind === "labelled"; })
      ).forEach(function (box) {
        ctx.strokeStyle = rgb(COLORS[box.kind]);
        ctx.strokeRect(box.canvas_rect[0], box.canvas_rect[1], box.canvas_rect[2], box.canvas_rect[3]);
      });
      setNote(boxes.length ? "" : "no objects in this frame");
    } else {
      setNote("no result for this frame (#" + shown.frame_index + ")");
    }
    overlay.drawn = {
      stream_id: session.id,
      frame_index: shown.frame_index,
      pts: shown.pts,
      capture_time: shown.capture_time,
      frame_width: frameW,
      frame_height: frameH,
      canvas_width: el.canvas.width,
      canvas_height: el.canvas.height,
      has_result: !!result,
      boxes: boxes,
    };
    overlay.draws += 1;
    el.shownFrame.textContent = "#" + shown.frame_index;
    el.latencyShown.textContent = result ? fmtMs(result.latency_ms && result.latency_ms.total) : "no result";
  }

  function drawTag(box) {
    var text = box.kind === "labelled"
      ? box.label + " " + Number(box.score).toFixed(2)
      : (box.det_class || "whole frame") + " " + Number(box.det_score).toFixed(2);
    var r = box.canvas_rect;
    var width = Math.ceil(ctx.measureText(text).width) + 6;
    var height = 15;
    var x = Math.max(0, Math.min(r[0], el.canvas.width - width));
    var y = r[1] - height - 1 >= 0 ? r[1] - height - 1 : r[1] + LINE_WIDTH;  // above the box, else inside it
    ctx.fillStyle = rgb(COLORS[box.kind]);
    ctx.fillRect(x, y, width, height);
    ctx.fillStyle = "#000";
    ctx.fillText(text, x + 3, y + 1.5);
  }

  // -- start ---------------------------------------------------------------------------------------------------
  async function refreshStreams() {
    await loadStreams();
    setTimeout(refreshStreams, STREAMS_REFRESH_MS);
  }
  refreshStreams();
})();
