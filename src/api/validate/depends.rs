//! A submit's `depends_on`: existing ids or `$N` (an earlier entry of the
//! same batch), bounded and without repeats.

use uuid::Uuid;

use super::Violations;
use crate::api::error::ApiError;
use crate::proto;

/// A submit's `depends_on` and `on_dependency_failure`: each entry an
/// existing job's id or `$N`, entry N of the same batch below this one
/// (`earlier[N]`: its id, `None` when that entry was refused); at most
/// `max` of them, no repeats.
pub fn depends_on(
    refs: &[String],
    policy: i32,
    prefix: &str,
    earlier: &[Option<Uuid>],
    max: usize,
) -> Result<(Vec<Uuid>, crate::job::ParentFailure), ApiError> {
    let mut v = Violations {
        prefix,
        list: Vec::new(),
    };
    let policy = match proto::DependencyFailure::try_from(policy) {
        Ok(proto::DependencyFailure::Run) => crate::job::ParentFailure::Run,
        Ok(_) => crate::job::ParentFailure::Cancel,
        Err(_) => {
            v.bad("on_dependency_failure", format!("unknown value {policy}"));
            crate::job::ParentFailure::Cancel
        }
    };
    if refs.len() > max {
        let m = format!(
            "{} parents is over the limit of {max} (queue.max_parents)",
            refs.len()
        );
        v.bad("depends_on", m);
    }
    let mut parents = Vec::with_capacity(refs.len().min(max));
    for (i, r) in refs.iter().enumerate().take(max) {
        let field = format!("depends_on[{i}]");
        let id = match r.strip_prefix('$') {
            Some(n) => match n.parse::<usize>() {
                Ok(n) if n < earlier.len() => match earlier[n] {
                    Some(id) => Some(id),
                    None => {
                        v.bad(&field, format!("entry {n} of this batch was refused"));
                        None
                    }
                },
                _ if earlier.is_empty() && prefix.is_empty() => {
                    v.bad(
                        &field,
                        format!("{r:?}: $N names an earlier entry of a SubmitBatch"),
                    );
                    None
                }
                _ => {
                    let m = format!(
                        "{r:?}: $N must name an earlier entry (N below {})",
                        earlier.len()
                    );
                    v.bad(&field, m);
                    None
                }
            },
            None => match Uuid::try_parse(r) {
                Ok(id) => Some(id),
                Err(_) => {
                    v.bad(&field, format!("{r:?} is not a job id (a UUID) nor $N"));
                    None
                }
            },
        };
        if let Some(id) = id {
            if parents.contains(&id) {
                v.bad(&field, format!("{r:?} is given twice"));
            }
            parents.push(id);
        }
    }
    if v.list.is_empty() {
        Ok((parents, policy))
    } else {
        Err(ApiError::InvalidArgument(v.list))
    }
}
