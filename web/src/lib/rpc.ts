// The page's side of the worker: every call carries the page's clock
// (`now`), so the app lock follows the time the user sees (and a test's
// controlled clock).
const worker = new Worker(new URL('../worker.ts', import.meta.url), { type: 'module' });
let next = 1;
const waiting = new Map<number, { resolve: (v: any) => void; reject: (e: any) => void }>();
const listeners = new Set<(m: any) => void>();

worker.onmessage = (e: MessageEvent) => {
  const m = e.data;
  if (m.id) {
    const w = waiting.get(m.id);
    waiting.delete(m.id);
    if (!w) return;
    if (m.ok) w.resolve(m.value);
    else {
      const err: any = new Error(m.error);
      err.kind = m.kind;
      w.reject(err);
    }
  } else listeners.forEach((f) => f(m));
};

export function call<T = any>(cmd: string, args: object = {}): Promise<T> {
  return new Promise((resolve, reject) => {
    const id = next++;
    waiting.set(id, { resolve, reject });
    worker.postMessage({ id, cmd, args, now: Date.now() });
  });
}

export function onEvent(f: (m: any) => void): () => void {
  listeners.add(f);
  return () => listeners.delete(f);
}

// Service-worker messages (a push arrived) reach the same listeners.
if ('serviceWorker' in navigator) {
  navigator.serviceWorker.addEventListener('message', (e) => listeners.forEach((f) => f(e.data)));
}
