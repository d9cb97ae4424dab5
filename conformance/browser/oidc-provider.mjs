// A real OpenID provider for the login tests (the `oidc-provider` package,
// certified by the OpenID Foundation), with its development sign-in pages:
// any account name signs in, the password is not checked.
//
//   node oidc-provider.mjs <client-id> <client-secret> <redirect-uri>...
//
// Listens on a free loopback port (or $PORT); prints `listening <issuer>`
// when ready. Accounts: the login name is the
// subject; `<name>@example.com` its email; groups `eng` for every name but
// `outsider`.
import { createServer } from 'node:http';
import Provider from 'oidc-provider';

const [clientId, clientSecret, ...redirectUris] = process.argv.slice(2);
const server = createServer();
await new Promise((ready) => server.listen(Number(process.env.PORT || 0), '127.0.0.1', ready));
const issuer = `http://127.0.0.1:${server.address().port}`;

const provider = new Provider(issuer, {
  clients: [{
    client_id: clientId,
    client_secret: clientSecret,
    redirect_uris: redirectUris,
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  pkce: { required: () => true },
  claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name', 'groups'] },
  // The ID token carries the claims (the edge reads no userinfo).
  conformIdTokenClaims: false,
  cookies: { keys: ['conformance-only-cookie-key'] },
  async findAccount(_ctx, sub) {
    return {
      accountId: sub,
      async claims() {
        return {
          sub,
          email: `${sub}@example.com`,
          email_verified: true,
          name: `Test ${sub}`,
          groups: sub === 'outsider' ? [] : ['eng'],
        };
      },
    };
  },
});
server.on('request', provider.callback());
console.log(`listening ${issuer}`);
