// STOMP over each SockJS transport in headless Chromium, driven by
// puppeteer-core. Run by tests/sockjs_browser.rs, which starts the gateway
// replicas and HAProxy and sets:
//   SOCKJS_BASE_URL    http://127.0.0.1:PORT (HAProxy in front of the replicas)
//   SOCKJS_TRANSPORTS  the sockjs-client transports to force, one at a time,
//                      comma-separated (e.g. xhr-streaming,xhr-polling)
//   SOCKJS_RUN         a unique name (queue names are made from it)
//   SOCKJS_MESSAGES    messages published per transport
//   DEMO_CHROMIUM      the browser binary (/usr/bin/chromium)
// The page is /demo/sockjs.html (this directory's sockjs.html, served by the
// gateway). For each transport it connects, subscribes to a /queue/ with
// client-individual acks and a small prefetch, asks the Rust side to publish
// over AMQP ("CONTROL publish QUEUE N", answered "published"), checks that
// every message arrived once and in order, SENDs with a receipt, disconnects,
// and asks the Rust side to check the broker ("CONTROL check QUEUE OUT
// TRANSPORT", answered "ok" or "fail: why"). Prints "RESULT transport ok" or
// "RESULT transport FAIL why" per transport; exits non-zero if one failed.

import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import puppeteer from 'puppeteer-core';

const BASE = process.env.SOCKJS_BASE_URL;
const TRANSPORTS = (process.env.SOCKJS_TRANSPORTS || '').split(',').filter(Boolean);
const RUN = process.env.SOCKJS_RUN;
const MESSAGES = Number(process.env.SOCKJS_MESSAGES || '20');
const CHROMIUM = process.env.DEMO_CHROMIUM || '/usr/bin/chromium';
if (!BASE || !RUN || TRANSPORTS.length === 0) {
  throw new Error('SOCKJS_BASE_URL, SOCKJS_RUN and SOCKJS_TRANSPORTS must be set (tests/sockjs_browser.rs sets them)');
}

const STEP = 20_000;
const log = (...args) => console.log(`[${(performance.now() / 1000).toFixed(1)} s]`, ...args);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// What the Rust side publishes: the same text in tests/sockjs_browser.rs.
// It holds what must not break out of htmlfile's and jsonp's script
// context, and non-ASCII text.
export const messageBody = (queue, i) => `${i} ${queue} </script><!-- \u2028\u2029 é ☃ "q" \\`;

const stdinLines = [];
const stdinWaiters = [];
createInterface({ input: process.stdin }).on('line', (line) => {
  const waiter = stdinWaiters.shift();
  if (waiter) waiter(line);
  else stdinLines.push(line);
});
const control = async (request) => {
  console.log(`CONTROL ${request}`);
  return stdinLines.length
    ? stdinLines.shift().trim()
    : (
        await Promise.race([
          new Promise((resolve) => stdinWaiters.push(resolve)),
          sleep(STEP * 2).then(() => {
            throw new Error(`no answer to CONTROL ${request}`);
          }),
        ])
      ).trim();
};

const userDataDir = mkdtempSync(join(tmpdir(), 'stompgate-sockjs-chromium-'));
const browser = await puppeteer.launch({
  executablePath: CHROMIUM,
  headless: true,
  userDataDir,
  args: [
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    `--user-data-dir=${userDataDir}`,
  ],
});
log(`browser: ${await browser.version()}`);

const runTransport = async (transport, n) => {
  const context = await browser.createBrowserContext();
  const page = await context.newPage();
  const consoleLines = [];
  page.on('console', (m) => consoleLines.push(`${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => consoleLines.push(`uncaught: ${e.message}`));
  const requests = [];
  page.on('request', (r) => {
    const path = new URL(r.url()).pathname;
    if (path.startsWith('/sockjs/')) requests.push(`${r.method()} ${path}`);
  });
  const tag = transport.replace(/[^a-z]/g, '');
  const queue = `${RUN}-${tag}`;
  const out = `${RUN}-${tag}-out`;
  try {
    await page.goto(`${BASE}/demo/sockjs.html`, { timeout: STEP });
    const opened = await page.evaluate((t) => T.connect(t), transport);
    log(`${transport}: connected (STOMP ${opened.version}) over ${opened.transport}`);
    assert.equal(opened.transport, transport, 'sockjs-client used the forced transport');
    assert.equal(opened.version, '1.2');

    await page.evaluate((d) => T.subscribe(d, 5), `/queue/${queue}`);
    assert.equal(await control(`publish ${queue} ${n}`), 'published');
    await page.waitForFunction((k) => T.received.length >= k, { timeout: STEP }, n);
    await sleep(300); // a duplicate would arrive now
    const received = await page.evaluate(() => T.received);
    const expected = Array.from({ length: n }, (_, i) => messageBody(queue, i));
    assert.deepEqual(received, expected, 'every message once, in order, unchanged');
    log(`${transport}: ${n} messages in order (prefetch 5, each acked)`);

    const body = `sent over ${transport}: </script> \u2028 ☃`;
    assert.equal(await page.evaluate((d, b) => T.send(d, b), `/queue/${out}`, body), true, 'RECEIPT for the SEND');
    log(`${transport}: SEND confirmed by its RECEIPT`);
    const errors = await page.evaluate(() => T.errors);
    assert.deepEqual(errors, [], 'no STOMP ERROR');
    await page.evaluate(() => T.disconnect());

    const verdict = await control(`check ${queue} ${out} ${transport}`);
    assert.equal(verdict, 'ok', `broker check: ${verdict}`);
    const kinds = [...new Set(requests.map((r) => r.replace(/\/sockjs\/[^/]+\/[^/]+\//, '/sockjs/S/I/')))];
    log(`${transport}: ok; requests: ${kinds.join(', ')}`);
    return null;
  } catch (error) {
    let debug = [];
    try {
      debug = await page.evaluate(() => ({ debug: T.debug.slice(-15), closes: T.closes, errors: T.errors }));
    } catch (_) {
      // the page is gone
    }
    log(`${transport}: FAILED: ${error.message}`);
    log(`  requests: ${requests.slice(-15).join(' | ')}`);
    log(`  console: ${consoleLines.slice(-15).join(' | ')}`);
    log(`  stompjs: ${JSON.stringify(debug)}`);
    return error.message.split('\n')[0];
  } finally {
    await context.close().catch(() => {});
  }
};

let failures = 0;
try {
  for (const transport of TRANSPORTS) {
    const failure = await runTransport(transport, MESSAGES);
    if (failure === null) console.log(`RESULT ${transport} ok`);
    else {
      failures += 1;
      console.log(`RESULT ${transport} FAIL ${failure}`);
    }
  }
} finally {
  await browser.close().catch(() => {});
  rmSync(userDataDir, { recursive: true, force: true });
}
process.exit(failures === 0 ? 0 : 1);
