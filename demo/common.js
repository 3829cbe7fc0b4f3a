// Shared by the demo pages: the gateway's demo configuration, the STOMP
// client (with its transport), the connection badge and the cost meter.
// Plain script (no build step); uses the vendored @stomp/stompjs UMD bundle
// (window.StompJs), loaded before it.
'use strict';

(function () {
  const Demo = {};

  // ---------------------------------------------------------------- cost --
  // What the page used, measured where the browser lets a page measure it,
  // next to what 5 s short polling would have used over the same time.
  const POLL_INTERVAL_MS = 5000;
  // A cookie-less GET as a browser sends it (request line and headers),
  // and the response's status line and headers around an empty JSON answer:
  // typical sizes, not measured (browsers do not expose request headers).
  const POLL_REQUEST_BYTES = 450;
  const POLL_RESPONSE_BYTES = 200;
  // Request headers of every HTTP request the page makes (not exposed either).
  const REQUEST_HEADER_BYTES = 450;
  // The WebSocket handshake: request and response headers (not exposed).
  const WS_HANDSHAKE_BYTES = 450 + 200;

  const utf8 = new TextEncoder();
  const byteLength = (data) => {
    if (typeof data === 'string') return utf8.encode(data).length;
    if (data instanceof ArrayBuffer) return data.byteLength;
    if (ArrayBuffer.isView(data)) return data.byteLength;
    if (data instanceof Blob) return data.size;
    return 0;
  };
  // WebSocket frame header: 2 bytes, +2 or +8 for longer payloads, +4 for
  // the mask of frames from the browser.
  const wsFrameHeader = (len, fromClient) => (len < 126 ? 2 : len < 65536 ? 4 : 10) + (fromClient ? 4 : 0);

  class CostMeter {
    constructor() {
      this.http = { requests: 0, bytes: 0 };
      this.ws = { connections: 0, bytes: 0, frames: 0 };
      // Bytes of the messages pushed to the page: a poller would have
      // downloaded them too, once each.
      this.payloadBytes = 0;
      this.messages = 0;
      this.latencies = [];
      this.pausedAt = null;
      this.seen = new Set();
      const take = (entries) => {
        for (const e of entries) {
          const key = `${e.entryType}:${e.name}:${e.startTime}`;
          if (this.seen.has(key)) continue;
          this.seen.add(key);
          this.http.requests += 1;
          // transferSize: response headers and body as they came over the
          // wire (0 when served from the cache).
          this.http.bytes += REQUEST_HEADER_BYTES + (e.transferSize || 0);
        }
        this.render();
      };
      take(performance.getEntriesByType('navigation'));
      take(performance.getEntriesByType('resource'));
      new PerformanceObserver((list) => take(list.getEntries())).observe({ type: 'resource', buffered: true });
      setInterval(() => this.render(), 1000);
    }

    wsOpened() {
      this.ws.connections += 1;
      this.ws.bytes += WS_HANDSHAKE_BYTES;
      this.render();
    }

    wsFrame(data, fromClient) {
      const len = byteLength(data);
      this.ws.frames += 1;
      this.ws.bytes += len + wsFrameHeader(len, fromClient);
      this.render();
    }

    message(body) {
      this.messages += 1;
      this.payloadBytes += byteLength(body);
      this.render();
    }

    // The page stopped listening (QR login done or expired): a poller would
    // stop polling too, so the estimate stops growing.
    pause() {
      if (this.pausedAt === null) this.pausedAt = performance.now();
      this.render();
    }

    resume() {
      this.pausedAt = null;
    }

    elapsedMs() {
      return this.pausedAt === null ? performance.now() : this.pausedAt;
    }

    // A pushed update was shown `ms` after it was made.
    latency(ms) {
      this.latencies.push(ms);
      this.render();
    }

    render() {
      const el = document.getElementById('cost');
      if (!el) return;
      const elapsed = this.elapsedMs();
      const polls = Math.ceil(elapsed / POLL_INTERVAL_MS);
      const shared = { requests: this.http.requests, bytes: this.http.bytes };
      const pushLive = { requests: this.ws.connections, bytes: this.ws.bytes };
      const pollLive = { requests: polls, bytes: polls * (POLL_REQUEST_BYTES + POLL_RESPONSE_BYTES) + this.payloadBytes };
      const pushRequests = shared.requests + pushLive.requests;
      const pushBytes = shared.bytes + pushLive.bytes;
      const pollRequests = shared.requests + pollLive.requests;
      const pollBytes = shared.bytes + pollLive.bytes;
      const cell = (c) => `${c.requests} req · ${Demo.formatBytes(c.bytes)}`;
      const set = (id, text) => {
        for (const node of el.querySelectorAll(`[data-cost="${id}"]`)) node.textContent = text;
      };
      set('elapsed', `${(elapsed / 1000).toFixed(0)} s`);
      set('shared', cell(shared));
      set('push-live', cell(pushLive));
      set('poll-live', cell(pollLive));
      set('push-total', cell({ requests: pushRequests, bytes: pushBytes }));
      set('poll-total', cell({ requests: pollRequests, bytes: pollBytes }));
      const avg = this.latencies.length
        ? `${Math.round(this.latencies.reduce((a, b) => a + b, 0) / this.latencies.length)} ms (measured)`
        : '–';
      set('push-delay', avg);
      set('messages', String(this.messages));
      set('ws-frames', String(this.ws.frames));
      el.dataset.pushRequests = String(pushRequests);
      el.dataset.pushBytes = String(pushBytes);
      el.dataset.pollRequests = String(pollRequests);
      el.dataset.pollBytes = String(pollBytes);
      el.dataset.pushLiveBytes = String(pushLive.bytes);
      el.dataset.pollLiveBytes = String(pollLive.bytes);
    }
  }

  Demo.formatBytes = (n) => (n < 10240 ? `${n} B` : `${(n / 1024).toFixed(1)} KiB`);

  // The cost table; the page has <div id="cost"></div>.
  Demo.costTable = () => `
    <h2>What this page cost</h2>
    <p class="small">Since the page loaded: <span data-cost="elapsed">0 s</span>,
      <span data-cost="messages">0</span> pushed message(s).</p>
    <table>
      <tr><th></th><th>this page (push)</th><th>5 s polling (estimated)</th></tr>
      <tr><td>page, scripts, backend calls</td><td data-cost="shared">–</td><td data-cost="shared">–</td></tr>
      <tr><td>live updates</td><td data-cost="push-live">–</td><td data-cost="poll-live">–</td></tr>
      <tr><td><b>total</b></td><td data-cost="push-total">–</td><td data-cost="poll-total">–</td></tr>
      <tr><td>update shown after</td><td data-cost="push-delay">–</td><td>2.5 s on average</td></tr>
    </table>
    <details><summary>How this is counted</summary>
      <p class="small">Counting stops when the page stops listening (a QR login done or expired).</p>
      <p class="small"><b>This page</b>: every HTTP request the page made (the page, its scripts, the calls to the
      demo backend), from the browser's Resource Timing (<code>transferSize</code>: response headers and body,
      0 when cached) plus ${REQUEST_HEADER_BYTES} B of request headers each (browsers do not expose them); plus
      the WebSocket: one request, ${WS_HANDSHAKE_BYTES} B of handshake headers (estimated), and every STOMP frame
      sent and received, heart-beats included (<span data-cost="ws-frames">0</span> so far), counted in the page
      with its WebSocket frame header.</p>
      <p class="small"><b>5 s short polling</b>: the same page and backend calls, but for the live updates, instead of
      the WebSocket, one poll every ${POLL_INTERVAL_MS / 1000} s since the page loaded
      (&lceil;elapsed / ${POLL_INTERVAL_MS / 1000} s&rceil; requests) of ${POLL_REQUEST_BYTES} B request headers
      and ${POLL_RESPONSE_BYTES} B response headers each (typical, cookie-less, keep-alive), plus the bodies of the
      messages that arrived, once each. A poller sees each update half an interval (2.5 s) late on average;
      the page measures its own delay from the time the backend stamped on the message.</p>
    </details>`;

  Demo.meter = null;
  Demo.connects = 0;
  Demo.startMeter = () => {
    const el = document.getElementById('cost');
    if (el) el.innerHTML = Demo.costTable();
    Demo.meter = new CostMeter();
    return Demo.meter;
  };

  // ----------------------------------------------------------- transport --
  // The transports the selector offers: WebSocket, then (when the gateway
  // serves SockJS, see /demo/config.json) one entry per SockJS transport,
  // forced with sockjs-client's `transports` option. sockjs-client is loaded
  // from the gateway itself (sockjs.client_file), never from a CDN.
  const wsUrl = (config) => `${location.protocol === 'https:' ? 'wss:' : 'ws:'}//${location.host}${config.ws_path}`;
  const sockjsUrl = (config) => `${location.protocol}//${location.host}${config.sockjs.path}`;
  Demo.TRANSPORTS = [
    {
      id: 'websocket',
      label: 'WebSocket',
      url: wsUrl,
      open: (url) => new WebSocket(url, ['v12.stomp', 'v11.stomp', 'v10.stomp']),
    },
  ];
  // sockjs-client's transport names, best first, and what each is for.
  Demo.SOCKJS_TRANSPORTS = [
    ['websocket', 'SockJS websocket (SockJS framing over WebSocket)'],
    ['xhr-streaming', 'SockJS xhr-streaming (HTTP streaming)'],
    ['eventsource', 'SockJS eventsource (Server-Sent Events)'],
    ['iframe-eventsource', 'SockJS iframe-eventsource (EventSource in a gateway iframe)'],
    ['iframe-htmlfile', 'SockJS iframe-htmlfile (IE 8/9 htmlfile)'],
    ['xhr-polling', 'SockJS xhr-polling (long polling)'],
    ['iframe-xhr-polling', 'SockJS iframe-xhr-polling (long polling in a gateway iframe)'],
    ['jsonp-polling', 'SockJS jsonp-polling (IE 6/7)'],
  ];
  Demo.TRANSPORT_NOTE = 'This gateway does not serve SockJS (sockjs.enabled and sockjs.client_file, see scripts/run.sh): WebSocket only.';

  const loadScript = (src) =>
    new Promise((resolve, reject) => {
      const script = document.createElement('script');
      script.src = src;
      script.onload = resolve;
      script.onerror = () => reject(new Error(`could not load ${src}`));
      document.head.appendChild(script);
    });

  // Adds the SockJS entries when the gateway serves SockJS and its
  // sockjs-client bundle loads.
  let sockjsAdded = null;
  const addSockjs = async () => {
    const config = await Demo.config();
    if (!config.sockjs) return;
    if (!window.SockJS) {
      try {
        await loadScript(config.sockjs.client_url);
      } catch (error) {
        Demo.TRANSPORT_NOTE = `SockJS is on, but sockjs-client did not load (${config.sockjs.client_url}): WebSocket only.`;
        return;
      }
    }
    for (const [name, label] of Demo.SOCKJS_TRANSPORTS) {
      Demo.TRANSPORTS.push({
        id: `sockjs-${name}`,
        label,
        url: sockjsUrl,
        // The HTTP transports' requests are counted by Resource Timing.
        sockjs: true,
        open: (url) => new SockJS(url, null, { transports: [name] }),
      });
    }
    Demo.TRANSPORT_NOTE =
      'SockJS entries force one sockjs-client transport each (what an old browser or a proxy that breaks WebSocket would fall back to); ' +
      'the same STOMP session runs over each. Pick one before logging in; ?transport=<id> in the URL preselects it.';
  };

  // Fills the selector (WebSocket, then SockJS when the gateway serves it);
  // `?transport=sockjs-xhr-streaming` preselects an entry.
  Demo.fillTransports = async () => {
    if (!sockjsAdded) sockjsAdded = addSockjs();
    await sockjsAdded;
    const select = document.getElementById('transport');
    if (!select) return;
    select.innerHTML = '';
    for (const t of Demo.TRANSPORTS) {
      const option = document.createElement('option');
      option.value = t.id;
      option.textContent = t.label;
      select.appendChild(option);
    }
    const wanted = new URLSearchParams(location.search).get('transport');
    if (wanted && Demo.TRANSPORTS.some((t) => t.id === wanted)) select.value = wanted;
    const note = document.getElementById('transport-note');
    if (note) note.textContent = Demo.TRANSPORT_NOTE;
  };

  Demo.transport = () => {
    const select = document.getElementById('transport');
    const id = (select && select.value) || Demo.TRANSPORTS[0].id;
    return Demo.TRANSPORTS.find((t) => t.id === id) || Demo.TRANSPORTS[0];
  };

  // --------------------------------------------------------------- state --
  Demo.state = () => {
    const el = document.getElementById('state');
    return el ? el.dataset.state : undefined;
  };
  Demo.setState = (state, detail) => {
    const el = document.getElementById('state');
    if (!el) return;
    el.textContent = state;
    el.dataset.state = state;
    el.className = `state state-${state.replace(/[^a-z]/g, '')}`;
    const d = document.getElementById('state-detail');
    if (d) d.textContent = detail || '';
  };

  // --------------------------------------------------------------- STOMP --
  // A stompjs client for `token` (a demo JWT, sent in CONNECT's passcode),
  // over the selected transport, reconnecting after a second when the
  // connection drops; counts its frames in the meter.
  Demo.stompClient = (config, token, { onConnect, onStompError } = {}) => {
    const transport = Demo.transport();
    const url = transport.url(config);
    const client = new StompJs.Client({
      connectHeaders: { passcode: token },
      reconnectDelay: 1000,
      heartbeatIncoming: 10000,
      heartbeatOutgoing: 10000,
      webSocketFactory: () => {
        const ws = transport.open(url);
        Demo.setState('connecting', `${transport.label}, ${url}`);
        // Over SockJS the page's HTTP requests are counted by Resource
        // Timing (each poll or stream once it ends); only SockJS' own
        // websocket is counted as WebSocket frames.
        if (Demo.meter && (!transport.sockjs || transport.id === 'sockjs-websocket')) {
          Demo.meter.wsOpened();
          const send = ws.send.bind(ws);
          ws.send = (data) => {
            Demo.meter.wsFrame(data, true);
            send(data);
          };
          ws.addEventListener('message', (event) => Demo.meter.wsFrame(event.data, false));
        }
        return ws;
      },
    });
    client.onConnect = (frame) => {
      Demo.connects += 1;
      document.body.dataset.connects = String(Demo.connects);
      Demo.setState('connected', `${transport.label}, ${url}, STOMP ${frame.headers.version}`);
      if (onConnect) onConnect(frame);
    };
    client.onWebSocketClose = () => {
      if (client.active) Demo.setState('reconnecting', `connection lost; retrying every ${client.reconnectDelay / 1000} s`);
      else if (Demo.state() !== 'disconnected') Demo.setState('disconnected', 'connection closed');
    };
    client.onStompError = (frame) => {
      const message = frame.headers.message || 'error';
      Demo.setState('error', message);
      if (onStompError) onStompError(message, frame);
    };
    return client;
  };

  // ----------------------------------------------------------------- misc --
  let configPromise = null;
  Demo.config = () => {
    if (!configPromise) configPromise = fetch('/demo/config.json').then((r) => r.json());
    return configPromise;
  };

  // Calls the demo backend (a "simple" CORS request: GET, or POST without
  // a body); answers { ok, status, body }.
  Demo.api = async (method, path, params) => {
    const config = await Demo.config();
    const query = params ? `?${new URLSearchParams(params)}` : '';
    const response = await fetch(`${config.backend_url}${path}${query}`, { method });
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      body = null;
    }
    return { ok: response.ok, status: response.status, body };
  };

  Demo.escape = (s) =>
    String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);

  window.Demo = Demo;
})();
