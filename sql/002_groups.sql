-- Schema version 2: groups, read state, conversations.
--
-- A group message is stored once in messages and once per receiving member
-- in inbox (with that member's own seq): every member's stream keeps the
-- gapless seq of version 1. conv_key names a conversation:
-- 'd:<a>|<b>' (the two user ids sorted) or 'c:<chat_id>'.

CREATE TABLE chats (
    id         CHAR(26) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    name       VARCHAR(100) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    owner      VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    created_ts BIGINT NOT NULL,
    PRIMARY KEY (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE chat_members (
    chat_id   CHAR(26) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    user_id   VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    joined_ts BIGINT NOT NULL,
    PRIMARY KEY (chat_id, user_id),
    KEY ix_user (user_id, chat_id)
) ENGINE=InnoDB;

ALTER TABLE messages
    ADD COLUMN conv_key VARCHAR(140) CHARACTER SET ascii COLLATE ascii_bin NOT NULL DEFAULT '',
    ADD KEY ix_conv (conv_key, id);

UPDATE messages
   SET conv_key = CONCAT('d:', LEAST(sender, recipient), '|', GREATEST(sender, recipient))
 WHERE recipient IS NOT NULL;

-- status 2 is READ (a read row is also delivered).
ALTER TABLE inbox ADD COLUMN read_ts BIGINT NULL;

-- One row per user and conversation: the latest message and the unread
-- count, kept by the send and read transactions so that the list is an
-- index range, not a scan.
CREATE TABLE conversations (
    user_id     VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    conv_key    VARCHAR(140) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    last_msg_pk BIGINT UNSIGNED NOT NULL,
    last_ts     BIGINT NOT NULL,
    unread      INT UNSIGNED NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, conv_key),
    KEY ix_recent (user_id, last_ts)
) ENGINE=InnoDB;

INSERT INTO conversations (user_id, conv_key, last_msg_pk, last_ts, unread)
SELECT u.user_id, u.conv_key, MAX(u.pk), MAX(u.ts), SUM(u.unread)
  FROM (SELECT m.sender AS user_id, m.conv_key, m.id AS pk, m.ts, 0 AS unread
          FROM messages m WHERE m.conv_key <> ''
        UNION ALL
        SELECT i.user_id, m.conv_key, m.id, m.ts, 1
          FROM inbox i JOIN messages m ON m.id = i.msg_pk WHERE m.conv_key <> '') u
 GROUP BY u.user_id, u.conv_key;
