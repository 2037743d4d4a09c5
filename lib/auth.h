/* auth.h: bearer tokens (JWT, HS256 only) and user ids.
 *
 * Follows RFC 8725: the algorithm is pinned to HS256 whatever the header says
 * (alg=none and every other algorithm are refused), `exp` is required and
 * checked, and `sub` must be a valid user id. */
#ifndef CHAT_AUTH_H
#define CHAT_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CHAT_USER_MAX 64

/* True when s is 1-64 characters of A-Za-z0-9_.@- */
bool chat_user_valid(const char *s);

/* Clock skew allowed for a token's nbf, in seconds. */
#define CHAT_AUTH_LEEWAY_S 60

/* Verifies token against secret at time now (seconds since the epoch).
 * Returns 0 and copies the subject into user, or CHAT_EAUTH with a reason
 * (static text) in *why. */
int chat_auth_verify(const char *secret, const char *token, int64_t now,
                     char user[CHAT_USER_MAX + 1], const char **why);

/* Mints an HS256 token for user valid for ttl seconds from now. The caller
 * frees the result. Returns NULL when user is not a valid id. */
char *chat_auth_mint(const char *secret, const char *user, int64_t now, int ttl);

#endif
