/* auth.c: JWT (HS256) verification and minting with libjwt. */
#include "auth.h"

#include <errno.h>
#include <jwt.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "err.h"

bool chat_user_valid(const char *s)
{
    size_t n = 0;
    for (; s[n]; n++) {
        char c = s[n];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '_' || c == '.' || c == '@' || c == '-';
        if (!ok || n >= CHAT_USER_MAX)
            return false;
    }
    return n >= 1;
}

/* A compact JWS: three non-empty base64url parts. libjwt 1.10 writes past a
 * zero-byte buffer when a part is empty, so nothing else reaches it. */
static bool token_shape_ok(const char *t)
{
    int parts = 1;
    size_t run = 0;
    for (const char *p = t; *p; p++) {
        char c = *p;
        if (c == '.') {
            if (run == 0)
                return false;
            parts++;
            run = 0;
            continue;
        }
        bool b64 = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                   c == '-' || c == '_';
        if (!b64)
            return false;
        run++;
    }
    return parts == 3 && run > 0;
}

/* True when json (a claim's JSON text) is a number no later than limit.
 * A fraction counts: 1700000000.5 is after 1700000000. */
static bool nbf_not_after(const char *json, int64_t limit)
{
    const char *p = json;
    if (*p == '-')
        p++;
    if (*p < '0' || *p > '9')
        return false; /* a string, null, true, an object: not a NumericDate */
    char *end;
    errno = 0;
    double v = strtod(json, &end);
    if (errno != 0 || *end != '\0')
        return false;
    return v <= (double)limit;
}

int chat_auth_verify(const char *secret, const char *token, int64_t now,
                     char user[CHAT_USER_MAX + 1], const char **why)
{
    jwt_t *jwt = NULL;
    *why = "invalid token";
    if (!token || !*token || strlen(token) > 8192) {
        *why = "missing token";
        return CHAT_EAUTH;
    }
    if (!token_shape_ok(token))
        goto fail;
    if (jwt_decode(&jwt, token, (const unsigned char *)secret, (int)strlen(secret)) != 0 || !jwt)
        goto fail;
    /* RFC 8725 3.1: the algorithm is ours to choose, not the token's. libjwt
     * verified with whatever the header named; accept only HS256. */
    if (jwt_get_alg(jwt) != JWT_ALG_HS256) {
        *why = "only HS256 tokens are accepted";
        goto fail;
    }
    /* RFC 7515 4.1.11: a header we cannot honour must not be ignored. */
    char *crit = jwt_get_headers_json(jwt, "crit");
    if (crit) {
        free(crit);
        *why = "the token has a crit header";
        goto fail;
    }
    errno = 0;
    long exp = jwt_get_grant_int(jwt, "exp");
    if (errno != 0) {
        *why = "the token has no exp claim";
        goto fail;
    }
    if (exp <= now) {
        *why = "the token has expired";
        goto fail;
    }
    /* nbf is optional, but when present it must be a NumericDate (RFC 7519
     * 4.1.5): a string, null or anything else is refused, not ignored, or a
     * token meant for later would pass today. */
    char *nbf_json = jwt_get_grants_json(jwt, "nbf");
    if (nbf_json) {
        bool ok = nbf_not_after(nbf_json, now + CHAT_AUTH_LEEWAY_S);
        free(nbf_json);
        if (!ok) {
            *why = "the token is not valid yet";
            goto fail;
        }
    }
    const char *sub = jwt_get_grant(jwt, "sub");
    if (!sub || !chat_user_valid(sub)) {
        *why = "the token's sub is not a valid user id";
        goto fail;
    }
    strcpy(user, sub);
    jwt_free(jwt);
    *why = NULL;
    return 0;
fail:
    jwt_free(jwt);
    return CHAT_EAUTH;
}

char *chat_auth_mint(const char *secret, const char *user, int64_t now, int ttl)
{
    if (!chat_user_valid(user))
        return NULL;
    jwt_t *jwt = NULL;
    if (jwt_new(&jwt) != 0)
        abort();
    if (jwt_set_alg(jwt, JWT_ALG_HS256, (const unsigned char *)secret, (int)strlen(secret)) ||
        jwt_add_grant(jwt, "sub", user) || jwt_add_grant_int(jwt, "iat", (long)now) ||
        jwt_add_grant_int(jwt, "exp", (long)(now + ttl)))
        abort();
    char *s = jwt_encode_str(jwt);
    jwt_free(jwt);
    if (!s)
        abort();
    char *out = chat_xstrdup(s);
    free(s);
    return out;
}
