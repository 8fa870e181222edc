-- v16: fair claiming. Each job's fairness key (its submit's fairness_key,
-- else its ordering key, else ''). A round_robin kind's claim walks the
-- distinct keys with due jobs by jobs_fair (one probe per key, never a
-- key's whole backlog) and reads each key's heads in priority order.
ALTER TABLE jobs ADD COLUMN fairness_key TEXT NOT NULL DEFAULT '';
UPDATE jobs SET fairness_key = ordering_key WHERE ordering_key IS NOT NULL AND state IN (0, 1, 2, 6);
CREATE INDEX jobs_fair ON jobs (kind, fairness_key, priority DESC, seq)
    WHERE state = 0 AND next_attempt_at IS NULL;
