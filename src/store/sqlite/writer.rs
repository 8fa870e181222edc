//! The writer thread: groups queued write requests into one transaction
//! (group commit), each in its savepoint unless it changes one row, and the
//! statements those requests run.

use super::*;

/// What the writer keeps between transactions.
pub(super) struct WriterState {
    /// QUEUED + RETRY_WAIT, kept here so the backlog check on every submit
    /// does not count rows. Recounted after a failed commit.
    pub(super) waiting: i64,
    /// Rated kinds' token buckets (one process claims from this file, so
    /// they live here; a restart starts them full).
    pub(super) buckets: HashMap<String, Bucket>,
    /// Each round_robin kind's key served last (a restart starts over).
    pub(super) cursors: HashMap<String, String>,
    /// Each fairness key's bucket (`key_rate`), like `buckets`.
    pub(super) key_buckets: crate::store::fairness::KeyBuckets,
    /// Some job has parents: a job's end looks for children (a store that
    /// never saw depends_on skips the lookup).
    pub(super) has_deps: bool,
    /// Children moved in this transaction by their parents' ends.
    pub(super) moved: Vec<crate::store::deps::Moved>,
    /// Where `moved` goes once committed (the store's `take_moved`).
    pub(super) committed: Arc<Mutex<Vec<crate::store::deps::Moved>>>,
}

pub(super) type Reply = Box<dyn FnOnce(Result<(), StoreError>) + Send>;
/// A write request's body: run on the group's transaction, or handed the
/// error when the group could not start. Returns the reply and whether the
/// request failed (its changes are then undone and the writer's counter
/// restored).
pub(super) type WorkFn = Box<
    dyn FnOnce(Result<(&Transaction<'_>, &mut WriterState), StoreError>) -> (Reply, bool) + Send,
>;

pub(super) struct Work {
    pub(super) run: WorkFn,
    /// The request changes at most one row, in its last statement. SQLite
    /// undoes a failed statement by itself, so such a request needs no
    /// savepoint; others get one, which copies every page they change into
    /// a sub-journal (13% of the writer during unary submits, perf).
    pub(super) single_change: bool,
    /// Attempts' outcomes ([`super::outcomes`]): while no job has children
    /// each outcome is one single-row `UPDATE`, so the request needs no
    /// savepoint then either.
    pub(super) outcomes: bool,
}

pub(super) enum Request {
    Work(Work),
    Close(oneshot::Sender<()>),
}

pub(super) fn writer_loop(
    mut conn: Connection,
    ckpt: Checkpointer,
    mut rx: mpsc::Receiver<Request>,
    mut st: WriterState,
) {
    let mut batch: Vec<Work> = Vec::with_capacity(GROUP_MAX);
    let mut close: Option<oneshot::Sender<()>> = None;
    while close.is_none() {
        match rx.blocking_recv() {
            Some(Request::Work(w)) => batch.push(w),
            Some(Request::Close(c)) => close = Some(c),
            None => break,
        }
        while batch.len() < GROUP_MAX && close.is_none() {
            match rx.try_recv() {
                Ok(Request::Work(w)) => batch.push(w),
                Ok(Request::Close(c)) => close = Some(c),
                Err(_) => break,
            }
        }
        if !batch.is_empty() {
            run_group(&mut conn, &mut batch, &mut st);
            ckpt.committed();
        }
    }
    rx.close();
    // Requests that raced the close get an error, not silence.
    while let Ok(r) = rx.try_recv() {
        if let Request::Work(w) = r {
            (w.run)(Err(gone())).0(Err(gone()));
        }
    }
    // The checkpoint thread stops first, so this one is not kept waiting.
    drop(ckpt);
    let _ = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);");
    drop(conn);
    if let Some(c) = close {
        let _ = c.send(());
    }
}

pub(super) fn run_group(conn: &mut Connection, batch: &mut Vec<Work>, st: &mut WriterState) {
    let before = st.waiting;
    let tx = match conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => {
            let e = map_err(e);
            tracing::warn!(error = %e, "cannot begin store transaction");
            for w in batch.drain(..) {
                let err = || StoreError::Unavailable(Detail::new(e.to_string()).because(e.clone()));
                (w.run)(Err(err())).0(Err(err()));
            }
            return;
        }
    };
    let mut replies = Vec::with_capacity(batch.len());
    // Set when SQLite rolled the whole transaction back by itself (it does
    // on some I/O errors): nothing of this group can be committed then.
    let mut lost: Option<StoreError> = None;
    for w in batch.drain(..) {
        if let Some(e) = &lost {
            let err = StoreError::Unavailable(Detail::new(e.to_string()).because(e.clone()));
            replies.push((w.run)(Err(err)).0);
            continue;
        }
        // Outcomes undo themselves while no job has children (see Work).
        let self_undoing = w.single_change || (w.outcomes && !st.has_deps);
        let savepoint = !self_undoing;
        if savepoint {
            if let Err(e) = exec_cached(&tx, "SAVEPOINT w") {
                replies.push((w.run)(Err(map_err(e))).0);
                continue;
            }
        }
        let (waiting, moved) = (st.waiting, st.moved.len());
        let (reply, failed) = (w.run)(Ok((&tx, &mut *st)));
        replies.push(reply);
        if failed {
            // Undo only this request, so the rest of the group still commits
            // (a single change was undone by SQLite with its statement).
            st.waiting = waiting;
            st.moved.truncate(moved);
            if savepoint {
                let _ = exec_cached(&tx, "ROLLBACK TO w");
            }
        }
        if tx.is_autocommit() {
            lost = Some(StoreError::Unavailable(
                "the store rolled the transaction back".into(),
            ));
        } else if savepoint {
            let _ = exec_cached(&tx, "RELEASE w");
        }
    }
    let commit = match lost {
        Some(e) => {
            drop(tx);
            Err(e)
        }
        None => tx.commit().map_err(map_err),
    };
    if let Err(e) = &commit {
        tracing::warn!(error = %e, "store commit failed; nothing in this group was stored");
        st.waiting = count_waiting(conn).unwrap_or(before);
        st.moved.clear();
    } else if !st.moved.is_empty() {
        let mut out = st.committed.lock().unwrap_or_else(|p| p.into_inner());
        out.append(&mut st.moved);
    }
    for r in replies {
        r(commit
            .as_ref()
            .map(|_| ())
            .map_err(|e| StoreError::Unavailable(Detail::new(e.to_string()).because(e.clone()))));
    }
}

/// Runs a parameterless statement through the statement cache: the
/// savepoints around each request would otherwise be parsed every time.
pub(super) fn exec_cached(tx: &Transaction<'_>, sql: &str) -> rusqlite::Result<usize> {
    tx.prepare_cached(sql).and_then(|mut s| s.execute([]))
}

/// One job by id (its text built once: the statement cache hashes it).
static LOAD: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| format!("SELECT {COLS} FROM jobs WHERE id = ?1"));

pub(super) fn load(tx: &Transaction<'_>, id: Uuid) -> Result<Option<Job>, StoreError> {
    tx.prepare_cached(&LOAD)
        .and_then(|mut s| {
            s.query_row([id.as_bytes().as_slice()], row_to_job)
                .optional()
        })
        .map_err(map_err)
}

/// Writes back a job changed by a transition, fenced on the state and
/// attempt it was read with.
pub(super) fn save(
    tx: &Transaction<'_>,
    st: &mut WriterState,
    job: &Job,
    old_state: JobState,
    old_attempt: u32,
) -> Result<(), StoreError> {
    let n = tx
        .prepare_cached(
            "UPDATE jobs SET state = ?2, attempt = ?3, result = ?4, updated_at = ?5, \
             started_at = ?6, finished_at = ?7, next_attempt_at = ?8, lease_expires_at = ?9, \
             last_error = ?10, sequence = ?11, waiting_on = ?14, attempts = ?15, \
             start_before = ?16, dedup_key = ?17 \
             WHERE id = ?1 AND state = ?12 AND attempt = ?13",
        )
        .and_then(|mut s| {
            s.execute(params![
                job.id.as_bytes().as_slice(),
                state_code(job.state),
                job.attempt,
                job.result.as_ref(),
                job.updated_at,
                job.started_at,
                job.finished_at,
                job.next_attempt_at,
                job.lease_expires_at,
                job.last_error,
                job.sequence as i64,
                state_code(old_state),
                old_attempt,
                job.waiting_on,
                codec::encode_attempts(&job.attempts),
                job.start_before,
                job.dedup_key,
            ])
        })
        .map_err(map_err)?;
    if n != 1 {
        return Err(StoreError::Internal(
            format!("job {} changed under the writer", job.id).into(),
        ));
    }
    st.waiting += i64::from(job.state.is_waiting()) - i64::from(old_state.is_waiting());
    super::deps::after_save(tx, st, job, old_state)
}

/// Loads, transitions and saves each job in `ids`.
pub(super) fn transition_all(
    tx: &Transaction<'_>,
    st: &mut WriterState,
    ids: Vec<Uuid>,
    mut f: impl FnMut(&mut Job) -> bool,
) -> Result<Vec<Job>, StoreError> {
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(mut job) = load(tx, id)? {
            let (s, a) = (job.state, job.attempt);
            if f(&mut job) {
                save(tx, st, &job, s, a)?;
                out.push(job);
            }
        }
    }
    Ok(out)
}

/// Applies one outcome of [`Store::finish_many`], fenced by its attempt.
pub(super) fn finish_one(
    tx: &Transaction<'_>,
    st: &mut WriterState,
    f: &Finish,
) -> Result<Option<Job>, StoreError> {
    transition_all(tx, st, vec![f.id], |j| {
        transition::finish_on(j, f.attempt, f.outcome.clone(), f.now, &f.worker)
    })
    .map(|mut jobs| jobs.pop())
}

pub(super) fn ids(
    tx: &Transaction<'_>,
    sql: &str,
    p: impl rusqlite::Params,
) -> Result<Vec<Uuid>, StoreError> {
    let mut s = tx.prepare_cached(sql).map_err(map_err)?;
    let rows = s
        .query_map(p, |r| r.get::<_, Vec<u8>>(0))
        .map_err(map_err)?;
    let mut out = Vec::new();
    for r in rows {
        let b = r.map_err(map_err)?;
        out.push(
            Uuid::from_slice(&b)
                .map_err(|e| StoreError::Corrupt(Detail::new(e.to_string()).because(e)))?,
        );
    }
    Ok(out)
}

pub(super) fn insert_one(
    tx: &Transaction<'_>,
    st: &mut WriterState,
    new: NewJob,
    max_backlog: u64,
) -> Result<InsertOutcome, StoreError> {
    if let Some(key) = &new.idempotency_key {
        let existing = tx
            .prepare_cached(&format!(
                "SELECT {COLS} FROM jobs WHERE idempotency_key = ?1"
            ))
            .and_then(|mut s| s.query_row([key], row_to_job).optional())
            .map_err(map_err)?;
        if let Some(job) = existing {
            return Ok(crate::store::idempotent(&job, &new.request_hash));
        }
    }
    if let Some(o) = super::dedup::merge(tx, &new)? {
        return Ok(o);
    }
    if st.waiting >= max_backlog.min(i64::MAX as u64) as i64 {
        return Ok(InsertOutcome::BacklogFull);
    }
    let standing = match super::deps::standing(tx, &new)? {
        Ok(s) => s,
        Err(parent) => return Ok(InsertOutcome::UnknownParent(parent)),
    };
    let job = super::transition::create(new, now_micros(), standing, |kind| {
        // An error here reads as "ready": the job is then simply QUEUED.
        tx.prepare_cached(KIND_HAS_READY)
            .and_then(|mut s| s.exists([kind]))
            .unwrap_or(true)
    });
    tx.prepare_cached(&format!(
        "INSERT INTO jobs ({COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, \
         ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29, ?30, ?31)"
    ))
    .and_then(|mut s| {
        s.execute(params![
            job.id.as_bytes().as_slice(),
            job.kind,
            state_code(job.state),
            job.attempt,
            job.max_attempts,
            job.priority,
            job.idempotency_key,
            job.request_hash.as_slice(),
            encode_labels(&job.labels),
            job.payload.as_ref(),
            job.result.as_ref(),
            job.timeout.as_micros() as i64,
            job.created_at,
            job.updated_at,
            job.started_at,
            job.finished_at,
            job.next_attempt_at,
            job.lease_expires_at,
            job.last_error,
            job.sequence as i64,
            job.ordering_key,
            codec::encode_trace(&job.trace),
            job.progress.as_ref().map(codec::encode_progress),
            (!job.checkpoint.is_empty()).then_some(job.checkpoint.as_ref()),
            (!job.parents.is_empty()).then(|| codec::encode_ids(&job.parents)),
            job.waiting_on,
            codec::policy_code(job.on_parent_failure),
            codec::encode_attempts(&job.attempts),
            job.start_before,
            job.dedup_key,
            job.fairness_key,
        ])
    })
    .map_err(map_err)?;
    super::deps::insert_edges(tx, st, &job)?;
    st.waiting += i64::from(job.state.is_waiting());
    Ok(InsertOutcome::Created(job))
}
