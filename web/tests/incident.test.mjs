// Major-incident mode in the browser: the coordinator declares with the
// METHANE form, a nurse on the call-out list sees the banner and replies in
// one tap, the coordinator's tally moves; an alert from a CLI user is shown
// full-screen and acknowledged in the browser, which stops its escalation.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { enrol, axe, shot, screen, PHONE, DESKTOP, useServer } from './harness.mjs';

const env = useServer((s) => {
  const d = s.data;
  s.cli('admin', 'role', 'add', '--data', d, '--id', 'mi-lead', '--name', 'Major incident lead', '--team', 'ed', '--holders', 'coord', '--can-declare', '--commander');
  s.cli('admin', 'role', 'add', '--data', d, '--id', 'nurse', '--name', 'ED nurse', '--team', 'ed', '--holders', 'nina');
  s.cli('admin', 'callout', '--data', d, '--level', 'standby', '--roles', 'nurse');
  s.cli('admin', 'callout', '--data', d, '--level', 'declared', '--roles', 'nurse');
});

test('declare, call-in reply in one tap, the tally moves; an alert is acknowledged in the browser', async () => {
  const { server, browser: b } = env;
  const ca = await b.newContext({ viewport: DESKTOP });
  const na = await b.newContext({ viewport: PHONE });
  const pc = await ca.newPage();
  const pn = await na.newPage();
  await enrol(pc, server, server.invite('coord', 'Dr Coord Inator', 'ED consultant'));
  await enrol(pn, server, server.invite('nina', 'Nina Nurse', 'ED nurse'));
  assert.equal(await pn.getByRole('link', { name: 'Raise a major incident level' }).count(), 0, 'only those allowed may declare');

  await pc.getByRole('link', { name: 'Raise a major incident level' }).click();
  await pc.getByRole('heading', { name: 'Raise a major incident level' }).waitFor();
  await pc.getByRole('textbox', { name: 'Incident', exact: true }).fill('MI-7');
  await pc.getByLabel('Declared').check();
  await pc.getByLabel('Exact location').fill('M6 J10');
  await pc.getByLabel('Type of incident').fill('Coach crash');
  await pc.getByLabel('Hazards').fill('Fuel spill');
  await pc.getByLabel('Access').fill('Southbound only');
  await pc.getByLabel('Emergency services').fill('Fire, ambulance on scene');
  await pc.getByLabel('Number of casualties (estimate)').fill('30');
  await check(pc, 'declare-desktop');
  await pc.getByRole('button', { name: 'Raise' }).click();
  const banner = pc.getByTestId('incident-banner');
  await banner.waitFor({ timeout: 60_000 });
  assert.match(await banner.textContent(), /MAJOR INCIDENT DECLARED/);
  await pc.getByTestId('tally').filter({ hasText: '1 not replied' }).waitFor({ timeout: 30_000 });

  // The nurse sees it on every screen and replies in one tap.
  const nb = pn.getByTestId('incident-banner');
  await nb.waitFor({ timeout: 60_000 });
  assert.match(await nb.textContent(), /MAJOR INCIDENT DECLARED · MI-7/);
  assert.match(await nb.textContent(), /Coach crash at M6 J10/);
  await check(pn, 'incident-banner-phone');
  await pn.getByRole('button', { name: 'Coming now' }).click();
  await pn.getByTestId('my-reply').filter({ hasText: 'coming now' }).waitFor({ timeout: 30_000 });
  await pc.getByTestId('tally').filter({ hasText: '1 coming now' }).waitFor({ timeout: 60_000 });
  assert.match(await pc.getByTestId('tally').textContent(), /0 not replied/);
  await check(pc, 'incident-tally-desktop');

  // The casualty board and the decision log of the incident conversation.
  await pc.getByRole('link', { name: 'Open the incident conversation' }).click();
  await pc.getByRole('link', { name: 'Casualty board' }).click();
  await pc.getByLabel('MI number').fill('MI-0001');
  await pc.getByLabel('Triage').selectOption('P1');
  await pc.getByLabel('Where').fill('Resus 2');
  await pc.getByRole('button', { name: 'Save' }).click();
  await pc.getByRole('rowheader', { name: 'MI-0001' }).waitFor({ timeout: 30_000 });
  await check(pc, 'casualty-board-desktop');
  await pn.goto(server.url + '/#/board/MI-7');
  await pn.getByRole('rowheader', { name: 'MI-0001' }).waitFor({ timeout: 60_000 });
  await check(pn, 'casualty-board-phone');
  await pc.goto(server.url + '/#/log/MI-7');
  await pc.getByLabel('What').fill('Open the second resus bay');
  await pc.getByRole('button', { name: 'Log it' }).click();
  await pc.getByTestId('decisions').filter({ hasText: 'Open the second resus bay' }).waitFor({ timeout: 30_000 });
  const [download] = await Promise.all([pc.waitForEvent('download'), pc.getByRole('link', { name: 'Export the log' }).click()]);
  const file = await download.path();
  const exported = JSON.parse(await (await import('node:fs/promises')).readFile(file, 'utf8'));
  assert.match(exported.format, /^sitrep-decision-log-v\d$/);
  assert.equal(exported.entries.length, 1);
  // The browser's export verifies with the CLI: signatures, chain, head.
  assert.match(server.cli('decisions', 'verify', file), /verified: 1 entries/);
  await check(pc, 'decision-log-desktop');
  await pn.goto(server.url + '/#/log/MI-7');
  await pn.getByTestId('decisions').filter({ hasText: 'Open the second resus bay' }).waitFor({ timeout: 60_000 });
  await pn.goto(server.url + '/#/');

  // An alert from a CLI user: full-screen in the browser, acknowledged there.
  const cli = server.data + '-sam';
  server.cli('--profile', cli, 'enrol', '--server', server.url, '--code', server.invite('sam', 'Sam Site'));
  const id = server.cli('--profile', cli, 'alert', 'send', '--to', 'user:nina', '--ack-within', '30', 'Resus 1 now please').trim().split('\n').pop().trim();
  const dialog = pn.getByRole('alertdialog');
  await dialog.waitFor({ timeout: 60_000 });
  assert.match(await dialog.textContent(), /Resus 1 now please/);
  assert.equal(await pn.evaluate(() => document.activeElement?.textContent), 'Acknowledge', 'focus on the one action');
  await check(pn, 'alert-phone');
  await pn.getByRole('button', { name: 'Acknowledge' }).click();
  await dialog.waitFor({ state: 'detached', timeout: 30_000 });
  let st;
  for (let i = 0; i < 60; i++) {
    server.cli('--profile', cli, 'sync');
    st = JSON.parse(server.cli('--profile', cli, 'alert', 'status', id, '--json').trim().split('\n').pop());
    if (st.acked) break;
    await new Promise((r) => setTimeout(r, 500));
  }
  assert.equal(st.acked?.[0], 'nina', 'acknowledged by the nurse');
  // Past its acknowledgement time, nothing escalated.
  await new Promise((r) => setTimeout(r, 31_000));
  server.cli('--profile', cli, 'sync');
  st = JSON.parse(server.cli('--profile', cli, 'alert', 'status', id, '--json').trim().split('\n').pop());
  assert.deepEqual(st.escalations, [], 'an acknowledged alert does not escalate');

  // The coordinator sends one from the browser; the sender sees it acknowledged.
  await pc.goto(server.url + '/#/c/MI-7');
  await pc.getByText('Send an alert that needs acknowledgement').click();
  await pc.getByLabel(/^To/).fill('user:nina');
  await pc.getByLabel('Alert', { exact: true }).fill('Bring the trauma kit');
  await pc.getByRole('button', { name: 'Send alert' }).click();
  await pc.getByTestId('sent-alert').filter({ hasText: 'Not acknowledged yet' }).waitFor({ timeout: 30_000 });
  await pn.getByRole('alertdialog').filter({ hasText: 'Bring the trauma kit' }).waitFor({ timeout: 60_000 });
  await pn.getByRole('button', { name: 'Acknowledge' }).click();
  await pc.getByTestId('sent-alert').filter({ hasText: 'Acknowledged by nina' }).waitFor({ timeout: 60_000 });
  await check(pc, 'alert-sent-acknowledged-desktop');
  await ca.close();
  await na.close();
});

async function check(page, name) {
  assert.deepEqual(await screen(page, name.replace(/-(phone|desktop)$/, '')), [], `axe on ${name}`);
}
