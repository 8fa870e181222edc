-- v2: claims read each kind's own queue, so kinds at their bound (or no
-- longer configured) can never crowd others out of a claim.
CREATE INDEX jobs_ready_kind ON jobs (kind, priority DESC, seq) WHERE state = 0 AND next_attempt_at IS NULL;
DROP INDEX jobs_ready;
