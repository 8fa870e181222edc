-- v10: the checkpoint an attempt stored (a worker's Touch, a command's
-- JOBD_CHECKPOINT_FILE), handed to the next attempt; NULL for none.
ALTER TABLE jobs ADD COLUMN checkpoint BLOB;
