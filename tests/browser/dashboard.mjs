// Drives the admin dashboard in the system Chromium against a running Herald, the way a person
// would, and saves screenshots of the main pages.
//
//   node dashboard.mjs <base url> <admin token> <screenshot dir> [main|expiry|webhooks] [receiver url]
//
// `main`: log in (a wrong token first), create a tenant (a bad origin first), edit its origins,
// create a namespace and a channel, create an API key and see its secret exactly once, open the
// live tail (creating the signing key it needs), publish through the REST API and through the
// form and see both messages arrive, open WebSocket clients and watch the live connection count
// rise, ask who is present, mint a token, read the audit log, suspend the tenant and see its
// clients dropped (4003) and the count fall, resume, log out, and log in with the tenant's API
// key to see that tenant only.
// `expiry`: the server runs with a session of a few seconds; an expired session returns to the
// login page with a message.
// `webhooks`: the server may call loopback addresses and a real HTTP receiver listens at
// <receiver url>: a private address is refused on the URL field, a webhook to the receiver is
// created and its secret shown once, a test event reaches the receiver signed with that secret
// and the delivery log shows it succeeded, a replay reaches it again with the same webhook-id,
// a 410 Gone answer disables the webhook with its reason shown, enabling it again and
// replaying succeeds, disable/enable, a rotated secret is shown once and signs the next
// request, and the webhook is deleted; a batching webhook keeps and shows its settings; the
// tenant's proxies are saved (secret shown once), shown after a reload, rotated and removed;
// the overview shows the node's webhook and proxy figures.
//
// Each step is printed as one JSON line; any failure exits with status 1 and a message. What
// only the test around this script can see (what the receiver got) is asked as a line
// `{"ask": …}`, answered by one JSON line on stdin.
import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

const [base, adminToken, shots, scenario = 'main', receiver] = process.argv.slice(2);
if (!base || !adminToken || !shots) {
  console.error('usage: node dashboard.mjs <base url> <admin token> <screenshot dir> [main|expiry|webhooks] [receiver url]');
  process.exit(2);
}
mkdirSync(shots, { recursive: true });
const TIMEOUT = 20_000;

const browser = await chromium.launch({
  executablePath: process.env.HERALD_TEST_CHROMIUM || '/usr/bin/chromium',
  args: [
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    '--no-first-run',
  ],
});
const context = await browser.newContext({ viewport: { width: 1440, height: 900 } });
context.setDefaultTimeout(TIMEOUT);
const page = await context.newPage();
const pageErrors = [];
page.on('pageerror', (e) => pageErrors.push(String(e)));
page.on('console', (m) => {
  if (m.type() === 'error') process.stderr.write(`console error: ${m.text()}\n`);
});

let current = 'start';
function step(name, extra = {}) {
  current = name;
  process.stdout.write(JSON.stringify({ step: name, ...extra }) + '\n');
}
function check(cond, message) {
  if (!cond) throw new Error(message);
}
async function shot(name) {
  await page.evaluate(() => window.scrollTo(0, 0));
  await page.waitForTimeout(300);
  await page.screenshot({ path: join(shots, `${name}.png`), fullPage: true });
}
async function api(method, path, body, token = adminToken) {
  const res = await fetch(base + path, {
    method,
    headers: { authorization: `Bearer ${token}`, ...(body ? { 'content-type': 'application/json' } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : null };
}
/** Clicks a sidebar entry by its label. */
async function nav(label) {
  await page.click(`.sidebar [data-nav="${label}"]`);
}
/** Waits until `fn` (run in the page) returns a truthy value. */
async function until(fn, arg, what) {
  try {
    return await page.waitForFunction(fn, arg, { timeout: TIMEOUT, polling: 200 });
  } catch (e) {
    throw new Error(`timed out waiting for ${what}`);
  }
}

let answers;
/** Asks the test around this script (see the top), and waits for its answer. */
async function ask(question) {
  if (!answers) {
    const queue = [];
    const waiting = [];
    createInterface({ input: process.stdin }).on('line', (line) => {
      const answer = JSON.parse(line);
      const next = waiting.shift();
      if (next) next(answer);
      else queue.push(answer);
    });
    answers = () => (queue.length ? Promise.resolve(queue.shift()) : new Promise((r) => waiting.push(r)));
  }
  process.stdout.write(JSON.stringify({ ask: question }) + '\n');
  const answer = await answers();
  if (answer.error) throw new Error(answer.error);
  return answer;
}

async function login(token) {
  await page.waitForSelector('form.login-card');
  await page.fill('input[name=token]', token);
  await page.click('form.login-card button[type=submit]');
}

async function main() {
  const tenant = `acme-${Date.now().toString(36)}`;

  step('login page refuses a wrong token, next to the field');
  await page.goto(`${base}/admin/`);
  await login('not-the-admin-token');
  await page.waitForSelector('.field-error[data-field=token]');
  await shot('login');

  step('login with the admin token');
  await login(adminToken);
  await page.waitForSelector('[data-who=admin]');
  await page.waitForSelector('[data-live=Live]');
  const stored = await page.evaluate(() => sessionStorage.getItem('herald.session'));
  check(stored && !stored.includes(adminToken), 'the session is stored, the admin token is not');

  step('create a tenant: a bad origin is reported on its field, then it is created');
  await nav('Tenants');
  await page.click('[data-action=new-tenant]');
  const form = 'form[data-form=create-tenant]';
  await page.fill(`${form} input[name=id]`, tenant);
  await page.fill(`${form} input[name=name]`, 'Acme Test');
  await page.fill(`${form} textarea[name=allowed_origins]`, 'ftp://nope');
  await page.click(`${form} button[type=submit]`);
  await page.waitForSelector(`${form} .field-error[data-field=allowed_origins]`);
  await page.fill(`${form} textarea[name=allowed_origins]`, '');
  await page.fill(`${form} input[name=max_channels]`, '100');
  await page.click(`${form} button[type=submit]`);
  await page.waitForSelector(`tr[data-tenant="${tenant}"]`);
  await shot('tenants');

  step('tenant settings: allow the dashboard origin for browser clients');
  await page.click(`tr[data-tenant="${tenant}"] a`);
  const edit = 'form[data-form=edit-tenant]';
  await page.waitForSelector(edit);
  await until((id) => document.querySelector('form[data-form=edit-tenant] input[name=name]')?.value === 'Acme Test', null, 'the form to fill');
  await page.fill(`${edit} textarea[name=allowed_origins]`, new URL(base).origin);
  await page.click(`${edit} button[type=submit]`);
  await page.waitForSelector(`${edit} .ok-text`);
  const saved = await api('GET', `/v1/tenants/${tenant}`);
  check(saved.body.allowed_origins[0] === new URL(base).origin, `origins saved: ${JSON.stringify(saved.body)}`);
  check(saved.body.limits.max_channels === 100, 'the limit set at creation is kept');
  await shot('tenant-settings');

  step('create a namespace with presence, and a channel in it');
  await nav('Namespaces');
  await page.click('[data-action=new-namespace]');
  const ns = 'form[data-form=namespace-form]';
  await page.fill(`${ns} input[name=name]`, 'chat');
  await page.fill(`${ns} input[name=history_size]`, '50000');
  await page.selectOption(`${ns} select[name=presence]`, 'true');
  await page.click(`${ns} button[type=submit]`);
  await page.waitForSelector(`${ns} .field-error[data-field="options.history_size"]`);
  await page.fill(`${ns} input[name=history_size]`, '50');
  await page.click(`${ns} button[type=submit]`);
  await page.waitForSelector('tr[data-name="chat"]');
  await shot('namespaces');
  await nav('Channels');
  await page.click('[data-action=new-channel]');
  const ch = 'form[data-form=channel-form]';
  await page.fill(`${ch} input[name=name]`, 'chat:lobby');
  await page.fill(`${ch} input[name=history_size]`, '500');
  await page.click(`${ch} button[type=submit]`);
  await page.waitForSelector('tr[data-name="chat:lobby"]');
  await shot('channels');

  step('create an API key: its secret is shown once');
  await nav('API keys');
  await page.click('[data-action=new-api-key]');
  const kf = 'form[data-form=create-api-key]';
  await page.fill(`${kf} input[name=name]`, 'backend');
  await page.click(`${kf} button[type=submit]`);
  await page.waitForSelector(`${kf} .field-error[data-field=scopes]`);
  for (const scope of ['publish', 'history:read', 'channels:read', 'stats:read', 'tokens:issue']) {
    await page.check(`${kf} input[value="${scope}"]`);
  }
  await page.click(`${kf} button[type=submit]`);
  const secret = (await page.textContent('[data-testid=secret]')).trim();
  check(secret.startsWith('hk_'), `an API key secret is shown: ${secret}`);
  await page.waitForSelector(`tr[data-key] >> text=${secret.slice(0, 9)}`);
  await shot('api-key-created');
  await page.click('[data-secret] >> text=I have copied it');
  await page.waitForSelector('[data-testid=secret]', { state: 'detached' });
  await page.reload();
  await page.waitForSelector('table[data-table=api-keys]');
  check(!(await page.content()).includes(secret), 'the secret is not shown again');
  await shot('api-keys');

  step('live tail: the missing signing key is explained and created, then the tail is live');
  await nav('Live tail');
  await page.fill('form[data-form=tail] input[name=channel]', 'chat:lobby');
  await page.click('[data-action=start-tail]');
  await page.waitForSelector('[data-notice=no-signing-key]');
  await page.click('[data-action=create-hs256]');
  await page.waitForSelector('[data-tail-status^="Live on chat:lobby"]');

  step('publish through the REST API and through the form: both appear in the tail');
  const published = await api('POST', `/v1/tenants/${tenant}/channels/chat:lobby/messages`, {
    data: { text: 'hello from REST' },
    event: 'greeting',
  }, secret);
  check(published.status === 200, `REST publish: ${JSON.stringify(published)}`);
  await page.waitForSelector('.tail-row[data-kind=pub] >> text=hello from REST');
  await page.fill('form[data-form=publish] textarea[name=data]', '{"text": "hello from the form"}');
  await page.click('[data-action=publish]');
  await page.waitForSelector('.tail-row[data-kind=pub] >> text=hello from the form');
  await page.fill('form[data-form=publish] textarea[name=data]', '{"text": ');
  await page.click('[data-action=publish]');
  await page.waitForSelector('form[data-form=publish] .field-error[data-field=data]');
  await page.fill('form[data-form=publish] textarea[name=data]', '{"text": "hello again"}');
  await shot('live-tail');

  step('WebSocket clients connect; the live connection count rises');
  const minted = await api('POST', `/v1/tenants/${tenant}/tokens`, {
    sub: 'alice',
    capabilities: { 'chat:*': ['subscribe', 'presence'] },
  });
  check(minted.status === 201, `mint: ${JSON.stringify(minted)}`);
  const clients = await context.newPage();
  await clients.goto(`${base}/healthz`);
  const wsUrl = `${base.replace(/^http/, 'ws')}/v1/ws?token=${minted.body.token}`;
  await clients.evaluate(({ url, n }) => {
    window.opened = 0;
    window.closes = [];
    window.sockets = [];
    for (let i = 0; i < n; i++) {
      const ws = new WebSocket(url);
      ws.onmessage = (e) => {
        const f = JSON.parse(e.data);
        if (f.type === 'connected') ws.send(JSON.stringify({ type: 'subscribe', id: 1, channel: 'chat:lobby' }));
        if (f.type === 'subscribed') window.opened += 1;
      };
      ws.onclose = (e) => window.closes.push(e.code);
      window.sockets.push(ws);
    }
  }, { url: wsUrl, n: 3 });
  await clients.waitForFunction(() => window.opened === 3, null, { timeout: TIMEOUT });
  await nav('Overview');
  await page.selectOption('select[aria-label=Tenant]', tenant);
  await until(
    (t) => document.querySelector(`table[data-table=tenants] tr[data-tenant="${t}"] td[data-col=websocket]`)?.textContent.trim() === '3',
    tenant,
    'the overview to count 3 WebSocket connections',
  );
  // Some traffic for the charts.
  for (let i = 0; i < 12; i++) {
    await api('POST', `/v1/tenants/${tenant}/channels/chat:lobby/messages`, { data: { n: i } }, secret);
    await page.waitForTimeout(250);
  }
  await until(
    () => /[1-9]/.test(document.querySelector('[data-kpi=Connections] .kpi-value')?.textContent ?? ''),
    null,
    'the connections figure',
  );
  await page.waitForTimeout(1500);
  await shot('overview');

  step('presence: who is subscribed to chat:lobby');
  await page.goto(`${base}/admin/tenants/${tenant}/presence`);
  await page.fill('form[data-form=presence] input[name=channel]', 'chat:lobby');
  await page.click('form[data-form=presence] button[type=submit]');
  await page.waitForSelector('table[data-table=presence]');
  const users = await page.$$eval('table[data-table=presence] tbody tr', (rows) => rows.map((r) => r.textContent));
  check(users.filter((u) => u.includes('alice')).length === 3, `3 connections of alice: ${users}`);
  await page.waitForSelector('table[data-table=occupancy] tr[data-channel="chat:lobby"] td[data-col=subscribers] >> text=3');
  await page.fill('form[data-form=user] input[name=user]', 'alice');
  await page.click('form[data-form=user] button[type=submit]');
  await page.waitForSelector('[data-user=alice] >> text=online');
  check((await page.$$('table[data-table=user-connections] tbody tr')).length === 3, 'alice has 3 connections');
  await shot('presence');

  step('mint a test token');
  await nav('Tokens');
  await page.fill('form[data-form=mint-token] input[name=sub]', 'bob');
  await page.click('form[data-form=mint-token] button[type=submit]');
  await page.waitForSelector(`[data-minted] pre:has-text('"sub": "bob"')`);
  await shot('tokens');

  step('signing keys and the audit log');
  await nav('Signing keys');
  await page.waitForSelector('table[data-table=signing-keys] tr[data-kid]');
  await shot('signing-keys');
  await nav('Audit log');
  await page.waitForSelector('table[data-table=audit] tr[data-action="api_key.create"]');
  await shot('audit');

  step('suspend the tenant: its clients are dropped and the count falls');
  await page.goto(`${base}/admin/tenants`);
  const row = `tr[data-tenant="${tenant}"]`;
  await until((r) => document.querySelector(`${r} td[data-col=connections]`)?.textContent.trim() === '3', row, 'the list to show 3 live connections');
  await page.click(`${row} >> text=Suspend`);
  await page.click(`${row} >> text=Suspend: closes its connections`);
  await page.waitForSelector(`${row} td[data-col=status] >> text=suspended`);
  await clients.waitForFunction(() => window.closes.length === 3, null, { timeout: TIMEOUT });
  const codes = await clients.evaluate(() => window.closes);
  check(codes.every((c) => c === 4003), `clients closed with 4003 tenant_suspended: ${codes}`);
  await until((r) => document.querySelector(`${r} td[data-col=connections]`)?.textContent.trim() === '0', row, 'the live count to fall to 0');
  const refused = await api('GET', '/v1/auth/whoami', null, secret);
  check(refused.status === 403 && refused.body.code === 'tenant_suspended', `the key is refused: ${JSON.stringify(refused)}`);
  await shot('tenant-suspended');

  step('resume it from its settings page');
  await page.click(`${row} a`);
  await page.click('text=Resume tenant');
  await page.click('text=Yes, resume');
  await page.waitForSelector('[data-tenant-status] >> text=active');

  step('log out, then log in with the API key: that tenant only');
  await page.click('[data-action=logout]');
  await page.waitForSelector('form.login-card >> text=You have logged out.');
  check((await page.evaluate(() => sessionStorage.getItem('herald.session'))) === null, 'the session is cleared');
  await login(secret);
  await page.waitForSelector('[data-who=api_key]');
  check((await page.$('.sidebar [data-nav=Tenants]')) === null, 'a tenant key has no tenant list');
  await page.waitForSelector(`.nav-heading >> text=${tenant}`);
  await nav('Channels');
  await page.waitForSelector('tr[data-name="chat:lobby"]');
  check((await page.$('[data-action=new-channel]')) === null, 'no create button without channels:write');
  await nav('API keys');
  await page.waitForSelector('text=lacks the keys:write scope');
  await shot('tenant-key');
  await clients.close();
}

async function expiry() {
  step('log in; the session lasts a few seconds');
  await page.goto(`${base}/admin/tenants`);
  await login(adminToken);
  await page.waitForSelector('[data-who=admin]');
  step('once it expires, the dashboard returns to the login page and says why');
  await page.waitForSelector('form.login-card >> text=expired', { timeout: 30_000 });
  check(new URL(page.url()).pathname === '/admin/login', `on the login page: ${page.url()}`);
  await shot('session-expired');
  step('logging in again brings back the page that was open');
  await login(adminToken);
  await page.waitForSelector('[data-action=new-tenant]');
}

async function webhooks() {
  check(receiver, 'the webhooks scenario needs a receiver URL');
  const tenant = `hooks-${Date.now().toString(36)}`;
  const made = await api('POST', '/v1/tenants', { id: tenant, name: 'Hooks Test' });
  check(made.status === 201, `tenant: ${JSON.stringify(made)}`);

  step("log in and open the tenant's Webhooks page from its navigation");
  await page.goto(`${base}/admin/`);
  await login(adminToken);
  await page.waitForSelector('[data-who=admin]');
  await page.goto(`${base}/admin/tenants/${tenant}`);
  await nav('Webhooks');
  await page.waitForSelector('text=No webhooks yet.');
  check(new URL(page.url()).pathname === `/admin/tenants/${tenant}/webhooks`, `on the Webhooks page: ${page.url()}`);

  step('a private address is refused next to the URL field (url_not_allowed)');
  await page.click('[data-action=new-webhook]');
  const wf = 'form[data-form=create-webhook]';
  await page.fill(`${wf} input[name=url]`, 'http://10.0.0.1/');
  await page.check(`${wf} input[value="channel.occupied"]`);
  await page.click(`${wf} button[type=submit]`);
  const refused = (await (await page.waitForSelector(`${wf} .field-error[data-field=url]`)).textContent()).trim();
  check(refused.includes('10.0.0.1 is not a public address'), `the URL is refused: ${refused}`);
  await shot('webhook-url-refused');

  step('without an event type, the events field says so');
  await page.fill(`${wf} input[name=url]`, receiver);
  await page.uncheck(`${wf} input[value="channel.occupied"]`);
  await page.click(`${wf} button[type=submit]`);
  await page.waitForSelector(`${wf} .field-error[data-field=events]`);
  check((await page.$(`${wf} .field-error[data-field=url]`)) === null, 'the URL is accepted now');

  step('create a webhook to the local receiver: its secret is shown once');
  for (const event of ['channel.occupied', 'presence.join', 'message.published']) {
    await page.check(`${wf} input[value="${event}"]`);
  }
  await page.check(`${wf} input[name=include_api_publishes]`);
  await page.fill(`${wf} input[name=description]`, 'dashboard test');
  await page.click(`${wf} button[type=submit]`);
  const secret = (await page.textContent('[data-testid=secret]')).trim();
  check(secret.startsWith('whsec_'), `a webhook secret is shown: ${secret}`);
  const row = await page.waitForSelector(`tr[data-webhook]:has-text("${receiver}")`);
  const id = await row.getAttribute('data-webhook');
  const w = `tr[data-webhook="${id}"]`;
  const stored = await api('GET', `/v1/tenants/${tenant}/webhooks/${id}`);
  check(
    stored.status === 200 &&
      stored.body.events.join() === 'channel.occupied,presence.join,message.published' &&
      stored.body.include_api_publishes === true &&
      stored.body.enabled === true &&
      stored.body.description === 'dashboard test' &&
      stored.body.secret === undefined,
    `the webhook as created: ${JSON.stringify(stored)}`,
  );
  check((await page.textContent(`${w} td[data-col=status]`)).includes('enabled'), 'the webhook is enabled');
  await shot('webhook-created');
  await page.click('[data-secret] >> text=I have copied it');
  await page.waitForSelector('[data-testid=secret]', { state: 'detached' });
  await page.reload();
  await page.waitForSelector(`table[data-table=webhooks] ${w}`);
  check(!(await page.content()).includes(secret), 'the secret is not shown again');

  step('send a test event: the receiver gets it, signed with that secret, and the log shows it succeeded');
  await page.click(`${w} [data-action=deliveries]`);
  await page.waitForSelector(`[data-deliveries="${id}"] >> text=No deliveries yet.`);
  check(new URL(page.url()).searchParams.get('webhook') === id, `the selected webhook is in the URL: ${page.url()}`);
  await page.click('[data-action=send-test]');
  const first = await ask({ received: 'webhook.test', count: 1, secrets: [secret] });
  check(first.count === 1 && first.requests[0].verified[0], `one signed test request: ${JSON.stringify(first)}`);
  const test = 'table[data-table=deliveries] tr[data-event="webhook.test"]';
  await page.waitForSelector(`${test}[data-status=succeeded]`);
  const cell = async (col) => (await page.textContent(`${test} td[data-col=${col}]`)).trim();
  check((await cell('response')) === '200', `response 200: ${await cell('response')}`);
  check((await cell('attempts')) === '1', `one attempt: ${await cell('attempts')}`);
  check(/^\d+ ms$/.test(await cell('latency')), `a latency: ${await cell('latency')}`);
  check((await cell('outcome')).includes('answered'), `the receiver's answer: ${await cell('outcome')}`);
  const delivery = await page.getAttribute(test, 'data-delivery');
  const log = `/v1/tenants/${tenant}/webhooks/${id}/deliveries`;
  const before = (await api('GET', log)).body.items[0];
  check(before.id === delivery && before.status === 'succeeded', `the log as listed: ${JSON.stringify(before)}`);
  await shot('webhook-deliveries');

  step('replay it: the receiver gets it again with the same webhook-id');
  await page.click(`${test} [data-action=replay]`);
  const second = await ask({ received: 'webhook.test', count: 2, secrets: [secret] });
  check(
    second.count === 2 && second.requests[1].verified[0] && second.requests[1].webhook_id === second.requests[0].webhook_id,
    `the replay, same webhook-id: ${JSON.stringify(second)}`,
  );
  await page.click('[data-action=refresh-deliveries]');
  await page.waitForSelector(`${test}[data-status=succeeded]`);
  const after = (await api('GET', log)).body.items;
  check(
    after.length === 1 && after[0].status === 'succeeded' && after[0].last_attempt_at !== before.last_attempt_at,
    `the replayed delivery was attempted again: ${JSON.stringify(after)}`,
  );

  step('an endpoint answering 410 Gone disables the webhook, and the page says why');
  await ask({ script: [410] });
  await page.click('[data-action=send-test]');
  await ask({ received: 'webhook.test', count: 3 });
  const gone = 'table[data-table=deliveries] tr[data-status=failed]';
  await page.waitForSelector(gone);
  check((await page.textContent(`${gone} td[data-col=response]`)).trim() === '410', 'the failure shows 410');
  check((await page.textContent(`${gone} td[data-col=outcome]`)).includes('410 Gone'), 'the failure says why');
  await page.waitForSelector(`${w}[data-enabled=false] [data-disabled-reason]`);
  check((await page.textContent(`${w} [data-disabled-reason]`)).includes('410 Gone'), 'the reason is shown');
  await shot('webhook-disabled');

  step('enable it again and replay the failed delivery: it succeeds');
  await page.click(`${w} [data-action=toggle]`);
  await page.waitForSelector(`${w}[data-enabled=true]`);
  check((await page.$(`${w} [data-disabled-reason]`)) === null, 'enabling clears the reason');
  await page.click(`${gone} [data-action=replay]`);
  await ask({ received: 'webhook.test', count: 4 });
  await until(
    () => [...document.querySelectorAll('table[data-table=deliveries] tr[data-delivery]')].every((r) => r.dataset.status === 'succeeded'),
    null,
    'every delivery to have succeeded',
  );
  check((await page.$$('table[data-table=deliveries] tr[data-delivery]')).length === 2, 'two deliveries in the log');

  step('disable and enable it from the list');
  await page.click(`${w} [data-action=toggle]`);
  await page.waitForSelector(`${w}[data-enabled=false]`);
  check((await api('GET', `/v1/tenants/${tenant}/webhooks/${id}`)).body.enabled === false, 'disabled');
  await page.click(`${w} [data-action=toggle]`);
  await page.waitForSelector(`${w}[data-enabled=true]`);
  check((await api('GET', `/v1/tenants/${tenant}/webhooks/${id}`)).body.enabled === true, 'enabled again');

  step('rotate the secret: the new one is shown once and signs the next request, with the old one');
  await page.click(`${w} >> text=Rotate secret`);
  await page.click(`${w} >> text=Rotate: the old secret signs for 24 h more`);
  const rotated = (await page.textContent('[data-testid=secret]')).trim();
  check(rotated.startsWith('whsec_') && rotated !== secret, `a new secret is shown: ${rotated}`);
  await page.waitForSelector(`${w} [data-rotating]`);
  await shot('webhook-rotated');
  await page.click('[data-secret] >> text=I have copied it');
  await page.waitForSelector('[data-testid=secret]', { state: 'detached' });
  await page.click('[data-action=send-test]');
  const signed = await ask({ received: 'webhook.test', count: 5, secrets: [rotated, secret] });
  check(
    signed.requests[4].verified[0] && signed.requests[4].verified[1],
    `signed with the new and the previous secret: ${JSON.stringify(signed.requests[4])}`,
  );
  await until(
    () => document.querySelectorAll('table[data-table=deliveries] tr[data-status=succeeded]').length === 3,
    null,
    'the third delivery to succeed',
  );

  step('delete the webhook: it leaves the list and its delivery log closes');
  await page.click(`${w} >> text=Delete`);
  await page.click(`${w} >> text=Delete with its deliveries`);
  await page.waitForSelector(w, { state: 'detached' });
  await page.waitForSelector(`[data-deliveries="${id}"]`, { state: 'detached' });
  await page.waitForSelector('text=No webhooks yet.');
  check((await api('GET', `/v1/tenants/${tenant}/webhooks`)).body.items.length === 0, 'no webhooks left');

  step('a batching webhook: out-of-range sizes are refused on their field, the settings are kept and shown');
  await page.click('[data-action=new-webhook]');
  await page.fill(`${wf} input[name=url]`, receiver);
  await page.check(`${wf} input[value="channel.occupied"]`);
  await page.fill(`${wf} input[name=batch_max_events]`, '500');
  await page.click(`${wf} button[type=submit]`);
  await page.waitForSelector(`${wf} .field-error[data-field=batch_max_events]`);
  await page.fill(`${wf} input[name=batch_max_events]`, '20');
  await page.fill(`${wf} input[name=batch_max_ms]`, '250');
  await page.click(`${wf} button[type=submit]`);
  await page.click('[data-secret] >> text=I have copied it');
  const batching = (await (await page.waitForSelector('tr[data-webhook] [data-batching]')).textContent()).trim();
  check(batching.includes('20 events') && batching.includes('250 ms'), `the batch settings are shown: ${batching}`);
  const batched = (await api('GET', `/v1/tenants/${tenant}/webhooks`)).body.items[0];
  check(batched.batch_max_events === 20 && batched.batch_max_ms === 250, `stored: ${JSON.stringify(batched)}`);

  step('proxies: a private URL is refused on its field; saving shows the secret once');
  const pf = 'form[data-form=proxy]';
  await page.waitForSelector('[data-proxy-status=none]');
  await page.fill(`${pf} input[name=connect_url]`, 'http://10.0.0.1/');
  await page.click(`${pf} [data-action=save-proxy]`);
  await page.waitForSelector(`${pf} .field-error[data-field=connect_url]`);
  await page.fill(`${pf} input[name=connect_url]`, receiver);
  await page.fill(`${pf} input[name=refresh_url]`, receiver);
  await page.fill(`${pf} input[name=timeout_ms]`, '2500');
  await page.selectOption(`${pf} select[name=on_failure]`, 'allow');
  await page.click(`${pf} [data-action=save-proxy]`);
  const proxySecret = (await page.textContent('[data-testid=secret]')).trim();
  check(proxySecret.startsWith('whsec_'), `a proxy secret is shown: ${proxySecret}`);
  await page.waitForSelector('[data-proxy-status=configured]');
  const proxy = (await api('GET', `/v1/tenants/${tenant}/proxy`)).body;
  check(
    proxy.connect_url === receiver && proxy.refresh_url === receiver && !proxy.subscribe_url &&
      proxy.timeout_ms === 2500 && proxy.on_failure === 'allow' && !proxy.secret,
    `the proxy as saved: ${JSON.stringify(proxy)}`,
  );
  await shot('proxy-saved');
  await page.click('[data-secret] >> text=I have copied it');

  step('the form shows what is stored after a reload; rotating shows a new secret once');
  await page.reload();
  await page.waitForSelector('[data-proxy-status=configured]');
  check((await page.inputValue(`${pf} input[name=connect_url]`)) === receiver, 'the connect URL is filled in');
  check((await page.inputValue(`${pf} select[name=on_failure]`)) === 'allow', 'the failure policy is filled in');
  await page.click(`${pf} button:text-is("Rotate secret")`);
  await page.click(`${pf} >> text=Rotate: requests are signed with the new one at once`);
  const rotatedProxy = (await page.textContent('[data-testid=secret]')).trim();
  check(rotatedProxy.startsWith('whsec_') && rotatedProxy !== proxySecret, `a new proxy secret: ${rotatedProxy}`);
  await page.click('[data-secret] >> text=I have copied it');

  step('removing the proxies');
  await page.click(`${pf} button:text-is("Remove")`);
  await page.click(`${pf} >> text=Remove every proxy`);
  await page.waitForSelector('[data-proxy-status=none]');
  check((await api('GET', `/v1/tenants/${tenant}/proxy`)).status === 404, 'no proxy left');

  step('the audit log records the changes');
  await nav('Audit log');
  for (const action of ['webhook.create', 'webhook.rotate_secret', 'webhook.replay', 'webhook.delete', 'proxy.put', 'proxy.rotate_secret', 'proxy.delete']) {
    await page.waitForSelector(`table[data-table=audit] tr[data-action="${action}"]`);
  }

  step("the overview shows this node's webhook figures");
  await page.goto(`${base}/admin/`);
  await until(
    () => Number(document.querySelector('[data-card=hooks] tr[data-hooks] td[data-col=succeeded]')?.textContent) >= 3,
    null,
    'the succeeded deliveries in the overview',
  );
  await page.waitForSelector('[data-card=hooks] table[data-table=proxy-figures] tr[data-proxy=connect]');
  await shot('overview-hooks');
}

try {
  if (scenario === 'expiry') await expiry();
  else if (scenario === 'webhooks') await webhooks();
  else await main();
  check(pageErrors.length === 0, `page errors: ${pageErrors.join('; ')}`);
  step('done');
  await browser.close();
  process.exit(0);
} catch (e) {
  process.stdout.write(JSON.stringify({ failed: current, error: String(e.message || e) }) + '\n');
  try {
    await page.screenshot({ path: join(shots, `failed-${scenario}.png`), fullPage: true });
  } catch {}
  await browser.close();
  process.exit(1);
}
