-- v3: ListJobs filtered by kind and state seeks instead of scanning every
-- job of that state.
CREATE INDEX jobs_kind_state_id ON jobs (kind, state, id);
