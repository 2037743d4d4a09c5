-- Schema version 1: messages and per-user inboxes.
--
-- user_seq holds each user's last inbox seq. A send raises it under the row
-- lock and keeps the lock until COMMIT, so a user's seqs become visible in
-- order and without gaps (an AUTO_INCREMENT would commit out of order).
-- User ids are ASCII (A-Za-z0-9_.@-) and compared case-sensitively.

CREATE TABLE messages (
    id            BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    message_id    CHAR(26) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    sender        VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    recipient     VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NULL,
    chat_id       VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NULL,
    client_msg_id VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
    body          MEDIUMTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    ts            BIGINT NOT NULL,
    PRIMARY KEY (id),
    UNIQUE KEY uq_message_id (message_id),
    UNIQUE KEY uq_client_msg (sender, client_msg_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE user_seq (
    user_id  VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    last_seq BIGINT UNSIGNED NOT NULL,
    PRIMARY KEY (user_id)
) ENGINE=InnoDB;

-- status: 0 PENDING, 1 DELIVERED. ix_pending serves replay of PENDING rows.
CREATE TABLE inbox (
    user_id      VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    seq          BIGINT UNSIGNED NOT NULL,
    msg_pk       BIGINT UNSIGNED NOT NULL,
    status       TINYINT NOT NULL DEFAULT 0,
    delivered_ts BIGINT NULL,
    PRIMARY KEY (user_id, seq),
    KEY ix_pending (user_id, status, seq),
    KEY ix_msg (msg_pk)
) ENGINE=InnoDB;
