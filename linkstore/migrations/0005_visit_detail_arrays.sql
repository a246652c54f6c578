-- A visit_counts row's details as two arrays, not a JSON object (docs/visits.md, "Cost").
-- Adding one flush's details to a row's was the database's largest cost of counting:
-- 36 µs a row through visit_details_add's nested jsonb_each and jsonb_object_agg, 18 µs
-- as arrays (bench/pg_details.py measures both side by side).
--
-- Additive, so that the release before it still runs on this schema after a rollback:
-- it writes `details` (whose new default only serves this release's inserts) and leaves
-- the arrays as they are; this release writes the arrays and leaves `details` as it is.
-- A read adds both up, so neither release's counts are lost or counted twice.

-- detail_keys[i] is "kind:value" ("referrer:t.co", "browser:Firefox"; a kind has no
-- colon), detail_counts[i] its count.
ALTER TABLE visit_counts
    ADD COLUMN detail_keys text[] NOT NULL DEFAULT '{}',
    ADD COLUMN detail_counts bigint[] NOT NULL DEFAULT '{}',
    ALTER COLUMN details SET DEFAULT '{}',
    ADD CONSTRAINT visit_counts_details_match
        CHECK (cardinality(detail_keys) = cardinality(detail_counts));
