// QR-code login, the desktop side: get a one-time login id, subscribe to
// /user/queue/login as user qr-<id>, then show the QR code and wait.
'use strict';

(async function () {
  const $ = (id) => document.getElementById(id);
  Demo.startMeter();
  await Demo.fillTransports();
  const config = await Demo.config();

  let client = null;
  let timer = null;

  const stop = () => {
    if (Demo.meter) Demo.meter.pause();
    if (timer) clearInterval(timer);
    timer = null;
    if (client) client.deactivate();
    client = null;
  };

  const render = (url) => {
    // qrcode-generator (vendored): type 0 picks the smallest version that fits.
    const qr = qrcode(0, 'M');
    qr.addData(url);
    qr.make();
    $('qr').innerHTML = qr.createSvgTag({ cellSize: 4, margin: 2, scalable: true });
    $('qr').dataset.url = url;
    $('phone-link').href = url;
  };

  const start = async () => {
    stop();
    if (Demo.meter) Demo.meter.resume();
    $('waiting').hidden = false;
    $('expired').hidden = true;
    $('done').hidden = true;
    $('qr').innerHTML = '<span class="small">asking the backend for a login id…</span>';
    const answer = await Demo.api('POST', '/api/qr/new');
    if (!answer.ok) {
      Demo.setState('error', (answer.body && answer.body.error) || `the backend answered ${answer.status}`);
      return;
    }
    const login = answer.body;
    document.body.dataset.loginId = login.id;
    const phoneUrl = `${location.origin}/demo/qr-login/phone?id=${encodeURIComponent(login.id)}`;

    const expire = () => {
      stop();
      $('waiting').hidden = true;
      $('expired').hidden = false;
      Demo.setState('disconnected', 'the login id expired');
    };
    const tick = () => {
      const left = Math.max(0, Math.ceil((login.expires_at_ms - Date.now()) / 1000));
      $('countdown').textContent = `${left} s`;
      if (left <= 0) expire();
    };

    client = Demo.stompClient(config, login.token, {
      onConnect: () => {
        // Show the code only once the subscription is in place (the
        // receipt), so that a quick phone cannot confirm before the page listens.
        const receipt = `sub-${login.id}`;
        client.watchForReceipt(receipt, () => {
          render(phoneUrl);
          document.body.dataset.waiting = 'true';
        });
        client.subscribe(
          '/user/queue/login',
          (message) => {
            if (Demo.meter) Demo.meter.message(message.body);
            const body = JSON.parse(message.body);
            if (Demo.meter) Demo.meter.latency(Date.now() - body.at_ms);
            stop();
            $('waiting').hidden = true;
            $('done').hidden = false;
            $('logged-in').textContent = `Logged in as ${body.user}`;
            document.body.dataset.loggedIn = body.user;
            Demo.setState('disconnected', `login confirmed ${Date.now() - body.at_ms} ms after the phone's tap`);
          },
          { receipt },
        );
      },
    });
    client.activate();
    tick();
    timer = setInterval(tick, 500);
  };

  $('renew').addEventListener('click', start);
  $('transport').addEventListener('change', start);
  document.body.dataset.ready = 'true';
  start();
})();
