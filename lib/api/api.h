/* api.h: the HTTP API of SPEC.md as plain functions.
 *
 * A door turns its transport's request into a struct chat_request, calls
 * chat_api_handle and writes the struct chat_response back. Routing,
 * authentication, validation and every error body live here, once. */
#ifndef CHAT_API_H
#define CHAT_API_H

#include <stdbool.h>
#include <stddef.h>

#include "auth.h"
#include "delivery.h"

struct chat_request {
    const char *method;
    const char *path; /* without the query string */
    /* A header value (case-insensitive name) or NULL. */
    const char *(*header)(void *door, const char *name);
    /* A decoded query argument or NULL. */
    const char *(*arg)(void *door, const char *name);
    void *door;
    const char *body;
    size_t body_len;
    bool body_too_large; /* the door stopped reading past max_body_bytes */
    chat_park_fn park;   /* how this door holds a request */
    chat_wake_fn wake;
    bool can_stream; /* the door serves SSE */
    void *state;     /* the api's, across re-entries of a parked request */
};

enum chat_resp_kind {
    CHAT_RESP_BODY,   /* status, headers and body below */
    CHAT_RESP_STREAM, /* an SSE stream: the door serves stream and owns it */
    CHAT_RESP_PARKED  /* held: call chat_api_handle again after wake */
};

struct chat_response {
    enum chat_resp_kind kind;
    int status;
    const char *content_type;
    char *body; /* owned */
    size_t body_len;
    char retry_after[16]; /* Retry-After value, or "" */
    char allow[32];       /* Allow value for 405, or "" */
    struct chat_stream *stream;
};

struct chat_api;

/* d is borrowed for the api's life. */
struct chat_api *chat_api_new(struct chat_delivery *d);
void chat_api_free(struct chat_api *api);

/* Answers req into resp (zeroed by the caller). For CHAT_RESP_PARKED the door
 * holds the request and calls again with the same req after wake. */
void chat_api_handle(struct chat_api *api, struct chat_request *req, struct chat_response *resp);

/* Releases what a parked request holds, when the client went away. */
void chat_api_release(struct chat_request *req);

void chat_response_cleanup(struct chat_response *resp);

#endif
