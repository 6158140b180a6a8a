-- Dead letters for the event contract (issue 21): a new kind, and one open letter per parked
-- event however often its message comes back.

-- `misrouted`: an event that did not come the way the contract says its type travels (another
-- subject or stream, another order in its envelope). Never applied, never replayed.
ALTER TABLE dead_letters
    DROP CONSTRAINT dead_letters_kind_check,
    ADD CONSTRAINT dead_letters_kind_check
        CHECK (kind IN ('undecodable', 'rejected', 'panic', 'misrouted'));

-- A message comes back whole when one of its events failed transiently, and until now every
-- delivery parked its bad events (and undecodable elements) again. Those copies are closed as
-- discarded, with an action saying why, keeping the first of each open; then unique indexes
-- keep a letter open once: by event id, or for an element without one (undecodable) by its
-- message id and bytes. The consumer inserts with ON CONFLICT DO NOTHING.
WITH copies AS (
    SELECT id FROM (
        SELECT id, row_number() OVER (
                   PARTITION BY consumer, event_id ORDER BY id) AS nth
        FROM dead_letters
        WHERE status = 'open' AND event_id IS NOT NULL
        UNION ALL
        SELECT id, row_number() OVER (
                   PARTITION BY consumer, coalesce(message_id, ''), md5(payload) ORDER BY id) AS nth
        FROM dead_letters
        WHERE status = 'open' AND event_id IS NULL
    ) ranked
    WHERE nth > 1
), closed AS (
    UPDATE dead_letters d
    SET status = 'discarded', resolved_at = now(), resolved_by = 'migration'
    FROM copies c
    WHERE d.id = c.id
    RETURNING d.id
)
INSERT INTO dead_letter_actions (dead_letter_id, action, actor, succeeded, detail)
SELECT id, 'discard', 'migration', true, 'a copy of an open dead letter parked at a redelivery'
FROM closed;

CREATE UNIQUE INDEX dead_letters_open_event
    ON dead_letters (consumer, event_id)
    WHERE status = 'open' AND event_id IS NOT NULL;
CREATE UNIQUE INDEX dead_letters_open_element
    ON dead_letters (consumer, coalesce(message_id, ''), md5(payload))
    WHERE status = 'open' AND event_id IS NULL;
