-- v13: start deadlines. A job not started by `start_before` ends FAILED;
-- the sweeper finds such jobs among those not started through this index.
ALTER TABLE jobs ADD COLUMN start_before INTEGER;
CREATE INDEX jobs_start_before ON jobs (start_before)
    WHERE start_before IS NOT NULL AND state IN (0, 2, 6);
