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

// A push has no content (the server sends none, whatever arrives here is
// ignored); what it says is fixed, under one tag so repeats collapse.
self.addEventListener('push', (event) => {
  event.waitUntil(
    self.registration.showNotification('New message', {
      body: 'Open Sitrep to read it.',
      tag: 'sitrep-message',
      icon: '/icon.svg',
    }).then(() => self.clients.matchAll({ type: 'window' }))
      .then((cs) => cs.forEach((c) => c.postMessage({ event: 'push' }))),
  );
});

self.addEventListener('notificationclick', (event) => {
  event.notification.close();
  event.waitUntil(
    self.clients.matchAll({ type: 'window' }).then((cs) => (cs.length ? cs[0].focus() : self.clients.openWindow('/'))),
  );
});
