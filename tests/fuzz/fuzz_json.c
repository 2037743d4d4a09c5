/* fuzz_json.c: request bodies through chat_json_parse_object, and chat_utf8_valid against a
 * reference decoder.
 *
 * The input is a request body as the API receives it (bytes and a length, not a C string).
 * Checked, besides the sanitizers:
 *   - chat_utf8_valid agrees with decode_utf8() below, a decoder written the other way round
 *     (assemble the code point, then judge it) from RFC 3629;
 *   - a body that parses is valid UTF-8 without NUL, is an object, and every string and key in
 *     the tree is valid UTF-8 (json.h promises it of every decoded string);
 *   - a refused body gives CHAT_EINVAL and a reason;
 *   - chat_json_string and chat_json_u64 on the members the handlers read keep their contracts;
 *   - the printed tree parses again and prints the same (the API prints what it built).
 * A disagreement calls abort(), which libFuzzer reports as a crash with the input saved. */
#include <math.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "json.h"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);               \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* ------------------------------------------------------------------------ */
/* Reference UTF-8 decoder                                                  */
/* ------------------------------------------------------------------------ */

/* Decodes the sequence at s[0..n) into *cp and returns its length, or 0 when it is not a
 * well-formed RFC 3629 sequence. Lead byte by bit pattern, then the code point is judged:
 * shortest form, not a surrogate, at most U+10FFFF. */
static size_t decode_utf8(const unsigned char *s, size_t n, uint32_t *cp)
{
    static const uint32_t min_for_len[5] = {0, 0, 0x80, 0x800, 0x10000};
    size_t len;
    uint32_t v;
    if (s[0] < 0x80) {
        *cp = s[0];
        return 1;
    } else if ((s[0] & 0xE0) == 0xC0) {
        len = 2;
        v = s[0] & 0x1Fu;
    } else if ((s[0] & 0xF0) == 0xE0) {
        len = 3;
        v = s[0] & 0x0Fu;
    } else if ((s[0] & 0xF8) == 0xF0) {
        len = 4;
        v = s[0] & 0x07u;
    } else {
        return 0; /* a continuation byte, or 0xF8..0xFF */
    }
    if (n < len)
        return 0;
    for (size_t k = 1; k < len; k++) {
        if ((s[k] & 0xC0) != 0x80)
            return 0;
        v = (v << 6) | (s[k] & 0x3Fu);
    }
    if (v < min_for_len[len] || (v >= 0xD800 && v <= 0xDFFF) || v > 0x10FFFF)
        return 0;
    *cp = v;
    return len;
}

/* Writes cp as UTF-8 into out (4 bytes at least); returns the length. */
static size_t encode_utf8(uint32_t cp, unsigned char *out)
{
    if (cp < 0x80) {
        out[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (unsigned char)(0xC0 | (cp >> 6));
        out[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (unsigned char)(0xE0 | (cp >> 12));
        out[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (unsigned char)(0xF0 | (cp >> 18));
    out[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

/* True when s[0..n) is valid UTF-8 by the reference. A valid string also re-encodes to the
 * same bytes, which checks the decoder itself (a shortest form round-trips). */
static bool ref_utf8_valid(const char *str, size_t n)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < n) {
        uint32_t cp;
        size_t len = decode_utf8(s + i, n - i, &cp);
        if (len == 0)
            return false;
        unsigned char again[4];
        CHECK(encode_utf8(cp, again) == len && memcmp(again, s + i, len) == 0);
        i += len;
    }
    return true;
}

/* ------------------------------------------------------------------------ */
/* Tree checks                                                              */
/* ------------------------------------------------------------------------ */

static bool utf8_cstr(const char *s)
{
    return ref_utf8_valid(s, strlen(s));
}

/* Every key and string value below item is valid UTF-8. */
static void check_tree(const cJSON *item, int depth)
{
    CHECK(depth <= CJSON_NESTING_LIMIT + 1);
    for (const cJSON *c = item->child; c; c = c->next) {
        if (c->string)
            CHECK(utf8_cstr(c->string));
        else
            CHECK(!cJSON_IsObject(item)); /* an object member always has a key */
        if (cJSON_IsString(c))
            CHECK(c->valuestring && utf8_cstr(c->valuestring));
        check_tree(c, depth + 1);
    }
}

/* The members the API handlers read (lib/api), plus two that never appear in seeds. */
static const char *const string_members[] = {"to",   "chat", "body",    "client_msg_id", "name",
                                             "user", "from", "status",  "conversation",  "origin",
                                             "t",    "",     "\xc3\xa9"};
static const char *const u64_members[] = {"up_to", "seq", "ts", "message_id", "after", "x"};

static void check_members(const cJSON *root)
{
    for (size_t i = 0; i < sizeof(string_members) / sizeof(string_members[0]); i++) {
        const char *name = string_members[i];
        const char *v = chat_json_string(root, name);
        const cJSON *m = cJSON_GetObjectItemCaseSensitive(root, name);
        if (v) {
            CHECK(cJSON_IsString(m) && v == m->valuestring);
            CHECK(utf8_cstr(v));
        } else {
            CHECK(!cJSON_IsString(m));
        }
    }
    for (size_t i = 0; i < sizeof(u64_members) / sizeof(u64_members[0]); i++) {
        const char *name = u64_members[i];
        const cJSON *m = cJSON_GetObjectItemCaseSensitive(root, name);
        uint64_t out = UINT64_MAX;
        int rc = chat_json_u64(root, name, &out);
        if (!m) {
            CHECK(rc == CHAT_ENOTFOUND);
            continue;
        }
        CHECK(rc == 0 || rc == CHAT_EINVAL);
        if (rc == 0) {
            /* Parsed input holds no raw items, so only a number gets here. */
            CHECK(cJSON_IsNumber(m));
            CHECK(out <= 9007199254740992ull);
            CHECK((double)out == m->valuedouble);
        } else if (cJSON_IsNumber(m)) {
            double d = m->valuedouble;
            CHECK(!(d >= 0 && d <= 9007199254740992.0 && floor(d) == d));
        }
    }
}

/* What the API sends back is chat_json_print of a tree; it must be a body the API accepts. */
static void check_reprint(const cJSON *root)
{
    char *text = chat_json_print(root);
    int err = 1;
    const char *why = "unset";
    cJSON *again = chat_json_parse_object(text, strlen(text), &err, &why);
    if (!again)
        fprintf(stderr, "printed tree refused (%s): %s\n", why, text);
    CHECK(again && err == 0 && why == NULL);
    char *text2 = chat_json_print(again);
    CHECK(strcmp(text, text2) == 0);
    free(text2);
    cJSON_Delete(again);
    free(text);
}

/* ------------------------------------------------------------------------ */
/* Entry point                                                              */
/* ------------------------------------------------------------------------ */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *body = (const char *)data;
    bool valid = ref_utf8_valid(body, size);
    CHECK(chat_utf8_valid(body, size) == valid);

    /* A copy exactly size bytes long, so ASan sees any read past the end of the body. */
    char *copy = malloc(size ? size : 1);
    CHECK(copy);
    if (size)
        memcpy(copy, data, size);
    int err = 1;
    const char *why = "unset";
    cJSON *root = chat_json_parse_object(size ? copy : NULL, size, &err, &why);
    if (!root) {
        CHECK(err == CHAT_EINVAL && why && *why);
        free(copy);
        return 0;
    }
    CHECK(err == 0 && why == NULL);
    CHECK(valid && !memchr(body, '\0', size));
    CHECK(cJSON_IsObject(root));
    check_tree(root, 0);
    check_members(root);
    check_reprint(root);
    cJSON_Delete(root);
    free(copy);
    return 0;
}
