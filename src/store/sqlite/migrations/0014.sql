-- v14: deduplication modes. A job holds its dedup key while it has not
-- started (QUEUED or WAITING, attempt 0); this index finds the holder and
-- makes a second holder of one (kind, key) impossible.
ALTER TABLE jobs ADD COLUMN dedup_key TEXT;
CREATE UNIQUE INDEX jobs_dedup ON jobs (kind, dedup_key)
    WHERE dedup_key IS NOT NULL AND attempt = 0 AND state IN (0, 6);
