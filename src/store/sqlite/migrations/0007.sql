-- v7: ordering keys. A claim checks a keyed job against the unfinished
-- jobs of its key (kind, key): jobs_key finds those few rows by key, in
-- submit order, without touching the rest of the queue. jobs_key_id serves
-- ListJobs filtered by key.
ALTER TABLE jobs ADD COLUMN ordering_key TEXT;
CREATE INDEX jobs_key ON jobs (kind, ordering_key, state, seq) WHERE ordering_key IS NOT NULL;
CREATE INDEX jobs_key_id ON jobs (ordering_key, id) WHERE ordering_key IS NOT NULL;
