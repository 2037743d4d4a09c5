/* test_core.c: the small core modules: err, buf, alloc, log, id, ratelimit, metrics. */
#include <check.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../lib/alloc.h"
#include "../../lib/buf.h"
#include "../../lib/err.h"
#include "../../lib/id.h"
#include "../../lib/log.h"
#include "../../lib/metrics.h"
#include "../../lib/ratelimit.h"

/* ---------------------------------------------------------------- err */

static const struct {
    int err;
    int status;
    const char *code;
} err_table[] = {
    {CHAT_EINVAL, 400, "bad_request"},          {CHAT_EAUTH, 401, "unauthorized"},
    {CHAT_EFORBIDDEN, 403, "forbidden"},        {CHAT_ENOTFOUND, 404, "not_found"},
    {CHAT_EMETHOD, 405, "method_not_allowed"},  {CHAT_ECONFLICT, 409, "conflict"},
    {CHAT_ETOOLARGE, 413, "payload_too_large"}, {CHAT_EMEDIA, 415, "unsupported_media_type"},
    {CHAT_ERATE, 429, "rate_limited"},          {CHAT_EUNAVAIL, 503, "backend_unavailable"},
    {CHAT_EINTERNAL, 500, "internal_error"},   {CHAT_EBLOCKED, 403, "blocked"},
};

START_TEST(test_err_table)
{
    size_t n = sizeof(err_table) / sizeof(err_table[0]);

    /* Every value between CHAT_ERR_MIN_ and CHAT_OK is in the table above. */
    ck_assert_uint_eq(n, (size_t)(-(CHAT_ERR_MIN_ + 1)));
    for (size_t i = 0; i < n; i++) {
        const char *msg = chat_err_message(err_table[i].err);

        ck_assert_msg(chat_err_status(err_table[i].err) == err_table[i].status,
                      "chat_err_status(%d) = %d, want %d", err_table[i].err,
                      chat_err_status(err_table[i].err), err_table[i].status);
        ck_assert_str_eq(chat_err_code(err_table[i].err), err_table[i].code);
        ck_assert_ptr_nonnull(msg);
        ck_assert_msg(msg[0] != '\0', "empty message for %d", err_table[i].err);
    }
}
END_TEST

START_TEST(test_err_ok_and_unknown)
{
    static const int unknown[] = {CHAT_ERR_MIN_, -99, 1, 42};

    ck_assert_int_eq(chat_err_status(CHAT_OK), 200);
    ck_assert_ptr_nonnull(chat_err_code(CHAT_OK));
    ck_assert_ptr_nonnull(chat_err_message(CHAT_OK));
    for (size_t i = 0; i < sizeof(unknown) / sizeof(unknown[0]); i++) {
        ck_assert_int_eq(chat_err_status(unknown[i]), 500);
        ck_assert_ptr_nonnull(chat_err_code(unknown[i]));
        ck_assert_ptr_nonnull(chat_err_message(unknown[i]));
    }
}
END_TEST

/* ---------------------------------------------------------------- buf */

START_TEST(test_buf_append)
{
    struct chat_buf b = {0};

    chat_buf_append(&b, "abc", 3);
    ck_assert_uint_eq(b.len, 3);
    ck_assert_ptr_nonnull(b.data);
    ck_assert_str_eq(b.data, "abc");
    chat_buf_puts(&b, "def");
    ck_assert_uint_eq(b.len, 6);
    ck_assert_str_eq(b.data, "abcdef");
    /* Bytes, not strings: a NUL inside is kept and counted. */
    chat_buf_append(&b, "g\0h", 3);
    ck_assert_uint_eq(b.len, 9);
    ck_assert_mem_eq(b.data, "abcdefg\0h", 9);
    ck_assert_int_eq(b.data[9], '\0');
    /* An empty append still leaves a terminated buffer. */
    chat_buf_append(&b, "", 0);
    ck_assert_uint_eq(b.len, 9);
    ck_assert_int_eq(b.data[9], '\0');
    ck_assert_uint_ge(b.cap, b.len + 1);
    chat_buf_cleanup(&b);
}
END_TEST

START_TEST(test_buf_empty_append_terminates)
{
    struct chat_buf b = {0};

    chat_buf_append(&b, "", 0);
    ck_assert_ptr_nonnull(b.data);
    ck_assert_uint_eq(b.len, 0);
    ck_assert_str_eq(b.data, "");
    chat_buf_cleanup(&b);
}
END_TEST

START_TEST(test_buf_grow)
{
    struct chat_buf b = {0};

    for (int i = 0; i < 10000; i++)
        chat_buf_append(&b, "x", 1);
    ck_assert_uint_eq(b.len, 10000);
    ck_assert_uint_eq(strlen(b.data), 10000);
    ck_assert_uint_ge(b.cap, 10001);
    chat_buf_cleanup(&b);
}
END_TEST

START_TEST(test_buf_printf)
{
    struct chat_buf b = {0};
    char *big = malloc(5001);

    chat_buf_printf(&b, "%d-%s", 42, "x");
    ck_assert_str_eq(b.data, "42-x");
    ck_assert_uint_eq(b.len, 4);
    /* Longer than any plausible first guess at the size. */
    memset(big, 'y', 5000);
    big[5000] = '\0';
    chat_buf_printf(&b, "[%s]", big);
    ck_assert_uint_eq(b.len, 4 + 5002);
    ck_assert_uint_eq(strlen(b.data), 4 + 5002);
    ck_assert_int_eq(b.data[4], '[');
    ck_assert_int_eq(b.data[4 + 5001], ']');
    chat_buf_printf(&b, "%s", "");
    ck_assert_uint_eq(b.len, 4 + 5002);
    free(big);
    chat_buf_cleanup(&b);
}
END_TEST

START_TEST(test_buf_consume)
{
    struct chat_buf b = {0};

    chat_buf_puts(&b, "hello world");
    chat_buf_consume(&b, 0);
    ck_assert_str_eq(b.data, "hello world");
    chat_buf_consume(&b, 6);
    ck_assert_uint_eq(b.len, 5);
    ck_assert_mem_eq(b.data, "world", 5);
    chat_buf_puts(&b, "!");
    ck_assert_uint_eq(b.len, 6);
    ck_assert_str_eq(b.data, "world!");
    chat_buf_consume(&b, 6);
    ck_assert_uint_eq(b.len, 0);
    chat_buf_puts(&b, "again");
    ck_assert_str_eq(b.data, "again");
    chat_buf_cleanup(&b);
}
END_TEST

START_TEST(test_buf_reset)
{
    struct chat_buf b = {0};

    chat_buf_puts(&b, "abc");
    chat_buf_reset(&b);
    ck_assert_uint_eq(b.len, 0);
    chat_buf_puts(&b, "de");
    ck_assert_uint_eq(b.len, 2);
    ck_assert_str_eq(b.data, "de");
    chat_buf_cleanup(&b);
}
END_TEST

START_TEST(test_buf_steal)
{
    struct chat_buf b = {0};
    char *s;

    chat_buf_puts(&b, "payload");
    s = chat_buf_steal(&b);
    ck_assert_str_eq(s, "payload");
    ck_assert_uint_eq(b.len, 0);
    free(s);
    /* b is empty and usable again. */
    chat_buf_puts(&b, "next");
    ck_assert_str_eq(b.data, "next");
    s = chat_buf_steal(&b);
    ck_assert_str_eq(s, "next");
    free(s);
    /* Stealing an empty (never used) buffer gives "", not NULL. */
    s = chat_buf_steal(&b);
    ck_assert_ptr_nonnull(s);
    ck_assert_str_eq(s, "");
    free(s);
    chat_buf_cleanup(&b);
}
END_TEST

/* ---------------------------------------------------------------- alloc, log */

START_TEST(test_alloc)
{
    char *s = chat_xasprintf("%s:%d", "a", 7);
    char *d = chat_xstrdup("dup");
    char *n = chat_xstrndup("abcdef", 3);
    char *z = chat_xcalloc(4, 4);
    char *m = chat_xmalloc(8);

    ck_assert_str_eq(s, "a:7");
    ck_assert_str_eq(d, "dup");
    ck_assert_str_eq(n, "abc");
    for (int i = 0; i < 16; i++)
        ck_assert_int_eq(z[i], 0);
    m = chat_xrealloc(m, 64);
    memset(m, 1, 64);
    free(s);
    free(d);
    free(n);
    free(z);
    free(m);
}
END_TEST

START_TEST(test_log_parse_level)
{
    enum chat_log_level lv = CHAT_LOG_ERROR;

    ck_assert_int_eq(chat_log_parse_level("debug", &lv), 0);
    ck_assert_int_eq(lv, CHAT_LOG_DEBUG);
    ck_assert_int_eq(chat_log_parse_level("info", &lv), 0);
    ck_assert_int_eq(lv, CHAT_LOG_INFO);
    ck_assert_int_eq(chat_log_parse_level("warn", &lv), 0);
    ck_assert_int_eq(lv, CHAT_LOG_WARN);
    ck_assert_int_eq(chat_log_parse_level("error", &lv), 0);
    ck_assert_int_eq(lv, CHAT_LOG_ERROR);
    ck_assert_int_eq(chat_log_parse_level("verbose", &lv), CHAT_EINVAL);
    ck_assert_int_eq(chat_log_parse_level("", &lv), CHAT_EINVAL);
}
END_TEST

/* ---------------------------------------------------------------- id */

static const char crockford[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

static bool all_crockford(const char *s)
{
    for (; *s; s++)
        if (!strchr(crockford, *s))
            return false;
    return true;
}

START_TEST(test_id_shape)
{
    char id[CHAT_MESSAGE_ID_LEN + 1];

    memset(id, '#', sizeof(id));
    chat_id_new(id, 1733270400123);
    ck_assert_uint_eq(strlen(id), CHAT_MESSAGE_ID_LEN);
    ck_assert_msg(all_crockford(id), "not Crockford base32: %s", id);
    ck_assert(chat_id_valid(id));
}
END_TEST

START_TEST(test_id_time_prefix)
{
    static const struct {
        int64_t ms;
        const char *prefix;
    } cases[] = {
        {0, "0000000000"},
        {1, "0000000001"},
        {31, "000000000Z"},
        {32, "0000000010"},
        {1733270400123, "01JE7FEV3V"},
        {281474976710655, "7ZZZZZZZZZ"}, /* 2^48 - 1 */
    };
    char id[CHAT_MESSAGE_ID_LEN + 1];

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        chat_id_new(id, cases[i].ms);
        ck_assert_msg(strncmp(id, cases[i].prefix, 10) == 0, "ms %lld gave %s, want %s...",
                      (long long)cases[i].ms, id, cases[i].prefix);
        ck_assert(chat_id_valid(id));
    }
}
END_TEST

START_TEST(test_id_sorts_by_time)
{
    static const int64_t times[] = {0, 1, 31, 32, 1023, 1024, 1733270400123, 1733270400999};
    char a[CHAT_MESSAGE_ID_LEN + 1], b[CHAT_MESSAGE_ID_LEN + 1];

    for (size_t i = 0; i < sizeof(times) / sizeof(times[0]); i++) {
        /* Whatever the random tails, the later ms sorts after. */
        for (int k = 0; k < 20; k++) {
            chat_id_new(a, times[i]);
            chat_id_new(b, times[i] + 1);
            ck_assert_msg(strcmp(a, b) < 0, "%s (ms %lld) !< %s", a, (long long)times[i], b);
        }
    }
}
END_TEST

START_TEST(test_id_unique)
{
    char a[CHAT_MESSAGE_ID_LEN + 1], b[CHAT_MESSAGE_ID_LEN + 1];

    for (int k = 0; k < 100; k++) {
        chat_id_new(a, 1733270400123);
        chat_id_new(b, 1733270400123);
        ck_assert_str_ne(a, b);
        ck_assert_int_eq(strncmp(a, b, 10), 0);
    }
}
END_TEST

START_TEST(test_id_valid_refuses)
{
    char id[CHAT_MESSAGE_ID_LEN + 2];
    static const char bad_chars[] = "ILOU-_ *";

    ck_assert(!chat_id_valid(""));
    ck_assert(!chat_id_valid("01JE7FEV3V"));
    chat_id_new(id, 1733270400123);
    ck_assert(chat_id_valid(id));
    id[CHAT_MESSAGE_ID_LEN - 1] = '\0'; /* 25 characters */
    ck_assert(!chat_id_valid(id));
    chat_id_new(id, 1733270400123);
    id[CHAT_MESSAGE_ID_LEN] = '0'; /* 27 characters */
    id[CHAT_MESSAGE_ID_LEN + 1] = '\0';
    ck_assert(!chat_id_valid(id));
    for (size_t i = 0; i < sizeof(bad_chars) - 1; i++) {
        chat_id_new(id, 1733270400123);
        id[12] = bad_chars[i];
        ck_assert_msg(!chat_id_valid(id), "accepted %s", id);
    }
}
END_TEST

START_TEST(test_clocks)
{
    int64_t now = chat_now_ms();
    int64_t m1 = chat_mono_ms(), m2 = chat_mono_ms();

    ck_assert(now > INT64_C(1600000000000)); /* after 2020, so in ms, not s */
    ck_assert(m2 >= m1);
}
END_TEST

/* ---------------------------------------------------------------- ratelimit */

START_TEST(test_ratelimit_burst_then_wait)
{
    struct chat_ratelimit *rl = chat_ratelimit_new(2, 3);
    int64_t t = 1000000, wait;

    ck_assert_int_eq(chat_ratelimit_take(rl, "alice", t), 0);
    ck_assert_int_eq(chat_ratelimit_take(rl, "alice", t), 0);
    ck_assert_int_eq(chat_ratelimit_take(rl, "alice", t), 0);
    wait = chat_ratelimit_take(rl, "alice", t);
    /* 2 tokens a second: the next one is 500 ms away (1 ms of rounding allowed). */
    ck_assert_msg(wait > 0 && wait <= 501, "wait %lld", (long long)wait);
    /* Still empty a moment later. */
    ck_assert_int_gt(chat_ratelimit_take(rl, "alice", t), 0);
    /* Not much sooner than told... */
    ck_assert_int_gt(chat_ratelimit_take(rl, "alice", t + wait - 2), 0);
    /* ...but after waiting as long as told, a token is free. */
    ck_assert_int_eq(chat_ratelimit_take(rl, "alice", t + wait), 0);
    ck_assert_int_gt(chat_ratelimit_take(rl, "alice", t + wait), 0);
    chat_ratelimit_free(rl);
}
END_TEST

START_TEST(test_ratelimit_refill_capped)
{
    struct chat_ratelimit *rl = chat_ratelimit_new(2, 3);
    int64_t t = 1000000;

    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(chat_ratelimit_take(rl, "bob", t), 0);
    ck_assert_int_gt(chat_ratelimit_take(rl, "bob", t), 0);
    /* One second refills two tokens. */
    t += 1000;
    ck_assert_int_eq(chat_ratelimit_take(rl, "bob", t), 0);
    ck_assert_int_eq(chat_ratelimit_take(rl, "bob", t), 0);
    ck_assert_int_gt(chat_ratelimit_take(rl, "bob", t), 0);
    /* A long idle time saves at most burst tokens. */
    t += 100000;
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(chat_ratelimit_take(rl, "bob", t), 0);
    ck_assert_int_gt(chat_ratelimit_take(rl, "bob", t), 0);
    chat_ratelimit_free(rl);
}
END_TEST

START_TEST(test_ratelimit_per_key)
{
    struct chat_ratelimit *rl = chat_ratelimit_new(1, 1);
    int64_t t = 5000000;
    char key[32];

    ck_assert_int_eq(chat_ratelimit_take(rl, "alice", t), 0);
    ck_assert_int_gt(chat_ratelimit_take(rl, "alice", t), 0);
    ck_assert_int_le(chat_ratelimit_take(rl, "alice", t), 1001);
    /* Another key has its own bucket. */
    ck_assert_int_eq(chat_ratelimit_take(rl, "bob", t), 0);
    for (int i = 0; i < 500; i++) {
        snprintf(key, sizeof(key), "user%d", i);
        ck_assert_int_eq(chat_ratelimit_take(rl, key, t), 0);
    }
    chat_ratelimit_free(rl);
}
END_TEST

START_TEST(test_ratelimit_disabled)
{
    struct chat_ratelimit *rl = chat_ratelimit_new(0, 0);

    for (int i = 0; i < 1000; i++)
        ck_assert_int_eq(chat_ratelimit_take(rl, "alice", 1000000), 0);
    chat_ratelimit_free(rl);
    rl = chat_ratelimit_new(0, 5);
    for (int i = 0; i < 1000; i++)
        ck_assert_int_eq(chat_ratelimit_take(rl, "alice", 1000000), 0);
    chat_ratelimit_free(rl);
    chat_ratelimit_free(NULL);
}
END_TEST

/* ---------------------------------------------------------------- metrics */

/* True when text has a line that starts with name followed by a space. */
static bool has_metric_line(const char *text, const char *name, long *value)
{
    size_t n = strlen(name);

    for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
        if (strncmp(p, name, n) == 0 && p[n] == ' ') {
            if (value)
                *value = strtol(p + n + 1, NULL, 10);
            return true;
        }
    }
    return false;
}

START_TEST(test_metrics_counter)
{
    struct chat_buf b = {0};
    long before = atomic_load(&chat_metrics.messages_stored), got = -1;

    chat_metric_inc(messages_stored);
    chat_metrics_render(&b);
    ck_assert_ptr_nonnull(b.data);
    ck_assert_msg(has_metric_line(b.data, "chat_messages_stored_total", &got),
                  "no chat_messages_stored_total line in:\n%s", b.data);
    ck_assert_int_eq(got, before + 1);
    ck_assert_int_eq(b.data[b.len - 1], '\n');
    chat_buf_cleanup(&b);
}
END_TEST

START_TEST(test_metrics_gauges)
{
    struct chat_buf b = {0};
    long before = atomic_load(&chat_metrics.streams_open), got = -1;

    chat_metric_inc(streams_open);
    chat_metric_inc(streams_open);
    chat_metric_dec(streams_open);
    chat_metrics_render(&b);
    ck_assert_msg(has_metric_line(b.data, "chat_streams_open", &got),
                  "no chat_streams_open line in:\n%s", b.data);
    ck_assert_int_eq(got, before + 1);
    ck_assert_msg(has_metric_line(b.data, "chat_polls_waiting", NULL),
                  "no chat_polls_waiting line in:\n%s", b.data);
    ck_assert(!has_metric_line(b.data, "chat_streams_open_total", NULL));
    chat_metric_dec(streams_open);
    chat_buf_cleanup(&b);
}
END_TEST

START_TEST(test_metrics_every_counter)
{
    static const char *names[] = {
        "chat_messages_stored_total",     "chat_messages_duplicate_total",
        "chat_events_delivered_total",    "chat_receipts_sent_total",
        "chat_polls_answered_total",      "chat_acks_applied_total",
        "chat_ack_timeouts_total",        "chat_bus_published_total",
        "chat_bus_publish_dropped_total", "chat_bus_received_total",
        "chat_bus_reconnects_total",      "chat_catchups_total",
        "chat_streams_closed_slow_total", "chat_store_errors_total",
    };
    struct chat_buf b = {0};

    chat_metrics_render(&b);
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        ck_assert_msg(has_metric_line(b.data, names[i], NULL), "no %s line", names[i]);
    chat_buf_cleanup(&b);
}
END_TEST

START_TEST(test_metrics_count_status)
{
    static const struct {
        int status;
        int slot;
    } cases[] = {{101, 1}, {200, 2}, {201, 2}, {304, 3}, {404, 4}, {429, 4},
                 {500, 5}, {503, 5}, {99, 0},  {600, 0}, {0, 0}};

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        long before[6];

        for (int k = 0; k < 6; k++)
            before[k] = atomic_load(&chat_metrics.http_requests[k]);
        chat_metrics_count_status(cases[i].status);
        for (int k = 0; k < 6; k++)
            ck_assert_msg(atomic_load(&chat_metrics.http_requests[k]) ==
                              before[k] + (k == cases[i].slot),
                          "status %d: slot %d", cases[i].status, k);
    }
}
END_TEST

/* ---------------------------------------------------------------- main */

static Suite *core_suite(void)
{
    Suite *s = suite_create("core");
    TCase *tc;

    tc = tcase_create("err");
    tcase_add_test(tc, test_err_table);
    tcase_add_test(tc, test_err_ok_and_unknown);
    suite_add_tcase(s, tc);

    tc = tcase_create("buf");
    tcase_add_test(tc, test_buf_append);
    tcase_add_test(tc, test_buf_empty_append_terminates);
    tcase_add_test(tc, test_buf_grow);
    tcase_add_test(tc, test_buf_printf);
    tcase_add_test(tc, test_buf_consume);
    tcase_add_test(tc, test_buf_reset);
    tcase_add_test(tc, test_buf_steal);
    suite_add_tcase(s, tc);

    tc = tcase_create("alloc_log");
    tcase_add_test(tc, test_alloc);
    tcase_add_test(tc, test_log_parse_level);
    suite_add_tcase(s, tc);

    tc = tcase_create("id");
    tcase_add_test(tc, test_id_shape);
    tcase_add_test(tc, test_id_time_prefix);
    tcase_add_test(tc, test_id_sorts_by_time);
    tcase_add_test(tc, test_id_unique);
    tcase_add_test(tc, test_id_valid_refuses);
    tcase_add_test(tc, test_clocks);
    suite_add_tcase(s, tc);

    tc = tcase_create("ratelimit");
    tcase_add_test(tc, test_ratelimit_burst_then_wait);
    tcase_add_test(tc, test_ratelimit_refill_capped);
    tcase_add_test(tc, test_ratelimit_per_key);
    tcase_add_test(tc, test_ratelimit_disabled);
    suite_add_tcase(s, tc);

    tc = tcase_create("metrics");
    tcase_add_test(tc, test_metrics_counter);
    tcase_add_test(tc, test_metrics_gauges);
    tcase_add_test(tc, test_metrics_every_counter);
    tcase_add_test(tc, test_metrics_count_status);
    suite_add_tcase(s, tc);

    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(core_suite());
    int failures;

    srunner_run_all(sr, CK_NORMAL);
    failures = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failures ? 1 : 0;
}
