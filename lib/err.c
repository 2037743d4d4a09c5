/* err.c: the one table from enum chat_err to HTTP status and JSON code. */
#include "err.h"

struct err_row {
    int status;
    const char *code;
    const char *message;
};

static const struct err_row err_table[] = {
    [0] = {200, "ok", "ok"},
    [-CHAT_EINVAL] = {400, "bad_request", "the request is not valid"},
    [-CHAT_EAUTH] = {401, "unauthorized", "a valid bearer token is required"},
    [-CHAT_EFORBIDDEN] = {403, "forbidden", "not allowed"},
    [-CHAT_ENOTFOUND] = {404, "not_found", "no such thing"},
    [-CHAT_EMETHOD] = {405, "method_not_allowed", "method not allowed on this path"},
    [-CHAT_ECONFLICT] = {409, "conflict", "conflicts with an earlier request"},
    [-CHAT_ETOOLARGE] = {413, "payload_too_large", "the request is too large"},
    [-CHAT_EMEDIA] = {415, "unsupported_media_type", "the body must be application/json"},
    [-CHAT_ERATE] = {429, "rate_limited", "too many requests, slow down"},
    [-CHAT_EUNAVAIL] = {503, "backend_unavailable", "a backend is unavailable, retry later"},
    [-CHAT_EINTERNAL] = {500, "internal_error", "internal error"},
    [-CHAT_EBLOCKED] = {403, "blocked", "the recipient does not accept messages from you"},
};

static const struct err_row *row(int err)
{
    if (err > 0 || err <= CHAT_ERR_MIN_)
        return &err_table[-CHAT_EINTERNAL];
    return &err_table[-err];
}

int chat_err_status(int err)
{
    return row(err)->status;
}

const char *chat_err_code(int err)
{
    return row(err)->code;
}

const char *chat_err_message(int err)
{
    return row(err)->message;
}
