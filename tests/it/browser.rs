//! The dashboard in a real browser: headless Chromium driven over WebDriver
//! (chromedriver, plain HTTP + JSON). Jobs are submitted over gRPC and must
//! show up and finish on an open page without a reload; a FAILED job is
//! retried by a click and succeeds; a kind is paused by a click; a payload
//! holding `<script>` is shown as text; a job page draws its workflow
//! graph and redraws it when a parent finishes. Screenshots go to
//! `$JOBD_SCREENSHOT_DIR` (default: the test's target dir).
//!
//! Needs `chromium` and `chromedriver` (Debian: chromium, chromium-driver;
//! `.ci/run` installs them). Without them the test says SKIPPED, and fails
//! under CI=1.

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use jobd::proto;
use serde_json::{json, Value};

use crate::helpers::*;

const CHROMEDRIVER: &str = "chromedriver";
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A WebDriver session on a chromedriver this test started.
struct Browser {
    http: reqwest::Client,
    base: String,
    session: String,
    driver: std::process::Child,
}

/// Ends chromedriver and the browser it started (its own process group),
/// so a failed test leaves no browser behind.
impl Drop for Browser {
    fn drop(&mut self) {
        // SAFETY: kill(2) with a negative pid signals that process group,
        // which `process_group(0)` made chromedriver's own.
        unsafe {
            libc::kill(-(self.driver.id() as i32), libc::SIGKILL);
        }
        let _ = self.driver.wait();
    }
}

/// Whether a program is on PATH.
fn found(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

impl Browser {
    async fn start() -> Option<Browser> {
        let chromium = ["chromium", "chromium-browser", "google-chrome"]
            .into_iter()
            .find(|b| found(b));
        let (true, Some(chromium)) = (found(CHROMEDRIVER), chromium) else {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI: chromium and chromedriver are required for the browser test"
            );
            eprintln!("SKIPPED: no chromium/chromedriver on PATH");
            return None;
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        use std::os::unix::process::CommandExt;
        let driver = std::process::Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let mut b = Browser {
            http: crate::helpers::http_client(),
            base: format!("http://127.0.0.1:{port}"),
            session: String::new(),
            driver,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while b
            .http
            .get(format!("{}/status", b.base))
            .send()
            .await
            .is_err()
        {
            assert!(tokio::time::Instant::now() < deadline, "chromedriver up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let binary = std::env::split_paths(&std::env::var_os("PATH").unwrap())
            .map(|d| d.join(chromium))
            .find(|p| p.is_file())
            .unwrap();
        let created = b
            .call(
                reqwest::Method::POST,
                "/session",
                Some(json!({"capabilities": {"alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {
                        "binary": binary,
                        "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                                 "--disable-dev-shm-usage", "--window-size=1400,900"],
                    },
                }}})),
            )
            .await
            .expect("a browser session");
        b.session = created["sessionId"].as_str().unwrap().to_string();
        Some(b)
    }

    /// One WebDriver command; `Err` holds WebDriver's error name.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let path = if path.starts_with("/session/") || path == "/session" {
            path.to_string()
        } else {
            format!("/session/{}{path}", self.session)
        };
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            r = r
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let res = r.send().await.map_err(|e| e.to_string())?;
        let ok = res.status().is_success();
        let v: Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
        let value = v["value"].clone();
        if ok {
            Ok(value)
        } else {
            Err(value["error"].as_str().unwrap_or("error").to_string())
        }
    }

    async fn goto(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await
            .unwrap();
    }

    async fn find(&self, css: &str) -> Option<String> {
        self.call(
            reqwest::Method::POST,
            "/element",
            Some(json!({"using": "css selector", "value": css})),
        )
        .await
        .ok()
        .map(|v| {
            v[ELEMENT]
                .as_str()
                .unwrap_or_else(|| panic!("{v}"))
                .to_string()
        })
    }

    /// Waits (bounded) until an element matches `css`.
    async fn wait_for(&self, css: &str) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(e) = self.find(css).await {
                return e;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "never appeared: {css}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The text of the element matching `css`. Pages re-render on live
    /// updates, so an element found may be replaced before it is read:
    /// then it is looked up again.
    async fn text_of(&self, css: &str) -> String {
        loop {
            let e = self.wait_for(css).await;
            match self
                .call(reqwest::Method::GET, &format!("/element/{e}/text"), None)
                .await
            {
                Ok(v) => return v.as_str().unwrap().to_string(),
                Err(e) if e == "stale element reference" => continue,
                Err(e) => panic!("text of {css}: {e}"),
            }
        }
    }

    /// Clicks the element matching `css` (looked up again if replaced).
    async fn click(&self, css: &str) {
        loop {
            let e = self.wait_for(css).await;
            match self
                .call(
                    reqwest::Method::POST,
                    &format!("/element/{e}/click"),
                    Some(json!({})),
                )
                .await
            {
                Ok(_) => return,
                Err(e) if e == "stale element reference" => continue,
                Err(e) => panic!("click {css}: {e}"),
            }
        }
    }

    async fn type_into(&self, css: &str, text: &str) {
        let e = self.wait_for(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{e}/value"),
            Some(json!({ "text": text })),
        )
        .await
        .unwrap();
    }

    /// Waits (bounded) until the banner's text contains `part`.
    async fn banner_says(&self, part: &str) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let text = self.text_of("#banner").await;
            if text.contains(part) {
                return text;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "banner never said {part:?}: {text:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn script(&self, js: &str) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": js, "args": []})),
        )
        .await
        .unwrap()
    }

    async fn screenshot(&self, name: &str) {
        let png = self
            .call(reqwest::Method::GET, "/screenshot", None)
            .await
            .unwrap();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap();
        let dir = std::env::var_os("JOBD_SCREENSHOT_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("screenshots"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), bytes).unwrap();
    }
}

#[tokio::test]
async fn dashboard_in_a_real_browser() {
    let Some(b) = Browser::start().await else {
        return;
    };
    // `flaky` fails its first run and succeeds after: a retry's success.
    let kinds = r#"
[kinds.echo]
handler = "echo"

[kinds.sleep]
handler = "sleep"

[kinds.slow]
handler = "command"
command = ["sh", "-c", "echo 'tile 1 of 2' >&2; echo '::progress 50 half way' >&2; sleep 3; echo 'tile 2 of 2' >&2"]

[kinds.flaky]
handler = "command"
max_attempts = 1
command = ["sh", "-c", "if [ -e {dir}/ran ]; then echo fixed; else touch {dir}/ran; echo broken >&2; exit 1; fi"]
"#;
    let d = start_with("", kinds).await;
    let ui = format!("{}/ui/", d.url());
    let mut grpc = d.client().await;

    // 1-3. The jobs page is open; jobs submitted over gRPC appear and
    // finish there without a reload.
    b.goto(&format!("{ui}#/jobs")).await;
    // No jobs yet: the page says how to submit one.
    assert!(b.text_of("#jobs-empty").await.contains("jobd submit"));
    let loaded = b.script("return performance.timeOrigin").await;
    let script_job = submit(&mut grpc, req("echo", "<script>alert(1)</script>")).await;
    let mut others = Vec::new();
    for i in 0..3 {
        others.push(submit(&mut grpc, req("echo", &format!("hello {i}"))).await);
    }
    let flaky = submit(&mut grpc, req("flaky", "")).await;
    for j in others.iter().chain([&script_job]) {
        b.wait_for(&format!("tr[data-id='{}'][data-state='succeeded']", j.id))
            .await;
    }
    b.wait_for(&format!("tr[data-id='{}'][data-state='failed']", flaky.id))
        .await;
    assert_eq!(
        b.script("return performance.timeOrigin").await,
        loaded,
        "the page was not reloaded"
    );
    b.screenshot("dashboard-jobs").await;
    // At 1,400 px no id or date wraps; numbers sit right-aligned under
    // right-aligned headings; every column has a heading.
    let layout = b
        .script(
            "const lines = (td) => { const r = document.createRange(); r.selectNodeContents(td); \
             return new Set([...r.getClientRects()].map((x) => Math.round(x.top))).size; }; \
             const cells = [...document.querySelectorAll('td.id, td.t')]; \
             const ths = [...document.querySelectorAll('th')]; \
             return { cells: cells.length, wrapped: cells.filter((td) => lines(td) > 1).length, \
               width: window.innerWidth, \
               numbers: [...document.querySelectorAll('th.n, td.n')].map((e) => getComputedStyle(e).textAlign), \
               headless: ths.filter((th) => !th.textContent.trim() && !th.querySelector('input')).length };",
        )
        .await;
    assert!(layout["cells"].as_u64().unwrap() >= 10, "{layout}");
    assert_eq!(layout["wrapped"], 0, "{layout}");
    assert!(layout["width"].as_u64().unwrap() <= 1400, "{layout}");
    let aligned = layout["numbers"].as_array().unwrap();
    assert!(
        !aligned.is_empty() && aligned.iter().all(|a| a == "right"),
        "{layout}"
    );
    assert_eq!(layout["headless"], 0, "{layout}");

    // 4. Retry the FAILED job with a click; it succeeds, live.
    b.goto(&format!("{ui}#/job/{}", flaky.id)).await;
    assert_eq!(b.text_of("dd[data-field='state']").await, "failed");
    b.click("#job-retry").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if b.text_of("dd[data-field='state']").await == "succeeded" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "retry never succeeded"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(b.text_of("#job-result").await.trim(), "fixed");
    // The attempt history explains the earlier failure (#35).
    let history = b.text_of("#job-attempts").await;
    assert!(
        history.contains("failed") && history.contains("succeeded") && history.contains("local"),
        "{history:?}"
    );
    b.screenshot("dashboard-job").await;
    assert_eq!(
        state_of(&mut grpc, &flaky.id).await,
        proto::JobState::Succeeded
    );

    // 4b. A running job's progress bar and log lines appear live.
    let slow = submit(&mut grpc, req("slow", "")).await;
    b.goto(&format!("{ui}#/job/{}", slow.id)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let progress = b.text_of("#job-progress").await;
        let log = b.text_of("#job-log").await;
        if progress.contains("50%")
            && progress.contains("half way")
            && log.contains("#1 tile 1 of 2")
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "progress/log never shown: {progress:?} {log:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_ne!(
        b.text_of("dd[data-field='state']").await,
        "succeeded",
        "seen while it ran"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !b.text_of("#job-log").await.contains("tile 2 of 2") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the second line never came"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    b.screenshot("dashboard-job-progress").await;

    // 5. Pause a kind with a click.
    b.goto(&format!("{ui}#/kinds")).await;
    b.click("#pause-echo").await;
    b.wait_for("#resume-echo").await;
    assert_eq!(
        b.text_of("tr[data-kind='echo'] td.kind-state").await,
        "paused"
    );
    let mut admin = proto::admin_service_client::AdminServiceClient::new(
        tonic::transport::Channel::from_shared(d.url())
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let kinds = admin
        .list_kinds(proto::ListKindsRequest {})
        .await
        .unwrap()
        .into_inner()
        .kinds;
    assert!(
        kinds.iter().any(|k| k.kind == "echo" && k.paused),
        "{kinds:?}"
    );
    b.screenshot("dashboard-kinds").await;

    // 6. A payload holding <script> is shown as text and runs nothing.
    b.goto(&format!("{ui}#/job/{}", script_job.id)).await;
    assert_eq!(b.text_of("#job-result").await, "<script>alert(1)</script>");
    assert_eq!(b.text_of("#job-payload").await, "<script>alert(1)</script>");
    let scripts = b
        .script("return [...document.querySelectorAll('script')].map((s) => s.getAttribute('src'))")
        .await;
    assert_eq!(
        scripts,
        json!(["graph.js", "app.js"]),
        "only the page's own scripts"
    );
    assert_eq!(
        b.call(reqwest::Method::GET, "/alert/text", None).await,
        Err("no such alert".to_string())
    );

    // The chart reads the daemon's per-minute counts: every job above
    // that succeeded is there (not a browser-side count of a list page).
    b.goto(&format!("{ui}#/overview")).await;
    b.wait_for("#throughput").await;
    let counted = b
        .script("return Number(document.getElementById('throughput').dataset.succeeded)")
        .await;
    assert!(counted.as_u64().unwrap() >= 5, "{counted}");
    b.screenshot("dashboard-overview").await;

    // Empty pages say how to add what they list.
    b.goto(&format!("{ui}#/schedules")).await;
    assert!(b
        .text_of("#schedules-empty")
        .await
        .contains("[[schedules]]"));
    b.goto(&format!("{ui}#/workers")).await;
    assert!(b
        .text_of("#workers-empty")
        .await
        .contains("jobd work --kind"));
    d.stop().await;

    // With auth on, the page asks for a token, says when one is not
    // recognised, and a viewer token sees everything and no action it may
    // not use.
    const VIEWER: &str = "viewer-token-0123456789";
    const ADMIN: &str = "admin-token-0123456789";
    let d = start(&format!(
        "[auth]\ntokens = [{{ token = \"{VIEWER}\", role = \"viewer\" }}, \
         {{ token = \"{ADMIN}\", role = \"admin\" }}]\n"
    ))
    .await;
    let mut admin_jobs = jobd::proto::job_service_client::JobServiceClient::with_interceptor(
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
    let mut r = req("fail", "permanent");
    r.max_attempts = 1;
    let dead = admin_jobs
        .submit(r)
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    b.goto(&format!("{}/ui/#/kinds", d.url())).await;
    let missing = b.banner_says("needs a token").await;
    b.type_into("#token", "not-a-token-0123456789").await;
    b.click("#token-save").await;
    let wrong = b.banner_says("not recognised").await;
    assert_ne!(missing, wrong, "a wrong token is not a missing one");
    let e = b.wait_for("#token").await;
    b.call(
        reqwest::Method::POST,
        &format!("/element/{e}/clear"),
        Some(json!({})),
    )
    .await
    .unwrap();
    b.type_into("#token", VIEWER).await;
    b.click("#token-save").await;
    b.wait_for("tr[data-kind='echo']").await;
    assert_eq!(b.text_of("#role").await, "role: viewer (read only)");
    // Action buttons: all but the filter form's and the page links.
    let buttons =
        "return document.querySelectorAll('main button:not(#filter-apply):not([id^=page-])').length";
    assert_eq!(b.script(buttons).await, 0, "a viewer gets no pause button");
    assert!(b.find("#pause-echo").await.is_none());
    b.goto(&format!("{}/ui/#/jobs", d.url())).await;
    b.wait_for(&format!("tr[data-id='{}']", dead.id)).await;
    assert_eq!(b.script(buttons).await, 0, "no bulk retry or cancel");
    assert!(b.find("input.pick").await.is_none(), "nothing to tick");
    b.goto(&format!("{}/ui/#/job/{}", d.url(), dead.id)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while b.text_of("dd[data-field='state']").await != "failed" {
        assert!(tokio::time::Instant::now() < deadline, "never failed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(b.script(buttons).await, 0, "no retry for a viewer");
    b.screenshot("dashboard-viewer").await;
    let _ = b
        .call(
            reqwest::Method::DELETE,
            &format!("/session/{}", b.session),
            None,
        )
        .await;
    d.stop().await;
}

async fn state_of(
    c: &mut proto::job_service_client::JobServiceClient<tonic::transport::Channel>,
    id: &str,
) -> proto::JobState {
    state(&status(c, id).await)
}

/// A workflow for the job page's graph: `extract` runs until the test
/// creates `{dir}/go`; the others finish at once.
const GRAPH_KINDS: &str = r#"
[kinds.extract]
handler = "command"
command = ["sh", "-c", "while [ ! -e {dir}/go ]; do sleep 0.05; done; echo extracted"]

[kinds.download]
handler = "echo"

[kinds.transform]
handler = "echo"

[kinds.report]
handler = "echo"

[kinds.notify]
handler = "echo"
"#;

/// The job page draws the job's graph (parents above, children below,
/// nodes linking to their pages, coloured by state), and redraws it live
/// when a parent finishes, which is no event of the page's job.
#[tokio::test]
async fn job_page_draws_the_workflow_graph() {
    let Some(b) = Browser::start().await else {
        return;
    };
    let d = start_with("", GRAPH_KINDS).await;
    let ui = format!("{}/ui/", d.url());
    let mut grpc = d.client().await;
    // `download` has finished before the rest is submitted: `transform`
    // waits on `extract` alone.
    let download = submit(&mut grpc, req("download", "")).await;
    wait_terminal(&mut grpc, &download.id).await;
    let jobs = crate::workflows::batch(
        &mut grpc,
        vec![
            req("extract", ""),
            crate::workflows::dep("transform", &["$0", download.id.as_str()], false),
            crate::workflows::dep("report", &["$1"], false),
            crate::workflows::dep("notify", &["$1"], true),
        ],
    )
    .await;
    let [extract, transform, report, notify] = &jobs[..] else {
        unreachable!()
    };
    let node =
        |id: &str, state: &str| format!("#job-graph a.node[data-id='{id}'][data-state='{state}']");
    b.goto(&format!("{ui}#/job/{}", transform.id)).await;
    b.wait_for(&node(&extract.id, "running")).await;
    b.wait_for(&node(&transform.id, "waiting")).await;
    let shape = b
        .script(
            "const s = document.getElementById('job-graph-svg'); \
             const top = (id) => Number(s.querySelector(`a.node[data-id='${id}'] rect`).getAttribute('y')); \
             return { nodes: s.querySelectorAll('a.node').length, \
               edges: [...s.querySelectorAll('path.edge')].map((e) => e.dataset.parent + '>' + e.dataset.child).sort(), \
               self: s.querySelector('a.node.self').dataset.id, \
               links: [...s.querySelectorAll('a.node')].map((a) => a.getAttribute('href')).sort(), \
               y: Object.fromEntries([...s.querySelectorAll('a.node')].map((a) => [a.dataset.id, top(a.dataset.id)])) };",
        )
        .await;
    assert_eq!(shape["nodes"], 5, "{shape}");
    let mut edges = vec![
        format!("{}>{}", extract.id, transform.id),
        format!("{}>{}", download.id, transform.id),
        format!("{}>{}", transform.id, report.id),
        format!("{}>{}", transform.id, notify.id),
    ];
    edges.sort();
    assert_eq!(shape["edges"], json!(edges), "{shape}");
    assert_eq!(shape["self"], transform.id.as_str(), "{shape}");
    let mut links: Vec<String> = [
        &download.id,
        &extract.id,
        &transform.id,
        &report.id,
        &notify.id,
    ]
    .iter()
    .map(|id| format!("#/job/{id}"))
    .collect();
    links.sort();
    assert_eq!(shape["links"], json!(links), "{shape}");
    // Parents above the job, children below it.
    let y = |id: &str| shape["y"][id].as_f64().unwrap();
    assert_eq!(y(&extract.id), y(&download.id), "{shape}");
    assert!(y(&extract.id) < y(&transform.id), "{shape}");
    assert!(y(&transform.id) < y(&report.id), "{shape}");
    assert_eq!(y(&report.id), y(&notify.id), "{shape}");
    // The job's own fields: what it waits for, what a failure does.
    assert_eq!(
        b.text_of("dd[data-field='waiting on']").await,
        "1 of 2 parents"
    );
    assert!(b
        .text_of("dd[data-field='on parent failure']")
        .await
        .starts_with("cancelled"));
    let fill = |id: &str| {
        format!(
            "return getComputedStyle(document.querySelector(\"#job-graph a.node[data-id='{id}'] rect\")).fill"
        )
    };
    let running = b.script(&fill(&extract.id)).await;
    let succeeded = b.script(&fill(&download.id)).await;
    assert_ne!(running, succeeded);
    // Tall enough for the whole graph under the job's fields.
    b.call(
        reqwest::Method::POST,
        "/window/rect",
        Some(json!({"width": 1400, "height": 1100})),
    )
    .await
    .unwrap();
    b.screenshot("dashboard-job-graph").await;

    // The parent finishes: its node turns to succeeded (colour and text),
    // and the job and its children follow, without a reload.
    let loaded = b.script("return performance.timeOrigin").await;
    std::fs::write(d.dir.path().join("go"), "").unwrap();
    b.wait_for(&node(&extract.id, "succeeded")).await;
    assert_eq!(b.script(&fill(&extract.id)).await, succeeded);
    let sub = format!("#job-graph a.node[data-id='{}'] text.sub", extract.id);
    assert!(b.text_of(&sub).await.starts_with("succeeded"));
    for j in [transform, report, notify] {
        b.wait_for(&node(&j.id, "succeeded")).await;
    }
    assert_eq!(b.text_of("dd[data-field='state']").await, "succeeded");
    assert!(b.find("dd[data-field='waiting on']").await.is_none());
    assert_eq!(b.script("return performance.timeOrigin").await, loaded);

    // A node is a link to its job's page, which draws the graph from there.
    b.click(&format!("#job-graph a.node[data-id='{}']", report.id))
        .await;
    b.wait_for(&format!("#job-graph a.node.self[data-id='{}']", report.id))
        .await;
    // The jobs list filters by WAITING too; a job in no workflow shows no
    // graph.
    b.goto(&format!("{ui}#/jobs")).await;
    b.wait_for("#filter-state option[value='waiting']").await;
    let lone = submit(&mut grpc, req("download", "")).await;
    b.goto(&format!("{ui}#/job/{}", lone.id)).await;
    b.wait_for("#job-graph-slot[data-jobs='1']").await;
    assert!(b.find("#job-graph").await.is_none());
    let _ = b
        .call(
            reqwest::Method::DELETE,
            &format!("/session/{}", b.session),
            None,
        )
        .await;
    d.stop().await;
}

/// The schedules page's create form (CreateSchedule) and delete button
/// (DeleteSchedule): a schedule made in the form is stored with every
/// field as typed; a bad cron expression is refused in the banner, naming
/// the field; config schedules have no delete button; a stored one is
/// deleted by a click (after the confirmation).
#[tokio::test]
async fn schedules_page_creates_and_deletes() {
    let Some(b) = Browser::start().await else {
        return;
    };
    let d = start("[[schedules]]\nid = \"nightly\"\nkind = \"echo\"\ncron = \"0 3 * * *\"\n").await;
    let page = format!("{}/ui/#/schedules", d.url());
    let mut a = admin(&d.url()).await;
    let list = |a: &mut jobd::proto::admin_service_client::AdminServiceClient<_>| {
        let mut a = a.clone();
        async move {
            a.list_schedules(proto::ListSchedulesRequest {})
                .await
                .unwrap()
                .into_inner()
                .schedules
        }
    };
    b.goto(&page).await;
    b.wait_for("tr[data-schedule='nightly'][data-source='config']")
        .await;
    assert!(
        b.find("tr[data-schedule='nightly'] button.delete")
            .await
            .is_none(),
        "config schedules are read-only"
    );
    b.type_into("#schedule-id", "from-ui").await;
    b.type_into("#schedule-cron", "0 4 * * *").await;
    b.type_into("#schedule-timezone", "Europe/Paris").await;
    b.type_into("#schedule-payload", "hello").await;
    b.type_into("#schedule-labels", "team=ops, tier=gold").await;
    b.type_into("#schedule-catchup", "60s").await;
    b.script(
        "document.getElementById('schedule-overlap').value = 'SCHEDULE_OVERLAP_SKIP'; return 0",
    )
    .await;
    b.click("#schedule-create-submit").await;
    b.banner_says("Created schedule from-ui").await;
    b.wait_for("tr[data-schedule='from-ui'][data-source='api'] button.delete")
        .await;
    b.screenshot("dashboard-schedules").await;
    let s = list(&mut a)
        .await
        .into_iter()
        .find(|s| s.id == "from-ui")
        .expect("stored");
    assert_eq!(
        (
            s.kind.as_str(),
            s.cron.as_str(),
            s.timezone.as_str(),
            s.payload.as_str()
        ),
        ("echo", "0 4 * * *", "Europe/Paris", "hello")
    );
    assert_eq!(s.labels.get("tier").map(String::as_str), Some("gold"));
    assert_eq!(s.overlap, proto::ScheduleOverlap::Skip as i32);
    assert_eq!(s.catchup.map(|c| c.seconds), Some(60));
    assert_eq!(s.source, proto::ScheduleSource::Api as i32);

    // A bad expression: the daemon's refusal, naming the field.
    b.goto(&page).await;
    b.type_into("#schedule-id", "bad").await;
    b.type_into("#schedule-cron", "61 * * * *").await;
    b.click("#schedule-create-submit").await;
    b.banner_says("schedule.cron").await;
    assert_eq!(list(&mut a).await.len(), 2);

    // Delete, confirmed in the dialog.
    b.click("tr[data-schedule='from-ui'] button.delete").await;
    b.call(reqwest::Method::POST, "/alert/accept", Some(json!({})))
        .await
        .unwrap();
    b.banner_says("Deleted schedule from-ui").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while b.find("tr[data-schedule='from-ui']").await.is_some() {
        assert!(tokio::time::Instant::now() < deadline, "row never left");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ids: Vec<String> = list(&mut a).await.into_iter().map(|s| s.id).collect();
    assert_eq!(ids, ["nightly"]);
    let _ = b
        .call(
            reqwest::Method::DELETE,
            &format!("/session/{}", b.session),
            None,
        )
        .await;
    d.stop().await;
}
