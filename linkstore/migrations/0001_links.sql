-- The links; a count that stays exact without scanning them; and the change log that
-- every worker's cache follows (linkstore/postgres.py, docs/database.md).

CREATE TABLE links (
    code text COLLATE "C" PRIMARY KEY,  -- byte order: the same order as Python's sort
    url text,
    file text,                          -- an upload, by the name the app stored it under
    name text,                          -- the upload's own file name
    created_at text,                    -- ISO 8601, kept exactly as the app wrote it
    extra jsonb NOT NULL DEFAULT '{}',  -- other fields a links file held
    CONSTRAINT links_url_or_file CHECK ((url IS NULL) <> (file IS NULL))
);

-- count(*) over millions of rows on every health check would scan them all. Instead
-- each statement that inserts or deletes links adds its row count to one of 16
-- counters, picked by the connection, so concurrent creates seldom wait on one row.
CREATE TABLE link_counts (
    shard int PRIMARY KEY,
    n bigint NOT NULL
);
INSERT INTO link_counts SELECT shard, 0 FROM generate_series(0, 15) AS shard;

CREATE FUNCTION count_inserted_links() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE link_counts SET n = n + (SELECT count(*) FROM inserted)
     WHERE shard = pg_backend_pid() % 16 AND EXISTS (SELECT FROM inserted);
    RETURN NULL;
END $$;

CREATE FUNCTION count_deleted_links() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE link_counts SET n = n - (SELECT count(*) FROM deleted)
     WHERE shard = pg_backend_pid() % 16 AND EXISTS (SELECT FROM deleted);
    RETURN NULL;
END $$;

CREATE TRIGGER links_counted_on_insert AFTER INSERT ON links
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION count_inserted_links();

CREATE TRIGGER links_counted_on_delete AFTER DELETE ON links
    REFERENCING OLD TABLE AS deleted
    FOR EACH STATEMENT EXECUTE FUNCTION count_deleted_links();

-- Every update or delete of a link, by the app or by hand in psql, is logged here with
-- its transaction id. Workers poll for ids at or past the oldest transaction that was
-- still running at their previous poll, so no change is missed, whatever order
-- transactions commit in, and evict those codes from their caches.
CREATE TABLE link_changes (
    xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
    code text COLLATE "C" NOT NULL,
    changed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX link_changes_by_xid ON link_changes (xid);

CREATE FUNCTION log_link_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO link_changes (code) VALUES (OLD.code);
    RETURN NULL;
END $$;

CREATE TRIGGER links_changes_logged AFTER UPDATE OR DELETE ON links
    FOR EACH ROW EXECUTE FUNCTION log_link_change();
