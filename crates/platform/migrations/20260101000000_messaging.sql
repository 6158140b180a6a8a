-- Messaging tables every service has: the transactional outbox, the consumer inbox
-- (idempotency record), and dead letters for messages that can never be processed.

-- Events waiting to be published. A row is written in the same transaction as the state
-- change it announces and deleted only after the broker acknowledged it.
CREATE TABLE outbox (
    seq        BIGSERIAL   PRIMARY KEY,
    event_id   UUID        NOT NULL UNIQUE,
    subject    TEXT        NOT NULL,
    envelope   BYTEA       NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Messages already processed, recorded in the transaction of their effect: a redelivery or
-- re-publish finds its id here and has no second effect.
CREATE TABLE inbox (
    consumer     TEXT        NOT NULL,
    message_id   UUID        NOT NULL,
    processed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, message_id)
);
CREATE INDEX inbox_processed_at ON inbox (processed_at);

-- Messages parked because they can never be processed (undecodable, unknown type, or failing
-- past the retry limit). An operator lists them; nothing is dropped silently.
CREATE TABLE dead_letters (
    id         BIGSERIAL   PRIMARY KEY,
    consumer   TEXT        NOT NULL,
    subject    TEXT        NOT NULL,
    message_id TEXT,
    deliveries BIGINT      NOT NULL,
    reason     TEXT        NOT NULL,
    payload    BYTEA       NOT NULL,
    failed_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
