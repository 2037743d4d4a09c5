/* test_sse.c: Server-Sent Events framing and Last-Event-ID parsing. */
#include <check.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../lib/buf.h"
#include "../../lib/err.h"
#include "../../lib/sse.h"

/* ---------------------------------------------------------------- helpers */

/* The frame written by one chat_sse_event call, with "data:\n" (an empty data
 * line without the optional space) rewritten as "data: \n": a client reads
 * both the same, so either is right. The caller frees it. */
static char *event_frame(const char *event, const char *id, const char *data, size_t len)
{
    struct chat_buf b = {0}, out = {0};
    const char *p;

    chat_sse_event(&b, event, id, data, len);
    ck_assert_ptr_nonnull(b.data);
    ck_assert_uint_eq(strlen(b.data), b.len);
    for (p = b.data; *p;) {
        if (strncmp(p, "data:\n", 6) == 0 && (p == b.data || p[-1] == '\n')) {
            chat_buf_puts(&out, "data: \n");
            p += 6;
        } else {
            chat_buf_append(&out, p, 1);
            p++;
        }
    }
    chat_buf_cleanup(&b);
    return chat_buf_steal(&out);
}

static void assert_frame(const char *event, const char *id, const char *data, const char *want)
{
    char *got = event_frame(event, id, data, strlen(data));

    ck_assert_str_eq(got, want);
    free(got);
}

/* ---------------------------------------------------------------- events */

START_TEST(test_event_exact)
{
    assert_frame("message", "7", "{\"seq\":7,\"body\":\"hi\"}",
                 "event: message\nid: 7\ndata: {\"seq\":7,\"body\":\"hi\"}\n\n");
    assert_frame("receipt", "12345678901234567890", "{}",
                 "event: receipt\nid: 12345678901234567890\ndata: {}\n\n");
}
END_TEST

START_TEST(test_event_optional_fields)
{
    assert_frame(NULL, NULL, "x", "data: x\n\n");
    assert_frame("receipt", NULL, "x", "event: receipt\ndata: x\n\n");
    assert_frame(NULL, "9", "x", "id: 9\ndata: x\n\n");
}
END_TEST

START_TEST(test_event_multiline)
{
    assert_frame("message", "1", "a\nb", "event: message\nid: 1\ndata: a\ndata: b\n\n");
    assert_frame("message", "1", "a\r\nb", "event: message\nid: 1\ndata: a\ndata: b\n\n");
    assert_frame("message", "1", "a\rb", "event: message\nid: 1\ndata: a\ndata: b\n\n");
    assert_frame(NULL, NULL, "one\ntwo\r\nthree\rfour",
                 "data: one\ndata: two\ndata: three\n"
                 "data: four\n\n");
    /* \n\r is two breaks (LF, then CR), not one. */
    assert_frame(NULL, NULL, "a\n\rb", "data: a\ndata: \ndata: b\n\n");
}
END_TEST

START_TEST(test_event_empty_lines_kept)
{
    /* Every break ends a line, so the client gets back exactly what was sent. */
    assert_frame(NULL, NULL, "a\n\nb", "data: a\ndata: \ndata: b\n\n");
    assert_frame(NULL, NULL, "a\n", "data: a\ndata: \n\n");
    assert_frame(NULL, NULL, "\na", "data: \ndata: a\n\n");
    assert_frame(NULL, NULL, "a\r\n\r\nb", "data: a\ndata: \ndata: b\n\n");
    assert_frame(NULL, NULL, "\r", "data: \ndata: \n\n");
    /* Empty data still makes an event the client dispatches. */
    assert_frame("ping", NULL, "", "event: ping\ndata: \n\n");
}
END_TEST

START_TEST(test_event_uses_len)
{
    /* data is data[0..len), not a C string. */
    char *got = event_frame(NULL, "3", "abcdef", 3);

    ck_assert_str_eq(got, "id: 3\ndata: abc\n\n");
    free(got);
}
END_TEST

START_TEST(test_event_appends)
{
    struct chat_buf b = {0};

    chat_sse_retry(&b, 3000);
    chat_sse_event(&b, "message", "1", "x", 1);
    chat_sse_comment(&b, "keepalive");
    chat_sse_event(&b, "message", "2", "y", 1);
    ck_assert_str_eq(b.data, "retry: 3000\n\n"
                             "event: message\nid: 1\ndata: x\n\n"
                             ": keepalive\n\n"
                             "event: message\nid: 2\ndata: y\n\n");
    ck_assert_uint_eq(b.len, strlen(b.data));
    chat_buf_cleanup(&b);
}
END_TEST

/* ---------------------------------------------------------------- comment, retry */

START_TEST(test_comment)
{
    struct chat_buf b = {0};

    chat_sse_comment(&b, "keepalive");
    ck_assert_str_eq(b.data, ": keepalive\n\n");
    chat_buf_cleanup(&b);
}
END_TEST

START_TEST(test_retry)
{
    struct chat_buf b = {0};

    chat_sse_retry(&b, 3000);
    ck_assert_str_eq(b.data, "retry: 3000\n\n");
    chat_buf_reset(&b);
    chat_sse_retry(&b, 0);
    ck_assert_str_eq(b.data, "retry: 0\n\n");
    chat_buf_reset(&b);
    chat_sse_retry(&b, 4294967295u);
    ck_assert_str_eq(b.data, "retry: 4294967295\n\n");
    chat_buf_cleanup(&b);
}
END_TEST

/* ---------------------------------------------------------------- Last-Event-ID */

START_TEST(test_last_event_id_ok)
{
    uint64_t seq = 99;

    ck_assert_int_eq(chat_sse_parse_last_event_id("", &seq), 0);
    ck_assert_uint_eq(seq, 0);
    ck_assert_int_eq(chat_sse_parse_last_event_id("42", &seq), 0);
    ck_assert_uint_eq(seq, 42);
    ck_assert_int_eq(chat_sse_parse_last_event_id("0", &seq), 0);
    ck_assert_uint_eq(seq, 0);
    ck_assert_int_eq(chat_sse_parse_last_event_id("18446744073709551615", &seq), 0);
    ck_assert_uint_eq(seq, UINT64_MAX);
}
END_TEST

START_TEST(test_last_event_id_refused)
{
    static const char *const bad[] = {
        "-1", "abc", "1 ", " 1", "+1", "4a", "1.0", "0x1", "18446744073709551616"};
    uint64_t seq;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        ck_assert_msg(chat_sse_parse_last_event_id(bad[i], &seq) == CHAT_EINVAL, "accepted \"%s\"",
                      bad[i]);
}
END_TEST

/* ---------------------------------------------------------------- main */

static Suite *sse_suite(void)
{
    Suite *s = suite_create("sse");
    TCase *tc;

    tc = tcase_create("event");
    tcase_add_test(tc, test_event_exact);
    tcase_add_test(tc, test_event_optional_fields);
    tcase_add_test(tc, test_event_multiline);
    tcase_add_test(tc, test_event_empty_lines_kept);
    tcase_add_test(tc, test_event_uses_len);
    tcase_add_test(tc, test_event_appends);
    suite_add_tcase(s, tc);

    tc = tcase_create("other_frames");
    tcase_add_test(tc, test_comment);
    tcase_add_test(tc, test_retry);
    suite_add_tcase(s, tc);

    tc = tcase_create("last_event_id");
    tcase_add_test(tc, test_last_event_id_ok);
    tcase_add_test(tc, test_last_event_id_refused);
    suite_add_tcase(s, tc);

    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(sse_suite());
    int failures;

    srunner_run_all(sr, CK_NORMAL);
    failures = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failures ? 1 : 0;
}
