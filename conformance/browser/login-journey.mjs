// A visitor's sign-in journey in Chromium (Playwright), for the login
// conformance test. Prints one JSON object with what the browser saw.
//
//   node login-journey.mjs '{"first": URL, "second": URL, "logout": URL,
//                            "account": NAME, "issuer": URL}'
import { chromium } from 'playwright-core';

const input = JSON.parse(process.argv[2]);
class Done extends Error {}
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--ignore-certificate-errors'],
});
const out = {};
try {
  const context = await browser.newContext({ ignoreHTTPSErrors: true });
  const page = await context.newPage();
  let visited = [];
  // Every address a navigation went through, redirects included.
  page.on('request', (request) => {
    if (request.isNavigationRequest() && request.frame() === page.mainFrame()) visited.push(request.url());
  });
  const atProvider = () => page.url().startsWith(input.issuer);

  // 1. A protected page: to the provider, sign in, consent, back.
  await page.goto(input.first);
  out.first_redirected_to_provider = atProvider();
  if (atProvider()) {
    await page.fill('input[name=login]', input.account);
    await page.fill('input[name=password]', 'any');
    await Promise.all([page.waitForNavigation(), page.click('button[type=submit]')]);
    // The consent page (first sign-in of this account to this client).
    if (atProvider()) {
      await Promise.all([
        page.waitForURL((u) => !u.href.startsWith(input.issuer)),
        page.click('button[type=submit]'),
      ]);
    }
  }
  await page.waitForLoadState('load');
  out.first = { url: page.url(), body: await page.textContent('body'), visited };

  // 2. Another preview on the same domain: no second sign-in.
  visited = [];
  await page.goto(input.second);
  out.second = { url: page.url(), body: await page.textContent('body'), visited };

  out.cookies = (await context.cookies()).map(({ name, value, domain, path, httpOnly, secure, sameSite, expires }) =>
    ({ name, value, domain, path, httpOnly, secure, sameSite, expires }));

  // 3. Sign out.
  if (!input.logout) throw new Done();
  visited = [];
  await page.goto(input.logout);
  out.logout = { url: page.url(), body: await page.textContent('body') };
  out.cookies_after_logout = (await context.cookies()).map(({ name, domain }) => ({ name, domain }));
  // An API call from the page (same origin, so the browser's cookies).
  out.after_logout_status = await page.evaluate(async (url) => {
    const response = await fetch(url, { headers: { accept: 'application/json' }, redirect: 'manual' });
    return response.status;
  }, input.first);
} catch (e) {
  if (!(e instanceof Done)) throw e;
} finally {
  await browser.close();
}
console.log(JSON.stringify(out));
