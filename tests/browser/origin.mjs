// The MLflow UI in Debian's Chromium through guard, under a host name other than localhost
// (one browser process for every case): the user signs in on guard's page, the UI's own
// buttons create an experiment and rename a run, the account menu names the user, a page on
// another origin that auto-submits a form to MLflow gets guard's 403, and the UI's own Logout
// signs the user out, back to guard's sign-in page.
// Run by tests/browser.rs, which starts MLflow and guard and checks MLflow's store afterwards.
//
// Environment: GUARD_PORT (guard's TLS port on 127.0.0.1), GUARD_USER, GUARD_PASSWORD,
// SHOTS (directory for screenshots). Prints one JSON line with what it did; exits 1 on a
// failed check, with the reason.

import assert from 'node:assert/strict';
import http from 'node:http';
import { chromium } from 'playwright-core';

const port = process.env.GUARD_PORT;
const shots = process.env.SHOTS;
const base = `https://mlflow.test:${port}`;
// API calls of the test's own setup go as the Python client's would: no browser, no Origin.
const api = `https://127.0.0.1:${port}`;

// The attacker's page: on another origin, it posts a form to MLflow as soon as it loads. A
// text/plain form body can carry JSON, so only an Origin check stops it.
const evil = http.createServer((req, res) => {
  res.writeHead(200, { 'content-type': 'text/html' });
  res.end(`<!doctype html><title>cute cats</title>
<form id="f" method="POST" enctype="text/plain"
      action="${base}/ajax-api/2.0/mlflow/experiments/create">
  <input name='{"name":"pwned-by-a-form","x":"' value='"}'>
</form>
<script>document.getElementById('f').submit()</script>`);
});
await new Promise((ok) => evil.listen(0, '127.0.0.1', ok));
const evilOrigin = `http://evil.test:${evil.address().port}`;

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: [
    '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    '--host-resolver-rules=MAP mlflow.test 127.0.0.1, MAP evil.test 127.0.0.1',
  ],
});
const report = {};
try {
  // No httpCredentials: the browser has no password to send, only guard's session cookie.
  const ctx = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1280, height: 800 } });
  const page = await ctx.newPage();
  const failed = [];
  page.on('response', (r) => {
    if (r.url().startsWith(base) && r.status() === 403) failed.push(`${r.request().method()} ${r.url()}`);
  });

  // A navigation without credentials gets guard's sign-in page; a wrong password is told so.
  const first = await page.goto(`${base}/#/experiments`);
  assert.equal(first.status(), 401, 'the first navigation');
  assert.equal(await page.title(), 'Sign in');
  await page.screenshot({ path: `${shots}/0-sign-in.png` });
  await page.locator('#user').fill(process.env.GUARD_USER);
  await page.locator('#password').fill('not the password');
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByText('Wrong user name or password.').waitFor();
  await page.locator('#user').fill(process.env.GUARD_USER);
  await page.locator('#password').fill(process.env.GUARD_PASSWORD);
  await Promise.all([page.waitForURL(`${base}/`), page.getByRole('button', { name: 'Sign in' }).click()]);
  const cookies = await ctx.cookies(base);
  const session = cookies.find((c) => c.name === '__Host-guard_session');
  assert.ok(session && session.httpOnly && session.secure && session.sameSite === 'Lax', JSON.stringify(cookies));

  // The experiments list renders.
  await page.goto(`${base}/#/experiments`);
  const create = page.getByRole('button', { name: 'Create', exact: true });
  await create.waitFor({ timeout: 30_000 });
  await page.screenshot({ path: `${shots}/1-experiments.png` });

  // The UI's own "Create" button.
  await create.click();
  await page.locator('#experimentName').fill('created-in-the-ui');
  const created = page.waitForResponse((r) => r.url().includes('/experiments/create'));
  await page.getByRole('dialog').getByRole('button', { name: 'Create', exact: true }).click();
  const createdResp = await created;
  assert.equal(createdResp.status(), 200, `create from the UI: ${await createdResp.text()}`);
  report.experiment_id = (await createdResp.json()).experiment_id;
  await page.waitForTimeout(500);
  await page.screenshot({ path: `${shots}/2-experiment-created.png` });

  // A run, logged as a script would log it; then renamed with the UI's own menu.
  const basic = Buffer.from(`${process.env.GUARD_USER}:${process.env.GUARD_PASSWORD}`).toString('base64');
  const run = await ctx.request.post(`${api}/api/2.0/mlflow/runs/create`, {
    headers: { authorization: `Basic ${basic}` },
    data: { experiment_id: report.experiment_id, run_name: 'logged-by-a-script' },
  });
  assert.equal(run.status(), 200, await run.text());
  report.run_id = (await run.json()).run.info.run_id;
  await page.goto(`${base}/#/experiments/${report.experiment_id}/runs/${report.run_id}`);
  await page.getByTestId('overflow-menu-trigger').click({ timeout: 30_000 });
  await page.getByRole('menuitem', { name: /rename/i }).click();
  await page.locator('#newName').fill('renamed-in-the-ui');
  const renamed = page.waitForResponse((r) => r.url().includes('/runs/update'));
  await page.getByRole('dialog').getByRole('button', { name: 'Save' }).click();
  const renamedResp = await renamed;
  assert.equal(renamedResp.status(), 200, `rename from the UI: ${await renamedResp.text()}`);
  await page.getByText('renamed-in-the-ui').first().waitFor();
  await page.screenshot({ path: `${shots}/3-run-renamed.png` });
  assert.deepEqual(failed, [], 'no 403 while using the UI');

  // The account menu names the signed-in user (guard answers users/current).
  const account = page.getByRole('button', { name: `Account menu for ${process.env.GUARD_USER}` });
  await account.waitFor({ timeout: 30_000 });
  report.account_menu = await account.getAttribute('aria-label');

  // The attacker's page, opened by the same signed-in browser: its form post is refused.
  const forged = page.waitForResponse((r) => r.url().includes('/experiments/create'));
  await page.goto(`${evilOrigin}/`);
  const forgedResp = await forged;
  assert.equal(forgedResp.status(), 403, 'the cross-site form post');
  const headers = await forgedResp.request().allHeaders();
  assert.equal(headers.origin, evilOrigin, 'the browser named the attacking origin');
  const body = await forgedResp.json();
  assert.equal(body.error_code, 'PERMISSION_DENIED', JSON.stringify(body));
  await page.waitForLoadState();
  await page.screenshot({ path: `${shots}/4-cross-site-form-refused.png` });
  report.evil_origin = evilOrigin;
  report.forged_status = forgedResp.status();

  // The UI's own Logout: back to guard's sign-in page, and the session cookie is gone.
  await page.goto(`${base}/#/experiments`);
  await account.click({ timeout: 30_000 });
  await Promise.all([
    page.waitForResponse((r) => r.url().endsWith('/') && r.status() === 401),
    page.getByRole('menuitem', { name: 'Logout' }).click(),
  ]);
  await page.getByRole('button', { name: 'Sign in' }).waitFor();
  await page.screenshot({ path: `${shots}/5-signed-out.png` });
  const left = (await ctx.cookies(base)).map((c) => c.name);
  assert.ok(!left.includes('__Host-guard_session'), `cookies after sign-out: ${left}`);
  const again = await page.reload();
  assert.equal(again.status(), 401, 'asked to sign in again');
  report.signed_out = true;

  // A reader (GUARD_READER, same password), in a fresh context of the same browser: the
  // experiments list and the run page render with no read refused, and the UI's own Create
  // fails with a message that says why.
  const rctx = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1280, height: 800 } });
  const rpage = await rctx.newPage();
  const refused = [];
  rpage.on('response', (r) => {
    if (r.url().startsWith(base) && r.status() === 403) {
      refused.push(`${r.request().method()} ${new URL(r.url()).pathname}`);
    }
  });
  await rpage.goto(`${base}/#/experiments`);
  await rpage.locator('#user').fill(process.env.GUARD_READER);
  await rpage.locator('#password').fill(process.env.GUARD_PASSWORD);
  await Promise.all([rpage.waitForURL(`${base}/`), rpage.getByRole('button', { name: 'Sign in' }).click()]);
  await rpage.goto(`${base}/#/experiments`);
  const rcreate = rpage.getByRole('button', { name: 'Create', exact: true });
  await rcreate.waitFor({ timeout: 30_000 });
  await rpage.getByText('created-in-the-ui').first().waitFor({ timeout: 30_000 });
  await rpage.screenshot({ path: `${shots}/6-reader-experiments.png` });
  await rpage.goto(`${base}/#/experiments/${report.experiment_id}/runs/${report.run_id}`);
  await rpage.getByText('renamed-in-the-ui').first().waitFor({ timeout: 30_000 });
  await rpage.waitForTimeout(1500);
  await rpage.screenshot({ path: `${shots}/7-reader-run.png` });
  // The UI's usage telemetry is the one POST a reader's page makes that is not a read.
  const readsRefused = refused.filter((r) => r !== 'POST /ajax-api/3.0/mlflow/ui-telemetry');
  assert.deepEqual(readsRefused, [], 'no read refused to the reader');
  await rpage.goto(`${base}/#/experiments`);
  await rcreate.click({ timeout: 30_000 });
  await rpage.locator('#experimentName').fill('created-by-a-reader');
  const rcreated = rpage.waitForResponse((r) => r.url().includes('/experiments/create'));
  await rpage.getByRole('dialog').getByRole('button', { name: 'Create', exact: true }).click();
  assert.equal((await rcreated).status(), 403, "the reader's create");
  await rpage.getByText(/your role is reader/).first().waitFor({ timeout: 10_000 });
  await rpage.screenshot({ path: `${shots}/8-reader-create-refused.png` });
  report.reader_refused = refused;
  console.log(JSON.stringify(report));
} catch (e) {
  console.error(e.stack || String(e));
  process.exitCode = 1;
} finally {
  await browser.close();
  evil.close();
}
