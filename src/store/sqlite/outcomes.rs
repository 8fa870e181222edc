//! Attempts' outcomes ([`Store::finish_many`]): one write request for the
//! whole group (one reply, one wake-up), in which one failing outcome must
//! not undo the others.

use super::*;

impl SqliteStore {
    /// Applies `items` in one write request; each answer is the job after
    /// its outcome, `None` where fencing refused it, or its own error.
    pub(super) async fn write_outcomes(
        &self,
        items: Vec<Finish>,
    ) -> Result<FinishResults, StoreError> {
        let (tx, rx) = oneshot::channel();
        let run: WorkFn = Box::new(move |ctx| {
            let r = ctx.and_then(|(t, st)| finish_group(t, st, &items));
            let failed = r.is_err();
            let reply: Reply = Box::new(move |commit: Result<(), StoreError>| {
                let _ = tx.send(commit.and(r));
            });
            (reply, failed)
        });
        let work = Work {
            run,
            single_change: false,
            outcomes: true,
        };
        self.writer
            .send(Request::Work(work))
            .await
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }
}

/// The group's outcomes, in order.
///
/// While no job in the store has children, each outcome changes one row
/// in one `UPDATE` (fenced on state and attempt) and nothing else, so a
/// failing one is undone by SQLite with its statement: no savepoint, here
/// or around the request ([`Work::outcomes`]). A savepoint copies every
/// page the group changes into a sub-journal, and its three statements
/// ran per group (~2.5% of the writer in a burn-down, perf).
///
/// Otherwise an outcome also moves children, in several statements. All
/// outcomes then go in one savepoint, and only if one fails is the group
/// redone with a savepoint per outcome (a savepoint per outcome was a
/// fifth of the writer's time in a burn-down, perf).
fn finish_group(
    tx: &Transaction<'_>,
    st: &mut WriterState,
    items: &[Finish],
) -> Result<FinishResults, StoreError> {
    if !st.has_deps {
        return Ok(items.iter().map(|f| finish_one(tx, st, f)).collect());
    }
    let sp = |sql: &str| exec_cached(tx, sql).map_err(map_err);
    let (waiting, moved) = (st.waiting, st.moved.len());
    sp("SAVEPOINT fm")?;
    let fast: Result<Vec<_>, _> = items.iter().map(|f| finish_one(tx, st, f)).collect();
    if let Ok(jobs) = fast {
        sp("RELEASE fm")?;
        return Ok(jobs.into_iter().map(Ok).collect());
    }
    st.waiting = waiting;
    st.moved.truncate(moved);
    sp("ROLLBACK TO fm")?;
    sp("RELEASE fm")?;
    let mut out = Vec::with_capacity(items.len());
    for f in items {
        sp("SAVEPOINT f")?;
        let (waiting, moved) = (st.waiting, st.moved.len());
        let r = finish_one(tx, st, f);
        if r.is_err() {
            st.waiting = waiting;
            st.moved.truncate(moved);
            sp("ROLLBACK TO f")?;
        }
        sp("RELEASE f")?;
        out.push(r);
    }
    Ok(out)
}
