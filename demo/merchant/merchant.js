// The merchant back office: log in as a merchant, subscribe to
// /user/queue/orders, show the orders as they are pushed. Across a
// reconnect (Wi-Fi, a closed lid, a gateway restart) the subscription
// resumes where it was (/stompgate-resume.js, x-resume-from): the gateway
// delivers the orders placed meanwhile; the backend is asked only on the
// first connect, or when the gateway says the history did not reach back.
'use strict';

(async function () {
  const $ = (id) => document.getElementById(id);
  Demo.startMeter();
  await Demo.fillTransports();

  const config = await Demo.config();
  const merchants = await Demo.api('GET', '/api/merchants');
  for (const m of merchants.body.merchants) {
    const option = document.createElement('option');
    option.value = m;
    option.textContent = m;
    $('merchant').appendChild(option);
  }

  const orders = new Map(); // id -> order, as shown
  let unseen = 0;
  let client = null;
  let session = null; // { user, token }
  // Times the page asked the backend for orders (tests read it).
  let catchUps = 0;
  document.body.dataset.catchUps = '0';

  const setBadge = () => {
    $('badge').textContent = String(unseen);
    $('badge').dataset.count = String(unseen);
    document.title = `${unseen ? `(${unseen}) ` : ''}Orders · merchant back office`;
  };

  const money = (cents, currency) => `${(cents / 100).toFixed(2)} ${currency}`;

  // Shows an order (once); `how` is 'push', 'resume' or 'catch-up'.
  const show = (order, how) => {
    if (orders.has(order.id)) return;
    orders.set(order.id, order);
    const li = document.createElement('li');
    li.dataset.id = order.id;
    li.dataset.merchant = order.merchant;
    const items = order.items.map((i) => `${i.qty} × ${Demo.escape(i.name)}`).join(', ');
    let meta = `${Demo.escape(order.id)} · for ${Demo.escape(order.merchant)} · placed ${new Date(order.placed_at_ms).toLocaleTimeString()}`;
    li.dataset.placedAt = String(order.placed_at_ms);
    li.dataset.via = how;
    if (how === 'resume') {
      meta += ' · resumed after a reconnect';
      li.className = 'new';
      unseen += 1;
      setBadge();
    } else if (how === 'push') {
      const latency = Date.now() - order.placed_at_ms;
      if (Demo.meter) Demo.meter.latency(latency);
      li.dataset.latencyMs = String(latency);
      meta += ` · pushed in ${latency} ms`;
      li.className = 'new';
      unseen += 1;
      setBadge();
    } else {
      meta += ' · fetched after a (re)connect';
    }
    li.innerHTML = `<span>${items}</span><b>${money(order.total_cents, order.currency)}</b><span class="meta">${meta}</span>`;
    // Newest first, by the time the order was placed.
    const older = [...$('orders').children].find((other) => Number(other.dataset.placedAt) < order.placed_at_ms);
    $('orders').insertBefore(li, older || null);
    $('empty').hidden = true;
  };

  // Orders placed before the page first connected: the backend keeps the
  // recent ones. Also the fallback when a resume did not reach back.
  const catchUp = async () => {
    catchUps += 1;
    document.body.dataset.catchUps = String(catchUps);
    const answer = await Demo.api('GET', '/api/merchant/orders', { token: session.token });
    if (answer.ok) for (const order of answer.body.orders) show(order, 'catch-up');
  };

  // Positions per merchant (a tab keeps them across reloads).
  const resume = StompgateResume.create({
    onResumed: (key, complete) => {
      if (!complete) catchUp();
    },
  });
  // Whether the next messages are what the gateway resumed (until live).
  let resuming = false;

  const connect = () => {
    client = Demo.stompClient(config, session.token, {
      onConnect: () => {
        const key = `orders:${session.user}`;
        const resumable = resume.position(key) !== null;
        resuming = resumable;
        const connectedAt = Date.now() - 200;
        const receipt = `orders-${Date.now()}`;
        // First connect: catch up once the subscription is in place (its
        // receipt), so that no order falls between the two. A reconnect
        // resumes instead: the gateway sends what was missed.
        client.watchForReceipt(receipt, () => {
          if (!resumable) catchUp();
        });
        resume.subscribe(
          client,
          '/user/queue/orders',
          (message) => {
            if (Demo.meter) Demo.meter.message(message.body);
            const order = JSON.parse(message.body);
            // Resumed orders were placed before this connect.
            if (resuming && order.placed_at_ms >= connectedAt) resuming = false;
            show(order, resuming ? 'resume' : 'push');
          },
          { receipt },
          key,
        );
      },
      onStompError: (message) => {
        if (/access refused|token/.test(message)) logout();
      },
    });
    client.activate();
  };

  const login = async (merchant) => {
    const answer = await Demo.api('POST', '/api/merchant/login', { merchant });
    if (!answer.ok) {
      Demo.setState('error', (answer.body && answer.body.error) || `login failed (${answer.status})`);
      return;
    }
    session = { user: answer.body.user, token: answer.body.token };
    sessionStorage.setItem('stompgate-demo-merchant', JSON.stringify(session));
    $('who').textContent = `· ${session.user}`;
    $('login').hidden = true;
    $('orders-panel').hidden = false;
    connect();
  };

  const logout = () => {
    if (client) client.deactivate();
    client = null;
    session = null;
    sessionStorage.removeItem('stompgate-demo-merchant');
    orders.clear();
    unseen = 0;
    setBadge();
    $('orders').innerHTML = '';
    $('empty').hidden = false;
    $('who').textContent = '';
    $('login').hidden = false;
    $('orders-panel').hidden = true;
    Demo.setState('disconnected', '');
  };

  $('login-button').addEventListener('click', () => login($('merchant').value));
  $('logout').addEventListener('click', logout);
  $('seen').addEventListener('click', () => {
    unseen = 0;
    setBadge();
    for (const li of document.querySelectorAll('#orders li.new')) li.classList.remove('new');
  });
  $('test-order').addEventListener('click', () => Demo.api('POST', '/api/merchant/order', { merchant: session.user }));

  // ?merchant=merchant-2 logs in at once (links, tests); a reload keeps the session.
  const wanted = new URLSearchParams(location.search).get('merchant');
  const saved = JSON.parse(sessionStorage.getItem('stompgate-demo-merchant') || 'null');
  if (wanted) login(wanted);
  else if (saved) {
    session = saved;
    $('who').textContent = `· ${session.user}`;
    $('login').hidden = true;
    $('orders-panel').hidden = false;
    connect();
  }
  document.body.dataset.ready = 'true';
})();
