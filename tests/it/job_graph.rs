//! A workflow's graph outside gRPC: `GET /v1/jobs/{id}/graph` (GetJobGraph
//! as proto3 JSON, its refusals), and the CLI's `jobd graph` and the
//! parents, children and waiting count `jobd status` shows. The dashboard's
//! drawing of it is in `browser.rs`.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::*;
use crate::workflows::{batch, dep, HEAD, KINDS};

/// `GET` or `POST` (with a JSON body) on the daemon; status and JSON body.
async fn call(d: &TestDaemon, path: &str, body: Option<Value>) -> (u16, Value) {
    let c = http_client();
    let url = format!("{}{path}", d.url());
    let r = match body {
        Some(b) => c
            .post(url)
            .header("content-type", "application/json")
            .body(b.to_string()),
        None => c.get(url),
    };
    let res = r.send().await.unwrap();
    let status = res.status().as_u16();
    let bytes = res.bytes().await.unwrap();
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("{status}: {e}: {}", String::from_utf8_lossy(&bytes)));
    (status, v)
}

/// The edges of a graph reply as `parent>child`.
fn edges(g: &Value) -> BTreeSet<String> {
    g["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{}>{}",
                e["parent"].as_str().unwrap(),
                e["child"].as_str().unwrap()
            )
        })
        .collect()
}

fn text(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

#[tokio::test]
async fn graph_route_answers_a_diamond_submitted_over_http() {
    let d = start_with(HEAD, KINDS).await;
    let (status, r) = call(
        &d,
        "/v1/jobs:batch",
        Some(json!({"requests": [
            {"kind": "step"},
            {"kind": "step", "dependsOn": ["$0"]},
            {"kind": "step", "dependsOn": ["$0"]},
            {"kind": "step", "dependsOn": ["$1", "$2"]},
        ]})),
    )
    .await;
    assert_eq!(status, 200, "{r}");
    let ids: Vec<String> = r["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["accepted"]["job"]["id"].as_str().unwrap().to_string())
        .collect();
    let [a, b, c, last] = &ids[..] else {
        panic!("{r}")
    };
    let want: BTreeSet<String> = [(a, b), (a, c), (b, last), (c, last)]
        .iter()
        .map(|(p, c)| format!("{p}>{c}"))
        .collect();

    // From the top, and from the bottom: the whole diamond either way,
    // the job itself first, in the proto3 JSON mapping.
    for (from, path) in [(a, ""), (last, "?depth=3")] {
        let (status, g) = call(&d, &format!("/v1/jobs/{from}/graph{path}"), None).await;
        assert_eq!(status, 200, "{g}");
        let jobs = g["jobs"].as_array().unwrap();
        assert_eq!(jobs.len(), 4, "{g}");
        assert_eq!(jobs[0]["id"], from.as_str());
        assert!(jobs[0]["state"].as_str().unwrap().starts_with("JOB_STATE_"));
        assert_eq!(edges(&g), want, "{g}");
        assert!(g.get("truncated").is_none(), "false is left out: {g}");
    }
    // The last job's parents, named on it.
    let (_, g) = call(&d, &format!("/v1/jobs/{last}/graph"), None).await;
    assert_eq!(g["jobs"][0]["parentIds"], json!([b, c]), "{g}");
    // One step down from the top: the middle, and more beyond.
    let (status, g) = call(&d, &format!("/v1/jobs/{a}/graph?depth=1"), None).await;
    assert_eq!(status, 200, "{g}");
    assert_eq!(g["jobs"].as_array().unwrap().len(), 3, "{g}");
    assert_eq!(edges(&g).len(), 2, "{g}");
    assert_eq!(g["truncated"], true, "{g}");

    // Refusals: a depth that is not a number names the parameter; an
    // unknown parameter too; an unknown job is 404; a bad id 400.
    for (query, field) in [("?depth=three", "query.depth"), ("?deep=1", "query.deep")] {
        let (status, e) = call(&d, &format!("/v1/jobs/{a}/graph{query}"), None).await;
        assert_eq!(status, 400, "{e}");
        assert_eq!(e["codeName"], "INVALID_ARGUMENT", "{e}");
        assert!(e["message"].as_str().unwrap().contains(field), "{e}");
        assert_eq!(e["details"][0]["fieldViolations"][0]["field"], field, "{e}");
    }
    let unknown = uuid::Uuid::now_v7();
    let (status, e) = call(&d, &format!("/v1/jobs/{unknown}/graph"), None).await;
    assert_eq!(status, 404, "{e}");
    assert_eq!(e["codeName"], "NOT_FOUND", "{e}");
    let (status, e) = call(&d, "/v1/jobs/not-a-job/graph", None).await;
    assert_eq!(status, 400, "{e}");
    // The route takes GET only.
    let (status, e) = call(&d, &format!("/v1/jobs/{a}/graph"), Some(json!({}))).await;
    assert_eq!(status, 405, "{e}");
    d.stop().await;
}

/// `gate` runs until the test creates `{dir}/go`: a parent that finishes
/// when the test says.
const GATE: &str = r#"
[kinds.gate]
handler = "command"
command = ["sh", "-c", "while [ ! -e {dir}/go ]; do sleep 0.05; done"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_graph_and_status_show_parents_children_and_waiting() {
    let d = start_with(HEAD, &format!("{KINDS}{GATE}")).await;
    let addr = d.url();
    let mut c = d.client().await;
    let jobs = batch(
        &mut c,
        vec![
            req("step", "a"),
            dep("step", &["$0"], false),
            dep("step", &["$0"], false),
            dep("step", &["$1", "$2"], true),
        ],
    )
    .await;
    let [a, b, c2, last] = &jobs[..] else {
        unreachable!()
    };
    wait_terminal(&mut c, &last.id).await;
    // Siblings are listed in id order; the first one's subtree is shown.
    let (s1, s2) = if b.id < c2.id { (b, c2) } else { (c2, b) };

    // The tree from the top: each job once, the one reached twice marked.
    let o = cli(&addr, &["graph", &a.id]).await;
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let out = text(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("JOB "), "{out}");
    assert!(
        lines[1].starts_with(&format!("{}  succeeded   step", a.id)),
        "{out}"
    );
    assert_eq!(lines[2], "children:", "{out}");
    assert!(
        lines[3].starts_with(&format!("  {}  succeeded", s1.id)),
        "{out}"
    );
    assert!(
        lines[4].starts_with(&format!("    {}  succeeded", last.id)),
        "{out}"
    );
    assert!(
        lines[5].starts_with(&format!("  {}  succeeded", s2.id)),
        "{out}"
    );
    assert!(
        lines[6].starts_with(&format!("    {}", last.id)) && lines[6].ends_with("(shown above)"),
        "{out}"
    );
    assert_eq!(lines.len(), 7, "{out}");
    // From the bottom: its parents and theirs.
    let o = cli(&addr, &["graph", &last.id, "--depth", "1"]).await;
    let out = text(&o);
    assert!(out.contains("parents:\n"), "{out}");
    assert!(!out.contains("children:"), "{out}");
    assert!(out.contains("--depth N"), "truncated: {out}");
    // --json: the GetJobGraphResponse.
    let o = cli(&addr, &["graph", &a.id, "--json"]).await;
    let g: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(g["jobs"].as_array().unwrap().len(), 4, "{g}");
    assert_eq!(edges(&g).len(), 4, "{g}");
    // Bad depth: clap's refusal; unknown job: exit 3.
    let o = cli(&addr, &["graph", &a.id, "--depth", "11"]).await;
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let o = cli(&addr, &["graph", &uuid::Uuid::now_v7().to_string()]).await;
    assert_eq!(o.status.code(), Some(3), "{o:?}");

    // status: parents (in depends_on order) and children (in id order)
    // with their states; the policy.
    let o = cli(&addr, &["status", &last.id]).await;
    let out = text(&o);
    assert!(
        out.contains(&format!("parents:      {}  succeeded\n", b.id)),
        "{out}"
    );
    assert!(
        out.contains(&format!("\n              {}  succeeded\n", c2.id)),
        "{out}"
    );
    assert!(out.contains("on failure:   run"), "{out}");
    assert!(!out.contains("waiting on"), "{out}");
    let o = cli(&addr, &["status", &a.id]).await;
    let out = text(&o);
    assert!(
        out.contains(&format!("children:     {}  succeeded\n", s1.id)),
        "{out}"
    );
    assert!(!out.contains("parents:"), "{out}");
    // --json stays GetStatusResponse.
    let o = cli(&addr, &["status", &last.id, "--json"]).await;
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["job"].is_object() && v.get("edges").is_none(), "{v}");

    // A WAITING job: how many parents it waits for, the running one named.
    let gate = submit(&mut c, req("gate", "")).await;
    let waiting = submit(
        &mut c,
        dep("step", &[gate.id.as_str(), a.id.as_str()], false),
    )
    .await;
    wait_for(&mut c, &gate.id, |s| s == jobd::proto::JobState::Running).await;
    let o = cli(&addr, &["status", &waiting.id]).await;
    let out = text(&o);
    assert!(out.contains("state:        waiting\n"), "{out}");
    assert!(out.contains("waiting on:   1 of 2 parents\n"), "{out}");
    assert!(
        out.contains(&format!("parents:      {}  running\n", gate.id)),
        "{out}"
    );
    assert!(
        out.contains(&format!("              {}  succeeded\n", a.id)),
        "{out}"
    );
    assert!(out.contains("on failure:   cancel"), "{out}");
    let o = cli(&addr, &["status", &gate.id]).await;
    assert!(
        text(&o).contains(&format!("children:     {}  waiting\n", waiting.id)),
        "{}",
        text(&o)
    );
    // `list --state waiting` finds it.
    let o = cli(&addr, &["list", "--state", "waiting"]).await;
    assert!(text(&o).contains(&waiting.id), "{}", text(&o));
    std::fs::write(d.dir.path().join("go"), "").unwrap();
    let done = tokio::time::timeout(Duration::from_secs(20), wait_terminal(&mut c, &waiting.id))
        .await
        .unwrap();
    assert_eq!(done.state, jobd::proto::JobState::Succeeded as i32);
    d.stop().await;
}
