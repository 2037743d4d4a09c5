/* test_json.c: UTF-8 validation, strict object parsing, number reading, error bodies. */
#include <check.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../lib/err.h"
#include "../../lib/json.h"

/* ---------------------------------------------------------------- utf8 */

struct bytes {
    const char *s;
    size_t n;
};

/* The two fields of a struct bytes for a string literal (NULs inside count). */
#define B(lit) lit, sizeof(lit) - 1

START_TEST(test_utf8_valid)
{
    static const struct bytes ok[] = {
        {B("")},
        {B("hello, world")},
        {B("\x7f")},
        {B("\xc2\x80")},          /* U+0080, first 2-byte */
        {B("\xc3\xa9t\xc3\xa9")}, /* "ete" with two e-acutes */
        {B("\xdf\xbf")},          /* U+07FF, last 2-byte */
        {B("\xe0\xa0\x80")},      /* U+0800, first 3-byte */
        {B("\xe2\x82\xac")},      /* U+20AC euro sign */
        {B("\xed\x9f\xbf")},      /* U+D7FF, just below the surrogates */
        {B("\xee\x80\x80")},      /* U+E000, just above them */
        {B("\xef\xbf\xbf")},      /* U+FFFF */
        {B("\xf0\x90\x80\x80")},  /* U+10000, first 4-byte */
        {B("\xf0\x9f\x98\x80")},  /* U+1F600 emoji */
        {B("hi \xf0\x9f\x91\x8b\xf0\x9f\x8f\xbd!")},
        {B("\xf4\x8f\xbf\xbf")}, /* U+10FFFF, the last code point */
    };

    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++)
        ck_assert_msg(chat_utf8_valid(ok[i].s, ok[i].n), "refused valid case %zu", i);
}
END_TEST

START_TEST(test_utf8_invalid)
{
    static const struct bytes bad[] = {
        {B("\x80")}, /* lone continuation */
        {B("\xbf")},
        {B("a\x80z")},
        {B("\xc3")},     /* truncated 2-byte */
        {B("\xe2\x82")}, /* truncated 3-byte */
        {B("\xe2")},
        {B("\xf0\x9f\x98")}, /* truncated 4-byte */
        {B("\xf0\x9f")},
        {B("ab\xf0\x9f\x98")}, /* truncated at the end of the text */
        {B("\xc3\x28")},       /* continuation missing */
        {B("\xe2\x28\xa1")},
        {B("\xf0\x28\x8c\xbc")},
        {B("\xc0\x80")}, /* overlong NUL */
        {B("\xc0\xaf")}, /* overlong '/' */
        {B("\xc1\xbf")},
        {B("\xe0\x80\x80")}, /* overlong 3-byte */
        {B("\xe0\x9f\xbf")},
        {B("\xf0\x80\x80\x80")}, /* overlong 4-byte */
        {B("\xf0\x8f\xbf\xbf")},
        {B("\xed\xa0\x80")},             /* U+D800, a surrogate */
        {B("\xed\xbf\xbf")},             /* U+DFFF */
        {B("\xed\xa0\xbd\xed\xb8\x80")}, /* a CESU-8 surrogate pair */
        {B("\xf4\x90\x80\x80")},         /* U+110000 */
        {B("\xf5\x80\x80\x80")},
        {B("\xf7\xbf\xbf\xbf")},
        {B("\xf8\x88\x80\x80\x80")}, /* 5-byte form */
        {B("\xfc\x84\x80\x80\x80\x80")},
        {B("\xfe")},
        {B("\xff")},
        {B("ok\xffok")},
    };

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        ck_assert_msg(!chat_utf8_valid(bad[i].s, bad[i].n), "accepted invalid case %zu", i);
}
END_TEST

START_TEST(test_utf8_length_bounded)
{
    /* Only s[0..n) counts: cutting a sequence makes it invalid, and bytes past
     * n are not read. */
    ck_assert(!chat_utf8_valid("\xc3\xa9", 1));
    ck_assert(!chat_utf8_valid("\xf0\x9f\x98\x80", 3));
    ck_assert(chat_utf8_valid("abc\xff", 3));
    ck_assert(chat_utf8_valid("\xc3\xa9\xff", 2));
}
END_TEST

/* ---------------------------------------------------------------- parse_object */

static cJSON *parse(const char *s, int *err, const char **why)
{
    *err = 0;
    *why = NULL;
    return chat_json_parse_object(s, strlen(s), err, why);
}

static void assert_refused(const char *s, size_t len)
{
    int err = 0;
    const char *why = NULL;
    cJSON *o = chat_json_parse_object(s, len, &err, &why);

    if (o)
        cJSON_Delete(o);
    ck_assert_msg(o == NULL, "accepted: %.*s", (int)len, s);
    ck_assert_msg(err == CHAT_EINVAL, "err %d for %.*s", err, (int)len, s);
    ck_assert_msg(why != NULL && why[0] != '\0', "no reason for %.*s", (int)len, s);
}

#define REFUSED(lit) assert_refused(lit, sizeof(lit) - 1)
#define REFUSED_N(p, n) assert_refused(p, n)

START_TEST(test_parse_object_ok)
{
    int err;
    const char *why;
    cJSON *o;

    o = parse("{}", &err, &why);
    ck_assert_ptr_nonnull(o);
    ck_assert(cJSON_IsObject(o));
    cJSON_Delete(o);

    o = parse(" {\"to\": \"bob\", \"body\": \"hi\", \"n\": [1, 2, {\"x\": null}]} \n", &err, &why);
    ck_assert_ptr_nonnull(o);
    ck_assert_str_eq(chat_json_string(o, "to"), "bob");
    ck_assert_str_eq(chat_json_string(o, "body"), "hi");
    ck_assert_ptr_null(chat_json_string(o, "n"));
    ck_assert_ptr_null(chat_json_string(o, "missing"));
    cJSON_Delete(o);
}
END_TEST

START_TEST(test_parse_object_honours_len)
{
    /* The body is not NUL-terminated where len ends: what follows is not read. */
    static const char body[] = "{\"a\":\"b\"}garbage";
    int err = 0;
    const char *why = NULL;
    cJSON *o = chat_json_parse_object(body, 9, &err, &why);

    ck_assert_msg(o != NULL, "refused: %s", why ? why : "(no reason)");
    ck_assert_str_eq(chat_json_string(o, "a"), "b");
    cJSON_Delete(o);
    /* And the whole of it, trailing garbage included, is refused. */
    REFUSED("{\"a\":\"b\"}garbage");
    REFUSED("{\"a\":1} {\"b\":2}");
}
END_TEST

START_TEST(test_parse_object_not_object)
{
    REFUSED("[]");
    REFUSED("[{\"a\":1}]");
    REFUSED("\"string\"");
    REFUSED("42");
    REFUSED("-1.5");
    REFUSED("true");
    REFUSED("false");
    REFUSED("null");
}
END_TEST

START_TEST(test_parse_object_malformed)
{
    REFUSED("");
    REFUSED("   ");
    REFUSED("{");
    REFUSED("}");
    REFUSED("{\"a\"}");
    REFUSED("{\"a\":}");
    REFUSED("{\"a\":1,}");
    REFUSED("{a:1}");
    REFUSED("{'a':1}");
    REFUSED("{\"a\":\"unterminated}");
    REFUSED("{\"a\":\"bad escape \\q\"}");
    REFUSED("{\"a\":\"\\u12\"}");
    REFUSED("\x01");
}
END_TEST

/* Nesting is bounded at CHAT_JSON_MAX_DEPTH; brackets inside strings do
 * not count. */
START_TEST(test_parse_object_depth)
{
    char body[6 * (CHAT_JSON_MAX_DEPTH + 2)];
    int err;
    const char *why;
    for (int depth = 1; depth <= CHAT_JSON_MAX_DEPTH + 1; depth++) {
        size_t n = 0;
        body[n++] = '{';
        for (int i = 1; i < depth; i++) {
            memcpy(body + n, "\"a\":{", 5);
            n += 5;
        }
        for (int i = 1; i < depth; i++)
            body[n++] = '}';
        body[n++] = '}';
        cJSON *o = chat_json_parse_object(body, n, &err, &why);
        if (depth <= CHAT_JSON_MAX_DEPTH) {
            ck_assert_msg(o != NULL, "depth %d refused: %s", depth, why ? why : "");
            cJSON_Delete(o);
        } else {
            ck_assert_ptr_null(o);
            ck_assert_int_eq(err, CHAT_EINVAL);
            ck_assert_ptr_nonnull(strstr(why, "deep"));
        }
    }
    cJSON *o = parse("{\"body\": \"[[[[[[[[[[[[{{{{{{{{{{\"}", &err, &why);
    ck_assert_ptr_nonnull(o);
    cJSON_Delete(o);
    /* A very deep body is refused without recursion. */
    static char deep[200001];
    deep[0] = '{';
    memcpy(deep + 1, "\"a\":", 4);
    memset(deep + 5, '[', sizeof(deep) - 5);
    REFUSED_N(deep, sizeof(deep));
}
END_TEST

START_TEST(test_parse_object_duplicate_names)
{
    int err;
    const char *why;
    static const char *const refused[] = {
        "{\"to\":\"bob\",\"to\":\"carol\"}",
        "{\"a\":1,\"b\":2,\"c\":3,\"b\":4}",
        "{\"x\":{\"k\":1,\"k\":1}}",
        "{\"x\":[{\"k\":1},{\"k\":1,\"k\":2}]}",
        "{\"\":1,\"\":2}",
    };
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
        cJSON *o = parse(refused[i], &err, &why);
        ck_assert_msg(o == NULL, "accepted %s", refused[i]);
        ck_assert_int_eq(err, CHAT_EINVAL);
        ck_assert_ptr_nonnull(strstr(why, "twice"));
    }
    /* The same name in sibling objects, or differing in case, is fine. */
    cJSON *o = parse("{\"x\":[{\"k\":1},{\"k\":2}],\"K\":1,\"k\":2}", &err, &why);
    ck_assert_ptr_nonnull(o);
    cJSON_Delete(o);
}
END_TEST

START_TEST(test_parse_object_bad_utf8)
{
    REFUSED("{\"a\":\"\xff\"}");
    REFUSED("{\"a\":\"caf\xc3\"}");
    REFUSED("{\"a\":\"\xc0\x80\"}");
    REFUSED("{\"a\":\"\xed\xa0\x80\"}");
    REFUSED("{\"a\":\"\xf4\x90\x80\x80\"}");
    REFUSED("{\"a\":[\"ok\", \"\x80\"]}");
    REFUSED("{\"a\":{\"b\":\"\xfe\"}}");
    /* Keys are decoded strings too. */
    REFUSED("{\"\xff\":1}");
}
END_TEST

START_TEST(test_parse_object_nul_escape)
{
    REFUSED("{\"a\":\"\\u0000\"}");
    REFUSED("{\"a\":\"x\\u0000y\"}");
    REFUSED("{\"a\":[\"\\u0000\"]}");
    REFUSED("{\"\\u0000\":1}");
    /* A raw NUL byte inside the body is no better. */
    REFUSED("{\"a\":\"x\0y\"}");
}
END_TEST

/* RFC 8259: control characters inside strings must be escaped. */
START_TEST(test_parse_object_raw_control)
{
    REFUSED("{\"a\":\"line\nbreak\"}");
    REFUSED("{\"a\":\"tab\there\"}");
    REFUSED("{\"a\":\"\x1f\"}");
    /* Escaped they are fine, and so is whitespace between tokens. */
    int err;
    const char *why;
    const char *ok = "{\n\t\"a\" :\r\n \"x\\ny\\\\\"}";
    cJSON *root = chat_json_parse_object(ok, strlen(ok), &err, &why);
    ck_assert_ptr_nonnull(root);
    ck_assert_str_eq(chat_json_string(root, "a"), "x\ny\\");
    cJSON_Delete(root);
}
END_TEST

START_TEST(test_parse_object_lone_surrogate)
{
    /* A lone surrogate escape would decode to invalid UTF-8. */
    REFUSED("{\"a\":\"\\ud83d\"}");
    REFUSED("{\"a\":\"\\ude00\"}");
    REFUSED("{\"a\":\"\\ud83dx\"}");
    REFUSED("{\"a\":\"\\ud83d\\u0041\"}");
}
END_TEST

START_TEST(test_parse_object_escapes)
{
    int err;
    const char *why;
    cJSON *o = parse("{\"e\":\"\\u00e9\",\"euro\":\"\\u20AC\",\"smile\":\"\\ud83d\\ude00\","
                     "\"raw\":\"\xf0\x9f\x98\x80\",\"ctl\":\"a\\nb\\t\\\"\\\\\\/\","
                     "\"one\":\"\\u0001\"}",
                     &err, &why);

    ck_assert_msg(o != NULL, "refused: %s", why ? why : "(no reason)");
    ck_assert_str_eq(chat_json_string(o, "e"), "\xc3\xa9");
    ck_assert_str_eq(chat_json_string(o, "euro"), "\xe2\x82\xac");
    ck_assert_str_eq(chat_json_string(o, "smile"), "\xf0\x9f\x98\x80");
    ck_assert_str_eq(chat_json_string(o, "raw"), "\xf0\x9f\x98\x80");
    ck_assert_str_eq(chat_json_string(o, "ctl"), "a\nb\t\"\\/");
    ck_assert_str_eq(chat_json_string(o, "one"), "\x01");
    cJSON_Delete(o);
}
END_TEST

/* ---------------------------------------------------------------- u64 */

static cJSON *must_parse(const char *s)
{
    int err;
    const char *why;
    cJSON *o = parse(s, &err, &why);

    ck_assert_msg(o != NULL, "refused %s: %s", s, why ? why : "(no reason)");
    return o;
}

START_TEST(test_json_u64_ok)
{
    cJSON *o = must_parse("{\"zero\":0,\"n\":42,\"ts\":1733270400123,\"max\":9007199254740992,"
                          "\"exp\":1e3,\"dot\":7.0}");
    uint64_t v = 1;

    ck_assert_int_eq(chat_json_u64(o, "zero", &v), 0);
    ck_assert_uint_eq(v, 0);
    ck_assert_int_eq(chat_json_u64(o, "n", &v), 0);
    ck_assert_uint_eq(v, 42);
    ck_assert_int_eq(chat_json_u64(o, "ts", &v), 0);
    ck_assert_uint_eq(v, UINT64_C(1733270400123));
    ck_assert_int_eq(chat_json_u64(o, "max", &v), 0);
    ck_assert_uint_eq(v, UINT64_C(9007199254740992));
    /* The same integer however it is written. */
    ck_assert_int_eq(chat_json_u64(o, "exp", &v), 0);
    ck_assert_uint_eq(v, 1000);
    ck_assert_int_eq(chat_json_u64(o, "dot", &v), 0);
    ck_assert_uint_eq(v, 7);
    cJSON_Delete(o);
}
END_TEST

START_TEST(test_json_u64_refused)
{
    static const char *const bad[] = {"neg",     "frac", "str", "big", "huge",
                                      "above53", "bool", "arr", "obj", "tiny"};
    cJSON *o = must_parse("{\"neg\":-1,\"frac\":1.5,\"str\":\"5\",\"big\":18446744073709551616,"
                          "\"huge\":1e300,\"above53\":9007199254740994,"
                          "\"bool\":true,\"arr\":[1],\"obj\":{\"a\":1},\"tiny\":0.0001}");
    uint64_t v;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        ck_assert_msg(chat_json_u64(o, bad[i], &v) == CHAT_EINVAL, "member %s not refused", bad[i]);
    ck_assert_int_eq(chat_json_u64(o, "absent", &v), CHAT_ENOTFOUND);
    cJSON_Delete(o);
}
END_TEST

START_TEST(test_json_u64_null)
{
    /* null is present but is not a number: json.h promises CHAT_ENOTFOUND only
     * for an absent member and CHAT_EINVAL for anything that is not a number. */
    cJSON *o = must_parse("{\"n\":null}");
    uint64_t v;

    ck_assert_int_eq(chat_json_u64(o, "n", &v), CHAT_EINVAL);
    cJSON_Delete(o);
}
END_TEST

/* ---------------------------------------------------------------- print, error, add_int */

START_TEST(test_json_print_compact)
{
    cJSON *o = cJSON_CreateObject();
    char *s;

    cJSON_AddStringToObject(o, "a", "x y");
    cJSON_AddItemToObject(o, "b", cJSON_CreateArray());
    chat_json_add_int(o, "ts", INT64_C(1733270400123));
    chat_json_add_int(o, "seq", 0);
    chat_json_add_int(o, "neg", -5);
    s = chat_json_print(o);
    ck_assert_str_eq(s, "{\"a\":\"x y\",\"b\":[],\"ts\":1733270400123,\"seq\":0,\"neg\":-5}");
    free(s);
    cJSON_Delete(o);
}
END_TEST

START_TEST(test_json_add_int_exact)
{
    /* Up to 2^53 every integer must come out with its exact value. cJSON prints
     * a double with %1.15g and keeps that when it is within one ulp, which
     * loses the last digit of some 16-digit values (8000000000000001 -> 8e+15). */
    static const int64_t values[] = {
        INT64_C(1733270400123),    INT64_C(999999999999999),  INT64_C(1000000000000000),
        INT64_C(1000000000000001), INT64_C(4503599627370497), INT64_C(8000000000000001),
        INT64_C(9007199254740991), INT64_C(9007199254740992), -INT64_C(9007199254740991),
    };

    for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); i++) {
        cJSON *o = cJSON_CreateObject();
        char *s, *end;
        long double got;

        chat_json_add_int(o, "v", values[i]);
        s = chat_json_print(o);
        ck_assert_msg(strncmp(s, "{\"v\":", 5) == 0, "printed %s", s);
        /* long double holds every integer up to 2^64 exactly on this target;
         * a printed value that is off by one reads back off by one. */
        got = strtold(s + 5, &end);
        ck_assert_msg(strcmp(end, "}") == 0 && got == (long double)values[i], "%lld printed as %s",
                      (long long)values[i], s);
        free(s);
        cJSON_Delete(o);
    }
}
END_TEST

START_TEST(test_json_error_body)
{
    static const char msg[] = "bad \"to\": caf\xc3\xa9 \\ <x>\n";
    char *body = chat_json_error("bad_request", msg);
    int err;
    const char *why;
    cJSON *o = parse(body, &err, &why), *e;

    ck_assert_msg(o != NULL, "not a JSON object: %s", body);
    e = cJSON_GetObjectItemCaseSensitive(o, "error");
    ck_assert(cJSON_IsObject(e));
    ck_assert_str_eq(chat_json_string(e, "code"), "bad_request");
    ck_assert_str_eq(chat_json_string(e, "message"), msg);
    /* Nothing else at either level. */
    ck_assert_int_eq(cJSON_GetArraySize(o), 1);
    ck_assert_int_eq(cJSON_GetArraySize(e), 2);
    cJSON_Delete(o);
    free(body);
}
END_TEST

/* ---------------------------------------------------------------- parse_u64 */

START_TEST(test_parse_u64_ok)
{
    uint64_t v = 1;

    ck_assert_int_eq(chat_parse_u64("0", &v), 0);
    ck_assert_uint_eq(v, 0);
    ck_assert_int_eq(chat_parse_u64("42", &v), 0);
    ck_assert_uint_eq(v, 42);
    ck_assert_int_eq(chat_parse_u64("18446744073709551615", &v), 0);
    ck_assert_uint_eq(v, UINT64_MAX);
    ck_assert_int_eq(chat_parse_u64("9007199254740993", &v), 0);
    ck_assert_uint_eq(v, UINT64_C(9007199254740993));
}
END_TEST

START_TEST(test_parse_u64_refused)
{
    static const char *const bad[] = {
        "",
        "-1",
        "-0",
        "+1",
        " 1",
        "1 ",
        "1a",
        "a1",
        "0x10",
        "1.0",
        "1e3",
        "\t1",
        "1\n",
        "18446744073709551616",
        "18446744073709551620",
        "99999999999999999999",
        "184467440737095516150",
    };
    uint64_t v;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        ck_assert_msg(chat_parse_u64(bad[i], &v) == CHAT_EINVAL, "accepted \"%s\"", bad[i]);
}
END_TEST

/* ---------------------------------------------------------------- main */

static Suite *json_suite(void)
{
    Suite *s = suite_create("json");
    TCase *tc;

    tc = tcase_create("utf8");
    tcase_add_test(tc, test_utf8_valid);
    tcase_add_test(tc, test_utf8_invalid);
    tcase_add_test(tc, test_utf8_length_bounded);
    suite_add_tcase(s, tc);

    tc = tcase_create("parse_object");
    tcase_add_test(tc, test_parse_object_ok);
    tcase_add_test(tc, test_parse_object_raw_control);
    tcase_add_test(tc, test_parse_object_honours_len);
    tcase_add_test(tc, test_parse_object_not_object);
    tcase_add_test(tc, test_parse_object_malformed);
    tcase_add_test(tc, test_parse_object_bad_utf8);
    tcase_add_test(tc, test_parse_object_depth);
    tcase_add_test(tc, test_parse_object_duplicate_names);
    tcase_add_test(tc, test_parse_object_nul_escape);
    tcase_add_test(tc, test_parse_object_lone_surrogate);
    tcase_add_test(tc, test_parse_object_escapes);
    suite_add_tcase(s, tc);

    tc = tcase_create("values");
    tcase_add_test(tc, test_json_u64_ok);
    tcase_add_test(tc, test_json_u64_refused);
    tcase_add_test(tc, test_json_u64_null);
    tcase_add_test(tc, test_json_print_compact);
    tcase_add_test(tc, test_json_add_int_exact);
    tcase_add_test(tc, test_json_error_body);
    tcase_add_test(tc, test_parse_u64_ok);
    tcase_add_test(tc, test_parse_u64_refused);
    suite_add_tcase(s, tc);

    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(json_suite());
    int failures;

    srunner_run_all(sr, CK_NORMAL);
    failures = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failures ? 1 : 0;
}
