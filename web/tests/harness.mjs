// Test harness: a real `sitrep serve` on a loopback port with the built web
// app, Debian's Chromium driven by playwright-core (no browser download),
// the admin CLI for invitations, and axe-core for accessibility.
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import net from 'node:net';
import { chromium } from 'playwright-core';
import { before, after } from 'node:test';

const here = dirname(fileURLToPath(import.meta.url));
export const root = resolve(here, '..', '..');
export const bin = process.env.SITREP_BIN ?? join(process.env.CARGO_TARGET_DIR ?? join(root, 'target'), 'debug', 'sitrep');
export const dist = join(root, 'web', 'dist');
export const shots = join(process.env.CARGO_TARGET_DIR ?? join(root, 'target'), 'web-screenshots');
mkdirSync(shots, { recursive: true });

export const CHROMIUM_FLAGS = [
  '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];

export function freePort() {
  return new Promise((res, rej) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
    s.on('error', rej);
  });
}

export class Server {
  constructor() {
    this.data = mkdtempSync(join(tmpdir(), 'sitrep-web-'));
  }
  async start() {
    if (!this.port) this.port = await freePort();
    this.url = `http://127.0.0.1:${this.port}`;
    this.proc = spawn(bin, ['serve', '--init', '--data', this.data, '--listen', `127.0.0.1:${this.port}`, '--web', dist], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, SITREP_LOG_LEVEL: 'warn' },
    });
    this.log = '';
    this.proc.stderr.on('data', (d) => (this.log += d));
    await new Promise((res, rej) => {
      let out = '';
      const t = setTimeout(() => rej(new Error('server did not start: ' + out + this.log)), 30_000);
      this.proc.stdout.on('data', (d) => {
        out += d;
        if (out.includes('listening on')) {
          clearTimeout(t);
          res();
        }
      });
      this.proc.on('exit', (c) => rej(new Error(`server exited ${c}: ${out}${this.log}`)));
    });
    return this;
  }
  async stop() {
    if (!this.proc) return;
    const p = this.proc;
    this.proc = null;
    const exited = new Promise((r) => p.on('exit', r));
    p.kill('SIGTERM');
    await exited;
  }
  cli(...args) {
    return execFileSync(bin, args, { encoding: 'utf8', env: { ...process.env, SITREP_PASSCODE: 'correct horse battery' } });
  }
  invite(user, name, role = 'Staff') {
    const out = this.cli('admin', 'invite', '--data', this.data, '--user', user, '--name', name, '--role', role);
    return out.trim().split('\n').pop().trim();
  }
  cleanup() {
    rmSync(this.data, { recursive: true, force: true });
  }
}

export async function browser() {
  return chromium.launch({ executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium', headless: true, args: CHROMIUM_FLAGS });
}

export const PHONE = { width: 360, height: 740 };
export const DESKTOP = { width: 1280, height: 800 };

// Enrol a fresh browser context as a new user; leaves it on the conversations.
export async function enrol(page, server, code, passcode = 'correct horse battery') {
  await page.goto(server.url + '/');
  await page.getByLabel('Enrolment code').fill(code);
  await page.getByRole('button', { name: 'Continue' }).click();
  await page.getByTestId('fingerprint').waitFor();
  await page.getByLabel('Passcode', { exact: true }).fill(passcode);
  await page.getByLabel('Passcode again').fill(passcode);
  await page.getByRole('button', { name: 'Set up this device' }).click();
  await page.getByRole('heading', { name: 'Two-step verification' }).waitFor({ timeout: 60_000 });
  await page.getByRole('button', { name: 'Done' }).click();
  await page.getByRole('heading', { name: 'Conversations' }).waitFor();
}

const axeSource = readFileSync(join(root, 'web', 'node_modules', 'axe-core', 'axe.min.js'), 'utf8');

// axe-core on the page as it is: WCAG 2.0/2.1/2.2 A and AA rules.
export async function axe(page) {
  await page.evaluate(axeSource);
  const r = await page.evaluate(() =>
    globalThis.axe.run(document, { runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'wcag22aa'] } }),
  );
  return r.violations.map((v) => `${v.id}: ${v.help} (${v.nodes.map((n) => n.target.join(' ')).join(', ')})`);
}

export async function shot(page, name) {
  await page.screenshot({ path: join(shots, `${name}.png`), fullPage: true });
}

// A test file's server and browser: started before its tests, stopped after.
// `setup(s)` runs once the server is up (directory, roles).
export function useServer(setup) {
  const env = {};
  before(async () => {
    env.server = await new Server().start();
    env.browser = await browser();
    if (setup) await setup(env.server);
  });
  after(async () => {
    await env.browser?.close();
    await env.server?.stop();
    env.server?.cleanup();
  });
  return env;
}

// One screen checked as a phone and a desktop would show it: axe at both
// sizes, and a screenshot of each (`NAME-phone.png`, `NAME-desktop.png`).
export async function screen(page, name) {
  const size = page.viewportSize();
  const out = {};
  for (const [tag, vp] of [['phone', PHONE], ['desktop', DESKTOP]]) {
    await page.setViewportSize(vp);
    out[tag] = await axe(page);
    await shot(page, `${name}-${tag}`);
  }
  if (size) await page.setViewportSize(size);
  return [...out.phone.map((v) => 'phone: ' + v), ...out.desktop.map((v) => 'desktop: ' + v)];
}
