-- One definition of an open saga, read by everything that asks: the re-drive (which orders to
-- ask again), the index that finds them, the load test's monitor (the oldest open saga) and its
-- audit (no saga left open). An order's saga is open until the order is final and, when its
-- payment failed, inventory has confirmed that its stock went back.
--
-- A plain SQL function, IMMUTABLE: PostgreSQL inlines it into the index predicate and into
-- every query alike, so a query that asks `order_saga_open(...)` matches the partial index.
CREATE FUNCTION order_saga_open(status TEXT, failure_reason TEXT, stock_released_at TIMESTAMPTZ)
RETURNS BOOLEAN
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT status IN ('PENDING', 'RESERVED')
        OR (status = 'FAILED'
            AND failure_reason IN ('PAYMENT_DECLINED', 'INSUFFICIENT_FUNDS', 'UNKNOWN_ACCOUNT')
            AND stock_released_at IS NULL)
$$;

-- The open orders, oldest first through orders_open.
DROP INDEX orders_open;
CREATE INDEX orders_open ON orders (created_at)
    WHERE order_saga_open(status, failure_reason, stock_released_at);

-- The open sagas, for readers that want the rows.
CREATE VIEW open_sagas AS
    SELECT id, user_id, product_id, quantity, status, failure_reason, created_at, updated_at,
           redrive_count, redriven_at
    FROM orders
    WHERE order_saga_open(status, failure_reason, stock_released_at);
