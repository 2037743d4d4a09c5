/* fuzz_jwt.c: bearer tokens through chat_auth_verify, and minted tokens against a reference.
 *
 * The input, up to its first NUL, is a token as it arrives after "Bearer ". Checked, besides
 * the sanitizers:
 *   - chat_auth_verify returns 0 or CHAT_EAUTH with a reason, never anything else;
 *   - a token it accepts really is HS256 under FUZZ_SECRET by the reference below (our own
 *     SHA-256/HMAC and a strict base64url decoder, not libjwt's), has "alg":"HS256" in its
 *     header, an exp after FUZZ_NOW, an nbf (if any) no later than FUZZ_NOW + 60 and a sub
 *     equal to the user it reports;
 *   - when the input is a valid user id: chat_auth_mint gives a token that the reference
 *     verifies, that chat_auth_verify accepts for that user until it expires and refuses from
 *     its exp on, and that is refused once any one byte of it is changed.
 * The seeds in corpus/fuzz_jwt were signed with FUZZ_SECRET and expire in 2100 (see
 * gen_corpus.py), so they stay valid at FUZZ_NOW whenever the suite runs. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "auth.h"
#include "err.h"

#define FUZZ_SECRET "fuzz-secret-not-for-production-012345678" /* 40 characters */
#define FUZZ_NOW 1700000000                                    /* 2023-11-14 */
#define FUZZ_TTL 3600

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);               \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

_Static_assert(sizeof(FUZZ_SECRET) - 1 == 40, "the secret is 40 characters");

/* ------------------------------------------------------------------------ */
/* Reference SHA-256 and HMAC (FIPS 180-4, RFC 2104)                        */
/* ------------------------------------------------------------------------ */

struct sha256 {
    uint32_t h[8];
    uint64_t bytes;
    unsigned char block[64];
    size_t used;
};

static const uint32_t sha256_k[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

static uint32_t ror(uint32_t x, int n)
{
    return (x >> n) | (x << (32 - n));
}

static void sha256_block(struct sha256 *c, const unsigned char *p)
{
    uint32_t w[64];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
               (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = ror(w[i - 15], 7) ^ ror(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ror(w[i - 2], 17) ^ ror(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = c->h[0], b = c->h[1], cc = c->h[2], d = c->h[3];
    uint32_t e = c->h[4], f = c->h[5], g = c->h[6], h = c->h[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 =
            h + (ror(e, 6) ^ ror(e, 11) ^ ror(e, 25)) + ((e & f) ^ (~e & g)) + sha256_k[i] + w[i];
        uint32_t t2 = (ror(a, 2) ^ ror(a, 13) ^ ror(a, 22)) + ((a & b) ^ (a & cc) ^ (b & cc));
        h = g;
        g = f;
        f = e;
        e = d + t1;
        d = cc;
        cc = b;
        b = a;
        a = t1 + t2;
    }
    c->h[0] += a;
    c->h[1] += b;
    c->h[2] += cc;
    c->h[3] += d;
    c->h[4] += e;
    c->h[5] += f;
    c->h[6] += g;
    c->h[7] += h;
}

static void sha256_init(struct sha256 *c)
{
    static const uint32_t iv[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memcpy(c->h, iv, sizeof(iv));
    c->bytes = 0;
    c->used = 0;
}

static void sha256_update(struct sha256 *c, const void *data, size_t n)
{
    const unsigned char *p = data;
    c->bytes += n;
    while (n > 0) {
        size_t take = 64 - c->used < n ? 64 - c->used : n;
        memcpy(c->block + c->used, p, take);
        c->used += take;
        p += take;
        n -= take;
        if (c->used == 64) {
            sha256_block(c, c->block);
            c->used = 0;
        }
    }
}

static void sha256_final(struct sha256 *c, unsigned char out[32])
{
    uint64_t bits = c->bytes * 8;
    unsigned char pad = 0x80;
    sha256_update(c, &pad, 1);
    pad = 0;
    while (c->used != 56)
        sha256_update(c, &pad, 1);
    unsigned char len[8];
    for (int i = 0; i < 8; i++)
        len[i] = (unsigned char)(bits >> (56 - 8 * i));
    sha256_update(c, len, 8);
    for (int i = 0; i < 8; i++) {
        out[4 * i] = (unsigned char)(c->h[i] >> 24);
        out[4 * i + 1] = (unsigned char)(c->h[i] >> 16);
        out[4 * i + 2] = (unsigned char)(c->h[i] >> 8);
        out[4 * i + 3] = (unsigned char)c->h[i];
    }
}

/* HMAC-SHA256 with a key of at most 64 bytes (FUZZ_SECRET is 40). */
static void hmac_sha256(const char *key, const void *msg, size_t n, unsigned char out[32])
{
    unsigned char k[64] = {0}, pad[64], inner[32];
    size_t klen = strlen(key);
    CHECK(klen <= sizeof(k));
    memcpy(k, key, klen);
    struct sha256 c;
    for (int i = 0; i < 64; i++)
        pad[i] = k[i] ^ 0x36;
    sha256_init(&c);
    sha256_update(&c, pad, 64);
    sha256_update(&c, msg, n);
    sha256_final(&c, inner);
    for (int i = 0; i < 64; i++)
        pad[i] = k[i] ^ 0x5c;
    sha256_init(&c);
    sha256_update(&c, pad, 64);
    sha256_update(&c, inner, 32);
    sha256_final(&c, out);
}

/* ------------------------------------------------------------------------ */
/* Strict base64url (RFC 7515 2: no padding, unused bits zero)              */
/* ------------------------------------------------------------------------ */

static int b64url_value(char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '-')
        return 62;
    if (c == '_')
        return 63;
    return -1;
}

/* Decodes s[0..n) into a new buffer of *outlen bytes (NUL-terminated for convenience), or
 * returns NULL when s is not canonical base64url. */
static unsigned char *b64url_decode(const char *s, size_t n, size_t *outlen)
{
    if (n % 4 == 1)
        return NULL;
    unsigned char *out = malloc(n * 3 / 4 + 2);
    CHECK(out);
    size_t j = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        int v = b64url_value(s[i]);
        if (v < 0) {
            free(out);
            return NULL;
        }
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[j++] = (unsigned char)(acc >> bits);
        }
    }
    if (bits > 0 && (acc & ((1u << bits) - 1)) != 0) { /* non-zero unused bits */
        free(out);
        return NULL;
    }
    out[j] = '\0';
    *outlen = j;
    return out;
}

/* ------------------------------------------------------------------------ */
/* Reference verification of an accepted token                              */
/* ------------------------------------------------------------------------ */

/* Decodes one base64url part holding a JSON object; NULL when it does not. */
static cJSON *json_part(const char *s, size_t n)
{
    size_t len;
    unsigned char *raw = b64url_decode(s, n, &len);
    if (!raw)
        return NULL;
    cJSON *j = cJSON_ParseWithLength((const char *)raw, len);
    free(raw);
    if (j && !cJSON_IsObject(j)) {
        cJSON_Delete(j);
        return NULL;
    }
    return j;
}

/* Aborts unless token is an HS256 JWS under FUZZ_SECRET, valid at now, with sub == user. */
static void ref_check_accepted(const char *token, const char *user, int64_t now)
{
    const char *dot1 = strchr(token, '.');
    CHECK(dot1);
    const char *dot2 = strchr(dot1 + 1, '.');
    CHECK(dot2 && !strchr(dot2 + 1, '.'));

    unsigned char mac[32];
    hmac_sha256(FUZZ_SECRET, token, (size_t)(dot2 - token), mac);
    size_t siglen = 0;
    unsigned char *sig = b64url_decode(dot2 + 1, strlen(dot2 + 1), &siglen);
    if (!sig || siglen != 32 || memcmp(sig, mac, 32) != 0)
        fprintf(stderr, "accepted a token whose signature is not HS256 under the secret\n");
    CHECK(sig && siglen == 32 && memcmp(sig, mac, 32) == 0);
    free(sig);

    cJSON *header = json_part(token, (size_t)(dot1 - token));
    CHECK(header);
    const cJSON *alg = cJSON_GetObjectItemCaseSensitive(header, "alg");
    CHECK(cJSON_IsString(alg) && strcmp(alg->valuestring, "HS256") == 0);
    cJSON_Delete(header);

    cJSON *claims = json_part(dot1 + 1, (size_t)(dot2 - dot1 - 1));
    CHECK(claims);
    const cJSON *exp = cJSON_GetObjectItemCaseSensitive(claims, "exp");
    CHECK(cJSON_IsNumber(exp) && exp->valuedouble > (double)now);
    const cJSON *nbf = cJSON_GetObjectItemCaseSensitive(claims, "nbf");
    CHECK(!cJSON_IsNumber(nbf) || nbf->valuedouble <= (double)(now + 60));
    const cJSON *sub = cJSON_GetObjectItemCaseSensitive(claims, "sub");
    CHECK(cJSON_IsString(sub) && strcmp(sub->valuestring, user) == 0);
    cJSON_Delete(claims);
}

/* chat_auth_verify with its contract checked; returns its result. */
static int verify(const char *token, int64_t now, char user[CHAT_USER_MAX + 1])
{
    const char *why = "unset";
    memset(user, 0, CHAT_USER_MAX + 1);
    int rc = chat_auth_verify(FUZZ_SECRET, token, now, user, &why);
    CHECK(rc == 0 || rc == CHAT_EAUTH);
    if (rc == 0) {
        CHECK(why == NULL);
        CHECK(chat_user_valid(user));
        ref_check_accepted(token, user, now);
    } else {
        CHECK(why && *why);
    }
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Minting                                                                  */
/* ------------------------------------------------------------------------ */

static const char b64url_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* A token differing from t in the byte at i must be refused, whatever the change. */
static void check_tampered(const char *t, size_t i, char c)
{
    char user[CHAT_USER_MAX + 1];
    char *bad = strdup(t);
    CHECK(bad);
    if (bad[i] == c) {
        free(bad);
        return;
    }
    bad[i] = c;
    if (verify(bad, FUZZ_NOW, user) == 0)
        fprintf(stderr, "a changed token was accepted: %s\n", bad);
    CHECK(verify(bad, FUZZ_NOW, user) == CHAT_EAUTH);
    free(bad);
}

static void check_mint(const char *id, const uint8_t *data, size_t size)
{
    char user[CHAT_USER_MAX + 1];
    char *t = chat_auth_mint(FUZZ_SECRET, id, FUZZ_NOW, FUZZ_TTL);
    CHECK(t);
    CHECK(verify(t, FUZZ_NOW, user) == 0 && strcmp(user, id) == 0);
    CHECK(verify(t, FUZZ_NOW + FUZZ_TTL - 1, user) == 0 && strcmp(user, id) == 0);
    CHECK(verify(t, FUZZ_NOW + FUZZ_TTL, user) == CHAT_EAUTH); /* exp <= now: expired */

    /* Two positions from the input, each changed to another base64url character (the shape
     * check passes, the signature must not) and to a flipped low bit (anything goes). */
    size_t n = strlen(t);
    uint32_t hash = 2166136261u;
    for (size_t i = 0; i < size; i++)
        hash = (hash ^ data[i]) * 16777619u;
    size_t positions[2] = {hash % n, n - 1 - (hash >> 16) % n};
    for (int k = 0; k < 2; k++) {
        size_t i = positions[k];
        const char *at = strchr(b64url_alphabet, t[i]);
        size_t idx = at && t[i] ? (size_t)(at - b64url_alphabet) : 0;
        check_tampered(t, i, b64url_alphabet[(idx + 1 + (hash >> 8) % 63) % 64]);
        check_tampered(t, i, (char)(t[i] ^ 0x01));
    }
    free(t);
}

/* ------------------------------------------------------------------------ */
/* Entry point                                                              */
/* ------------------------------------------------------------------------ */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *token = malloc(size + 1);
    CHECK(token);
    if (size)
        memcpy(token, data, size);
    token[size] = '\0';

    char user[CHAT_USER_MAX + 1];
    verify(token, FUZZ_NOW, user);
    if (chat_user_valid(token))
        check_mint(token, data, size);
    free(token);
    return 0;
}
