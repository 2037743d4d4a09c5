-- apache-route.lua: the per-user route of /v1/events for Apache 2.4 mod_lua
-- (Debian: a2enmod lua; the module is in apache2-bin).
--
-- mod_proxy_balancer keeps a client on one member through a "sticky
-- session": a cookie (or URL parameter) whose value ends in ".<route>".
-- Apps do not send one, so this fixup hook makes it from the token: the
-- JWT's "sub" claim (the user id) is hashed onto one of the routes listed
-- in the environment variable CHAT_SSE_ROUTES (comma-separated, the route=
-- of each BalancerMember, set by the site config), and the cookie
-- CHAT_ROUTE=.<route> is put first in the request's Cookie header. Every
-- stream of one user (each device, each reconnect, header or
-- ?access_token=) then goes to the same chatd node while it is up; when it
-- is down the balancer picks another member (nofailover=Off) and the user
-- comes back once the node answers again (the member's retry=).
--
-- The token is not verified here (chatd does that); a forged token can
-- only choose which node refuses it. A stream opened with a one-time
-- ?ticket= (POST /v1/events/ticket) names no user: its ticket is hashed
-- instead, which spreads such streams over the nodes without keeping a user
-- on one. A request with neither gets no route and is balanced by lbmethod.

require "apache2"

-- The token: "Authorization: Bearer <jwt>", else ?access_token=<jwt>.
local function bearer(r)
    local auth = r.headers_in["Authorization"]
    if auth then
        local t = auth:match("^[Bb][Ee][Aa][Rr][Ee][Rr] +([%w%-_.]+)")
        if t then return t end
    end
    if r.args then
        local t = ("&" .. r.args):match("&access_token=([^&]+)")
        if t then return r:unescape(t) end
    end
    return nil
end

-- The "sub" claim of a JWT if it is a valid user id (SPEC.md: 1-64
-- characters of A-Za-z0-9_.@-). The payload is base64url without padding;
-- r:base64_decode takes the standard alphabet.
local function subject(r, jwt)
    local payload = jwt:match("^[^.]*%.([^.]+)%.")
    if not payload then return nil end
    payload = payload:gsub("-", "+"):gsub("_", "/")
    payload = payload .. string.rep("=", (4 - #payload % 4) % 4)
    local json = r:base64_decode(payload)
    if not json then return nil end
    local sub = json:match('"sub"%s*:%s*"([%w_.@%-]+)"')
    if sub and #sub <= 64 then return sub end
    return nil
end

function chat_route(r)
    local routes = {}
    for name in (r.subprocess_env["CHAT_SSE_ROUTES"] or ""):gmatch("[^,%s]+") do
        routes[#routes + 1] = name
    end
    if #routes == 0 then return apache2.DECLINED end
    local tok = bearer(r)
    local key = tok and subject(r, tok)
    if not key and r.args then
        local t = ("&" .. r.args):match("&ticket=([^&]+)")
        key = t and ("ticket:" .. t)
    end
    if not key then return apache2.DECLINED end
    -- The first 7 hex digits of the MD5 (28 bits) fit any Lua number type.
    local h = tonumber(r:md5(key):sub(1, 7), 16)
    local route = routes[h % #routes + 1]
    local cookie = "CHAT_ROUTE=." .. route
    local old = r.headers_in["Cookie"]
    r.headers_in["Cookie"] = old and (cookie .. "; " .. old) or cookie
    return apache2.DECLINED
end
