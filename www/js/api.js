/* api.js: a small client of the chat HTTP API v1 (docs/api.md), same origin.
 *
 * Every method returns the parsed JSON body of a 2xx answer, or throws:
 *   ApiError      the server answered with an error ({"error": {code, message}})
 *   NetworkError  no answer: the browser is offline, or the request failed
 * A request is not even tried while the browser says it is offline
 * (navigator.onLine false): it could only fail, and Chromium writes every
 * failed request to the console. */

export class ApiError extends Error {
    constructor(status, code, message) {
        super(message || code || `HTTP ${status}`);
        this.name = 'ApiError';
        this.status = status;
        this.code = code || '';
    }
}

export class NetworkError extends Error {
    constructor(message) {
        super(message);
        this.name = 'NetworkError';
    }
}

/* A 5xx (503 when MySQL or Redis is down) or a 429 may be retried as is;
 * any other error will fail again the same way. */
export function retryable(err) {
    return err instanceof NetworkError ||
        (err instanceof ApiError && (err.status >= 500 || err.status === 429));
}

async function call(method, path, { token, body } = {}) {
    if (!navigator.onLine)
        throw new NetworkError('offline');
    const init = { method, headers: {}, cache: 'no-store' };
    if (token)
        init.headers.Authorization = `Bearer ${token}`;
    if (body !== undefined) {
        init.headers['Content-Type'] = 'application/json';
        init.body = JSON.stringify(body);
    }
    /* A POST without a body still goes out with Content-Length: 0, which
     * lighttpd requires of every POST. */
    let resp;
    try {
        resp = await fetch(path, init);
    } catch (e) {
        throw new NetworkError(e.message || 'the request failed');
    }
    let json = null;
    const text = await resp.text().catch(() => '');
    if (text) {
        try {
            json = JSON.parse(text);
        } catch {
            json = null;
        }
    }
    if (!resp.ok) {
        const e = json && json.error;
        throw new ApiError(resp.status, e && e.code, e && e.message);
    }
    return json;
}

/* POST /v1/dev/token: a token for any user, on a stack with
 * [auth] dev_tokens = true only (404 elsewhere). */
export function devToken(user) {
    return call('POST', '/v1/dev/token', { body: { user } });
}

/* The claims of a JWT, without checking it (the server does): for the user
 * id and expiry of a pasted token. null when it is not a JWT. */
export function jwtClaims(token) {
    const parts = token.split('.');
    if (parts.length !== 3)
        return null;
    try {
        const b64 = parts[1].replace(/-/g, '+').replace(/_/g, '/');
        const bin = atob(b64 + '='.repeat((4 - (b64.length % 4)) % 4));
        const bytes = Uint8Array.from(bin, (ch) => ch.charCodeAt(0));
        return JSON.parse(new TextDecoder().decode(bytes));
    } catch {
        return null;
    }
}

/* The signed-in user's side of the API. */
export class Api {
    constructor(token) {
        this.token = token;
    }

    get(path) {
        return call('GET', path, { token: this.token });
    }

    post(path, body) {
        return call('POST', path, { token: this.token, body });
    }

    /* A one-time stream ticket (60 s): EventSource cannot send headers, and
     * a long-lived token must not go into a URL. */
    ticket() {
        return call('POST', '/v1/events/ticket', { token: this.token });
    }

    send(to, body, clientMsgId) {
        return this.post('/v1/messages', { ...to, body, client_msg_id: clientMsgId });
    }

    conversations() {
        return this.get('/v1/conversations?limit=100');
    }

    history(conv, before, limit) {
        let q = `limit=${limit}`;
        if (before)
            q += `&before=${encodeURIComponent(before)}`;
        return this.get(`/v1/conversations/${conv}/messages?${q}`);
    }

    message(id) {
        return this.get(`/v1/messages/${encodeURIComponent(id)}`);
    }

    read(conv) {
        return this.post('/v1/inbox/read', { conversation: conv });
    }

    ack(upTo) {
        return this.post('/v1/inbox/ack', { up_to: upTo });
    }

    chats() {
        return this.get('/v1/chats');
    }

    chat(id) {
        return this.get(`/v1/chats/${encodeURIComponent(id)}`);
    }

    createChat(name, members) {
        return this.post('/v1/chats', { name, members });
    }

    addMembers(id, add) {
        return this.post(`/v1/chats/${encodeURIComponent(id)}/members`, { add });
    }

    presence(users) {
        return this.get(`/v1/presence?users=${users.map(encodeURIComponent).join(',')}`);
    }
}
