// Tests of stompgate with the real browser client library, @stomp/stompjs.
//
// Run by tests/stompjs.rs, which starts the gateway on an ephemeral port and
// sets STOMPGATE_URL (ws://127.0.0.1:PORT/ws). To run by hand against a
// running gateway (scripts/run.sh):
//
//   cd tests/js && STOMPGATE_URL=ws://127.0.0.1:15674/ws node --test
//
// Set STOMPGATE_JS_DEBUG=1 to print stompjs' frame log as it happens; on a
// failure the log of every client of the failing test is printed anyway.
// When STOMPGATE_JS_QUEUE_LOG names a file, the names of the (durable) queues
// used are appended to it at the end, one a line, for the caller to delete.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { appendFileSync } from 'node:fs';
import WebSocket from 'ws';
import { Client, Versions } from '@stomp/stompjs';

const URL = process.env.STOMPGATE_URL;
if (!URL) {
  throw new Error(
    'STOMPGATE_URL is not set: it must be the gateway WebSocket URL, e.g. ' +
      'ws://127.0.0.1:15674/ws (tests/stompjs.rs sets it; run `cargo test --test stompjs`)',
  );
}
const DEBUG = !!process.env.STOMPGATE_JS_DEBUG;

/** Whole-test bound. */
const TEST_TIMEOUT = 15_000;
/** Bound of one wait inside a test (connect, receipt, message). */
const STEP = 5_000;

/** Unique per run, so reruns (and durable queues left by them) don't interfere. */
const RUN_ID = `${Date.now().toString(36)}-${randomBytes(4).toString('hex')}`;
/** Names of the queues behind the /queue/ destinations used, for STOMPGATE_JS_QUEUE_LOG. */
const queuesUsed = new Set();
const dest = (kind, name) => {
  const full = `stompgate-js-${RUN_ID}-${name}`;
  if (kind === 'queue') queuesUsed.add(full);
  return `/${kind}/${full}`;
};

let counter = 0;
const nextId = (prefix) => `${prefix}-${RUN_ID}-${++counter}`;

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

const describeFrame = (frame) =>
  `${frame.command} ${JSON.stringify(frame.headers)} body=${JSON.stringify(
    (frame.body ?? '').slice(0, 200),
  )}`;

/** Collects the MESSAGE frames of one subscription, in arrival order. */
class Inbox {
  constructor(name) {
    this.name = name;
    this.items = [];
    this.waiters = [];
    this.push = (message) => {
      const waiter = this.waiters.shift();
      if (waiter) waiter(message);
      else this.items.push(message);
    };
  }

  next(what = 'a MESSAGE', ms = STEP) {
    if (this.items.length > 0) return Promise.resolve(this.items.shift());
    let resolveFn;
    const p = new Promise((resolve) => {
      resolveFn = resolve;
      this.waiters.push(resolve);
    });
    return withTimeout(p, ms, `${what} on ${this.name}`).catch((err) => {
      this.waiters = this.waiters.filter((w) => w !== resolveFn);
      throw err;
    });
  }

  async expectNone(ms, why) {
    await sleep(ms);
    assert.equal(
      this.items.length,
      0,
      `${this.name}: expected no MESSAGE within ${ms} ms (${why}), got: ${this.items
        .map(describeFrame)
        .join(' | ')}`,
    );
  }
}

/** Every client ever opened, so a timed-out test still gets cleaned up at the end. */
const allClients = new Set();

async function stopClient(client) {
  allClients.delete(client);
  if (!client.active) return;
  try {
    // Graceful: DISCONNECT with a receipt, then the socket closes.
    await withTimeout(client.deactivate(), 3_000, 'graceful deactivate');
  } catch {
    await withTimeout(client.deactivate({ force: true }), 2_000, 'forced deactivate').catch(
      () => {},
    );
  }
}

after(async () => {
  await Promise.all([...allClients].map(stopClient));
  // The durable queues these tests made: tests/stompjs.rs deletes them afterwards.
  if (process.env.STOMPGATE_JS_QUEUE_LOG && queuesUsed.size > 0) {
    appendFileSync(process.env.STOMPGATE_JS_QUEUE_LOG, [...queuesUsed].map((q) => `${q}\n`).join(''));
  }
});

/**
 * Runs `body(ctx)` with a context that opens tracked clients; always
 * deactivates them, and on failure prints their frame logs.
 */
async function withClients(body) {
  const opened = [];
  const ctx = {
    /** Connects a new client; resolves with { client, connected, name, errors, unhandled, log }. */
    async open(name, options = {}) {
      const log = [];
      const errors = [];
      const unhandled = [];
      const t0 = Date.now();
      const note = (msg) => {
        const line = `+${String(Date.now() - t0).padStart(5)}ms [${name}] ${msg}`;
        log.push(line);
        if (log.length > 400) log.splice(0, log.length - 400);
        if (DEBUG) console.error(line);
      };
      let connected = false;
      let settle;
      const connectedFrame = new Promise((resolve, reject) => {
        settle = { resolve, reject };
      });
      const client = new Client({
        webSocketFactory: () => new WebSocket(URL, Versions.default.protocolVersions()),
        reconnectDelay: 0,
        heartbeatIncoming: 4000,
        heartbeatOutgoing: 4000,
        connectionTimeout: STEP,
        debug: note,
        ...options,
      });
      client.onConnect = (frame) => {
        connected = true;
        settle.resolve(frame);
      };
      client.onStompError = (frame) => {
        note(`ERROR frame: ${describeFrame(frame)}`);
        errors.push(frame);
        if (!connected) settle.reject(new Error(`[${name}] ERROR instead of CONNECTED: ${describeFrame(frame)}`));
      };
      client.onUnhandledMessage = (frame) => {
        note(`MESSAGE matching no subscription: ${describeFrame(frame)}`);
        unhandled.push(frame);
      };
      client.onUnhandledReceipt = (frame) => note(`unexpected RECEIPT: ${describeFrame(frame)}`);
      client.onUnhandledFrame = (frame) => note(`unexpected frame: ${describeFrame(frame)}`);
      client.onWebSocketError = (evt) => note(`WebSocket error: ${evt?.message ?? evt?.error ?? evt}`);
      client.onWebSocketClose = (evt) => {
        note(`WebSocket closed: code=${evt?.code} reason=${JSON.stringify(evt?.reason ?? '')}`);
        if (!connected) {
          settle.reject(
            new Error(`[${name}] WebSocket closed before CONNECTED (code ${evt?.code} ${evt?.reason ?? ''})`),
          );
        }
      };
      const entry = { name, client, errors, unhandled, log };
      opened.push(entry);
      allClients.add(client);
      client.activate();
      entry.connected = await withTimeout(connectedFrame, STEP, `CONNECTED for client ${name}`);
      return entry;
    },

    async close(entry) {
      await stopClient(entry.client);
    },
  };

  try {
    await body(ctx);
    for (const { name, errors, unhandled } of opened) {
      assert.equal(errors.length, 0, `[${name}] unexpected ERROR frames: ${errors.map(describeFrame).join(' | ')}`);
      assert.equal(
        unhandled.length,
        0,
        `[${name}] MESSAGE frames matching no subscription: ${unhandled.map(describeFrame).join(' | ')}`,
      );
    }
  } catch (err) {
    for (const { name, log } of opened) {
      console.error(`----- stompjs log of client ${name} (${URL}) -----\n${log.join('\n')}`);
    }
    throw err;
  } finally {
    await Promise.all(opened.map(({ client }) => stopClient(client)));
  }
}

/** SUBSCRIBE with a receipt header and wait for the RECEIPT, so the subscription is active. */
async function subscribeWithReceipt(client, destination, onMessage, headers = {}) {
  const receipt = nextId('sub-receipt');
  const got = new Promise((resolve) => client.watchForReceipt(receipt, resolve));
  const subscription = client.subscribe(destination, onMessage, { ...headers, receipt });
  const frame = await withTimeout(got, STEP, `RECEIPT ${receipt} of SUBSCRIBE ${destination}`);
  assert.equal(frame.headers['receipt-id'], receipt);
  return subscription;
}

/** Sends a frame through `send(headers)` with a receipt header; waits for the RECEIPT. */
async function withReceipt(client, what, send) {
  const receipt = nextId('receipt');
  const got = new Promise((resolve) => client.watchForReceipt(receipt, resolve));
  send({ receipt });
  const frame = await withTimeout(got, STEP, `RECEIPT ${receipt} of ${what}`);
  assert.equal(frame.headers['receipt-id'], receipt);
  return frame;
}

function assertBytesEqual(actual, expected, what) {
  const a = Buffer.from(actual.buffer, actual.byteOffset, actual.byteLength);
  const e = Buffer.from(expected.buffer, expected.byteOffset, expected.byteLength);
  if (a.equals(e)) return;
  let i = 0;
  while (i < a.length && i < e.length && a[i] === e[i]) i++;
  assert.fail(
    `${what}: ${a.length} bytes received, ${e.length} sent; first difference at byte ${i} ` +
      `(received ${a[i]?.toString(16)}, sent ${e[i]?.toString(16)}); received starts ${a
        .subarray(0, 32)
        .toString('hex')}`,
  );
}

test('short heart-beats follow the client (1000,1000 both ways, as Web-STOMP)', { timeout: TEST_TIMEOUT }, () =>
  withClients(async (ctx) => {
    const { client, connected } = await ctx.open('hb', { heartbeatIncoming: 1000, heartbeatOutgoing: 1000 });
    assert.equal(connected.headers['heart-beat'], '1000,1000', `CONNECTED heart-beat: ${describeFrame(connected)}`);
    // stompjs drops a server silent for twice the interval: still up after 3.5 s of quiet.
    await new Promise((resolve) => setTimeout(resolve, 3500));
    assert.ok(client.connected, 'the client is still connected after 3.5 s of 1 s heart-beats');
    const destination = dest('topic', 'hb');
    const inbox = new Inbox('hb');
    await subscribeWithReceipt(client, destination, inbox.push);
    client.publish({ destination, body: 'after heart-beats' });
    const message = await inbox.next('a message after heart-beats');
    assert.equal(message.body, 'after heart-beats');
    assert.equal(message.headers.redelivered, 'false', `redelivered header: ${describeFrame(message)}`);
  }),
);

test('STOMP 1.2 is negotiated; a topic message arrives with its body and headers', { timeout: TEST_TIMEOUT }, () =>
  withClients(async (ctx) => {
    const { client, connected } = await ctx.open('a');
    assert.equal(connected.headers.version, '1.2', `CONNECTED version: ${describeFrame(connected)}`);
    assert.ok(
      (connected.headers.server ?? '').startsWith('stompgate'),
      `CONNECTED server header should start with "stompgate": ${describeFrame(connected)}`,
    );

    const destination = dest('topic', 'basic');
    const inbox = new Inbox('a basic');
    const subscription = await subscribeWithReceipt(client, destination, inbox.push);

    const body = `hello from stompjs ${RUN_ID} ✓ (utf-8)`;
    client.publish({ destination, body, headers: { 'content-type': 'text/plain', 'x-custom': 'v' } });

    const message = await inbox.next('the published message');
    assert.equal(message.command, 'MESSAGE');
    assert.equal(message.body, body);
    assert.equal(message.headers.destination, destination, 'destination header');
    assert.equal(message.headers['content-type'], 'text/plain', 'content-type header');
    assert.equal(message.headers['x-custom'], 'v', 'x-custom header');
    assert.equal(message.headers.subscription, subscription.id, 'subscription header');
    assert.ok(message.headers['message-id'], `MESSAGE must have a message-id header: ${describeFrame(message)}`);
    await inbox.expectNone(200, 'exactly one message was published');
  }),
);

test('SEND with a receipt header gets its RECEIPT (after the broker confirmed it)', { timeout: TEST_TIMEOUT }, () =>
  withClients(async (ctx) => {
    const { client } = await ctx.open('b');
    const destination = dest('topic', 'receipt');
    const inbox = new Inbox('b receipt');
    await subscribeWithReceipt(client, destination, inbox.push);

    await withReceipt(client, `SEND to ${destination}`, (headers) =>
      client.publish({ destination, body: 'confirm me', headers }),
    );
    const message = await inbox.next('the confirmed message');
    assert.equal(message.body, 'confirm me');

    // A second one without subscribers (unroutable on a topic) is confirmed too.
    await withReceipt(client, 'SEND to a topic nobody listens to', (headers) =>
      client.publish({ destination: dest('topic', 'nobody'), body: 'dropped', headers }),
    );
  }),
);

test('client-individual ack on a queue: acked messages are gone, nacked ones are redelivered', { timeout: TEST_TIMEOUT }, () =>
  withClients(async (ctx) => {
    const queue = dest('queue', 'ack');
    const ackMode = { ack: 'client-individual' };

    // 1. Three messages, each acked.
    const first = await ctx.open('c1');
    const inbox1 = new Inbox('c1 queue');
    await subscribeWithReceipt(first.client, queue, inbox1.push, ackMode);
    const bodies = ['ack-1', 'ack-2', 'ack-3'];
    for (const body of bodies) first.client.publish({ destination: queue, body });
    const received = [];
    for (const body of bodies) received.push(await inbox1.next(`message ${body}`));
    assert.deepEqual(
      received.map((m) => m.body),
      bodies,
      'messages of one publisher arrive in order',
    );
    for (const m of received) {
      assert.ok(m.headers.ack, `a MESSAGE of a client-individual subscription needs an ack header (STOMP 1.2): ${describeFrame(m)}`);
    }
    received[0].ack();
    received[1].ack();
    // The receipt of the last ACK orders it (and the ones before it) before we disconnect.
    await withReceipt(first.client, 'ACK of ack-3', (headers) => received[2].ack(headers));
    await ctx.close(first);

    // Had an ACK been lost, the broker would redeliver on disconnect.
    const second = await ctx.open('c2');
    const inbox2 = new Inbox('c2 queue');
    await subscribeWithReceipt(second.client, queue, inbox2.push, ackMode);
    await inbox2.expectNone(1000, 'all three were acked by the first client');

    // 2. NACK (requeue by default): the message comes back.
    second.client.publish({ destination: queue, body: 'nack-me' });
    const original = await inbox2.next('message nack-me');
    assert.equal(original.body, 'nack-me');
    assert.notEqual(original.headers.redelivered, 'true', `a first delivery is not redelivered: ${describeFrame(original)}`);
    original.nack();
    const again = await inbox2.next('redelivery of nack-me after NACK');
    assert.equal(again.body, 'nack-me');
    if ('redelivered' in again.headers) {
      assert.equal(again.headers.redelivered, 'true', `redelivered header after NACK: ${describeFrame(again)}`);
    }

    // 3. Not acked and disconnected: a new subscriber gets it again, then acks it.
    await ctx.close(second);
    const third = await ctx.open('c3');
    const inbox3 = new Inbox('c3 queue');
    await subscribeWithReceipt(third.client, queue, inbox3.push, ackMode);
    const last = await inbox3.next('nack-me delivered to a new subscriber');
    assert.equal(last.body, 'nack-me');
    if ('redelivered' in last.headers) {
      assert.equal(last.headers.redelivered, 'true', `redelivered header for a new subscriber: ${describeFrame(last)}`);
    }
    await withReceipt(third.client, 'ACK of nack-me', (headers) => last.ack(headers));
    await inbox3.expectNone(300, 'nack-me was the only message left');
  }),
);

test('a binary body round-trips byte-exact', { timeout: TEST_TIMEOUT }, () =>
  withClients(async (ctx) => {
    const { client } = await ctx.open('d');
    const destination = dest('topic', 'binary');
    const inbox = new Inbox('d binary');
    await subscribeWithReceipt(client, destination, inbox.push);

    // NUL (STOMP's frame terminator), 0xff (never valid UTF-8), every byte value, a trailing NUL.
    const bytes = new Uint8Array([0x00, 0xff, 0x0a, ...Array.from({ length: 256 }, (_, i) => i), 0xff, 0x00]);
    client.publish({ destination, binaryBody: bytes, headers: { 'content-type': 'application/octet-stream' } });

    const message = await inbox.next('the binary message');
    assert.equal(message.isBinaryBody, true, 'received as a binary body');
    assertBytesEqual(message.binaryBody, bytes, 'binary body');
    assert.equal(message.headers['content-type'], 'application/octet-stream');
  }),
);

test('a 10 KB frame split over 1 KB WebSocket messages is reassembled', { timeout: TEST_TIMEOUT }, () =>
  withClients(async (ctx) => {
    const entry = await ctx.open('e', { splitLargeFrames: true, maxWebSocketChunkSize: 1024 });
    const { client } = entry;
    const destination = dest('topic', 'large');
    const inbox = new Inbox('e large');
    await subscribeWithReceipt(client, destination, inbox.push);

    let body = '';
    for (let i = 0; body.length < 10 * 1024; i++) {
      body += `line ${String(i).padStart(4, '0')}: ${'abcdefghijklmnopqrstuvwxyz0123456789'.slice(i % 36)}\n`;
    }
    body = body.slice(0, 10 * 1024);
    client.publish({ destination, body, headers: { 'content-type': 'text/plain' } });
    client.publish({ destination, body: 'after the large one' });

    const chunks = entry.log.filter((line) => line.includes('chunk sent')).length;
    assert.ok(chunks >= 10, `stompjs should have split the frame in >= 10 WebSocket messages, log shows ${chunks}`);

    const message = await inbox.next('the 10 KB message');
    assert.equal(message.body.length, body.length, 'length of the large body');
    assert.ok(message.body === body, 'large body differs from the one sent');
    const next = await inbox.next('the message after the large one');
    assert.equal(next.body, 'after the large one');
  }),
);

// ---- JWT: tests/stompjs.rs configures the gateway with an HS256 key and
// passes a valid token for user STOMPGATE_JWT_USER in STOMPGATE_JWT.
const JWT = process.env.STOMPGATE_JWT;
const JWT_USER = process.env.STOMPGATE_JWT_USER;

test('a JWT in the CONNECT passcode identifies the user: /user/ queue receives', { timeout: TEST_TIMEOUT, skip: !JWT && 'STOMPGATE_JWT not set' }, () =>
  withClients(async (ctx) => {
    const { client } = await ctx.open('jwt', { connectHeaders: { login: JWT_USER, passcode: JWT } });
    const inbox = new Inbox('jwt user queue');
    const name = `inbox-${RUN_ID}`;
    // Only an authenticated session has a /user/ queue.
    await subscribeWithReceipt(client, `/user/queue/${name}`, inbox.push);
    // Lands where a backend publishes (the user exchange, key <user>.<name>);
    // the exchange itself is reachable only through /user/ forms.
    client.publish({ destination: `/user/${JWT_USER}/queue/${name}`, body: 'for you' });
    const message = await inbox.next('the /user/ MESSAGE');
    assert.equal(message.body, 'for you');
  }),
);

test('a JWT in the access_token query parameter works too', { timeout: TEST_TIMEOUT, skip: !JWT && 'STOMPGATE_JWT not set' }, () =>
  withClients(async (ctx) => {
    const url = `${URL}?access_token=${encodeURIComponent(JWT)}`;
    const { client } = await ctx.open('jwt-query', {
      webSocketFactory: () => new WebSocket(url, Versions.default.protocolVersions()),
    });
    const inbox = new Inbox('query user queue');
    await subscribeWithReceipt(client, `/user/queue/q-${RUN_ID}`, inbox.push);
    client.publish({ destination: `/user/${JWT_USER}/queue/q-${RUN_ID}`, body: 'via query' });
    assert.equal((await inbox.next('the /user/ MESSAGE')).body, 'via query');
  }),
);

test('a forged JWT is refused with an ERROR', { timeout: TEST_TIMEOUT, skip: !JWT && 'STOMPGATE_JWT not set' }, async () => {
  const [head, payload] = JWT.split('.');
  const forged = `${head}.${payload}.${Buffer.from('not the signature').toString('base64url')}`;
  await assert.rejects(
    withClients((ctx) => ctx.open('forged', { connectHeaders: { passcode: forged } })),
    /ERROR instead of CONNECTED.*access refused/,
  );
});
