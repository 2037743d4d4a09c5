/* chat.test.mjs: the web client of www/ in headless Chromium, through the
 * front door, as people use it.
 *
 *     node tests/browser/chat.test.mjs OUTDIR [-k SUBSTRING]...
 *
 * OUTDIR holds node_modules/playwright-core (run.sh installs it there) and
 * gets the screenshots of every step, OUTDIR/screenshots/<test>-<nn>-<step>.png.
 * The stack comes from the environment, as ./chatstack test sets it:
 *   CHAT_FRONT          the lighttpd front: www/, the REST API, /v1/events
 *   CHAT_CHATD1, 2      the two chatd nodes behind it, for chat_streams_open
 *   CHAT_JWT_SECRET     the stack's HS256 key, for a token pasted by hand
 * Each test signs in fresh users (a per-run suffix), each person in a
 * browser context of their own, and fails on any console error or
 * uncaught page error. Every wait is bounded; each test has a time bound.
 * Prints PASS: name or FAIL: name: why, then one line "N passed, N failed". */

import crypto from 'node:crypto';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';

const OUTDIR = process.argv[2];
if (!OUTDIR) {
    console.error('usage: chat.test.mjs OUTDIR [-k SUBSTRING]...');
    process.exit(2);
}
const require = createRequire(path.join(path.resolve(OUTDIR), 'package.json'));
const { chromium } = require('playwright-core');

function env(name) {
    const v = process.env[name];
    if (!v)
        throw new Error(`environment variable ${name} is not set (run through ./chatstack test)`);
    return v.replace(/\/+$/, '');
}

const FRONT = env('CHAT_FRONT');
const CHATD = [env('CHAT_CHATD1'), env('CHAT_CHATD2')];
const SHOTS = path.join(OUTDIR, 'screenshots');
const TEST_TIMEOUT_MS = 75000;
const WAIT_MS = 10000;        /* the default bound of one wait */
const LIVE_MS = 3000;         /* "at once": a live message shows within this */
/* Fresh names for every run (and test: Person adds the test's number):
 * the stack's database outlives a run. */
const RUN = `${Date.now().toString(36).slice(-5)}${crypto.randomBytes(2).toString('hex')}`;

/* The flags for a closed network: without them Chromium keeps trying to
 * reach Google's services and fills the log with failed connections. */
const CHROMIUM_ARGS = [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
];

/* ------------------------------------------------------------------------ */
/* Helpers                                                                  */
/* ------------------------------------------------------------------------ */

function assert(cond, message) {
    if (!cond)
        throw new Error(message);
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/* Polls fn (sync or async) until it returns a truthy value, at most ms;
 * returns that value, or throws naming what was waited for and, if given,
 * what was seen last (show()). */
async function waitFor(what, fn, { ms = WAIT_MS, every = 50, show } = {}) {
    const deadline = Date.now() + ms;
    let last;
    for (;;) {
        try {
            last = await fn();
        } catch (e) {
            last = undefined;
            if (Date.now() >= deadline)
                throw new Error(`${what}: ${e.message}`);
        }
        if (last)
            return last;
        if (Date.now() >= deadline) {
            const seen = show ? `; seen: ${JSON.stringify(await show())}` : '';
            throw new Error(`timed out after ${ms} ms waiting for ${what}${seen}`);
        }
        await sleep(every);
    }
}

/* chat_streams_open of each chatd node: which node holds a stream. */
async function streamsOpen() {
    return Promise.all(CHATD.map(async (base) => {
        const text = await (await fetch(`${base}/metrics`)).text();
        const m = text.match(/^chat_streams_open (\d+)$/m);
        assert(m, `${base}/metrics has no chat_streams_open`);
        return Number(m[1]);
    }));
}

async function api(method, p, { token, body } = {}) {
    const headers = {};
    if (token)
        headers.Authorization = `Bearer ${token}`;
    if (body !== undefined)
        headers['Content-Type'] = 'application/json';
    const r = await fetch(FRONT + p, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    const json = await r.json().catch(() => null);
    assert(r.ok, `${method} ${p}: ${r.status} ${JSON.stringify(json)}`);
    return json;
}

const devToken = async (user) => (await api('POST', '/v1/dev/token', { body: { user } })).token;

/* An HS256 JWT of the stack, as an operator would hand one out. */
function mintToken(user, ttlSeconds = 3600) {
    const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
    const head = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ sub: user, exp: Math.floor(Date.now() / 1000) + ttlSeconds })}`;
    const sig = crypto.createHmac('sha256', env('CHAT_JWT_SECRET')).update(head).digest('base64url');
    return `${head}.${sig}`;
}

/* ------------------------------------------------------------------------ */
/* A person at a browser window                                             */
/* ------------------------------------------------------------------------ */

class Person {
    constructor(t, name, viewport = { width: 1100, height: 720 }) {
        this.t = t;
        this.name = `${name}_${RUN}${t.tag}`;
        this.short = name;
        this.viewport = viewport;
        this.errors = [];
    }

    async open() {
        this.context = await this.t.browser.newContext({ viewport: this.viewport });
        this.page = await this.context.newPage();
        this.page.on('console', (m) => {
            if (m.type() === 'error')
                this.errors.push(`console error: ${m.text()} (${m.location().url || 'page'})`);
        });
        this.page.on('pageerror', (e) => this.errors.push(`page error: ${e.message}`));
        /* The streams it opens; and never a token in a URL (a stream
         * takes a one-time ticket). */
        this.streamUrls = [];
        this.page.on('request', (r) => {
            const url = new URL(r.url());
            if (url.pathname === '/v1/events')
                this.streamUrls.push(url);
            if (url.searchParams.has('access_token') || /eyJ[\w-]+\.eyJ/.test(r.url()))
                this.errors.push(`a token in a URL: ${r.url()}`);
        });
        await this.page.goto(`${FRONT}/`);
        this.t.people.push(this);
        return this;
    }

    /* Signs in by name (POST /v1/dev/token) and waits for the live stream. */
    async signIn() {
        if (!this.page)
            await this.open();
        await this.page.fill('#signin-user', this.name);
        await this.page.press('#signin-user', 'Enter');
        await this.waitLive();
        return this;
    }

    async connState() {
        return this.page.getAttribute('#conn', 'data-state');
    }

    async waitLive(ms = WAIT_MS) {
        await waitFor(`${this.short}'s stream to be live`, async () => (await this.connState()) === 'live',
            { ms, show: () => this.page.textContent('#conn') });
    }

    async setOffline(off) {
        await this.context.setOffline(off);
    }

    /* Opens a direct conversation by typing the peer's name. */
    async chatWith(peer) {
        await this.page.fill('#new-direct-user', peer.name);
        await this.page.press('#new-direct-user', 'Enter');
        await this.waitTitle(peer.name);
    }

    async waitTitle(title) {
        await waitFor(`${this.short}'s conversation "${title}" to open`,
            async () => (await this.page.textContent('#conv-title')) === title);
    }

    /* Opens a conversation from the list. */
    async openFromList(key, title) {
        await this.page.click(`.conv-item[data-key="${key}"]`);
        await this.waitTitle(title);
    }

    /* Types a message and sends it with Enter. */
    async say(text) {
        await this.page.fill('#composer-input', text);
        await this.page.press('#composer-input', 'Enter');
    }

    /* The messages shown, top to bottom. */
    async messages() {
        return this.page.$$eval('#messages .msg', (els) => els.map((e) => ({
            id: e.dataset.id || null,
            body: e.querySelector('.msg-body').textContent,
            from: e.querySelector('.msg-from')?.textContent || null,
            mine: e.classList.contains('mine'),
            status: e.dataset.status || null,
            label: e.querySelector('.tick')?.getAttribute('aria-label') || null,
        })));
    }

    async bodies() {
        return (await this.messages()).map((m) => m.body);
    }

    /* Waits until the conversation shows these bodies, each exactly once,
     * in this order; other messages may come between. */
    async waitBodies(want, ms = LIVE_MS) {
        return waitFor(`${this.short} to see ${JSON.stringify(want)} once each, in order`, async () => {
            const got = await this.bodies();
            const idx = want.map((b) => got.indexOf(b));
            const once = want.every((b) => got.filter((x) => x === b).length === 1);
            return once && idx.every((i, k) => i >= 0 && (k === 0 || i > idx[k - 1]));
        }, { ms, show: () => this.bodies() });
    }

    async status(body) {
        const m = (await this.messages()).find((x) => x.body === body);
        return m ? m.status : null;
    }

    async waitStatus(body, status, ms = LIVE_MS) {
        return waitFor(`${this.short}'s "${body}" to show ${status}`,
            async () => (await this.status(body)) === status, { ms, show: () => this.status(body) });
    }

    /* The list entry of a conversation: {title, unread, presence}. */
    async convItem(key) {
        return this.page.$eval(`.conv-item[data-key="${key}"]`, (b) => ({
            title: b.querySelector('.conv-name').textContent,
            unread: Number(b.querySelector('.unread')?.textContent || 0),
            presence: b.querySelector('.presence')?.className.replace('presence ', '') || null,
        })).catch(() => null);
    }

    async waitUnread(key, n, ms = LIVE_MS) {
        return waitFor(`${this.short}'s list to show ${n} unread in ${key}`,
            async () => (await this.convItem(key))?.unread === n, { ms, show: () => this.convItem(key) });
    }

    async waitPresence(key, state, ms = WAIT_MS) {
        return waitFor(`${this.short} to see ${key} ${state}`,
            async () => (await this.convItem(key))?.presence === state, { ms, show: () => this.convItem(key) });
    }

    async shot(step) {
        await this.t.shot(this, step);
    }
}

const total = (counts) => counts[0] + counts[1];

/* Takes person off the network and waits (a little) until the stream it
 * had is closed on its node. */
async function goOffline(person) {
    const before = total(await streamsOpen());
    await person.setOffline(true);
    await waitFor(`${person.short}'s page to say it is offline`, async () => (await person.connState()) === 'offline');
    await waitFor('a stream to close', async () => total(await streamsOpen()) < before, { ms: 5000 }).catch(() => {});
}

async function comeBack(person) {
    await person.setOffline(false);
    await person.waitLive();
}

/* Opens person's stream (by `connect`, which ends with it live) and tells
 * which chatd node holds it: the node whose chat_streams_open grew. Tests
 * run one at a time, so no other stream opens meanwhile; but one that
 * closed just before may still be leaving (a front notices a closed client
 * late) and hide the growth on its node: then the person reconnects and
 * it is looked for again. */
async function locate(person, connect) {
    for (let attempt = 1; ; attempt++) {
        const before = await streamsOpen();
        await connect();
        const grown = await waitFor(`${person.short}'s stream to show on a chatd node`, async () => {
            const now = await streamsOpen();
            const g = [0, 1].filter((i) => now[i] > before[i]);
            return g.length === 1 ? g : null;
        }, { ms: 4000, show: streamsOpen }).catch((e) => {
            if (attempt === 3)
                throw e;
            return null;
        });
        if (grown)
            return grown[0] + 1;
        await goOffline(person);
        connect = () => comeBack(person);
    }
}

/* Takes person's stream off the network until the node that held it has
 * closed it (the front passes the client's close on at once). */
async function dropStream(person, node) {
    const before = await streamsOpen();
    await person.setOffline(true);
    await waitFor(`${person.short}'s page to say it is offline`, async () => (await person.connState()) === 'offline');
    await waitFor(`chatd node ${node} to close ${person.short}'s stream`,
        async () => (await streamsOpen())[node - 1] < before[node - 1], { show: streamsOpen });
}

/* Signs a and b in with their streams on different chatd nodes. The front
 * routes a ticket's stream by the ticket, so each new stream lands on
 * either node: b reconnects until it is on the other one. Returns the
 * nodes, [node of a, node of b]. */
async function onTwoNodes(a, b) {
    await a.open();
    await b.open();
    const na = await locate(a, () => a.signIn());
    let nb = await locate(b, () => b.signIn());
    for (let i = 0; i < 12 && nb === na; i++) {
        await dropStream(b, nb);
        nb = await locate(b, () => comeBack(b));
    }
    assert(nb !== na, `${b.short}'s stream stayed on node ${na} with ${a.short}'s after 12 reconnects`);
    console.log(`  ${a.short} streams from chatd node ${na}, ${b.short} from node ${nb}`);
    return [na, nb];
}

/* Before the first test: until the nodes' stream counts hold still for a
 * few seconds (more than a keepalive), so that streams of an earlier suite
 * that are still closing do not move them during a test. Bounded; a count
 * that keeps moving is left to locate(). */
async function settle() {
    const deadline = Date.now() + 15000;
    let last = JSON.stringify(await streamsOpen());
    while (Date.now() < deadline) {
        await sleep(2500);
        const now = JSON.stringify(await streamsOpen());
        if (now === last)
            return;
        last = now;
    }
}

/* ------------------------------------------------------------------------ */
/* Tests                                                                    */
/* ------------------------------------------------------------------------ */

const tests = [];
const test = (name, fn) => tests.push({ name, fn });

test('two_users_on_two_nodes_chat_both_ways', async (t) => {
    const alice = new Person(t, 'alice');
    const bob = new Person(t, 'bob');
    await onTwoNodes(alice, bob);
    await alice.shot('signed-in');

    await alice.chatWith(bob);
    let t0 = Date.now();
    await alice.say('hello bob');
    await bob.waitUnread(alice.name, 1);
    console.log(`  alice -> bob shown in bob's list after ${Date.now() - t0} ms`);
    assert((await alice.status('hello bob')) !== 'sending', 'alice\'s message is still sending');
    await bob.shot('unread');

    await bob.openFromList(alice.name, alice.name);
    await bob.waitBodies(['hello bob']);
    await bob.waitUnread(alice.name, 0);
    await alice.waitStatus('hello bob', 'read');

    t0 = Date.now();
    await bob.say('hi alice, how are you?');
    await alice.waitBodies(['hello bob', 'hi alice, how are you?']);
    console.log(`  bob -> alice shown in alice's conversation after ${Date.now() - t0} ms`);
    await alice.say('fine, thanks');
    await bob.waitBodies(['hello bob', 'hi alice, how are you?', 'fine, thanks']);
    await bob.waitStatus('hi alice, how are you?', 'read');
    assert((await alice.messages()).length === 3, `alice shows ${JSON.stringify(await alice.bodies())}`);
    assert((await bob.messages()).length === 3, `bob shows ${JSON.stringify(await bob.bodies())}`);
    await alice.shot('conversation');
    await bob.shot('conversation');
});

test('offline_recipient_gets_three_in_order_once', async (t) => {
    const alice = new Person(t, 'alice');
    const bob = new Person(t, 'bob');
    const [, nb] = await onTwoNodes(alice, bob);
    await alice.chatWith(bob);
    await alice.say('are you there?');
    await bob.waitUnread(alice.name, 1);
    await bob.openFromList(alice.name, alice.name);
    await bob.waitBodies(['are you there?']);

    await dropStream(bob, nb);
    assert((await bob.page.textContent('#conn')).includes('Offline'),
        `bob's page does not say it is offline: ${await bob.page.textContent('#conn')}`);
    await alice.waitPresence(bob.name, 'off');
    await bob.shot('offline');
    const three = ['one', 'two', 'three'];
    for (const body of three)
        await alice.say(body);
    for (const body of three)
        await alice.waitStatus(body, 'sent');
    await alice.shot('sent-while-bob-offline');
    await sleep(500);
    assert(!(await bob.bodies()).includes('one'), 'bob saw a message while offline');

    await bob.setOffline(false);
    await bob.waitLive();
    await bob.waitBodies(['are you there?', ...three]);
    const got = await bob.bodies();
    assert(got.length === 4, `bob shows ${JSON.stringify(got)}`);
    await alice.waitPresence(bob.name, 'on');
    for (const body of three)
        await alice.waitStatus(body, 'read');
    /* Each stream was opened with a ticket of its own; the one after the
     * network came back resumed after the last event seen (seq 1). */
    const urls = bob.streamUrls;
    const tickets = urls.map((u) => u.searchParams.get('ticket'));
    assert(urls.length >= 2 && tickets.every(Boolean) && new Set(tickets).size === tickets.length,
        `bob's streams: ${urls.map(String).join(' ')}`);
    assert(urls[urls.length - 1].searchParams.get('last_event_id') === '1',
        `bob's last stream does not resume after seq 1: ${urls[urls.length - 1]}`);
    await bob.shot('back-online');
    await alice.shot('read');
    /* Nothing comes twice later either (a late replay, a history reload). */
    await sleep(1000);
    assert(JSON.stringify(await bob.bodies()) === JSON.stringify(got),
        `bob's conversation changed to ${JSON.stringify(await bob.bodies())}`);
});

test('ticks_go_from_sent_to_delivered_to_read', async (t) => {
    const alice = new Person(t, 'alice');
    const bob = new Person(t, 'bob');
    const [, nb] = await onTwoNodes(alice, bob);
    await alice.chatWith(bob);
    await alice.say('first');
    await bob.waitUnread(alice.name, 1);
    await alice.waitStatus('first', 'delivered');
    await alice.waitPresence(bob.name, 'on');

    /* Every status the message element takes, in order. */
    await alice.page.evaluate(() => {
        window.seenStatus = {};
        new MutationObserver((recs) => {
            for (const r of recs) {
                const li = r.target;
                const body = li.querySelector?.('.msg-body')?.textContent;
                if (!body || !li.dataset.status)
                    continue;
                const seq = (window.seenStatus[body] ||= []);
                if (seq[seq.length - 1] !== li.dataset.status)
                    seq.push(li.dataset.status);
            }
        }).observe(document.getElementById('messages'),
            { subtree: true, attributes: true, attributeFilter: ['data-status'] });
    });
    await dropStream(bob, nb);
    await alice.waitPresence(bob.name, 'off');
    await alice.say('second');
    await alice.waitStatus('second', 'sent');
    await sleep(700);
    assert((await alice.status('second')) === 'sent', 'the tick changed with bob offline');
    await alice.shot('sent');

    /* bob comes back on his conversation list: delivered, not read. */
    await bob.setOffline(false);
    await bob.waitLive();
    await alice.waitStatus('second', 'delivered', WAIT_MS);
    await bob.waitUnread(alice.name, 2);
    await sleep(700);
    assert((await alice.status('second')) === 'delivered', 'read before bob opened the conversation');
    await alice.shot('delivered');
    await bob.shot('unread');

    await bob.openFromList(alice.name, alice.name);
    await alice.waitStatus('second', 'read');
    await alice.waitStatus('first', 'read');
    await alice.shot('read');
    const seen = await alice.page.evaluate(() => window.seenStatus.second);
    const order = seen.filter((s) => s !== 'sending');
    assert(JSON.stringify(order) === '["sent","delivered","read"]', `the ticks of "second" went ${JSON.stringify(seen)}`);
    const label = (await alice.messages()).find((m) => m.body === 'second').label;
    assert(label === 'Read', `the tick's label is ${label}`);
});

test('ticks_catch_up_after_the_sender_was_offline', async (t) => {
    const alice = new Person(t, 'alice');
    const bob = new Person(t, 'bob');
    const [na] = await onTwoNodes(alice, bob);
    await alice.chatWith(bob);
    await alice.say('read this while I am away');
    await alice.waitStatus('read this while I am away', 'delivered');
    await bob.waitUnread(alice.name, 1);

    /* The read receipt comes while alice is offline: receipts are live
     * events only, so her page asks for the ticks when it is back. */
    await dropStream(alice, na);
    await bob.openFromList(alice.name, alice.name);
    await bob.waitUnread(alice.name, 0);
    await sleep(500);
    assert((await alice.status('read this while I am away')) === 'delivered', 'the tick changed while offline');
    await alice.setOffline(false);
    await alice.waitLive();
    await alice.waitStatus('read this while I am away', 'read');
    await alice.shot('read-after-reconnect');
});

test('message_written_offline_is_sent_once_when_back', async (t) => {
    const alice = new Person(t, 'alice');
    const bob = new Person(t, 'bob');
    const [na] = await onTwoNodes(alice, bob);
    await bob.chatWith(alice);
    await bob.say('ping');
    await alice.waitUnread(bob.name, 1);
    await alice.openFromList(bob.name, bob.name);

    /* alice writes while offline: the page keeps it, makes no request
     * (one would fail on the console) and says so. */
    await dropStream(alice, na);
    await alice.say('written offline');
    await alice.waitStatus('written offline', 'sending');
    const label = (await alice.messages()).find((m) => m.body === 'written offline').label;
    assert(label === 'Waiting for the network', `the tick's label is ${label}`);
    await alice.shot('waiting');
    await sleep(500);
    assert(!(await bob.bodies()).includes('written offline'), 'bob got it while alice was offline');

    await alice.setOffline(false);
    await alice.waitLive();
    await bob.waitBodies(['ping', 'written offline']);
    await alice.waitStatus('written offline', 'read');
    await sleep(500);
    const got = await bob.bodies();
    assert(JSON.stringify(got) === '["ping","written offline"]', `bob shows ${JSON.stringify(got)}`);
    assert((await alice.messages()).length === 2, `alice shows ${JSON.stringify(await alice.bodies())}`);
    await alice.shot('sent');
});

test('group_of_three', async (t) => {
    const alice = new Person(t, 'alice');
    const bob = new Person(t, 'bob');
    const carol = new Person(t, 'carol');
    await onTwoNodes(alice, bob);
    await carol.signIn();
    const name = `weekend ${RUN}`;

    /* alice creates the group with bob, then adds carol. */
    const p = alice.page;
    await p.click('#new-group summary');
    await p.fill('#new-group-name', name);
    await p.fill('#new-group-members', bob.name);
    await p.click('#new-group-form button[type=submit]');
    await alice.waitTitle(name);
    await waitFor('the group to list 2 members', async () => (await p.textContent('#conv-sub')) === '2 members');
    await p.click('#members summary');
    await p.fill('#add-members-input', carol.name);
    await p.press('#add-members-input', 'Enter');
    await waitFor('the group to list 3 members', async () => (await p.textContent('#conv-sub')) === '3 members');
    const key = await p.$eval('.conv-item[aria-current="true"]', (b) => b.dataset.key);
    assert(key.startsWith('chat:'), `the open conversation is ${key}`);
    await alice.shot('group-created');

    await alice.say('who is in?');
    for (const x of [bob, carol]) {
        await x.waitUnread(key, 1);
        await waitFor(`${x.short} to see the group's name`, async () => (await x.convItem(key))?.title === name);
        await x.openFromList(key, name);
        await x.waitBodies(['who is in?']);
    }
    await alice.waitStatus('who is in?', 'read');
    const label = (await alice.messages()).find((m) => m.body === 'who is in?').label;
    assert(label === 'Read by all 2', `the tick's label is ${label}`);

    await bob.say('me!');
    await carol.waitBodies(['who is in?', 'me!']);
    await carol.say('me too');
    const all = ['who is in?', 'me!', 'me too'];
    for (const x of [alice, bob, carol]) {
        await x.waitBodies(all);
        assert((await x.messages()).length === 3, `${x.short} shows ${JSON.stringify(await x.bodies())}`);
    }
    const fromNames = (await carol.messages()).map((m) => m.from);
    assert(JSON.stringify(fromNames) === JSON.stringify([alice.name, bob.name, null]),
        `carol's view names the senders ${JSON.stringify(fromNames)}`);
    await bob.waitStatus('me!', 'read');
    for (const x of [alice, bob, carol])
        await x.shot('group');
});

test('history_scrolls_back', async (t) => {
    const dave = new Person(t, 'dave');
    const erin = new Person(t, 'erin');
    const token = await devToken(dave.name);
    const bodies = [];
    for (let i = 1; i <= 45; i++) {
        bodies.push(`history ${i}`);
        await api('POST', '/v1/messages', { token, body: { to: erin.name, body: `history ${i}` } });
    }
    await erin.signIn();
    await erin.waitUnread(dave.name, 45, WAIT_MS);
    await erin.openFromList(dave.name, dave.name);
    await waitFor('the newest page', async () => (await erin.bodies()).length === 30, { show: () => erin.bodies() });
    assert(JSON.stringify(await erin.bodies()) === JSON.stringify(bodies.slice(15)),
        `the first page is ${JSON.stringify(await erin.bodies())}`);
    assert(await erin.page.isVisible('#older'), 'no way to load older messages');
    await erin.shot('newest-page');
    /* Scrolling to the top loads the page before. */
    await erin.page.$eval('#log-wrap', (w) => { w.scrollTop = 0; });
    await waitFor('all 45, in order', async () =>
        JSON.stringify(await erin.bodies()) === JSON.stringify(bodies), { show: () => erin.bodies() });
    assert(!(await erin.page.isVisible('#older')), 'still offers older messages');
    await erin.waitUnread(dave.name, 0);
    await erin.shot('scrolled-back');
});

test('phone_screen_with_a_pasted_token', async (t) => {
    const frank = new Person(t, 'frank', { width: 390, height: 844 });
    const gina = new Person(t, 'gina');
    await gina.signIn();
    await frank.open();
    await frank.shot('sign-in');
    await frank.page.fill('#signin-token', mintToken(frank.name));
    await frank.page.click('#signin-paste button[type=submit]');
    await frank.waitLive();
    const p = frank.page;
    const noSideScroll = async (where) => {
        const w = await p.evaluate(() => document.documentElement.scrollWidth);
        assert(w <= 390, `${where}: the page is ${w}px wide on a 390px screen`);
    };
    await noSideScroll('the list');
    assert(await p.isVisible('#sidebar'), 'the list is not shown');
    assert(!(await p.isVisible('#conversation')), 'the conversation pane is shown beside the list');

    await gina.chatWith(frank);
    await gina.say('hello from a laptop');
    await frank.waitUnread(gina.name, 1);
    await frank.shot('list');
    await frank.openFromList(gina.name, gina.name);
    assert(!(await p.isVisible('#sidebar')), 'the list stays beside the conversation');
    await frank.waitBodies(['hello from a laptop']);
    const box = await p.locator('#composer').boundingBox();
    assert(box && box.y + box.height <= 844, `the composer is off screen: ${JSON.stringify(box)}`);
    /* The keyboard: focus is in the message box, Enter sends. */
    assert(await p.evaluate(() => document.activeElement.id === 'composer-input'), 'focus is not in the message box');
    await p.keyboard.type('hello from a phone');
    await p.keyboard.press('Enter');
    await gina.waitBodies(['hello from a laptop', 'hello from a phone']);
    await noSideScroll('the conversation');
    await frank.shot('conversation');
    await p.click('#back');
    assert(await p.isVisible('#sidebar'), 'back does not show the list');
    await frank.shot('back');
});

/* ------------------------------------------------------------------------ */
/* The runner                                                               */
/* ------------------------------------------------------------------------ */

function withTimeout(promise, ms, what) {
    let timer;
    return Promise.race([
        promise,
        new Promise((_, reject) => {
            timer = setTimeout(() => reject(new Error(`${what} took more than ${ms / 1000} s`)), ms);
        }),
    ]).finally(() => clearTimeout(timer));
}

async function runOne(browser, { name, fn }, index) {
    let n = 0;
    const t = {
        browser, people: [], tag: `t${index}`,
        shot: async (person, step) => {
            const file = path.join(SHOTS, `${name}-${String(++n).padStart(2, '0')}-${person.short}-${step}.png`);
            await person.page.screenshot({ path: file });
        },
    };
    let error = null;
    try {
        await withTimeout(fn(t), TEST_TIMEOUT_MS, name);
        const errors = t.people.flatMap((x) => x.errors.map((e) => `${x.short}: ${e}`));
        if (errors.length)
            error = new Error(errors.join('; '));
    } catch (e) {
        error = e;
        for (const x of t.people)
            await withTimeout(t.shot(x, 'failed'), 5000, 'a screenshot').catch(() => {});
        const errors = t.people.flatMap((x) => x.errors.map((m) => `${x.short}: ${m}`));
        if (errors.length)
            error.message += ` (and ${errors.join('; ')})`;
    }
    for (const x of t.people)
        await withTimeout(x.context.close(), 5000, 'closing a context').catch(() => {});
    return error;
}

async function main() {
    const ks = [];
    for (let i = 3; i < process.argv.length; i++)
        if (process.argv[i] === '-k' && process.argv[i + 1])
            ks.push(process.argv[++i]);
    const chosen = tests.filter((x) => !ks.length || ks.some((k) => x.name.includes(k)));
    fs.mkdirSync(SHOTS, { recursive: true });
    let passed = 0;
    let failed = 0;
    let browser = null;
    try {
        /* Playwright gives each launch a fresh user data dir of its own, in
         * the temporary folder (run.sh points TMPDIR into OUTDIR), and
         * removes it at close. */
        browser = await withTimeout(chromium.launch({
            executablePath: '/usr/bin/chromium', args: CHROMIUM_ARGS, headless: true,
        }), 30000, 'starting chromium');
        await settle();
        for (const x of chosen) {
            const t0 = Date.now();
            const err = await runOne(browser, x, tests.indexOf(x) + 1);
            const secs = ((Date.now() - t0) / 1000).toFixed(1);
            if (err) {
                failed++;
                console.log(`FAIL: ${x.name} (${secs} s): ${err.message}`);
            } else {
                passed++;
                console.log(`PASS: ${x.name} (${secs} s)`);
            }
        }
    } catch (e) {
        console.log(`FAIL: browser: ${e.message}`);
        failed = chosen.length - passed;
    } finally {
        if (browser)
            await withTimeout(browser.close(), 10000, 'closing the browser').catch(() => {});
    }
    console.log(`screenshots in ${SHOTS}`);
    console.log(`${passed} passed, ${failed} failed`);
    process.exit(failed || !chosen.length ? 1 : 0);
}

main();
