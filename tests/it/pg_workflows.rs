//! Local stub: main registers this module but has not committed the file yet.
