// A realm-like OpenID Connect provider for the API's keycloak-mode tests, built on
// `oidc-provider` (a certified implementation we did not write). It serves over HTTPS with the
// API's test certificate, signs RS256 JWT access tokens for the `viopay-backoffice` audience
// carrying Keycloak's `realm_access.roles`, and has one public client, the portal, with PKCE.
//
// Usage: node provider.mjs <config.json>
// config: {port, cert, key, redirect_uris: [..], users: {sub: {email, password, roles}}, kid}
// A fresh RSA key is made at each start under `kid`: a restart with another kid is a key
// rotation as the API sees it.
import { readFileSync } from 'node:fs';
import { generateKeyPairSync } from 'node:crypto';
import https from 'node:https';
import Provider from 'oidc-provider';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const issuer = `https://localhost:${config.port}`;
// The API as a resource server: an absolute URI names it; its tokens' `aud` is the API's.
const RESOURCE = 'urn:viopay:backoffice';
const AUDIENCE = 'viopay-backoffice';

const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const jwk = { ...privateKey.export({ format: 'jwk' }), kid: config.kid, alg: 'RS256', use: 'sig' };

const provider = new Provider(issuer, {
  clients: [{
    client_id: 'viopay-portal',
    token_endpoint_auth_method: 'none',
    redirect_uris: config.redirect_uris,
    grant_types: ['authorization_code'],
    response_types: ['code'],
  }],
  jwks: { keys: [jwk] },
  pkce: { required: () => true },
  cookies: { keys: ['test cookie key, not a secret'] },
  claims: { openid: ['sub'], email: ['email'] },
  features: {
    devInteractions: { enabled: false },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => RESOURCE,
      useGrantedResource: () => true,
      getResourceServerInfo: () => ({
        scope: 'openid email',
        audience: AUDIENCE,
        accessTokenTTL: 3600,
        accessTokenFormat: 'jwt',
        jwt: { sign: { alg: 'RS256' } },
      }),
    },
  },
  findAccount: async (ctx, sub) => config.users[sub] && {
    accountId: sub,
    claims: async () => ({ sub, email: config.users[sub].email }),
  },
  extraTokenClaims: async (ctx, token) => {
    const user = config.users[token.accountId];
    return user ? { realm_access: { roles: user.roles }, email: user.email } : {};
  },
  // Consent is the realm's business, not the test's: the portal's scopes are granted.
  loadExistingGrant: async (ctx) => {
    const id = ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (id) return ctx.oidc.provider.Grant.find(id);
    const grant = new ctx.oidc.provider.Grant({
      clientId: ctx.oidc.client.clientId,
      accountId: ctx.oidc.session.accountId,
    });
    grant.addOIDCScope('openid email');
    grant.addResourceScope(RESOURCE, 'openid email');
    await grant.save();
    return grant;
  },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  ttl: { Session: 3600, Interaction: 600, Grant: 3600, AuthorizationCode: 60, IdToken: 3600 },
});

const page = (uid, problem) => `<!doctype html><html><head><title>Realm sign-in</title></head><body>
<h1>Test realm</h1>${problem ? `<p id="problem">${problem}</p>` : ''}
<form method="post" action="/interaction/${uid}/login">
<label>Username <input name="username" autofocus></label>
<label>Password <input name="password" type="password"></label>
<button type="submit">Log in</button></form></body></html>`;

const form = (req) => new Promise((resolve) => {
  let body = '';
  req.on('data', (c) => { body += c; });
  req.on('end', () => resolve(new URLSearchParams(body)));
});

const callback = provider.callback();
const server = https.createServer({
  cert: readFileSync(config.cert),
  key: readFileSync(config.key),
}, async (req, res) => {
  const m = req.url.match(/^\/interaction\/([^/?]+)(\/login)?/);
  if (!m) return callback(req, res);
  try {
    const details = await provider.interactionDetails(req, res);
    if (req.method === 'GET') {
      res.setHeader('content-type', 'text/html');
      return res.end(page(details.uid));
    }
    const fields = await form(req);
    const sub = Object.keys(config.users)
      .find((s) => config.users[s].email === fields.get('username'));
    if (!sub || config.users[sub].password !== fields.get('password')) {
      res.setHeader('content-type', 'text/html');
      res.statusCode = 401;
      return res.end(page(details.uid, 'Invalid username or password.'));
    }
    return provider.interactionFinished(req, res, { login: { accountId: sub } },
      { mergeWithLastSubmission: false });
  } catch (e) {
    res.statusCode = 400;
    return res.end(String(e));
  }
});
server.listen(config.port, '127.0.0.1', () => console.log(`ready ${issuer}`));
