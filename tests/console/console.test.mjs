// The console in a real browser: Debian's Chromium driven by playwright-core. Run by
// tests/console.rs, which starts `netd up --http` on a topology of its own (both tenants
// routed through an emulated uplink), saturates both tenants with iperf3 and passes what this script needs in the environment:
//   NETD_URL, NETD_TOKEN, NETD_PID, TENANT_A, TENANT_B, SERVERS (comma-separated),
//   CAPACITY_BPS, SCREENSHOT (where to write the PNG).
// Every check prints one line; the first failure throws (exit code 1).
import { chromium } from 'playwright-core';
import http from 'node:http';

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const URL_ = env('NETD_URL');
const TOKEN = env('NETD_TOKEN');
const [A, B] = [env('TENANT_A'), env('TENANT_B')];
const CAPACITY = Number(env('CAPACITY_BPS'));
const MBIT = 1e6;

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
// The box of `tenant`'s handle on the bar. The bar is drawn anew at every update (4 a
// second): a handle found may be replaced before its box is read, so read it again until
// one is in place.
async function handleBox(page, tenant) {
  for (let tries = 0; tries < 20; tries += 1) {
    const box = await page.locator(`.handle[data-tenant="${tenant}"]`).boundingBox();
    if (box !== null) return box;
    await sleep(50);
  }
  check(false, `${tenant}'s handle is on the bar`);
  return null;
}

function check(ok, what, detail = '') {
  if (!ok) throw new Error(`FAILED: ${what} ${detail}`);
  console.log(`ok: ${what}`);
}

// A request from outside the browser (as any local process could make).
function request(method, path, headers = {}, body = undefined) {
  return new Promise((resolve, reject) => {
    const req = http.request(new URL(path, URL_), { method, headers }, (res) => {
      let data = '';
      res.on('data', (chunk) => { data += chunk; });
      res.on('end', () => resolve({ status: res.statusCode, body: data, headers: res.headers }));
    });
    req.on('error', reject);
    if (body !== undefined) req.write(body);
    req.end();
  });
}
const status = async () => JSON.parse((await request('GET', '/api/status', { Authorization: `Bearer ${TOKEN}` })).body).result;
const tenantOf = (s, name) => s.tenants.find((t) => t.name === name);

async function waitFor(what, predicate, timeoutMs = 10000) {
  const deadline = Date.now() + timeoutMs;
  let last;
  while (Date.now() < deadline) {
    last = await predicate();
    if (last === true) return;
    await sleep(200);
  }
  throw new Error(`FAILED: ${what} within ${timeoutMs} ms (last: ${JSON.stringify(last)})`);
}

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
try {
  const page = await browser.newPage({ viewport: { width: 1300, height: 1000 } });
  const errors = [];
  page.on('console', (msg) => { if (msg.type() === 'error') errors.push(msg.text()); });
  page.on('pageerror', (err) => errors.push(String(err)));

  // Signing in: the page holds nothing before; the token buys an HttpOnly cookie.
  await page.goto(URL_);
  await page.waitForSelector('#login-form', { state: 'visible' });
  check(errors.length === 0, 'the page loads without console errors', JSON.stringify(errors));
  await page.fill('#token', 'not-the-token-at-all-not-the-token-at-all');
  await page.click('#login-form button');
  await page.waitForFunction(() => document.querySelector('#login-error').textContent.includes('Wrong token'));
  check(true, 'a wrong token is refused on the page');
  await page.fill('#token', TOKEN);
  await page.click('#login-form button');
  await page.waitForFunction(() => window.netdConsole.events >= 3, null, { timeout: 10000 });
  const cookies = await page.context().cookies();
  const session = cookies.find((c) => c.name === 'netd_session');
  check(session && session.httpOnly && session.sameSite === 'Strict', 'the session cookie is HttpOnly and SameSite=Strict', JSON.stringify(session));
  check(await page.evaluate(() => document.cookie === ''), 'the page script cannot read the session cookie');

  // Lists the topology's tenants and servers.
  for (const tenant of [A, B]) {
    check(await page.locator(`.tenant[data-tenant="${tenant}"]`).count() === 1, `tenant ${tenant} has its card`);
  }
  for (const server of env('SERVERS').split(',')) {
    check(await page.locator(`tr[data-server="${server}"]`).count() === 1, `server ${server} is listed`);
  }
  check(await page.locator('#conn.up').count() === 1, 'the page says it is live');
  // Routed tenants: their uplink, per direction, plotted and in their table.
  for (const tenant of [A, B]) {
    const card = page.locator(`.tenant[data-tenant="${tenant}"]`);
    check(await card.locator('.plot.uplink .uplot').count() === 1, `${tenant} has its uplink plot`);
    const numbers = await card.locator('table.numbers').textContent();
    check(numbers.includes('uplink upload') && numbers.includes('uplink download'), `${tenant} shows its uplink per direction`);
  }

  // The plotted rates follow `netd status` while iperf3 saturates both tenants.
  await sleep(3000);
  for (let round = 0; round < 3; round += 1) {
    const plotted = await page.evaluate(([a, b]) => [window.netdConsole.lastPlotted(a), window.netdConsole.lastPlotted(b)], [A, B]);
    const s = await status();
    for (const [i, name] of [[0, A], [1, B]]) {
      const told = tenantOf(s, name).rates.out_1s_bps;
      const error = Math.abs(plotted[i].rate - told) / told;
      check(told > 50 * MBIT && error <= 0.05, `${name}: plotted ${(plotted[i].rate / MBIT).toFixed(1)} Mbit/s, netd status ${(told / MBIT).toFixed(1)} (${(error * 100).toFixed(1)}%)`);
    }
    await sleep(700);
  }

  // A drag moves 100 Mbit/s of guarantee from A to B, as one change.
  const before = await status();
  const [gA, gB] = [tenantOf(before, A).guaranteed_bps, tenantOf(before, B).guaranteed_bps];
  const bar = await page.locator('#bar').boundingBox();
  const handle = await handleBox(page, A);
  const dx = (100 * MBIT / CAPACITY) * bar.width;
  const [x, y] = [handle.x + handle.width / 2, handle.y + handle.height / 2];
  await page.mouse.move(x, y);
  await page.mouse.down();
  for (let step = 1; step <= 10; step += 1) await page.mouse.move(x - (dx * step) / 10, y);
  await page.mouse.up();
  await waitFor('the drag applied', async () => {
    const s = await status();
    return (tenantOf(s, A).guaranteed_bps === gA - 100 * MBIT && tenantOf(s, B).guaranteed_bps === gB + 100 * MBIT) || [tenantOf(s, A).guaranteed_bps, tenantOf(s, B).guaranteed_bps, await page.textContent('#error')];
  });
  check(true, `the drag moved 100 Mbit/s: ${A} ${gA / MBIT} → ${(gA - 100 * MBIT) / MBIT}, ${B} ${gB / MBIT} → ${(gB + 100 * MBIT) / MBIT}`);
  check(await page.textContent('#error') === '', 'no error shown for an applied drag');

  // The iperf3 split moves to the new entitlements (200/200 before, 100/300 now). Within
  // 10%: one TCP flow fills a shaped share to within about 5% here (issue 14 is about the
  // rest); the shaper's own accuracy is measured by the benchmarks, not here.
  await sleep(4000);
  for (let round = 0; round < 2; round += 1) {
    const s = await status();
    for (const name of [A, B]) {
      const t = tenantOf(s, name);
      const error = Math.abs(t.rates.out_1s_bps - t.entitlement_bps) / t.entitlement_bps;
      check(error <= 0.10, `${name} after the drag: ${(t.rates.out_1s_bps / MBIT).toFixed(1)} Mbit/s delivered for an entitlement of ${(t.entitlement_bps / MBIT).toFixed(1)} (${(error * 100).toFixed(1)}%)`);
    }
    await sleep(1000);
  }
  await page.screenshot({ path: env('SCREENSHOT'), fullPage: true });
  check(true, `screenshot written to ${env('SCREENSHOT')}`);

  // A drag the daemon refuses (B past its ceiling) shows its error and changes nothing.
  const moved = await status();
  const handleB = await handleBox(page, B);
  const [xb, yb] = [handleB.x + handleB.width / 2, handleB.y + handleB.height / 2];
  await page.mouse.move(xb, yb);
  await page.mouse.down();
  for (let step = 1; step <= 10; step += 1) await page.mouse.move(xb + (dx * 0.6 * step) / 10, yb);
  await page.mouse.up();
  await page.waitForFunction(() => document.querySelector('#error').textContent.length > 0);
  const shown = await page.textContent('#error');
  check(shown.includes('ceiling'), `a refused drag shows the daemon's error: ${shown}`);
  const after = await status();
  check(tenantOf(after, B).guaranteed_bps === tenantOf(moved, B).guaranteed_bps, 'the refused drag changed nothing');

  // Editing in place: a weight of 0 is refused (and the field goes back), a ceiling applies.
  const weight = page.locator(`.tenant[data-tenant="${A}"] input[name="edit-weight"]`);
  await weight.fill('0');
  await weight.press('Enter');
  await page.waitForFunction(() => /weight/i.test(document.querySelector('#error').textContent));
  check(tenantOf(await status(), A).weight === tenantOf(after, A).weight, `a refused weight shows: ${await page.textContent('#error')}`);
  const ceiling = page.locator(`.tenant[data-tenant="${A}"] input[name="edit-ceiling"]`);
  await ceiling.fill('350mbit');
  await ceiling.press('Enter');
  await waitFor('the ceiling applied', async () => tenantOf(await status(), A).ceiling_bps === 350 * MBIT);
  check(true, 'a ceiling edited in place applies');

  // Tenants and servers added and removed from the page.
  await page.fill('#add-tenant input[name="name"]', `${A}-new`);
  await page.fill('#add-tenant input[name="guaranteed"]', '10mbit');
  await page.click('#add-tenant button');
  await waitFor('the tenant added', async () => !!tenantOf(await status(), `${A}-new`));
  await page.waitForSelector(`#add-server select option[value="${A}-new"]`, { state: 'attached' });
  await page.fill('#add-server input[name="name"]', `${A}-x1`);
  await page.selectOption('#add-server select', `${A}-new`);
  await page.fill('#add-server input[name="ip"]', '10.91.0.9/24');
  await page.click('#add-server button');
  await waitFor('the server added', async () => (await status()).servers.some((s) => s.name === `${A}-x1`), 20000);
  check(true, 'a tenant and a server added from the page');
  await page.locator(`tr[data-server="${A}-x1"] button`).click();
  await waitFor('the server removed', async () => !(await status()).servers.some((s) => s.name === `${A}-x1`), 20000);
  await page.locator(`.tenant[data-tenant="${A}-new"] h3 button`).click();
  await waitFor('the tenant removed', async () => !tenantOf(await status(), `${A}-new`));
  check(true, 'the server and the tenant removed from the page');

  // The change log: who made each change and when.
  await page.waitForFunction(() => document.querySelector('#changes').textContent.includes('set-rates'));
  const log = await page.textContent('#changes');
  check(/http 127\.0\.0\.1:\d+ set-rates/.test(log), 'the change log shows the drag, by whom');
  check(log.includes('refused:'), 'the change log shows refusals');

  // Authentication and cross-site requests, from outside the browser.
  check((await request('GET', '/api/status')).status === 401, 'no token or cookie: 401');
  check((await request('GET', '/api/status', { Authorization: 'Bearer wrong' })).status === 401, 'a wrong token: 401');
  check((await request('GET', '/api/status', { Cookie: 'netd_session=wrong' })).status === 401, 'a wrong cookie: 401');
  check((await request('GET', '/api/events')).status === 401, 'the event stream needs it too: 401');
  const cookie = `netd_session=${session.value}`;
  const body = JSON.stringify({ tenant: A, weight: 3 });
  const host = new URL(URL_).host;
  const crossSite = await request('POST', '/api/set-rate', { Cookie: cookie, 'Content-Type': 'application/json', Origin: 'http://evil.example' }, body);
  check(crossSite.status === 403, `a cross-origin POST with the cookie: ${crossSite.status}`);
  const form = await request('POST', '/api/set-rate', { Cookie: cookie, 'Content-Type': 'text/plain', Origin: `http://${host}` }, body);
  check(form.status === 403, `a same-origin POST that is not JSON: ${form.status}`);
  check(tenantOf(await status(), A).weight !== 3, 'neither changed anything');
  // From another origin in the browser itself: the cookie is SameSite=Strict, and the gate
  // refuses the Origin anyway.
  const other = await browser.newPage();
  await other.goto('data:text/html,<title>elsewhere</title>');
  const fromElsewhere = await other.evaluate(async ([url, payload]) => {
    try {
      const r = await fetch(`${url}api/set-rate`, { method: 'POST', mode: 'no-cors', credentials: 'include', headers: { 'Content-Type': 'text/plain' }, body: payload });
      return r.type;
    } catch (e) {
      return String(e);
    }
  }, [URL_.endsWith('/') ? URL_ : `${URL_}/`, body]);
  check(tenantOf(await status(), A).weight !== 3, `a cross-site request from another page changed nothing (${fromElsewhere})`);
  await other.close();

  // The daemon goes away (stopped for 3 s): the page says so, then carries on by itself.
  process.kill(Number(env('NETD_PID')), 'SIGSTOP');
  try {
    await page.waitForSelector('#conn.down', { timeout: 5000 });
    check(true, 'the page shows it is disconnected');
  } finally {
    process.kill(Number(env('NETD_PID')), 'SIGCONT');
  }
  await page.waitForSelector('#conn.up', { timeout: 15000 });
  const events = await page.evaluate(() => window.netdConsole.events);
  await sleep(1000);
  check(await page.evaluate(() => window.netdConsole.events) > events, 'the page reconnected and receives snapshots again');

  // Past loading, what the console logs is the browser noting the refusals this script
  // provoked (a wrong token, refused changes); no script error, nothing else.
  const unexpected = errors.filter((e) => !/^Failed to load resource: the server responded with a status of 40[01] /.test(e));
  check(unexpected.length === 0, 'no other console errors', JSON.stringify(unexpected));
} finally {
  await browser.close();
}
