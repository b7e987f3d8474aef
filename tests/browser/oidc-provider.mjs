// A real OpenID provider for guard's single sign-on tests: panva's oidc-provider (OpenID
// certified) on a loopback port, with a machine client whose client-credentials grant yields
// JWT access tokens for one audience, a web client (code + PKCE, refresh tokens) and users with
// groups. Started by the Rust tests (tests/common/oidc.rs), one process per test file.
//
// Environment: KEYS (a JSON file of private JWKs; made with one RS256 key, id KID or `rsa-1`,
// if missing: a test restarts the provider with the same keys, or with a new file to rotate
// them), PORT (0 for any free one), WEB_HOST (the web client's redirect and post-logout URIs
// are https://WEB_HOST on any port, since guard's test port is only known once it runs;
// default mlflow.test), ID_TOKEN_TTL (seconds, default 3600: a short one makes guard refresh).
// Prints one JSON line, {"issuer": ...}, once it listens.
//
// Besides the provider's own endpoints, POST /_test/sign takes {"claims", "kid", "alg",
// "key"} and answers a compact JWT signed as asked: a test makes expired, foreign-audience,
// unknown-key, `alg: none` and HS256-with-the-public-key tokens from it. Test use only.

import fs from 'node:fs';
import http from 'node:http';
import * as jose from 'jose';
import Provider from 'oidc-provider';

export const AUDIENCE = 'https://mlflow.test';

const keysFile = process.env.KEYS;
if (!keysFile) throw new Error('KEYS must name the key file');
if (!fs.existsSync(keysFile)) {
  const { privateKey } = await jose.generateKeyPair('RS256', { extractable: true });
  const jwk = { ...(await jose.exportJWK(privateKey)), kid: process.env.KID || 'rsa-1', alg: 'RS256', use: 'sig' };
  fs.writeFileSync(keysFile, JSON.stringify({ keys: [jwk] }));
}
const jwks = JSON.parse(fs.readFileSync(keysFile, 'utf8'));

const users = {
  alice: { email: 'alice@example.com', groups: ['ml-team'] },
  mallory: { email: 'mallory@elsewhere.test', groups: ['visitors'] },
};

const webHost = process.env.WEB_HOST || 'mlflow.test';

const server = http.createServer();
await new Promise((ok) => server.listen(Number(process.env.PORT || 0), '127.0.0.1', ok));
const issuer = `http://127.0.0.1:${server.address().port}`;

const provider = new Provider(issuer, {
  jwks,
  clients: [
    {
      client_id: 'ci-machine',
      client_secret: 'ci-machine-secret',
      grant_types: ['client_credentials'],
      redirect_uris: [],
      response_types: [],
    },
    {
      client_id: 'guard-web',
      client_secret: 'guard-web-secret',
      grant_types: ['authorization_code', 'refresh_token'],
      redirect_uris: [`https://${webHost}/_guard/oidc/callback`],
      post_logout_redirect_uris: [`https://${webHost}/`],
      response_types: ['code'],
    },
  ],
  // The claims of the asked scopes in the ID token itself, as Keycloak, Entra ID and Okta put
  // them: guard reads email and groups from there.
  conformIdTokenClaims: false,
  ttl: { IdToken: Number(process.env.ID_TOKEN_TTL || 3600) },
  features: {
    clientCredentials: { enabled: true },
    devInteractions: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => AUDIENCE,
      getResourceServerInfo: () => ({ scope: 'mlflow', audience: AUDIENCE, accessTokenFormat: 'jwt' }),
      useGrantedResource: () => true,
    },
  },
  claims: { openid: ['sub'], email: ['email'], groups: ['groups'], profile: ['preferred_username'] },
  findAccount: (ctx, sub) => ({
    accountId: sub,
    claims: () => ({ sub, preferred_username: sub, ...(users[sub] || { groups: [] }) }),
  }),
  pkce: { required: () => true },
});
// Plain HTTP on loopback: the provider must not insist on TLS in front of it.
provider.proxy = true;
// The web client's URIs on any port of WEB_HOST (the test's guard listens on port 0); the
// path and everything else must still match exactly.
const anyPort = (uri) => uri.replace(new RegExp(`^https://${webHost.replace(/\./g, '\\.')}:\\d+/`), `https://${webHost}/`);
for (const method of ['redirectUriAllowed', 'postLogoutRedirectUriAllowed']) {
  const exact = provider.Client.prototype[method];
  provider.Client.prototype[method] = function (uri) {
    return exact.call(this, uri) || exact.call(this, anyPort(uri));
  };
}

const callback = provider.callback();
server.on('request', async (req, res) => {
  if (req.method === 'POST' && req.url === '/_test/sign') {
    try {
      res.setHeader('content-type', 'text/plain');
      res.end(await sign(JSON.parse(await body(req))));
    } catch (e) {
      res.statusCode = 400;
      res.end(String(e));
    }
    return;
  }
  callback(req, res);
});

async function body(req) {
  let text = '';
  for await (const chunk of req) text += chunk;
  return text;
}

// Signs `claims` (times relative to now where given as {"in": seconds}) with the provider's
// first key, another key, no key (`alg: none`) or HS256 keyed with the public key's JSON.
async function sign({ claims, kid, alg, key }) {
  const now = Math.floor(Date.now() / 1000);
  const full = { iss: issuer, aud: AUDIENCE, sub: 'ci-machine', iat: now, exp: now + 300 };
  for (const [k, v] of Object.entries(claims || {})) {
    if (v === null) delete full[k];
    else full[k] = typeof v === 'object' && 'in' in v ? now + v.in : v;
  }
  const own = jwks.keys[0];
  if (key === 'none') {
    return new jose.UnsecuredJWT(full).encode();
  }
  if (key === 'public-as-hmac') {
    const { d, p, q, dp, dq, qi, ...pub } = own;
    const secret = new TextEncoder().encode(JSON.stringify(pub));
    return new jose.SignJWT(full).setProtectedHeader({ alg: 'HS256', kid: own.kid }).sign(secret);
  }
  let signing = await jose.importJWK(own, own.alg);
  let header = { alg: alg || own.alg, kid: kid || own.kid };
  if (key === 'stranger') {
    const pair = await jose.generateKeyPair('RS256');
    signing = pair.privateKey;
    header = { alg: 'RS256', kid: kid || 'stranger-1' };
  }
  return new jose.SignJWT(full).setProtectedHeader(header).sign(signing);
}

process.stdout.write(JSON.stringify({ issuer }) + '\n');
