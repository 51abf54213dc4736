// The engine's driver in the browser: a Web Worker, so Argon2id and a long
// catch-up never freeze the page. It owns the profile (a Web Lock: one tab
// at a time), keeps the sealed records in IndexedDB, performs the requests
// the engine's tasks ask for, and answers the page's questions. It decides
// nothing itself: what an answer means is the engine's (crates/core).
//
// The rule that makes it crash safe: whatever the engine wrote is committed
// to IndexedDB (durability "strict") before the request that depends on it
// leaves; the wrong-passcode count is raised before a passcode is tried.
import init, { Engine } from './pkg/sitrep_web.js';
import wasmUrl from './pkg/sitrep_web_bg.wasm?url';

type Msg = { id: number; cmd: string; args: any; now: number };
type Write = { op: 'clear' | 'put' | 'delete' | 'failures'; id?: Uint8Array; data?: Uint8Array; failures?: number; limit?: number };

const origin = self.location.origin;
let engine: Engine;
let db: IDBDatabase;
let token: string | null = null;
let online = true;
let live = false;
let ws: WebSocket | null = null;
let wsBackoff = 1000;
let syncBackoff = 2000;
let syncTimer: ReturnType<typeof setTimeout> | null = null;
let pollTimer: ReturnType<typeof setInterval> | null = null;
let policyAnswer = '';
let adminSession: string | null = null;

const hex = (b: Uint8Array) => Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
const unhex = (s: string) => new Uint8Array(s.match(/../g)!.map((h) => parseInt(h, 16)));
const emit = (m: object) => (self as any).postMessage(m);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function openDb(): Promise<IDBDatabase> {
  return new Promise((resolve, reject) => {
    const r = indexedDB.open('sitrep', 1);
    r.onupgradeneeded = () => {
      r.result.createObjectStore('records');
      r.result.createObjectStore('meta');
    };
    r.onsuccess = () => resolve(r.result);
    r.onerror = () => reject(r.error);
  });
}

function done(tx: IDBTransaction): Promise<void> {
  return new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve();
    tx.onerror = () => reject(tx.error);
    tx.onabort = () => reject(tx.error ?? new Error('the store write was aborted'));
  });
}

async function load() {
  const tx = db.transaction(['records', 'meta'], 'readonly');
  const recs = tx.objectStore('records');
  const keys: IDBValidKey[] = await req(recs.getAllKeys());
  const vals: Uint8Array[] = await req(recs.getAll());
  const failures: [number, number] | undefined = await req(tx.objectStore('meta').get('failures'));
  keys.forEach((k, i) => engine.load(unhex(k as string), vals[i]));
  if (failures) engine.set_failures(failures[0], failures[1]);
}

function req<T>(r: IDBRequest<T>): Promise<T> {
  return new Promise((resolve, reject) => {
    r.onsuccess = () => resolve(r.result);
    r.onerror = () => reject(r.error);
  });
}

// One transaction for one batch, in order; resolved once it is on disk.
async function write(ws: Write[]) {
  if (ws.length === 0) return;
  const tx = db.transaction(['records', 'meta'], 'readwrite', { durability: 'strict' });
  const recs = tx.objectStore('records');
  for (const w of ws) {
    if (w.op === 'clear') recs.clear();
    else if (w.op === 'put') recs.put(w.data, hex(w.id!));
    else if (w.op === 'delete') recs.delete(hex(w.id!));
    else if (w.op === 'failures') tx.objectStore('meta').put([w.failures, w.limit], 'failures');
  }
  await done(tx);
}

const flush = () => write(engine.take_writes() as Write[]);

function setOnline(v: boolean) {
  if (v !== online) {
    online = v;
    emit({ event: 'online', online });
  }
}

async function perform(method: string, path: string, body?: string) {
  const headers: Record<string, string> = {};
  if (token) headers.authorization = 'Bearer ' + token;
  if (body !== undefined) headers['content-type'] = 'application/json';
  const r = await fetch(origin + path, { method, headers, body, cache: 'no-store', signal: AbortSignal.timeout(30_000) });
  return { status: r.status, body: new Uint8Array(await r.arrayBuffer()) };
}

// Engine tasks run one at a time, in the order asked.
let queue: Promise<unknown> = Promise.resolve();
function run(kind: string, args: object = {}): Promise<any> {
  const p = queue.then(() => drive(kind, args));
  queue = p.catch(() => undefined);
  return p;
}

async function drive(kind: string, args: object) {
  engine.start(kind, JSON.stringify(args), Date.now());
  for (;;) {
    const a = JSON.parse(engine.poll(Date.now()));
    if (a.t === 'request') {
      await flush();
      try {
        const r = await perform(a.method, a.path, a.method === 'POST' ? a.body : undefined);
        setOnline(r.status < 500);
        engine.feed(r.status, r.body, Date.now());
      } catch {
        setOnline(false);
        engine.feed_lost(Date.now());
      }
    } else if (a.t === 'wait') {
      await sleep(Math.max(0, a.until - Date.now()));
    } else {
      await flush();
      if (a.t === 'done' || a.t === 'failed') emit({ event: 'changed', events: a.events ?? [], notification: a.notification ?? null });
      if (a.t === 'failed') {
        if (a.kind === 'wiped') {
          stopLive();
          emit({ event: 'wiped' });
        }
        if (a.kind === 'unreachable') setOnline(false);
        const e: any = new Error(a.message);
        e.kind = a.kind;
        e.retryable = a.retryable;
        throw e;
      }
      if (a.t === 'done') setOnline(true);
      return a;
    }
  }
}

// A sync now, and again with a backoff while the server cannot be reached.
// Wake-ups that come while one runs are folded into one more run after it
// (a backlog of a thousand pushes is two syncs, not a thousand).
let syncing = false;
let again: string | null = null;
function syncSoon(kind = 'sync', delay = 0) {
  if (!live) return;
  if (syncing) {
    if (again !== 'sync') again = kind;
    return;
  }
  if (syncTimer) clearTimeout(syncTimer);
  syncTimer = setTimeout(async () => {
    syncTimer = null;
    syncing = true;
    let retry = false;
    try {
      await run(kind);
      syncBackoff = 2000;
    } catch (e: any) {
      retry = live && e.retryable !== false && e.kind !== 'wiped' && e.kind !== 'locked';
    } finally {
      syncing = false;
    }
    if (retry) {
      syncBackoff = Math.min(syncBackoff * 2, 60_000);
      again = null;
      syncSoon('sync', syncBackoff * (0.5 + Math.random() / 2));
    } else if (again) {
      const k = again;
      again = null;
      syncSoon(k);
    }
  }, delay);
}

function connect() {
  if (!live || !token || ws) return;
  const url = origin.replace(/^http/, 'ws') + '/v1/ws';
  const s = new WebSocket(url, ['sitrep', 'bearer.' + token]);
  ws = s;
  s.onopen = () => {
    wsBackoff = 1000;
    setOnline(true);
    syncSoon('sync');
  };
  // Frames are only a wake-up: entries are fetched and acknowledged by a sync.
  s.onmessage = () => syncSoon('catch_up');
  s.onclose = () => {
    if (ws === s) ws = null;
    if (!live) return;
    setOnline(false);
    wsBackoff = Math.min(wsBackoff * 2, 30_000);
    setTimeout(connect, wsBackoff * (0.5 + Math.random() / 2));
  };
}

function startLive() {
  token = engine.token(Date.now());
  live = true;
  connect();
  syncSoon('sync');
  if (!pollTimer) pollTimer = setInterval(() => syncSoon('sync'), 30_000);
}

function stopLive() {
  live = false;
  token = null;
  adminSession = null;
  if (ws) {
    const s = ws;
    ws = null;
    s.close();
  }
  if (pollTimer) clearInterval(pollTimer);
  pollTimer = null;
  if (syncTimer) clearTimeout(syncTimer);
  syncTimer = null;
}

async function apiError(r: { status: number; body: Uint8Array }) {
  try {
    const e = JSON.parse(new TextDecoder().decode(r.body));
    return new Error(e.message || e.error || `HTTP ${r.status}`);
  } catch {
    return new Error(`the server answered HTTP ${r.status}`);
  }
}

const commands: Record<string, (args: any, now: number) => Promise<unknown> | unknown> = {
  state: (_a, now) => ({ has_profile: engine.has_profile(), locked: engine.locked(now), online }),
  async enrol_check({ code }) {
    const r = await perform('GET', '/healthz');
    if (r.status !== 200) throw await apiError(r);
    const health = JSON.parse(new TextDecoder().decode(r.body));
    const fingerprint = engine.enrol_check(code, health.org_fingerprint);
    const p = await perform('GET', '/v1/policy');
    policyAnswer = p.status === 200 ? new TextDecoder().decode(p.body) : '{}';
    return { fingerprint, min_passcode: Engine.min_passcode(policyAnswer) };
  },
  async enrol({ code, passcode }, now) {
    const body = engine.enrol_request(code, policyAnswer);
    const r = await perform('POST', '/v1/enrol', body);
    if (r.status !== 200) throw await apiError(r);
    const out = JSON.parse(engine.enrol_finish(origin, new TextDecoder().decode(r.body), passcode, now));
    await flush();
    startLive();
    run('topup').catch(() => undefined);
    return out;
  },
  async unlock({ passcode, code }, now) {
    const [failures, limit] = engine.failures();
    // Counted before it is tried: closing the tab mid-derivation is a try.
    await write([{ op: 'failures', failures: failures + 1, limit }]);
    const r = JSON.parse(engine.unlock(passcode, code || undefined, now));
    if (!r.ok && (r.reason === 'none' || r.reason === 'error')) {
      await write([{ op: 'failures', failures, limit }]);
    }
    await flush();
    if (r.ok) startLive();
    if (r.reason === 'wiped') emit({ event: 'wiped' });
    return r;
  },
  lock() {
    stopLive();
    engine.lock();
    return true;
  },
  tick(_a, now) {
    const wasLive = live;
    const locked = engine.locked(now);
    if (locked && wasLive) {
      stopLive();
      emit({ event: 'locked' });
    }
    return locked;
  },
  touch: (_a, now) => engine.touch(now),
  me: (_a, now) => JSON.parse(engine.me(now)),
  conversations: (_a, now) => JSON.parse(engine.conversations(now)),
  async conversation({ name, receipts: withReceipts = true }, now) {
    // Delivery and read state: one request, only when it can be answered.
    let receipts: string | undefined;
    if (withReceipts && token && online) {
      try {
        const r = await perform('GET', engine.receipts_path(name, now));
        if (r.status === 200) receipts = new TextDecoder().decode(r.body);
      } catch {
        /* shown without ticks beyond "sent" */
      }
    }
    return JSON.parse(engine.conversation(name, receipts, now));
  },
  async mark_shown({ name }, now) {
    engine.mark_shown(name, now);
    await flush();
    const m = engine.read_marker(name, now);
    if (m && token) {
      const { path, body } = JSON.parse(m);
      perform('POST', path, body).catch(() => undefined);
    }
  },
  pid_scan: ({ name, text }, now) => JSON.parse(engine.pid_scan(name, text, now)),
  async send({ name, text, confirmed }, now) {
    const id = engine.queue(name, text, !!confirmed, now);
    // Sealed in the outbox before anything else happens; then the catch-up
    // that encrypts it at the current epoch and posts it.
    await flush();
    syncSoon('catch_up');
    return id;
  },
  async create(args, now) {
    engine.touch(now);
    await run('create', args);
    return true;
  },
  incidents: (_a, now) => JSON.parse(engine.incidents(now)),
  async raise(args, now) {
    engine.touch(now);
    const done = await run('raise', args);
    return done.result;
  },
  async callin({ id, availability }, now) {
    engine.callin(id, String(availability), now);
    await flush();
    syncSoon('sync');
    return true;
  },
  async send_alert({ name, to, priority, text, ack_within }, now) {
    const id = engine.send_alert(name, to, priority, text, ack_within, now);
    await flush();
    syncSoon('catch_up');
    return id;
  },
  async ack({ alert }, now) {
    engine.ack_alert(alert, now);
    await flush();
    syncSoon('sync');
    return true;
  },
  decisions: ({ name }, now) => JSON.parse(engine.decisions(name, now)),
  async decide({ name, kind, text }, now) {
    engine.decide(name, kind, text, now);
    await flush();
    syncSoon('sync');
    return true;
  },
  casualties: ({ name }, now) => JSON.parse(engine.casualties(name, now)),
  async casualty({ name, entry }, now) {
    engine.casualty(name, JSON.stringify(entry), now);
    await flush();
    syncSoon('sync');
    return true;
  },
  // The user's devices, and wiping one (a lost phone): the server revokes
  // it and every conversation removes it at its members' next sync.
  async devices() {
    const r = await perform('GET', '/v1/devices');
    if (r.status !== 200) throw await apiError(r);
    return JSON.parse(new TextDecoder().decode(r.body));
  },
  async wipe_device({ device }) {
    const r = await perform('POST', `/v1/devices/${encodeURIComponent(device)}/wipe`, '{}');
    if (r.status !== 200) throw await apiError(r);
    return true;
  },
  // Administration: the admin API with this device's token, a two-step
  // code once for a ten-minute session, kept here (never in the page).
  async admin_session({ code }) {
    const headers: Record<string, string> = { authorization: 'Bearer ' + token, 'content-type': 'application/json' };
    if (code) headers['x-sitrep-totp'] = code;
    const r = await fetch(origin + '/v1/admin/session', { method: 'POST', headers, body: '{}', cache: 'no-store' });
    const body = new Uint8Array(await r.arrayBuffer());
    if (r.status !== 200) throw await apiError({ status: r.status, body });
    adminSession = JSON.parse(new TextDecoder().decode(body)).session;
    return true;
  },
  async admin({ method, path, body }) {
    if (!String(path).startsWith('/v1/admin/') || String(path).includes('..')) throw new Error('not an admin path');
    if (!adminSession) throw Object.assign(new Error('Enter your two-step code to administer'), { kind: 'admin_session' });
    const headers: Record<string, string> = { authorization: 'Bearer ' + token, 'x-sitrep-admin-session': adminSession };
    if (body !== undefined) headers['content-type'] = 'application/json';
    const r = await fetch(origin + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: 'no-store' });
    const bytes = new Uint8Array(await r.arrayBuffer());
    if (r.status === 401 || r.status === 403) adminSession = null;
    if (r.status !== 200) throw Object.assign(await apiError({ status: r.status, body: bytes }), { kind: r.status === 401 || r.status === 403 ? 'admin_session' : 'refused' });
    return JSON.parse(new TextDecoder().decode(bytes));
  },
  is_records: (_a, now) => engine.is_records(now),
  // Search and export: recorded in the organisation's audit log first;
  // when the server does not record it, nothing is searched or exported.
  async records({ kind, query }, now) {
    await run('sync').catch(() => undefined);
    const { path, body } = JSON.parse(engine.records_begin(kind, JSON.stringify(query), now));
    let r;
    try {
      r = await perform('POST', path, body);
    } catch {
      throw new Error('The audit log could not be reached, so nothing was searched or exported.');
    }
    if (r.status !== 200) throw new Error('The audit log did not record this, so nothing was searched or exported: ' + (await apiError(r)).message);
    const out = JSON.parse(engine.records_finish(new TextDecoder().decode(r.body), now));
    await flush();
    return out;
  },
  async push_key() {
    const r = await perform('GET', '/v1/push/key');
    if (r.status !== 200) throw await apiError(r);
    return JSON.parse(new TextDecoder().decode(r.body)).public_key;
  },
  async push_subscribe({ endpoint, keys }) {
    const r = await perform('POST', '/v1/push/subscribe', JSON.stringify({ endpoint, keys }));
    if (r.status !== 200) throw await apiError(r);
    return true;
  },
  async sync() {
    await run('sync');
    return true;
  },
};

async function main() {
  await init({ module_or_path: wasmUrl });
  engine = new Engine();
  db = await openDb();
  await load();
  self.onmessage = async (e: MessageEvent<Msg>) => {
    const { id, cmd, args, now } = e.data;
    try {
      const f = commands[cmd];
      if (!f) throw new Error('unknown command ' + cmd);
      const value = await f(args ?? {}, now ?? Date.now());
      emit({ id, ok: true, value });
    } catch (err: any) {
      emit({ id, ok: false, error: String(err?.message ?? err), kind: err?.kind });
    }
  };
  emit({ event: 'ready', has_profile: engine.has_profile() });
}

// One tab owns the profile: a second one says so, waits its turn, and
// opens once the first is closed.
const own = () => {
  main().catch((e) => emit({ event: 'fatal', error: String(e?.message ?? e) }));
  return new Promise<void>(() => undefined);
};
navigator.locks.request('sitrep-profile', { ifAvailable: true }, (lock) => {
  if (lock) return own();
  emit({ event: 'busy' });
  navigator.locks.request('sitrep-profile', own);
  return undefined;
});
