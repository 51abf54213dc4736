// The records account in the browser: a recorded conversation's message
// about a patient is found by NHS number, audited first; a disclosure
// bundle is exported; another user's device refuses.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { enrol, axe, shot, screen, DESKTOP, useServer } from './harness.mjs';

const env = useServer((s) => {
  s.cli('admin', 'records', '--data', s.data, '--user', 'records');
});

test('records search and export, audited, for the records account only', async () => {
  const { server, browser: b } = env;
  const ctx = await b.newContext({ viewport: DESKTOP });
  const p = await ctx.newPage();
  await enrol(p, server, server.invite('records', 'Health Records'));
  const cli = server.data + '-doc';
  server.cli('--profile', cli, 'enrol', '--server', server.url, '--code', server.invite('doc', 'Dr Doc'));
  server.cli('--profile', cli, 'chat', 'create', 'ward-9', '--members', 'records', '--recorded');
  server.cli('--profile', cli, 'send', '--allow-pid', 'ward-9', 'Bed 3 NHS 943 476 5919 for CT');
  server.cli('--profile', cli, 'send', 'ward-9', 'Bed 5 fine');
  await p.locator('.convs a', { hasText: 'ward-9' }).waitFor({ timeout: 60_000 });

  await p.goto(server.url + '/#/records');
  await p.getByLabel(/NHS number/).fill('9434765919');
  await p.getByRole('button', { name: 'Search' }).click();
  const results = p.getByTestId('record-results');
  await results.waitFor({ timeout: 30_000 });
  assert.equal(await results.locator('li').count(), 1);
  assert.match(await results.textContent(), /Bed 3 NHS 943 476 5919/);
  await check(p, 'records-search-desktop');
  await p.getByRole('button', { name: 'Export a disclosure bundle' }).click();
  await p.getByTestId('bundle').waitFor({ timeout: 30_000 });
  assert.ok((await p.getByTestId('bundle').locator('a').count()) >= 1);
  // Both are in the organisation's audit log, without the identifier.
  const log = server.cli('admin', 'audit', 'show', '--data', server.data);
  assert.match(log, /records\.search/);
  assert.match(log, /records\.export/);
  assert.doesNotMatch(log, /9434765919|943 476 5919/);

  // Anyone else's device says no.
  const other = await b.newContext({ viewport: DESKTOP });
  const po = await other.newPage();
  await enrol(po, server, server.invite('nosy', 'No Sy'));
  await po.goto(server.url + '/#/records');
  await po.getByText("not the organisation's records account").waitFor();
  await ctx.close();
  await other.close();
});

async function check(page, name) {
  assert.deepEqual(await screen(page, name.replace(/-(phone|desktop)$/, '')), [], `axe on ${name}`);
}
