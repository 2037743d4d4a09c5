/* id.h: message ids and clocks. */
#ifndef CHAT_ID_H
#define CHAT_ID_H

#include <stdint.h>

#define CHAT_MESSAGE_ID_LEN 26

/* Writes a new message id: 26 characters of Crockford base32, the first 10
 * the time in ms (so ids sort by creation time), the last 16 random. */
void chat_id_new(char out[CHAT_MESSAGE_ID_LEN + 1], int64_t now_ms);
/* True when s has the shape of a message id. */
int chat_id_valid(const char *s);
int64_t chat_now_ms(void);
/* A monotonic clock in ms, for deadlines. */
int64_t chat_mono_ms(void);

#endif
