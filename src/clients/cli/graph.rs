//! Workflows in the CLI: `jobd graph ID` (GetJobGraph as an indented tree,
//! or its JSON), and the parents and children `jobd status` shows.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::connection::JobClient;
use super::output::{print_json, printable, state_name};
use super::{exit, Failure};
use crate::proto::{self, JobState};

/// At most this many parents or children on `jobd status`; `jobd graph`
/// shows them all.
const STATUS_LIST: usize = 20;

/// A graph reply, indexed: each job by id, and each job's parents and
/// children in id order (ids are UUIDv7, so that is submit order).
struct Index<'a> {
    jobs: HashMap<&'a str, &'a proto::Job>,
    parents: BTreeMap<&'a str, Vec<&'a str>>,
    children: BTreeMap<&'a str, Vec<&'a str>>,
}

impl<'a> Index<'a> {
    fn new(g: &'a proto::GetJobGraphResponse) -> Index<'a> {
        let mut ix = Index {
            jobs: g.jobs.iter().map(|j| (j.id.as_str(), j)).collect(),
            parents: BTreeMap::new(),
            children: BTreeMap::new(),
        };
        for e in &g.edges {
            ix.parents.entry(&e.child).or_default().push(&e.parent);
            ix.children.entry(&e.parent).or_default().push(&e.child);
        }
        for list in ix.parents.values_mut().chain(ix.children.values_mut()) {
            list.sort_unstable();
            list.dedup();
        }
        ix
    }

    /// `ID  STATE  KIND` for a job of the graph (`?` if it is not there).
    fn line(&self, id: &str) -> String {
        match self.jobs.get(id) {
            Some(j) => format!(
                "{id:<36}  {:<10}  {}",
                state_name(j.state),
                printable(&j.kind, false)
            ),
            None => format!("{id:<36}  ?"),
        }
    }
}

/// `jobd graph ID [--depth N]`: the job, then its ancestors under
/// `parents:` and its descendants under `children:`, one step of
/// indentation per step of the graph. A job reached twice (a diamond) is
/// shown again, marked, without its subtree.
pub(super) async fn graph(
    c: &mut JobClient,
    id: String,
    depth: u32,
    json: bool,
) -> Result<u8, Failure> {
    let g = c
        .get_job_graph(proto::GetJobGraphRequest { id, depth })
        .await?
        .into_inner();
    if json {
        print_json(&g);
        return Ok(exit::OK);
    }
    let ix = Index::new(&g);
    let Some(root) = g.jobs.first().map(|j| j.id.as_str()) else {
        return Ok(exit::OK);
    };
    out!("{:<36}  {:<10}  KIND", "JOB", "STATE");
    out!("{}", ix.line(root));
    for (title, next) in [("parents:", &ix.parents), ("children:", &ix.children)] {
        if next.get(root).is_some_and(|l| !l.is_empty()) {
            out!("{title}");
            tree(&ix, next, root, 1, &mut HashSet::from([root]));
        }
    }
    if g.truncated {
        out!("(more jobs beyond this: --depth N shows more steps, up to 10; at most 1,000 jobs)");
    }
    Ok(exit::OK)
}

/// Prints `id`'s neighbours in `next` (parents or children), `level` steps
/// in, and theirs below them; `seen` keeps a job's subtree to one place.
fn tree<'a>(
    ix: &Index<'a>,
    next: &BTreeMap<&'a str, Vec<&'a str>>,
    id: &'a str,
    level: usize,
    seen: &mut HashSet<&'a str>,
) {
    for &n in next.get(id).map_or(&[][..], Vec::as_slice) {
        let indent = "  ".repeat(level);
        if !seen.insert(n) {
            out!("{indent}{}  (shown above)", ix.line(n));
            continue;
        }
        out!("{indent}{}", ix.line(n));
        tree(ix, next, n, level + 1, seen);
    }
}

/// What `jobd status` adds for a job in a workflow: how many parents it
/// still waits for, what a parent's failure does to it, and its parents
/// and children (GetJobGraph at depth 1) with their states.
pub(super) async fn print_relations(c: &mut JobClient, j: &proto::Job) -> Result<(), Failure> {
    if j.state == JobState::Waiting as i32 {
        out!(
            "waiting on:   {} of {} parents",
            j.waiting_on,
            j.parent_ids.len()
        );
    }
    if !j.parent_ids.is_empty() {
        let policy = if j.on_dependency_failure == proto::DependencyFailure::Run as i32 {
            "run (it runs once every parent has finished, whatever their outcome)"
        } else {
            "cancel (a parent that fails or is cancelled cancels it)"
        };
        out!("on failure:   {policy}");
    }
    let g = c
        .get_job_graph(proto::GetJobGraphRequest {
            id: j.id.clone(),
            depth: 1,
        })
        .await?
        .into_inner();
    let ix = Index::new(&g);
    let children = ix.children.get(j.id.as_str()).cloned().unwrap_or_default();
    let parents: Vec<&str> = j.parent_ids.iter().map(String::as_str).collect();
    for (title, list) in [("parents:", parents), ("children:", children)] {
        for (i, id) in list.iter().take(STATUS_LIST).enumerate() {
            let head = if i == 0 { title } else { "" };
            let state = ix.jobs.get(id).map_or("?", |p| state_name(p.state));
            out!("{head:<13} {id}  {state}");
        }
        if list.len() > STATUS_LIST {
            out!(
                "{:<13} ... and {} more (jobd graph {})",
                "",
                list.len() - STATUS_LIST,
                j.id
            );
        }
    }
    Ok(())
}
