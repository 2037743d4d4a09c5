-- Schema version 4: a batch of direct messages written by one call.
--
-- CALL chat_send_direct(batch, push_after_ms) starts a transaction and
-- writes in it every direct message of batch, so that a node stores a
-- whole batch with one statement and its COMMIT. batch is a JSON array with
-- one array per message:
--   [message_id, sender, recipient, client_msg_id or null, body, ts, conv_key]
-- A message whose recipient blocks its sender is not written. For each one
-- written it returns (its place in batch counted from 1, messages.id, the
-- recipient's new seq). The caller then COMMITs (or rolls back). Rows are
-- locked in the order every send takes them
-- (user_seq, then conversations, each in key order). Every join starts
-- from the batch and looks rows up by key (STRAIGHT_JOIN keeps that order
-- whatever the optimizer guesses of a table function's size). An error rolls the
-- whole batch back and reaches the caller as it was (1062 for a
-- client_msg_id sent twice, 1213 for a deadlock). push_after_ms: when the
-- push hook is due after ts, NULL for no push.
--
-- SQL SECURITY INVOKER: it runs with the caller's rights, which must
-- include EXECUTE on the database besides SELECT, INSERT, UPDATE, DELETE.
-- (Dropped first, so that a run of this file stopped half way can be
-- repeated.)
DROP PROCEDURE IF EXISTS chat_send_direct;
CREATE PROCEDURE chat_send_direct(IN batch LONGTEXT CHARACTER SET utf8mb4,
                                  IN push_after_ms BIGINT)
MODIFIES SQL DATA
SQL SECURITY INVOKER
BEGIN
    DECLARE EXIT HANDLER FOR SQLEXCEPTION
    BEGIN
        ROLLBACK;
        RESIGNAL;
    END;
    START TRANSACTION;

    INSERT INTO messages (message_id, sender, recipient, client_msg_id, body, ts, chat_id,
                          conv_key)
    SELECT STRAIGHT_JOIN j.mid, j.snd, j.rcp, j.cmid, j.body, j.ts, NULL, j.ck
    FROM JSON_TABLE(batch, '$[*]' COLUMNS (
        n    FOR ORDINALITY,
        mid  CHAR(26) CHARACTER SET ascii COLLATE ascii_bin PATH '$[0]' ERROR ON ERROR,
        snd  VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin PATH '$[1]' ERROR ON ERROR,
        rcp  VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin PATH '$[2]' ERROR ON ERROR,
        cmid VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin PATH '$[3]' ERROR ON ERROR,
        body MEDIUMTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin PATH '$[4]' ERROR ON ERROR,
        ts   BIGINT PATH '$[5]' ERROR ON ERROR,
        ck   VARCHAR(140) CHARACTER SET ascii COLLATE ascii_bin PATH '$[6]' ERROR ON ERROR)) AS j
    LEFT JOIN blocks b ON b.user_id = j.rcp AND b.blocked = j.snd
    WHERE b.user_id IS NULL
    ORDER BY j.n;

    INSERT INTO user_seq (user_id, last_seq)
    SELECT STRAIGHT_JOIN m.recipient, COUNT(*)
    FROM JSON_TABLE(batch, '$[*]' COLUMNS (
        mid CHAR(26) CHARACTER SET ascii COLLATE ascii_bin PATH '$[0]')) AS j
    JOIN messages m ON m.message_id = j.mid
    GROUP BY m.recipient ORDER BY m.recipient
    ON DUPLICATE KEY UPDATE last_seq = last_seq + VALUES(last_seq);

    -- A recipient's rows take the seqs just reserved, in the batch's order.
    INSERT INTO inbox (user_id, seq, msg_pk, status, push_next_ms)
    SELECT STRAIGHT_JOIN m.recipient,
           s.last_seq - COUNT(*) OVER (PARTITION BY m.recipient)
               + ROW_NUMBER() OVER (PARTITION BY m.recipient ORDER BY m.id),
           m.id, 0, m.ts + push_after_ms
    FROM JSON_TABLE(batch, '$[*]' COLUMNS (
        mid CHAR(26) CHARACTER SET ascii COLLATE ascii_bin PATH '$[0]')) AS j
    JOIN messages m ON m.message_id = j.mid
    JOIN user_seq s ON s.user_id = m.recipient;

    -- The sender's row (side 0) and the recipient's (side 1, one unread).
    INSERT INTO conversations (user_id, conv_key, last_msg_pk, last_ts, unread)
    SELECT STRAIGHT_JOIN IF(side.r = 1, m.recipient, m.sender) AS u, m.conv_key,
           MAX(m.id), MAX(m.ts), SUM(side.r)
    FROM JSON_TABLE(batch, '$[*]' COLUMNS (
        mid CHAR(26) CHARACTER SET ascii COLLATE ascii_bin PATH '$[0]')) AS j
    JOIN messages m ON m.message_id = j.mid
    JOIN (SELECT 0 AS r UNION ALL SELECT 1) AS side
    GROUP BY u, m.conv_key ORDER BY u, m.conv_key
    ON DUPLICATE KEY UPDATE
        last_msg_pk = GREATEST(last_msg_pk, VALUES(last_msg_pk)),
        last_ts = GREATEST(last_ts, VALUES(last_ts)),
        unread = unread + VALUES(unread);

    SELECT STRAIGHT_JOIN j.n, m.id, i.seq
    FROM JSON_TABLE(batch, '$[*]' COLUMNS (
        n   FOR ORDINALITY,
        mid CHAR(26) CHARACTER SET ascii COLLATE ascii_bin PATH '$[0]')) AS j
    JOIN messages m ON m.message_id = j.mid
    JOIN inbox i ON i.user_id = m.recipient AND i.msg_pk = m.id;
END;
