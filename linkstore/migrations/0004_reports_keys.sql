-- Visitors' reports of links, API keys, and the links each key made (issue 13).
-- Additive, so that the release before it still runs on this schema after a rollback:
-- two new tables, and an index on links that holds only the links made with a key (none
-- before this release: building it reads the table once, and stores nothing).

-- A visitor's report. Nothing here identifies who sent it: no address, no User-Agent.
CREATE TABLE link_reports (
    id bigserial PRIMARY KEY,
    code text COLLATE "C" NOT NULL,
    reason text NOT NULL CHECK (reason IN ('phishing', 'malware', 'spam', 'legal', 'other')),
    details text NOT NULL DEFAULT '' CHECK (length(details) <= 1000),
    reported_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX link_reports_by_code ON link_reports (code, id);

-- An API key: only the SHA-256 of the key (256 random bits) is kept.
CREATE TABLE api_keys (
    id text PRIMARY KEY,                -- the start of the key: shown, and a link's owner
    name text NOT NULL UNIQUE,
    key_hash text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);

-- GET /api/links: a key's own links, newest first.
-- created_at in byte order ("C"), as the app compares its paging cursor.
CREATE INDEX links_by_owner ON links (owner, (created_at COLLATE "C") DESC, code DESC)
    WHERE owner IS NOT NULL;
