//! The first hour with jobd (#35): refusals that say what to do, the raw
//! body as a payload, the dashboard's own routes (whoami, throughput, the
//! icon), the CLI's new commands and the start-up log. Each against a real
//! daemon (in-process over real HTTP and gRPC, or the real binary).

use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use jobd::proto;
use serde_json::{json, Value};

use crate::helpers::*;

const ADMIN: &str = "admin-token-0123456789";
const SUBMITTER: &str = "submit-token-0123456789";
const VIEWER: &str = "viewer-token-0123456789";

fn auth_head() -> String {
    format!(
        "[auth]\ntokens = [{{ token = \"{ADMIN}\", role = \"admin\" }}, \
         {{ token = \"{SUBMITTER}\", role = \"submit\" }}, \
         {{ token = \"{VIEWER}\", role = \"viewer\" }}]\n"
    )
}

/// An HTTP call: status and JSON body (Null when the body is not JSON).
async fn call(r: reqwest::RequestBuilder) -> (u16, Value) {
    let res = r.send().await.expect("HTTP request");
    let status = res.status().as_u16();
    let bytes = res.bytes().await.unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn with_token(r: reqwest::RequestBuilder, token: Option<&str>) -> reqwest::RequestBuilder {
    match token {
        Some(t) => r.header("authorization", format!("Bearer {t}")),
        None => r,
    }
}

/// `POST /v1/kinds/{kind}/jobs` takes the body as it is for the payload
/// (any content type) and the options as query parameters, and answers as
/// `POST /v1/jobs` does: same reply, same roles, same metrics label, same
/// payload limit and refusal. Bad query values name their parameter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_body_is_the_payload() {
    let kinds = format!("{KINDS}\n[kinds.tiny]\nhandler = \"echo\"\nmax_payload_bytes = 8\n");
    let d = start_with(&auth_head(), &kinds).await;
    let http = http_client();
    let url = |path: &str| format!("{}{path}", d.url());
    let raw = |query: &str, body: &'static [u8], token: Option<&str>| {
        with_token(
            http.post(url(&format!("/v1/kinds/echo/jobs{query}")))
                .header("content-type", "text/plain")
                .body(body),
            token,
        )
    };

    let (status, v) = call(raw(
        "?key=k1&priority=5&label=team=web&label=env=prod&ordering_key=user-1",
        b"hello world",
        Some(SUBMITTER),
    ))
    .await;
    assert_eq!(status, 200, "{v}");
    let job = &v["job"];
    assert_eq!(job["kind"], "echo");
    assert_eq!(job["payloadSize"], "11");
    assert_eq!(job["idempotencyKey"], "k1");
    assert_eq!(job["priority"], 5);
    assert_eq!(job["labels"], json!({"team": "web", "env": "prod"}));
    assert_eq!(job["orderingKey"], "user-1");
    let id = job["id"].as_str().unwrap().to_string();
    let mut c = jobd::proto::job_service_client::JobServiceClient::with_interceptor(
        tonic::transport::Channel::from_shared(d.url())
            .unwrap()
            .connect()
            .await
            .unwrap(),
        |mut r: tonic::Request<()>| {
            r.metadata_mut()
                .insert("authorization", format!("Bearer {ADMIN}").parse().unwrap());
            Ok(r)
        },
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let done = loop {
        let j = c
            .get_status(proto::GetStatusRequest { id: id.clone() })
            .await
            .unwrap()
            .into_inner()
            .job
            .unwrap();
        if is_terminal(state(&j)) {
            break j;
        }
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(done.result, b"hello world", "the body, byte for byte");

    // The same key and body again: deduplicated, as POST /v1/jobs answers.
    let (status, again) = call(raw(
        "?key=k1&priority=5&label=team=web&label=env=prod&ordering_key=user-1",
        b"hello world",
        Some(SUBMITTER),
    ))
    .await;
    assert_eq!(
        (status, &again["deduplicated"]),
        (200, &json!(true)),
        "{again}"
    );
    assert_eq!(again["job"]["id"], id.as_str());

    // A delay puts the job in the future; binary bodies pass untouched.
    let (status, v) = call(with_token(
        http.post(url("/v1/kinds/echo/jobs?delay=1h"))
            .header("content-type", "application/octet-stream")
            .body(vec![0u8, 159, 255]),
        Some(ADMIN),
    ))
    .await;
    assert_eq!(status, 200, "{v}");
    let not_before = v["job"]["nextAttemptAt"]
        .as_str()
        .unwrap_or_else(|| panic!("{v}"));
    let created = v["job"]["createdAt"].as_str().unwrap();
    assert!(not_before > created, "{v}");
    assert_eq!(v["job"]["payloadSize"], "3", "{v}");

    // Roles: the Submit row's (a viewer may not; no token: told how).
    let (status, v) = call(raw("", b"x", Some(VIEWER))).await;
    assert_eq!(status, 403, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("may not call Submit"),
        "{v}"
    );
    let (status, v) = call(raw("", b"x", None)).await;
    assert_eq!(status, 401, "{v}");

    // The payload limit: the same refusal as the JSON route's.
    let over = |body: reqwest::RequestBuilder| async move { call(body).await };
    let (s1, by_raw) = over(with_token(
        http.post(url("/v1/kinds/tiny/jobs")).body("123456789"),
        Some(ADMIN),
    ))
    .await;
    let (s2, by_json) = over(with_token(
        http.post(url("/v1/jobs"))
            .header("content-type", "application/json")
            .body(
                json!({"kind": "tiny", "payload": base64::engine::general_purpose::STANDARD.encode("123456789")})
                    .to_string(),
            ),
        Some(ADMIN),
    ))
    .await;
    assert_eq!((s1, s2), (400, 400), "{by_raw} {by_json}");
    assert_eq!(by_raw, by_json, "the same refusal");
    assert!(
        by_raw["message"]
            .as_str()
            .unwrap()
            .contains("payload: 9 bytes is over the limit of 8 bytes"),
        "{by_raw}"
    );
    // Unknown kinds, as in JSON.
    let (status, v) = call(with_token(
        http.post(url("/v1/kinds/ecoh/jobs")).body("x"),
        Some(ADMIN),
    ))
    .await;
    assert_eq!(status, 400, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("did you mean \"echo\"?"),
        "{v}"
    );

    // Bad query values: 400 naming the parameter.
    for (query, field) in [
        ("?priority=high", "query.priority"),
        ("?delay=soon", "query.delay"),
        ("?label=novalue", "query.label"),
        ("?colour=red", "query.colour"),
        ("?key=a&key=b", "query.key"),
    ] {
        let (status, v) = call(raw(query, b"x", Some(ADMIN))).await;
        assert_eq!(status, 400, "{query}: {v}");
        assert_eq!(v["codeName"], "INVALID_ARGUMENT", "{v}");
        assert_eq!(
            v["details"][0]["fieldViolations"][0]["field"], field,
            "{query}: {v}"
        );
    }
    // GET is not taken.
    let (status, _) = call(with_token(
        http.get(url("/v1/kinds/echo/jobs")),
        Some(ADMIN),
    ))
    .await;
    assert_eq!(status, 405);

    // Counted as the Submit RPC.
    let (_, text) = http_get(d.admin, "/metrics").await;
    let ok = "jobd_grpc_requests_total{method=\"/jobd.v1.JobService/Submit\",code=\"OK\"} 3";
    assert!(text.contains(ok), "{ok} in:\n{text}");
    d.stop().await;
}

/// Refusals over HTTP carry the code's name; a text payload in JSON names
/// the `payload` field, says it must be base64 and points at the raw
/// route; an unknown kind gets the closest configured one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_refusals_say_what_to_do() {
    let d = start("").await;
    let http = http_client();
    let post = |body: Value| {
        http.post(format!("{}/v1/jobs", d.url()))
            .header("content-type", "application/json")
            .body(body.to_string())
    };
    let (status, v) = call(post(json!({"kind": "echo", "payload": "hello world"}))).await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(
        (&v["code"], &v["codeName"]),
        (&json!(3), &json!("INVALID_ARGUMENT"))
    );
    let violation = &v["details"][0]["fieldViolations"][0];
    assert_eq!(violation["field"], "payload", "{v}");
    let says = violation["description"].as_str().unwrap();
    assert!(
        says.contains("must be base64")
            && says.contains("POST the raw bytes as the body of /v1/kinds/echo/jobs"),
        "{says}"
    );
    assert!(
        !v["message"].as_str().unwrap().contains("Invalid symbol"),
        "{v}"
    );

    let (status, v) = call(post(json!({"kind": "slep"}))).await;
    assert_eq!(status, 400, "{v}");
    let m = v["message"].as_str().unwrap();
    assert!(
        m.contains("unknown kind \"slep\"; did you mean \"sleep\"? configured kinds: echo, fail, short, single, sleep"),
        "{m}"
    );
    // Pausing an unknown kind is NOT_FOUND (as DESIGN says), with the hint.
    let (status, v) = call(http.post(format!("{}/v1/kinds/slepe:pause", d.url()))).await;
    assert_eq!((status, &v["codeName"]), (404, &json!("NOT_FOUND")), "{v}");
    let m = v["message"].as_str().unwrap();
    assert!(
        m.starts_with(
            "kind \"slepe\" is not configured; did you mean \"sleep\"? configured kinds: echo,"
        ),
        "{m}"
    );
    d.stop().await;
    // So are unknown schedules, for trigger and pause alike.
    let d = start("[[schedules]]\nid = \"nightly\"\nkind = \"echo\"\ncron = \"0 3 * * *\"\n").await;
    for verb in ["trigger", "pause"] {
        let (status, v) = call(http.post(format!("{}/v1/schedules/nigthly:{verb}", d.url()))).await;
        assert_eq!(status, 404, "{v}");
        assert_eq!(
            v["message"],
            "schedule \"nigthly\" is not configured; did you mean \"nightly\"? configured schedules: nightly",
            "{verb}"
        );
    }
    let (status, v) = call(http.get(format!("{}/v1/jobs/{}", d.url(), uuid::Uuid::now_v7()))).await;
    assert_eq!((status, &v["codeName"]), (404, &json!("NOT_FOUND")), "{v}");
    d.stop().await;
}

/// With auth on: no token and a token that is not recognised are told
/// apart, and the missing one says how to send one (CLI flag, environment,
/// header), over gRPC, HTTP and the CLI alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_token_says_how_to_send_one() {
    let d = start(&auth_head()).await;
    let mut c = d.client().await;
    let e = c.submit(req("echo", "x")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    for part in ["--token", "JOBD_TOKEN", "authorization: Bearer"] {
        assert!(e.message().contains(part), "{part}: {}", e.message());
    }
    let http = http_client();
    let (status, missing) = call(http.get(format!("{}/v1/kinds", d.url()))).await;
    assert_eq!(status, 401);
    assert_eq!(missing["message"], e.message());
    let (status, wrong) = call(with_token(
        http.get(format!("{}/v1/kinds", d.url())),
        Some("not-a-token-0123456789"),
    ))
    .await;
    assert_eq!(status, 401);
    let wrong = wrong["message"].as_str().unwrap();
    assert!(wrong.starts_with("token not recognised"), "{wrong}");
    assert_ne!(wrong, e.message());

    let o = cli(&d.url(), &["list"]).await;
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("UNAUTHENTICATED") && err.contains("--token"),
        "{err}"
    );
    d.stop().await;
}

/// `GET /v1/whoami` answers the caller's role and the methods it may call;
/// without auth, everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whoami_answers_per_role() {
    let d = start(&auth_head()).await;
    let http = http_client();
    let who = |token: Option<&'static str>| {
        call(with_token(
            http.get(format!("{}/v1/whoami", d.url())),
            token,
        ))
    };
    let methods = |v: &Value| -> Vec<String> {
        v["methods"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m.as_str().unwrap().to_string())
            .collect()
    };
    let (status, v) = who(Some(VIEWER)).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (&v["authEnabled"], &v["role"]),
        (&json!(true), &json!("viewer"))
    );
    let m = methods(&v);
    assert!(
        m.contains(&"ListJobs".into()) && !m.contains(&"Submit".into()),
        "{m:?}"
    );
    assert!(
        !m.contains(&"RetryJobs".into()) && !m.contains(&"Cancel".into()),
        "{m:?}"
    );
    let (_, v) = who(Some(SUBMITTER)).await;
    assert_eq!(v["role"], "submit");
    let m = methods(&v);
    assert!(
        m.contains(&"Submit".into()) && !m.contains(&"PauseKind".into()),
        "{m:?}"
    );
    let (_, v) = who(Some(ADMIN)).await;
    assert_eq!(v["role"], "admin");
    assert!(methods(&v).contains(&"RetryJobs".into()));
    let (status, v) = who(None).await;
    assert_eq!((status, &v["codeName"]), (401, &json!("UNAUTHENTICATED")));
    let (status, v) = who(Some("not-a-token-0123456789")).await;
    assert_eq!(status, 401);
    assert!(
        v["message"].as_str().unwrap().contains("not recognised"),
        "{v}"
    );
    d.stop().await;

    let d = start("").await;
    let (status, v) = call(http.get(format!("{}/v1/whoami", d.url()))).await;
    assert_eq!(status, 200);
    assert_eq!(
        (&v["authEnabled"], &v["role"]),
        (&json!(false), &Value::Null)
    );
    assert!(methods(&v).contains(&"Cancel".into()));
    d.stop().await;
}

/// After N jobs finish, `GET /v1/stats/throughput` reports them in the
/// minute they finished (the current one), per kind and outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput_counts_the_jobs_that_finished_this_minute() {
    let d = start("").await;
    let mut c = d.client().await;
    let minute = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            / 60
    };
    let first = minute();
    const N: usize = 25;
    let mut ids = Vec::new();
    for i in 0..N {
        ids.push(submit(&mut c, req("echo", &format!("{i}"))).await.id);
    }
    let mut r = req("fail", "permanent");
    r.max_attempts = 1;
    ids.push(submit(&mut c, r).await.id);
    for id in &ids {
        wait_terminal(&mut c, id).await;
    }
    let last = minute();
    let http = http_client();
    let (status, v) = call(http.get(format!("{}/v1/stats/throughput?minutes=10", d.url()))).await;
    assert_eq!(status, 200, "{v}");
    let minutes = v["minutes"].as_array().unwrap();
    assert_eq!(minutes.len(), 10, "{v}");
    let sum = |field: &str| -> u64 { minutes.iter().map(|m| m[field].as_u64().unwrap()).sum() };
    assert_eq!((sum("succeeded"), sum("failed")), (N as u64, 1), "{v}");
    let now = &minutes[9];
    if first == last {
        assert_eq!(now["succeeded"], N as u64, "{v}");
        assert_eq!(now["kinds"]["echo"]["succeeded"], N as u64, "{v}");
        assert_eq!(now["kinds"]["fail"]["failed"], 1, "{v}");
    }
    let start = now["start"].as_str().unwrap();
    assert!(start.ends_with(":00Z"), "{start}");
    for bad in ["minutes=0", "minutes=61", "minutes=x", "hours=1"] {
        let (status, v) = call(http.get(format!("{}/v1/stats/throughput?{bad}", d.url()))).await;
        assert_eq!(status, 400, "{bad}: {v}");
    }
    d.stop().await;
}

/// `GET /` sends a browser to the dashboard; the dashboard has an icon,
/// and `/favicon.ico` is it, not a 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_redirects_to_the_dashboard_which_has_an_icon() {
    let d = start("").await;
    let http = http_client_builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = http.get(format!("{}/", d.url())).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 308);
    assert_eq!(r.headers()["location"], "/ui/");
    for path in ["/favicon.ico", "/ui/favicon.svg"] {
        let r = http.get(format!("{}{path}", d.url())).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200, "{path}");
        assert_eq!(r.headers()["content-type"], "image/svg+xml", "{path}");
        assert!(r.text().await.unwrap().starts_with("<svg"), "{path}");
    }
    let page = http.get(format!("{}/ui/", d.url())).send().await.unwrap();
    assert!(page
        .text()
        .await
        .unwrap()
        .contains("<link rel=\"icon\" href=\"favicon.svg\""));
    d.stop().await;
}

/// The CLI's refusals say what to do: a stray word after submit's kind
/// suggests `--payload`; `retry` with nothing to narrow it is refused; and
/// its new commands work: `workers`, `schedules pause|resume` (in
/// schedules.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_refusals_say_what_to_do() {
    let d = start("").await;
    let addr = d.url();
    let o = cli(&addr, &["submit", "echo", "hi"]).await;
    assert_eq!(o.status.code(), Some(64), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("jobd submit echo --payload hi"), "{err}");
    let o = cli(&addr, &["submit", "echo", "hello", "world"]).await;
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--payload 'hello world'"), "{err}");
    let o = cli(&addr, &["list", "--json"]).await;
    assert_eq!(
        serde_json::from_slice::<Value>(&o.stdout).unwrap(),
        json!({}),
        "no job was submitted"
    );

    let o = cli(&addr, &["retry"]).await;
    assert_eq!(o.status.code(), Some(64), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("--id") && err.contains("--kind") && err.contains("--all"),
        "{err}"
    );
    let o = cli(&addr, &["retry", "--all", "--dry-run", "--json"]).await;
    assert_eq!(o.status.code(), Some(0), "{o:?}");

    let o = cli(&addr, &["workers"]).await;
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no workers connected"),
        "{o:?}"
    );
    let o = cli(&addr, &["schedules"]).await;
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("[[schedules]]"),
        "{o:?}"
    );
    let o = cli(&addr, &["workers", "--json"]).await;
    assert_eq!(
        serde_json::from_slice::<Value>(&o.stdout).unwrap(),
        json!({})
    );
    d.stop().await;
}

/// `check-config` warns when `[auth]` is on and no token may submit; a
/// host name in `listen` is refused with an IP address to use instead.
#[test]
fn check_config_says_what_to_do() {
    let viewer_only = format!("[auth]\ntokens = [{{ token = \"{VIEWER}\", role = \"viewer\" }}]\n");
    let (code, err) = check_config(&viewer_only);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("no token has a role that may submit"), "{err}");
    let (code, err) = check_config(&auth_head());
    assert_eq!(code, Some(0), "{err}");
    assert!(!err.contains("may submit"), "{err}");
    let (code, err) = check_config("listen = \"localhost:50051\"\n");
    assert_eq!(code, Some(64), "{err}");
    assert!(
        err.contains("listen")
            && err.contains("use an IP address")
            && err.contains("127.0.0.1:50051"),
        "{err}"
    );
}

/// `jobd serve` with this config on a fresh port, stopped by SIGTERM once
/// it answers: the port and everything it logged at `info`.
async fn startup_log(config: &str) -> (u16, String) {
    startup_log_with(config, &[], &[]).await
}

/// [`startup_log`] with more arguments and environment.
async fn startup_log_with(config: &str, args: &[&str], env: &[(&str, &str)]) -> (u16, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jobd.toml");
    std::fs::write(
        &file,
        config.replace("{dir}", &dir.path().display().to_string()),
    )
    .unwrap();
    let port = crate::binary::free_port();
    let child = Command::new(bin())
        .args(["serve", "--config"])
        .arg(&file)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(args)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    drop(connect_when_up(&format!("http://127.0.0.1:{port}")).await);
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.0.id() as i32, libc::SIGTERM);
    }
    let mut stderr = child.0.stderr.take().unwrap();
    let log = tokio::task::spawn_blocking(move || {
        let mut log = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut log).unwrap();
        log
    })
    .await
    .unwrap();
    (port, log)
}

/// Exactly one "store migrated from v0 to vN" line, and no step at info.
fn one_migration_line(log: &str) {
    let migrated: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("store migrated from v0 to v"))
        .collect();
    assert_eq!(migrated.len(), 1, "{log}");
    assert!(
        !log.contains("applied store migration"),
        "steps are at debug: {log}"
    );
}

/// The start-up log: the serving line's addresses are plain (`admin=off`,
/// no `Some(…)`), a line gives the dashboard's URL, and a new SQLite
/// store's migrations are one summary line at info.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_log_shows_the_dashboard_and_one_migration_line() {
    let (port, log) =
        startup_log("admin_listen = \"off\"\nstore = \"sqlite:{dir}/jobd.db\"\n").await;
    let serving = log
        .lines()
        .find(|l| l.contains("jobd serving"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        serving.contains(&format!("listen=127.0.0.1:{port}")) && serving.contains("admin=off"),
        "{serving}"
    );
    assert!(!serving.contains("Some("), "{serving}");
    assert!(
        log.contains(&format!("dashboard: http://127.0.0.1:{port}/ui/")),
        "{log}"
    );
    one_migration_line(&log);
}

/// A new PostgreSQL schema's migrations are one summary line at info too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_migrations_log_one_summary_line() {
    let Some(pg) = crate::pg::PgSchema::new("migrlog").await else {
        return;
    };
    let (_, log) = startup_log(&format!("admin_listen = \"off\"\n{}", pg.toml(""))).await;
    one_migration_line(&log);
}

/// A panic goes through the log: with `--log-format json` every line of
/// stderr stays a JSON object, and the panic is one of them (the debug
/// build panics a thread at start when `JOBD_DEBUG_PANIC` is set).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_is_a_json_log_line() {
    let (_, log) = startup_log_with(
        "admin_listen = \"off\"\nstore = \"memory:\"\n",
        &["--log-format", "json"],
        &[("JOBD_DEBUG_PANIC", "1")],
    )
    .await;
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}\n{log}")))
        .collect();
    let panic = lines
        .iter()
        .find(|l| l["fields"]["message"] == "panic")
        .unwrap_or_else(|| panic!("{log}"));
    assert_eq!(panic["level"], "ERROR");
    assert_eq!(panic["fields"]["panic.message"], "JOBD_DEBUG_PANIC is set");
    assert_eq!(panic["fields"]["thread"], "debug-panic");
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "jobd serving"),
        "{log}"
    );
}
