// The operator status page (issue 18) in Debian's headless Chromium, driven over the DevTools protocol
// (`--remote-debugging-pipe`: NUL-separated JSON messages on fds 3 and 4, so no websocket library and no npm
// package is needed). Run by status_page_test.sh, which starts the llama-server double and two `ray serve`
// (one plain, one with auth on) and passes their addresses in the environment.
//
// Every wait is on a condition with a deadline: DOM conditions are awaited inside the page with a
// MutationObserver, protocol events with listeners. Nothing sleeps.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set (run through status_page_test.sh)`);
  return v;
};
const CHROMIUM = env('CHROMIUM');
const RAY_URL = env('RAY_URL');
const RAY_AUTH_URL = env('RAY_AUTH_URL');
const RAY_AUTH_KEY = env('RAY_AUTH_KEY');
const DOUBLE_URL = env('DOUBLE_URL');
const DOUBLE_PID = Number(env('DOUBLE_PID'));
const OUT_DIR = env('SCREENSHOT_DIR');
const MODEL = 'tiny-llama';

// ---------- a minimal DevTools protocol client over the pipe ----------
class Browser {
  constructor() {
    this.profile = mkdtempSync(join(tmpdir(), 'ray-status-chromium-'));
    const args = [
      '--headless', '--remote-debugging-pipe', `--user-data-dir=${this.profile}`, '--no-first-run',
      '--no-default-browser-check', '--disable-background-networking', '--disable-component-update',
      '--disable-sync', '--disable-extensions', '--disable-default-apps', '--disable-gpu',
      '--disable-dev-shm-usage', '--mute-audio', '--password-store=basic', '--use-mock-keychain',
      '--disable-features=Translate,OptimizationHints,MediaRouter,AutofillServerCommunication',
      '--window-size=1280,1000', 'about:blank',
    ];
    if (process.getuid && process.getuid() === 0) args.unshift('--no-sandbox');  // root (CI) has no sandbox
    this.proc = spawn(CHROMIUM, args, { stdio: ['ignore', 'ignore', 'pipe', 'pipe', 'pipe'] });
    this.stderr = '';
    this.proc.stderr.on('data', (d) => { this.stderr = (this.stderr + d).slice(-8000); });
    this.exited = new Promise((resolve) => this.proc.on('exit', resolve));
    this.out = this.proc.stdio[3];
    this.nextId = 0;
    this.pending = new Map();
    this.listeners = new Set();
    let buffer = '';
    this.proc.stdio[4].on('data', (chunk) => {
      buffer += chunk.toString('utf8');
      let end;
      while ((end = buffer.indexOf('\0')) >= 0) {
        const msg = JSON.parse(buffer.slice(0, end));
        buffer = buffer.slice(end + 1);
        if (msg.id !== undefined && this.pending.has(msg.id)) {
          const p = this.pending.get(msg.id);
          this.pending.delete(msg.id);
          clearTimeout(p.timer);
          if (msg.error) p.reject(new Error(`${p.method}: ${msg.error.message}`));
          else p.resolve(msg.result);
        } else if (msg.method) {
          for (const l of [...this.listeners]) l(msg);
        }
      }
    });
  }

  send(method, params = {}, sessionId = undefined, timeoutMs = 15000) {
    const id = ++this.nextId;
    const msg = { id, method, params };
    if (sessionId) msg.sessionId = sessionId;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`${method}: no answer within ${timeoutMs} ms; chromium stderr:\n${this.stderr}`));
      }, timeoutMs);
      this.pending.set(id, { resolve, reject, timer, method });
      this.out.write(JSON.stringify(msg) + '\0');
    });
  }

  // Resolves with the first event for which pred(msg) holds; rejects at the deadline.
  waitEvent(pred, timeoutMs, what) {
    return new Promise((resolve, reject) => {
      const l = (msg) => {
        if (!pred(msg)) return;
        this.listeners.delete(l);
        clearTimeout(timer);
        resolve(msg);
      };
      const timer = setTimeout(() => {
        this.listeners.delete(l);
        reject(new Error(`no ${what} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.listeners.add(l);
    });
  }

  async close() {
    try { await this.send('Browser.close', {}, undefined, 5000); } catch { this.proc.kill('SIGKILL'); }
    const killer = setTimeout(() => this.proc.kill('SIGKILL'), 5000);
    await this.exited;
    clearTimeout(killer);
    rmSync(this.profile, { recursive: true, force: true });
  }
}

class Page {
  static async open(browser) {
    const { targetId } = await browser.send('Target.createTarget', { url: 'about:blank' });
    const { sessionId } = await browser.send('Target.attachToTarget', { targetId, flatten: true });
    const page = new Page(browser, sessionId);
    await page.init();
    return page;
  }

  constructor(browser, sessionId) {
    this.browser = browser;
    this.sessionId = sessionId;
    this.requests = [];  // every request the page made: {url, method, headers, status, failed}
    this.problems = [];  // console errors and warnings, exceptions, browser log errors
    this.networkErrors = [];  // the browser's "Failed to load resource" entries (4xx/5xx answers)
    const byId = new Map();
    browser.listeners.add((msg) => {
      if (msg.sessionId !== sessionId) return;
      const p = msg.params;
      switch (msg.method) {
        case 'Network.requestWillBeSent': {
          const r = { url: p.request.url, method: p.request.method, headers: p.request.headers, status: null };
          byId.set(p.requestId, r);
          this.requests.push(r);
          break;
        }
        case 'Network.responseReceived':
          if (byId.has(p.requestId)) byId.get(p.requestId).status = p.response.status;
          break;
        case 'Network.loadingFailed':
          if (byId.has(p.requestId)) byId.get(p.requestId).failed = p.errorText;
          break;
        case 'Runtime.consoleAPICalled':
          if (['error', 'warning', 'assert'].includes(p.type))
            this.problems.push(`console.${p.type}: ${p.args.map((a) => a.value ?? a.description).join(' ')}`);
          break;
        case 'Runtime.exceptionThrown':
          this.problems.push(`exception: ${p.exceptionDetails.exception?.description ?? p.exceptionDetails.text}`);
          break;
        case 'Log.entryAdded':
          if (p.entry.source === 'network' && p.entry.level === 'error') this.networkErrors.push(p.entry);
          else if (p.entry.level === 'error' || p.entry.level === 'warning')
            this.problems.push(`log ${p.entry.source}/${p.entry.level}: ${p.entry.text} ${p.entry.url ?? ''}`);
          break;
        default:
          break;
      }
    });
  }

  send(method, params = {}) { return this.browser.send(method, params, this.sessionId); }

  async init() {
    for (const domain of ['Page', 'Runtime', 'Log', 'Network']) await this.send(`${domain}.enable`);
    // Installed by the protocol (outside the page's CSP): records every CSP violation the page causes.
    await this.send('Page.addScriptToEvaluateOnNewDocument', {
      source: `window.__cspViolations = [];
        document.addEventListener('securitypolicyviolation',
          (e) => window.__cspViolations.push(e.effectiveDirective + ' ' + e.blockedURI));`,
    });
    await this.viewport(1280, 1000, false);
  }

  viewport(width, height, mobile) {
    return this.send('Emulation.setDeviceMetricsOverride', { width, height, deviceScaleFactor: 1, mobile });
  }

  async goto(url) {
    const loaded = this.browser.waitEvent(
      (m) => m.sessionId === this.sessionId && m.method === 'Page.loadEventFired', 15000, `load of ${url}`);
    const r = await this.send('Page.navigate', { url });
    if (r.errorText) throw new Error(`navigate ${url}: ${r.errorText}`);
    await loaded;
  }

  async eval(expression) {
    const r = await this.send('Runtime.evaluate', { expression, awaitPromise: true, returnByValue: true });
    if (r.exceptionDetails) throw new Error(`evaluate failed: ${r.exceptionDetails.exception?.description ?? r.exceptionDetails.text}`);
    return r.result.value;
  }

  // Waits until `cond` (the source of a function run in the page) returns a truthy value, re-checked on every
  // DOM mutation; returns that value, or fails with what the page showed at the deadline.
  async waitFor(cond, timeoutMs, what) {
    const started = Date.now();
    const r = await this.eval(`new Promise((resolve) => {
      const cond = ${cond};
      let timer = 0;
      const obs = new MutationObserver(() => check());
      const done = (v) => { obs.disconnect(); clearTimeout(timer); resolve(v); };
      const check = () => { let v; try { v = cond(); } catch (e) { v = false; } if (v) done({ ok: true, value: v }); };
      obs.observe(document, { subtree: true, childList: true, characterData: true, attributes: true });
      timer = setTimeout(() => done({ ok: false, shown: document.body.innerText.slice(0, 3000) }), ${timeoutMs});
      check();
    })`);
    if (!r.ok) assert.fail(`${what}: not within ${timeoutMs} ms; the page showed:\n${r.shown}`);
    return { value: r.value, ms: Date.now() - started };
  }

  text(selector) { return this.eval(`document.querySelector(${JSON.stringify(selector)})?.textContent ?? null`); }
  visible(selector) {
    return this.eval(`(() => { const e = document.querySelector(${JSON.stringify(selector)});
      return !!e && !e.closest('[hidden]') && e.getClientRects().length > 0; })()`);
  }

  async screenshot(name) {
    const size = await this.eval(`({ width: document.documentElement.scrollWidth, height: document.documentElement.scrollHeight })`);
    const { data } = await this.send('Page.captureScreenshot',
      { format: 'png', captureBeyondViewport: true, clip: { x: 0, y: 0, ...size, scale: 1 } });
    const path = join(OUT_DIR, name);
    writeFileSync(path, Buffer.from(data, 'base64'));
    return path;
  }

  async typeKeyAndSubmit(value) {
    await this.eval(`document.getElementById('key').focus()`);
    await this.send('Input.insertText', { text: value });
    await this.eval(`document.querySelector('#auth-form button[type=submit]').click()`);
  }
}

// ---------- requests to Ray and the double from the test itself ----------
const inflight = new AbortController();
function infer(maxTokens = 8, signal = undefined) {
  return fetch(`${RAY_URL}/v1/infer`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ input: `status page test ${Math.random()}`, maxTokens }),
    signal,
  });
}
async function control(knobs) {
  const r = await fetch(`${DOUBLE_URL}/__control`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(knobs),
  });
  assert.equal(r.status, 200, `POST /__control ${JSON.stringify(knobs)}`);
}
async function health(url, headers = {}) {
  const r = await fetch(`${url}/health`, { headers });
  return { status: r.status, body: await r.json() };
}

// ---------- the suite ----------
describe('status page in headless Chromium', () => {
  let browser;
  let page;
  const hung = [];

  before(async () => {
    browser = new Browser();
    const v = await browser.send('Browser.getVersion');
    console.log(`# ${v.product} (${CHROMIUM})`);
    page = await Page.open(browser);
  });

  after(async () => {
    inflight.abort();
    await Promise.allSettled(hung);
    if (browser) await browser.close();
  });

  test('shows "ready" with the double attached, and live numbers once there is traffic', async () => {
    await page.goto(`${RAY_URL}/`);
    const ready = await page.waitFor(`() => document.getElementById('backend-state').textContent === 'ready'`,
      10000, 'backend state "ready"');
    console.log(`# "ready" shown ${ready.ms} ms after load`);
    assert.ok(await page.visible('#dash'));
    assert.ok(!(await page.visible('#auth')), 'no key prompt without auth');
    assert.match(await page.text('#model'), new RegExp(MODEL));
    assert.equal(await page.text('#overall'), 'ok');
    assert.match(await page.text('#trouble'), /No trouble/);
    assert.match(await page.text('#b-slots'), /^0 \/ 1$/);
    assert.ok(await page.eval(`document.documentElement.scrollWidth <= window.innerWidth`), 'no horizontal scrolling');

    for (let i = 0; i < 4; i++) assert.equal((await infer()).status, 200);
    const job = await fetch(`${RAY_URL}/v1/jobs`, {
      method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ input: 'a durable job', maxTokens: 4 }),
    });
    assert.equal(job.status, 202);

    await page.waitFor(`() => document.getElementById('lat-n').textContent === '4 requests in the last minute'`,
      10000, 'the 4 requests in the latency window');
    const p50 = { value: await page.text('#p50') };
    assert.match(p50.value, /^[\d.]+ (ms|s)$/);
    assert.match(await page.text('#p99'), /^[\d.]+ (ms|s)$/);
    assert.ok(await page.eval(`document.querySelectorAll('#lat-chart polyline').length >= 2`), 'p50/p99 drawn');
    console.log(`# p50 ${p50.value}, p99 ${await page.text('#p99')}`);
    const tps = await page.waitFor(`() => Number(document.getElementById('tps').textContent) > 0 &&
      document.getElementById('tps').textContent`, 10000, 'tokens per second from llama-server');
    console.log(`# tokens/s ${tps.value}`);
    await page.waitFor(`() => document.getElementById('job-succeeded')?.textContent === '1'`, 10000,
      'the job counted as succeeded');
    assert.match(await page.text('#k-hits'), /^0 \/ 4$|^0 \/ 5$/);  // 4 misses (+ the job's)
  });

  test('a queue over 80 % and shedding stand out', async () => {
    await control({ hang_before_first_token: true });
    for (let i = 0; i < 3; i++) {  // one in the backend's only slot, two queued: maxQueue is 2
      const r = infer(8, inflight.signal).then((res) => res.text()).catch(() => null);
      hung.push(r);
    }
    await page.waitFor(`() => document.getElementById('m-queue').classList.contains('bad') &&
      /Queue at 100 %/.test(document.getElementById('trouble').textContent)`, 10000, 'the queue at 100 %');
    assert.ok(await page.eval(`document.getElementById('c-queue').classList.contains('bad')`));
    // Per lane: both waiting requests (maxTokens 8 ≤ shortJobMaxTokens) are in the short lane.
    await page.waitFor(`() => /^2 \\/ 2/.test(document.querySelector('#m-lane-short .v').textContent)`, 10000,
      'two waiting in the short lane');
    assert.match(await page.text('#m-lane-draft .v'), /^0 \/ 2/);
    const refused = await infer();
    assert.equal(refused.status, 503);
    assert.equal((await refused.json()).error.code, 'queue_full');
    await page.waitFor(`() => [...document.querySelectorAll('#trouble li.bad')].some((li) =>
      /^Shedding load: 1 refused in the last minute \\(queue_full 1\\)/.test(li.textContent))`, 10000,
      'the shedding warning');
    const row = await page.eval(`[...document.querySelectorAll('#rej-body tr[data-code=queue_full] td')]
      .map((td) => td.textContent)`);
    assert.deepEqual(row, ['queue_full', '1', '1', '1']);
  });

  test("shows the backend's unavailable state within 3 s of the double being killed", async () => {
    process.kill(DOUBLE_PID, 'SIGKILL');
    const killed = Date.now();
    const down = await page.waitFor(`() => ['unreachable', 'failed', 'misconfigured']
      .includes(document.getElementById('backend-state').textContent) &&
      document.getElementById('backend-state').textContent`, 3000, 'the backend down');
    const elapsed = Date.now() - killed;
    console.log(`# "${down.value}" shown ${elapsed} ms after the double was killed`);
    assert.ok(elapsed < 3000, `${elapsed} ms`);
    assert.ok(await page.eval(`document.getElementById('c-backend').classList.contains('bad') &&
      document.getElementById('backend-state').classList.contains('bad')`), 'the backend card stands out');
    await page.waitFor(`() => document.getElementById('overall').textContent === 'unavailable'`, 3000,
      'overall "unavailable" (from /readyz)');
    assert.match(await page.text('#trouble'), /Backend unreachable/);
    assert.match(await page.text('#reasons'), /provider_unreachable/);
    console.log(`# screenshot ${await page.screenshot('status.png')}`);
  });

  test('readable on a phone, in dark mode', async () => {
    await page.viewport(390, 844, true);
    await page.send('Emulation.setEmulatedMedia', { features: [{ name: 'prefers-color-scheme', value: 'dark' }] });
    const fit = await page.waitFor(`() => {
      const bg = getComputedStyle(document.body).backgroundColor.match(/\\d+/g).map(Number);
      const dark = (0.2126 * bg[0] + 0.7152 * bg[1] + 0.0722 * bg[2]) < 60;
      return dark && document.documentElement.scrollWidth <= window.innerWidth &&
        document.getElementById('c-backend').getBoundingClientRect().right <= window.innerWidth && window.innerWidth;
    }`, 5000, 'a dark page that fits 390 px without horizontal scrolling');
    assert.equal(fit.value, 390);
    console.log(`# screenshot ${await page.screenshot('status-phone-dark.png')}`);
    await page.send('Emulation.setEmulatedMedia', { features: [] });
    await page.viewport(1280, 1000, false);
  });

  test('with auth on, shows nothing until a key is entered; a wrong key says so', async () => {
    const origin = new URL(RAY_AUTH_URL).origin;
    const before = page.requests.length;
    await page.goto(`${RAY_AUTH_URL}/`);
    await page.waitFor(`() => !document.getElementById('auth').hidden`, 10000, 'the key prompt');
    assert.ok(!(await page.visible('#dash')), 'no dashboard before a key');
    const shown = await page.eval('document.body.innerText');
    assert.ok(!shown.includes(MODEL), 'the model id is not shown');
    assert.equal(await page.text('#backend-state'), '–');
    assert.equal(await page.eval(`sessionStorage.length`), 0);
    const fetched = page.requests.slice(before).filter((r) => r.url.startsWith(origin)).map((r) => new URL(r.url).pathname);
    assert.deepEqual(fetched.filter((p) => p !== '/'), ['/health'], 'only /health was asked before a key');
    await page.screenshot('status-auth-prompt.png');

    await page.typeKeyAndSubmit('not-the-key-0123456789');
    await page.waitFor(`() => !document.getElementById('auth-msg').hidden &&
      /refused/.test(document.getElementById('auth-msg').textContent)`, 5000, 'the wrong-key message');
    assert.ok(!(await page.visible('#dash')), 'still no dashboard');
    assert.match(await page.text('#auth-msg'), /That key was refused \(401 unauthorized\)/);
    assert.equal(await page.eval(`sessionStorage.length`), 0, 'a refused key is not kept');
    const wrong = page.requests.find((r) => r.url === `${origin}/health` && r.headers.Authorization === 'Bearer not-the-key-0123456789');
    assert.ok(wrong, 'the key went out as a bearer header');
    assert.equal(wrong.status, 401);

    await page.typeKeyAndSubmit(RAY_AUTH_KEY);
    await page.waitFor(`() => document.getElementById('backend-state').textContent === 'ready'`, 10000,
      'backend "ready" with the right key');
    assert.ok(!(await page.visible('#auth')));
    assert.ok(!(await page.visible('#auth-msg')));
    assert.equal(await page.eval(`sessionStorage.getItem('ray.statusPage.key')`), RAY_AUTH_KEY);
    await page.waitFor(`() => /\\d/.test(document.getElementById('k-joins').textContent)`, 5000, 'metrics shown');
    const metrics = page.requests.filter((r) => r.url === `${origin}/metrics`);
    assert.ok(metrics.length > 0 && metrics.every((r) => r.headers.Authorization === `Bearer ${RAY_AUTH_KEY}` && r.status === 200),
      '/metrics asked with the key only');
    // The key survives a reload of the tab (sessionStorage), without the prompt.
    await page.goto(`${RAY_AUTH_URL}/`);
    await page.waitFor(`() => document.getElementById('backend-state').textContent === 'ready'`, 10000,
      'ready again after a reload');
    const direct = await health(RAY_AUTH_URL);
    assert.equal(direct.status, 401, '/health itself still needs the key');
  });

  test('no console errors, no CSP violation, no request off loopback', async () => {
    const violations = await page.eval('window.__cspViolations');
    assert.deepEqual(violations, []);
    assert.deepEqual(page.problems, []);
    // The browser logs an error for every 4xx/5xx answer; the only ones expected are the page's polls of
    // /health (401 without a key, 503 with the backend down) and of /readyz (503 with the backend down).
    const unexpected = page.networkErrors.filter((e) =>
      !(/\/(health|readyz)$/.test(new URL(e.url).pathname) && /status of (401|503)/.test(e.text)));
    assert.deepEqual(unexpected, []);
    assert.ok(page.requests.length > 10, `${page.requests.length} requests seen`);
    const offLoopback = page.requests.filter((r) => {
      const u = new URL(r.url);
      if (u.protocol === 'data:' || u.protocol === 'about:') return false;
      return !['127.0.0.1', 'localhost', '[::1]'].includes(u.hostname);
    });
    assert.deepEqual(offLoopback.map((r) => r.url), []);
    const paths = new Set(page.requests.map((r) => (r.url.startsWith('data:') ? 'data:' : new URL(r.url).pathname)));
    const allowed = new Set(['/', '/health', '/readyz', '/metrics', 'data:']);  // data: is the empty favicon
    assert.deepEqual([...paths].filter((p) => !allowed.has(p)), [], `paths asked: ${[...paths].join(', ')}`);
    console.log(`# ${page.requests.length} requests, all to ${[...paths].join(', ')} on loopback`);
  });

  test('the screenshots were saved', () => {
    // Taken by the tests above, which assert on the DOM, not on pixels.
    for (const name of ['status.png', 'status-phone-dark.png', 'status-auth-prompt.png'])
      assert.ok(statSync(join(OUT_DIR, name)).size > 1000, name);
  });
});
