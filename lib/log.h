/* log.h: leveled logging to stderr, one line per call, safe from any thread. */
#ifndef CHAT_LOG_H
#define CHAT_LOG_H

enum chat_log_level { CHAT_LOG_DEBUG, CHAT_LOG_INFO, CHAT_LOG_WARN, CHAT_LOG_ERROR };

void chat_log_set_level(enum chat_log_level level);
/* Parses "debug", "info", "warn" or "error"; returns 0 or CHAT_EINVAL. */
int chat_log_parse_level(const char *s, enum chat_log_level *out);
void chat_log(enum chat_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#define chat_debug(...) chat_log(CHAT_LOG_DEBUG, __VA_ARGS__)
#define chat_info(...) chat_log(CHAT_LOG_INFO, __VA_ARGS__)
#define chat_warn(...) chat_log(CHAT_LOG_WARN, __VA_ARGS__)
#define chat_error(...) chat_log(CHAT_LOG_ERROR, __VA_ARGS__)

#endif
