-- v5: kinds an operator paused (PauseKind); a row per paused kind.
CREATE TABLE kind_pauses (kind TEXT PRIMARY KEY, paused_at INTEGER NOT NULL);
