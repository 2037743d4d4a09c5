/* id.c: message ids and clocks. */
#include "id.h"

#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

static const char crockford[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

void chat_id_new(char out[CHAT_MESSAGE_ID_LEN + 1], int64_t now_ms)
{
    uint64_t t = (uint64_t)now_ms;
    for (int i = 9; i >= 0; i--) {
        out[i] = crockford[t & 31];
        t >>= 5;
    }
    unsigned char r[10];
    if (getrandom(r, sizeof(r), 0) != (ssize_t)sizeof(r))
        abort(); /* the kernel's CSPRNG does not fail for 10 bytes */
    /* 80 random bits as 16 base32 digits. */
    uint64_t hi = 0, lo = 0;
    for (int i = 0; i < 5; i++)
        hi = (hi << 8) | r[i];
    for (int i = 5; i < 10; i++)
        lo = (lo << 8) | r[i];
    for (int i = 17; i >= 10; i--) {
        out[i] = crockford[hi & 31];
        hi >>= 5;
    }
    for (int i = 25; i >= 18; i--) {
        out[i] = crockford[lo & 31];
        lo >>= 5;
    }
    out[CHAT_MESSAGE_ID_LEN] = '\0';
}

int chat_id_valid(const char *s)
{
    if (!s || strlen(s) != CHAT_MESSAGE_ID_LEN)
        return 0;
    for (const char *p = s; *p; p++)
        if (!strchr(crockford, *p))
            return 0;
    return 1;
}

int64_t chat_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t chat_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}
