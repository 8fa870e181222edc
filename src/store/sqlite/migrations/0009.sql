-- v9: long-running jobs. The latest progress a worker reported (one
-- encoded column, see codec::encode_progress) and the job's log lines,
-- pruned to the newest per job by the writer and removed with the job.
ALTER TABLE jobs ADD COLUMN progress BLOB;
CREATE TABLE job_logs (
    job_id  BLOB NOT NULL,
    seq     INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    at      INTEGER NOT NULL,
    line    TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
) WITHOUT ROWID;
CREATE TRIGGER job_logs_with_job AFTER DELETE ON jobs BEGIN
    DELETE FROM job_logs WHERE job_id = OLD.id;
END;
