-- Fewer, cheaper writes per flush (docs/visits.md, "Cost"; bench/pg_details.py measures
-- both schemas side by side):
--
-- - A row's details as two arrays, not a JSON object: adding a flush's details to a
--   row's through visit_details_add's nested jsonb_each and jsonb_object_agg cost about
--   twice as much.
-- - The day's unique visitors as a sketch in the row, not a row per visitor: a flush of
--   people who are nearly all new wrote one row per visit, which was most of the
--   database's work. Sketches merge with `|`, so shards and late flushes still dedupe.
--
-- Additive, so that the release before it still runs on this schema after a rollback:
-- it writes `details` (whose new default only serves this release's inserts) and
-- visit_visitors, and leaves the new columns as they are; this release writes only the
-- new columns. A read adds both up, so neither release's counts are lost.

-- detail_keys[i] is "kind:value" ("referrer:t.co", "browser:Firefox"; a kind has no
-- colon), detail_counts[i] its count.
--
-- visitor_sketch: the day's visitor hashes as a multi-resolution bitmap (Estan, Varghese
-- and Fisk, "Bitmap algorithms for counting active flows on high speed links", 2003):
-- 16 levels of 256 bits. A hash sets bit `hash & 255` of level min(15, the number of
-- trailing zero bits of hash >> 8), so level i takes one hash in 2^(i+1), the last the
-- rest (visits_postgres.visitor_sketch). NULL: no visitor with details.
ALTER TABLE visit_counts
    ADD COLUMN detail_keys text[] NOT NULL DEFAULT '{}',
    ADD COLUMN detail_counts bigint[] NOT NULL DEFAULT '{}',
    ADD COLUMN visitor_sketch bit(4096),
    ALTER COLUMN details SET DEFAULT '{}',
    ADD CONSTRAINT visit_counts_details_match
        CHECK (cardinality(detail_keys) = cardinality(detail_counts));

-- How many distinct hashes a sketch holds. Each level is a linear counter, b ln(b / zero
-- bits), exact while no two hashes share a bit; the levels from the first of those no
-- more than 70 % full on up count a 2^-base sample of the hashes. Measured on random
-- hashes (8 sets of each size): exact up to 10, within 6 % from 30 to 1,000 and 11 %
-- from 3,000 to 5,000,000 (tests/test_visits.py holds it to 12 %); it stops growing near
-- 2^15 * 256 * ln 256, some 46 million visitors a link and day.
CREATE FUNCTION visit_sketch_count(sketch bit) RETURNS bigint
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    WITH levels AS (
        SELECT level, bit_count(substring(sketch FROM level * 256 + 1 FOR 256)) AS ones
          FROM generate_series(0, 15) AS level),
    base AS (
        SELECT least(coalesce(max(level) + 1, 0), 15) AS level FROM levels WHERE ones > 179)
    SELECT round(2 ^ base.level * sum(256 * ln(256.0 / greatest(256 - ones, 1))))::bigint
      FROM levels, base WHERE levels.level >= base.level GROUP BY base.level
$$;
