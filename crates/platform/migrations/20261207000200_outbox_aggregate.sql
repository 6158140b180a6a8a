-- The order an outbox row's event concerns (its envelope's `aggregate_id`): the order service's
-- re-drive skips an order whose event still waits here, instead of queueing another copy behind
-- it. NULL in rows written before the column existed (adding it rewrites nothing).
ALTER TABLE outbox ADD COLUMN aggregate_id UUID;
