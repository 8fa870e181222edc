-- v15: schedules created through the API (CreateSchedule) keep their
-- definition (JSON) in their row; config schedules' rows leave it NULL.
ALTER TABLE schedules ADD COLUMN definition TEXT;
