// stompgate-resume.js: resumable subscriptions for @stomp/stompjs.
//
// Served by the gateway at /stompgate-resume.js. On destinations the
// gateway keeps a history for ([history] in its configuration), every
// MESSAGE carries its position (`x-stream-epoch`, `x-stream-offset`). This
// helper remembers the position of the last message handled per
// subscription and, when the page subscribes again (after a reconnect:
// stompjs calls onConnect again), subscribes with `x-resume-from`, so the
// gateway delivers what was missed, then live, in order, no duplicate.
//
//   const resume = StompgateResume.create({ onResumed: (key, ok) => ... });
//   client.onConnect = () => {
//     resume.subscribe(client, '/topic/merchant.42', (message) => show(message));
//   };
//
// `onResumed(key, true)`: nothing was missed; `(key, false)`: the history
// did not reach back (retention, another stream epoch, too many missed):
// the page should fetch what it needs another way. Positions are kept in
// sessionStorage (per tab; a reload keeps them) unless `storage` is given
// (any object with getItem/setItem/removeItem, or null for memory only).
(function (root) {
  'use strict';

  function memoryStorage() {
    const map = new Map();
    return {
      getItem: (k) => (map.has(k) ? map.get(k) : null),
      setItem: (k, v) => map.set(k, String(v)),
      removeItem: (k) => map.delete(k),
    };
  }

  function defaultStorage() {
    try {
      if (root.sessionStorage) {
        root.sessionStorage.setItem('stompgate-resume:probe', '1');
        root.sessionStorage.removeItem('stompgate-resume:probe');
        return root.sessionStorage;
      }
    } catch (e) {
      // Storage refused (private mode, sandboxed frame): memory only.
    }
    return memoryStorage();
  }

  // `<epoch>:<offset>`, both decimal: anything else is not a position.
  const POSITION = /^[0-9]{1,20}:[0-9]{1,20}$/;

  function create(options) {
    const opts = options || {};
    const storage = opts.storage === null ? memoryStorage() : opts.storage || defaultStorage();
    const prefix = opts.prefix || 'stompgate-resume:';
    const onResumed = opts.onResumed;

    const position = (key) => {
      const value = storage.getItem(prefix + key);
      return value && POSITION.test(value) ? value : null;
    };
    const remember = (key, value) => storage.setItem(prefix + key, value);
    const forget = (key) => storage.removeItem(prefix + key);

    // Subscribes `client` to `destination`; `headers` are passed on
    // (an `id` among them keeps the subscription's id); `key` names the
    // remembered position (default: the destination).
    const subscribe = (client, destination, onMessage, headers, key) => {
      const name = key || destination;
      const h = Object.assign({}, headers || {});
      const from = position(name);
      if (from) h['x-resume-from'] = from;
      return client.subscribe(
        destination,
        (message) => {
          const resumed = message.headers['x-resumed'];
          if (resumed !== undefined && onResumed) onResumed(name, resumed === 'true');
          onMessage(message);
          // Remembered once handled: a page closed in the handler sees
          // the message again, never misses it.
          const epoch = message.headers['x-stream-epoch'];
          const offset = message.headers['x-stream-offset'];
          if (epoch !== undefined && offset !== undefined && POSITION.test(`${epoch}:${offset}`)) {
            remember(name, `${epoch}:${offset}`);
          }
        },
        h,
      );
    };

    return { subscribe, position, forget };
  }

  root.StompgateResume = { create };
})(typeof self !== 'undefined' ? self : this);
