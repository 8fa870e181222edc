-- v12: each job's attempt history (the last 25 ended attempts: when, how,
-- where), encoded in one column (see codec::encode_attempts).
ALTER TABLE jobs ADD COLUMN attempts BLOB;
