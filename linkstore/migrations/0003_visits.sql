-- Visit statistics (visits.py, linkstore/visits_postgres.py, docs/visits.md). Nothing
-- here can identify a visitor: no address, no User-Agent, no cookie; visitor hashes are
-- keyed with a salt that is deleted once its day is over, and are themselves replaced
-- by their number an hour after that.

-- Counts per link and day. Each worker adds its batches to the rows of its own shard,
-- so writers never wait on each other's row locks, however hot one link is; a read
-- sums the shards. details: {"referrer": {"t.co": 3}, "browser": {...}, "os": {...},
-- "device": {...}}, the people whose visits have details (not the private ones).
CREATE TABLE visit_counts (
    code text COLLATE "C" NOT NULL,
    day date NOT NULL,
    shard smallint NOT NULL,
    visits bigint NOT NULL,             -- people, private visits included
    bots bigint NOT NULL,
    private bigint NOT NULL,            -- visits of people who sent DNT: 1 or Sec-GPC: 1
    details jsonb NOT NULL,
    PRIMARY KEY (code, day, shard)
);

-- a + b, two details objects: b's counts added to a's, kind by kind and value by value.
CREATE FUNCTION visit_details_add(a jsonb, b jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT a || coalesce(jsonb_object_agg(kind, coalesce(a -> kind, '{}') || (
               SELECT jsonb_object_agg(value, coalesce((a -> kind ->> value)::bigint, 0)
                                              + n::bigint)
                 FROM jsonb_each_text(counts) AS added(value, n))), '{}')
      FROM jsonb_each(b) AS kinds(kind, counts)
$$;

-- The visitor hashes of days not closed yet, one row per visitor per link and day.
CREATE TABLE visit_visitors (
    code text COLLATE "C" NOT NULL,
    day date NOT NULL,
    visitor bigint NOT NULL,
    PRIMARY KEY (code, day, visitor)
);

-- The number of unique visitors of closed days, once their hashes are gone.
CREATE TABLE visit_unique_days (
    code text COLLATE "C" NOT NULL,
    day date NOT NULL,
    visitors bigint NOT NULL,
    PRIMARY KEY (code, day)
);

-- Today's and tomorrow's salts; earlier ones are deleted when the day's is fetched.
CREATE TABLE visit_salts (
    day date PRIMARY KEY,
    salt bytea NOT NULL
);

-- The batches taken in the last day, so that a batch sent again (the writer lost the
-- connection before it heard of the commit) is not counted twice.
CREATE TABLE visit_batches (
    id uuid PRIMARY KEY,
    added_at timestamptz NOT NULL DEFAULT now()
);
