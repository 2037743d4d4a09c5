/* json.h: JSON in and out (cJSON), with the checks cJSON does not make.
 *
 * cJSON accepts any bytes inside strings and turns \u0000 into a silent
 * truncation; chat_json_parse refuses both, so a decoded string is always
 * valid UTF-8 with no NUL. */
#ifndef CHAT_JSON_H
#define CHAT_JSON_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* True when s[0..n) is well-formed UTF-8 (RFC 3629: no overlongs, no
 * surrogates, nothing above U+10FFFF). */
bool chat_utf8_valid(const char *s, size_t n);

/* Objects and arrays nested deeper than this are refused: no request
 * needs more, and a deep one only costs recursion. */
#define CHAT_JSON_MAX_DEPTH 8

/* Parses a request body that must be a JSON object. Returns the tree (the
 * caller frees it with cJSON_Delete) or NULL with *err set to CHAT_EINVAL and
 * a reason in why (static text). */
cJSON *chat_json_parse_object(const char *body, size_t len, int *err, const char **why);

/* The string member name of obj, or NULL when absent or not a string. */
const char *chat_json_string(const cJSON *obj, const char *name);

/* Reads member name of obj as a non-negative integer that a double holds
 * exactly (<= 2^53). Returns 0, CHAT_ENOTFOUND when absent, or CHAT_EINVAL
 * when it is not such a number. */
int chat_json_u64(const cJSON *obj, const char *name, uint64_t *out);

/* The number of bytes cJSON prints for the string s[0..n) as a JSON
 * string, quotes included (a control character takes six). */
size_t chat_json_string_len(const char *s, size_t n);

/* Prints obj without whitespace; the caller frees the result. Never NULL. */
char *chat_json_print(const cJSON *obj);

/* The body {"error": {"code": ..., "message": ...}}; the caller frees it. */
char *chat_json_error(const char *code, const char *message);

/* Adds a number member that holds an integer exactly (ids, seq, ts). */
void chat_json_add_int(cJSON *obj, const char *name, int64_t v);

/* Parses a whole decimal u64 ("0".."18446744073709551615", no sign, no
 * spaces, no leading '+'). Returns 0 or CHAT_EINVAL. */
int chat_parse_u64(const char *s, uint64_t *out);

#endif
