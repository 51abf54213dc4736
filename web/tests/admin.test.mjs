// Administration in the browser: a two-step code opens a session; users
// and devices listed; an invitation with a QR link that a new browser
// enrols from; disabling a leaver wipes their browser; the audit log shows it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { enrol, axe, shot, screen, PHONE, DESKTOP, useServer } from './harness.mjs';

const env = useServer();

// RFC 6238 from an otpauth:// URI.
function totp(uri) {
  const u = new URL(uri);
  const secret = u.searchParams.get('secret');
  const alg = (u.searchParams.get('algorithm') ?? 'SHA1').toLowerCase();
  const digits = +(u.searchParams.get('digits') ?? 6);
  const period = +(u.searchParams.get('period') ?? 30);
  const abc = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  let bits = '';
  for (const c of secret.replace(/=+$/, '').toUpperCase()) bits += abc.indexOf(c).toString(2).padStart(5, '0');
  const key = Buffer.from(bits.match(/.{8}/g).map((x) => parseInt(x, 2)));
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(Math.floor(Date.now() / 1000 / period)));
  const h = createHmac(alg, key).update(counter).digest();
  const o = h[h.length - 1] & 15;
  const n = (h.readUInt32BE(o) & 0x7fffffff) % 10 ** digits;
  return String(n).padStart(digits, '0');
}

async function check(page, name) {
  assert.deepEqual(await screen(page, name.replace(/-(phone|desktop)$/, '')), [], `axe on ${name}`);
}

test('an admin invites with a QR link, disables a leaver and reads the audit log', async () => {
  const { server, browser: b } = env;
  const actx = await b.newContext({ viewport: DESKTOP });
  const pa = await actx.newPage();
  await enrol(pa, server, server.invite('ada', 'Ada Admin', 'IT'));
  // Without a grant, the server refuses.
  await pa.goto(server.url + '/#/admin');
  await check(pa, 'admin-session-desktop');
  await pa.getByRole('button', { name: 'Start administering' }).click();
  await pa.getByRole('alert').filter({ hasText: 'no admin grant' }).waitFor();
  const uri = server.cli('admin', 'grant', 'ada', '--data', server.data).split('\n').find((l) => l.startsWith('otpauth://'));
  assert.ok(uri, 'the grant prints its otpauth URI');
  await pa.getByLabel(/Admin two-step code/).fill(totp(uri));
  await pa.getByRole('button', { name: 'Start administering' }).click();
  await pa.getByRole('rowheader', { name: 'ada' }).waitFor();
  await check(pa, 'admin-users-desktop');

  await pa.getByRole('button', { name: 'Invite', exact: true }).click();
  await pa.getByLabel('User id').fill('newbie');
  await pa.getByLabel('Name colleagues see').fill('Nu Bee');
  await pa.getByLabel('Role', { exact: true }).fill('FY1');
  await pa.getByRole('button', { name: 'Create the code' }).click();
  await pa.getByTestId('invitation').waitFor();
  await pa.getByRole('img', { name: /QR code of the enrolment link/ }).waitFor();
  await check(pa, 'admin-invite-desktop');
  const code = (await pa.getByTestId('invite-code').textContent()).trim();

  // The QR code's link opens the enrolment with the code filled in.
  const nctx = await b.newContext({ viewport: PHONE });
  const pn = await nctx.newPage();
  await pn.goto(`${server.url}/?code=${encodeURIComponent(code)}`);
  assert.equal(await pn.getByLabel('Enrolment code').inputValue(), code);
  await pn.getByRole('button', { name: 'Continue' }).click();
  await pn.getByLabel('Passcode', { exact: true }).fill('newbie passcode');
  await pn.getByLabel('Passcode again').fill('newbie passcode');
  await pn.getByRole('button', { name: 'Set up this device' }).click();
  await pn.getByRole('button', { name: 'Done' }).click({ timeout: 60_000 });
  await pn.getByRole('heading', { name: 'Conversations' }).waitFor();

  await pa.getByRole('button', { name: 'Devices' }).click();
  await pa.getByRole('cell', { name: 'newbie' }).waitFor();
  await check(pa, 'admin-devices-desktop');
  await pa.getByRole('button', { name: 'Roles and call-out' }).click();
  await pa.getByRole('heading', { name: 'Call-out lists' }).waitFor();
  await pa.getByLabel('Role id').fill('nurse');
  await pa.getByLabel('Name people see').fill('ED nurse');
  await pa.getByLabel('Team id').fill('ed');
  await pa.getByLabel(/^Holders/).fill('newbie');
  await pa.getByRole('button', { name: 'Sign and publish the role' }).click();
  await pa.getByText('The role nurse is signed and published.').waitFor();
  const roles = JSON.parse(server.cli('admin', 'role', 'list', '--data', server.data)).roles;
  assert.deepEqual(roles.find((r) => r.id === 'nurse').holders, ['newbie']);
  await pa.getByLabel('Standby').fill('nurse');
  await pa.getByRole('button', { name: 'Sign and publish', exact: true }).nth(0).click();
  await pa.getByText('The call-out lists are signed and published.').waitFor();
  await check(pa, 'admin-roles-desktop');
  assert.deepEqual(JSON.parse(server.cli('admin', 'role', 'list', '--data', server.data)).callout_standby, ['nurse']);
  await pa.getByRole('button', { name: 'Policy' }).click();
  await pa.getByTestId('policy').waitFor();
  await pa.getByLabel(/Lock after/).fill('5');
  await pa.getByRole('button', { name: 'Sign and publish' }).click();
  await pa.getByText('The policy is signed and published.').waitFor();
  await check(pa, 'admin-policy-desktop');
  assert.match(server.cli('admin', 'policy', 'show', '--data', server.data), /300/);

  // A leaver: disabled, and their browser loses everything.
  await pa.getByRole('button', { name: 'Users' }).click();
  const row = pa.getByRole('row', { name: /newbie/ });
  await row.getByRole('button', { name: 'Disable…' }).click();
  await row.getByRole('button', { name: 'Disable newbie' }).click();
  await pa.getByText('newbie is disabled').waitFor();
  await pn.reload();
  await pn.getByLabel('Passcode').fill('newbie passcode');
  await pn.getByRole('button', { name: 'Unlock' }).click();
  await pn.getByRole('heading', { name: /wiped/ }).waitFor({ timeout: 60_000 });

  await pa.getByRole('button', { name: 'Audit log' }).click();
  const log = pa.getByTestId('audit');
  await log.getByText(/disable/).first().waitFor();
  assert.match(await log.textContent(), /invite/);
  await check(pa, 'admin-audit-desktop');
  await actx.close();
  await nctx.close();
});
