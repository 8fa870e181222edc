//! TLS and mTLS on the gRPC listener, with certificates made in the test.

use std::time::Duration;

use jobd::proto::job_service_client::JobServiceClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::helpers::*;

async fn tls_client(
    url: &str,
    ca: &str,
    identity: Option<(String, String)>,
) -> Result<JobServiceClient<Channel>, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let ch = Channel::from_shared(url.replace("http://", "https://"))
        .unwrap()
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await?;
    Ok(JobServiceClient::new(ch))
}

/// Starts the real binary with config file `cfg` on `port`; returns it and
/// a TLS client (trusting `ca`) once it serves, or `None` if it never does.
async fn spawn_tls_binary(
    cfg: &str,
    port: u16,
    ca: &str,
    log: &str,
) -> (std::process::Child, Option<JobServiceClient<Channel>>) {
    let child = std::process::Command::new(bin())
        .args([
            "serve",
            "--config",
            cfg,
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .env("RUST_LOG", log)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    for _ in 0..500 {
        if let Ok(c) = tls_client(&url, ca, None).await {
            return (child, Some(c));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (child, None)
}

fn write(dir: &std::path::Path, name: &str, pem: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, pem).unwrap();
    p.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_tls_clients_and_refuses_plaintext() {
    let pki = Pki::new();
    let files = tempfile::tempdir().unwrap();
    let (cert, key) = pki.leaf(&["localhost"]);
    let d = start(&format!(
        "[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        write(files.path(), "server.pem", &cert),
        write(files.path(), "server.key", &key)
    ))
    .await;
    let mut c = tls_client(&d.url(), &pki.ca_pem, None).await.unwrap();
    let job = c
        .submit(req("echo", "over tls"))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(wait_terminal(&mut c, &job.id).await.result, b"over tls");
    // A plaintext client gets no service.
    let plain = async {
        let mut p = connect(&d.url()).await;
        p.submit(req("echo", "x")).await
    };
    let r = tokio::time::timeout(Duration::from_secs(5), plain).await;
    assert!(
        !matches!(r, Ok(Ok(_))),
        "plaintext submit succeeded on a TLS port"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_accepts_a_good_client_certificate_and_refuses_others() {
    let pki = Pki::new();
    let files = tempfile::tempdir().unwrap();
    let (cert, key) = pki.leaf(&["localhost"]);
    let d = start(&format!(
        "[tls]\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\n",
        write(files.path(), "server.pem", &cert),
        write(files.path(), "server.key", &key),
        write(files.path(), "ca.pem", &pki.ca_pem)
    ))
    .await;
    let good = pki.leaf(&["client"]);
    let mut c = tls_client(&d.url(), &pki.ca_pem, Some(good)).await.unwrap();
    c.submit(req("echo", "mtls")).await.unwrap();
    // A certificate from another CA, and no certificate at all: refused.
    let rogue = Pki::new().leaf(&["client"]);
    for identity in [Some(rogue), None] {
        let attempt = async {
            let mut c = tls_client(&d.url(), &pki.ca_pem, identity).await?;
            Ok::<_, Box<dyn std::error::Error>>(c.submit(req("echo", "x")).await?)
        };
        let r = tokio::time::timeout(Duration::from_secs(5), attempt).await;
        assert!(
            !matches!(r, Ok(Ok(_))),
            "a client without a valid certificate was served"
        );
    }
}

/// SIGHUP swaps the certificate for new connections; a connection made
/// before keeps working (a reconnect would fail: it trusts only the old CA);
/// a broken file on SIGHUP keeps the current certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_without_dropping_connections() {
    let (old, new) = (Pki::new(), Pki::new());
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = old.leaf(&["localhost"]);
    let cert_path = write(dir.path(), "server.pem", &cert);
    let key_path = write(dir.path(), "server.key", &key);
    let port = crate::binary::free_port();
    let cfg = write(
        dir.path(),
        "jobd.toml",
        &format!(
            "store = \"sqlite:{}/data/jobd.db\"\nadmin_listen = \"off\"\n\
             [tls]\ncert = \"{cert_path}\"\nkey = \"{key_path}\"\n",
            dir.path().display()
        ),
    );
    let (mut child, before) = spawn_tls_binary(&cfg, port, &old.ca_pem, "info").await;
    let url = format!("http://127.0.0.1:{port}");
    let mut before = before.expect("daemon serves TLS");
    let job = submit(&mut before, req("echo", "before reload")).await;

    let (cert2, key2) = new.leaf(&["localhost"]);
    write(dir.path(), "server.pem", &cert2);
    write(dir.path(), "server.key", &key2);
    let hup = |pid: u32| {
        assert!(std::process::Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap()
            .success())
    };
    hup(child.id());
    let mut reloaded = false;
    for _ in 0..250 {
        if tls_client(&url, &new.ca_pem, None).await.is_ok() {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(reloaded, "new connections never got the new certificate");
    assert!(
        tls_client(&url, &old.ca_pem, None).await.is_err(),
        "new connections still get the old certificate"
    );
    // The old connection was not dropped: this would need a reconnect,
    // which its old CA cannot pass.
    let j = wait_terminal(&mut before, &job.id).await;
    assert_eq!(state(&j), jobd::proto::JobState::Succeeded);

    // A broken file is refused; the daemon keeps serving the new certificate.
    write(dir.path(), "server.pem", "not a certificate");
    hup(child.id());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut c = tls_client(&url, &new.ca_pem, None)
        .await
        .expect("still serving after a bad reload");
    submit(&mut c, req("echo", "after bad reload")).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "a bad reload stopped the daemon"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Opens a FIFO for writing only if a reader has it open right now
/// (O_NONBLOCK: ENXIO otherwise), so a test can see whether jobd is reading.
fn reader_waiting(path: &std::path::Path) -> Option<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .ok()
}

/// `serve` reads each secret file exactly once at start, and the TLS files
/// again only on SIGHUP. The files are FIFOs that the test feeds once: a
/// second read at start would block jobd before it serves, and a reader
/// waiting on a FIFO afterwards is seen by a non-blocking open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_reads_each_secret_file_once() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = pki.leaf(&["localhost"]);
    let token = "0123456789abcdef-once";
    let fifo = |name: &str| {
        let p = dir.path().join(name);
        let c = std::ffi::CString::new(p.display().to_string()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        p
    };
    let (cert_path, key_path, tokens_path) =
        (fifo("server.pem"), fifo("server.key"), fifo("tokens"));
    // One writer each: it blocks until jobd opens the FIFO, then writes once.
    let feeders: Vec<_> = [
        (cert_path.clone(), cert.clone()),
        (key_path.clone(), key.clone()),
        (tokens_path.clone(), format!("admin {token}\n")),
    ]
    .into_iter()
    .map(|(p, text)| std::thread::spawn(move || std::fs::write(p, text).unwrap()))
    .collect();
    let port = crate::binary::free_port();
    let cfg = write(
        dir.path(),
        "jobd.toml",
        &format!(
            "store = \"memory:\"\nadmin_listen = \"off\"\n[auth]\ntokens_file = \"{}\"\n\
             [tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            tokens_path.display(),
            cert_path.display(),
            key_path.display()
        ),
    );
    let (mut child, client) = spawn_tls_binary(&cfg, port, &pki.ca_pem, "warn").await;
    let url = format!("http://127.0.0.1:{port}");
    let Some(mut client) = client else {
        let _ = child.kill();
        for p in [&cert_path, &key_path, &tokens_path] {
            // Unblock a second read so the feeders end, then fail.
            if let Some(mut f) = reader_waiting(p) {
                use std::io::Write;
                let _ = f.write_all(b"");
            }
        }
        panic!("jobd did not serve: it read a secret file more than once at start");
    };
    for f in feeders {
        f.join().unwrap();
    }
    let mut r = tonic::Request::new(jobd::proto::GetStatusRequest {
        id: uuid::Uuid::now_v7().to_string(),
    });
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let code = client.get_status(r).await.unwrap_err().code();
    assert_eq!(code, tonic::Code::NotFound, "the token from the file works");
    for p in [&cert_path, &key_path, &tokens_path] {
        assert!(
            reader_waiting(p).is_none(),
            "{} is being read again",
            p.display()
        );
    }

    // SIGHUP reads the TLS files once more, and not the tokens file.
    assert!(std::process::Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    for (p, text) in [(&cert_path, &cert), (&key_path, &key)] {
        let mut reread = None;
        for _ in 0..250 {
            reread = reader_waiting(p);
            if reread.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut f = reread.unwrap_or_else(|| panic!("SIGHUP did not re-read {}", p.display()));
        use std::io::Write;
        f.write_all(text.as_bytes()).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(reader_waiting(&tokens_path).is_none());
    assert!(tls_client(&url, &pki.ca_pem, None).await.is_ok());
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Sockets that never start (or finish) the TLS handshake cannot lock TLS
/// clients out: at the bound, a new connection takes the place of the
/// oldest one still in its handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_sockets_do_not_lock_out_tls_clients() {
    use crate::hostile_clients::{silent_sockets, HEALTH_BOUND};
    let pki = Pki::new();
    let files = tempfile::tempdir().unwrap();
    let (cert, key) = pki.leaf(&["localhost"]);
    let d = start(&format!(
        "[limits]\nmax_connections = 8\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        write(files.path(), "server.pem", &cert),
        write(files.path(), "server.key", &key)
    ))
    .await;
    let _silent = silent_sockets(d.addr, 16).await;
    let started = std::time::Instant::now();
    let served = async {
        let mut c = tls_client(&d.url(), &pki.ca_pem, None).await.unwrap();
        c.submit(req("echo", "past the silent ones")).await.unwrap()
    };
    tokio::time::timeout(Duration::from_secs(10), served)
        .await
        .expect("TLS client served while silent sockets hold every place");
    let took = started.elapsed();
    assert!(took < HEALTH_BOUND, "TLS connect + Submit took {took:?}");
}

/// The CLI reaches a daemon with TLS and auth on: `--ca`,
/// `--tls-server-name` and `--token` (or an `https://` address).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_speaks_tls_with_a_token() {
    const TOKEN: &str = "cli-token-0123456789";
    let pki = Pki::new();
    let files = tempfile::tempdir().unwrap();
    let (cert, key) = pki.leaf(&["localhost"]);
    let ca = write(files.path(), "ca.pem", &pki.ca_pem);
    let d = start(&format!(
        "[auth]\ntokens = [{{ token = \"{TOKEN}\", role = \"admin\" }}]\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        write(files.path(), "server.pem", &cert),
        write(files.path(), "server.key", &key)
    ))
    .await;
    let https = d.url().replace("http://", "https://");
    let run = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(bin())
                .args(&args)
                .env_remove("JOBD_TOKEN")
                .output()
                .unwrap()
        })
    };
    let base = |extra: &[&str]| {
        let mut v: Vec<String> = [
            "submit",
            "echo",
            "--payload",
            "hi",
            "--addr",
            &https,
            "--ca",
            &ca,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let ok = run(base(&["--tls-server-name", "localhost", "--token", TOKEN]))
        .await
        .unwrap();
    assert_eq!(ok.status.code(), Some(0), "{ok:?}");
    // Without the token: refused by auth, not by TLS.
    let no_token = run(base(&["--tls-server-name", "localhost"]))
        .await
        .unwrap();
    assert_ne!(no_token.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&no_token.stderr).contains("token"),
        "{no_token:?}"
    );
    d.stop().await;
}

/// `jobd submit` to a daemon that requires mTLS: `--cert`/`--cert-key`
/// present the client certificate while `--key` stays the idempotency key
/// (as one global `--key`, the two could not be given together); without
/// them the daemon refuses the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_presents_a_client_certificate() {
    let pki = Pki::new();
    let files = tempfile::tempdir().unwrap();
    let (cert, key) = pki.leaf(&["localhost"]);
    let ca = write(files.path(), "ca.pem", &pki.ca_pem);
    let d = start(&format!(
        "[tls]\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{ca}\"\n",
        write(files.path(), "server.pem", &cert),
        write(files.path(), "server.key", &key),
    ))
    .await;
    let (client_cert, client_key) = pki.leaf(&["cli"]);
    let client_cert = write(files.path(), "client.pem", &client_cert);
    let client_key = write(files.path(), "client.key", &client_key);
    let https = d.url().replace("http://", "https://");
    let run = |extra: Vec<String>| {
        let mut args: Vec<String> = ["submit", "echo", "--key", "once", "--json", "--addr"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend([https.clone(), "--ca".into(), ca.clone()]);
        args.extend(["--tls-server-name".into(), "localhost".into()]);
        args.extend(extra);
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(bin())
                .args(&args)
                .env_remove("JOBD_TOKEN")
                .output()
                .unwrap()
        })
    };
    let ok = run(vec![
        "--cert".into(),
        client_cert.clone(),
        "--cert-key".into(),
        client_key.clone(),
    ])
    .await
    .unwrap();
    assert_eq!(ok.status.code(), Some(0), "{ok:?}");
    let v: serde_json::Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!(v["job"]["idempotencyKey"], "once");
    let refused = run(vec![]).await.unwrap();
    assert_eq!(refused.status.code(), Some(5), "{refused:?}");
    // Reported, not a death by SIGPIPE on the socket the daemon closed. The
    // cause shown depends on timing: the TLS alert (CertificateRequired),
    // or the closed connection / broken pipe that follows it.
    let err: serde_json::Value = serde_json::from_slice(&refused.stderr).unwrap();
    assert!(
        err["error"]
            .as_str()
            .unwrap()
            .starts_with("the connection to jobd failed: "),
        "{err}"
    );
    d.stop().await;
}

/// `jobd work` reaches a daemon that requires mTLS with the same flags as
/// the client commands (`--ca`, `--cert`, `--cert-key`,
/// `--tls-server-name`), and does the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobd_work_connects_over_mtls() {
    let pki = Pki::new();
    let files = tempfile::tempdir().unwrap();
    let (cert, key) = pki.leaf(&["localhost"]);
    let ca = write(files.path(), "ca.pem", &pki.ca_pem);
    let d = start_with(
        &format!(
            "[tls]\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{ca}\"\n",
            write(files.path(), "server.pem", &cert),
            write(files.path(), "server.key", &key),
        ),
        "[kinds.r]\nhandler = \"remote\"\ntimeout = \"20s\"\n",
    )
    .await;
    let (client_cert, client_key) = pki.leaf(&["worker"]);
    let mut worker = std::process::Command::new(bin())
        .args(["work", "--kind", "r", "--addr"])
        .arg(d.url().replace("http://", "https://"))
        .args(["--ca", &ca, "--tls-server-name", "localhost"])
        .args(["--cert", &write(files.path(), "w.pem", &client_cert)])
        .args(["--cert-key", &write(files.path(), "w.key", &client_key)])
        .args(["--", "tr", "a-z", "A-Z"])
        .env_remove("JOBD_TOKEN")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let good = pki.leaf(&["client"]);
    let mut c = tls_client(&d.url(), &pki.ca_pem, Some(good)).await.unwrap();
    let job = submit(&mut c, req("r", "shout")).await;
    let done = tokio::time::timeout(Duration::from_secs(30), wait_terminal(&mut c, &job.id))
        .await
        .expect("the worker did the job");
    let _ = worker.kill();
    let _ = worker.wait();
    assert_eq!(done.result, b"SHOUT", "{done:?}");
    d.stop().await;
}
