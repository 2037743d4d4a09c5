/* stream.js: the user's event stream (GET /v1/events) with its reconnects.
 *
 * EventSource cannot send an Authorization header, so each connection is
 * opened with a one-time stream ticket (POST /v1/events/ticket) instead of
 * the token. That rules out EventSource's own reconnect: it would reuse
 * the URL, whose ticket is spent (401). So on any error this closes the
 * EventSource and opens a new one with a fresh ticket, after a capped,
 * jittered backoff, passing the last seq it saw as ?last_event_id= (a new
 * EventSource does not send Last-Event-ID): the server then yields exactly
 * the rows after it, delivered meanwhile or not, so nothing is lost.
 *
 * While the browser says it is offline nothing is tried: the stream is
 * closed at once (an emulated or half-dead network can leave it open and
 * silent) and reopened on the "online" event.
 *
 * States, passed to onState(state, detail):
 *   connecting    the first connection is being opened
 *   live          the stream is open: events arrive as they happen
 *   reconnecting  it dropped; detail.delayMs until the next try
 *   offline       the browser is offline; waits for the network
 *   stopped       stop() was called */

import { ApiError } from './api.js';

const BACKOFF_FIRST_MS = 500;
const BACKOFF_MAX_MS = 15000;

export class EventStream {
    /* api: an Api; handlers: onState, onMessage(item, seq), onReceipt(r),
     * onPresence(p), onLive(again: not the first stream), onAuthError(). */
    constructor(api, handlers) {
        this.api = api;
        this.h = handlers;
        this.es = null;
        this.timer = 0;
        this.failures = 0;     /* consecutive failed tries, for the backoff */
        this.lastSeq = 0;      /* the highest seq seen: the resume point */
        this.generation = 0;   /* bumped by every (re)connect and by stop() */
        this.everLive = false; /* a stream was open once: later ones are reconnects */
        this.state = 'stopped';
        this.onOnline = () => this.connect();
        this.onOffline = () => this.goOffline();
    }

    start() {
        window.addEventListener('online', this.onOnline);
        window.addEventListener('offline', this.onOffline);
        this.connect();
    }

    stop() {
        window.removeEventListener('online', this.onOnline);
        window.removeEventListener('offline', this.onOffline);
        this.generation++;
        this.close();
        this.setState('stopped');
    }

    /* Opens a new connection now, dropping the current one and any
     * scheduled retry ("Retry now", the network coming back). */
    reconnectNow() {
        this.failures = 0;
        this.connect();
    }

    setState(state, detail = {}) {
        this.state = state;
        this.h.onState(state, detail);
    }

    close() {
        clearTimeout(this.timer);
        this.timer = 0;
        if (this.es) {
            this.es.close();
            this.es = null;
        }
    }

    goOffline() {
        this.generation++;
        this.close();
        this.setState('offline');
    }

    async connect() {
        const gen = ++this.generation;
        this.close();
        if (!navigator.onLine) {
            this.setState('offline');
            return;
        }
        this.setState(this.everLive || this.failures ? 'reconnecting' : 'connecting', { delayMs: 0 });
        let ticket;
        try {
            ticket = (await this.api.ticket()).ticket;
        } catch (e) {
            if (gen !== this.generation)
                return;
            if (e instanceof ApiError && e.status === 401) {
                this.h.onAuthError();
                return;
            }
            this.retryLater(gen);
            return;
        }
        if (gen !== this.generation)
            return;
        let url = `/v1/events?ticket=${encodeURIComponent(ticket)}`;
        if (this.lastSeq)
            url += `&last_event_id=${this.lastSeq}`;
        const again = this.everLive;
        const es = new EventSource(url);
        this.es = es;
        es.addEventListener('open', () => {
            if (this.es !== es)
                return;
            this.failures = 0;
            this.everLive = true;
            this.setState('live');
            this.h.onLive(again);
        });
        es.addEventListener('message', (ev) => this.onMessage(es, ev));
        es.addEventListener('receipt', (ev) => this.dispatch(es, ev, this.h.onReceipt));
        es.addEventListener('presence', (ev) => this.dispatch(es, ev, this.h.onPresence));
        es.addEventListener('error', () => {
            /* The stream ended or never opened. EventSource would now retry
             * with the spent ticket: close it and start over. */
            if (this.es !== es)
                return;
            es.close();
            this.es = null;
            this.retryLater(gen);
        });
    }

    retryLater(gen) {
        if (gen !== this.generation)
            return;
        if (!navigator.onLine) {
            this.setState('offline');
            return;
        }
        this.failures++;
        const cap = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** (this.failures - 1));
        /* Jitter (half to all of the cap): clients cut off together by a node
         * that went away do not all come back in the same instant. */
        const delayMs = Math.round(cap / 2 + Math.random() * (cap / 2));
        this.setState('reconnecting', { delayMs });
        this.timer = setTimeout(() => {
            if (gen === this.generation)
                this.connect();
        }, delayMs);
    }

    onMessage(es, ev) {
        if (this.es !== es)
            return;
        const seq = Number(ev.lastEventId);
        /* Within one stream seqs only grow, and a resume starts after
         * lastSeq; anything at or below it was seen already. */
        if (!Number.isSafeInteger(seq) || seq <= this.lastSeq)
            return;
        let item;
        try {
            item = JSON.parse(ev.data);
        } catch {
            return;
        }
        this.lastSeq = seq;
        this.h.onMessage(item, seq);
    }

    dispatch(es, ev, fn) {
        if (this.es !== es)
            return;
        let data;
        try {
            data = JSON.parse(ev.data);
        } catch {
            return;
        }
        fn(data);
    }
}
