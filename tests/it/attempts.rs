//! The attempt history (#35): each ended attempt's start, end, outcome,
//! error and worker, the last 25, on GetStatus; `last_error` cleared by a
//! success while the history keeps it.

use jobd::proto::JobState;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_attempt_is_kept_with_where_it_ran() {
    let marks = tempfile::tempdir().unwrap();
    let m = marks.path().join("mark");
    let kinds = format!(
        "[kinds.flaky]\nhandler = \"command\"\nmax_attempts = 3\n\
         backoff = {{ initial = \"10ms\", max = \"10ms\" }}\n\
         command = [\"sh\", \"-c\", \"[ -e {m} ] || {{ touch {m}; echo first try fails >&2; exit 1; }}\"]\n\
         [kinds.r]\nhandler = \"remote\"\nmax_attempts = 2\nbackoff = {{ initial = \"10ms\", max = \"10ms\" }}\n",
        m = m.display()
    );
    let d = start_with(
        "store = \"sqlite:{dir}/jobd.db\"\n[workers]\nheartbeat_interval = \"1s\"\n",
        &kinds,
    )
    .await;
    let mut c = d.client().await;
    let job = submit(&mut c, req("flaky", "")).await;
    let j = wait_terminal(&mut c, &job.id).await;
    assert_eq!(state(&j), JobState::Succeeded);
    assert_eq!(j.last_error, "", "cleared by the success");
    let h: Vec<(u32, &str, &str)> = j
        .attempts
        .iter()
        .map(|a| (a.attempt, a.outcome.as_str(), a.worker.as_str()))
        .collect();
    assert_eq!(h, [(1, "retried", "local"), (2, "succeeded", "local")]);
    assert!(
        j.attempts[0].error.contains("first try fails"),
        "{:?}",
        j.attempts[0]
    );
    assert!(micros(&j.attempts[0].finished_at) >= micros(&j.attempts[0].started_at));
    // `jobd status` lists them, the earlier error with them.
    let out = std::process::Command::new(bin())
        .args(["status", &job.id, "--addr", &d.url()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("attempts:"), "{text}");
    assert!(
        text.contains("retried") && text.contains("first try fails"),
        "{text}"
    );
    // A remote worker's attempt names it.
    let mut w = crate::remote::raw(&d.url(), crate::remote::hello(&["r"], 1))
        .await
        .unwrap();
    let job = submit(&mut c, req("r", "")).await;
    let a = w.assign().await.job.unwrap();
    w.tx.send(crate::long_running::complete(&job.id, a.attempt))
        .await
        .unwrap();
    let j = wait_terminal(&mut c, &job.id).await;
    let worker = &j.attempts[0].worker;
    assert!(!worker.is_empty() && worker != "local", "{:?}", j.attempts);
    d.stop().await;
}

/// At most the last 25 attempts are kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_keeps_the_last_25() {
    let kinds = "[kinds.fail]\nhandler = \"fail\"\nmax_attempts = 30\nbackoff = { initial = \"1ms\", max = \"1ms\" }\n";
    let d = start_with("", kinds).await;
    let mut c = d.client().await;
    let job = submit(&mut c, req("fail", "")).await;
    let j = wait_terminal(&mut c, &job.id).await;
    assert_eq!(state(&j), JobState::Failed);
    assert_eq!(j.attempts.len(), 25);
    assert_eq!(j.attempts[0].attempt, 6);
    assert_eq!(j.attempts[24].attempt, 30);
    assert_eq!(j.attempts[24].outcome, "failed");
    d.stop().await;
}
