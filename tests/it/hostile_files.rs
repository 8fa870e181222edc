//! Bad or hostile data files: a clear error at start or UNAVAILABLE for new
//! submits, never silent loss and never a panic.

use std::process::Command;
use std::time::Duration;

use jobd::proto::JobState;
use jobd::store::{self, StoreError};
use tonic::Code;
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};

use crate::helpers::*;

/// A small tmpfs of `size`, unmounted on drop. `None` (with a loud message)
/// where this machine does not let the tests mount one.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            eprintln!("SKIPPED: cannot mount a tmpfs here (needs root); full-disk and read-only cases not run");
            return None;
        }
        Some(Tmpfs(dir))
    }

    fn path(&self) -> &std::path::Path {
        self.0.path()
    }

    fn remount_ro(&self) {
        assert!(Command::new("mount")
            .args(["-o", "remount,ro"])
            .arg(self.path())
            .status()
            .unwrap()
            .success());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_database_is_refused_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let url = format!("sqlite:{}", path.display());
    let d = start(&format!("store = \"{url}\"\n")).await;
    let mut c = d.client().await;
    for i in 0..500 {
        let mut r = req("echo", &"x".repeat(512));
        r.run_at = Some(ts_in(Duration::from_secs(3600)));
        r.idempotency_key = format!("k{i}");
        submit(&mut c, r).await;
    }
    d.stop().await;
    let len = std::fs::metadata(&path).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(len / 3).unwrap();
    drop(f);
    match store::open(&url).await {
        Err(StoreError::Corrupt(m)) | Err(StoreError::Internal(m)) => {
            assert!(!m.is_empty())
        }
        Err(e) => panic!("unexpected error kind: {e}"),
        Ok(s) => {
            // Opened: reading the cut-off part must be an error, not a
            // silently shorter list.
            let r = s
                .list(&store::ListQuery {
                    limit: 1000,
                    ..Default::default()
                })
                .await;
            assert!(r.is_err(), "a truncated file must not read as fewer jobs");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_answers_unavailable_and_keeps_what_was_acknowledged() {
    let Some(fs) = Tmpfs::mount("4m") else { return };
    let d = start(&format!(
        "store = \"sqlite:{}/jobd.db\"\n[queue]\nmax_payload_bytes = 65536\n",
        fs.path().display()
    ))
    .await;
    // Room to free later, so the test can watch health come back (more
    // than the WAL's checkpoint takes once there is room again).
    let filler = fs.path().join("filler");
    std::fs::write(&filler, vec![0u8; 2 * 1024 * 1024]).unwrap();
    let mut c = d.client().await;
    let mut acked = Vec::new();
    let mut refused = None;
    for _ in 0..200 {
        let mut r = req("echo", &"z".repeat(60_000));
        r.run_at = Some(ts_in(Duration::from_secs(3600)));
        match c.submit(r).await {
            Ok(resp) => acked.push(resp.into_inner().job.unwrap().id),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let e = refused.expect("a 4 MiB disk fills up");
    assert_eq!(e.code(), Code::Unavailable, "{e}");
    assert!(!acked.is_empty());
    // Health follows: NOT_SERVING (and /readyz 503) while the store refuses
    // writes, so orchestrators stop sending traffic it would refuse...
    assert_eq!(health_becomes(&d, ServingStatus::NotServing).await, 503);
    // ...and SERVING again once a write goes through.
    // ...and SERVING again once there is room beyond the reserve (a probe
    // write that fits is not enough: that was the flapping of #28.11).
    std::fs::remove_file(&filler).unwrap();
    assert_eq!(health_becomes(&d, ServingStatus::Serving).await, 200);
    // Still serving, and everything acknowledged is there.
    for id in &acked {
        assert_eq!(state(&status(&mut c, id).await), JobState::Queued);
    }
    let small = c.submit(req("echo", "")).await;
    assert!(
        small.is_ok() || small.as_ref().unwrap_err().code() == Code::Unavailable,
        "{small:?}"
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_directory_is_a_clear_start_error() {
    let Some(fs) = Tmpfs::mount("4m") else { return };
    let url = format!("sqlite:{}/jobd.db", fs.path().display());
    let s = store::open(&url).await.unwrap();
    s.close().await.unwrap();
    fs.remount_ro();
    let config = jobd::Config::from_toml(&format!("store = \"{url}\"\nadmin_listen = \"off\"\n"))
        .unwrap()
        .with_default_kinds();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let prepared = jobd::prepare(config).unwrap();
    let r = jobd::run(prepared, listener, jobd::Shutdown::new()).await;
    match r {
        Err(jobd::RunError::Store(e)) => {
            let msg = e.to_string();
            assert!(
                msg.contains("read") || msg.contains("open") || msg.contains("unavailable"),
                "{msg}"
            );
        }
        other => panic!("expected a store error at start, got {other:?}"),
    }
}

/// Waits (bounded) until gRPC health reports `want`; returns /readyz's code.
async fn health_becomes(d: &TestDaemon, want: ServingStatus) -> u16 {
    let ch = tonic::transport::Channel::from_shared(d.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut h = HealthClient::new(ch);
    for _ in 0..100 {
        let got = h
            .check(HealthCheckRequest::default())
            .await
            .unwrap()
            .into_inner()
            .status();
        if got == want {
            return http_get(d.admin, "/readyz").await.0;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("health never became {want:?}");
}

/// #28.11 / DESIGN "Running out of disk": with `store.min_free` the daemon
/// refuses new jobs (UNAVAILABLE "disk reserve reached") before the disk is
/// full, still writes outcomes and cancels into the reserve, and holds
/// NOT_SERVING until free space is back above the reserve plus 10% (so
/// health does not flap while real submits would still fail).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_disk_reserve_refuses_submits_early_and_does_not_flap() {
    let Some(fs) = Tmpfs::mount("24m") else {
        return;
    };
    // Freed at the end, to bring free space back above the reserve + 10%.
    let room = fs.path().join("room");
    std::fs::write(&room, vec![0u8; 3 * 1024 * 1024]).unwrap();
    let d = start(&format!(
        "[store]\nurl = \"sqlite:{}/jobd.db\"\nmin_free = \"8MiB\"\n\
         [queue]\nmax_payload_bytes = 65536\n",
        fs.path().display()
    ))
    .await;
    let mut c = d.client().await;
    // A job that runs through the refusal, and delayed ones to cancel.
    let running = submit(&mut c, req("sleep", "3000")).await;
    let mut acked = Vec::new();
    let mut refused = None;
    for _ in 0..1000 {
        let mut r = req("echo", &"z".repeat(60_000));
        r.run_at = Some(ts_in(Duration::from_secs(3600)));
        match c.submit(r).await {
            Ok(resp) => acked.push(resp.into_inner().job.unwrap().id),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let e = refused.expect("the reserve is reached");
    assert_eq!(e.code(), Code::Unavailable, "{e}");
    assert!(e.message().contains("disk reserve reached"), "{e}");
    let (free, _) = jobd::disk_reserve::space(fs.path()).unwrap();
    assert!(free > 6 * 1024 * 1024, "refused only at {free} bytes free");
    assert_eq!(health_becomes(&d, ServingStatus::NotServing).await, 503);
    // The reserve is spent on what must still be written: an outcome and a
    // cancel.
    let done = wait_terminal(&mut c, &running.id).await;
    assert_eq!(state(&done), JobState::Succeeded);
    let cancelled = c
        .cancel(jobd::proto::CancelRequest {
            id: acked[0].clone(),
        })
        .await
        .expect("cancel is written into the reserve")
        .into_inner();
    assert_eq!(cancelled.job.unwrap().state, JobState::Cancelled as i32);
    // Still below the reserve + 10%: still NOT_SERVING, submits refused, for
    // several checks in a row (no flapping).
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            health_becomes(&d, ServingStatus::NotServing).await,
            503,
            "health flapped"
        );
        assert_eq!(
            c.submit(req("echo", "")).await.unwrap_err().code(),
            Code::Unavailable
        );
    }
    std::fs::remove_file(&room).unwrap();
    assert_eq!(health_becomes(&d, ServingStatus::Serving).await, 200);
    submit(&mut c, req("echo", "after")).await;
    for id in &acked[1..] {
        assert_eq!(state(&status(&mut c, id).await), JobState::Queued);
    }
    d.stop().await;
}
