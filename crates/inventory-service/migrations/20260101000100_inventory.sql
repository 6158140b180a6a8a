CREATE TABLE products (
    id            BIGINT      PRIMARY KEY,
    name          TEXT        NOT NULL,
    price_cents   BIGINT      NOT NULL CHECK (price_cents >= 0),
    -- Units on hand. The CHECK makes overselling impossible even if code were wrong.
    stock         BIGINT      NOT NULL CHECK (stock >= 0),
    -- Every unit ever received (creation plus restocks): the audit's starting point.
    received      BIGINT      NOT NULL CHECK (received >= 0),
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- One row per order whose stock was deducted. RELEASED means the units went back
-- (payment failed); the status moves ACTIVE -> RELEASED once and never back.
CREATE TABLE reservations (
    order_id     UUID        PRIMARY KEY,
    product_id   BIGINT      NOT NULL REFERENCES products (id),
    user_id      BIGINT      NOT NULL,
    quantity     INTEGER     NOT NULL CHECK (quantity > 0),
    amount_cents BIGINT      NOT NULL CHECK (amount_cents >= 0),
    status       TEXT        NOT NULL CHECK (status IN ('ACTIVE', 'RELEASED')),
    reserved_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    released_at  TIMESTAMPTZ,
    CONSTRAINT reservations_released_at_iff_released CHECK ((status = 'RELEASED') = (released_at IS NOT NULL))
);
CREATE INDEX reservations_by_product ON reservations (product_id);
