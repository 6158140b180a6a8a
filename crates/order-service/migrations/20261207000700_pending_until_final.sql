-- An order is PENDING until it is COMPLETED or FAILED: the order service no longer hears the
-- stock reservation (it went to payment only), so the intermediate RESERVED status is gone.
--
-- An order that was RESERVED is waiting for payment's answer, exactly as a PENDING order now
-- is: it becomes PENDING, keeps its amount and its times (the re-drive's pause counts from its
-- last change, as before), and the payment outcome that arrives later finishes it — from
-- PENDING, the only status an outcome moves an order from.
UPDATE orders SET status = 'PENDING' WHERE status = 'RESERVED';

ALTER TABLE orders DROP CONSTRAINT orders_status_check;
ALTER TABLE orders ADD CONSTRAINT orders_status_check
    CHECK (status IN ('PENDING', 'COMPLETED', 'FAILED'));

-- The one definition of an open saga (migration open_sagas), without RESERVED. The partial
-- index orders_open and the view open_sagas call it by name, so they follow. The index needs no
-- rebuild: for every row the constraint above allows, the old and the new body give the same
-- answer (they differ only on RESERVED, which no row holds any more).
CREATE OR REPLACE FUNCTION order_saga_open(status TEXT, failure_reason TEXT, stock_released_at TIMESTAMPTZ)
RETURNS BOOLEAN
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT status = 'PENDING'
        OR (status = 'FAILED'
            AND failure_reason IN ('PAYMENT_DECLINED', 'INSUFFICIENT_FUNDS', 'UNKNOWN_ACCOUNT')
            AND stock_released_at IS NULL)
$$;

-- The orders that are not final, per buyer (fair use, migration fair_use): the same rows, now
-- named by the one status they can have, as the counting queries name them.
DROP INDEX orders_unfinished_by_user;
CREATE INDEX orders_unfinished_by_user ON orders (user_id) WHERE status = 'PENDING';
