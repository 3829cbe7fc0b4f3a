// @stomp/stompjs over the real sockjs-client under Node, one transport at a
// time: subscribe, receive AMQP-published messages in order, send with a
// receipt, client acks.
//
// Run by tests/sockjs_node.rs (not by tests/stompjs.rs: the name does not
// end in .test.mjs), which starts a gateway with SockJS on, declares one
// queue per transport and publishes m0..m4 to each over AMQP, then sets:
//   STOMPGATE_SOCKJS_URL     http://127.0.0.1:PORT/sockjs
//   STOMPGATE_SOCKJS_QUEUES  {"<transport>": "<queue>", ...}
// and, after node exits, checks that every queue is empty (all acked).
//
// sockjs-client's transports under Node: websocket (faye-websocket),
// xhr-streaming and xhr-polling (node's http), eventsource (the
// `eventsource` package, a dependency of sockjs-client). htmlfile,
// jsonp-polling and the iframe-* ones need a DOM (tests/browser/ runs them
// in Chromium).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import SockJS from 'sockjs-client';
import { Client } from '@stomp/stompjs';

const URL = process.env.STOMPGATE_SOCKJS_URL;
const QUEUES = JSON.parse(process.env.STOMPGATE_SOCKJS_QUEUES ?? '{}');
if (!URL) {
  throw new Error('STOMPGATE_SOCKJS_URL is not set (tests/sockjs_node.rs sets it)');
}
const DEBUG = !!process.env.STOMPGATE_JS_DEBUG;
const STEP = 10_000;

function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

for (const transport of Object.keys(QUEUES)) {
  test(`stompjs over sockjs-client (${transport})`, { timeout: 40_000 }, async () => {
    const queue = QUEUES[transport];
    const log = [];
    let sock;
    const client = new Client({
      webSocketFactory: () => {
        sock = new SockJS(URL, null, { transports: [transport] });
        return sock;
      },
      reconnectDelay: 0,
      heartbeatIncoming: 0,
      heartbeatOutgoing: 0,
      debug: (line) => {
        log.push(line);
        if (DEBUG) console.error(`[${transport}] ${line}`);
      },
    });
    try {
      const connected = new Promise((resolve, reject) => {
        client.onConnect = resolve;
        client.onStompError = (frame) => reject(new Error(`ERROR ${frame.headers.message}: ${frame.body}`));
        client.onWebSocketClose = (event) => reject(new Error(`closed before CONNECTED: ${event?.code} ${event?.reason}`));
      });
      client.activate();
      await withTimeout(connected, STEP, 'CONNECTED');
      client.onWebSocketClose = () => {};
      assert.equal(sock.transport, transport, 'sockjs-client used the transport asked for');

      // Subscribe with client acks: m0..m4 were published over AMQP before
      // the test started; then a SEND with a receipt to the same queue.
      const received = [];
      let wanted = 6;
      let done;
      const all = new Promise((resolve) => (done = resolve));
      client.subscribe(
        `/amq/queue/${queue}`,
        (message) => {
          received.push(message.body);
          message.ack();
          if (received.length === wanted) done();
        },
        { ack: 'client-individual', 'prefetch-count': '2' },
      );
      const receipt = new Promise((resolve) => client.watchForReceipt('sent-1', resolve));
      client.publish({
        destination: `/amq/queue/${queue}`,
        body: `sent over ${transport}`,
        headers: { receipt: 'sent-1' },
      });
      await withTimeout(receipt, STEP, 'RECEIPT of the SEND');
      await withTimeout(all, STEP, `${wanted} messages (got ${JSON.stringify(received)})`);
      assert.deepEqual(received, ['m0', 'm1', 'm2', 'm3', 'm4', `sent over ${transport}`]);

      // A round trip after the acks, so that they reached the gateway
      // before the session ends (the Rust side checks the queue is empty).
      const last = new Promise((resolve) => client.watchForReceipt('acks-done', resolve));
      client.publish({ destination: `/topic/sockjs-node-nowhere`, body: 'x', headers: { receipt: 'acks-done' } });
      await withTimeout(last, STEP, 'RECEIPT after the acks');
    } catch (error) {
      console.error(`--- stompjs log (${transport}) ---\n${log.join('\n')}`);
      throw error;
    } finally {
      await client.deactivate();
    }
  });
}
