-- The order an inbox row's event concerns (its envelope's `aggregate_id`), so that one order's
-- story (`GET /admin/sagas/{order_id}`, `loadtest saga`) can say when each consumer took its
-- events. Written by the insert that records the event anyway: no write more per event, and no
-- index (an index would be one more write per event for an operator's occasional read). The
-- lookup walks `inbox_processed_at` from the order's creation on (order ids are UUIDv7, so their
-- time is known), which is short for the orders an operator asks about: recent ones.
-- NULL in rows written before the column existed (adding it rewrites nothing).
ALTER TABLE inbox ADD COLUMN aggregate_id UUID;
