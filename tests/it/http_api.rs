//! The HTTP/JSON door on the gRPC port: every route against a real daemon
//! over real HTTP (reqwest, HTTP/1.1), error statuses with their
//! google.rpc.Status bodies, roles, server-sent events, and gRPC, gRPC-Web
//! and JSON on one port at once.

use std::time::Duration;

use base64::Engine as _;
use jobd::proto;
use prost::Message;
use serde_json::{json, Value};

use crate::helpers::*;

const ADMIN: &str = "admin-token-0123456789";
const SUBMITTER: &str = "submit-token-0123456789";
const VIEWER: &str = "viewer-token-0123456789";
const WORKER: &str = "worker-token-0123456789";

/// A JSON client for one daemon, with an optional bearer token.
struct Http {
    base: String,
    client: reqwest::Client,
    token: Option<&'static str>,
}

/// What a call answered: HTTP status, JSON body, headers.
struct Reply {
    status: u16,
    body: Value,
    headers: reqwest::header::HeaderMap,
}

impl Http {
    fn new(d: &TestDaemon, token: Option<&'static str>) -> Http {
        Http {
            base: d.url(),
            client: crate::helpers::http_client_builder()
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap(),
            token,
        }
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.client.request(method, format!("{}{path}", self.base));
        match self.token {
            Some(t) => r.header("authorization", format!("Bearer {t}")),
            None => r,
        }
    }

    async fn send(&self, r: reqwest::RequestBuilder) -> Reply {
        let res = r.send().await.expect("HTTP request");
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let bytes = res.bytes().await.expect("HTTP body");
        let body = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!(
                "{status}: not JSON ({e}): {}",
                String::from_utf8_lossy(&bytes)
            )
        });
        Reply {
            status,
            body,
            headers,
        }
    }

    async fn get(&self, path: &str) -> Reply {
        self.send(self.request(reqwest::Method::GET, path)).await
    }

    async fn post(&self, path: &str, body: Value) -> Reply {
        self.send(
            self.request(reqwest::Method::POST, path)
                .header("content-type", "application/json")
                .body(body.to_string()),
        )
        .await
    }

    /// Submits and returns the job JSON.
    async fn submit(&self, body: Value) -> Value {
        let r = self.post("/v1/jobs", body).await;
        assert_eq!(r.status, 200, "{}", r.body);
        r.body["job"].clone()
    }

    /// Polls GetStatus until the job's state is `want` (bounded).
    async fn wait_state(&self, id: &str, want: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let r = self.get(&format!("/v1/jobs/{id}")).await;
            assert_eq!(r.status, 200, "{}", r.body);
            if r.body["job"]["state"] == want {
                return r.body["job"].clone();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "job {id} stuck: {}",
                r.body
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// Asserts a google.rpc.Status error body with this HTTP status and code.
fn assert_error(r: &Reply, http: u16, code: i64) {
    assert_eq!(r.status, http, "{}", r.body);
    assert_eq!(r.body["code"], code, "{}", r.body);
    let name = jobd::transport::grpc_metrics::code_name(tonic::Code::from(code as i32));
    assert_eq!(r.body["codeName"], name, "the code's name too: {}", r.body);
    assert!(r.body["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert!(r.body["details"].is_array(), "{}", r.body);
    assert_eq!(
        r.headers["content-type"], "application/json",
        "errors are JSON too"
    );
}

#[tokio::test]
async fn jobs_routes_submit_get_list_batch_cancel() {
    let d = start("").await;
    let h = Http::new(&d, None);

    // Submit: proto3 JSON in and out (base64 bytes, Duration, labels).
    let job = h
        .submit(json!({
            "kind": "echo",
            "payload": b64("hello"),
            "labels": {"team": "a"},
            "timeout": "1.5s",
            "idempotencyKey": "k1",
        }))
        .await;
    let id = job["id"].as_str().unwrap().to_string();
    assert_eq!(job["kind"], "echo");
    assert_eq!(job["payloadSize"], "5", "uint64 as a string: {job}");
    assert_eq!(job["timeout"], "1.500s");
    assert_eq!(job["labels"], json!({"team": "a"}));
    assert!(job["createdAt"].as_str().unwrap().ends_with('Z'), "{job}");

    // GetStatus, until it ran: the result comes back as base64.
    let done = h.wait_state(&id, "JOB_STATE_SUCCEEDED").await;
    assert_eq!(done["result"], b64("hello"));
    assert_eq!(done["attempt"], 1);

    // The same key and request again: the same job, deduplicated.
    let again = h
        .post(
            "/v1/jobs",
            json!({"kind": "echo", "payload": b64("hello"), "labels": {"team": "a"},
                   "timeout": "1.5s", "idempotency_key": "k1"}),
        )
        .await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.body["deduplicated"], true);
    assert_eq!(again.body["job"]["id"], id.as_str());

    // SubmitBatch: each entry answered on its own.
    let batch = h
        .post(
            "/v1/jobs:batch",
            json!({"requests": [
                {"kind": "echo", "payload": b64("b1"), "labels": {"team": "b"}},
                {"kind": "no-such-kind"},
                {"kind": "echo", "payload": b64("b2"), "labels": {"team": "b"}},
            ]}),
        )
        .await;
    assert_eq!(batch.status, 200, "{}", batch.body);
    let results = batch.body["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    assert_eq!(results[0]["accepted"]["job"]["kind"], "echo");
    assert_eq!(results[1]["error"]["code"], 3, "{}", batch.body);
    assert_eq!(
        results[1]["error"]["details"][0]["@type"],
        "type.googleapis.com/google.rpc.BadRequest"
    );
    let b1 = results[0]["accepted"]["job"]["id"].as_str().unwrap();
    let b2 = results[2]["accepted"]["job"]["id"].as_str().unwrap();
    h.wait_state(b1, "JOB_STATE_SUCCEEDED").await;
    h.wait_state(b2, "JOB_STATE_SUCCEEDED").await;

    // ListJobs: filters from the query string, paging by token.
    let list = h
        .get("/v1/jobs?state=succeeded&kind=echo&label=team=b")
        .await;
    assert_eq!(list.status, 200, "{}", list.body);
    let ids: Vec<&str> = list.body["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![b1, b2]);
    let page = h
        .get("/v1/jobs?state=JOB_STATE_SUCCEEDED&label=team=b&page_size=1")
        .await;
    assert_eq!(page.body["jobs"][0]["id"], b1);
    let token = page.body["nextPageToken"].as_str().unwrap().to_string();
    let next = h
        .get(&format!(
            "/v1/jobs?state=JOB_STATE_SUCCEEDED&label=team=b&pageSize=1&pageToken={token}"
        ))
        .await;
    assert_eq!(next.body["jobs"][0]["id"], b2, "{}", next.body);
    let newest = h.get("/v1/jobs?order=newest_first&page_size=1").await;
    assert_eq!(newest.body["jobs"][0]["id"], b2, "{}", newest.body);

    // Cancel: a queued job (not before an hour from now) is cancelled;
    // a finished one is FAILED_PRECONDITION (400).
    let hour = std::time::SystemTime::now() + Duration::from_secs(3600);
    let run_at = humantime::format_rfc3339(hour).to_string();
    let later = h.submit(json!({"kind": "echo", "runAt": run_at})).await;
    let later_id = later["id"].as_str().unwrap();
    let c = h
        .post(&format!("/v1/jobs/{later_id}:cancel"), json!({}))
        .await;
    assert_eq!(c.status, 200, "{}", c.body);
    assert_eq!(c.body["job"]["state"], "JOB_STATE_CANCELLED");
    let c = h
        .send(h.request(reqwest::Method::POST, &format!("/v1/jobs/{id}:cancel")))
        .await;
    assert_error(&c, 400, 9);
    d.stop().await;
}

#[tokio::test]
async fn errors_are_http_statuses_with_google_rpc_status_bodies() {
    // JSON bodies may be twice max_message_bytes: 128 KiB here.
    let d = start("[queue]\nmax_payload_bytes = 1024\n[limits]\nmax_message_bytes = 65536\n").await;
    let h = Http::new(&d, None);

    // Unknown kind: 400 with BadRequest naming the field.
    let r = h.post("/v1/jobs", json!({"kind": "nope"})).await;
    assert_error(&r, 400, 3);
    let detail = &r.body["details"][0];
    assert_eq!(detail["@type"], "type.googleapis.com/google.rpc.BadRequest");
    assert_eq!(detail["fieldViolations"][0]["field"], "kind");

    // Not found, and a malformed id.
    let r = h.get("/v1/jobs/01890000-0000-7000-8000-000000000000").await;
    assert_error(&r, 404, 5);
    let r = h.get("/v1/jobs/not-a-uuid").await;
    assert_error(&r, 400, 3);

    // The same idempotency key for a different request: 409 with ErrorInfo.
    h.submit(json!({"kind": "echo", "idempotencyKey": "dup", "payload": b64("a")}))
        .await;
    let r = h
        .post(
            "/v1/jobs",
            json!({"kind": "echo", "idempotencyKey": "dup", "payload": b64("b")}),
        )
        .await;
    assert_error(&r, 409, 6);
    assert_eq!(r.body["details"][0]["reason"], "IDEMPOTENCY_KEY_REUSED");

    // Bodies that are not the request's JSON.
    for body in [
        r#"{"kind": "echo","#,
        r#"{"kind": "echo", "bogus": 1}"#,
        "[1]",
    ] {
        let r = h
            .send(
                h.request(reqwest::Method::POST, "/v1/jobs")
                    .header("content-type", "application/json")
                    .body(body),
            )
            .await;
        assert_error(&r, 400, 3);
        assert_eq!(r.body["details"][0]["fieldViolations"][0]["field"], "body");
    }
    let r = h
        .send(
            h.request(reqwest::Method::POST, "/v1/jobs")
                .header("content-type", "text/plain")
                .body(r#"{"kind": "echo"}"#),
        )
        .await;
    assert_eq!(r.status, 415, "{}", r.body);
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .contains("application/json"),
        "{}",
        r.body
    );

    // A body over the limit: 413 (RESOURCE_EXHAUSTED), read no further.
    let big = format!(
        r#"{{"kind": "echo", "payload": "{}"}}"#,
        "A".repeat(3 << 20)
    );
    let r = h
        .send(
            h.request(reqwest::Method::POST, "/v1/jobs")
                .header("content-type", "application/json")
                .body(big),
        )
        .await;
    assert_eq!(r.status, 413, "{}", r.body);
    assert_eq!(r.body["code"], 8);

    // Bad query parameters.
    for q in ["state=bogus", "page_size=x", "colour=red", "label=novalue"] {
        let r = h.get(&format!("/v1/jobs?{q}")).await;
        assert_error(&r, 400, 3);
    }
    let r = h.get("/v1/jobs?page_size=5000").await;
    assert_error(&r, 400, 3);

    // Unknown routes and verbs: 404; a known path with the wrong method:
    // 405 naming the methods it takes.
    for path in ["/v1/nothing", "/v1/jobs/x:explode", "/v2/jobs", "/nothing"] {
        let r = h.get(path).await;
        assert_error(&r, 404, 5);
    }
    let r = h.send(h.request(reqwest::Method::DELETE, "/v1/jobs")).await;
    assert_error(&r, 405, 12);
    assert_eq!(r.headers["allow"], "GET, POST");
    let r = h.get("/v1/jobs/x:cancel").await;
    assert_error(&r, 405, 12);
    assert_eq!(r.headers["allow"], "POST");

    // JSON calls count in the RPC metrics under the method they call.
    let (_, text) = http_get(d.admin, "/metrics").await;
    for line in [
        "jobd_grpc_requests_total{method=\"/jobd.v1.JobService/Submit\",code=\"ALREADY_EXISTS\"} 1",
        "jobd_grpc_requests_total{method=\"/jobd.v1.JobService/GetStatus\",code=\"NOT_FOUND\"} 1",
        "jobd_grpc_requests_total{method=\"other\",code=\"NOT_FOUND\"} 4",
    ] {
        assert!(text.contains(line), "{line} in:\n{text}");
    }

    // A browser request from another site is refused; the same origin is not.
    let r = h
        .send(
            h.request(reqwest::Method::POST, "/v1/jobs")
                .header("origin", "http://evil.example")
                .header("content-type", "application/json")
                .body(r#"{"kind": "echo"}"#),
        )
        .await;
    assert_error(&r, 403, 7);
    let r = h
        .send(
            h.request(reqwest::Method::GET, "/v1/kinds")
                .header("origin", format!("http://{}", d.addr)),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);

    // DNS rebinding: a page at evil.example whose name now points here sends
    // its own name as Host and Origin; refused before any route runs, for
    // JSON and gRPC-Web alike, and no job is stored. localhost is served.
    let port = d.addr.port();
    let before = h.get("/v1/jobs?page_size=1000").await.body["jobs"]
        .as_array()
        .map_or(0, Vec::len);
    for ct in ["application/json", "application/grpc-web+proto"] {
        let r = h
            .send(
                h.request(reqwest::Method::POST, "/v1/jobs")
                    .header("host", format!("evil.example:{port}"))
                    .header("origin", format!("http://evil.example:{port}"))
                    .header("content-type", ct)
                    .body(r#"{"kind": "echo"}"#),
            )
            .await;
        assert_error(&r, 403, 7);
    }
    let after = h.get("/v1/jobs?page_size=1000").await.body["jobs"]
        .as_array()
        .map_or(0, Vec::len);
    assert_eq!(before, after, "a rebinding request stored a job");
    let r = h
        .send(
            h.request(reqwest::Method::GET, "/v1/kinds")
                .header("host", format!("localhost:{port}"))
                .header("origin", format!("http://localhost:{port}")),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);

    // Draining: new jobs are UNAVAILABLE (503). A running job holds the
    // drain open (up to drain.timeout) so the refusal can be seen.
    let long = h
        .submit(json!({"kind": "sleep", "payload": b64("60000")}))
        .await;
    h.wait_state(long["id"].as_str().unwrap(), "JOB_STATE_RUNNING")
        .await;
    d.shutdown.drain.cancel();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = h.post("/v1/jobs", json!({"kind": "echo"})).await;
        if r.status == 503 {
            assert_error(&r, 503, 14);
            break;
        }
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(tokio::time::Instant::now() < deadline, "never refused");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::timeout(Duration::from_secs(30), d.handle)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn admin_routes_kinds_retry_schedules_workers() {
    let d = start(
        "[[schedules]]\nid = \"nightly\"\nkind = \"echo\"\ncron = \"0 3 * * *\"\npayload = \"hi\"\n",
    )
    .await;
    let h = Http::new(&d, None);

    let kinds = h.get("/v1/kinds").await;
    assert_eq!(kinds.status, 200, "{}", kinds.body);
    let echo = kinds.body["kinds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kind"] == "echo")
        .cloned()
        .unwrap();
    assert_eq!(echo["handler"], "echo");

    // Pause: a submitted job waits; resume: it runs.
    let r = h.post("/v1/kinds/echo:pause", json!({})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["kindStatus"]["paused"], true);
    let job = h.submit(json!({"kind": "echo"})).await;
    let id = job["id"].as_str().unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = h.get(&format!("/v1/jobs/{id}")).await;
    assert_eq!(r.body["job"]["state"], "JOB_STATE_QUEUED");
    let r = h.post("/v1/kinds/echo:resume", json!({})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body["kindStatus"].get("paused").is_none(), "{}", r.body);
    h.wait_state(id, "JOB_STATE_SUCCEEDED").await;
    let r = h.post("/v1/kinds/nope:pause", json!({})).await;
    assert_error(&r, 404, 5);

    // RetryJobs: a failed job goes back to QUEUED and fails again.
    let failed = h.submit(json!({"kind": "fail", "maxAttempts": 1})).await;
    let fid = failed["id"].as_str().unwrap();
    h.wait_state(fid, "JOB_STATE_FAILED").await;
    let r = h.post("/v1/jobs:retry", json!({"ids": [fid]})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["retried"], "1", "{}", r.body);
    assert_eq!(r.body["ids"], json!([fid]));
    let r = h
        .post("/v1/jobs:retry", json!({"ids": [fid], "filter": {}}))
        .await;
    assert_error(&r, 400, 3);

    // Schedules: listed with the next fire; a trigger submits a job now.
    let r = h.get("/v1/schedules").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["schedules"][0]["id"], "nightly");
    assert_eq!(r.body["schedules"][0]["cron"], "0 3 * * *");
    assert!(r.body["schedules"][0]["nextFireAt"].is_string());
    let r = h.post("/v1/schedules/nightly:trigger", json!({})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let tid = r.body["job"]["id"].as_str().unwrap().to_string();
    let done = h.wait_state(&tid, "JOB_STATE_SUCCEEDED").await;
    assert_eq!(done["result"], b64("hi"));
    let r = h.post("/v1/schedules/nightly:pause", json!({})).await;
    assert_eq!(r.body["schedule"]["paused"], true, "{}", r.body);
    let r = h.post("/v1/schedules/nightly:resume", json!({})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = h.post("/v1/schedules/nope:trigger", json!({})).await;
    assert_error(&r, 404, 5);

    // Workers: none connected (an empty message is `{}`, as grpcurl prints).
    let r = h.get("/v1/workers").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body, json!({}));
    let r = h.get("/v1/workers?kind=echo").await;
    assert_eq!(r.status, 200, "{}", r.body);
    d.stop().await;
}

#[tokio::test]
async fn tokens_and_roles_apply_to_the_json_routes_and_viewer_only_reads() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    std::fs::write(&file, format!("viewer {VIEWER}\nworker {WORKER}\n")).unwrap();
    let d = start(&format!(
        "[auth]\ntokens = [{{ token = \"{ADMIN}\", role = \"admin\" }}, \
         {{ token = \"{SUBMITTER}\", role = \"submit\" }}]\ntokens_file = \"{}\"\n",
        file.display()
    ))
    .await;
    let none = Http::new(&d, None);
    let wrong = Http::new(&d, Some("wrong-token-0123456789"));
    let admin = Http::new(&d, Some(ADMIN));
    let submit = Http::new(&d, Some(SUBMITTER));
    let viewer = Http::new(&d, Some(VIEWER));
    let worker = Http::new(&d, Some(WORKER));

    assert_error(&none.get("/v1/kinds").await, 401, 16);
    assert_error(&wrong.get("/v1/kinds").await, 401, 16);
    assert_error(
        &none.post("/v1/jobs", json!({"kind": "echo"})).await,
        401,
        16,
    );

    let job = submit.submit(json!({"kind": "echo"})).await;
    let id = job["id"].as_str().unwrap().to_string();
    viewer.wait_state(&id, "JOB_STATE_SUCCEEDED").await;

    // viewer: every read, nothing else.
    for path in [
        format!("/v1/jobs/{id}"),
        "/v1/jobs".to_string(),
        "/v1/kinds".to_string(),
        "/v1/schedules".to_string(),
        "/v1/workers".to_string(),
    ] {
        let r = viewer.get(&path).await;
        assert_eq!(r.status, 200, "{path}: {}", r.body);
    }
    let events = sse_all(&viewer, &format!("/v1/jobs/{id}/events"), None).await;
    assert_eq!(events.len(), 1, "{events:?}");
    let all = sse_open(&viewer, "/v1/events", None).await;
    drop(all);
    assert_error(&none.get("/v1/events").await, 401, 16);
    let r = viewer.post("/v1/jobs", json!({"kind": "echo"})).await;
    assert_error(&r, 403, 7);
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .contains("viewer token may not call Submit"),
        "{}",
        r.body
    );
    for path in [
        "/v1/jobs:batch".to_string(),
        format!("/v1/jobs/{id}:cancel"),
        "/v1/jobs:retry".to_string(),
        "/v1/kinds/echo:pause".to_string(),
        "/v1/schedules/x:trigger".to_string(),
    ] {
        let r = viewer.post(&path, json!({})).await;
        assert_error(&r, 403, 7);
    }

    // submit: its own calls, not the admin ones.
    assert_error(&submit.get("/v1/kinds").await, 403, 7);
    assert_error(
        &submit.post("/v1/kinds/echo:pause", json!({})).await,
        403,
        7,
    );
    assert_eq!(submit.get(&format!("/v1/jobs/{id}")).await.status, 200);

    // worker: WorkerService only, so no JSON route at all.
    assert_error(&worker.get(&format!("/v1/jobs/{id}")).await, 403, 7);
    assert_error(&worker.get("/v1/kinds").await, 403, 7);
    assert_error(
        &worker.post("/v1/jobs", json!({"kind": "echo"})).await,
        403,
        7,
    );

    // admin: everything.
    let r = admin.post("/v1/kinds/echo:pause", json!({})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(admin.get("/v1/kinds").await.status, 200);

    // The viewer role holds over gRPC as well.
    let ch = tonic::transport::Channel::from_shared(d.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let with_viewer = |mut r: tonic::Request<()>| {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {VIEWER}").parse().unwrap());
        Ok(r)
    };
    let mut g =
        proto::job_service_client::JobServiceClient::with_interceptor(ch.clone(), with_viewer);
    g.get_status(proto::GetStatusRequest { id: id.clone() })
        .await
        .expect("viewer reads over gRPC");
    let e = g.submit(req("echo", "x")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    let e = g
        .cancel(proto::CancelRequest { id: id.clone() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    let mut a = proto::admin_service_client::AdminServiceClient::with_interceptor(ch, with_viewer);
    a.list_kinds(proto::ListKindsRequest {}).await.unwrap();
    let e = a
        .pause_kind(proto::PauseKindRequest {
            kind: "echo".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    d.stop().await;
}

/// One server-sent event.
#[derive(Debug, Default, Clone)]
struct Sse {
    id: Option<u64>,
    event: Option<String>,
    data: Value,
}

/// Parses complete events from `buf` (events end with a blank line),
/// leaving an unfinished one there; comments (keep-alives) are skipped.
fn parse_sse(buf: &mut String) -> Vec<Sse> {
    let mut out = Vec::new();
    while let Some(end) = buf.find("\n\n") {
        let block: String = buf.drain(..end + 2).collect();
        let mut ev = Sse::default();
        let mut data = String::new();
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("id: ") {
                ev.id = Some(v.parse().unwrap());
            } else if let Some(v) = line.strip_prefix("event: ") {
                ev.event = Some(v.to_string());
            } else if let Some(v) = line.strip_prefix("data: ") {
                data.push_str(v);
            }
        }
        if data.is_empty() {
            continue;
        }
        ev.data = serde_json::from_str(&data).unwrap();
        out.push(ev);
    }
    out
}

/// Opens an event stream (checking its headers) for reading.
async fn sse_open(h: &Http, path: &str, last_event_id: Option<u64>) -> reqwest::Response {
    let mut r = h.request(reqwest::Method::GET, path);
    if let Some(id) = last_event_id {
        r = r.header("last-event-id", id.to_string());
    }
    let res = r.send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    res
}

/// Every event of a stream until the server ends it (bounded: 20 s).
async fn sse_all(h: &Http, path: &str, last_event_id: Option<u64>) -> Vec<Sse> {
    let mut res = sse_open(h, path, last_event_id).await;
    let mut buf = String::new();
    let mut out = Vec::new();
    loop {
        let chunk = tokio::time::timeout(Duration::from_secs(20), res.chunk())
            .await
            .expect("event stream stalled")
            .expect("event stream");
        let Some(chunk) = chunk else {
            return out;
        };
        buf.push_str(std::str::from_utf8(&chunk).unwrap());
        out.extend(parse_sse(&mut buf));
    }
}

#[tokio::test]
async fn job_events_stream_in_order_resume_from_last_event_id_and_end_at_terminal() {
    // A short handshake deadline: an HTTP/1.1 event stream has spoken and
    // must outlive it.
    let d = start("[limits]\nhandshake_timeout = \"200ms\"\n").await;
    let h = Http::new(&d, None);
    let job = h
        .submit(json!({"kind": "sleep", "payload": b64("600")}))
        .await;
    let id = job["id"].as_str().unwrap().to_string();
    let path = format!("/v1/jobs/{id}/events");

    let events = sse_all(&h, &path, None).await;
    assert!(events.len() >= 2, "{events:?}");
    let ids: Vec<u64> = events.iter().map(|e| e.id.unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "in order: {ids:?}");
    for e in &events {
        assert_eq!(e.event, None);
        assert_eq!(e.data["sequence"], e.id.unwrap().to_string());
        assert_eq!(e.data["job"]["id"], id.as_str());
    }
    let states: Vec<&str> = events
        .iter()
        .map(|e| e.data["job"]["state"].as_str().unwrap())
        .collect();
    assert_eq!(states.last(), Some(&"JOB_STATE_SUCCEEDED"), "{states:?}");
    assert!(states.contains(&"JOB_STATE_RUNNING"), "{states:?}");

    // Resume after the first event: only what came after (the finished
    // job's snapshot stands for every change since), then the end.
    let resumed = sse_all(&h, &path, Some(ids[0])).await;
    assert_eq!(resumed.len(), 1, "{resumed:?}");
    assert_eq!(resumed[0].id, ids.last().copied());
    assert_eq!(resumed[0].data["job"]["state"], "JOB_STATE_SUCCEEDED");
    // Resume after the last one: nothing more, the stream just ends.
    assert!(sse_all(&h, &path, ids.last().copied()).await.is_empty());
    // The same with the query parameter.
    let q = sse_all(&h, &format!("{path}?after_sequence={}", ids[0]), None).await;
    assert_eq!(q.len(), 1);

    // Refusals before the stream starts are plain JSON errors.
    let r = h
        .get("/v1/jobs/01890000-0000-7000-8000-000000000000/events")
        .await;
    assert_error(&r, 404, 5);
    let r = h
        .send(
            h.request(reqwest::Method::GET, &path)
                .header("last-event-id", "minus one"),
        )
        .await;
    assert_error(&r, 400, 3);
    d.stop().await;
}

#[tokio::test]
async fn drain_ends_job_event_streams_cleanly() {
    let d = start("[drain]\ngrace = \"50ms\"\ntimeout = \"300ms\"\n").await;
    let h = Http::new(&d, None);
    let job = h
        .submit(json!({"kind": "sleep", "payload": b64("60000")}))
        .await;
    let id = job["id"].as_str().unwrap().to_string();
    h.wait_state(&id, "JOB_STATE_RUNNING").await;
    let mut res = sse_open(&h, &format!("/v1/jobs/{id}/events"), None).await;
    let mut buf = String::new();
    let mut events = Vec::new();
    while events.is_empty() {
        let chunk = res.chunk().await.unwrap().expect("the snapshot");
        buf.push_str(std::str::from_utf8(&chunk).unwrap());
        events.extend(parse_sse(&mut buf));
    }
    assert_eq!(events[0].data["job"]["state"], "JOB_STATE_RUNNING");

    d.shutdown.drain.cancel();
    // The stream ends (the body completes) with an `error` event saying
    // UNAVAILABLE: reconnect elsewhere.
    loop {
        let chunk = tokio::time::timeout(Duration::from_secs(20), res.chunk())
            .await
            .expect("drain ends the stream")
            .expect("a clean end, not a reset");
        let Some(chunk) = chunk else { break };
        buf.push_str(std::str::from_utf8(&chunk).unwrap());
        events.extend(parse_sse(&mut buf));
    }
    let last = events.last().unwrap();
    assert_eq!(last.event.as_deref(), Some("error"), "{events:?}");
    assert_eq!(last.data["code"], 14, "{events:?}");
    tokio::time::timeout(Duration::from_secs(30), d.handle)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

/// A gRPC-Web unary call by hand: one length-prefixed message in, a
/// message frame and a trailer frame (flag 0x80) out.
async fn grpc_web_get_status(
    client: &reqwest::Client,
    base: &str,
    id: &str,
) -> (proto::GetStatusResponse, String) {
    let msg = proto::GetStatusRequest { id: id.into() }.encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    frame.extend_from_slice(&msg);
    let res = client
        .post(format!("{base}/jobd.v1.JobService/GetStatus"))
        .header("content-type", "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .body(frame)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/grpc-web"));
    let body = res.bytes().await.unwrap();
    let (mut rest, mut reply, mut trailers) = (&body[..], None, String::new());
    while rest.len() >= 5 {
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        let payload = &rest[5..5 + len];
        if rest[0] & 0x80 != 0 {
            trailers.push_str(std::str::from_utf8(payload).unwrap());
        } else {
            reply = Some(proto::GetStatusResponse::decode(payload).unwrap());
        }
        rest = &rest[5 + len..];
    }
    (reply.expect("a message frame"), trailers)
}

#[tokio::test]
async fn grpc_grpc_web_and_json_share_one_port_at_once() {
    let d = start("").await;
    let h = Http::new(&d, None);
    let mut grpc = d.client().await;
    let job = submit(&mut grpc, req("echo", "one port")).await;
    wait_terminal(&mut grpc, &job.id).await;

    // All three at once, several times over, on the same port.
    let web = crate::helpers::http_client();
    let (base, path) = (d.url(), format!("/v1/jobs/{}", job.id));
    for _ in 0..5 {
        let mut g = grpc.clone();
        let (a, (b, trailers), c) = tokio::join!(
            async {
                g.get_status(proto::GetStatusRequest { id: job.id.clone() })
                    .await
                    .unwrap()
                    .into_inner()
            },
            grpc_web_get_status(&web, &base, &job.id),
            h.get(&path),
        );
        assert_eq!(a.job.as_ref().unwrap().id, job.id);
        assert_eq!(b.job.as_ref().unwrap().id, job.id);
        assert!(trailers.contains("grpc-status:0"), "{trailers}");
        assert_eq!(c.status, 200);
        assert_eq!(c.body["job"]["id"], job.id.as_str());
        assert_eq!(c.body["job"]["result"], b64("one port"));
    }

    // JSON over HTTP/2 (prior knowledge, as gRPC's channel speaks it).
    let ch = tonic::transport::Channel::from_shared(d.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let r = http::Request::builder()
        .uri(format!("{}/v1/jobs/{}", d.url(), job.id))
        .body(tonic::body::Body::empty())
        .unwrap();
    let res = tower::ServiceExt::oneshot(ch, r).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.version(), http::Version::HTTP_2);
    let body = http_body_util::BodyExt::collect(res.into_body())
        .await
        .unwrap()
        .to_bytes();
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["job"]["id"], job.id.as_str());

    // gRPC-Web errors carry the gRPC status too.
    let (_, trailers) = async {
        let msg = proto::GetStatusRequest {
            id: "01890000-0000-7000-8000-000000000000".into(),
        }
        .encode_to_vec();
        let mut frame = vec![0u8];
        frame.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        frame.extend_from_slice(&msg);
        let res = web
            .post(format!("{}/jobd.v1.JobService/GetStatus", d.url()))
            .header("content-type", "application/grpc-web+proto")
            .body(frame)
            .send()
            .await
            .unwrap();
        let status = res.headers().get("grpc-status").cloned();
        let body = res.bytes().await.unwrap();
        ((), format!("{status:?} {}", String::from_utf8_lossy(&body)))
    }
    .await;
    assert!(
        trailers.contains("grpc-status:5") || trailers.contains("\"5\""),
        "{trailers}"
    );
    d.stop().await;
}

/// An HTTP/1.1 client that never finishes its request head is closed at
/// the handshake deadline, like a silent HTTP/2 one; a whole head counts as
/// having spoken, so the next request on a kept-alive connection is served
/// long after the deadline.
#[tokio::test]
async fn http1_clients_that_never_finish_a_request_head_are_closed_at_the_deadline() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let d = start("[limits]\nhandshake_timeout = \"300ms\"\n").await;

    let mut slow = tokio::net::TcpStream::connect(d.addr).await.unwrap();
    slow.write_all(b"GET /v1/kinds HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), slow.read(&mut buf))
        .await
        .expect("closed by the deadline, not left open")
        .unwrap_or(0);
    assert_eq!(n, 0, "{:?}", String::from_utf8_lossy(&buf[..n]));

    let mut kept = tokio::net::TcpStream::connect(d.addr).await.unwrap();
    let request = b"GET /v1/kinds HTTP/1.1\r\nHost: localhost\r\n\r\n";
    for round in 0..2 {
        kept.write_all(request).await.unwrap();
        // One whole response: the head, then content-length bytes.
        let mut got = Vec::new();
        let complete = |got: &[u8]| {
            let text = String::from_utf8_lossy(got);
            let (head, body) = text.split_once("\r\n\r\n")?;
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))?
                .parse()
                .ok()?;
            (body.len() >= len).then(|| head.to_string())
        };
        let head = loop {
            if let Some(head) = complete(&got) {
                break head;
            }
            let n = tokio::time::timeout(Duration::from_secs(5), kept.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "round {round}: closed");
            got.extend_from_slice(&buf[..n]);
        };
        assert!(head.starts_with("HTTP/1.1 200"), "round {round}: {head}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    d.stop().await;
}

/// With TLS, the JSON routes answer over HTTP/1.1 (a client that offers
/// only `http/1.1` in ALPN is served) and gRPC goes on over h2.
#[tokio::test]
async fn json_routes_over_tls_with_http1_alpn() {
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls;

    let files = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = files.path().join("server.pem");
    let key = files.path().join("server.key");
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let d = start(&format!(
        "[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        cert.display(),
        key.display()
    ))
    .await;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(ck.cert.der().clone()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(d.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.expect("TLS handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    tls.write_all(b"GET /v1/kinds HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), tls.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let body = out.split_once("\r\n\r\n").unwrap().1;
    let v: Value = serde_json::from_str(body).unwrap();
    assert!(v["kinds"].as_array().is_some_and(|k| !k.is_empty()), "{v}");
    d.stop().await;
}

/// A JSON request slower than `limits.request_timeout` (here, a body that
/// never finishes arriving) is answered 504 DEADLINE_EXCEEDED as JSON, not
/// with gRPC's timeout answer (a 200 a JSON client would take for success).
#[tokio::test]
async fn json_requests_past_the_request_timeout_are_504() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let d = start("[limits]\nrequest_timeout = \"300ms\"\n").await;
    let mut s = tokio::net::TcpStream::connect(d.addr).await.unwrap();
    s.write_all(
        b"POST /v1/jobs HTTP/1.1\r\nHost: localhost\r\ncontent-type: application/json\r\n\
          content-length: 100\r\n\r\n{\"kind\":",
    )
    .await
    .unwrap();
    let started = std::time::Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&out).contains("}]") && !out.ends_with(b"}") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("answered")
            .unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&out));
        out.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 504"), "{text}");
    assert!(text.contains("\"code\":4"), "{text}");
    assert!(started.elapsed() >= Duration::from_millis(200));
    d.stop().await;
}

/// A reader that stops reading while a job changes many times still gets
/// its events in order and never misses the terminal state (at worst it
/// gets the latest snapshot instead of each step), and everyone else is
/// served meanwhile.
#[tokio::test]
async fn a_paused_sse_reader_gets_ordered_events_and_the_terminal_state() {
    let d = start("").await;
    let h = Http::new(&d, None);
    let busy = h
        .submit(json!({"kind": "fail", "payload": b64("until:20"), "maxAttempts": 20}))
        .await;
    let id = busy["id"].as_str().unwrap().to_string();
    let mut res = sse_open(&h, &format!("/v1/jobs/{id}/events"), None).await;
    // Read nothing while the job goes through its ~60 transitions; others
    // are served meanwhile.
    for i in 0..20 {
        let j = h
            .submit(json!({"kind": "echo", "payload": b64(&i.to_string())}))
            .await;
        h.wait_state(j["id"].as_str().unwrap(), "JOB_STATE_SUCCEEDED")
            .await;
    }
    h.wait_state(&id, "JOB_STATE_SUCCEEDED").await;
    let mut buf = String::new();
    let mut events = Vec::new();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(20), res.chunk())
        .await
        .expect("stream ends")
        .expect("clean end")
    {
        buf.push_str(std::str::from_utf8(&chunk).unwrap());
        events.extend(parse_sse(&mut buf));
    }
    let ids: Vec<u64> = events.iter().map(|e| e.id.unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "in order: {ids:?}");
    let last = events.last().unwrap();
    assert_eq!(
        last.data["job"]["state"], "JOB_STATE_SUCCEEDED",
        "{events:?}"
    );
    assert_eq!(last.data["job"]["attempt"], 20);
    d.stop().await;
}

/// The dashboard's files are served from the binary with a strict CSP, and
/// without a token (they hold no data; the calls they make need one).
#[tokio::test]
async fn dashboard_files_are_embedded_with_a_strict_csp() {
    let d = start(&format!(
        "[auth]\ntokens = [{{ token = \"{VIEWER}\", role = \"viewer\" }}]\n"
    ))
    .await;
    let c = crate::helpers::http_client_builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let get = |path: &str| c.get(format!("{}{path}", d.url())).send();
    let r = get("/ui").await.unwrap();
    assert_eq!(r.status(), 308);
    assert_eq!(r.headers()["location"], "/ui/");
    for (path, ct, has) in [
        ("/ui/", "text/html", "<script src=\"app.js\""),
        ("/ui/index.html", "text/html", "<main id=\"main\">"),
        ("/ui/app.js", "text/javascript", "textContent"),
        ("/ui/graph.js", "text/javascript", "createElementNS"),
        ("/ui/app.css", "text/css", ".state"),
    ] {
        let r = get(path).await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let h = r.headers().clone();
        assert!(
            h["content-type"].to_str().unwrap().starts_with(ct),
            "{path}"
        );
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("script-src 'self'"), "{csp}");
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert_eq!(h["x-content-type-options"], "nosniff");
        let body = r.text().await.unwrap();
        assert!(body.contains(has), "{path}");
    }
    // The page never builds HTML from data.
    for script in ["/ui/app.js", "/ui/graph.js"] {
        let js = get(script).await.unwrap().text().await.unwrap();
        assert!(!js.contains("innerHTML") && !js.contains("insertAdjacentHTML"));
    }
    let r = get("/ui/secret.txt").await.unwrap();
    assert_eq!(r.status(), 404);
    // The data still needs the token.
    assert_eq!(get("/v1/kinds").await.unwrap().status(), 401);
    d.stop().await;
}
