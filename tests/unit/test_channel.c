/* test_channel.c: Redis channel names, made and split in one place (bus.h). */
#include <check.h>
#include <stddef.h>
#include <string.h>

#include "../../lib/bus.h"

/* ---------------------------------------------------------------- names */

START_TEST(test_name_kinds)
{
    char out[CHAT_CHANNEL_MAX];

    ck_assert_int_eq(chat_channel_name(out, sizeof(out), "chat", CHAT_CHANNEL_USER, "bob"), 13);
    ck_assert_str_eq(out, "chat:user:bob");
    ck_assert_int_eq(chat_channel_name(out, sizeof(out), "chat", CHAT_CHANNEL_ACK, "bob"), 12);
    ck_assert_str_eq(out, "chat:ack:bob");
    ck_assert_int_eq(chat_channel_name(out, sizeof(out), "chat", CHAT_CHANNEL_CHAT, "g1"), 12);
    ck_assert_str_eq(out, "chat:chat:g1");
    ck_assert_int_eq(
        chat_channel_name(out, sizeof(out), "staging", CHAT_CHANNEL_USER, "me@example.com"), 27);
    ck_assert_str_eq(out, "staging:user:me@example.com");
}
END_TEST

START_TEST(test_name_empty_prefix)
{
    char out[CHAT_CHANNEL_MAX];

    ck_assert_int_eq(chat_channel_name(out, sizeof(out), "", CHAT_CHANNEL_USER, "bob"), 8);
    ck_assert_str_eq(out, "user:bob");
    ck_assert_int_eq(chat_channel_name(out, sizeof(out), "", CHAT_CHANNEL_ACK, "bob"), 7);
    ck_assert_str_eq(out, "ack:bob");
    ck_assert_int_eq(chat_channel_name(out, sizeof(out), "", CHAT_CHANNEL_CHAT, "g1"), 7);
    ck_assert_str_eq(out, "chat:g1");
}
END_TEST

START_TEST(test_name_too_small)
{
    char out[32];

    /* "chat:user:bob" is 13 characters and needs 14 bytes with the NUL. */
    memset(out, 'Z', sizeof(out));
    ck_assert_int_eq(chat_channel_name(out, 13, "chat", CHAT_CHANNEL_USER, "bob"), -1);
    for (size_t i = 13; i < sizeof(out); i++)
        ck_assert_msg(out[i] == 'Z', "wrote past n at %zu", i);
    ck_assert_int_eq(chat_channel_name(out, 4, "chat", CHAT_CHANNEL_USER, "bob"), -1);
    ck_assert_int_eq(chat_channel_name(out, 1, "chat", CHAT_CHANNEL_USER, "bob"), -1);
    ck_assert_int_eq(chat_channel_name(out, 0, "chat", CHAT_CHANNEL_USER, "bob"), -1);
    ck_assert_int_eq(chat_channel_name(out, 14, "chat", CHAT_CHANNEL_USER, "bob"), 13);
    ck_assert_str_eq(out, "chat:user:bob");
}
END_TEST

START_TEST(test_name_max)
{
    char out[CHAT_CHANNEL_MAX];
    char id[CHAT_CHANNEL_MAX];

    /* The longest id that fits: prefix "chat:user:" is 10, plus the NUL. */
    memset(id, 'a', sizeof(id));
    id[CHAT_CHANNEL_MAX - 11] = '\0';
    ck_assert_int_eq(chat_channel_name(out, sizeof(out), "chat", CHAT_CHANNEL_USER, id),
                     CHAT_CHANNEL_MAX - 1);
    id[CHAT_CHANNEL_MAX - 11] = 'a';
    id[CHAT_CHANNEL_MAX - 10] = '\0';
    ck_assert_int_eq(chat_channel_name(out, sizeof(out), "chat", CHAT_CHANNEL_USER, id), -1);
}
END_TEST

/* ---------------------------------------------------------------- parse */

START_TEST(test_parse_round_trip)
{
    static const char *const prefixes[] = {"chat", "", "staging"};
    static const enum chat_channel_kind kinds[] = {CHAT_CHANNEL_USER, CHAT_CHANNEL_ACK,
                                                   CHAT_CHANNEL_CHAT};
    static const char *const ids[] = {"bob", "g1", "me@example.com", "01JE7FEV3V0000000000000000",
                                      "a"};
    char name[CHAT_CHANNEL_MAX];

    for (size_t p = 0; p < sizeof(prefixes) / sizeof(prefixes[0]); p++) {
        for (size_t k = 0; k < sizeof(kinds) / sizeof(kinds[0]); k++) {
            for (size_t i = 0; i < sizeof(ids) / sizeof(ids[0]); i++) {
                enum chat_channel_kind kind = (enum chat_channel_kind) - 1;
                const char *id = NULL;

                ck_assert_int_gt(
                    chat_channel_name(name, sizeof(name), prefixes[p], kinds[k], ids[i]), 0);
                ck_assert_msg(chat_channel_parse(name, prefixes[p], &kind, &id) == 0,
                              "refused %s (prefix \"%s\")", name, prefixes[p]);
                ck_assert_int_eq(kind, kinds[k]);
                ck_assert_ptr_nonnull(id);
                ck_assert_str_eq(id, ids[i]);
                /* id points into name. */
                ck_assert(id >= name && id < name + strlen(name));
            }
        }
    }
}
END_TEST

START_TEST(test_parse_refused)
{
    static const struct {
        const char *name;
        const char *prefix;
    } bad[] = {
        {"other:user:bob", "chat"}, /* another deployment's prefix */
        {"chatx:user:bob", "chat"}, /* the prefix must end at a colon */
        {"cha:user:bob", "chat"},
        {"user:bob", "chat"},     /* no prefix at all */
        {"chat:foo:bob", "chat"}, /* unknown kind */
        {"chat:users:bob", "chat"},
        {"chat:USER:bob", "chat"},
        {"chat::bob", "chat"},
        {"chat:user:", "chat"}, /* empty id */
        {"chat:ack:", "chat"},
        {"chat:chat:", "chat"},
        {"chat:user", "chat"}, /* no id separator */
        {"chat:", "chat"},
        {"chat", "chat"},
        {"", "chat"},
        {"", ""},
        {"foo:bob", ""}, /* unknown kind, empty prefix */
        {"user:", ""},   /* empty id, empty prefix */
        {"user", ""},
    };

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        enum chat_channel_kind kind;
        const char *id;

        ck_assert_msg(chat_channel_parse(bad[i].name, bad[i].prefix, &kind, &id) == -1,
                      "accepted \"%s\" with prefix \"%s\"", bad[i].name, bad[i].prefix);
    }
}
END_TEST

/* ---------------------------------------------------------------- main */

static Suite *channel_suite(void)
{
    Suite *s = suite_create("channel");
    TCase *tc;

    tc = tcase_create("name");
    tcase_add_test(tc, test_name_kinds);
    tcase_add_test(tc, test_name_empty_prefix);
    tcase_add_test(tc, test_name_too_small);
    tcase_add_test(tc, test_name_max);
    suite_add_tcase(s, tc);

    tc = tcase_create("parse");
    tcase_add_test(tc, test_parse_round_trip);
    tcase_add_test(tc, test_parse_refused);
    suite_add_tcase(s, tc);

    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(channel_suite());
    int failures;

    srunner_run_all(sr, CK_NORMAL);
    failures = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failures ? 1 : 0;
}
