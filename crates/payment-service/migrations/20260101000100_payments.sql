CREATE TABLE accounts (
    user_id         BIGINT      PRIMARY KEY,
    balance_cents   BIGINT      NOT NULL CHECK (balance_cents >= 0),
    -- Every cent ever deposited: balance + successful charges must always equal it.
    deposited_cents BIGINT      NOT NULL CHECK (deposited_cents >= 0),
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- At most one charge attempt per order, enforced by the primary key: an order can never be
-- paid twice, whatever the messaging layer does.
CREATE TABLE charges (
    order_id       UUID        PRIMARY KEY,
    user_id        BIGINT      NOT NULL,
    amount_cents   BIGINT      NOT NULL CHECK (amount_cents >= 0),
    status         TEXT        NOT NULL CHECK (status IN ('SUCCEEDED', 'FAILED')),
    failure_reason TEXT,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT charges_failure_reason_iff_failed CHECK ((status = 'FAILED') = (failure_reason IS NOT NULL))
);
CREATE INDEX charges_by_user ON charges (user_id);
