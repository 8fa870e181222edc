-- v8: the submitter's W3C trace context, handed to every attempt.
ALTER TABLE jobs ADD COLUMN trace TEXT;
