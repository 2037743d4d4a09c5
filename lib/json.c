/* json.c: JSON helpers and UTF-8 validation. */
#include "json.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "err.h"

bool chat_utf8_valid(const char *str, size_t n)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < n) {
        unsigned char c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t len;
        unsigned lo = 0x80, hi = 0xBF; /* bounds of the second byte */
        if (c >= 0xC2 && c <= 0xDF)
            len = 2;
        else if (c >= 0xE0 && c <= 0xEF) {
            len = 3;
            if (c == 0xE0)
                lo = 0xA0; /* overlong */
            else if (c == 0xED)
                hi = 0x9F; /* surrogates */
        } else if (c >= 0xF0 && c <= 0xF4) {
            len = 4;
            if (c == 0xF0)
                lo = 0x90; /* overlong */
            else if (c == 0xF4)
                hi = 0x8F; /* above U+10FFFF */
        } else
            return false;
        if (n - i < len)
            return false;
        if (s[i + 1] < lo || s[i + 1] > hi)
            return false;
        for (size_t k = 2; k < len; k++)
            if (s[i + k] < 0x80 || s[i + k] > 0xBF)
                return false;
        i += len;
    }
    return true;
}

/* Checks what cJSON lets through: a control character inside a string
 * (RFC 8259 requires them escaped), the escape \u0000, at which cJSON
 * would silently cut the string, and nesting deeper than
 * CHAT_JSON_MAX_DEPTH (cJSON's own limit is 1000 levels of recursion).
 * Returns a reason, or NULL when clean. */
static const char *string_problem(const char *s, size_t n)
{
    bool in_string = false;
    int depth = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!in_string) {
            if (c == '"') {
                in_string = true;
            } else if (c == '{' || c == '[') {
                if (++depth > CHAT_JSON_MAX_DEPTH)
                    return "the body nests objects and arrays more than 8 levels deep";
            } else if (c == '}' || c == ']') {
                depth--;
            }
            continue;
        }
        if (c == '"') {
            in_string = false;
        } else if (c < 0x20) {
            return "control characters in strings must be escaped";
        } else if (c == '\\' && i + 1 < n) {
            if (s[i + 1] == 'u' && n - i >= 6 && memcmp(s + i + 2, "0000", 4) == 0)
                return "NUL characters are not allowed";
            i++; /* skip the escaped character */
        }
    }
    return NULL;
}

static int name_cmp(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* True when an object anywhere in v has a member name twice (RFC 8259 4
 * leaves which one counts to the parser; RFC 7493 2.3 forbids it). Sorting
 * keeps a body of thousands of members linear-logarithmic. Recursion is
 * bounded by CHAT_JSON_MAX_DEPTH, checked before parsing. */
static bool has_duplicate_names(const cJSON *v)
{
    size_t n = 0;
    for (const cJSON *c = v->child; c; c = c->next) {
        if (has_duplicate_names(c))
            return true;
        n++;
    }
    if (!cJSON_IsObject(v) || n < 2)
        return false;
    const char **names = chat_xcalloc(n, sizeof(*names));
    size_t i = 0;
    for (const cJSON *c = v->child; c; c = c->next)
        names[i++] = c->string ? c->string : "";
    qsort(names, n, sizeof(*names), name_cmp);
    bool dup = false;
    for (i = 1; i < n && !dup; i++)
        dup = strcmp(names[i - 1], names[i]) == 0;
    free(names);
    return dup;
}

cJSON *chat_json_parse_object(const char *body, size_t len, int *err, const char **why)
{
    *err = CHAT_EINVAL;
    if (!body || len == 0) {
        *why = "the body is empty; a JSON object is required";
        return NULL;
    }
    if (!chat_utf8_valid(body, len)) {
        *why = "the body is not valid UTF-8";
        return NULL;
    }
    if (memchr(body, '\0', len)) {
        *why = "NUL characters are not allowed";
        return NULL;
    }
    const char *problem = string_problem(body, len);
    if (problem) {
        *why = problem;
        return NULL;
    }
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(body, len, &end, 0);
    if (!root) {
        *why = "the body is not valid JSON";
        return NULL;
    }
    /* cJSON stops at the end of the first value; only whitespace may follow. */
    for (const char *p = end; p && p < body + len; p++) {
        if (*p != ' ' && *p != '\t' && *p != '\r' && *p != '\n') {
            cJSON_Delete(root);
            *why = "the body is not valid JSON";
            return NULL;
        }
    }
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        *why = "the body must be a JSON object";
        return NULL;
    }
    if (has_duplicate_names(root)) {
        cJSON_Delete(root);
        *why = "an object has the same member name twice";
        return NULL;
    }
    *err = 0;
    *why = NULL;
    return root;
}

size_t chat_json_string_len(const char *s, size_t n)
{
    size_t len = 2;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\' || c == '\b' || c == '\f' || c == '\n' || c == '\r' || c == '\t')
            len += 2;
        else if (c < 0x20)
            len += 6;
        else
            len += 1;
    }
    return len;
}

const char *chat_json_string(const cJSON *obj, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, name);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

int chat_json_u64(const cJSON *obj, const char *name, uint64_t *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, name);
    if (!v)
        return CHAT_ENOTFOUND;
    if (cJSON_IsRaw(v)) /* written by chat_json_add_int */
        return chat_parse_u64(v->valuestring, out);
    if (!cJSON_IsNumber(v))
        return CHAT_EINVAL;
    double d = v->valuedouble;
    if (!(d >= 0) || d > 9007199254740992.0 || floor(d) != d)
        return CHAT_EINVAL;
    *out = (uint64_t)d;
    return 0;
}

char *chat_json_print(const cJSON *obj)
{
    char *s = cJSON_PrintUnformatted(obj);
    if (!s)
        abort(); /* cJSON fails only when allocation fails */
    return s;
}

char *chat_json_error(const char *code, const char *message)
{
    cJSON *root = cJSON_CreateObject();
    cJSON *e = cJSON_AddObjectToObject(root, "error");
    cJSON_AddStringToObject(e, "code", code);
    cJSON_AddStringToObject(e, "message", message);
    char *s = chat_json_print(root);
    cJSON_Delete(root);
    return s;
}

void chat_json_add_int(cJSON *obj, const char *name, int64_t v)
{
    /* cJSON prints numbers through a double with a relative tolerance, which
     * rounds large integers ("8e+15"); raw text keeps every digit. */
    char text[24];
    snprintf(text, sizeof(text), "%lld", (long long)v);
    if (!cJSON_AddRawToObject(obj, name, text))
        abort();
}

int chat_parse_u64(const char *s, uint64_t *out)
{
    if (!s || *s < '0' || *s > '9')
        return CHAT_EINVAL;
    uint64_t v = 0;
    for (const char *p = s; *p; p++) {
        if (*p < '0' || *p > '9')
            return CHAT_EINVAL;
        unsigned d = (unsigned)(*p - '0');
        if (v > (UINT64_MAX - d) / 10)
            return CHAT_EINVAL;
        v = v * 10 + d;
    }
    *out = v;
    return 0;
}
