-- Schema version 3: blocks, stream tickets, the push hook.

-- user_id blocks blocked: direct messages from blocked to user_id are refused.
CREATE TABLE blocks (
    user_id    VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    blocked    VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    created_ts BIGINT NOT NULL,
    PRIMARY KEY (user_id, blocked)
) ENGINE=InnoDB;

-- Single-use stream tickets (128 random bits, 60 s): redeemed by
-- DELETE ... RETURNING, so two nodes can never both accept one.
CREATE TABLE tickets (
    ticket      CHAR(32) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    user_id     VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    expires_ms  BIGINT NOT NULL,
    PRIMARY KEY (ticket),
    KEY ix_expires (expires_ms)
) ENGINE=InnoDB;

-- push_state: 0 not due or not pushed yet, 1 pushed (answered 2xx),
-- 2 given up. push_next_ms: when the next attempt is due (claims move it).
ALTER TABLE inbox
    ADD COLUMN push_state TINYINT NOT NULL DEFAULT 0,
    ADD COLUMN push_attempts SMALLINT NOT NULL DEFAULT 0,
    ADD COLUMN push_next_ms BIGINT NULL,
    ADD KEY ix_push (push_state, status, push_next_ms);
