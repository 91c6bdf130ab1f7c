// Two people chat through mess-chat's page, each in a browser context of their own in Debian's
// Chromium (playwright-core, no browser download): both register, A creates a group room, B
// fails to join a room that does not exist (a readable error) and then joins A's room, each sees
// the other's message arrive live, a reloaded window scrolls back through older history, and a
// message sent over A's rate limit waits (the text kept, the wait shown) and is then sent once.
//
// Usage: node two_windows.mjs <base_url> <screenshot_prefix>
// Writes <screenshot_prefix>-a.png and -b.png (also on failure). Exits 0 only if every check held.
// Run by tests/web_test.rs against a server it started.

import { existsSync, mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { randomBytes } from 'node:crypto';
import { chromium } from 'playwright-core';

const [base, prefix] = process.argv.slice(2);
if (!base || !prefix) {
  console.error('usage: node two_windows.mjs <base_url> <screenshot_prefix>');
  process.exit(2);
}
const CHROMIUM = process.env.MESS_CHAT_CHROMIUM || '/usr/bin/chromium';
if (!existsSync(CHROMIUM)) {
  console.error(`no Chromium at ${CHROMIUM}: apt-get install chromium (scripts/test.sh does)`);
  process.exit(3);
}
/** How long one expectation may take to come true. */
const WAIT_MS = 15_000;
/** Messages sent to have more history than one page (50) shows. */
const HISTORY = 60;

const unique = (prefix) => `${prefix}-${randomBytes(5).toString('hex')}`;
const aliasA = unique('web-a');
const aliasB = unique('web-b');
const room = unique('web-room');

function check(condition, what) {
  if (!condition) throw new Error(`check failed: ${what}`);
}

/** Waits (bounded) until `fn` run in the page returns true. */
async function until(page, what, fn, arg) {
  try {
    await page.waitForFunction(fn, arg, { timeout: WAIT_MS, polling: 100 });
  } catch (e) {
    throw new Error(`timed out after ${WAIT_MS} ms waiting for: ${what}`);
  }
}

const texts = (page) => page.locator('#messages .msg .text').allTextContents();

async function register(page, alias) {
  await page.fill('#alias', alias);
  await page.click('#register-form button[type=submit]');
  await until(page, `${alias} signed in`, (a) => document.getElementById('me').textContent === a, alias);
}

async function errorText(page) {
  await until(page, 'an error shown', () => !document.getElementById('error').hidden);
  return page.textContent('#error-text');
}

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  headless: true,
  args: [
    '--no-sandbox',
    '--disable-gpu',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    '--no-first-run',
  ],
});

const pages = {};
let failed = false;
try {
  for (const who of ['a', 'b']) {
    const context = await browser.newContext({ viewport: { width: 1000, height: 700 } });
    if (who === 'b') {
      // B is behind a proxy without WebSocket: its page must fall back to polling.
      await context.addInitScript(() => {
        Object.defineProperty(window, 'WebSocket', { value: undefined });
      });
    }
    const page = await context.newPage();
    page.setDefaultTimeout(WAIT_MS);
    page.on('pageerror', (e) => {
      console.error(`[${who}] uncaught: ${e.message}`);
      failed = true;
    });
    page.on('console', (m) => {
      if (m.type() !== 'verbose' && m.type() !== 'debug') {
        console.error(`[${who}] console.${m.type()}: ${m.text()}`);
      }
    });
    pages[who] = page;
  }
  const { a, b } = pages;

  // Both pick an alias; B first tries A's, which is taken.
  await Promise.all([a.goto(base), b.goto(base)]);
  await register(a, aliasA);
  await b.fill('#alias', aliasA);
  await b.click('#register-form button[type=submit]');
  const taken = await errorText(b);
  check(taken.includes('already taken') && taken.includes(aliasA), `"taken" error readable: ${taken}`);
  await register(b, aliasB);
  check(await b.isHidden('#error'), 'the error cleared after a successful registration');

  // A creates a group room; B cannot join one that does not exist, then joins A's.
  await a.fill('#create-name', room);
  await a.click('#create-form button[type=submit]');
  await until(a, 'A in the new room', (r) => document.getElementById('room-title').textContent === r, room);
  const missing = unique('no-such-room');
  await b.fill('#join-name', missing);
  await b.click('#join-form button[type=submit]');
  const notFound = await errorText(b);
  console.error(`error shown for a missing room: ${notFound}`);
  check(notFound.includes(`Could not join “${missing}”`), `error names the action: ${notFound}`);
  check(notFound.includes(`no room named ${missing}`), `error says why: ${notFound}`);
  check(!notFound.includes('{'), `error is not raw JSON: ${notFound}`);
  await b.fill('#join-name', room);
  await b.click('#join-form button[type=submit]');
  await until(b, 'B in the room', (r) => document.getElementById('room-title').textContent === r, room);
  await until(b, 'the room in B\'s list', (r) => !!document.querySelector(`.room-button[data-room="${r}"]`), room);

  // A types and presses Enter; it shows in B's window. B answers; it shows in A's.
  const hello = `hello from A <b>not bold</b> ${Date.now()}`;
  await a.fill('#text', hello);
  await a.press('#text', 'Enter');
  await until(b, 'A\'s message in B\'s window',
    (t) => [...document.querySelectorAll('#messages .text')].some((e) => e.textContent === t), hello);
  check((await b.locator('#messages b').count()) === 0, 'message text is not parsed as HTML');
  check((await a.inputValue('#text')) === '', 'the composer empties after sending');
  const reply = 'hi A, B here';
  await b.fill('#text', reply);
  await b.press('#text', 'Enter');
  await until(a, 'B\'s reply in A\'s window',
    (t) => [...document.querySelectorAll('#messages .text')].some((e) => e.textContent === t), reply);
  const mine = await a.locator('#messages .msg.mine .text').allTextContents();
  check(mine.length === 1 && mine[0] === hello, `A's own message marked as A's: ${mine}`);
  const from = await a.locator('#messages .msg:not(.mine) .from').allTextContents();
  check(from.length === 1 && from[0] === aliasB, `B's message shows its sender: ${from}`);

  // History: more than a page of messages, sent from A's window, arrive live in A's window.
  const statuses = await a.evaluate(async ({ room, n }) => {
    const { token } = JSON.parse(localStorage.getItem('mess-chat.session'));
    const statuses = [];
    for (let i = 1; i <= n; i += 1) {
      const response = await fetch(`/api/v1/rooms/${room}/messages`, {
        method: 'POST',
        headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' },
        body: JSON.stringify({ message: `history ${i}` }),
      });
      statuses.push(response.status);
    }
    return statuses;
  }, { room, n: HISTORY });
  check(statuses.every((s) => s === 201), `every history message stored: ${statuses}`);
  const total = HISTORY + 2;
  await until(a, `${total} messages in A's window`,
    (n) => document.querySelectorAll('#messages .msg').length === n, total);

  // B reloads: still signed in, back in the room with the newest page; scrolling to the top
  // loads the older ones, without gap or duplicate.
  await b.reload();
  await until(b, 'B back in the room with a page of history',
    (r) => document.getElementById('room-title').textContent === r
      && document.querySelectorAll('#messages .msg').length === 50, room);
  check(await b.isVisible('#load-older'), 'a "load older" button while older messages exist');
  await b.evaluate(() => { document.getElementById('log').scrollTop = 0; });
  await until(b, 'older history loaded by scrolling up',
    (n) => document.querySelectorAll('#messages .msg').length === n, total);
  const seqs = await b.locator('#messages .msg').evaluateAll((els) => els.map((e) => Number(e.dataset.seq)));
  check(seqs.every((s, i) => s === i + 1), `sequence numbers run 1..${total}: ${seqs}`);
  const all = await texts(b);
  check(all[0] === hello && all[1] === reply && all[total - 1] === `history ${HISTORY}`,
    `history in order: ${all.slice(0, 3)} ... ${all.slice(-1)}`);
  check(await b.isVisible('#history-start'), 'the beginning of the room is marked');
  check(await b.isHidden('#load-older'), 'no "load older" once everything is shown');
  const liveA = await a.textContent('#live-state');
  const liveB = await b.textContent('#live-state');
  console.error(`live feed: A (WebSocket if the server has it) "${liveA}", B "${liveB}"`);
  check(liveB.includes('polling'), `B, without WebSocket, follows the room by polling: ${liveB}`);
  await until(a, 'B counted as a member in A\'s window',
    () => document.getElementById('room-info').textContent.includes('2 members'));

  // A over its send rate (the server allows bursts of 100, then one every 5 s): A spends its
  // allowance, then sends from the composer. The page keeps the text, says it is rate limited
  // and for how long, and sends it (once) when the wait is over.
  const limited = `sent after a wait ${Date.now()}`;
  const firstWait = await a.evaluate(async ({ room, text }) => {
    const { token } = JSON.parse(localStorage.getItem('mess-chat.session'));
    for (let i = 0; i < 2000; i += 1) {
      const response = await fetch(`/api/v1/rooms/${room}/messages`, {
        method: 'POST',
        headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' },
        body: JSON.stringify({ message: `spending ${i}` }),
      });
      const wait = Number(response.headers.get('Retry-After'));
      // Right after a fresh cell was spent: the composer's send is surely refused.
      if (response.status === 429 && wait >= 3) {
        document.getElementById('text').value = text;
        document.getElementById('send-form').requestSubmit();
        return wait;
      }
      // Refused with a short wait: wait it out, so that the next send spends a fresh cell.
      if (response.status === 429) await new Promise((done) => setTimeout(done, wait * 1000));
    }
    return null;
  }, { room, text: limited });
  check(firstWait !== null, 'the send rate limit answered 429 with a Retry-After');
  const notice = await errorText(a);
  console.error(`shown while rate limited: ${notice}`);
  check(/rate limited, retrying in \d+ s/.test(notice), `the wait is shown: ${notice}`);
  check((await a.inputValue('#text')) === limited, 'the text stays in the composer meanwhile');
  await until(b, 'the rate-limited message in B\'s window once the wait is over',
    (t) => [...document.querySelectorAll('#messages .text')].some((e) => e.textContent === t), limited);
  await until(a, 'A\'s composer empty once it is sent', () => document.getElementById('text').value === '');
  check(await a.isHidden('#error'), 'the notice is gone once the message is sent');
  const copies = (await texts(b)).filter((t) => t === limited).length;
  check(copies === 1, `the rate-limited message arrives once: ${copies}`);

  check(!failed, 'no uncaught error in either page');
  // For the screenshot: B at the start of the conversation.
  await b.evaluate(() => { document.getElementById('log').scrollTop = 0; });
  console.error('two_windows: every check held');
} catch (e) {
  failed = true;
  console.error(`two_windows: ${e.message}`);
} finally {
  mkdirSync(dirname(prefix), { recursive: true });
  for (const [who, page] of Object.entries(pages)) {
    try {
      await page.screenshot({ path: `${prefix}-${who}.png` });
      console.error(`screenshot: ${prefix}-${who}.png`);
    } catch (e) {
      console.error(`screenshot of ${who} failed: ${e.message}`);
    }
  }
  await browser.close();
}
process.exit(failed ? 1 : 0);
