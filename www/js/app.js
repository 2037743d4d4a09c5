/* app.js: the web client: sign-in, the conversation list, a conversation
 * with its history and composer, live events, ticks, groups.
 *
 * What arrives where (docs/web-client.md has the whole picture):
 *   GET /v1/conversations, /v1/chats     the list, unread counts, group names
 *   GET /v1/conversations/{c}/messages   history, newest first, paged back
 *   GET /v1/messages/{id}                the ticks of one's own older messages
 *   the event stream (stream.js)         messages, receipts (ticks), presence
 *   POST /v1/messages                    sending, idempotent by client_msg_id
 *   POST /v1/inbox/read, /v1/inbox/ack   read receipts; the device's ACK
 * Messages are keyed by message_id everywhere, so one that comes twice (a
 * replay after a reconnect, history and stream overlapping) shows once. */

import { Api, ApiError, NetworkError, devToken, jwtClaims, retryable } from './api.js';
import { EventStream } from './stream.js';

const HISTORY_PAGE = 30;
const SESSION_KEY = 'chat.session';     /* sessionStorage: one user per tab */
const OUTBOX_RETRY_MS = 3000;
const STATUS_FETCH_MAX = 30;            /* own messages whose ticks a page load asks for */
const RANK = { sending: 0, sent: 1, delivered: 2, read: 3 };

const $ = (id) => document.getElementById(id);

/* ------------------------------------------------------------------------ */
/* State                                                                    */
/* ------------------------------------------------------------------------ */

const S = {
    me: null,
    api: null,
    stream: null,
    convs: new Map(),      /* conversation key -> conv (see convFrom) */
    chats: new Map(),      /* chat id -> {chat, name, owner, members: [...] | null} */
    open: null,            /* the open conversation (see openConversation) */
    receipts: new Map(),   /* message_id -> Map(user -> 'delivered' | 'read') */
    presence: new Map(),   /* user -> true | false (unknown: absent) */
    counted: new Map(),    /* message id -> {key, ts}: counted as unread here */
    outbox: [],            /* own messages not stored yet, in send order */
    flushing: false,
    outboxTimer: 0,
    ackSeq: 0,
    ackTimer: 0,
    readTimer: 0,
    chatsTimer: 0,
    presenceTimer: 0,
    localIds: 0,
};

/* The key of a conversation, as the API names it: the peer's user id, or
 * "chat:<chat id>" for a group. */
function convKeyOf(m) {
    if (m.chat)
        return `chat:${m.chat}`;
    return m.from === S.me ? m.to : m.from;
}

function newClientMsgId() {
    const b = new Uint8Array(12);
    crypto.getRandomValues(b);
    return `web-${Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('')}`;
}

/* User names typed in a field: separated by commas or spaces. */
function parseUsers(text) {
    return [...new Set(text.split(/[\s,]+/).filter(Boolean))];
}

const USER_RE = /^[A-Za-z0-9_.@-]{1,64}$/;

/* ------------------------------------------------------------------------ */
/* Sign-in                                                                  */
/* ------------------------------------------------------------------------ */

function showSignin(message) {
    $('app').hidden = true;
    $('whoami').hidden = true;
    $('conn').hidden = true;
    $('signin').hidden = false;
    $('signin-error').textContent = message || '';
    $('signin-user').focus();
}

async function signinDev(ev) {
    ev.preventDefault();
    const user = $('signin-user').value.trim();
    if (!USER_RE.test(user)) {
        $('signin-error').textContent = 'A user name is 1-64 letters, digits or _ . @ -';
        $('signin-user').focus();
        return;
    }
    try {
        const r = await devToken(user);
        start({ token: r.token, user: r.user });
    } catch (e) {
        if (e instanceof ApiError && e.status === 404)
            $('signin-error').textContent =
                'This server does not hand out tokens by name ([auth] dev_tokens is off): paste a token.';
        else
            $('signin-error').textContent = `Could not sign in: ${e.message}`;
    }
}

async function signinPaste(ev) {
    ev.preventDefault();
    const token = $('signin-token').value.trim();
    const claims = token && jwtClaims(token);
    if (!claims || typeof claims.sub !== 'string' || !USER_RE.test(claims.sub)) {
        $('signin-error').textContent = 'That is not a token of this API (a JWT with a "sub" user id).';
        $('signin-token').focus();
        return;
    }
    if (claims.exp && claims.exp * 1000 <= Date.now()) {
        $('signin-error').textContent = 'That token has expired.';
        return;
    }
    try {
        /* One request, so that a bad signature shows here, not later. */
        await new Api(token).conversations();
    } catch (e) {
        $('signin-error').textContent = e instanceof ApiError && e.status === 401
            ? 'The server refused that token.' : `Could not sign in: ${e.message}`;
        return;
    }
    start({ token, user: claims.sub });
}

function signOut(message) {
    if (S.stream)
        S.stream.stop();
    sessionStorage.removeItem(SESSION_KEY);
    clearTimeout(S.outboxTimer);
    clearTimeout(S.ackTimer);
    clearTimeout(S.readTimer);
    clearTimeout(S.chatsTimer);
    clearTimeout(S.presenceTimer);
    Object.assign(S, {
        me: null, api: null, stream: null, open: null, outbox: [], flushing: false, ackSeq: 0,
        outboxTimer: 0, ackTimer: 0, readTimer: 0, chatsTimer: 0, presenceTimer: 0,
    });
    S.convs.clear();
    S.chats.clear();
    S.receipts.clear();
    S.presence.clear();
    S.counted.clear();
    $('conversations').replaceChildren();
    showSignin(message);
}

/* Signed in: the list first, then the stream. A message stored between the
 * two is PENDING and replayed at the start of the stream. */
async function start(session) {
    sessionStorage.setItem(SESSION_KEY, JSON.stringify(session));
    S.me = session.user;
    S.api = new Api(session.token);
    $('signin').hidden = true;
    $('signin-error').textContent = '';
    $('app').hidden = false;
    $('whoami').hidden = false;
    $('me').textContent = S.me;
    document.title = `chat: ${S.me}`;
    closeConversation();
    S.stream = new EventStream(S.api, {
        onState: showConnState,
        onMessage: onStreamMessage,
        onReceipt: onReceipt,
        onPresence: onPresence,
        onLive: onLive,
        onAuthError: () => signOut('Your token was refused (expired?): sign in again.'),
    });
    await refreshList().catch(handleError);
    S.stream.start();
    $('new-direct-user').focus();
}

/* ------------------------------------------------------------------------ */
/* Connection state                                                         */
/* ------------------------------------------------------------------------ */

function showConnState(state, detail) {
    const el = $('conn');
    el.hidden = state === 'stopped';
    el.dataset.state = state;
    const text = {
        connecting: 'Connecting…',
        live: 'Live',
        reconnecting: detail.delayMs
            ? `Connection lost: reconnecting in ${Math.ceil(detail.delayMs / 1000)} s…`
            : 'Reconnecting…',
        offline: 'Offline: messages will arrive when the network is back.',
        stopped: '',
    }[state];
    $('conn-text').textContent = text;
    $('conn-retry').hidden = state !== 'reconnecting' || !detail.delayMs;
    document.body.classList.toggle('is-offline', state === 'offline' || state === 'reconnecting');
}

/* The stream is open. After a reconnect, what the stream does not replay
 * is fetched again: the unread counts, presence, and the open
 * conversation's newest page with the ticks of one's own messages
 * (receipts are live events only). */
function onLive(again) {
    flushOutbox();
    if (!again)
        return;
    refreshList().catch(handleError);
    if (S.open)
        loadNewest(S.open).catch(handleError);
}

/* ------------------------------------------------------------------------ */
/* Conversation list                                                        */
/* ------------------------------------------------------------------------ */

function convFrom(row) {
    return {
        key: row.conversation,
        kind: row.kind,
        peer: row.peer,
        chat: row.chat,
        name: row.name,
        last: row.last_message,
        lastTs: row.last_ts || 0,
        unread: row.unread || 0,
        /* Unread counted by the server up to this time: a replayed message
         * not newer than this is in the count already. */
        baseTs: row.last_ts || 0,
    };
}

function ensureConv(key) {
    let c = S.convs.get(key);
    if (!c) {
        const chat = key.startsWith('chat:') ? key.slice(5) : null;
        c = {
            key, kind: chat ? 'group' : 'direct', peer: chat ? null : key, chat,
            name: chat ? (S.chats.get(chat)?.name || null) : null,
            last: null, lastTs: 0, unread: 0, baseTs: 0,
        };
        S.convs.set(key, c);
        if (!chat)
            schedulePresence();
    }
    return c;
}

function convTitle(c) {
    return c.kind === 'group' ? (c.name || S.chats.get(c.chat)?.name || 'Group') : c.peer;
}

/* Conversations with messages (GET /v1/conversations) and every group one
 * is in (GET /v1/chats: a new group has no messages yet). The server's
 * rows replace the local ones, but keep their objects (the open view holds
 * one) and the unread messages counted here after the server's answer was
 * made (those newer than its last_ts). */
async function refreshList() {
    const [cv, ch] = await Promise.all([S.api.conversations(), S.api.chats()]);
    const fresh = new Map();
    for (const g of ch.chats) {
        const old = S.chats.get(g.chat);
        S.chats.set(g.chat, { ...g, members: old ? old.members : null });
    }
    for (const row of cv.conversations)
        fresh.set(row.conversation, convFrom(row));
    for (const g of ch.chats) {
        const key = `chat:${g.chat}`;
        if (!fresh.has(key))
            fresh.set(key, { ...convFrom({ conversation: key, kind: 'group', chat: g.chat, name: g.name }),
                             lastTs: g.created_ts || 0, baseTs: g.created_ts || 0 });
    }
    const convs = new Map();
    for (const [key, f] of fresh) {
        const c = S.convs.get(key);
        if (c && c.lastTs > f.lastTs) {
            /* Newer here: a message that came after the answer was made. */
            f.last = c.last;
            f.lastTs = c.lastTs;
        }
        convs.set(key, c ? Object.assign(c, f) : f);
    }
    /* Conversations opened here but without messages yet stay. */
    for (const [key, c] of S.convs)
        if (!convs.has(key) && !c.last && c.kind === 'direct')
            convs.set(key, c);
    for (const [id, n] of S.counted) {
        const c = convs.get(n.key);
        if (c && n.ts > c.baseTs)
            c.unread++;
        else
            S.counted.delete(id);
    }
    S.convs = convs;
    if (S.open)
        S.open.conv = ensureConv(S.open.key);
    if (S.open && S.open.conv.unread > 0)
        scheduleRead();
    renderList();
    refreshPresence();
}

function sortedConvs() {
    return [...S.convs.values()].sort((a, b) => b.lastTs - a.lastTs || (a.key < b.key ? -1 : 1));
}

function renderList() {
    const ul = $('conversations');
    const focused = document.activeElement?.closest?.('.conv-item')?.dataset.key;
    const items = sortedConvs().map((c) => {
        const li = document.createElement('li');
        const b = document.createElement('button');
        b.type = 'button';
        b.className = 'conv-item';
        b.dataset.key = c.key;
        if (S.open && S.open.key === c.key)
            b.setAttribute('aria-current', 'true');

        const top = document.createElement('span');
        top.className = 'conv-top';
        if (c.kind === 'direct') {
            const dot = presenceDot(c.peer);
            top.append(dot);
        } else {
            const g = document.createElement('span');
            g.className = 'group-mark';
            g.setAttribute('aria-hidden', 'true');
            g.textContent = '#';
            top.append(g);
        }
        const name = document.createElement('span');
        name.className = 'conv-name';
        name.textContent = convTitle(c);
        top.append(name);
        if (c.unread > 0) {
            const badge = document.createElement('span');
            badge.className = 'unread';
            badge.textContent = String(c.unread);
            badge.setAttribute('aria-label', `${c.unread} unread`);
            top.append(badge);
        }
        const prev = document.createElement('span');
        prev.className = 'conv-preview';
        if (c.last) {
            const who = c.last.from === S.me ? 'You' : (c.kind === 'group' ? c.last.from : '');
            prev.textContent = (who ? `${who}: ` : '') + c.last.body;
        } else {
            prev.textContent = c.kind === 'group' ? 'No messages yet' : 'New conversation';
        }
        b.append(top, prev);
        li.append(b);
        return li;
    });
    ul.replaceChildren(...items);
    $('conv-empty').hidden = items.length > 0;
    if (focused)
        ul.querySelector(`.conv-item[data-key="${CSS.escape(focused)}"]`)?.focus();
}

function presenceDot(user) {
    const dot = document.createElement('span');
    const on = S.presence.get(user);
    dot.className = `presence ${on === true ? 'on' : on === false ? 'off' : 'unknown'}`;
    dot.dataset.user = user;
    const label = on === true ? 'online' : on === false ? 'offline' : 'presence unknown';
    dot.setAttribute('role', 'img');
    dot.setAttribute('aria-label', label);
    dot.title = label;
    return dot;
}

/* GET /v1/presence for the direct peers (at most 100 a request); later
 * changes come as presence events. */
async function refreshPresence() {
    const users = sortedConvs().filter((c) => c.kind === 'direct').map((c) => c.peer).slice(0, 100);
    if (!users.length)
        return;
    try {
        const r = await S.api.presence(users);
        for (const p of r.presence)
            if (p.online !== null)
                S.presence.set(p.user, p.online);
        renderList();
        renderConvHeader();
    } catch (e) {
        if (!retryable(e))
            handleError(e);
    }
}

/* Presence again, a moment after a new direct conversation: the server
 * tells it only for people one shares a conversation with, so also after
 * the first message of one. */
function schedulePresence() {
    clearTimeout(S.presenceTimer);
    S.presenceTimer = setTimeout(refreshPresence, 200);
}

/* A group the list does not know yet (one was added to it): its name. */
function scheduleChatsRefresh() {
    clearTimeout(S.chatsTimer);
    S.chatsTimer = setTimeout(async () => {
        try {
            const ch = await S.api.chats();
            for (const g of ch.chats) {
                const old = S.chats.get(g.chat);
                S.chats.set(g.chat, { ...g, members: old ? old.members : null });
                const c = S.convs.get(`chat:${g.chat}`);
                if (c)
                    c.name = g.name;
            }
            renderList();
            renderConvHeader();
        } catch (e) {
            if (!retryable(e))
                handleError(e);
        }
    }, 100);
}

/* ------------------------------------------------------------------------ */
/* Live events                                                              */
/* ------------------------------------------------------------------------ */

function onStreamMessage(item, seq) {
    scheduleAck(seq);
    const key = convKeyOf(item);
    const c = ensureConv(key);
    if (c.kind === 'group' && !S.chats.has(c.chat))
        scheduleChatsRefresh();
    if (item.ts >= c.lastTs) {
        c.last = { message_id: item.message_id, from: item.from, body: item.body, ts: item.ts };
        c.lastTs = item.ts;
    }
    const here = S.open && S.open.key === key;
    if (here)
        addMessages(S.open, [item], 'live');
    const fromOther = item.from !== S.me || item.to === S.me;
    if (fromOther && item.status !== 'read') {
        if (here && isReading()) {
            scheduleRead();
        } else if (!S.counted.has(item.message_id) && item.ts > c.baseTs) {
            S.counted.set(item.message_id, { key, ts: item.ts });
            c.unread++;
        }
    }
    renderList();
}

function onReceipt(r) {
    if (!r.message_id || !r.user || !(r.status in RANK))
        return;
    noteReceipt(r.message_id, r.user, r.status);
}

function noteReceipt(id, user, status) {
    let m = S.receipts.get(id);
    if (!m) {
        m = new Map();
        S.receipts.set(id, m);
    }
    const old = m.get(user);
    if (old && RANK[old] >= RANK[status])
        return;
    m.set(user, status);
    if (S.open) {
        const msg = S.open.msgs.get(id);
        if (msg)
            renderTick(S.open, msg);
    }
}

function onPresence(p) {
    if (!p.user)
        return;
    S.presence.set(p.user, !!p.online);
    renderList();
    renderConvHeader();
}

/* The device's own ACK (POST /v1/inbox/ack) of everything it was given, a
 * moment after a burst. Required in delivery mode "client"; in mode
 * "server" the rows are delivered already and it changes nothing. */
function scheduleAck(seq) {
    S.ackSeq = Math.max(S.ackSeq, seq);
    if (S.ackTimer)
        return;
    S.ackTimer = setTimeout(async () => {
        S.ackTimer = 0;
        try {
            await S.api.ack(S.ackSeq);
        } catch (e) {
            if (!retryable(e))
                handleError(e);
        }
    }, 300);
}

/* ------------------------------------------------------------------------ */
/* The open conversation                                                    */
/* ------------------------------------------------------------------------ */

/* Reading: the conversation is on screen in a visible page, so what
 * arrives in it counts as read. */
function isReading() {
    return !!S.open && document.visibilityState === 'visible';
}

function closeConversation() {
    S.open = null;
    document.body.classList.remove('show-conv');
    $('conv-title').textContent = 'No conversation open';
    $('conv-sub').textContent = '';
    $('messages').replaceChildren();
    $('conv-placeholder').hidden = false;
    $('composer').hidden = true;
    $('members').hidden = true;
    $('older').hidden = true;
    $('conv-error').textContent = '';
    if (S.me)
        renderList();
}

async function openConversation(key) {
    const c = ensureConv(key);
    const v = {
        key, conv: c,
        msgs: new Map(),      /* message_id or local id -> msg */
        nodes: new Map(),     /* the same keys -> <li> */
        nextBefore: null, more: false, loading: false,
    };
    S.open = v;
    document.body.classList.add('show-conv');
    $('messages').replaceChildren();
    $('conv-placeholder').hidden = true;
    $('composer').hidden = false;
    $('conv-error').textContent = '';
    renderConvHeader();
    renderList();
    /* Own messages still in the outbox belong here too. */
    addMessages(v, S.outbox.filter((m) => m.key === key), 'live');
    if (c.kind === 'group')
        loadMembers(c.chat).catch(handleError);
    try {
        await loadOlder(v);
    } catch (e) {
        handleError(e);
    }
    if (S.open === v) {
        scrollToEnd();
        if (c.unread > 0)
            scheduleRead();
    }
    $('composer-input').focus();
}

function renderConvHeader() {
    const v = S.open;
    if (!v)
        return;
    const c = v.conv;
    $('conv-title').textContent = convTitle(c);
    const sub = $('conv-sub');
    sub.replaceChildren();
    if (c.kind === 'direct') {
        const on = S.presence.get(c.peer);
        if (on !== undefined)
            sub.append(presenceDot(c.peer), on ? 'online' : 'offline');
        $('members').hidden = true;
        return;
    }
    const g = S.chats.get(c.chat);
    const members = g && g.members;
    sub.textContent = members ? `${members.length} members` : '';
    $('members').hidden = !members;
    if (!members)
        return;
    $('members-list').replaceChildren(...members.map((u) => {
        const li = document.createElement('li');
        li.textContent = u + (u === g.owner ? ' (owner)' : '') + (u === S.me ? ' (you)' : '');
        return li;
    }));
    $('add-members-form').hidden = g.owner !== S.me;
}

async function loadMembers(chatId) {
    const g = await S.api.chat(chatId);
    S.chats.set(chatId, { ...(S.chats.get(chatId) || {}), ...g });
    const c = S.convs.get(`chat:${chatId}`);
    if (c)
        c.name = g.name;
    if (S.open && S.open.conv.chat === chatId) {
        renderConvHeader();
        for (const m of S.open.msgs.values())
            renderTick(S.open, m);
    }
    renderList();
}

/* One page of history before the oldest message shown. */
async function loadOlder(v) {
    if (v.loading)
        return;
    v.loading = true;
    $('older').hidden = true;
    try {
        const r = await S.api.history(v.key, v.nextBefore, HISTORY_PAGE);
        if (S.open !== v)
            return;
        v.nextBefore = r.next_before;
        v.more = r.more;
        addMessages(v, r.messages, 'older');
        fetchStatuses(v, r.messages);
    } finally {
        v.loading = false;
        if (S.open === v)
            $('older').hidden = !v.more;
    }
}

/* After a reconnect: the newest page again, merged by message_id. */
async function loadNewest(v) {
    const r = await S.api.history(v.key, null, HISTORY_PAGE);
    if (S.open !== v)
        return;
    if (!v.nextBefore) {
        v.nextBefore = r.next_before;
        v.more = r.more;
        $('older').hidden = !v.more;
    }
    addMessages(v, r.messages, 'live');
    fetchStatuses(v, r.messages);
    if (isReading())
        scheduleRead();
}

/* The ticks of one's own messages in a page of history: their receipts
 * came before this page was open. Newest first; in a direct conversation
 * a message read (or delivered) means the older ones are too (reads and
 * stream deliveries go in seq order), so the asking stops there. */
async function fetchStatuses(v, page) {
    const mine = page.filter((m) => m.from === S.me).slice(0, STATUS_FETCH_MAX);
    const direct = v.conv.kind === 'direct';
    for (let i = 0; i < mine.length; i++) {
        if (S.open !== v)
            return;
        let r;
        try {
            r = await S.api.message(mine[i].message_id);
        } catch (e) {
            if (!retryable(e))
                handleError(e);
            return;
        }
        for (const rc of r.recipients || []) {
            if (rc.read_ts)
                noteReceipt(r.message_id, rc.user, 'read');
            else if (rc.status === 'delivered')
                noteReceipt(r.message_id, rc.user, 'delivered');
        }
        const st = ownStatus(v, S.open?.msgs.get(r.message_id) || { id: r.message_id, ...r });
        if (direct && st !== 'sent') {
            for (const older of mine.slice(i + 1))
                noteReceipt(older.message_id, older.to, st);
            return;
        }
    }
}

/* Message order: by message_id (it sorts by creation time); own messages
 * not stored yet come last, in send order. */
function orderKey(m) {
    return m.id ? `0${m.id}` : `1${String(m.localId).padStart(12, '0')}`;
}

/* Adds messages (API items or outbox entries) to the view, each once.
 * how: 'older' keeps the reader's place while a page goes in above;
 * 'live' follows the end if the reader is there. */
function addMessages(v, list, how) {
    const wrap = $('log-wrap');
    const atEnd = wrap.scrollHeight - wrap.scrollTop - wrap.clientHeight < 40;
    const oldHeight = wrap.scrollHeight;
    let added = false;
    for (const item of list) {
        const m = item.localId ? item : {
            id: item.message_id, from: item.from, to: item.to, chat: item.chat,
            body: item.body, ts: item.ts,
        };
        const k = m.id || `local:${m.localId}`;
        if (v.msgs.has(k))
            continue;
        v.msgs.set(k, m);
        const li = renderMessage(v, m);
        v.nodes.set(k, li);
        insertSorted(li, orderKey(m));
        added = true;
    }
    if (!added)
        return;
    if (how === 'older')
        wrap.scrollTop += wrap.scrollHeight - oldHeight;
    else if (atEnd)
        scrollToEnd();
}

function insertSorted(li, key) {
    li.dataset.order = key;
    const ol = $('messages');
    let after = ol.lastElementChild;
    while (after && after.dataset.order > key)
        after = after.previousElementSibling;
    if (after)
        after.after(li);
    else
        ol.prepend(li);
}

function scrollToEnd() {
    const wrap = $('log-wrap');
    wrap.scrollTop = wrap.scrollHeight;
}

function renderMessage(v, m) {
    const li = document.createElement('li');
    const mine = m.from === S.me;
    li.className = `msg ${mine ? 'mine' : 'theirs'}`;
    if (m.id)
        li.dataset.id = m.id;
    if (v.conv.kind === 'group' && !mine) {
        const from = document.createElement('p');
        from.className = 'msg-from';
        from.textContent = m.from;
        li.append(from);
    }
    const body = document.createElement('p');
    body.className = 'msg-body';
    body.textContent = m.body;
    const meta = document.createElement('p');
    meta.className = 'msg-meta';
    const t = document.createElement('time');
    const d = new Date(m.ts);
    t.dateTime = d.toISOString();
    t.title = d.toLocaleString();
    t.textContent = d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
    meta.append(t);
    li.append(body, meta);
    if (mine) {
        const tick = document.createElement('span');
        tick.className = 'tick';
        tick.setAttribute('role', 'img');
        meta.append(' ', tick);
        const retry = document.createElement('button');
        retry.type = 'button';
        retry.className = 'link retry';
        retry.textContent = 'Send again';
        retry.hidden = true;
        retry.addEventListener('click', () => resend(m));
        meta.append(retry);
        li.classList.add('pending');
        renderTickInto(v, m, li);
    }
    return li;
}

/* The recipients of one's own message: the peer, or the group's members
 * but the sender (null while the members are not loaded). */
function recipientsOf(v, m) {
    if (v.conv.kind === 'direct')
        return [m.to || v.conv.peer];
    const g = S.chats.get(v.conv.chat);
    return g && g.members ? g.members.filter((u) => u !== S.me) : null;
}

/* sending (not stored yet), sent (stored: 201), delivered (on every
 * recipient's stream), read (every recipient read it), or failed. */
function ownStatus(v, m) {
    if (m.state)
        return m.state;
    const rec = recipientsOf(v, m);
    const got = S.receipts.get(m.id);
    if (!rec || !rec.length || !got)
        return 'sent';
    let read = 0;
    let delivered = 0;
    for (const u of rec) {
        const s = got.get(u);
        if (s === 'read')
            read++;
        if (s === 'read' || s === 'delivered')
            delivered++;
    }
    return read === rec.length ? 'read' : delivered === rec.length ? 'delivered' : 'sent';
}

function tickLabel(v, m, status) {
    const rec = recipientsOf(v, m);
    const got = S.receipts.get(m.id);
    const n = (st) => rec.filter((u) => got && RANK[got.get(u)] >= RANK[st]).length;
    switch (status) {
    case 'sending':
        return m.waiting ? 'Waiting for the network' : 'Sending';
    case 'failed':
        return `Not sent: ${m.error}`;
    case 'sent':
        return rec && rec.length > 1 && got ? `Sent; delivered to ${n('delivered')} of ${rec.length}` : 'Sent';
    case 'delivered':
        return rec && rec.length > 1 ? `Delivered; read by ${n('read')} of ${rec.length}` : 'Delivered';
    default:
        return rec && rec.length > 1 ? `Read by all ${rec.length}` : 'Read';
    }
}

const TICK_TEXT = { sending: '\u25F7', sent: '\u2713', delivered: '\u2713\u2713', read: '\u2713\u2713', failed: '!' };

function renderTickInto(v, m, li) {
    const status = ownStatus(v, m);
    li.dataset.status = status;
    const tick = li.querySelector('.tick');
    tick.textContent = TICK_TEXT[status];
    const label = tickLabel(v, m, status);
    tick.setAttribute('aria-label', label);
    tick.title = label;
    li.classList.toggle('pending', status === 'sending');
    li.querySelector('.retry').hidden = status !== 'failed';
}

function renderTick(v, m) {
    const li = v.nodes.get(m.id || `local:${m.localId}`);
    if (li && m.from === S.me)
        renderTickInto(v, m, li);
}

/* Reading the open conversation: its unread count goes to 0 here at once,
 * and POST /v1/inbox/read follows, once for a burst. One that does not get
 * through is made again when the stream is back (loadNewest). */
function scheduleRead() {
    const v = S.open;
    if (!isReading())
        return;
    v.conv.unread = 0;
    for (const [id, n] of S.counted)
        if (n.key === v.key)
            S.counted.delete(id);
    renderList();
    if (S.readTimer)
        return;
    S.readTimer = setTimeout(async () => {
        S.readTimer = 0;
        if (!isReading() || S.open !== v)
            return;
        try {
            await S.api.read(v.key);
        } catch (e) {
            if (!retryable(e))
                handleError(e);
        }
    }, 150);
}

/* ------------------------------------------------------------------------ */
/* Sending                                                                  */
/* ------------------------------------------------------------------------ */

function send(text) {
    const v = S.open;
    if (!v || !text.trim())
        return;
    const c = v.conv;
    const m = {
        localId: ++S.localIds, clientMsgId: newClientMsgId(), key: v.key,
        from: S.me, to: c.kind === 'direct' ? c.peer : null, chat: c.chat,
        body: text, ts: Date.now(), state: 'sending', id: null,
    };
    S.outbox.push(m);
    addMessages(v, [m], 'live');
    scrollToEnd();
    flushOutbox();
}

/* Sends the outbox in order, one at a time, so that messages are stored
 * in the order they were written. A send that could not reach the server
 * waits (and keeps its client_msg_id: the retry cannot store it twice);
 * one the server refused is shown as not sent. */
async function flushOutbox() {
    if (S.flushing)
        return;
    S.flushing = true;
    clearTimeout(S.outboxTimer);
    try {
        while (S.outbox.length && S.api) {
            const m = S.outbox[0];
            const api = S.api;
            try {
                const to = m.chat ? { chat: m.chat } : { to: m.to };
                const r = await api.send(to, m.body, m.clientMsgId);
                if (api !== S.api)
                    return;
                S.outbox.shift();
                stored(m, r);
            } catch (e) {
                if (api !== S.api)
                    return;
                if (retryable(e)) {
                    m.waiting = true;
                    redrawOutbox(m);
                    if (navigator.onLine)
                        S.outboxTimer = setTimeout(flushOutbox, OUTBOX_RETRY_MS);
                    return;
                }
                S.outbox.shift();
                if (e instanceof ApiError && e.status === 401) {
                    signOut('Your token was refused (expired?): sign in again.');
                    return;
                }
                m.state = 'failed';
                m.error = e.message;
                redrawOutbox(m);
            }
        }
    } finally {
        S.flushing = false;
    }
}

function redrawOutbox(m) {
    if (S.open && S.open.key === m.key)
        renderTick(S.open, m);
}

/* A 201 (or the 200 of a repeat): the message is durable. */
function stored(m, r) {
    const v = S.open && S.open.key === m.key ? S.open : null;
    const localKey = `local:${m.localId}`;
    m.id = r.message_id;
    m.ts = r.ts;
    m.state = null;
    m.waiting = false;
    const c = ensureConv(m.key);
    if (!c.last && c.kind === 'direct')
        schedulePresence();
    if (m.ts >= c.lastTs) {
        c.last = { message_id: m.id, from: S.me, body: m.body, ts: m.ts };
        c.lastTs = m.ts;
        renderList();
    }
    if (!v)
        return;
    const li = v.nodes.get(localKey);
    v.msgs.delete(localKey);
    v.nodes.delete(localKey);
    if (v.msgs.has(m.id)) {
        /* Already shown (a history reload raced the answer). */
        li?.remove();
        return;
    }
    v.msgs.set(m.id, m);
    if (li) {
        v.nodes.set(m.id, li);
        li.dataset.id = m.id;
        li.querySelector('time').dateTime = new Date(m.ts).toISOString();
        insertSorted(li, orderKey(m));
        renderTickInto(v, m, li);
    }
}

function resend(m) {
    const v = S.open;
    if (!v)
        return;
    const k = `local:${m.localId}`;
    v.nodes.get(k)?.remove();
    v.nodes.delete(k);
    v.msgs.delete(k);
    $('composer-input').value = m.body;
    $('composer-input').focus();
}

/* ------------------------------------------------------------------------ */
/* Groups                                                                   */
/* ------------------------------------------------------------------------ */

async function createGroup(ev) {
    ev.preventDefault();
    const name = $('new-group-name').value.trim();
    const members = parseUsers($('new-group-members').value);
    const bad = members.find((u) => !USER_RE.test(u));
    if (!name || bad) {
        $('conv-error').textContent = bad ? `"${bad}" is not a user name.` : 'A group needs a name.';
        return;
    }
    try {
        const g = await S.api.createChat(name, members);
        S.chats.set(g.chat, g);
        const c = ensureConv(`chat:${g.chat}`);
        c.name = g.name;
        c.lastTs = g.created_ts || Date.now();
        c.baseTs = c.lastTs;
        $('new-group-form').reset();
        $('new-group').open = false;
        $('conv-error').textContent = '';
        await openConversation(c.key);
    } catch (e) {
        handleError(e);
    }
}

async function addMembers(ev) {
    ev.preventDefault();
    const v = S.open;
    if (!v || v.conv.kind !== 'group')
        return;
    const add = parseUsers($('add-members-input').value);
    const bad = add.find((u) => !USER_RE.test(u));
    if (!add.length || bad) {
        $('conv-error').textContent = bad ? `"${bad}" is not a user name.` : 'Name someone to add.';
        return;
    }
    try {
        const g = await S.api.addMembers(v.conv.chat, add);
        S.chats.set(g.chat, { ...(S.chats.get(g.chat) || {}), ...g });
        $('add-members-input').value = '';
        $('conv-error').textContent = '';
        renderConvHeader();
        for (const m of v.msgs.values())
            renderTick(v, m);
    } catch (e) {
        handleError(e);
    }
}

/* ------------------------------------------------------------------------ */
/* Errors                                                                   */
/* ------------------------------------------------------------------------ */

function handleError(e) {
    if (e instanceof ApiError && e.status === 401) {
        signOut('Your token was refused (expired?): sign in again.');
        return;
    }
    if (e instanceof NetworkError) {
        /* The connection banner says it already; what failed is fetched
         * again when the stream is back. */
        return;
    }
    $('conv-error').textContent = e.message;
}

/* ------------------------------------------------------------------------ */
/* Wiring                                                                   */
/* ------------------------------------------------------------------------ */

function init() {
    $('signin-dev').addEventListener('submit', signinDev);
    $('signin-paste').addEventListener('submit', signinPaste);
    $('signout').addEventListener('click', () => signOut(''));
    $('conn-retry').addEventListener('click', () => S.stream && S.stream.reconnectNow());

    $('new-direct').addEventListener('submit', (ev) => {
        ev.preventDefault();
        const user = $('new-direct-user').value.trim();
        if (!USER_RE.test(user)) {
            $('conv-error').textContent = 'A user name is 1-64 letters, digits or _ . @ -';
            return;
        }
        $('new-direct-user').value = '';
        ensureConv(user);
        openConversation(user);
        refreshPresence();
    });
    $('new-group-form').addEventListener('submit', createGroup);
    $('add-members-form').addEventListener('submit', addMembers);

    $('conversations').addEventListener('click', (ev) => {
        const b = ev.target.closest('.conv-item');
        if (b)
            openConversation(b.dataset.key);
    });
    $('back').addEventListener('click', () => {
        const key = S.open && S.open.key;
        closeConversation();
        $('conversations').querySelector(`.conv-item[data-key="${CSS.escape(key || '')}"]`)?.focus();
    });

    const input = $('composer-input');
    $('composer').addEventListener('submit', (ev) => {
        ev.preventDefault();
        send(input.value);
        input.value = '';
        fitComposer();
        input.focus();
    });
    /* Enter sends; Shift+Enter is a new line; Enter while an input method
     * composes a character is the IME's. */
    input.addEventListener('keydown', (ev) => {
        if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) {
            ev.preventDefault();
            $('composer').requestSubmit();
        }
    });
    input.addEventListener('input', fitComposer);

    $('older').addEventListener('click', () => S.open && loadOlder(S.open).catch(handleError));
    $('log-wrap').addEventListener('scroll', () => {
        const v = S.open;
        if (v && v.more && !v.loading && $('log-wrap').scrollTop < 60)
            loadOlder(v).catch(handleError);
    });
    document.addEventListener('visibilitychange', () => {
        if (isReading() && S.open.conv.unread > 0)
            scheduleRead();
    });
    window.addEventListener('online', () => S.api && flushOutbox());

    const saved = sessionStorage.getItem(SESSION_KEY);
    let session = null;
    try {
        session = saved && JSON.parse(saved);
    } catch {
        session = null;
    }
    const claims = session && jwtClaims(session.token);
    if (claims && (!claims.exp || claims.exp * 1000 > Date.now()))
        start(session);
    else
        showSignin('');
}

/* The message box grows with its text, up to a few lines. */
function fitComposer() {
    const input = $('composer-input');
    input.style.height = 'auto';
    input.style.height = `${Math.min(input.scrollHeight, 160)}px`;
}

init();
