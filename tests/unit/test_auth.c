/* test_auth.c: user ids and HS256 bearer tokens (RFC 8725 pinning). */
#include <check.h>
#include <jwt.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../lib/alloc.h"
#include "../../lib/auth.h"
#include "../../lib/err.h"

static const char secret[] = "0123456789abcdef0123456789abcdef-unit";
#define NOW INT64_C(1733270400)
#define LATER (NOW + 3600)

/* ---------------------------------------------------------------- helpers */

/* base64url without padding (RFC 7515 section 2); the caller frees it. */
static char *b64url(const char *s)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    const unsigned char *p = (const unsigned char *)s;
    size_t n = strlen(s), o = 0;
    char *out = malloc(n / 3 * 4 + 5);

    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16;

        if (i + 1 < n)
            v |= (uint32_t)p[i + 1] << 8;
        if (i + 2 < n)
            v |= p[i + 2];
        out[o++] = tab[(v >> 18) & 63];
        out[o++] = tab[(v >> 12) & 63];
        if (i + 1 < n)
            out[o++] = tab[(v >> 6) & 63];
        if (i + 2 < n)
            out[o++] = tab[v & 63];
    }
    out[o] = '\0';
    return out;
}

/* b64url(header).b64url(claims).sig, the signature given as is. */
static char *hand_token(const char *header, const char *claims, const char *sig)
{
    char *h = b64url(header), *c = b64url(claims);
    char *t = chat_xasprintf("%s.%s.%s", h, c, sig);

    free(h);
    free(c);
    return t;
}

/* A token for claims correctly signed with key under alg, made by libjwt. */
static char *signed_token(jwt_alg_t alg, const char *key, const char *claims)
{
    jwt_t *jwt = NULL;
    char *t;

    ck_assert_int_eq(jwt_new(&jwt), 0);
    ck_assert_int_eq(jwt_add_grants_json(jwt, claims), 0);
    ck_assert_int_eq(jwt_set_alg(jwt, alg, (const unsigned char *)key, (int)strlen(key)), 0);
    t = jwt_encode_str(jwt);
    ck_assert_ptr_nonnull(t);
    jwt_free(jwt);
    return t;
}

static char *hs256(const char *claims)
{
    return signed_token(JWT_ALG_HS256, secret, claims);
}

/* The n-th dot-separated part of token (0-based), newly allocated. */
static char *part(const char *token, int n)
{
    const char *p = token, *e;

    for (int i = 0; i < n; i++) {
        p = strchr(p, '.');
        ck_assert_ptr_nonnull(p);
        p++;
    }
    e = strchr(p, '.');
    return chat_xstrndup(p, e ? (size_t)(e - p) : strlen(p));
}

static void assert_refused_at(const char *key, const char *token, int64_t now, const char *what)
{
    char user[CHAT_USER_MAX + 1] = "";
    const char *why = NULL;
    int rc = chat_auth_verify(key, token, now, user, &why);

    ck_assert_msg(rc == CHAT_EAUTH, "%s: rc %d (user \"%s\") for token %s", what, rc, user, token);
    ck_assert_msg(why != NULL && why[0] != '\0', "%s: no reason", what);
}

static void assert_refused(const char *token, const char *what)
{
    assert_refused_at(secret, token, NOW, what);
}

/* Refuses and frees token. */
static void refuse_free(char *token, const char *what)
{
    assert_refused(token, what);
    free(token);
}

/* ---------------------------------------------------------------- user ids */

START_TEST(test_user_valid)
{
    char max[CHAT_USER_MAX + 2];
    static const char *const ok[] = {
        "a", "bob", "Alice_01", "first.last", "me@example.com", "a-b", "0", "_", ".", "@", "-"};
    static const char *const bad[] = {"",
                                      "a b",
                                      " bob",
                                      "bob ",
                                      "a/b",
                                      "a\\b",
                                      "b\xc3\xb6"
                                      "b",
                                      "\xf0\x9f\x98\x80",
                                      "bob\n",
                                      "a:b",
                                      "a+b",
                                      "a,b",
                                      "<bob>",
                                      "bob\t",
                                      "a%b",
                                      "a#b"};

    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++)
        ck_assert_msg(chat_user_valid(ok[i]), "refused \"%s\"", ok[i]);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        ck_assert_msg(!chat_user_valid(bad[i]), "accepted \"%s\"", bad[i]);

    memset(max, 'u', CHAT_USER_MAX);
    max[CHAT_USER_MAX] = '\0';
    ck_assert(chat_user_valid(max));
    max[CHAT_USER_MAX] = 'u';
    max[CHAT_USER_MAX + 1] = '\0';
    ck_assert(!chat_user_valid(max));
}
END_TEST

/* ---------------------------------------------------------------- mint + verify */

START_TEST(test_mint_verify)
{
    char user[CHAT_USER_MAX + 1];
    const char *why = NULL;
    char *t = chat_auth_mint(secret, "alice", NOW, 3600);
    int dots = 0;

    ck_assert_ptr_nonnull(t);
    for (const char *p = t; *p; p++)
        dots += *p == '.';
    ck_assert_int_eq(dots, 2);
    ck_assert_int_eq(chat_auth_verify(secret, t, NOW, user, &why), 0);
    ck_assert_str_eq(user, "alice");
    ck_assert_int_eq(chat_auth_verify(secret, t, NOW + 3599, user, &why), 0);
    ck_assert_str_eq(user, "alice");
    free(t);
}
END_TEST

START_TEST(test_mint_verify_edge_users)
{
    static const char *const users[] = {"a", "Z.z_9@x-y", "me@example.com"};
    char max[CHAT_USER_MAX + 1];
    char user[CHAT_USER_MAX + 1];
    const char *why;
    char *t;

    for (size_t i = 0; i < sizeof(users) / sizeof(users[0]); i++) {
        t = chat_auth_mint(secret, users[i], NOW, 60);
        ck_assert_ptr_nonnull(t);
        ck_assert_int_eq(chat_auth_verify(secret, t, NOW, user, &why), 0);
        ck_assert_str_eq(user, users[i]);
        free(t);
    }
    memset(max, 'm', CHAT_USER_MAX);
    max[CHAT_USER_MAX] = '\0';
    t = chat_auth_mint(secret, max, NOW, 60);
    ck_assert_ptr_nonnull(t);
    ck_assert_int_eq(chat_auth_verify(secret, t, NOW, user, &why), 0);
    ck_assert_str_eq(user, max);
    free(t);
}
END_TEST

START_TEST(test_mint_refuses_bad_user)
{
    char long_user[CHAT_USER_MAX + 2];

    memset(long_user, 'u', CHAT_USER_MAX + 1);
    long_user[CHAT_USER_MAX + 1] = '\0';
    ck_assert_ptr_null(chat_auth_mint(secret, "", NOW, 60));
    ck_assert_ptr_null(chat_auth_mint(secret, "a b", NOW, 60));
    ck_assert_ptr_null(chat_auth_mint(secret, "a/b", NOW, 60));
    ck_assert_ptr_null(chat_auth_mint(secret, long_user, NOW, 60));
}
END_TEST

START_TEST(test_verify_accepts_libjwt_hs256)
{
    /* A token from another HS256 implementation is as good as one we minted. */
    char user[CHAT_USER_MAX + 1];
    const char *why = NULL;
    char *t = hs256("{\"sub\":\"carol\",\"exp\":1733274000}");

    ck_assert_msg(chat_auth_verify(secret, t, NOW, user, &why) == 0, "refused: %s",
                  why ? why : "(no reason)");
    ck_assert_str_eq(user, "carol");
    free(t);
}
END_TEST

/* ---------------------------------------------------------------- refusals */

START_TEST(test_verify_wrong_secret)
{
    char *t = chat_auth_mint(secret, "alice", NOW, 3600);
    char other[sizeof(secret)];

    memcpy(other, secret, sizeof(secret));
    other[sizeof(secret) - 2] ^= 1; /* differs in the last character only */
    assert_refused_at(other, t, NOW, "wrong secret");
    assert_refused_at("another-secret-entirely-0123456789", t, NOW, "other secret");
    free(t);
    t = signed_token(JWT_ALG_HS256, "another-secret-entirely-0123456789",
                     "{\"sub\":\"alice\",\"exp\":1733274000}");
    refuse_free(t, "signed with another secret");
}
END_TEST

START_TEST(test_verify_expired)
{
    char *t = chat_auth_mint(secret, "alice", NOW, 3600);

    assert_refused_at(secret, t, NOW + 3601, "expired minted token");
    assert_refused_at(secret, t, NOW + 100000, "long expired minted token");
    free(t);
    refuse_free(hs256("{\"sub\":\"alice\",\"exp\":1733270399}"), "exp one second ago");
    refuse_free(hs256("{\"sub\":\"alice\",\"exp\":0}"), "exp 0");
    refuse_free(hs256("{\"sub\":\"alice\",\"exp\":-1}"), "exp negative");
}
END_TEST

START_TEST(test_verify_no_exp)
{
    refuse_free(hs256("{\"sub\":\"alice\"}"), "no exp");
    refuse_free(hs256("{\"sub\":\"alice\",\"iat\":1733270400}"), "iat but no exp");
    refuse_free(hs256("{\"sub\":\"alice\",\"exp\":\"99999999999\"}"), "exp as a string");
    refuse_free(hs256("{\"sub\":\"alice\",\"exp\":null}"), "exp null");
}
END_TEST

START_TEST(test_verify_alg_none)
{
    static const char claims[] = "{\"sub\":\"alice\",\"exp\":1733274000}";
    char *good = chat_auth_mint(secret, "alice", NOW, 3600);
    char *sig = part(good, 2);

    refuse_free(hand_token("{\"alg\":\"none\",\"typ\":\"JWT\"}", claims, ""), "alg none");
    refuse_free(hand_token("{\"alg\":\"none\",\"typ\":\"JWT\"}", claims, sig),
                "alg none, HS256 signature");
    refuse_free(hand_token("{\"alg\":\"none\",\"typ\":\"JWT\"}", claims, "c2lnbmF0dXJl"),
                "alg none, junk signature");
    refuse_free(hand_token("{\"alg\":\"None\",\"typ\":\"JWT\"}", claims, ""), "alg None");
    refuse_free(hand_token("{\"alg\":\"NONE\"}", claims, ""), "alg NONE");
    refuse_free(hand_token("{\"typ\":\"JWT\"}", claims, ""), "no alg, no signature");
    free(sig);
    free(good);
}
END_TEST

START_TEST(test_verify_other_algs)
{
    static const char claims[] = "{\"sub\":\"alice\",\"exp\":1733274000}";

    /* Correctly signed with the right secret, but not HS256. */
    refuse_free(signed_token(JWT_ALG_HS512, secret, claims), "HS512");
    refuse_free(signed_token(JWT_ALG_HS384, secret, claims), "HS384");
    refuse_free(hand_token("{\"alg\":\"RS256\",\"typ\":\"JWT\"}", claims,
                           "c2lnbmF0dXJlc2lnbmF0dXJlc2lnbmF0dXJl"),
                "RS256");
    refuse_free(hand_token("{\"alg\":\"ES256\",\"typ\":\"JWT\"}", claims,
                           "c2lnbmF0dXJlc2lnbmF0dXJlc2lnbmF0dXJl"),
                "ES256");
    refuse_free(hand_token("{\"alg\":\"hs256\",\"typ\":\"JWT\"}", claims, "c2ln"), "hs256");
}
END_TEST

START_TEST(test_verify_bad_sub)
{
    refuse_free(hs256("{\"sub\":\"alice smith\",\"exp\":1733274000}"), "sub with a space");
    refuse_free(hs256("{\"sub\":\"\",\"exp\":1733274000}"), "empty sub");
    refuse_free(hs256("{\"sub\":\"../etc\",\"exp\":1733274000}"), "sub with a slash");
    refuse_free(hs256("{\"sub\":\"b\\u00f6b\",\"exp\":1733274000}"), "non-ASCII sub");
    {
        char sub[CHAT_USER_MAX + 2], *claims;

        memset(sub, 'u', CHAT_USER_MAX + 1);
        sub[CHAT_USER_MAX + 1] = '\0';
        claims = chat_xasprintf("{\"sub\":\"%s\",\"exp\":1733274000}", sub);
        refuse_free(hs256(claims), "65-character sub");
        free(claims);
    }
    refuse_free(hs256("{\"sub\":123,\"exp\":1733274000}"), "numeric sub");
    refuse_free(hs256("{\"sub\":null,\"exp\":1733274000}"), "null sub");
    refuse_free(hs256("{\"sub\":[\"alice\"],\"exp\":1733274000}"), "array sub");
}
END_TEST

START_TEST(test_verify_missing_sub)
{
    refuse_free(hs256("{\"exp\":1733274000}"), "no sub");
    refuse_free(hs256("{\"user\":\"alice\",\"exp\":1733274000}"), "user instead of sub");
}
END_TEST

START_TEST(test_verify_garbage)
{
    assert_refused("", "empty");
    assert_refused("garbage", "garbage");
    assert_refused("a.b.c", "a.b.c");
    assert_refused("!!!.???.###", "not base64url");
    assert_refused("eyJhbGciOiJIUzI1NiJ9.bm90IGpzb24.c2ln", "claims not JSON");
    refuse_free(hand_token("not json", "{\"sub\":\"alice\",\"exp\":1733274000}", "c2ln"),
                "header not JSON");
    refuse_free(hand_token("[\"HS256\"]", "{\"sub\":\"alice\",\"exp\":1733274000}", "c2ln"),
                "header an array");
}
END_TEST

START_TEST(test_verify_empty_parts)
{
    /* Empty segments: libjwt 1.10 decodes an empty header or payload into a
     * zero-byte allocation and writes past it, so these also matter under
     * valgrind, not only for the return value. */
    char *good = chat_auth_mint(secret, "alice", NOW, 3600);
    char *h = part(good, 0), *c = part(good, 1), *sig = part(good, 2), *t;

    assert_refused(".", "one dot");
    assert_refused("..", "two dots");
    assert_refused("...", "three dots");
    t = chat_xasprintf(".%s.%s", c, sig);
    refuse_free(t, "empty header");
    t = chat_xasprintf("%s..%s", h, sig);
    refuse_free(t, "empty payload");
    t = chat_xasprintf("%s.%s.", h, c);
    refuse_free(t, "empty signature");
    free(h);
    free(c);
    free(sig);
    free(good);
}
END_TEST

START_TEST(test_verify_part_count)
{
    char *good = chat_auth_mint(secret, "alice", NOW, 3600);
    char *h = part(good, 0), *c = part(good, 1), *t;

    t = chat_xasprintf("%s.%s", h, c);
    refuse_free(t, "two parts");
    t = chat_xasprintf("%s", h);
    refuse_free(t, "one part");
    t = chat_xasprintf("%s.x", good);
    refuse_free(t, "four parts");
    t = chat_xasprintf("%s.", good);
    refuse_free(t, "four parts, last empty");
    t = chat_xasprintf("Bearer %s", good);
    refuse_free(t, "with the Bearer prefix");
    t = chat_xasprintf("%s ", good);
    refuse_free(t, "trailing space");
    free(h);
    free(c);
    free(good);
}
END_TEST

START_TEST(test_verify_tampered)
{
    char *good = chat_auth_mint(secret, "alice", NOW, 3600);
    char *h = part(good, 0), *sig = part(good, 2);
    char *evil = b64url("{\"sub\":\"mallory\",\"exp\":1733274000}");
    char *longer = b64url("{\"sub\":\"alice\",\"exp\":9999999999}");
    char *t;

    t = chat_xasprintf("%s.%s.%s", h, evil, sig);
    refuse_free(t, "payload swapped");
    t = chat_xasprintf("%s.%s.%s", h, longer, sig);
    refuse_free(t, "exp extended");

    /* A changed signature character (not the last, whose low bits may be unused). */
    t = chat_xstrdup(good);
    {
        char *s = strrchr(t, '.') + 6;

        *s = *s == 'A' ? 'B' : 'A';
    }
    refuse_free(t, "signature changed");
    /* A truncated signature. */
    t = chat_xstrdup(good);
    t[strlen(t) - 1] = '\0';
    refuse_free(t, "signature truncated");
    /* An empty signature. */
    t = chat_xstrdup(good);
    strrchr(t, '.')[1] = '\0';
    refuse_free(t, "signature removed");

    free(h);
    free(sig);
    free(evil);
    free(longer);
    free(good);
}
END_TEST

/* ---------------------------------------------------------------- main */

/* RFC 7515 4.1.11: a validly signed token with a crit header is refused. */
START_TEST(test_verify_crit)
{
    jwt_t *jwt = NULL;
    ck_assert_int_eq(jwt_new(&jwt), 0);
    ck_assert_int_eq(jwt_add_grants_json(jwt, "{\"sub\":\"bob\",\"exp\":4102444800}"), 0);
    ck_assert_int_eq(jwt_add_headers_json(jwt, "{\"crit\":[\"exp\"]}"), 0);
    ck_assert_int_eq(
        jwt_set_alg(jwt, JWT_ALG_HS256, (const unsigned char *)secret, (int)strlen(secret)), 0);
    char *t = jwt_encode_str(jwt);
    jwt_free(jwt);
    ck_assert_ptr_nonnull(t);
    assert_refused(t, "crit header");
    free(t);
}
END_TEST

static Suite *auth_suite(void)
{
    Suite *s = suite_create("auth");
    TCase *tc;

    tc = tcase_create("user");
    tcase_add_test(tc, test_user_valid);
    suite_add_tcase(s, tc);

    tc = tcase_create("mint_verify");
    tcase_add_test(tc, test_mint_verify);
    tcase_add_test(tc, test_mint_verify_edge_users);
    tcase_add_test(tc, test_mint_refuses_bad_user);
    tcase_add_test(tc, test_verify_accepts_libjwt_hs256);
    suite_add_tcase(s, tc);

    tc = tcase_create("refusals");
    tcase_add_test(tc, test_verify_wrong_secret);
    tcase_add_test(tc, test_verify_expired);
    tcase_add_test(tc, test_verify_no_exp);
    tcase_add_test(tc, test_verify_alg_none);
    tcase_add_test(tc, test_verify_other_algs);
    tcase_add_test(tc, test_verify_bad_sub);
    tcase_add_test(tc, test_verify_missing_sub);
    tcase_add_test(tc, test_verify_garbage);
    tcase_add_test(tc, test_verify_empty_parts);
    tcase_add_test(tc, test_verify_part_count);
    tcase_add_test(tc, test_verify_tampered);
    tcase_add_test(tc, test_verify_crit);
    suite_add_tcase(s, tc);

    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(auth_suite());
    int failures;

    srunner_run_all(sr, CK_NORMAL);
    failures = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failures ? 1 : 0;
}
