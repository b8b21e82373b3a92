/* vidrec live overlay: every camera at once, each tile its stream's newest snapshot with the boxes of *that*
 * frame's result drawn over it, and beside the grid the recent tracks (label, camera, time, dwell, best crop).
 *
 * Cameras: GET /streams every 2 s; a tile per stream, in the service's order, appearing and disappearing with
 * the streams. The grid has ceil(sqrt(n)) equal columns and fills the window; each snapshot is drawn letterboxed
 * in its tile at the tile's own pixel size (labels stay readable however many cameras there are). A click (or
 * Enter) enlarges a tile to the whole window, a click or Esc puts it back; ?stream=ID opens with it enlarged.
 *
 * Results: ONE feed of server-sent events for all the visible tiles (GET /stream-events?stream=A&stream=B...;
 * `event: result` = the FrameResult JSON, `event: state` = {stream_id, state, reason, latency_ms}; each names its
 * stream). One, because a browser keeps at most 6 connections to one service and an event stream holds one for
 * good: a feed per tile would starve all but a few. The feed is reopened when the set of visible streams changes
 * (a stream added or removed, a tile enlarged or put back); beyond MAX_FEED_STREAMS visible tiles (the service's
 * bound) a second feed takes the next ones. Per tile: snapshots (GET /streams/{id}/frame.jpg) are fetched one
 * after the other, at most ~10 per second, and drawn with the result whose frame_index matches the snapshot's
 * X-Frame-Index — never with another frame's boxes.
 *
 * Boxes: colour per track id (a fixed hue walk, so a track keeps its colour), tag "#<track_id> <label>" or
 * "#<track_id>" while the track is unnamed; objects without a track (the whole-frame box, tracking off) keep the
 * old tags "label score" / "detector class score".
 *
 * Tracks: GET /track-events?after=N once a second; one row per track (its newest event wins), newest on top,
 * with the track's thumbnail (GET /thumbnails/...). With Service.http_read_auth the page's ?access_token= goes on
 * every request (EventSource and image loads cannot send an Authorization header).
 *
 * For tests and assistive tools: window.vidrecOverlay.tiles[id].drawn describes what each canvas shows (see
 * render()), every tile lists its tags in a visually hidden <ul>, and window.vidrecOverlay.tracks the track list.
 */
(function () {
  "use strict";

  // Colours (RGB) of boxes without a track: recognised / detected only.
  var COLORS = { labelled: [0, 230, 118], unlabelled: [255, 179, 0] };
  var LINE_WIDTH = 2;
  var FONT_PX = 12;
  var MAX_FEED_STREAMS = 64;       // streams per result feed (GET /stream-events takes at most 64)
  var MAX_RESULTS = 120;           // results kept per tile, by frame_index
  var RESULT_WAIT_MS = 1000;       // how long a snapshot waits for its result before it is shown without boxes
  var MIN_FETCH_INTERVAL_MS = 100; // at most ~10 snapshots per second per tile
  var HIDDEN_POLL_MS = 300;        // a tile hidden behind an enlarged one fetches nothing; it checks this often
  var RETRY_NO_SNAPSHOT_MS = 300;
  var RETRY_ERROR_MS = 1000;
  var EVENTS_REOPEN_MS = 2000;
  var STREAMS_REFRESH_MS = 2000;
  var TRACKS_REFRESH_MS = 1000;
  var TRACKS_MISSING_REFRESH_MS = 10000; // a service without GET /track-events is asked again this seldom
  var MAX_TRACK_ROWS = 100;
  var TRACKS_PAGE = 100;           // events asked for at once (the service's first answer: the newest ones)

  var params = new URLSearchParams(window.location.search);
  var token = params.get("access_token");

  var el = {
    grid: document.getElementById("grid"),
    count: document.getElementById("camera-count"),
    errors: document.getElementById("errors"),
    template: document.getElementById("tile-template"),
    tracks: document.getElementById("track-events"),
    tracksNote: document.getElementById("events-note"),
  };

  var overlay = {
    tiles: {},          // stream id -> {stream_id, state, feed, visible, draws, results_seen, drawn}; feed: the
                        // tile is in an open result feed; drawn:
                        // {stream_id, frame_index, pts, capture_time, frame_width, frame_height, snapshot_width,
                        //  snapshot_height, canvas_width, canvas_height, image_rect: [x, y, w, h], has_result,
                        //  boxes: [{bbox, canvas_rect, label, score, det_class, det_score, track_id, text, color,
                        //  kind}]}
    order: [],          // stream ids in grid order
    columns: 0,
    rows: 0,
    enlarged: null,     // the enlarged stream's id
    feeds: [],          // the result feeds: the stream ids each follows (one feed up to MAX_FEED_STREAMS tiles)
    tracks: [],         // the track list, newest first: {key, stream_id, run_id, track_id, event, label, time,
                        //  dwell_s, thumbnail}
    tracksSeen: 0,      // track events received
    errors: [],
    colors: COLORS,
    lineWidth: LINE_WIDTH,
    trackColor: trackColor,
  };
  window.vidrecOverlay = overlay;

  var tiles = new Map();  // stream id -> tile (see makeTile)
  var errors = {};        // source -> message
  var wantedEnlarged = params.get("stream");  // from the URL, until the service lists it (or says it has none)

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

  function clearErrorsOf(prefix) {
    Object.keys(errors).forEach(function (k) { if (k.indexOf(prefix) === 0) clearError(k); });
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

  function numHeader(headers, name) {
    var value = headers.get(name);
    if (value === null || value === "") return null;
    var number = Number(value);
    return isFinite(number) ? number : null;
  }

  function rgb(color) {
    return "rgb(" + color.join(",") + ")";
  }

  // A track's colour: hues a golden angle apart, so neighbouring ids differ and an id always gets the same one.
  function trackColor(trackId) {
    var h = ((trackId * 137.508) % 360) / 360;
    var s = 0.85;
    var l = 0.55;
    var q = l + s - l * s;
    var p = 2 * l - q;
    function channel(t) {
      if (t < 0) t += 1;
      if (t > 1) t -= 1;
      if (t < 1 / 6) return p + (q - p) * 6 * t;
      if (t < 1 / 2) return q;
      if (t < 2 / 3) return p + (q - p) * (2 / 3 - t) * 6;
      return p;
    }
    return [channel(h + 1 / 3), channel(h), channel(h - 1 / 3)].map(function (c) { return Math.round(c * 255); });
  }

  // -- the cameras -------------------------------------------------------------------------------------------
  async function loadStreams() {
    var response;
    try {
      response = await fetch(apiUrl("/streams"), { cache: "no-store" });
    } catch (e) {
      setError("streams", "connection lost: cannot reach the service (" + e.message + ")");
      return;
    }
    clearError("streams");  // the service answered
    if (response.status === 401) {
      setError("auth", authMessage());
      return;
    }
    if (!response.ok) {
      setError("streams", "GET /streams: " + (await errorText(response)));
      return;
    }
    clearError("auth");
    var body = await response.json();
    syncTiles((body.streams || []).map(function (s) { return { id: String(s.id), state: s.state }; }));
  }

  function syncTiles(streams) {
    var ids = streams.map(function (s) { return s.id; });
    tiles.forEach(function (tile, id) { if (ids.indexOf(id) < 0) removeTile(tile); });
    streams.forEach(function (s) {
      var tile = tiles.get(s.id) || addTile(s.id);
      if (!tile.fed || !tile.stateFromFeed) setState(tile, s.state);
    });
    // keep the DOM in the service's order (moving a node blurs it: only when the order changed)
    var shownOrder = Array.prototype.map.call(el.grid.querySelectorAll("figure.tile"), function (t) {
      return t.dataset.stream;
    });
    if (shownOrder.join("\u0000") !== ids.join("\u0000")) {
      ids.forEach(function (id) { el.grid.appendChild(tiles.get(id).el.root); });
    }
    overlay.order = ids;
    if (wantedEnlarged !== null) {
      if (ids.indexOf(wantedEnlarged) >= 0) {
        enlarge(wantedEnlarged);
      } else {
        setError("enlarge", "stream \"" + wantedEnlarged + "\" is not configured on this service");
      }
      wantedEnlarged = null;
    }
    if (overlay.enlarged !== null && !tiles.has(overlay.enlarged)) enlarge(null);
    layout();
  }

  // n tiles: ceil(sqrt n) columns and as many rows as they need (1 → 1×1, 2 → 2×1, 3 and 4 → 2×2, 5 → 3×2).
  function gridShape(n) {
    if (n <= 0) return { columns: 0, rows: 0 };
    var columns = Math.ceil(Math.sqrt(n));
    return { columns: columns, rows: Math.ceil(n / columns) };
  }

  function layout() {
    var n = tiles.size;
    var shape = gridShape(n);
    overlay.columns = shape.columns;
    overlay.rows = shape.rows;
    el.grid.style.gridTemplateColumns = "repeat(" + Math.max(1, shape.columns) + ", minmax(0, 1fr))";
    el.grid.style.gridTemplateRows = "repeat(" + Math.max(1, shape.rows) + ", minmax(0, 1fr))";
    el.count.textContent = n === 1 ? "1 camera" : n + " cameras";
    var empty = el.grid.querySelector(".empty");
    if (!n && !empty) {
      empty = document.createElement("p");
      empty.className = "empty";
      empty.textContent = "no streams configured";
      el.grid.appendChild(empty);
    } else if (n && empty) {
      empty.remove();
    }
    updateFeeds();
  }

  // -- one tile ----------------------------------------------------------------------------------------------
  function addTile(id) {
    var root = el.template.content.firstElementChild.cloneNode(true);
    root.dataset.stream = id;
    var tile = {
      id: id,
      alive: true,
      el: {
        root: root,
        canvas: root.querySelector(".tile-canvas"),
        name: root.querySelector(".tile-name"),
        state: root.querySelector(".state"),
        info: root.querySelector(".tile-info"),
        note: root.querySelector(".note"),
        objects: root.querySelector(".tile-objects"),
      },
      ctx: null,
      fed: false,           // a result feed follows this tile's stream
      stateFromFeed: false, // the feed's `state` events are fresher than GET /streams
      results: new Map(),   // frame_index -> FrameResult, insertion order = arrival order
      waiting: null,        // {frameIndex, resolve} while a snapshot waits for its result
      shown: null,          // the snapshot on the canvas: {frame_index, pts, capture_time, frameW, frameH, bitmap, result}
      view: { stream_id: id, state: null, feed: false, visible: true, draws: 0, results_seen: 0, drawn: null },
    };
    tile.ctx = tile.el.canvas.getContext("2d");
    tile.el.name.textContent = id;
    tile.el.canvas.setAttribute("aria-label", id + ": waiting for the first snapshot");
    root.setAttribute("aria-label", "camera " + id + " (click to enlarge)");
    root.addEventListener("click", function () { enlarge(overlay.enlarged === id ? null : id); });
    root.addEventListener("keydown", function (event) {
      if (event.key === "Enter" || event.key === " ") {
        event.preventDefault();
        enlarge(overlay.enlarged === id ? null : id);
      }
    });
    setNote(tile, "waiting for the first snapshot…");
    tiles.set(id, tile);
    overlay.tiles[id] = tile.view;
    el.grid.appendChild(root);
    resizeObserver.observe(root);
    snapshotLoop(tile);
    return tile;
  }

  function removeTile(tile) {
    tile.alive = false;
    tile.fed = false;  // the feeds follow the tiles left: layout() reopens them without this one
    if (tile.waiting) tile.waiting.resolve(null);
    if (tile.shown && tile.shown.bitmap) tile.shown.bitmap.close();
    resizeObserver.unobserve(tile.el.root);
    tile.el.root.remove();
    tiles.delete(tile.id);
    delete overlay.tiles[tile.id];
    clearErrorsOf(tile.id + ":");
  }

  function setNote(tile, text) {
    tile.el.note.textContent = text || "";
    tile.el.note.hidden = !text;
  }

  function setState(tile, state, reason) {
    tile.view.state = state || null;
    // a live stream's reason is history (why it last reconnected): on hover only; any other state's is news
    tile.el.state.textContent = (state || "…") + (reason && state !== "live" ? " (" + reason + ")" : "");
    tile.el.state.title = reason || "";
    tile.el.state.className = "state state-" + (state || "unknown");
  }

  function visible(tile) {
    return overlay.enlarged === null || overlay.enlarged === tile.id;
  }

  // -- enlarging ---------------------------------------------------------------------------------------------
  function enlarge(id) {
    if (id !== null && !tiles.has(id)) return;
    clearError("enlarge");
    overlay.enlarged = id;
    tiles.forEach(function (tile, tileId) {
      tile.el.root.classList.toggle("enlarged", tileId === id);
      tile.el.root.setAttribute("aria-pressed", String(tileId === id));
      tile.view.visible = visible(tile);
    });
    if (id === null) params.delete("stream"); else params.set("stream", id);
    try {
      var query = params.toString();
      window.history.replaceState(null, "", window.location.pathname + (query ? "?" + query : ""));
    } catch (e) { /* a page opened from a file: no history to rewrite */ }
    updateFeeds();
  }

  document.addEventListener("keydown", function (event) {
    if (event.key === "Escape" && overlay.enlarged !== null) enlarge(null);
  });

  // -- results (server-sent events) ------------------------------------------------------------------------
  var feeds = [];  // the open result feeds: {ids, key, number, source (EventSource or null), reopenTimer}

  // The visible tiles (the enlarged one alone when there is one) in one feed, MAX_FEED_STREAMS at most each;
  // reopened only when that set of streams changed.
  function updateFeeds() {
    var visibleIds = overlay.order.filter(function (id) { return tiles.has(id) && visible(tiles.get(id)); });
    var groups = [];
    for (var i = 0; i < visibleIds.length; i += MAX_FEED_STREAMS) groups.push(visibleIds.slice(i, i + MAX_FEED_STREAMS));
    var keys = groups.map(function (ids) { return ids.join("\u0000"); });
    var same = keys.length === feeds.length && keys.every(function (key, n) { return feeds[n].key === key; });
    if (!same) {
      feeds.forEach(closeFeed);
      feeds = groups.map(function (ids, n) {
        return openFeed({ ids: ids, key: keys[n], number: n, source: null, reopenTimer: null });
      });
      overlay.feeds = groups;
    }
    tiles.forEach(function (tile, id) {
      tile.fed = visibleIds.indexOf(id) >= 0;
      if (!tile.fed) tile.stateFromFeed = false;
      tile.view.feed = tile.fed;
    });
  }

  function feedErrorKey(feed) {
    return "feed" + feed.number + ":";
  }

  function closeFeed(feed) {
    if (feed.source) feed.source.close();
    feed.source = null;
    if (feed.reopenTimer) clearTimeout(feed.reopenTimer);
    feed.reopenTimer = null;
    clearErrorsOf(feedErrorKey(feed));
  }

  function openFeed(feed) {
    feed.reopenTimer = null;
    var url = apiUrl("/stream-events?" + feed.ids.map(function (id) {
      return "stream=" + encodeURIComponent(id);
    }).join("&"));
    var source = new EventSource(url);
    feed.source = source;
    var key = feedErrorKey(feed);
    function current() { return feed.source === source && feeds.indexOf(feed) >= 0; }
    function tileOf(data) { return data && tiles.get(String(data.stream_id)); }
    source.onopen = function () {
      if (!current()) return;
      clearError(key + "events");
      clearError("auth");
    };
    source.addEventListener("result", function (event) {
      if (!current()) return;
      var result;
      try { result = JSON.parse(event.data); } catch (e) { return; }
      clearError(key + "server");
      var tile = tileOf(result);
      if (tile) onResult(tile, result);
    });
    source.addEventListener("state", function (event) {
      if (!current()) return;
      var data;
      try { data = JSON.parse(event.data); } catch (e) { return; }
      var tile = tileOf(data);
      if (!tile) return;
      tile.stateFromFeed = true;
      setState(tile, data.state, data.reason);
    });
    source.onerror = function (event) {
      if (!current()) return;
      if (event && typeof event.data === "string") {
        // the server's own `event: error` (e.g. Redis unreachable) before it ends the stream
        var message = event.data;
        try { message = JSON.parse(event.data).error || message; } catch (e) { /* plain text */ }
        setError(key + "server", "result stream: " + message);
        return;
      }
      if (source.readyState === EventSource.CLOSED) {
        // The server answered with an error (EventSource hides the status): ask once more to learn it.
        feed.source = null;
        diagnoseFeed(feed, url);
        feed.reopenTimer = setTimeout(function () { if (feeds.indexOf(feed) >= 0) openFeed(feed); }, EVENTS_REOPEN_MS);
      } else {
        setError(key + "events", "connection lost: the result stream dropped — reconnecting…");
      }
    };
    return feed;
  }

  async function diagnoseFeed(feed, url) {
    var controller = new AbortController();
    var key = feedErrorKey(feed) + "events";
    function current() { return feeds.indexOf(feed) >= 0; }
    try {
      var response = await fetch(url, { cache: "no-store", signal: controller.signal });
      if (!current()) return;
      if (response.status === 401) {
        clearError(key);  // reachable, but refused
        setError("auth", authMessage());
      } else if (!response.ok) {
        setError(key, "result stream refused: " + (await errorText(response)));
      } else {
        setError(key, "connection lost: the result stream closed — reconnecting…");
      }
    } catch (e) {
      if (current()) setError(key, "connection lost: cannot reach the service — reconnecting…");
    } finally {
      controller.abort();
    }
  }

  function onResult(tile, result) {
    if (result.stream_id !== tile.id || typeof result.frame_index !== "number") return;
    var results = tile.results;
    results.delete(result.frame_index);
    results.set(result.frame_index, result);
    while (results.size > MAX_RESULTS) results.delete(results.keys().next().value);
    tile.view.results_seen += 1;
    if (result.stream_state && !tile.stateFromFeed) setState(tile, result.stream_state);
    if (tile.waiting && tile.waiting.frameIndex === result.frame_index) {
      tile.waiting.resolve(result);
    } else if (tile.shown && !tile.shown.result && tile.shown.frame_index === result.frame_index) {
      tile.shown.result = result;  // late: the frame is still on screen, so its boxes go on it now
      render(tile);
    }
  }

  function waitForResult(tile, frameIndex) {
    var found = tile.results.get(frameIndex);
    if (found) return Promise.resolve(found);
    if (!tile.fed) return Promise.resolve(null);  // no feed: nothing will come
    return new Promise(function (resolve) {
      var timer = setTimeout(function () { finish(null); }, RESULT_WAIT_MS);
      function finish(result) {
        clearTimeout(timer);
        if (tile.waiting && tile.waiting.frameIndex === frameIndex) tile.waiting = null;
        resolve(result);
      }
      tile.waiting = { frameIndex: frameIndex, resolve: finish };
    });
  }

  // -- snapshots ---------------------------------------------------------------------------------------------
  async function snapshotLoop(tile) {
    var lastStart = -Infinity;
    while (tile.alive) {
      if (!visible(tile)) {
        await sleep(HIDDEN_POLL_MS);
        continue;
      }
      var wait = lastStart + MIN_FETCH_INTERVAL_MS - performance.now();
      if (wait > 0) await sleep(wait);
      if (!tile.alive) return;
      lastStart = performance.now();
      var pause;
      try {
        pause = await fetchAndDraw(tile);
      } catch (e) {
        if (!tile.alive) return;
        setError(tile.id + ":frames", "connection lost: cannot fetch the snapshots of " + tile.id + " (" + e.message + ")");
        pause = RETRY_ERROR_MS;
      }
      if (pause) await sleep(pause);
    }
  }

  async function fetchAndDraw(tile) {
    var key = tile.id + ":frames";
    var response = await fetch(apiUrl(streamPath(tile.id, "frame.jpg")), { cache: "no-store" });
    if (!tile.alive) return 0;
    clearError(key);  // the service answered
    if (response.status === 401) {
      setError("auth", authMessage());
      return RETRY_ERROR_MS;
    }
    if (response.status === 404) {
      var why = await errorText(response);
      if (!tile.shown) setNote(tile, "waiting for the first snapshot… (" + why + ")");
      return RETRY_NO_SNAPSHOT_MS;
    }
    if (!response.ok) {
      setError(key, tile.id + ": snapshots unavailable: " + (await errorText(response)));
      return RETRY_ERROR_MS;
    }
    clearError("auth");
    var headers = response.headers;
    var frameIndex = numHeader(headers, "X-Frame-Index");
    var blob = await response.blob();
    if (!tile.alive) return 0;
    if (frameIndex === null) {
      setError(key, tile.id + ": snapshot without an X-Frame-Index header: boxes cannot be matched");
      return RETRY_ERROR_MS;
    }
    if (tile.shown && tile.shown.frame_index === frameIndex) return 0;  // nothing new yet
    var bitmap = await createImageBitmap(blob);
    if (!tile.alive) { bitmap.close(); return 0; }
    var frame = {
      frame_index: frameIndex,
      pts: numHeader(headers, "X-Pts"),
      capture_time: numHeader(headers, "X-Capture-Time"),
      frameW: numHeader(headers, "X-Frame-Width"),
      frameH: numHeader(headers, "X-Frame-Height"),
      bitmap: bitmap,
      result: null,
    };
    frame.result = await waitForResult(tile, frameIndex);
    if (!tile.alive) { bitmap.close(); return 0; }
    if (tile.shown && tile.shown.bitmap) tile.shown.bitmap.close();
    tile.shown = frame;
    render(tile);
    return 0;
  }

  // -- drawing -----------------------------------------------------------------------------------------------
  // The canvas backs the tile at device pixels; returns true when its size changed.
  function fitCanvas(tile) {
    var ratio = window.devicePixelRatio || 1;
    var w = Math.max(1, Math.round(tile.el.root.clientWidth * ratio));
    var h = Math.max(1, Math.round(tile.el.root.clientHeight * ratio));
    var canvas = tile.el.canvas;
    if (canvas.width === w && canvas.height === h) return false;
    canvas.width = w;
    canvas.height = h;
    return true;
  }

  var resizeObserver = new ResizeObserver(function (entries) {
    entries.forEach(function (entry) {
      var tile = tiles.get(entry.target.dataset.stream);
      if (tile && fitCanvas(tile) && tile.shown) render(tile);
    });
  });

  // Where a width×height picture goes in a W×H canvas: whole, its aspect ratio kept, centred ([x, y, w, h]).
  function letterbox(width, height, W, H) {
    var fit = Math.min(W / width, H / height);
    var w = width * fit, h = height * fit;
    return [(W - w) / 2, (H - h) / 2, w, h];
  }

  function tagText(obj) {
    var labelled = obj.label !== null && obj.label !== undefined;
    if (obj.track_id !== null && obj.track_id !== undefined) return "#" + obj.track_id + (labelled ? " " + obj.label : "");
    if (labelled) return obj.label + " " + Number(obj.score).toFixed(2);
    return (obj.det_class || "whole frame") + " " + Number(obj.det_score).toFixed(2);
  }

  function render(tile) {
    fitCanvas(tile);
    var canvas = tile.el.canvas;
    var ctx = tile.ctx;
    var shown = tile.shown;
    var bitmap = shown.bitmap;
    var W = canvas.width, H = canvas.height;
    var rect = letterbox(bitmap.width, bitmap.height, W, H);
    var ox = rect[0], oy = rect[1], dw = rect[2], dh = rect[3];
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, W, H);
    ctx.drawImage(bitmap, ox, oy, dw, dh);
    var result = shown.result;
    // the boxes' coordinate space: the frame's own size (header), else the result's
    var frameW = shown.frameW || (result && result.width) || bitmap.width;
    var frameH = shown.frameH || (result && result.height) || bitmap.height;
    var sx = dw / frameW;
    var sy = dh / frameH;
    var boxes = [];
    if (result) {
      result.objects.forEach(function (obj) {
        var b = obj.bbox;
        var labelled = obj.label !== null && obj.label !== undefined;
        var tracked = obj.track_id !== null && obj.track_id !== undefined;
        var kind = labelled ? "labelled" : "unlabelled";
        boxes.push({
          bbox: b.slice(),
          canvas_rect: [ox + b[0] * sx, oy + b[1] * sy, (b[2] - b[0]) * sx, (b[3] - b[1]) * sy],
          label: labelled ? obj.label : null,
          score: labelled ? obj.score : null,
          det_class: obj.det_class,
          det_score: obj.det_score,
          track_id: tracked ? obj.track_id : null,
          text: tagText(obj),
          color: tracked ? trackColor(obj.track_id) : COLORS[kind],
          kind: kind,
        });
      });
      var ratio = window.devicePixelRatio || 1;
      // Tags first, rectangles over them: every box's outline stays whole where tags overlap.
      ctx.font = Math.round(FONT_PX * ratio) + "px system-ui, sans-serif";
      ctx.textBaseline = "top";
      boxes.forEach(function (box) { drawTag(ctx, box, W, ratio); });
      ctx.lineWidth = LINE_WIDTH * ratio;
      // untracked first, then tracked; named tracks on top
      boxes.slice().sort(function (a, b) { return drawOrder(a) - drawOrder(b); }).forEach(function (box) {
        ctx.strokeStyle = rgb(box.color);
        ctx.strokeRect(box.canvas_rect[0], box.canvas_rect[1], box.canvas_rect[2], box.canvas_rect[3]);
      });
      setNote(tile, boxes.length ? "" : "no objects in this frame");
    } else {
      setNote(tile, "no result for this frame (#" + shown.frame_index + ")");
    }
    listObjects(tile, boxes);
    tile.view.drawn = {
      stream_id: tile.id,
      frame_index: shown.frame_index,
      pts: shown.pts,
      capture_time: shown.capture_time,
      frame_width: frameW,
      frame_height: frameH,
      snapshot_width: bitmap.width,
      snapshot_height: bitmap.height,
      canvas_width: W,
      canvas_height: H,
      image_rect: [ox, oy, dw, dh],
      has_result: !!result,
      boxes: boxes,
    };
    tile.view.draws += 1;
    tile.el.info.textContent = "#" + shown.frame_index + " · " +
      (result ? "latency " + fmtMs(result.latency_ms && result.latency_ms.total) : "no result");
  }

  function drawOrder(box) {
    if (box.track_id === null) return box.kind === "labelled" ? 1 : 0;
    return box.label === null ? 2 : 3;
  }

  function drawTag(ctx, box, canvasWidth, ratio) {
    var r = box.canvas_rect;
    var width = Math.ceil(ctx.measureText(box.text).width) + 6 * ratio;
    var height = Math.round(15 * ratio);
    var x = Math.max(0, Math.min(r[0], canvasWidth - width));
    var y = r[1] - height - 1 >= 0 ? r[1] - height - 1 : r[1] + LINE_WIDTH * ratio;  // above the box, else inside it
    ctx.fillStyle = rgb(box.color);
    ctx.fillRect(x, y, width, height);
    ctx.fillStyle = "#000";
    ctx.fillText(box.text, x + 3 * ratio, y + 1.5 * ratio);
  }

  // The tags as text, for screen readers and tests: one <li> per box, and a summary on the canvas.
  function listObjects(tile, boxes) {
    var list = tile.el.objects;
    list.textContent = "";
    boxes.forEach(function (box) {
      var item = document.createElement("li");
      item.textContent = box.text;
      if (box.track_id !== null) item.dataset.trackId = String(box.track_id);
      if (box.label !== null) item.dataset.label = box.label;
      list.appendChild(item);
    });
    tile.el.canvas.setAttribute("aria-label", tile.id + ": " + (boxes.length
      ? boxes.map(function (b) { return b.text; }).join(", ") : "no objects"));
  }

  // -- the track list ----------------------------------------------------------------------------------------
  var tracksAfter = null;    // `next` of the last answer
  var trackRows = new Map(); // key -> {data, el}

  async function loadTracks() {
    var path = "/track-events?limit=" + TRACKS_PAGE + (tracksAfter === null ? "" : "&after=" + tracksAfter);
    var response;
    try {
      response = await fetch(apiUrl(path), { cache: "no-store" });
    } catch (e) {
      setError("tracks", "connection lost: cannot fetch the track events (" + e.message + ")");
      return TRACKS_REFRESH_MS;
    }
    clearError("tracks");
    if (response.status === 401) {
      setError("auth", authMessage());
      return TRACKS_REFRESH_MS;
    }
    if (response.status === 404) {
      // a service without tracking events: say so beside the grid, not as an error
      el.tracksNote.textContent = "this service has no track events (GET /track-events: " + (await errorText(response)) + ")";
      return TRACKS_MISSING_REFRESH_MS;
    }
    if (!response.ok) {
      setError("tracks", "GET /track-events: " + (await errorText(response)));
      return TRACKS_REFRESH_MS;
    }
    var body = await response.json();
    var events = body.events || [];
    events.forEach(onTrackEvent);
    if (typeof body.next === "number") tracksAfter = body.next;
    el.tracksNote.textContent = trackRows.size ? "" : "no tracks yet";
    return events.length >= TRACKS_PAGE ? 0 : TRACKS_REFRESH_MS;  // a full page: more are waiting
  }

  function trackKey(event) {
    return event.stream_id + "/" + (event.run_id || "") + "/" + event.track_id;
  }

  function fmtTime(unixSeconds) {
    if (typeof unixSeconds !== "number") return "–";
    return new Date(unixSeconds * 1000).toLocaleTimeString([], { hour12: false });
  }

  function fmtDwell(seconds) {
    if (typeof seconds !== "number" || !isFinite(seconds)) return "–";
    if (seconds < 59.95) return seconds.toFixed(1) + " s";
    var whole = Math.round(seconds);  // rounded first: 119.7 s is 2 min 0 s, not 1 min 60 s
    return Math.floor(whole / 60) + " min " + (whole % 60) + " s";
  }

  function onTrackEvent(entry) {
    var event = entry && entry.event;
    if (!event || typeof event.track_id !== "number") return;
    overlay.tracksSeen += 1;
    var key = trackKey(event);
    var row = trackRows.get(key);
    if (!row) {
      row = { el: makeTrackRow(event), data: null, thumbnail: null };
      trackRows.set(key, row);
    }
    row.data = {
      key: key, stream_id: event.stream_id, run_id: event.run_id, track_id: event.track_id, event: event.event,
      label: event.label, det_class: event.det_class, time: event.time, first_seen: event.first_seen,
      dwell_s: event.dwell_s, thumbnail: entry.thumbnail || row.thumbnail, n: entry.n,
    };
    fillTrackRow(row, entry);
    el.tracks.insertBefore(row.el, el.tracks.firstChild);  // newest on top
    trackRows.delete(key);
    trackRows.set(key, row);  // Map order = age of the newest event
    while (trackRows.size > MAX_TRACK_ROWS) {
      var oldest = trackRows.keys().next().value;
      trackRows.get(oldest).el.remove();
      trackRows.delete(oldest);
    }
    overlay.tracks = Array.from(trackRows.values()).reverse().map(function (r) { return r.data; });
  }

  function makeTrackRow(event) {
    var item = document.createElement("li");
    item.className = "track-event";
    item.style.borderLeftColor = rgb(trackColor(event.track_id));
    item.dataset.stream = event.stream_id;
    item.dataset.trackId = String(event.track_id);
    item.title = "show camera " + event.stream_id;
    // the crop over a placeholder naming the detector class (a track has no crop before its first attempt)
    var box = document.createElement("div");
    box.className = "thumb-box";
    var placeholder = document.createElement("span");
    placeholder.className = "thumb-text";
    placeholder.textContent = event.det_class || "no crop yet";
    var img = document.createElement("img");
    img.className = "thumb missing";
    img.alt = "";
    img.decoding = "async";
    img.addEventListener("error", function () { img.classList.add("missing"); });
    img.addEventListener("load", function () { img.classList.remove("missing"); });
    var title = document.createElement("div");
    title.className = "track-title";
    var meta = document.createElement("div");
    meta.className = "track-meta";
    box.appendChild(placeholder);
    box.appendChild(img);
    item.appendChild(box);
    item.appendChild(title);
    item.appendChild(meta);
    item.addEventListener("click", function () {
      if (tiles.has(event.stream_id)) enlarge(event.stream_id);
    });
    return item;
  }

  function fillTrackRow(row, entry) {
    var data = row.data;
    var item = row.el;
    var img = item.querySelector(".thumb");
    var title = item.querySelector(".track-title");
    var meta = item.querySelector(".track-meta");
    item.dataset.event = data.event;
    item.dataset.label = data.label || "";
    title.textContent = "";
    var name = document.createElement("span");
    name.className = data.label ? "label" : "unknown";
    name.textContent = data.label || "unknown";
    title.appendChild(name);
    title.appendChild(document.createTextNode(" #" + data.track_id));
    var kind = document.createElement("span");
    kind.className = "track-kind " + data.event;
    kind.textContent = data.event;
    title.appendChild(kind);
    meta.textContent = data.stream_id + (data.det_class ? " · " + data.det_class : "") + " · " + fmtTime(data.time) +
      " · dwell " + fmtDwell(data.dwell_s);
    img.alt = (data.label || "unknown") + " #" + data.track_id + " on " + data.stream_id;
    // The best crop can get better with every attempt: load it again for each event that names one.
    if (entry.thumbnail) {
      row.thumbnail = entry.thumbnail;
      var sep = entry.thumbnail.indexOf("?") >= 0 ? "&" : "?";
      img.src = apiUrl(entry.thumbnail + sep + "n=" + entry.n);
    }
  }

  async function tracksLoop() {
    for (;;) {
      var pause = await loadTracks();
      await sleep(pause);
    }
  }

  // -- start ---------------------------------------------------------------------------------------------------
  async function streamsLoop() {
    for (;;) {
      await loadStreams();
      await sleep(STREAMS_REFRESH_MS);
    }
  }
  // the pure parts, for the table-driven test (tests/test_overlay_parts.py)
  overlay.parts = { gridShape: gridShape, letterbox: letterbox, tagText: tagText, trackColor: trackColor,
                    fmtDwell: fmtDwell };
  streamsLoop();
  tracksLoop();
})();
