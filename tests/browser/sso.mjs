// Single sign-on in Debian's Chromium through guard (one browser process for every case):
// guard's sign-in page offers "Sign in with" the provider; alice signs in on the provider's
// own page (panva's oidc-provider, tests/browser/oidc-provider.mjs) and lands on the MLflow UI,
// whose account menu names her and whose Create button creates an experiment; once her ID
// token has run out, and again at the session's absolute end, the next page refreshes the
// session at the provider unseen; she signs out
// through the provider (RP-initiated logout) and is back at guard's sign-in page. Then mallory,
// whose groups the site does not admit, gets guard's 403 page, with no redirect loop.
// Run by tests/sso.rs, which starts the provider, MLflow and guard and checks MLflow's store.
//
// While she is signed in, the same guard lets in, on the same site, a password (Basic), a guard
// token and a JWT from the provider's client-credentials grant, each without a cookie.
//
// Environment: GUARD_PORT (guard's TLS port on 127.0.0.1), PROVIDER (its name on the button),
// ID_TOKEN_TTL (seconds the provider's ID tokens last), SESSION_LIFETIME (guard's absolute
// session lifetime, seconds: longer than the ID token's, shorter than two), SHOTS (directory for screenshots),
// GUARD_BASIC (user:password of the users file), GUARD_TOKEN (a guard token), ISSUER (the
// provider, for a client-credentials JWT).
// Prints one JSON line with what it did; exits 1 on a failed check, with the reason.

import assert from 'node:assert/strict';
import { chromium, request } from 'playwright-core';

const base = `https://mlflow.test:${process.env.GUARD_PORT}`;
const shots = process.env.SHOTS;
const ttl = Number(process.env.ID_TOKEN_TTL);

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: [
    '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    '--host-resolver-rules=MAP mlflow.test 127.0.0.1',
  ],
});
const report = {};
let current;

// Signs in on the provider's own pages (its development login takes any password), then its
// consent page (a refresh token needs consent).
async function providerSignIn(page, user) {
  await page.locator('input[name="login"]').waitFor({ timeout: 15_000 });
  await page.locator('input[name="login"]').fill(user);
  await page.locator('input[name="password"]').fill('any password');
  await page.getByRole('button', { name: 'Sign-in' }).click();
  const consent = page.getByRole('button', { name: 'Continue' });
  await consent.waitFor({ timeout: 15_000 });
  await consent.click();
}

try {
  const ctx = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1280, height: 800 } });
  const page = await ctx.newPage();
  current = page;
  const refused = [];
  const redirects = [];
  page.on('framenavigated', (f) => {
    if (f === page.mainFrame()) console.error(`navigated: ${f.url()}`);
  });
  page.on('response', (r) => {
    if (r.url().startsWith(base) && r.status() === 403) refused.push(`${r.request().method()} ${r.url()}`);
    if (r.status() >= 300 && r.status() < 400) redirects.push(r.url());
  });

  // guard's sign-in page offers the provider beside the password form.
  const first = await page.goto(`${base}/#/experiments`);
  assert.equal(first.status(), 401, 'the first navigation');
  const button = page.getByRole('link', { name: `Sign in with ${process.env.PROVIDER}` });
  await button.waitFor();
  assert.ok(await page.locator('#password').isVisible(), 'the password form is there too');
  await page.screenshot({ path: `${shots}/0-sign-in-page.png` });

  // The provider's own page, then back through guard's callback to the UI.
  await button.click();
  assert.ok(!page.url().startsWith(base), `on the provider: ${page.url()}`);
  await page.screenshot({ path: `${shots}/1-provider-login.png` });
  await providerSignIn(page, 'alice');
  await page.waitForURL(`${base}/`, { timeout: 15_000 });
  const signedInAt = Date.now();
  const cookies = await ctx.cookies(base);
  const session = cookies.find((c) => c.name === '__Host-guard_session');
  assert.ok(session && session.httpOnly && session.secure && session.sameSite === 'Lax', JSON.stringify(cookies));
  assert.ok(session.value.length < 4096, `the session cookie is ${session.value.length} bytes`);
  assert.ok(!cookies.some((c) => c.name === '__Host-guard_oidc'), 'the round-trip cookie is gone');
  report.session_cookie_bytes = session.value.length;

  // The UI: the account menu names her, its Create button works.
  await page.goto(`${base}/#/experiments`);
  const account = page.getByRole('button', { name: 'Account menu for alice' });
  await account.waitFor({ timeout: 30_000 });
  report.account_menu = await account.getAttribute('aria-label');
  const create = page.getByRole('button', { name: 'Create', exact: true });
  await create.waitFor({ timeout: 30_000 });
  await create.click();
  await page.locator('#experimentName').fill('created-through-sso');
  const created = page.waitForResponse((r) => r.url().includes('/experiments/create'));
  await page.getByRole('dialog').getByRole('button', { name: 'Create', exact: true }).click();
  const createdResp = await created;
  assert.equal(createdResp.status(), 200, `create from the UI: ${await createdResp.text()}`);
  report.experiment_id = (await createdResp.json()).experiment_id;
  await page.waitForTimeout(500);
  await page.screenshot({ path: `${shots}/2-experiment-created.png` });

  // The other ways in, on the same site at the same time, from a client with no cookies.
  const api = await request.newContext({ ignoreHTTPSErrors: true });
  const grant = await api.post(`${process.env.ISSUER}/token`, {
    headers: { authorization: `Basic ${Buffer.from('ci-machine:ci-machine-secret').toString('base64')}` },
    form: { grant_type: 'client_credentials', scope: 'mlflow', resource: 'https://mlflow.test' },
  });
  assert.equal(grant.status(), 200, await grant.text());
  const jwt = (await grant.json()).access_token;
  report.beside_the_session = {};
  for (const [how, authorization] of [
    ['basic', `Basic ${Buffer.from(process.env.GUARD_BASIC).toString('base64')}`],
    ['guard_token', `Bearer ${process.env.GUARD_TOKEN}`],
    ['jwt', `Bearer ${jwt}`],
  ]) {
    // Node resolves names itself (no host-resolver rule): the address, as a script would.
    const r = await api.get(`https://127.0.0.1:${process.env.GUARD_PORT}/api/2.0/mlflow/experiments/search?max_results=10`, {
      headers: { authorization },
    });
    assert.equal(r.status(), 200, `${how}: ${await r.text()}`);
    report.beside_the_session[how] = r.status();
  }
  await api.dispose();

  // Her ID token runs out: the next page refreshes the session at the provider, unseen.
  const wait = signedInAt + (ttl + 2) * 1000 - Date.now();
  if (wait > 0) await page.waitForTimeout(wait);
  const before = (await ctx.cookies(base)).find((c) => c.name === '__Host-guard_session').value;
  // A new document (not a hash change, which the UI may answer from memory).
  await page.goto(`${base}/#/experiments/${report.experiment_id}`);
  const reloaded = await page.reload();
  assert.equal(reloaded.status(), 200, 'the page after the refresh');
  await page.getByText('created-through-sso').first().waitFor({ timeout: 30_000 });
  const after = (await ctx.cookies(base)).find((c) => c.name === '__Host-guard_session');
  assert.ok(after && after.value !== before, 'the refreshed session was sealed anew');

  // The session's absolute end (SESSION_LIFETIME s after sign-in, before the new ID token runs
  // out): renewed at the provider too, not ended.
  const wait2 = signedInAt + (Number(process.env.SESSION_LIFETIME) + 2) * 1000 - Date.now();
  if (wait2 > 0) await page.waitForTimeout(wait2);
  const before2 = (await ctx.cookies(base)).find((c) => c.name === '__Host-guard_session').value;
  const renewed = await page.reload();
  assert.equal(renewed.status(), 200, 'the page at the absolute end');
  await page.getByText('created-through-sso').first().waitFor({ timeout: 30_000 });
  const after2 = (await ctx.cookies(base)).find((c) => c.name === '__Host-guard_session');
  assert.ok(after2 && after2.value !== before2, 'renewed at its absolute end');
  assert.deepEqual(refused, [], 'no 403 while using the UI');

  // Sign-out through the provider: guard's page, the provider's confirmation, back to guard.
  await page.goto(`${base}/_guard/logout`);
  await page.getByRole('button', { name: 'Sign out' }).click();
  const yes = page.getByRole('button', { name: 'Yes, sign me out' });
  await yes.waitFor({ timeout: 15_000 });
  await page.screenshot({ path: `${shots}/3-provider-sign-out.png` });
  await yes.click();
  await page.waitForURL(`${base}/`, { timeout: 15_000 });
  await page.getByRole('link', { name: `Sign in with ${process.env.PROVIDER}` }).waitFor();
  const left = (await ctx.cookies(base)).map((c) => c.name);
  assert.ok(!left.includes('__Host-guard_session'), `cookies after sign-out: ${left}`);
  await page.screenshot({ path: `${shots}/4-signed-out.png` });
  report.signed_out = true;

  // mallory is signed in by the provider but not in the site's allowed groups: guard's 403
  // page, once, with a way to sign in as someone else; no session.
  redirects.length = 0;
  await page.getByRole('link', { name: `Sign in with ${process.env.PROVIDER}` }).click();
  await providerSignIn(page, 'mallory');
  await page.getByRole('heading', { name: 'Not allowed' }).waitFor({ timeout: 15_000 });
  assert.ok(page.url().startsWith(`${base}/_guard/oidc/callback`), page.url());
  const text = await page.locator('main').innerText();
  assert.match(text, /mallory/);
  assert.match(text, /ml-team/);
  await page.waitForTimeout(1000);
  assert.ok(page.url().startsWith(`${base}/_guard/oidc/callback`), `still on the 403 page: ${page.url()}`);
  const toGuard = redirects.filter((u) => u.startsWith(base)).length;
  assert.ok(toGuard <= 2, `no redirect loop: ${JSON.stringify(redirects)}`);
  assert.ok(!(await ctx.cookies(base)).some((c) => c.name === '__Host-guard_session'), 'no session for mallory');
  await page.getByRole('link', { name: 'Sign in as someone else' }).waitFor();
  await page.screenshot({ path: `${shots}/5-not-allowed.png` });
  report.not_allowed = true;
  console.log(JSON.stringify(report));
} catch (e) {
  console.error(e.stack || String(e));
  if (current) {
    console.error(`at ${current.url()}:\n${(await current.locator("body").innerText().catch(() => "")).slice(0, 1500)}`);
    await current.screenshot({ path: `${shots}/failed.png` }).catch(() => {});
  }
  process.exitCode = 1;
} finally {
  await browser.close();
}
