// Publishing to Herald from a Node.js backend, with a typed client generated from the
// committed OpenAPI spec: `openapi-typescript` turns openapi/herald.json into types
// (src/herald.d.ts, `npm run generate`), `openapi-fetch` makes the requests.
//
//   npm ci && npm run build
//   node dist/publish.js http://127.0.0.1:8080 "$KEY" acme news
import createClient from 'openapi-fetch';
import type { paths } from './herald';

const [base, key, tenant = 'acme', channel = 'news'] = process.argv.slice(2);
if (!base || !key) {
  console.error('usage: node dist/publish.js <herald url> <api key> [tenant] [channel]');
  process.exit(2);
}

const herald = createClient<paths>({ baseUrl: base, headers: { Authorization: `Bearer ${key}` } });

// Publish: the body is checked against PublishRequest at compile time.
const published = await herald.POST('/v1/tenants/{tenant}/channels/{channel}/messages', {
  params: { path: { tenant, channel } },
  body: { data: { from: 'typescript', n: [1, 2] }, event: 'generated', idempotency_key: `example-${Date.now()}` },
});
if (published.error) {
  // A problem document: `code` is stable, `field` names the part of the request at fault.
  console.error('refused:', published.error.code, published.error.detail);
  process.exit(1);
}
const { position, epoch } = published.data;

// Read it back from the channel's history.
const history = await herald.GET('/v1/tenants/{tenant}/channels/{channel}/messages', {
  params: { path: { tenant, channel }, query: { limit: 10 } },
});
if (history.error) {
  console.error('history refused:', history.error.code, history.error.detail);
  process.exit(1);
}
const found = history.data.publications.some((p) => p.position === position && p.epoch === epoch);
console.log(JSON.stringify({ position, epoch, in_history: found }));
