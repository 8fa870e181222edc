-- v11: workflows. A job's parents (depends_on: their 16-byte ids, one
-- after another; NULL for none), how many have not finished, and what a
-- parent's failure does (0 cancel, 1 run). job_deps finds a parent's
-- children when it ends; WAITING (state 6) jobs are indexed for the
-- sweeper's re-check. Edges go with either job.
ALTER TABLE jobs ADD COLUMN parents BLOB;
ALTER TABLE jobs ADD COLUMN waiting_on INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN dep_policy INTEGER NOT NULL DEFAULT 0;
CREATE TABLE job_deps (
    parent BLOB NOT NULL,
    child  BLOB NOT NULL,
    PRIMARY KEY (parent, child)
) WITHOUT ROWID;
CREATE INDEX job_deps_child ON job_deps (child);
CREATE INDEX jobs_waiting ON jobs (seq) WHERE state = 6;
CREATE TRIGGER job_deps_with_job AFTER DELETE ON jobs BEGIN
    DELETE FROM job_deps WHERE child = OLD.id;
    DELETE FROM job_deps WHERE parent = OLD.id;
END;
