//! Checkpoints (#29): where an attempt got, stored by a worker's Touch or a
//! command's `JOBD_CHECKPOINT_FILE`, handed to the next attempt, durable
//! once acknowledged.

use std::time::Duration;

use jobd::proto::{self, worker_message, JobState};

use crate::helpers::*;
use crate::long_running::{complete, touch_ack, HEAD};
use crate::remote::{hello, msg, raw, Raw};

const KINDS: &str = "[kinds.r]\nhandler = \"remote\"\ntimeout = \"60s\"\n";

fn checkpoint(job_id: &str, attempt: u32, bytes: &[u8]) -> proto::WorkerMessage {
    msg(worker_message::Msg::Touch(proto::Touch {
        job_id: job_id.into(),
        attempt,
        extend_by: None,
        checkpoint: Some(bytes.to_vec()),
    }))
}

/// Sends a checkpoint and waits for its ack; true when it was kept.
async fn save(w: &mut Raw, job_id: &str, attempt: u32, bytes: &[u8]) -> bool {
    w.tx.send(checkpoint(job_id, attempt, bytes)).await.unwrap();
    let ack = touch_ack(w).await;
    assert_eq!((ack.job_id.as_str(), ack.attempt), (job_id, attempt));
    !ack.stale
}

/// A worker whose session is lost mid-job (its connection dropped, as a
/// killed process's is): the next attempt, on another worker, receives the
/// last checkpoint it stored; a stale attempt's checkpoint is refused and
/// changes nothing. On every store.
async fn next_attempt_resumes_on(head: &str) {
    let d = start_with(&format!("{head}{HEAD}"), KINDS).await;
    let mut c = d.client().await;
    let mut w = raw(&d.url(), hello(&["r"], 4)).await.unwrap();
    let job = submit(&mut c, req("r", "x")).await;
    let a = w.assign().await;
    assert!(a.checkpoint.is_empty(), "a first attempt has none");
    let attempt = a.job.unwrap().attempt;
    assert!(save(&mut w, &job.id, attempt, b"page 1").await);
    assert!(save(&mut w, &job.id, attempt, b"page 2").await);
    assert!(
        !save(&mut w, &job.id, attempt + 1, b"not mine").await,
        "a Touch for an attempt the session does not hold is stale"
    );
    assert_eq!(status(&mut c, &job.id).await.checkpoint_size, 6);
    drop(w);
    let mut w2 = raw(&d.url(), hello(&["r"], 4)).await.unwrap();
    let a2 = w2.assign().await;
    let attempt2 = a2.job.as_ref().unwrap().attempt;
    assert_eq!(attempt2, attempt + 1);
    assert_eq!(a2.checkpoint, b"page 2");
    assert_eq!(a2.job.unwrap().checkpoint_size, 6);
    w2.tx.send(complete(&job.id, attempt2)).await.unwrap();
    let j = wait_terminal(&mut c, &job.id).await;
    assert_eq!(state(&j), JobState::Succeeded, "{}", j.last_error);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_attempt_resumes_on_memory() {
    next_attempt_resumes_on("").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_attempt_resumes_on_sqlite() {
    next_attempt_resumes_on("store = \"sqlite:{dir}/jobd.db\"\n").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_attempt_resumes_on_postgres() {
    let Some(pg) = crate::pg::PgSchema::new("checkpoint_resume").await else {
        return;
    };
    next_attempt_resumes_on(&pg.toml("")).await;
}

/// A checkpoint acknowledged (TouchAck not stale) survives a kill -9 of
/// the daemon, and the attempt after the restart receives it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_checkpoint_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let extra = format!("{HEAD}{KINDS}");
    let p = crate::binary::spawn_daemon(dir.path(), &extra).await;
    let mut child = p.child;
    let mut c = connect(&p.url).await;
    let mut w = raw(&p.url, hello(&["r"], 4)).await.unwrap();
    let job = submit(&mut c, req("r", "x")).await;
    let attempt = w.assign().await.job.unwrap().attempt;
    let bytes: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
    assert!(save(&mut w, &job.id, attempt, &bytes).await);
    child.kill().unwrap();
    child.wait().unwrap();
    drop(w);
    let p = crate::binary::spawn_daemon(dir.path(), &extra).await;
    let _guard = KillOnDrop(p.child);
    let mut c = connect(&p.url).await;
    assert_eq!(status(&mut c, &job.id).await.checkpoint_size, 64 * 1024);
    let mut w = raw(&p.url, hello(&["r"], 4)).await.unwrap();
    let a = w.assign().await;
    assert_eq!(a.job.unwrap().attempt, attempt + 1);
    assert!(a.checkpoint == bytes, "the acknowledged checkpoint, whole");
}

/// A command finds the previous attempt's checkpoint in the file named by
/// `JOBD_CHECKPOINT_FILE` (absent on the first attempt) and leaves its own
/// there, failed or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_resumes_from_its_checkpoint_file() {
    let kinds = r#"
[kinds.cmd]
handler = "command"
command = ["sh", "-c", "if [ -f \"$JOBD_CHECKPOINT_FILE\" ]; then printf 'resumed from '; cat \"$JOBD_CHECKPOINT_FILE\"; else printf 'row 700' > \"$JOBD_CHECKPOINT_FILE\"; exit 1; fi"]
max_attempts = 2
backoff = { initial = "10ms", max = "10ms" }
"#;
    let d = start_with("store = \"sqlite:{dir}/jobd.db\"\n", kinds).await;
    let mut c = d.client().await;
    let job = submit(&mut c, req("cmd", "")).await;
    let j = wait_terminal(&mut c, &job.id).await;
    assert_eq!(state(&j), JobState::Succeeded, "{}", j.last_error);
    assert_eq!(j.attempt, 2);
    assert_eq!(j.result, b"resumed from row 700");
    assert_eq!(j.checkpoint_size, 7);
    d.stop().await;
}

/// Touch with only a checkpoint leaves the deadline where it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_alone_does_not_move_the_deadline() {
    let d = start_with(HEAD, KINDS).await;
    let mut c = d.client().await;
    let mut w = raw(&d.url(), hello(&["r"], 4)).await.unwrap();
    let job = submit(&mut c, req("r", "x")).await;
    let a = w.assign().await;
    let attempt = a.job.unwrap().attempt;
    w.tx.send(checkpoint(&job.id, attempt, b"c")).await.unwrap();
    let ack = touch_ack(&mut w).await;
    assert!(!ack.stale);
    let before = a.deadline.unwrap();
    let after = ack.deadline.unwrap();
    let micros = |t: &prost_types::Timestamp| t.seconds * 1_000_000 + i64::from(t.nanos) / 1000;
    assert!(
        (micros(&after) - micros(&before)).abs() < 50_000,
        "{before:?} vs {after:?}"
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
    w.tx.send(complete(&job.id, attempt)).await.unwrap();
    wait_terminal(&mut c, &job.id).await;
    d.stop().await;
}
