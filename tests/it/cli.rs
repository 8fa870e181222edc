//! The CLI client against a real daemon: output, JSON, exit codes.

use std::process::{Command, Output};

use crate::helpers::*;

async fn jobd(addr: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new(bin());
    cmd.args(args).env("JOBD_ADDR", addr);
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_commands_output_and_exit_codes() {
    let d = start("").await;
    let addr = d.url();
    let o = jobd(
        &addr,
        &[
            "submit",
            "echo",
            "--payload",
            "hello",
            "--label",
            "team=web",
        ],
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let id = text(&o).trim().to_string();
    assert_eq!(id.len(), 36);

    let o = jobd(&addr, &["watch", &id]).await;
    assert_eq!(o.status.code(), Some(0));
    assert!(text(&o).contains("succeeded"), "{}", text(&o));

    let o = jobd(&addr, &["status", &id, "--json"]).await;
    assert_eq!(o.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["state"], "succeeded");
    assert_eq!(v["result"]["text"], "hello");
    assert_eq!(v["labels"]["team"], "web");

    let o = jobd(
        &addr,
        &["submit", "fail", "--payload", "permanent", "--wait"],
    )
    .await;
    assert_eq!(o.status.code(), Some(4), "job failed with --wait");
    assert!(text(&o).contains("permanent error"));

    let o = jobd(
        &addr,
        &["submit", "sleep", "--payload", "50", "--wait", "--json"],
    )
    .await;
    assert_eq!(o.status.code(), Some(0));
    let last: serde_json::Value = serde_json::from_str(text(&o).lines().last().unwrap()).unwrap();
    assert_eq!(last["job"]["state"], "succeeded");

    let o = jobd(&addr, &["status", &uuid::Uuid::now_v7().to_string()]).await;
    assert_eq!(o.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&o.stderr).contains("NOT_FOUND"));

    let o = jobd(&addr, &["submit", "no-such-kind"]).await;
    assert_eq!(o.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown kind"));

    let o = jobd(&addr, &["cancel", &id]).await;
    assert_eq!(o.status.code(), Some(64), "cancel of a finished job");

    let o = jobd(&addr, &["submit", "echo", "--delay", "1h"]).await;
    let later = text(&o).trim().to_string();
    let o = jobd(&addr, &["cancel", &later, "--json"]).await;
    assert_eq!(o.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["state"], "cancelled");

    let o = jobd(&addr, &["list", "--state", "cancelled", "--json"]).await;
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1);
    let o = jobd(&addr, &["list"]).await;
    assert_eq!(
        text(&o).lines().count(),
        5,
        "header + 4 jobs:\n{}",
        text(&o)
    );

    let o = jobd(&addr, &["health", "--json"]).await;
    assert_eq!(o.status.code(), Some(0));
    assert!(text(&o).contains("SERVING"));
    d.stop().await.unwrap();

    // A daemon that is down.
    let down = format!("http://127.0.0.1:{}", crate::binary::free_port());
    let o = jobd(&down, &["status", &id]).await;
    assert_eq!(o.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot reach jobd"));
}

/// Labels, results and errors come from clients; `jobd status` shows their
/// control characters escaped, so a terminal never executes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_escapes_terminal_control_characters() {
    let d = start("").await;
    let mut c = d.client().await;
    let mut r = req("echo", "\x1b]0;pwned\x07\x1b[2J result");
    r.labels.insert("team".into(), "\x1b[31mred\u{9b}1m".into());
    let job = submit(&mut c, r).await;
    wait_terminal(&mut c, &job.id).await;
    let o = jobd(&d.url(), &["status", &job.id]).await;
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let out = text(&o);
    assert!(
        !out.chars().any(|ch| ch.is_control() && ch != '\n'),
        "raw control characters in: {out:?}"
    );
    assert!(out.contains("\\u{1b}[31mred\\u{9b}1m"), "{out}");
    assert!(out.contains("\\u{1b}[2J result"), "{out}");
    d.stop().await.unwrap();
}
