-- Every order inventory turned down, and why. With the reservations this is inventory's answer
-- for every order it was asked about: an order asked about again (a re-drive, a message
-- published twice) gets the same answer, never a second decision.
CREATE TABLE stock_rejections (
    order_id    UUID        PRIMARY KEY,
    product_id  BIGINT      NOT NULL,
    reason      TEXT        NOT NULL CHECK (reason IN ('OUT_OF_STOCK', 'UNKNOWN_PRODUCT', 'AMOUNT_TOO_LARGE')),
    rejected_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
