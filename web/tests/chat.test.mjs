// Two browsers enrol and chat end to end; a CLI user is in the same
// conversation; a reload keeps everything, behind the lock.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { enrol, axe, shot, screen, PHONE, DESKTOP, useServer } from './harness.mjs';

const env = useServer();

test('two browsers enrol and chat, with a CLI user in the conversation', async () => {
  const { server, browser: b } = env;
  const alice = await b.newContext({ viewport: DESKTOP });
  const bob = await b.newContext({ viewport: PHONE });
  const pa = await alice.newPage();
  const pb = await bob.newPage();
  const errors = [];
  for (const p of [pa, pb]) p.on('pageerror', (e) => errors.push(String(e)));

  await enrol(pa, server, server.invite('alice', 'Dr Alice Okafor', 'ED consultant'));
  await enrol(pb, server, server.invite('bob', 'Bob Singh', 'Registrar'));
  // A CLI user too.
  const cliProfile = server.data + '-carol';
  server.cli('--profile', cliProfile, 'enrol', '--server', server.url, '--code', server.invite('carol', 'Carol Davies'));

  await pa.getByRole('link', { name: 'New conversation' }).click();
  await pa.getByLabel('Name', { exact: true }).fill('resus');
  await pa.getByLabel('Members').fill('bob, carol');
  await pa.getByRole('button', { name: 'Create' }).click();
  await pa.getByRole('heading', { name: 'resus' }).waitFor();
  await pa.getByRole('textbox', { name: 'Message' }).fill('Resus 2 ready, trauma call ETA 10 min');
  await pa.getByRole('button', { name: 'Send', exact: true }).click();
  await pa.locator('.mine [data-state="sent"]').first().waitFor();

  // Bob sees it live (the push wakes his worker), with an unread count.
  await pb.locator('.convs a', { hasText: 'resus' }).waitFor({ timeout: 20_000 });
  await pb.locator('.badge').first().waitFor();
  await pb.getByRole('link', { name: /resus/ }).click();
  await pb.getByText('Resus 2 ready, trauma call ETA 10 min').waitFor();
  await pb.getByRole('textbox', { name: 'Message' }).fill('On my way');
  await pb.getByRole('textbox', { name: 'Message' }).press('Enter');
  await pa.getByText('On my way').waitFor({ timeout: 20_000 });

  // The CLI user reads both and answers; the browsers show it.
  server.cli('--profile', cliProfile, 'sync');
  const hist = server.cli('--profile', cliProfile, 'history', 'resus');
  assert.match(hist, /Resus 2 ready/);
  assert.match(hist, /On my way/);
  server.cli('--profile', cliProfile, 'send', 'resus', 'Bed 4 cleared');
  await pa.getByText('Bed 4 cleared').waitFor({ timeout: 20_000 });
  await pb.getByText('Bed 4 cleared').waitFor({ timeout: 20_000 });

  assert.deepEqual(await screen(pa, 'conversation'), []);
  assert.deepEqual(await axe(pb), []);

  // A reload keeps everything: locked, then the same history.
  await pb.reload();
  await pb.getByRole('heading', { name: 'Sitrep is locked' }).waitFor();
  assert.deepEqual(await screen(pb, 'lock'), []);
  await pb.getByLabel('Passcode').fill('wrong passcode!');
  await pb.getByRole('button', { name: 'Unlock' }).click();
  await pb.getByText(/Wrong passcode\. 9 tries left/).waitFor();
  await pb.getByLabel('Passcode').fill('correct horse battery');
  await pb.getByRole('button', { name: 'Unlock' }).click();
  // Back where it was (the conversation's route survives the reload).
  await pb.getByRole('heading', { name: 'resus' }).waitFor();
  await pb.getByText('On my way').waitFor();
  await pb.getByText('Bed 4 cleared').waitFor();
  assert.deepEqual(errors, []);
  await alice.close();
  await bob.close();
});
