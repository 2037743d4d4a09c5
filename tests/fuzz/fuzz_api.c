/* fuzz_api.c: the configuration parser, chat_config_set, on a defaults-initialized config.
 *
 * The request layers that need no backend have their own targets (fuzz_json, fuzz_jwt,
 * fuzz_query, fuzz_sse); the route matcher is static in lib/api/api.c and chat_api_handle
 * needs a delivery (MySQL and Redis), so this target takes the remaining input parser: every
 * "[section] key = value" of the INI file goes through chat_config_set.
 *
 * The input is NUL-separated fields taken three at a time as section, key and value (missing
 * trailing fields are empty), at most 8 triples, applied in order to one config. Checked,
 * besides the sanitizers and LeakSanitizer (a replaced string must be freed):
 *   - chat_config_set returns 0 or CHAT_EINVAL; on CHAT_EINVAL the message names
 *     "[section] key" and the config is left exactly as it was;
 *   - on success at most one field changed: a string field now holds the value, an integer
 *     field holds strtol(value), an enum one of its two values; the enums and the log level
 *     hold legal values and no string is NULL;
 *   - setting the same triple again gives the same result and the same config;
 *   - chat_config_validate on the result returns 0 or CHAT_EINVAL with a message. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "err.h"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);               \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#define MAX_TRIPLES 8

/* The string fields of struct chat_config; every other field is an int or an enum. */
#define S(f) offsetof(struct chat_config, f)
static const size_t string_fields[] = {
    S(node_id),        S(listen),         S(jwt_secret),     S(mysql_host), S(mysql_socket),
    S(mysql_user),     S(mysql_password), S(mysql_database), S(redis_host), S(redis_user),
    S(redis_password), S(channel_prefix), S(push_url),       S(fcgi_listen), S(log_level),
};
#undef S
#define N_STRINGS (sizeof(string_fields) / sizeof(string_fields[0]))

_Static_assert(sizeof(int) == sizeof(enum chat_mode) && sizeof(int) == sizeof(enum chat_policy),
               "the non-string fields are int-sized");

/* ------------------------------------------------------------------------ */
/* Snapshots                                                                */
/* ------------------------------------------------------------------------ */

struct snapshot {
    struct chat_config raw; /* the bytes, string pointers included */
    char *copy[N_STRINGS];  /* the string contents, which a set may free */
};

static char *field_str(const struct chat_config *cfg, size_t i)
{
    char *s;
    memcpy(&s, (const char *)cfg + string_fields[i], sizeof(s));
    return s;
}

static bool in_string_field(size_t off)
{
    for (size_t i = 0; i < N_STRINGS; i++)
        if (off >= string_fields[i] && off < string_fields[i] + sizeof(char *))
            return true;
    return false;
}

static void snap(struct snapshot *s, const struct chat_config *cfg)
{
    memcpy(&s->raw, cfg, sizeof(*cfg));
    for (size_t i = 0; i < N_STRINGS; i++) {
        const char *v = field_str(cfg, i);
        CHECK(v);
        s->copy[i] = strdup(v);
        CHECK(s->copy[i]);
    }
}

static void snap_free(struct snapshot *s)
{
    for (size_t i = 0; i < N_STRINGS; i++)
        free(s->copy[i]);
}

static int int_at(const void *base, size_t off)
{
    int v;
    memcpy(&v, (const char *)base + off, sizeof(v));
    return v;
}

/* True when cfg holds what s recorded: the same integers and the same string contents. */
static bool same_as_snapshot(const struct snapshot *s, const struct chat_config *cfg)
{
    for (size_t off = 0; off + sizeof(int) <= sizeof(*cfg); off += sizeof(int))
        if (!in_string_field(off) && int_at(&s->raw, off) != int_at(cfg, off))
            return false;
    for (size_t i = 0; i < N_STRINGS; i++)
        if (strcmp(s->copy[i], field_str(cfg, i)) != 0)
            return false;
    return true;
}

/* ------------------------------------------------------------------------ */
/* One set                                                                  */
/* ------------------------------------------------------------------------ */

static void check_legal(const struct chat_config *cfg)
{
    CHECK(cfg->mode == CHAT_MODE_SERVER || cfg->mode == CHAT_MODE_CLIENT);
    CHECK(cfg->ack_policy == CHAT_POLICY_MARK || cfg->ack_policy == CHAT_POLICY_DELETE);
    const char *lv = cfg->log_level;
    CHECK(lv && (!strcmp(lv, "debug") || !strcmp(lv, "info") || !strcmp(lv, "warn") ||
                 !strcmp(lv, "error")));
    for (size_t i = 0; i < N_STRINGS; i++)
        CHECK(field_str(cfg, i) != NULL);
}

static int set_checked(struct chat_config *cfg, const char *section, const char *key,
                       const char *value)
{
    struct snapshot before;
    snap(&before, cfg);
    char err[256];
    memset(err, 'x', sizeof(err));
    int rc = chat_config_set(cfg, section, key, value, err, sizeof(err));
    CHECK(rc == 0 || rc == CHAT_EINVAL);

    if (rc != 0) {
        /* Refused: a message naming the key, and not one byte of the config changed. */
        CHECK(memchr(err, '\0', sizeof(err)));
        char name[sizeof(err)];
        snprintf(name, sizeof(name), "[%s] %s", section, key);
        size_t n = strlen(err) < strlen(name) ? strlen(err) : strlen(name);
        CHECK(n > 0 && strncmp(err, name, n) == 0);
        CHECK(memcmp(&before.raw, cfg, sizeof(*cfg)) == 0);
        snap_free(&before);
        return rc;
    }

    size_t changed = 0;
    for (size_t i = 0; i < N_STRINGS; i++) {
        const char *now = field_str(cfg, i);
        bool moved = now != field_str(&before.raw, i);
        if (moved || strcmp(now, before.copy[i]) != 0) {
            changed++;
            CHECK(strcmp(now, value) == 0);
        }
    }
    for (size_t off = 0; off + sizeof(int) <= sizeof(*cfg); off += sizeof(int)) {
        if (in_string_field(off) || int_at(cfg, off) == int_at(&before.raw, off))
            continue;
        changed++;
        int v = int_at(cfg, off);
        char *end;
        long want = strtol(value, &end, 10);
        bool is_int = end != value && *end == '\0' && v == (int)want;
        bool is_enum =
            (v == 0 || v == 1) && (!strcmp(value, "server") || !strcmp(value, "client") ||
                                   !strcmp(value, "mark") || !strcmp(value, "delete"));
        CHECK(is_int || is_enum);
    }
    CHECK(changed <= 1);
    check_legal(cfg);
    snap_free(&before);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Entry point                                                              */
/* ------------------------------------------------------------------------ */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    CHECK(s);
    if (size)
        memcpy(s, data, size);
    s[size] = '\0';

    const char *fields[MAX_TRIPLES * 3];
    size_t n = 0;
    for (const char *p = s; n < MAX_TRIPLES * 3;) {
        fields[n++] = p;
        const char *nul = memchr(p, '\0', size - (size_t)(p - s) + 1);
        if (nul == s + size)
            break;
        p = nul + 1;
    }
    while (n % 3)
        fields[n++] = "";

    struct chat_config cfg;
    chat_config_defaults(&cfg);
    check_legal(&cfg);
    for (size_t i = 0; i < n; i += 3) {
        int rc = set_checked(&cfg, fields[i], fields[i + 1], fields[i + 2]);
        struct snapshot once;
        snap(&once, &cfg);
        CHECK(set_checked(&cfg, fields[i], fields[i + 1], fields[i + 2]) == rc);
        CHECK(same_as_snapshot(&once, &cfg));
        snap_free(&once);
    }
    char err[256] = "";
    int rc = chat_config_validate(&cfg, err, sizeof(err));
    CHECK(rc == 0 || (rc == CHAT_EINVAL && err[0] == '['));
    chat_config_cleanup(&cfg);
    free(s);
    return 0;
}
