// `npm run bench` (after web/build.sh and cargo build --release -p sitrep):
// the web app's numbers for BENCHMARKS.md, in headless Chromium on this
// machine. Medians of repeated runs; nothing here is asserted.
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { gzipSync } from 'node:zlib';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { Server, browser, enrol, dist, bin, DESKTOP } from './tests/harness.mjs';

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const pct = (xs, p) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor((xs.length * p) / 100))];
const out = {};

// Sizes: what a browser downloads (gzip -9, as served).
const assets = readdirSync(join(dist, 'assets'));
const gz = (f) => gzipSync(readFileSync(join(dist, 'assets', f)), { level: 9 }).length;
const wasm = assets.find((f) => f.endsWith('.wasm'));
out.wasm_bytes = statSync(join(dist, 'assets', wasm)).size;
out.wasm_gzip = gz(wasm);
out.app_js_css_gzip = assets.filter((f) => /\.(js|css)$/.test(f)).reduce((n, f) => n + gz(f), 0);

const server = await new Server().start();
const b = await browser();
const PASS = 'correct horse battery';

// Cold load: a fresh browser profile, to the first screen; then, enrolled,
// a new tab to the lock screen (the shell from the service worker).
const cold = [], lock = [], unlock = [];
for (let i = 0; i < 5; i++) {
  const ctx = await b.newContext({ viewport: DESKTOP });
  let p = await ctx.newPage();
  let t = Date.now();
  await p.goto(server.url + '/');
  await p.getByLabel('Enrolment code').waitFor();
  cold.push(Date.now() - t);
  await enrol(p, server, server.invite(`load${i}`, `Load ${i}`), PASS);
  await p.close();
  p = await ctx.newPage();
  t = Date.now();
  await p.goto(server.url + '/');
  await p.getByRole('heading', { name: 'Sitrep is locked' }).waitFor();
  lock.push(Date.now() - t);
  await p.getByLabel('Passcode').fill(PASS);
  t = Date.now();
  await p.getByRole('button', { name: 'Unlock' }).click();
  await p.getByRole('heading', { name: 'Conversations' }).waitFor();
  unlock.push(Date.now() - t);
  await ctx.close();
}
out.cold_load_ms = median(cold);
out.load_to_lock_ms = median(lock);
out.unlock_ms = median(unlock);

// Send to display: browser A sends, browser B (on the conversation) shows.
const a = await (await b.newContext({ viewport: DESKTOP })).newPage();
const bb = await (await b.newContext({ viewport: DESKTOP })).newPage();
await enrol(a, server, server.invite('bench-a', 'Bench A'), PASS);
await enrol(bb, server, server.invite('bench-b', 'Bench B'), PASS);
await a.getByRole('link', { name: 'New conversation' }).click();
await a.getByLabel('Name', { exact: true }).fill('bench');
await a.getByLabel('Members').fill('bench-b');
await a.locator('#pid-off').check();
await a.getByRole('button', { name: 'Create' }).click();
await a.getByRole('heading', { name: 'bench' }).waitFor();
await bb.locator('.convs a', { hasText: 'bench' }).waitFor({ timeout: 30_000 });
await bb.getByRole('link', { name: /bench/ }).click();
await bb.evaluate(() => {
  globalThis.__seen = {};
  new MutationObserver(() => {
    for (const el of document.querySelectorAll('.messages .body')) {
      const m = /^ping (\d+)$/.exec(el.textContent);
      if (m && !(m[1] in globalThis.__seen)) globalThis.__seen[m[1]] = Date.now();
    }
  }).observe(document.body, { subtree: true, childList: true, characterData: true });
});
const lat = [];
const box = a.getByRole('textbox', { name: 'Message' });
for (let i = 0; i < 40; i++) {
  await box.fill(`ping ${i}`);
  const t = Date.now();
  await box.press('Enter');
  await bb.waitForFunction((i) => i in globalThis.__seen, i, { timeout: 30_000, polling: 5 });
  const seen = await bb.evaluate((i) => globalThis.__seen[i], i);
  lat.push(seen - t);
}
out.send_to_display_p50_ms = median(lat);
out.send_to_display_p90_ms = pct(lat, 90);

// Catching up: 1,000 messages from a CLI user while B's tab is closed,
// then B opens and unlocks: time until the last one is in its list.
const cli = server.data + '-cli';
server.cli('--profile', cli, 'enrol', '--server', server.url, '--code', server.invite('bench-c', 'Bench C'));
await a.goto(server.url + '/#/');
await a.getByRole('link', { name: 'New conversation' }).click();
await a.getByLabel('Name', { exact: true }).fill('catchup');
await a.getByLabel('Members').fill('bench-b bench-c');
await a.locator('#pid-off').check();
await a.getByRole('button', { name: 'Create' }).click();
await a.getByRole('heading', { name: 'catchup' }).waitFor();
const ctxB = bb.context();
await bb.close();
server.cli('--profile', cli, 'sync');
const lines = Array.from({ length: 1000 }, (_, i) => `catch ${i}`).join('\n') + '\n';
const t0 = Date.now();
const r = spawnSync(bin, ['--profile', cli, 'watch', 'catchup', '--for-secs', '600'], {
  input: lines, encoding: 'utf8', env: { ...process.env, SITREP_PASSCODE: PASS }, maxBuffer: 64 << 20,
});
if (r.status !== 0) throw new Error('watch: ' + r.stderr);
out.cli_1000_sends_s = (Date.now() - t0) / 1000;
const pb = await ctxB.newPage();
await pb.goto(server.url + '/');
await pb.getByLabel('Passcode').fill(PASS);
const t1 = Date.now();
await pb.getByRole('button', { name: 'Unlock' }).click();
await pb.locator('.convs a', { hasText: 'catch 999' }).waitFor({ timeout: 600_000 });
out.catch_up_1000_ms = Date.now() - t1;

await b.close();
await server.stop();
server.cleanup();
console.log(JSON.stringify(out, null, 2));
