/* test_config.c: defaults, chat_config_set, loading INI files, validation, describe. */
#include <check.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../lib/config.h"
#include "../../lib/err.h"

#define SECRET "0123456789abcdef0123456789abcdef" /* exactly 32 characters */

/* ---------------------------------------------------------------- helpers */

/* True when err names the given line of a file, as "path:7:" or "line 7". */
static bool names_line(const char *err, int line)
{
    char a[32], b[32];

    snprintf(a, sizeof(a), ":%d:", line);
    snprintf(b, sizeof(b), "line %d", line);
    return strstr(err, a) || strstr(err, b);
}

/* Writes text to a fresh temporary file and stores its path (which the caller
 * removes). */
static void write_temp(const char *text, char path[64])
{
    int fd;
    FILE *f;

    snprintf(path, 64, "/tmp/chat_test_config_XXXXXX");
    fd = mkstemp(path);
    ck_assert_msg(fd >= 0, "mkstemp failed");
    f = fdopen(fd, "w");
    ck_assert_ptr_nonnull(f);
    ck_assert_int_ge(fputs(text, f), 0);
    ck_assert_int_eq(fclose(f), 0);
}

/* Loads text as a config file into cfg (a zeroed struct) and removes the file.
 * The path is left in path for messages. */
static int load_text(struct chat_config *cfg, const char *text, char *err, size_t errlen,
                     char path[64])
{
    int rc;

    write_temp(text, path);
    memset(cfg, 0, sizeof(*cfg));
    err[0] = '\0';
    rc = chat_config_load(cfg, path, err, errlen);
    unlink(path);
    return rc;
}

/* Sets one key on fresh defaults and checks it is refused with a message
 * naming the section and key. */
static void assert_set_refused(const char *section, const char *key, const char *value)
{
    struct chat_config cfg;
    char err[256] = "";
    int rc;

    chat_config_defaults(&cfg);
    rc = chat_config_set(&cfg, section, key, value, err, sizeof(err));
    chat_config_cleanup(&cfg);
    ck_assert_msg(rc == CHAT_EINVAL, "[%s] %s = \"%s\": rc %d", section, key, value, rc);
    ck_assert_msg(strstr(err, section) != NULL, "[%s] %s = \"%s\": message lacks the section: %s",
                  section, key, value, err);
    ck_assert_msg(strstr(err, key) != NULL, "[%s] %s = \"%s\": message lacks the key: %s", section,
                  key, value, err);
}

/* ---------------------------------------------------------------- defaults */

START_TEST(test_defaults)
{
    struct chat_config cfg;

    chat_config_defaults(&cfg);
    ck_assert_int_eq(cfg.port, 8081);
    ck_assert_int_eq(cfg.ack_timeout, 5);
    ck_assert_int_eq(cfg.keepalive, 15);
    ck_assert_int_eq(cfg.poll_timeout, 25);
    ck_assert_int_eq(cfg.poll_timeout_max, 60);
    ck_assert_int_eq(cfg.max_message_bytes, 4096);
    ck_assert_int_eq(cfg.mode, CHAT_MODE_SERVER);
    ck_assert_int_eq(cfg.ack_policy, CHAT_POLICY_MARK);
    ck_assert_ptr_nonnull(cfg.channel_prefix);
    ck_assert_str_eq(cfg.channel_prefix, "chat");
    /* The string keys are all set (possibly empty), never left NULL. */
    ck_assert_ptr_nonnull(cfg.listen);
    ck_assert_ptr_nonnull(cfg.mysql_host);
    ck_assert_ptr_nonnull(cfg.redis_host);
    ck_assert_ptr_nonnull(cfg.log_level);
    chat_config_cleanup(&cfg);
}
END_TEST

START_TEST(test_defaults_need_secret)
{
    struct chat_config cfg;
    char err[256] = "";

    /* jwt_secret has no default: defaults alone do not validate. */
    chat_config_defaults(&cfg);
    ck_assert_int_eq(chat_config_validate(&cfg, err, sizeof(err)), CHAT_EINVAL);
    ck_assert_msg(strstr(err, "jwt_secret") != NULL, "message: %s", err);
    ck_assert_int_eq(chat_config_set(&cfg, "auth", "jwt_secret", SECRET, err, sizeof(err)), 0);
    ck_assert_msg(chat_config_validate(&cfg, err, sizeof(err)) == 0, "refused: %s", err);
    chat_config_cleanup(&cfg);
}
END_TEST

/* ---------------------------------------------------------------- set */

START_TEST(test_set_good_values)
{
    struct chat_config cfg;
    char err[256] = "";

    chat_config_defaults(&cfg);
    ck_assert_int_eq(chat_config_set(&cfg, "server", "port", "9090", err, sizeof(err)), 0);
    ck_assert_int_eq(cfg.port, 9090);
    ck_assert_int_eq(chat_config_set(&cfg, "server", "port", "1", err, sizeof(err)), 0);
    ck_assert_int_eq(cfg.port, 1);
    ck_assert_int_eq(chat_config_set(&cfg, "server", "port", "65535", err, sizeof(err)), 0);
    ck_assert_int_eq(cfg.port, 65535);
    ck_assert_int_eq(chat_config_set(&cfg, "delivery", "ack_timeout", "7", err, sizeof(err)), 0);
    ck_assert_int_eq(cfg.ack_timeout, 7);
    ck_assert_int_eq(chat_config_set(&cfg, "delivery", "keepalive", "30", err, sizeof(err)), 0);
    ck_assert_int_eq(cfg.keepalive, 30);
    ck_assert_int_eq(
        chat_config_set(&cfg, "delivery", "max_message_bytes", "8192", err, sizeof(err)), 0);
    ck_assert_int_eq(cfg.max_message_bytes, 8192);
    ck_assert_int_eq(chat_config_set(&cfg, "delivery", "mode", "client", err, sizeof(err)), 0);
    ck_assert_int_eq(cfg.mode, CHAT_MODE_CLIENT);
    ck_assert_int_eq(chat_config_set(&cfg, "delivery", "mode", "server", err, sizeof(err)), 0);
    ck_assert_int_eq(cfg.mode, CHAT_MODE_SERVER);
    ck_assert_int_eq(chat_config_set(&cfg, "delivery", "ack_policy", "delete", err, sizeof(err)),
                     0);
    ck_assert_int_eq(cfg.ack_policy, CHAT_POLICY_DELETE);
    ck_assert_int_eq(chat_config_set(&cfg, "delivery", "ack_policy", "mark", err, sizeof(err)), 0);
    ck_assert_int_eq(cfg.ack_policy, CHAT_POLICY_MARK);
    ck_assert_int_eq(chat_config_set(&cfg, "auth", "jwt_secret", SECRET, err, sizeof(err)), 0);
    ck_assert_str_eq(cfg.jwt_secret, SECRET);
    ck_assert_msg(chat_config_validate(&cfg, err, sizeof(err)) == 0, "refused: %s", err);
    chat_config_cleanup(&cfg);
}
END_TEST

START_TEST(test_set_string_replaces)
{
    struct chat_config cfg;
    char err[256] = "";

    /* Setting a string twice frees the first value (valgrind checks it). */
    chat_config_defaults(&cfg);
    ck_assert_int_eq(chat_config_set(&cfg, "redis", "channel_prefix", "app1", err, sizeof(err)), 0);
    ck_assert_str_eq(cfg.channel_prefix, "app1");
    ck_assert_int_eq(chat_config_set(&cfg, "redis", "channel_prefix", "app2", err, sizeof(err)), 0);
    ck_assert_str_eq(cfg.channel_prefix, "app2");
    ck_assert_int_eq(chat_config_set(&cfg, "mysql", "host", "db.example", err, sizeof(err)), 0);
    ck_assert_str_eq(cfg.mysql_host, "db.example");
    ck_assert_int_eq(chat_config_set(&cfg, "redis", "host", "bus.example", err, sizeof(err)), 0);
    ck_assert_str_eq(cfg.redis_host, "bus.example");
    /* Same key name, other section: each section keeps its own. */
    ck_assert_int_eq(chat_config_set(&cfg, "mysql", "port", "3390", err, sizeof(err)), 0);
    ck_assert_int_eq(chat_config_set(&cfg, "redis", "port", "6390", err, sizeof(err)), 0);
    ck_assert_int_eq(cfg.mysql_port, 3390);
    ck_assert_int_eq(cfg.redis_port, 6390);
    ck_assert_int_eq(cfg.port, 8081);
    chat_config_cleanup(&cfg);
}
END_TEST

START_TEST(test_set_not_a_number)
{
    static const char *const bad[] = {"", "abc", "12abc", "1.5", "0x10", "1e3", "--1", "\xd9\xa3"};

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_set_refused("server", "port", bad[i]);
        assert_set_refused("delivery", "ack_timeout", bad[i]);
        assert_set_refused("delivery", "max_message_bytes", bad[i]);
    }
}
END_TEST

START_TEST(test_set_out_of_range)
{
    assert_set_refused("server", "port", "0");
    assert_set_refused("server", "port", "-1");
    assert_set_refused("server", "port", "65536");
    assert_set_refused("server", "port", "99999999999999999999");
    assert_set_refused("server", "port", "4294975377"); /* 8081 + 2^32 */
    assert_set_refused("delivery", "ack_timeout", "-5");
    assert_set_refused("delivery", "keepalive", "-1");
    assert_set_refused("delivery", "max_message_bytes", "-1");
    assert_set_refused("delivery", "poll_timeout", "-1");
}
END_TEST

START_TEST(test_set_bad_enum)
{
    assert_set_refused("delivery", "mode", "foo");
    assert_set_refused("delivery", "mode", "");
    assert_set_refused("delivery", "mode", "server ");
    assert_set_refused("delivery", "ack_policy", "foo");
    assert_set_refused("delivery", "ack_policy", "");
}
END_TEST

START_TEST(test_set_unknown_key_or_section)
{
    assert_set_refused("server", "no_such_key", "1");
    assert_set_refused("delivery", "port", "1"); /* a key of another section */
    assert_set_refused("no_such_section", "port", "8081");
    assert_set_refused("", "port", "8081");
}
END_TEST

START_TEST(test_set_short_secret)
{
    struct chat_config cfg;
    char err[256] = "";
    int rc;

    /* 31 characters: refused when set, or at the latest by validate. */
    chat_config_defaults(&cfg);
    rc = chat_config_set(&cfg, "auth", "jwt_secret", "0123456789abcdef0123456789abcde", err,
                         sizeof(err));
    if (rc == 0)
        rc = chat_config_validate(&cfg, err, sizeof(err));
    ck_assert_int_eq(rc, CHAT_EINVAL);
    ck_assert_msg(strstr(err, "jwt_secret") != NULL, "message: %s", err);
    chat_config_cleanup(&cfg);
}
END_TEST

START_TEST(test_set_small_err_buffer)
{
    struct chat_config cfg;
    struct {
        char err[8];
        char canary[8];
    } m;

    memset(&m, 'C', sizeof(m));
    chat_config_defaults(&cfg);
    ck_assert_int_eq(chat_config_set(&cfg, "server", "port", "nope", m.err, sizeof(m.err)),
                     CHAT_EINVAL);
    chat_config_cleanup(&cfg);
    ck_assert_uint_lt(strnlen(m.err, sizeof(m.err)), sizeof(m.err));
    for (size_t i = 0; i < sizeof(m.canary); i++)
        ck_assert_int_eq(m.canary[i], 'C');
}
END_TEST

START_TEST(test_validate_cross_keys)
{
    struct chat_config cfg;
    char err[256] = "";

    /* A default poll longer than the longest allowed one makes no sense. */
    chat_config_defaults(&cfg);
    ck_assert_int_eq(chat_config_set(&cfg, "auth", "jwt_secret", SECRET, err, sizeof(err)), 0);
    ck_assert_int_eq(chat_config_set(&cfg, "delivery", "poll_timeout", "61", err, sizeof(err)), 0);
    ck_assert_int_eq(chat_config_validate(&cfg, err, sizeof(err)), CHAT_EINVAL);
    ck_assert_msg(strstr(err, "poll_timeout") != NULL, "message: %s", err);
    ck_assert_int_eq(chat_config_set(&cfg, "delivery", "poll_timeout", "60", err, sizeof(err)), 0);
    ck_assert_msg(chat_config_validate(&cfg, err, sizeof(err)) == 0, "refused: %s", err);
    chat_config_cleanup(&cfg);
}
END_TEST

/* ---------------------------------------------------------------- load */

START_TEST(test_load_good)
{
    static const char text[] = "; a comment\n"
                               "# another comment\n"
                               "[server]\n"
                               "port = 9090\n"
                               "node_id = node-a\n"
                               "\n"
                               "[auth]\n"
                               "jwt_secret = " SECRET "\n"
                               "\n"
                               "[redis]\n"
                               "channel_prefix = staging\n"
                               "\n"
                               "[delivery]\n"
                               "mode = client\n"
                               "ack_policy = delete\n"
                               "ack_timeout = 9\n"
                               "max_message_bytes = 2048\n";
    struct chat_config cfg;
    char err[512], path[64];

    ck_assert_msg(load_text(&cfg, text, err, sizeof(err), path) == 0, "refused: %s", err);
    ck_assert_int_eq(cfg.port, 9090);
    ck_assert_str_eq(cfg.node_id, "node-a");
    ck_assert_str_eq(cfg.jwt_secret, SECRET);
    ck_assert_str_eq(cfg.channel_prefix, "staging");
    ck_assert_int_eq(cfg.mode, CHAT_MODE_CLIENT);
    ck_assert_int_eq(cfg.ack_policy, CHAT_POLICY_DELETE);
    ck_assert_int_eq(cfg.ack_timeout, 9);
    ck_assert_int_eq(cfg.max_message_bytes, 2048);
    /* What the file does not say keeps its default. */
    ck_assert_int_eq(cfg.keepalive, 15);
    ck_assert_int_eq(cfg.poll_timeout, 25);
    ck_assert_int_eq(cfg.poll_timeout_max, 60);
    ck_assert(chat_config_validate(&cfg, err, sizeof(err)) == 0);
    chat_config_cleanup(&cfg);
}
END_TEST

START_TEST(test_load_bad_value)
{
    static const char text[] = "[server]\n"
                               "port = 8081\n"
                               "\n"
                               "[auth]\n"
                               "jwt_secret = " SECRET "\n"
                               "[delivery]\n"
                               "ack_timeout = soon\n";
    struct chat_config cfg;
    char err[512], path[64];

    ck_assert_int_eq(load_text(&cfg, text, err, sizeof(err), path), CHAT_EINVAL);
    chat_config_cleanup(&cfg);
    ck_assert_msg(strstr(err, "ack_timeout") != NULL, "message lacks the key: %s", err);
    ck_assert_msg(strstr(err, "delivery") != NULL, "message lacks the section: %s", err);
    ck_assert_msg(names_line(err, 7), "message lacks line 7: %s", err);
    ck_assert_msg(strstr(err, path) != NULL, "message lacks the file: %s", err);
}
END_TEST

START_TEST(test_load_out_of_range)
{
    static const char text[] = "[auth]\n"
                               "jwt_secret = " SECRET "\n"
                               "[server]\n"
                               "port = 70000\n";
    struct chat_config cfg;
    char err[512], path[64];

    ck_assert_int_eq(load_text(&cfg, text, err, sizeof(err), path), CHAT_EINVAL);
    chat_config_cleanup(&cfg);
    ck_assert_msg(strstr(err, "port") != NULL, "message: %s", err);
    ck_assert_msg(names_line(err, 4), "message lacks line 4: %s", err);
}
END_TEST

START_TEST(test_load_unknown_key)
{
    static const char text[] = "[auth]\n"
                               "jwt_secret = " SECRET "\n"
                               "[delivery]\n"
                               "mode = server\n"
                               "ack_timout = 5\n";
    struct chat_config cfg;
    char err[512], path[64];

    ck_assert_int_eq(load_text(&cfg, text, err, sizeof(err), path), CHAT_EINVAL);
    chat_config_cleanup(&cfg);
    ck_assert_msg(strstr(err, "ack_timout") != NULL, "message: %s", err);
    ck_assert_msg(names_line(err, 5), "message lacks line 5: %s", err);
}
END_TEST

START_TEST(test_load_unknown_section)
{
    static const char text[] = "[auth]\n"
                               "jwt_secret = " SECRET "\n"
                               "[delivry]\n"
                               "mode = server\n";
    struct chat_config cfg;
    char err[512], path[64];

    ck_assert_int_eq(load_text(&cfg, text, err, sizeof(err), path), CHAT_EINVAL);
    chat_config_cleanup(&cfg);
    ck_assert_msg(strstr(err, "delivry") != NULL, "message: %s", err);
}
END_TEST

START_TEST(test_load_bad_enum)
{
    static const char text[] = "[auth]\n"
                               "jwt_secret = " SECRET "\n"
                               "[delivery]\n"
                               "mode = foo\n";
    struct chat_config cfg;
    char err[512], path[64];

    ck_assert_int_eq(load_text(&cfg, text, err, sizeof(err), path), CHAT_EINVAL);
    chat_config_cleanup(&cfg);
    ck_assert_msg(strstr(err, "mode") != NULL, "message: %s", err);
    ck_assert_msg(names_line(err, 4), "message lacks line 4: %s", err);
}
END_TEST

START_TEST(test_load_missing_file)
{
    struct chat_config cfg;
    char err[512] = "", path[64];
    int fd;

    snprintf(path, sizeof(path), "/tmp/chat_test_config_XXXXXX");
    fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    close(fd);
    unlink(path);
    memset(&cfg, 0, sizeof(cfg));
    ck_assert_int_eq(chat_config_load(&cfg, path, err, sizeof(err)), CHAT_EINVAL);
    chat_config_cleanup(&cfg);
    ck_assert_msg(strstr(err, path) != NULL, "message lacks the file: %s", err);
}
END_TEST

START_TEST(test_load_missing_secret)
{
    static const char text[] = "[server]\n"
                               "port = 8081\n";
    struct chat_config cfg;
    char err[512], path[64];

    ck_assert_int_eq(load_text(&cfg, text, err, sizeof(err), path), CHAT_EINVAL);
    chat_config_cleanup(&cfg);
    ck_assert_msg(strstr(err, "jwt_secret") != NULL, "message: %s", err);
}
END_TEST

START_TEST(test_load_empty_file)
{
    struct chat_config cfg;
    char err[512], path[64];

    /* Nothing set, so the required jwt_secret is missing. */
    ck_assert_int_eq(load_text(&cfg, "", err, sizeof(err), path), CHAT_EINVAL);
    chat_config_cleanup(&cfg);
    ck_assert_msg(strstr(err, "jwt_secret") != NULL, "message: %s", err);
}
END_TEST

START_TEST(test_load_short_secret)
{
    static const char text[] = "[auth]\n"
                               "jwt_secret = 0123456789abcdef0123456789abcde\n";
    struct chat_config cfg;
    char err[512], path[64];

    ck_assert_int_eq(load_text(&cfg, text, err, sizeof(err), path), CHAT_EINVAL);
    chat_config_cleanup(&cfg);
    ck_assert_msg(strstr(err, "jwt_secret") != NULL, "message: %s", err);
}
END_TEST

START_TEST(test_load_syntax_error)
{
    static const char text[] = "[auth]\n"
                               "jwt_secret = " SECRET "\n"
                               "this line has no equals sign\n";
    struct chat_config cfg;
    char err[512], path[64];

    ck_assert_int_eq(load_text(&cfg, text, err, sizeof(err), path), CHAT_EINVAL);
    chat_config_cleanup(&cfg);
    ck_assert_msg(names_line(err, 3), "message lacks line 3: %s", err);
}
END_TEST

/* ---------------------------------------------------------------- describe */

START_TEST(test_describe)
{
    static const char *const keys[] = {
        "port",           "listen",
        "jwt_secret",     "token_ttl",
        "ack_timeout",    "keepalive",
        "poll_timeout",   "poll_timeout_max",
        "mode",           "ack_policy",
        "channel_prefix", "max_message_bytes",
        "send_rate",      "stream_buffer_bytes",
    };
    static const char *const sections[] = {"server", "auth", "mysql", "redis", "delivery", "log"};
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);

    ck_assert_ptr_nonnull(f);
    chat_config_describe(f);
    ck_assert_int_eq(fclose(f), 0);
    ck_assert_ptr_nonnull(text);
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
        ck_assert_msg(strstr(text, keys[i]) != NULL, "%s not described", keys[i]);
    for (size_t i = 0; i < sizeof(sections) / sizeof(sections[0]); i++)
        ck_assert_msg(strstr(text, sections[i]) != NULL, "[%s] not described", sections[i]);
    /* Defaults are shown too. */
    ck_assert(strstr(text, "8081") != NULL);
    ck_assert(strstr(text, "4096") != NULL);
    free(text);
}
END_TEST

/* ---------------------------------------------------------------- main */

/* Every level name is accepted; anything else is refused naming the key. */
START_TEST(test_log_level)
{
    struct chat_config cfg;
    char err[256];
    chat_config_defaults(&cfg);
    const char *good[] = {"debug", "info", "warn", "error"};
    for (int i = 0; i < 4; i++) {
        ck_assert_int_eq(chat_config_set(&cfg, "log", "level", good[i], err, sizeof(err)), 0);
        ck_assert_str_eq(cfg.log_level, good[i]);
    }
    ck_assert_int_eq(chat_config_set(&cfg, "log", "level", "loud", err, sizeof(err)), CHAT_EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "[log] level"));
    chat_config_cleanup(&cfg);
}
END_TEST

static Suite *config_suite(void)
{
    Suite *s = suite_create("config");
    TCase *tc;

    tc = tcase_create("defaults");
    tcase_add_test(tc, test_defaults);
    tcase_add_test(tc, test_log_level);
    tcase_add_test(tc, test_defaults_need_secret);
    suite_add_tcase(s, tc);

    tc = tcase_create("set");
    tcase_add_test(tc, test_set_good_values);
    tcase_add_test(tc, test_set_string_replaces);
    tcase_add_test(tc, test_set_not_a_number);
    tcase_add_test(tc, test_set_out_of_range);
    tcase_add_test(tc, test_set_bad_enum);
    tcase_add_test(tc, test_set_unknown_key_or_section);
    tcase_add_test(tc, test_set_short_secret);
    tcase_add_test(tc, test_set_small_err_buffer);
    tcase_add_test(tc, test_validate_cross_keys);
    suite_add_tcase(s, tc);

    tc = tcase_create("load");
    tcase_add_test(tc, test_load_good);
    tcase_add_test(tc, test_load_bad_value);
    tcase_add_test(tc, test_load_out_of_range);
    tcase_add_test(tc, test_load_unknown_key);
    tcase_add_test(tc, test_load_unknown_section);
    tcase_add_test(tc, test_load_bad_enum);
    tcase_add_test(tc, test_load_missing_file);
    tcase_add_test(tc, test_load_missing_secret);
    tcase_add_test(tc, test_load_empty_file);
    tcase_add_test(tc, test_load_short_secret);
    tcase_add_test(tc, test_load_syntax_error);
    suite_add_tcase(s, tc);

    tc = tcase_create("describe");
    tcase_add_test(tc, test_describe);
    suite_add_tcase(s, tc);

    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(config_suite());
    int failures;

    srunner_run_all(sr, CK_NORMAL);
    failures = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failures ? 1 : 0;
}
