-- The order service owns the saga. An order is open until it is final and, when its payment
-- failed, inventory has confirmed that its stock went back; an open order that waits too long
-- is re-driven (its next step asked again), with a growing pause between re-drives.
ALTER TABLE orders
    ADD COLUMN stock_released_at TIMESTAMPTZ,
    ADD COLUMN redrive_count     INTEGER     NOT NULL DEFAULT 0,
    ADD COLUMN redriven_at       TIMESTAMPTZ;

-- Replaces orders_unfinished (PENDING/RESERVED only): every open order, oldest first.
CREATE INDEX orders_open ON orders (created_at)
    WHERE status IN ('PENDING', 'RESERVED')
       OR (status = 'FAILED'
           AND failure_reason IN ('PAYMENT_DECLINED', 'INSUFFICIENT_FUNDS', 'UNKNOWN_ACCOUNT')
           AND stock_released_at IS NULL);
DROP INDEX orders_unfinished;

-- Idempotency keys are pruned after their retention window.
CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);
