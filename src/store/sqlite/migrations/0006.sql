-- v6: cron schedules: the next fire no instance took yet, the operator's
-- pause, and the job of the last fire.
CREATE TABLE schedules (id TEXT PRIMARY KEY, next_fire_at INTEGER NOT NULL,
  paused INTEGER NOT NULL DEFAULT 0, last_job_id TEXT);
