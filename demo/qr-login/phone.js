// QR-code login, the phone side: confirm the login id from the QR code.
'use strict';

(function () {
  const $ = (id) => document.getElementById(id);
  const id = new URLSearchParams(location.search).get('id') || '';
  $('login-id').textContent = id || '(none)';
  const MESSAGES = {
    404: 'Unknown code: scan it again.',
    409: 'This code was already used.',
    410: 'This code has expired: ask the computer for a new one.',
  };
  $('confirm').addEventListener('click', async () => {
    $('confirm').disabled = true;
    const answer = await Demo.api('POST', '/api/qr/confirm', { id, user: $('user').value });
    const result = $('result');
    if (answer.ok) {
      result.textContent = `Done: the computer is logged in as ${answer.body.user}.`;
      result.className = 'big ok';
      result.dataset.outcome = 'confirmed';
    } else {
      result.textContent = MESSAGES[answer.status] || (answer.body && answer.body.error) || `Failed (${answer.status}).`;
      result.className = 'big bad';
      result.dataset.outcome = answer.status === 410 ? 'expired' : 'refused';
      $('confirm').disabled = false;
    }
  });
  document.body.dataset.ready = 'true';
})();
