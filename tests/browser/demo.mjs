// The demo pages end to end in headless Chromium, driven by puppeteer-core.
// Run by tests/demo_browser.rs, which starts the gateway (demo.enabled) and
// the demo backend and sets:
//   DEMO_BASE_URL     http://127.0.0.1:PORT (the gateway)
//   DEMO_BACKEND_URL  http://127.0.0.1:PORT (the demo backend's API)
//   DEMO_CHROMIUM     the browser binary (/usr/bin/chromium)
//   DEMO_SCREENSHOTS  where the screenshots go
// It prints "CONTROL stop-gateway" / "CONTROL start-gateway" on stdout when
// it wants the gateway stopped or started again, and waits for "stopped" /
// "started" on stdin. Exits non-zero on failure.

import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import puppeteer from 'puppeteer-core';

const BASE = process.env.DEMO_BASE_URL;
const BACKEND = process.env.DEMO_BACKEND_URL;
const CHROMIUM = process.env.DEMO_CHROMIUM || '/usr/bin/chromium';
const SHOTS = process.env.DEMO_SCREENSHOTS;
if (!BASE || !BACKEND || !SHOTS) {
  throw new Error('DEMO_BASE_URL, DEMO_BACKEND_URL and DEMO_SCREENSHOTS must be set (tests/demo_browser.rs sets them)');
}

const STEP = 15_000;
const log = (...args) => console.log(`[${(performance.now() / 1000).toFixed(1)} s]`, ...args);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// stdin lines from the Rust test (answers to CONTROL requests).
const stdinLines = [];
const stdinWaiters = [];
createInterface({ input: process.stdin }).on('line', (line) => {
  const waiter = stdinWaiters.shift();
  if (waiter) waiter(line);
  else stdinLines.push(line);
});
const control = async (request, answer) => {
  console.log(`CONTROL ${request}`);
  const line = stdinLines.length
    ? stdinLines.shift()
    : await Promise.race([
        new Promise((resolve) => stdinWaiters.push(resolve)),
        sleep(STEP * 2).then(() => {
          throw new Error(`no answer to CONTROL ${request}`);
        }),
      ]);
  assert.equal(line.trim(), answer);
};

// Console errors of every page, with the errors a step expects.
const problems = [];
const expected = []; // { pattern, why }
const watch = (page, name) => {
  const report = (text) => {
    const allowed = expected.find((e) => e.pattern.test(text));
    if (allowed) log(`${name}: expected console error (${allowed.why}): ${text}`);
    else problems.push(`${name}: ${text}`);
  };
  page.on('console', (message) => {
    if (message.type() === 'error') report(`${message.text()} (${message.location().url || ''})`);
  });
  page.on('pageerror', (error) => report(`uncaught: ${error.message}`));
  return page;
};
const expecting = async (pattern, why, fn) => {
  const entry = { pattern, why };
  expected.push(entry);
  try {
    return await fn();
  } finally {
    // Late console messages of the step still count as expected.
    await sleep(300);
    expected.splice(expected.indexOf(entry), 1);
  }
};

const api = async (method, path) => {
  const response = await fetch(`${BACKEND}${path}`, { method });
  return { status: response.status, body: await response.json() };
};

const userDataDir = mkdtempSync(join(tmpdir(), 'stompgate-chromium-'));
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
  defaultViewport: { width: 1100, height: 720 },
});
log(`browser: ${await browser.version()}`);

const newPage = async (name) => {
  // An incognito-like context per page: no shared sessionStorage.
  const context = await browser.createBrowserContext();
  return watch(await context.newPage(), name);
};

const state = (page) => page.$eval('#state', (el) => el.dataset.state);
const waitState = (page, wanted, timeout = STEP) =>
  page.waitForFunction((w) => document.getElementById('state').dataset.state === w, { timeout }, wanted);
const pushedOrders = (page) =>
  page.$$eval('#orders li[data-latency-ms]', (lis) =>
    lis.map((li) => ({ id: li.dataset.id, merchant: li.dataset.merchant, latency: Number(li.dataset.latencyMs) })),
  );
const allOrders = (page) =>
  page.$$eval('#orders li', (lis) => lis.map((li) => ({ id: li.dataset.id, merchant: li.dataset.merchant })));

let failed = false;
try {
  // ------------------------------------------------------------ merchant --
  log('merchant page: merchant-1 and merchant-2 log in');
  const m1 = await newPage('merchant-1');
  const m2 = await newPage('merchant-2');
  await m1.goto(`${BASE}/demo/merchant/?merchant=merchant-1`);
  await m2.goto(`${BASE}/demo/merchant/?merchant=merchant-2`);
  await waitState(m1, 'connected');
  await waitState(m2, 'connected');
  const detail = await m1.$eval('#state-detail', (el) => el.textContent);
  assert.match(detail, /WebSocket, ws:\/\/127\.0\.0\.1:\d+\/ws, STOMP 1\.2/, 'the page shows its transport');
  const transports = await m1.$$eval('#transport option', (os) => os.map((o) => o.value));
  assert.deepEqual(
    transports,
    ['websocket', 'websocket', 'xhr-streaming', 'eventsource', 'iframe-eventsource', 'iframe-htmlfile', 'xhr-polling', 'iframe-xhr-polling', 'jsonp-polling'].map(
      (t, i) => (i === 0 ? t : `sockjs-${t}`),
    ),
    'WebSocket, then every SockJS transport (demo/stompgate.toml enables SockJS)',
  );

  log('merchant-3 over SockJS (xhr-streaming, then jsonp-polling): sockjs-client from the gateway');
  for (const transport of ['sockjs-xhr-streaming', 'sockjs-jsonp-polling']) {
    const m3 = await newPage(`merchant-3 ${transport}`);
    await m3.goto(`${BASE}/demo/merchant/?merchant=merchant-3&transport=${transport}`);
    await waitState(m3, 'connected');
    const via = await m3.$eval('#state-detail', (el) => el.textContent);
    assert.match(via, /^SockJS [a-z-]+ .*, http:\/\/127\.0\.0\.1:\d+\/sockjs, STOMP 1\.2$/, 'the page shows its SockJS transport');
    assert.equal(await m3.evaluate(() => typeof SockJS), 'function');
    const scripts = await m3.$$eval('script[src]', (ss) => ss.map((s) => s.src));
    assert.ok(scripts.every((src) => src.startsWith(BASE)), `every script from the gateway: ${scripts}`);
    await m3.waitForFunction(() => document.querySelectorAll('#orders li[data-latency-ms]').length >= 2, { timeout: STEP });
    for (const order of await allOrders(m3)) assert.equal(order.merchant, 'merchant-3');
    log(`merchant-3 over ${transport}: ${(await pushedOrders(m3)).length} pushed orders`);
    await m3.browserContext().close();
  }

  log('waiting for simulated orders on both pages');
  await m1.waitForFunction(() => document.querySelectorAll('#orders li[data-latency-ms]').length >= 3, { timeout: STEP });
  await m2.waitForFunction(() => document.querySelectorAll('#orders li[data-latency-ms]').length >= 1, { timeout: STEP });
  for (const [page, merchant] of [
    [m1, 'merchant-1'],
    [m2, 'merchant-2'],
  ]) {
    const orders = await allOrders(page);
    assert.ok(orders.length > 0);
    for (const order of orders) assert.equal(order.merchant, merchant, `${merchant}'s page shows only its orders`);
    for (const order of await pushedOrders(page)) {
      assert.ok(order.latency < 1000, `order ${order.id} shown ${order.latency} ms after it was placed (< 1 s)`);
    }
    const badge = Number(await page.$eval('#badge', (el) => el.textContent));
    assert.equal(badge, (await pushedOrders(page)).length, 'the badge counts the pushed orders');
  }
  const stats = (await api('GET', '/api/stats')).body;
  log('backend stats', JSON.stringify(stats));
  assert.ok((stats.recent_orders_by_merchant['merchant-3'] || 0) > 0, 'the simulator placed orders for merchant-3 too');
  const m1Ids = new Set((await allOrders(m1)).map((o) => o.id));
  const m2Ids = new Set((await allOrders(m2)).map((o) => o.id));
  assert.ok([...m1Ids].every((id) => !m2Ids.has(id)), 'no order on both pages');
  const title = await m1.title();
  assert.match(title, /^\(\d+\) Orders/, 'the tab title carries the badge');

  log('another session may not subscribe to the /user/ exchange directly');
  const refused = await m2.evaluate(
    (url) =>
      new Promise((resolve) => {
        const client = new StompJs.Client({ brokerURL: url, reconnectDelay: 0 });
        client.onConnect = () => client.subscribe('/exchange/stompgate.user/merchant-1.orders', () => resolve('received'));
        client.onStompError = (frame) => {
          client.deactivate();
          resolve(frame.headers.message);
        };
        client.activate();
        setTimeout(() => resolve('no answer'), 5000);
      }),
    `${BASE.replace('http', 'ws')}/ws`,
  );
  assert.match(refused, /access.refused/i, 'subscribing to another merchant through the exchange is refused');

  log('test order button');
  const before = (await pushedOrders(m2)).length;
  await m2.click('#test-order');
  await m2.waitForFunction((n) => document.querySelectorAll('#orders li[data-latency-ms]').length > n, { timeout: STEP }, before);

  log('gateway down: orders placed meanwhile are resumed from the history, not asked of the backend');
  const beforeRestart = new Set((await allOrders(m1)).map((o) => o.id));
  const connects = await m1.evaluate(() => Number(document.body.dataset.connects));
  const catchUps = await m1.evaluate(() => Number(document.body.dataset.catchUps));
  assert.ok(catchUps >= 1, 'the first connect asked the backend for recent orders');
  const placedWhileDown = [];
  await expecting(/WebSocket connection to .* failed/, 'the gateway is down', async () => {
    await control('stop-gateway', 'stopped');
    for (let i = 0; i < 5; i += 1) {
      const response = await fetch(`${BACKEND}/api/merchant/order?merchant=merchant-1`, { method: 'POST' });
      assert.ok(response.ok, 'the backend placed an order');
      placedWhileDown.push((await response.json()).id);
    }
    await control('start-gateway', 'started');
    await waitState(m1, 'connected');
    await waitState(m2, 'connected');
  });
  await m1.waitForFunction(
    (ids) => ids.every((id) => document.querySelector(`#orders li[data-id="${id}"]`)),
    { timeout: STEP },
    placedWhileDown,
  );
  const via = await m1.evaluate(
    (ids) => ids.map((id) => document.querySelector(`#orders li[data-id="${id}"]`).dataset.via),
    placedWhileDown,
  );
  assert.deepEqual(via, placedWhileDown.map(() => 'resume'), 'the orders placed while down came by the resume');
  assert.equal(await m1.evaluate(() => Number(document.body.dataset.catchUps)), catchUps, 'the page did not ask the backend');
  await m1.waitForFunction(
    (known) => [...document.querySelectorAll('#orders li[data-latency-ms]')].some((li) => !known.includes(li.dataset.id)),
    { timeout: STEP },
    [...beforeRestart],
  );
  for (const order of await allOrders(m1)) assert.equal(order.merchant, 'merchant-1');
  assert.equal(await m1.evaluate(() => Number(document.body.dataset.connects)), connects + 1, 'the page reconnected once');
  await m1.evaluate(() => Demo.meter.render());
  const cost = await m1.$eval('#cost', (el) => ({ ...el.dataset }));
  log('merchant-1 cost', JSON.stringify(cost));
  assert.ok(Number(cost.pushRequests) > 0 && Number(cost.pollRequests) > 0, 'the cost panel counts');
  await m1.screenshot({ path: join(SHOTS, 'demo-merchant.png') });
  log(`screenshot ${join(SHOTS, 'demo-merchant.png')}`);

  // ------------------------------------------------------------ QR login --
  log('QR login: the desktop page shows a code once it listens');
  const desktop = await newPage('qr desktop');
  await desktop.goto(`${BASE}/demo/qr-login/`);
  await desktop.waitForFunction(() => document.body.dataset.waiting === 'true', { timeout: STEP });
  assert.equal(await state(desktop), 'connected');
  const loginId = await desktop.evaluate(() => document.body.dataset.loginId);
  const phoneUrl = await desktop.$eval('#qr', (el) => el.dataset.url);
  assert.equal(phoneUrl, `${BASE}/demo/qr-login/phone?id=${loginId}`);
  assert.ok(await desktop.$('#qr svg'), 'the QR code is drawn in the page');
  await desktop.screenshot({ path: join(SHOTS, 'demo-qr-login.png') });

  log('the phone confirms');
  const phone = await newPage('qr phone');
  await phone.setViewport({ width: 420, height: 640 });
  await phone.goto(phoneUrl);
  await phone.waitForFunction(() => document.body.dataset.ready === 'true');
  await phone.$eval('#user', (el) => {
    el.value = 'alice';
  });
  const tapped = Date.now();
  await phone.click('#confirm');
  await desktop.waitForFunction(() => document.body.dataset.loggedIn, { timeout: STEP });
  const loggedInAfter = Date.now() - tapped;
  log(`desktop logged in ${loggedInAfter} ms after the tap`);
  assert.ok(loggedInAfter < 1000, `the desktop switched within a second (${loggedInAfter} ms)`);
  assert.equal(await desktop.$eval('#logged-in', (el) => el.textContent), 'Logged in as alice');
  await phone.waitForFunction(() => document.getElementById('result').dataset.outcome, { timeout: STEP });
  assert.equal(await phone.$eval('#result', (el) => el.dataset.outcome), 'confirmed');
  await desktop.screenshot({ path: join(SHOTS, 'demo-qr-login-done.png') });
  await phone.screenshot({ path: join(SHOTS, 'demo-qr-login-phone.png') });

  assert.ok(await phone.$eval('#confirm', (el) => el.disabled), 'confirmed: the button is off');

  log('a used id is refused (the code scanned again)');
  const again = await newPage('qr phone, again');
  await again.goto(phoneUrl);
  await again.waitForFunction(() => document.body.dataset.ready === 'true');
  await expecting(/status of 409/, 'confirming a used id', async () => {
    await again.click('#confirm');
    await again.waitForFunction(() => document.getElementById('result').dataset.outcome, { timeout: STEP });
  });
  assert.equal(await again.$eval('#result', (el) => el.dataset.outcome), 'refused');
  assert.match(await again.$eval('#result', (el) => el.textContent), /already used/);

  log('an expired id is refused');
  const shortLived = (await api('POST', '/api/qr/new?ttl_secs=1')).body;
  await sleep(1500);
  const late = await newPage('qr phone, late');
  await late.goto(`${BASE}/demo/qr-login/phone?id=${shortLived.id}`);
  await late.waitForFunction(() => document.body.dataset.ready === 'true');
  await expecting(/status of 410/, 'confirming an expired id', async () => {
    await late.click('#confirm');
    await late.waitForFunction(() => document.getElementById('result').dataset.outcome, { timeout: STEP });
  });
  assert.equal(await late.$eval('#result', (el) => el.dataset.outcome), 'expired');
  assert.match(await late.$eval('#result', (el) => el.textContent), /expired/);
  const unknown = await api('POST', '/api/qr/confirm?id=nope&user=alice');
  assert.equal(unknown.status, 404);

  log('the desktop page itself gives up when its id expires');
  const slow = await newPage('qr desktop, expiring');
  await slow.evaluateOnNewDocument(() => {
    // This page asks for a 1 s id (a shorter life than the backend's is allowed).
    const original = window.fetch;
    window.fetch = (url, init) => original(String(url).replace('/api/qr/new', '/api/qr/new?ttl_secs=1'), init);
  });
  await slow.goto(`${BASE}/demo/qr-login/`);
  await slow.waitForFunction(() => !document.getElementById('expired').hidden, { timeout: STEP });

  await sleep(500);
  assert.deepEqual(problems, [], 'no console errors');
  log('all demo checks passed');
} catch (error) {
  failed = true;
  console.log(`FAILED: ${error.stack || error}`);
  if (problems.length) console.log(`console errors:\n  ${problems.join('\n  ')}`);
} finally {
  await browser.close().catch(() => {});
  rmSync(userDataDir, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
