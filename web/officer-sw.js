// The officer page's service worker: keeps the page's shell so it opens with a weak signal.
// Network first (a new release shows at once); the cache only when the network fails. Never
// caches the API or websockets: alerts are live or absent, never stale.
const CACHE = 'tether-officer-v1';
const SHELL = ['/officer', '/static/style.css', '/static/common.js', '/static/officer.js',
  '/static/icon.svg', '/officer.webmanifest', '/vendor/gcoord/gcoord.global.prod.js',
  '/vendor/maplibre-gl/maplibre-gl.css', '/vendor/maplibre-gl/maplibre-gl.mjs'];

self.addEventListener('install', (ev) => {
  ev.waitUntil(caches.open(CACHE).then((c) => c.addAll(SHELL)).then(() => self.skipWaiting()));
});
self.addEventListener('activate', (ev) => {
  ev.waitUntil(caches.keys().then((keys) => Promise.all(
    keys.filter((k) => k !== CACHE).map((k) => caches.delete(k)))).then(() => self.clients.claim()));
});
self.addEventListener('fetch', (ev) => {
  const url = new URL(ev.request.url);
  if (ev.request.method !== 'GET' || url.origin !== location.origin ||
      url.pathname.startsWith('/api/') || url.pathname.startsWith('/ws/')) return;
  ev.respondWith(fetch(ev.request).then((r) => {
    if (r.ok && SHELL.includes(url.pathname)) {
      const copy = r.clone();
      caches.open(CACHE).then((c) => c.put(ev.request, copy));
    }
    return r;
  }).catch(() => caches.match(ev.request)));
});
self.addEventListener('notificationclick', (ev) => {
  ev.notification.close();
  ev.waitUntil(self.clients.openWindow('/officer'));
});
