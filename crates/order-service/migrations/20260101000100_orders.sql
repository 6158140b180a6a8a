CREATE TABLE orders (
    id             UUID        PRIMARY KEY,
    user_id        BIGINT      NOT NULL,
    product_id     BIGINT      NOT NULL,
    quantity       INTEGER     NOT NULL CHECK (quantity > 0),
    status         TEXT        NOT NULL CHECK (status IN ('PENDING', 'RESERVED', 'COMPLETED', 'FAILED')),
    failure_reason TEXT,
    amount_cents   BIGINT,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    finalized_at   TIMESTAMPTZ,
    CONSTRAINT orders_failure_reason_iff_failed CHECK ((status = 'FAILED') = (failure_reason IS NOT NULL)),
    CONSTRAINT orders_finalized_iff_final CHECK ((status IN ('COMPLETED', 'FAILED')) = (finalized_at IS NOT NULL))
);
CREATE INDEX orders_by_user ON orders (user_id, created_at);
CREATE INDEX orders_unfinished ON orders (created_at) WHERE status IN ('PENDING', 'RESERVED');

-- Client-supplied Idempotency-Key: the same key with the same body returns the original order.
CREATE TABLE idempotency_keys (
    user_id    BIGINT      NOT NULL,
    key        TEXT        NOT NULL,
    product_id BIGINT      NOT NULL,
    quantity   INTEGER     NOT NULL,
    order_id   UUID        NOT NULL REFERENCES orders (id),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, key)
);
