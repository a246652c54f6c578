-- Links that end, links that are protected, links that are taken down (issue 13).
-- Additive, so that the release before it still runs on this schema after a rollback:
-- new columns are nullable or have a constant default (no table rewrite), and the new
-- checks are NOT VALID (no scan of the existing rows under a lock; every new or changed
-- row is checked).

ALTER TABLE links
    ADD COLUMN expires_at timestamptz,          -- it stops then
    ADD COLUMN max_visits bigint,               -- it stops after this many visits
    ADD COLUMN visits bigint NOT NULL DEFAULT 0,  -- visits used towards max_visits
    ADD COLUMN password_hash text,              -- scrypt$N$r$p$salt$key
    ADD COLUMN manage_hash text,                -- SHA-256 of the creator's token
    ADD COLUMN owner text,                      -- the API key that made it
    ADD COLUMN state text NOT NULL DEFAULT 'active',
    ADD COLUMN reason text,                     -- why it was disabled or deleted
    ADD COLUMN note text,
    ADD COLUMN changed_by text,
    ADD COLUMN changed_at timestamptz;

ALTER TABLE links ADD CONSTRAINT links_state_known
    CHECK (state IN ('active', 'disabled', 'deleted')) NOT VALID;
ALTER TABLE links ADD CONSTRAINT links_visits_within_limit
    CHECK (max_visits >= 1 AND visits BETWEEN 0 AND max_visits OR max_visits IS NULL) NOT VALID;

-- Who changed which link's state, when and why: every disable, enable and delete.
CREATE TABLE link_events (
    id bigserial PRIMARY KEY,
    code text COLLATE "C" NOT NULL,
    action text NOT NULL,                       -- disable, enable, delete
    changed_by text NOT NULL,
    changed_at timestamptz NOT NULL DEFAULT now(),
    reason text,
    note text
);
CREATE INDEX link_events_by_code ON link_events (code, id);

-- A visit of a limited link only counts: it changes nothing a worker caches, so it is
-- not logged for the caches to follow (one change-log row per visit would make every
-- worker evict a code that cannot be served from a cache anyway). Any other change of
-- a row is, whoever makes it, whatever columns later migrations add.
DROP TRIGGER links_changes_logged ON links;
CREATE TRIGGER links_changes_logged AFTER UPDATE ON links
    FOR EACH ROW WHEN ((to_jsonb(OLD) - 'visits') IS DISTINCT FROM (to_jsonb(NEW) - 'visits'))
    EXECUTE FUNCTION log_link_change();
CREATE TRIGGER links_deletions_logged AFTER DELETE ON links
    FOR EACH ROW EXECUTE FUNCTION log_link_change();
