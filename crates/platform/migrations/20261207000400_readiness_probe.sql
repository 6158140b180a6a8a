-- Where `/ready` proves that the service can write (platform/src/db.rs, `prove_writable`): a row
-- is inserted and rolled back, so the table stays empty.
CREATE TABLE readiness_probe (
    checked_at TIMESTAMPTZ NOT NULL
);
