-- lighttpd-route.lua: the routing key of /v1/events for lighttpd's mod_magnet
-- (lighttpd 1.4.69, Debian package lighttpd-modules-lua).
--
-- lighttpd's proxy.balance = "hash" picks a chatd node from a hash of the
-- URL path and the Host header, so on its own every stream of every user
-- would land on the same node. This script runs before the backend is picked
-- (magnet.attract-raw-url-to) and appends the token's user id, the JWT
-- "sub" claim, to the path lighttpd hashes: every stream of one user (each
-- device, each reconnect, header or ?access_token=) goes to the same node
-- while that node is up, and to the next one when it is down.
--
-- Only the hash input changes: mod_proxy sends chatd the request target as
-- the client sent it. The token is not verified here (chatd does that); a
-- forged token can only choose which node refuses it. A stream opened with
-- a one-time ?ticket= (POST /v1/events/ticket) names no user: its ticket is
-- hashed instead, which spreads such streams over the nodes without keeping
-- a user on one. A request with neither is hashed on its path alone.

local r = lighty.r

-- The token: "Authorization: Bearer <jwt>", else ?access_token=<jwt>, as
-- chatd itself takes them (the query form is what a browser's EventSource
-- can send).
local function bearer()
    local auth = r.req_header["Authorization"]
    if auth then
        local t = auth:match("^[Bb][Ee][Aa][Rr][Ee][Rr] +([%w%-_.]+)")
        if t then return t end
    end
    local q = r.req_attr["uri.query"]
    if q then
        local t = ("&" .. q):match("&access_token=([^&]+)")
        if t then return lighty.c.urldec(t) end
    end
    return nil
end

-- The "sub" claim of a JWT, if it is a valid user id (SPEC.md: 1-64
-- characters of A-Za-z0-9_.@-). The payload is base64url JSON.
local function subject(jwt)
    local payload = jwt:match("^[^.]*%.([^.]+)%.")
    if not payload then return nil end
    local json = lighty.c.b64urldec(payload)
    if not json then return nil end
    local sub = json:match('"sub"%s*:%s*"([%w_.@%-]+)"')
    if sub and #sub <= 64 then return sub end
    return nil
end

local function ticket()
    local q = r.req_attr["uri.query"]
    return q and ("&" .. q):match("&ticket=([^&]+)")
end

local tok = bearer()
local key = tok and subject(tok)
if not key then
    local t = ticket()
    key = t and ("ticket:" .. t)
end
if key then
    -- "/v1/events" becomes "/v1/events/<user>" for the hash (and for the
    -- $HTTP["url"] conditions, which is why the proxy block also matches
    -- "^/v1/events/").
    r.req_attr["uri.path"] = r.req_attr["uri.path"] .. "/" .. key
end
return 0
