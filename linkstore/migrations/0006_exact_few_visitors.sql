-- A day's few visitors counted exactly, as the file backend counts them: migration
-- 0005's sketch reads two hashes that share a bit as one visitor, which for 6 visitors
-- happens about one day in fifty. So a counts row also keeps its visitor hashes
-- themselves while it has no more than 64 of them (512 bytes, the sketch's size), and a
-- read counts them when every row of the day has its list; beyond that, the sketch.
--
-- Additive, for rollback: this release still ORs every visitor into the sketch, so the
-- release before it reads whole counts. That release leaves visitor_hashes alone, so a
-- list may miss what it wrote; visit_hashes (below) then reads NULL ("not known") and
-- the sketch counts, as it did before this migration.

-- visitor_hashes: the row's distinct visitor hashes, sorted, while they are no more than
-- 64; NULL once there are more (or the row comes from the release before): the sketch
-- counts.
ALTER TABLE visit_counts ADD COLUMN visitor_hashes bigint[];

-- A row's visitor hashes, if they are known: '{}' for a row without visitors (however
-- stale its list: the release before clears only the sketch when it closes a day), the
-- list if it holds at least as many hashes as the sketch has bits (it misses none, but
-- for the rare one the release before added onto a bit a listed hash already set),
-- else NULL.
CREATE FUNCTION visit_hashes(sketch bit, hashes bigint[]) RETURNS bigint[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN sketch IS NULL THEN '{}'::bigint[]
                WHEN bit_count(sketch) <= cardinality(hashes) THEN hashes END
$$;

