/* push.c: the push hook worker (libcurl). */
#include "push.h"

#include <curl/curl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "alloc.h"
#include "id.h"
#include "json.h"
#include "log.h"
#include "store.h"

#define LEASE_MS 60000
#define BACKOFF_MIN_MS 1000
#define BACKOFF_MAX_MS 300000

struct chat_pusher {
    const struct chat_config *cfg;
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool stop;
};

/* The longest prefix of s, at most max bytes, that ends on a character. */
static size_t utf8_cut(const char *s, size_t len, size_t max)
{
    if (len <= max)
        return len;
    size_t n = max;
    while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80)
        n--;
    return n;
}

char *chat_push_payload(const char *recipient, const char *message_id, const char *from,
                        const char *chat, const char *body, int64_t ts, int preview_bytes)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "recipient", recipient);
    cJSON_AddStringToObject(o, "message_id", message_id);
    cJSON_AddStringToObject(o, "from", from);
    if (chat && chat[0])
        cJSON_AddStringToObject(o, "chat", chat);
    else
        cJSON_AddNullToObject(o, "chat");
    chat_json_add_int(o, "ts", ts);
    if (preview_bytes > 0) {
        size_t len = strlen(body);
        size_t n = utf8_cut(body, len, (size_t)preview_bytes);
        char *preview = chat_xstrndup(body, n);
        cJSON_AddStringToObject(o, "preview", preview);
        cJSON_AddBoolToObject(o, "truncated", n < len);
        free(preview);
    }
    char *s = chat_json_print(o);
    cJSON_Delete(o);
    return s;
}

static size_t discard(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    return size * nmemb;
}

/* POSTs one row; true on a 2xx answer. */
static bool post_one(struct chat_pusher *p, CURL *curl, const struct chat_push *row)
{
    const struct chat_config *cfg = p->cfg;
    char *body =
        chat_push_payload(row->item.to, row->item.message_id, row->item.from, row->item.chat,
                          row->item.body, row->item.ts, cfg->push_preview_bytes);
    struct curl_slist *headers = curl_slist_append(NULL, "Content-Type: application/json");
    curl_easy_reset(curl);
    curl_easy_setopt(curl, CURLOPT_URL, cfg->push_url);
    curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, (long)cfg->push_timeout_ms);
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, discard);
    curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
    CURLcode rc = curl_easy_perform(curl);
    long status = 0;
    if (rc == CURLE_OK)
        curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
    else
        chat_warn("push: %s: %s", row->item.message_id, curl_easy_strerror(rc));
    curl_slist_free_all(headers);
    free(body);
    return status >= 200 && status < 300;
}

static void *push_main(void *arg)
{
    struct chat_pusher *p = arg;
    struct chat_store *st = chat_store_local(p->cfg);
    CURL *curl = curl_easy_init();
    pthread_mutex_lock(&p->lock);
    while (!p->stop && curl) {
        pthread_mutex_unlock(&p->lock);
        struct chat_push *rows = NULL;
        size_t n = 0;
        int64_t now = chat_now_ms();
        if (chat_store_push_claim(st, now, LEASE_MS, &rows, &n) == 0) {
            for (size_t i = 0; i < n; i++) {
                bool ok = post_one(p, curl, &rows[i]);
                int64_t backoff = BACKOFF_MIN_MS << (rows[i].attempts < 9 ? rows[i].attempts : 9);
                if (backoff > BACKOFF_MAX_MS)
                    backoff = BACKOFF_MAX_MS;
                chat_store_push_result(st, &rows[i], ok, chat_now_ms() + backoff,
                                       p->cfg->push_max_attempts);
            }
        }
        chat_push_free(rows, n);
        pthread_mutex_lock(&p->lock);
        if (n == 0 && !p->stop) {
            /* Nothing due: look again in a second. */
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_sec += 1;
            pthread_cond_timedwait(&p->cond, &p->lock, &ts);
        }
    }
    pthread_mutex_unlock(&p->lock);
    curl_easy_cleanup(curl);
    return NULL;
}

static void global_init(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
}

struct chat_pusher *chat_pusher_start(const struct chat_config *cfg)
{
    if (!cfg->push_url[0])
        return NULL;
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, global_init);
    struct chat_pusher *p = chat_xcalloc(1, sizeof(*p));
    p->cfg = cfg;
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->cond, NULL);
    if (pthread_create(&p->thread, NULL, push_main, p) != 0) {
        free(p);
        return NULL;
    }
    chat_info("push hook on: %s after %d s", cfg->push_url, cfg->push_after);
    return p;
}

void chat_pusher_stop(struct chat_pusher *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->lock);
    p->stop = true;
    pthread_cond_signal(&p->cond);
    pthread_mutex_unlock(&p->lock);
    pthread_join(p->thread, NULL);
    pthread_cond_destroy(&p->cond);
    pthread_mutex_destroy(&p->lock);
    free(p);
}
