// Sitrep's service worker: the app shell offline, and content-free push.
// It never sees a message: the API (/v1/) is not cached or intercepted, and
// a push carries no payload, so the notification can only say that there is
// something new. Written into dist/ by vite.config.js with the shell's files.
const SHELL = __SHELL__;
const VERSION = __VERSION__;
const CACHE = 'sitrep-shell-' + VERSION;

self.addEventListener('install', (event) => {
  event.waitUntil(
    caches.open(CACHE).then((c) => c.addAll(SHELL)).then(() => self.skipWaiting()),
  );
});

self.addEventListener('activate', (event) => {
  event.waitUntil(
    caches.keys()
      .then((keys) => Promise.all(keys.filter((k) => k.startsWith('sitrep-shell-') && k !== CACHE).map((k) => caches.delete(k))))
      .then(() => self.clients.claim()),
  );
});

self.addEventListener('fetch', (event) => {
  const url = new URL(event.request.url);
  if (event.request.method !== 'GET' || url.origin !== self.location.origin) return;
  if (url.pathname.startsWith('/v1/') || url.pathname === '/healthz' || url.pathname === '/readyz' || url.pathname === '/metrics') return;
  // The shell: from the cache (the network when it is not there); an app
  // route is the shell's index.
  const key = event.request.mode === 'navigate' ? '/' : url.pathname;
  event.respondWith(
    caches.open(CACHE).then((c) => c.match(key).then((hit) => hit || fetch(event.request))),
  );
});

// A push says nothing of the message: it is empty, or (a priority alert)
// holds the one word `urgent`, encrypted to this browser by the server
// (RFC 8291) and decrypted by the browser. What the notification says is
// fixed, under one tag per kind so repeats collapse.
self.addEventListener('push', (event) => {
  let urgent = false;
  try {
    urgent = event.data !== null && event.data.text() === 'urgent';
  } catch {
    urgent = false;
  }
  event.waitUntil(
    self.registration.showNotification(urgent ? 'Urgent alert' : 'New message', {
      body: urgent ? 'Open Sitrep to read and acknowledge it.' : 'Open Sitrep to read it.',
      tag: urgent ? 'sitrep-alert' : 'sitrep-message',
      renotify: urgent,
      requireInteraction: urgent,
      icon: '/icon.svg',
    }).then(() => self.clients.matchAll({ type: 'window' }))
      .then((cs) => cs.forEach((c) => c.postMessage({ event: 'push', urgent }))),
  );
});

self.addEventListener('notificationclick', (event) => {
  event.notification.close();
  event.waitUntil(
    self.clients.matchAll({ type: 'window' }).then((cs) => (cs.length ? cs[0].focus() : self.clients.openWindow('/'))),
  );
});
