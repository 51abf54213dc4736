// Turning on notifications: the browser's permission, a push subscription
// with the server's VAPID key, and the endpoint registered with the server.
// Pushes are empty; the service worker shows fixed text (src/sw.js).
import { call } from './rpc';

function b64url(s: string): Uint8Array {
  const b = atob(s.replace(/-/g, '+').replace(/_/g, '/') + '==='.slice((s.length + 3) % 4));
  return Uint8Array.from(b, (c) => c.charCodeAt(0));
}

export async function enablePush(): Promise<void> {
  if (!('serviceWorker' in navigator) || !('PushManager' in window)) {
    throw new Error('This browser cannot show notifications from Sitrep.');
  }
  const perm = await Notification.requestPermission();
  if (perm !== 'granted') throw new Error('Notifications are blocked for this site: allow them in the browser settings.');
  const reg = await navigator.serviceWorker.ready;
  const key: string = await call('push_key');
  // A browser with no push service reachable can wait for ever: give up.
  const sub = await Promise.race([
    reg.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: b64url(key) as BufferSource }),
    new Promise<never>((_, reject) => setTimeout(() => reject(new Error('The browser’s push service did not answer. Try again later.')), 15_000)),
  ]);
  // The keys let the server encrypt the one word an urgent push carries.
  const { keys } = sub.toJSON();
  await call('push_subscribe', { endpoint: sub.endpoint, keys });
}
