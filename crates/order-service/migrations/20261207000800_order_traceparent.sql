-- The context of the request that placed an order (its W3C traceparent, when traces are on or
-- the client sent one): a re-drive's span links to the order's first trace through it.
ALTER TABLE orders ADD COLUMN traceparent TEXT;
