// The app lock on a controlled clock, the PID guard's warn and block, a
// message written offline that goes out when the server is back, a push
// delivered through the DevTools protocol showing a content-free
// notification, and every screen checked by axe and photographed at both
// sizes.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { enrol, axe, shot, screen, PHONE, DESKTOP, useServer } from './harness.mjs';

const env = useServer();

async function check(page, name) {
  assert.deepEqual(await screen(page, name.replace(/-(phone|desktop)$/, '')), [], `axe on ${name}`);
}

test('every screen passes axe, at 360 px and on a desktop', async () => {
  const { server, browser: b } = env;
  for (const [size, viewport] of [['phone', PHONE], ['desktop', DESKTOP]]) {
    const ctx = await b.newContext({ viewport });
    const p = await ctx.newPage();
    await p.goto(server.url + '/');
    await p.getByLabel('Enrolment code').waitFor();
    await check(p, `enrol-code-${size}`);
    await p.getByLabel('Enrolment code').fill(server.invite(`axe-${size}`, `Axe ${size}`));
    await p.getByRole('button', { name: 'Continue' }).click();
    await p.getByTestId('fingerprint').waitFor();
    await check(p, `enrol-passcode-${size}`);
    // The passcode fields take paste (a password manager's, or the clipboard's).
    await ctx.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: server.url });
    await p.evaluate(() => navigator.clipboard.writeText('pasted passcode 1'));
    for (const label of ['Passcode', 'Passcode again']) {
      await p.getByLabel(label, { exact: true }).focus();
      await p.keyboard.press('Control+V');
      assert.equal(await p.getByLabel(label, { exact: true }).inputValue(), 'pasted passcode 1', `paste into ${label}`);
    }
    await p.getByRole('button', { name: 'Set up this device' }).click();
    await p.getByRole('heading', { name: 'Two-step verification' }).waitFor({ timeout: 60_000 });
    await p.getByRole('img', { name: /QR code/ }).waitFor();
    await check(p, `enrol-totp-${size}`);
    await p.getByRole('button', { name: 'Done' }).click();
    await p.getByRole('heading', { name: 'Conversations' }).waitFor();
    await check(p, `conversations-empty-${size}`);
    await p.getByRole('link', { name: 'New conversation' }).click();
    await check(p, `new-conversation-${size}`);
    await p.goto(server.url + '/#/settings');
    await p.getByRole('heading', { name: 'This device' }).waitFor();
    await check(p, `settings-${size}`);
    // Text at 200%: still no violations, nothing cut off sideways.
    await p.evaluate(() => (document.documentElement.style.fontSize = '200%'));
    await p.goto(server.url + '/#/');
    await p.getByRole('heading', { name: 'Conversations' }).waitFor();
    const overflow = await p.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
    assert.ok(overflow <= 1, `no sideways scrolling at 200% (${overflow}px)`);
    await check(p, `conversations-200pct-${size}`);
    await ctx.close();
  }
});

test('keyboard only: enrol without a pointer, the focus always visible', async () => {
  const { server, browser: b } = env;
  const ctx = await b.newContext({ viewport: DESKTOP });
  const p = await ctx.newPage();
  await p.goto(server.url + '/');
  await p.getByLabel('Enrolment code').waitFor();
  // Tab order starts at the skip link.
  await p.keyboard.press('Tab');
  assert.equal(await p.evaluate(() => document.activeElement.textContent), 'Skip to main content');
  await p.keyboard.press('Tab');
  assert.equal(await p.evaluate(() => document.activeElement.id), 'code');
  const ring = await p.evaluate(() => getComputedStyle(document.activeElement).outlineStyle + ' ' + getComputedStyle(document.activeElement).outlineWidth);
  assert.match(ring, /solid 4px/, 'a visible focus ring');
  await p.keyboard.type(server.invite('keys', 'Kay Board'));
  await p.keyboard.press('Enter');
  await p.getByTestId('fingerprint').waitFor();
  await p.getByLabel('Passcode', { exact: true }).focus();
  await p.keyboard.type('keyboard passcode');
  await p.keyboard.press('Tab');
  assert.equal(await p.evaluate(() => document.activeElement.id), 'again');
  await p.keyboard.type('keyboard passcode');
  await p.keyboard.press('Enter');
  await p.getByRole('heading', { name: 'Two-step verification' }).waitFor({ timeout: 60_000 });
  await p.getByRole('button', { name: 'Done' }).focus();
  await p.keyboard.press('Enter');
  await p.getByRole('heading', { name: 'Conversations' }).waitFor();
  await ctx.close();
});

test('the app locks after the policy idle time on the page clock', async () => {
  const { server, browser: b } = env;
  const ctx = await b.newContext({ viewport: PHONE });
  const p = await ctx.newPage();
  await p.clock.install({ time: Date.now() });
  await enrol(p, server, server.invite('idle', 'Ida Idle'));
  // Under the default two minutes: still open.
  await p.clock.fastForward('01:00');
  await p.waitForTimeout(300);
  assert.equal(await p.getByRole('heading', { name: 'Conversations' }).count(), 1);
  await p.clock.fastForward('01:30');
  await p.getByRole('heading', { name: 'Sitrep is locked' }).waitFor();
  // Unlocking works and the idle timer starts again.
  await p.getByLabel('Passcode').fill('correct horse battery');
  await p.getByRole('button', { name: 'Unlock' }).click();
  await p.getByRole('heading', { name: 'Conversations' }).waitFor();
  await ctx.close();
});

test('the PID guard warns, and blocks where the conversation says so', async () => {
  const { server, browser: b } = env;
  const ctx = await b.newContext({ viewport: DESKTOP });
  const p = await ctx.newPage();
  await enrol(p, server, server.invite('pid', 'Pat Idee'));
  server.invite('pidpeer', 'Peer');
  for (const [conv, policy] of [['pid-warn', 'pid-warn'], ['pid-block', 'pid-block']]) {
    await p.goto(server.url + '/#/new');
    await p.getByLabel('Name', { exact: true }).fill(conv);
    await p.locator('#' + policy).check();
    await p.getByRole('button', { name: 'Create' }).click();
    await p.getByRole('heading', { name: conv }).waitFor();
  }
  const box = p.getByRole('textbox', { name: 'Message' });
  await box.fill('Bed 4: NHS 943 476 5919, needs CT');
  await p.getByRole('button', { name: 'Send', exact: true }).click();
  const panel = p.getByTestId('pid-panel');
  await panel.waitFor();
  assert.match(await panel.textContent(), /Not sent/);
  assert.equal(await panel.locator('mark').first().textContent().then((t) => t.startsWith('943 476 5919')), true);
  assert.equal(await p.getByRole('button', { name: 'Send anyway' }).count(), 0, 'no way past a block');
  await check(p, 'pid-block-desktop');
  assert.equal(await p.locator('.messages .mine').count(), 0, 'nothing sent');

  await p.goto(server.url + '/#/c/pid-warn');
  await p.getByRole('heading', { name: 'pid-warn' }).waitFor();
  await box.fill('Bed 4: NHS 943 476 5919, needs CT');
  await p.getByRole('button', { name: 'Send', exact: true }).click();
  await panel.waitFor();
  assert.match(await panel.textContent(), /looks like patient identifiers/);
  await check(p, 'pid-warn-desktop');
  await p.getByRole('button', { name: 'Send anyway' }).click();
  await p.locator('.messages .mine', { hasText: '943 476 5919' }).waitFor();
  await ctx.close();
});

test('a message written offline waits, then goes out when the server is back', async () => {
  const { server, browser: b } = env;
  const a = await b.newContext({ viewport: PHONE });
  const c = await b.newContext({ viewport: DESKTOP });
  const pa = await a.newPage();
  const pc = await c.newPage();
  await enrol(pa, server, server.invite('off-a', 'Olu Offline'));
  await enrol(pc, server, server.invite('off-b', 'Bea Back'));
  await pa.getByRole('link', { name: 'New conversation' }).click();
  await pa.getByLabel('Name', { exact: true }).fill('night');
  await pa.getByLabel('Members').fill('off-b');
  await pa.getByRole('button', { name: 'Create' }).click();
  await pa.getByRole('heading', { name: 'night' }).waitFor();

  await server.stop();
  await pa.getByRole('textbox', { name: 'Message' }).fill('Written with the server down');
  await pa.getByRole('button', { name: 'Send', exact: true }).click();
  await pa.locator('[data-state="queued"]').waitFor();
  await pa.getByText(/^Offline/).waitFor({ timeout: 20_000 });
  await check(pa, 'offline-phone');
  // A reload while offline: the shell comes from the service worker, the
  // message from the sealed outbox.
  await pa.reload();
  await pa.getByRole('heading', { name: 'Sitrep is locked' }).waitFor();
  await pa.getByLabel('Passcode').fill('correct horse battery');
  await pa.getByRole('button', { name: 'Unlock' }).click();
  await pa.locator('[data-state="queued"]').waitFor();

  await server.start();
  await pa.locator('.mine [data-state="sent"], .mine [data-state="delivered"], .mine [data-state="read"]').first().waitFor({ timeout: 60_000 });
  await pc.locator('.convs a', { hasText: 'night' }).waitFor({ timeout: 60_000 });
  await pc.getByRole('link', { name: /night/ }).click();
  await pc.getByText('Written with the server down').waitFor();
  // Read by the other side: the sender's tick says so.
  await pa.locator('.mine [data-state="read"]').waitFor({ timeout: 30_000 });
  await pa.getByText('Seen by 1 of 1').click();
  assert.equal(await pa.getByTestId('seen-by').textContent(), 'Bea Back');
  await a.close();
  await c.close();
});

test('a push delivered through the DevTools protocol shows a content-free notification', async () => {
  const { server, browser: b } = env;
  const ctx = await b.newContext({ viewport: PHONE });
  await ctx.grantPermissions(['notifications'], { origin: server.url });
  const p = await ctx.newPage();
  await enrol(p, server, server.invite('pushy', 'Push Kin'));
  await p.evaluate(() => navigator.serviceWorker.ready.then(() => true));
  const cdp = await ctx.newCDPSession(p);
  const reg = new Promise((resolve) =>
    cdp.on('ServiceWorker.workerRegistrationUpdated', (e) => {
      const r = e.registrations.find((r) => r.scopeURL.startsWith(server.url) && !r.isDeleted);
      if (r) resolve(r.registrationId);
    }),
  );
  await cdp.send('ServiceWorker.enable');
  const registrationId = await reg;
  for (let i = 0; i < 2; i++) {
    await cdp.send('ServiceWorker.deliverPushMessage', { origin: server.url + '/', registrationId, data: '' });
  }
  let notes = [];
  for (let i = 0; i < 100 && notes.length === 0; i++) {
    notes = await p.evaluate(async () =>
      (await (await navigator.serviceWorker.ready).getNotifications()).map((n) => ({ title: n.title, body: n.body, tag: n.tag })),
    );
    if (notes.length === 0) await p.waitForTimeout(100);
  }
  assert.deepEqual(notes, [{ title: 'New message', body: 'Open Sitrep to read it.', tag: 'sitrep-message' }], 'one notification: repeats collapse under one tag');
  // An urgent alert's push (the one word the server may encrypt into it).
  await cdp.send('ServiceWorker.deliverPushMessage', { origin: server.url + '/', registrationId, data: 'urgent' });
  for (let i = 0; i < 100 && notes.length < 2; i++) {
    notes = await p.evaluate(async () =>
      (await (await navigator.serviceWorker.ready).getNotifications()).map((n) => ({ title: n.title, tag: n.tag, sticky: n.requireInteraction })),
    );
    if (notes.length < 2) await p.waitForTimeout(100);
  }
  assert.deepEqual(
    notes.find((n) => n.tag === 'sitrep-alert'),
    { title: 'Urgent alert', tag: 'sitrep-alert', sticky: true },
    'an urgent push stays until it is dealt with',
  );
  await ctx.close();
});

test('a lost phone is wiped from another of the user\'s devices', async () => {
  const { server, browser: b } = env;
  const desk = await b.newContext({ viewport: DESKTOP });
  const phone = await b.newContext({ viewport: PHONE });
  const pd = await desk.newPage();
  const pp = await phone.newPage();
  await enrol(pd, server, server.invite('two', 'Tess Two'));
  await enrol(pp, server, server.invite('two', 'Tess Two'));
  await pd.goto(server.url + '/#/settings');
  const list = pd.getByTestId('devices');
  await list.locator('li').nth(1).waitFor();
  await check(pd, 'devices-desktop');
  await pd.getByRole('button', { name: 'Wipe…' }).click();
  await pd.getByRole('button', { name: 'Wipe it' }).click();
  await list.getByText('wiped').waitFor();
  // The phone finds out at its next request and destroys its data.
  await pp.reload();
  await pp.getByLabel('Passcode').fill('correct horse battery');
  await pp.getByRole('button', { name: 'Unlock' }).click();
  await pp.getByRole('heading', { name: /wiped/ }).waitFor({ timeout: 60_000 });
  await pp.reload();
  await pp.getByLabel('Enrolment code').waitFor();
  const left = await pp.evaluate(() => new Promise((res) => {
    const r = indexedDB.open('sitrep');
    r.onsuccess = () => {
      const q = r.result.transaction('records').objectStore('records').count();
      q.onsuccess = () => res(q.result);
    };
  }));
  assert.equal(left, 0, 'no sealed record left on the wiped phone');
  await desk.close();
  await phone.close();
});

test('one tab owns the profile: a second one says so and touches nothing', async () => {
  const { server, browser: b } = env;
  const ctx = await b.newContext({ viewport: DESKTOP });
  const p1 = await ctx.newPage();
  await enrol(p1, server, server.invite('tabs', 'Tab Bee'));
  const p2 = await ctx.newPage();
  await p2.goto(server.url + '/');
  await p2.getByRole('heading', { name: 'Sitrep is open in another tab' }).waitFor();
  await check(p2, 'second-tab-desktop');
  // Closing the first lets the waiting one in, without a reload.
  await p1.close();
  await p2.getByRole('heading', { name: 'Sitrep is locked' }).waitFor();
  await ctx.close();
});
