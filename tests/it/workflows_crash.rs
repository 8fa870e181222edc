//! Workflows under kill -9 (#32): a 200-job graph runs beside other load on
//! the real binary while the daemon is killed at random points, several
//! times. Afterwards no job waits on a finished parent, every job ends,
//! and each ended the way its parents say.

use std::collections::HashMap;
use std::time::Duration;

use jobd::proto::{self, JobState};

use crate::helpers::*;
use crate::workflows::dep;

const KINDS: &str = r#"
[queue]
max_batch = 1000

[kinds.work]
handler = "sleep"

[kinds.bad]
handler = "fail"
max_attempts = 1

[kinds.load]
handler = "echo"
"#;

/// A small deterministic generator (the seed is printed, so a failure can
/// be replayed).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n.max(1)
    }
}

/// 200 entries: each depends on up to 3 earlier ones (CANCEL or RUN), 1 in
/// 20 fails; the others sleep 5..40 ms.
fn graph(rng: &mut Rng) -> Vec<proto::SubmitRequest> {
    (0..200usize)
        .map(|i| {
            let kind = if rng.below(20) == 0 { "bad" } else { "work" };
            let deps: Vec<String> = match i {
                0 => Vec::new(),
                _ => {
                    let mut d: Vec<String> = (0..rng.below(4))
                        .map(|_| format!("${}", rng.below(i as u64)))
                        .collect();
                    d.sort();
                    d.dedup();
                    d
                }
            };
            let refs: Vec<&str> = deps.iter().map(String::as_str).collect();
            proto::SubmitRequest {
                payload: (5 + rng.below(35)).to_string().into_bytes(),
                ..dep(kind, &refs, rng.below(3) == 0)
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graph_survives_kill_9_at_random_points() {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    println!("seed {seed}");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut p = crate::binary::spawn_daemon(dir.path(), KINDS).await;
    let mut c = connect(&p.url).await;
    let jobs = crate::workflows::batch(&mut c, graph(&mut rng)).await;
    for round in 0..5 {
        // Load beside the graph.
        let load: Vec<proto::SubmitRequest> =
            (0..500).map(|i| req("load", &i.to_string())).collect();
        let _ = c
            .submit_batch(proto::SubmitBatchRequest { requests: load })
            .await;
        tokio::time::sleep(Duration::from_millis(20 + rng.below(200))).await;
        p.child.kill().unwrap();
        p.child.wait().unwrap();
        println!("killed in round {round}");
        p = crate::binary::spawn_daemon(dir.path(), KINDS).await;
        c = connect(&p.url).await;
    }
    let _guard = KillOnDrop(p.child);
    let mut end: HashMap<String, proto::Job> = HashMap::new();
    for j in &jobs {
        let j = wait_terminal(&mut c, &j.id).await;
        end.insert(j.id.clone(), j);
    }
    for j in end.values() {
        let parents: Vec<&proto::Job> = j.parent_ids.iter().map(|p| &end[p]).collect();
        let all_ok = parents.iter().all(|p| state(p) == JobState::Succeeded);
        let run = j.on_dependency_failure == proto::DependencyFailure::Run as i32;
        match state(j) {
            JobState::Succeeded | JobState::Failed => {
                assert!(all_ok || run, "{} ran though a parent failed: {j:?}", j.id);
                for p in &parents {
                    assert!(
                        micros(&j.started_at) >= micros(&p.finished_at),
                        "{} started before its parent {}",
                        j.id,
                        p.id
                    );
                }
            }
            JobState::Cancelled => {
                assert!(
                    !all_ok && !run,
                    "{} cancelled though its parents allow it: {}",
                    j.id,
                    j.last_error
                );
            }
            other => panic!("{} ended {other:?}", j.id),
        }
    }
}
