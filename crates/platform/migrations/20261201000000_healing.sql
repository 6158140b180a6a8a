-- Dead letters say what kind of failure parked them and whether an operator resolved them;
-- every replay and discard is recorded.
ALTER TABLE dead_letters
    ADD COLUMN kind        TEXT NOT NULL DEFAULT 'rejected' CHECK (kind IN ('undecodable', 'rejected', 'panic')),
    ADD COLUMN event_id    UUID,
    ADD COLUMN status      TEXT NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'replayed', 'discarded')),
    ADD COLUMN resolved_at TIMESTAMPTZ,
    ADD COLUMN resolved_by TEXT,
    ADD CONSTRAINT dead_letters_resolved_iff_not_open CHECK ((status = 'open') = (resolved_at IS NULL));
CREATE INDEX dead_letters_open ON dead_letters (id) WHERE status = 'open';
CREATE INDEX dead_letters_resolved_at ON dead_letters (resolved_at) WHERE status <> 'open';

CREATE TABLE dead_letter_actions (
    id             BIGSERIAL   PRIMARY KEY,
    dead_letter_id BIGINT      NOT NULL REFERENCES dead_letters (id) ON DELETE CASCADE,
    action         TEXT        NOT NULL CHECK (action IN ('replay', 'discard')),
    actor          TEXT        NOT NULL,
    succeeded      BOOLEAN     NOT NULL,
    detail         TEXT,
    at             TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX dead_letter_actions_by_letter ON dead_letter_actions (dead_letter_id);

