//! The CLI client against a real daemon: output, JSON, exit codes.

use std::process::{Command, Output};
use std::time::Duration;

use jobd::proto;

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

    // --json is the reply in the proto3 JSON mapping, as grpcurl and the
    // HTTP routes print it: camelCase, enum names, bytes as base64.
    let o = jobd(&addr, &["status", &id, "--json"]).await;
    assert_eq!(o.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["job"]["state"], "JOB_STATE_SUCCEEDED");
    assert_eq!(v["job"]["result"], "aGVsbG8=");
    assert_eq!(v["job"]["labels"]["team"], "web");
    assert_eq!(v["job"]["maxAttempts"], 3);
    assert_eq!(v["payloadPreview"], "aGVsbG8=");

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
    assert_eq!(last["job"]["state"], "JOB_STATE_SUCCEEDED");
    assert!(last["sequence"].is_string(), "uint64 as a string: {last}");

    let o = jobd(&addr, &["status", &uuid::Uuid::now_v7().to_string()]).await;
    assert_eq!(o.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&o.stderr).contains("NOT_FOUND"));

    let o = jobd(&addr, &["submit", "ecoh"]).await;
    assert_eq!(o.status.code(), Some(64));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("unknown kind \"ecoh\"; did you mean \"echo\"?")
            && err.contains("configured kinds: echo, fail, short, single, sleep"),
        "{err}"
    );

    let o = jobd(&addr, &["cancel", &id]).await;
    assert_eq!(o.status.code(), Some(64), "cancel of a finished job");

    let o = jobd(&addr, &["submit", "echo", "--delay", "1h"]).await;
    let later = text(&o).trim().to_string();
    let o = jobd(&addr, &["cancel", &later, "--json"]).await;
    assert_eq!(o.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["job"]["state"], "JOB_STATE_CANCELLED");

    let o = jobd(&addr, &["list", "--state", "cancelled", "--json"]).await;
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["jobs"].as_array().unwrap().len(), 1);
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
    d.stop().await;

    // A daemon that is down: what failed, and what to check.
    let down = format!("http://127.0.0.1:{}", crate::binary::free_port());
    let o = jobd(&down, &["status", &id]).await;
    assert_eq!(o.status.code(), Some(5));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!(
            "cannot connect to jobd at {down}: connection refused"
        )) && err.contains("is jobd running there? Check --addr or JOBD_ADDR"),
        "{err}"
    );
    assert!(!err.contains("transport error"), "{err}");
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
    d.stop().await;
}

/// `jobd check-config F | head -1`: a closed stdout ends the command
/// quietly (SIGPIPE, as Unix tools do), not with a panic and exit 101.
#[test]
fn a_closed_stdout_ends_quietly() {
    use std::os::fd::{FromRawFd, OwnedFd};
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c.toml");
    std::fs::write(&f, "[kinds.hello]\nhandler = \"echo\"\n").unwrap();
    let mut fds = [0; 2];
    // SAFETY: pipe(2) fills two fds, each owned once below.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read); // the reader is gone before anything is written
    let out = Command::new(bin())
        .arg("check-config")
        .arg(&f)
        .stdout(std::process::Stdio::from(write))
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_ne!(out.status.code(), Some(101), "{err}");
    // Ended by SIGPIPE, as `cat` would be (a shell shows 141).
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{out:?}");
}

/// `jobd list` says when more jobs match (`--all` shows every one), and
/// `jobd status` shows a binary result's size instead of its bytes;
/// `--output FILE` writes them exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_says_when_more_match_and_status_keeps_binary_results_off_the_terminal() {
    let d = start("").await;
    let mut c = d.client().await;
    let mut r = req("echo", "");
    r.payload = vec![0xff, 0x00, 0xfe, 0x80];
    let bin_job = submit(&mut c, r).await;
    wait_terminal(&mut c, &bin_job.id).await;
    for i in 0..2 {
        submit(&mut c, req("echo", &format!("{i}"))).await;
    }
    let o = jobd(&d.url(), &["list", "--limit", "2"]).await;
    assert_eq!(o.status.code(), Some(0));
    let out = text(&o);
    assert_eq!(out.lines().count(), 4, "{out}");
    assert!(out.contains("more jobs match"), "{out}");
    let o = jobd(&d.url(), &["list", "--all"]).await;
    let out = text(&o);
    assert_eq!(out.lines().count(), 4, "{out}");
    assert!(!out.contains("more jobs match"), "{out}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("result.bin");
    let f = file.display().to_string();
    let o = jobd(&d.url(), &["status", &bin_job.id, "--output", &f]).await;
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert!(text(&o).contains("4 bytes, not UTF-8"), "{}", text(&o));
    assert!(!o.stdout.contains(&0xff), "raw bytes on the terminal");
    assert_eq!(std::fs::read(&file).unwrap(), [0xff, 0x00, 0xfe, 0x80]);
    d.stop().await;
}

/// `check-config` prints the effective config as TOML (JSON with --json),
/// environment applied, with every secret and header value redacted, and
/// warns about a command that is not on PATH.
#[test]
fn check_config_prints_the_effective_config_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c.toml");
    std::fs::write(
        &f,
        "store = \"postgres://u:hunter2@db/x\"\n\
         [kinds.hook]\nhandler = \"http\"\nurl = \"http://x/h\"\n\
         headers = { Authorization = \"Bearer abc\" }\n\
         [kinds.c]\nhandler = \"command\"\ncommand = [\"nosuchprog-xyz\"]\n\
         [auth]\ntokens = [{ token = \"0123456789abcdefXYZ\", role = \"admin\" }]\n",
    )
    .unwrap();
    let run = |json: bool| {
        let mut cmd = Command::new(bin());
        cmd.arg("check-config")
            .arg(&f)
            .env("JOBD_LISTEN", "127.0.0.1:6000");
        if json {
            cmd.arg("--json");
        }
        cmd.output().unwrap()
    };
    let o = run(false);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let out = text(&o);
    let config: toml::Value = toml::from_str(&out).unwrap();
    assert_eq!(config["listen"].as_str(), Some("127.0.0.1:6000"));
    for secret in ["hunter2", "Bearer abc", "0123456789abcdefXYZ"] {
        assert!(!out.contains(secret), "{secret} printed: {out}");
    }
    assert!(String::from_utf8_lossy(&o.stderr).contains("not found on PATH"));
    let o = run(true);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["kinds"]["hook"]["headers"]["Authorization"], "<redacted>");
}

/// With --json, an error is one JSON document on stderr too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_errors_are_json() {
    let d = start("").await;
    let o = jobd(
        &d.url(),
        &["status", &uuid::Uuid::now_v7().to_string(), "--json"],
    )
    .await;
    assert_eq!(o.status.code(), Some(3));
    let v: serde_json::Value = serde_json::from_slice(&o.stderr).unwrap();
    assert_eq!(v["exit_code"], 3);
    assert!(v["error"].as_str().unwrap().contains("not found"), "{v}");
    d.stop().await;
}

fn help(args: &[&str]) -> String {
    let o = Command::new(bin()).args(args).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    text(&o)
}

/// `serve` listens; it takes none of the client's connection flags (which
/// it would silently ignore), and its help does not list them. The client
/// commands do, and `submit` explains its defaults.
#[test]
fn help_texts_list_only_the_flags_a_command_uses() {
    let serve = help(&["serve", "--help"]);
    for flag in [
        "--addr",
        "--json",
        "--token",
        "--ca",
        "--cert",
        "--tls-server-name",
    ] {
        assert!(!serve.contains(flag), "serve --help lists {flag}:\n{serve}");
    }
    assert!(serve.contains("--listen"), "{serve}");
    let o = Command::new(bin())
        .args(["serve", "--addr", "127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "serve refuses --addr: {o:?}");

    let check = help(&["check-config", "--help"]);
    assert!(check.contains("--json"), "{check}");
    assert!(!check.contains("--addr"), "{check}");

    let submit = help(&["submit", "--help"]);
    for flag in ["--addr", "--json", "--token", "--ca", "--cert-key", "--key"] {
        assert!(
            submit.contains(flag),
            "submit --help lacks {flag}:\n{submit}"
        );
    }
    let flat = submit.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        flat.contains("0 means the kind's configured `max_attempts`"),
        "{submit}"
    );
    assert!(flat.contains("higher priority run first"), "{submit}");
    for cmd in ["list", "watch", "work", "bench"] {
        assert!(help(&[cmd, "--help"]).contains("--addr"), "{cmd}");
    }
    let work = help(&["work", "--help"]);
    for flag in ["--token", "--ca", "--cert-key", "--tls-server-name"] {
        assert!(work.contains(flag), "work --help lacks {flag}:\n{work}");
    }
    assert!(!work.contains("--json"), "{work}");
    // --key is the idempotency key on submit; the TLS key is --cert-key.
    let o = Command::new(bin())
        .args(["submit", "echo", "--cert", "/nonexistent"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "--cert needs --cert-key: {o:?}");
}

/// `jobd list --newest-first`, `--label k=v` (all must match),
/// `--ordering-key`, and `jobd submit --ordering-key`, against a real daemon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_filters_by_label_and_ordering_key_and_orders_newest_first() {
    let d = start("").await;
    let addr = d.url();
    let mut ids = Vec::new();
    for (i, labels, key) in [
        (0, vec!["team=web", "env=prod"], "user-1"),
        (1, vec!["team=web"], "user-2"),
        (2, vec!["team=db", "env=prod"], "user-1"),
    ] {
        let payload = i.to_string();
        let mut args = vec![
            "submit",
            "echo",
            "--delay",
            "1h",
            "--payload",
            &payload,
            "--ordering-key",
            key,
        ];
        for l in &labels {
            args.extend(["--label", l]);
        }
        let o = jobd(&addr, &args).await;
        assert_eq!(o.status.code(), Some(0), "{o:?}");
        ids.push(text(&o).trim().to_string());
    }
    let list = |args: Vec<&'static str>| {
        let addr = addr.clone();
        async move {
            let mut all = vec!["list", "--json"];
            all.extend(args);
            let o = jobd(&addr, &all).await;
            assert_eq!(o.status.code(), Some(0), "{o:?}");
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            v["jobs"]
                .as_array()
                .map_or(&[][..], Vec::as_slice)
                .iter()
                .map(|j| j["id"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(list(vec![]).await, ids);
    let mut newest = ids.clone();
    newest.reverse();
    assert_eq!(list(vec!["--newest-first"]).await, newest);
    assert_eq!(
        list(vec!["--label", "team=web"]).await,
        vec![ids[0].clone(), ids[1].clone()]
    );
    assert_eq!(
        list(vec!["--label", "team=web", "--label", "env=prod"]).await,
        vec![ids[0].clone()]
    );
    assert_eq!(
        list(vec!["--label", "env=prod", "--newest-first"]).await,
        vec![ids[2].clone(), ids[0].clone()]
    );
    assert!(list(vec!["--label", "team=nobody"]).await.is_empty());
    assert_eq!(
        list(vec!["--ordering-key", "user-1"]).await,
        vec![ids[0].clone(), ids[2].clone()]
    );
    // A page cut short by --limit still says more exist, newest first too.
    let o = jobd(&addr, &["list", "--newest-first", "--limit", "1"]).await;
    let out = text(&o);
    assert!(
        out.contains(&ids[2]) && out.contains("more jobs match"),
        "{out}"
    );

    let o = jobd(&addr, &["status", &ids[0], "--json"]).await;
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["job"]["orderingKey"], "user-1");
    let o = jobd(&addr, &["status", &ids[0]]).await;
    assert!(text(&o).contains("ordering key: user-1"), "{}", text(&o));

    // Bad input: a label without '=' is a usage error (2) before any call;
    // a label key the daemon refuses is INVALID_ARGUMENT (64).
    let o = jobd(&addr, &["list", "--label", "team"]).await;
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let long = format!("{}=x", "k".repeat(64));
    let o = jobd(&addr, &["list", "--label", &long]).await;
    assert_eq!(o.status.code(), Some(64), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("label keys are at most"));
    d.stop().await;
}

/// A label filter scans at most 10,000 jobs per call; a page cut short by
/// that scan has a next-page token, and `jobd list` follows it: the one
/// matching job behind 10,500 others is found, with no "more" line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_label_filter_follows_pages_cut_short_by_the_scan() {
    let d = start("").await;
    let mut c = d.client().await;
    let later =
        prost_types::Timestamp::from(std::time::SystemTime::now() + Duration::from_secs(3600));
    for _ in 0..21 {
        let requests = (0..500)
            .map(|_| proto::SubmitRequest {
                kind: "echo".into(),
                run_at: Some(later),
                ..Default::default()
            })
            .collect();
        c.submit_batch(proto::SubmitBatchRequest { requests })
            .await
            .unwrap();
    }
    let mut r = req("echo", "");
    r.run_at = Some(later);
    r.labels.insert("needle".into(), "yes".into());
    let needle = submit(&mut c, r).await;
    let o = jobd(&d.url(), &["list", "--label", "needle=yes"]).await;
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let out = text(&o);
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(out.contains(&needle.id), "{out}");
    assert!(!out.contains("more jobs match"), "{out}");
    let o = jobd(
        &d.url(),
        &["list", "--label", "needle=yes", "--newest-first", "--json"],
    )
    .await;
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["jobs"][0]["id"], needle.id.as_str());
    d.stop().await;
}
