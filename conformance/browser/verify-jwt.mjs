// Verifies a JWT with `jose` (not the library the edge uses) against a
// JWK set, as a service behind the edge would.
//
//   node verify-jwt.mjs <token> <jwks-json> <issuer> <audience>
//
// Prints the verified claims as JSON, or the error and exits 1.
import { createLocalJWKSet, jwtVerify } from 'jose';

const [token, jwks, issuer, audience] = process.argv.slice(2);
try {
  const { payload, protectedHeader } = await jwtVerify(token, createLocalJWKSet(JSON.parse(jwks)), {
    issuer,
    audience,
    algorithms: ['ES256'],
  });
  console.log(JSON.stringify({ header: protectedHeader, claims: payload }));
} catch (e) {
  console.log(`refused: ${e.code || e.message}`);
  process.exit(1);
}
