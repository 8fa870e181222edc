-- v4: one row that health probes rewrite, to learn whether a store that
-- refused writes (a full disk) takes them again.
CREATE TABLE jobd_probe (id INTEGER PRIMARY KEY CHECK (id = 1), at INTEGER NOT NULL);
