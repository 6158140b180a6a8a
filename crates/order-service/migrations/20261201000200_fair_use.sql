-- Fair use: a buyer may have at most `fair_use.max_open_orders` orders that are not final. The
-- cap's count reads this index, which holds exactly those orders (at most the cap per buyer,
-- whatever the buyer's history), so checking a batch of orders reads a few entries per buyer.
CREATE INDEX orders_unfinished_by_user ON orders (user_id) WHERE status IN ('PENDING', 'RESERVED');

-- No query ever read orders_by_user (user_id, created_at); dropping it keeps the index work
-- of writing an order where it was before the index above.
DROP INDEX orders_by_user;
