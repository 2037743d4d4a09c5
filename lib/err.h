/* err.h: the error codes every fallible function returns, and their HTTP face.
 *
 * Fallible functions return 0 or a negative enum chat_err. One table maps each
 * to an HTTP status and a stable snake_case code so that both doors agree. */
#ifndef CHAT_ERR_H
#define CHAT_ERR_H

enum chat_err {
    CHAT_OK = 0,
    CHAT_EINVAL = -1,     /* 400 bad_request */
    CHAT_EAUTH = -2,      /* 401 unauthorized */
    CHAT_EFORBIDDEN = -3, /* 403 forbidden */
    CHAT_ENOTFOUND = -4,  /* 404 not_found */
    CHAT_EMETHOD = -5,    /* 405 method_not_allowed */
    CHAT_ECONFLICT = -6,  /* 409 conflict */
    CHAT_ETOOLARGE = -7,  /* 413 payload_too_large */
    CHAT_EMEDIA = -8,     /* 415 unsupported_media_type */
    CHAT_ERATE = -9,      /* 429 rate_limited */
    CHAT_EUNAVAIL = -10,  /* 503 backend_unavailable */
    CHAT_EINTERNAL = -11, /* 500 internal_error */
    CHAT_EBLOCKED = -12,  /* 403 blocked: the recipient blocks the sender */
    CHAT_ERR_MIN_ = -13
};

/* The HTTP status for err (0 gives 200; unknown values give 500). */
int chat_err_status(int err);
/* The stable JSON error code for err, e.g. "bad_request". Never NULL. */
const char *chat_err_code(int err);
/* A default human message for err. Never NULL. */
const char *chat_err_message(int err);

#endif
