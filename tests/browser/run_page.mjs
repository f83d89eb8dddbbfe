// Opens one page in the system Chromium and relays what the page reports.
//
//   node run_page.mjs [--ignore-https-errors] <url> [screenshot.png]
//
// --ignore-https-errors accepts any server certificate (a test node with a self-signed one).
// The page calls `window.report(line)`; each line is written to stdout. The process runs until
// its stdin says `quit` or closes (then it takes the screenshot, if asked, and exits).
import { chromium } from 'playwright-core';

const args = process.argv.slice(2);
const ignoreHTTPSErrors = args.includes('--ignore-https-errors');
const [url, screenshot] = args.filter((a) => !a.startsWith('--'));
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
    ...(ignoreHTTPSErrors ? ['--ignore-certificate-errors'] : []),
  ],
});
const page = await browser.newPage({ ignoreHTTPSErrors });
await page.exposeFunction('report', (line) => process.stdout.write(line + '\n'));
page.on('console', (m) => process.stderr.write(`console: ${m.text()}\n`));
page.on('pageerror', (e) => process.stderr.write(`page error: ${e}\n`));
await page.goto(url);
process.stdout.write(JSON.stringify({ loaded: true }) + '\n');

let closing = false;
async function finish() {
  if (closing) return;
  closing = true;
  if (screenshot) await page.screenshot({ path: screenshot, fullPage: true });
  await browser.close();
  process.exit(0);
}
process.stdin.on('data', (d) => {
  if (d.toString().includes('quit')) finish();
});
process.stdin.on('end', finish);
