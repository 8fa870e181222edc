//! Samples that cannot drift: every ```` ```console ```` block of README.md
//! and the guide (docs/src) is run against a real daemon and its output
//! compared with what the docs show.
//!
//! The convention (docs/src/contributing.md says it for writers):
//! - `$ ` starts a command (a line ending in `\` goes on); the lines up to
//!   the next command are what it prints, stdout and stderr together.
//! - ```` ```toml sample=NAME ```` is a daemon's configuration;
//!   ```` ```console daemon=NAME ```` runs against it; without `daemon=`, a
//!   daemon with no config (the builtin kinds). Daemons are started afresh
//!   for each file, and a file's blocks run in order.
//! - The documented addresses (`localhost:50051`, a sample config's `listen`,
//!   the admin `localhost:9090`) are rewritten to the daemon's ephemeral
//!   ports in commands and back in outputs.
//! - UUIDs, timestamps, HTTP dates, durations and `content-length` values are
//!   masked; a run of spaces matches any run of spaces; a line `...` matches
//!   any lines. A UUID the docs show in an output stands for the real one in
//!   the commands after it.
//! - ```` ```console pending ```` is skipped (a feature not merged yet) and
//!   listed; ```` ```console skip ```` needs a `<!-- skip: why -->` line
//!   right above it.
//! - `SAMPLES_BLESS=1` writes the real outputs into the docs instead of
//!   failing (review the diff before committing).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use jobd::{Config, Shutdown};
use regex::Regex;

use crate::docs::markdown_files;
use crate::interop::available;

/// One command's bound: the slowest sample (a 3 s sleep job, protoc) is
/// far below it.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
const DOC_PORT: u16 = 50051;
const DOC_ADMIN_PORT: u16 = 9090;

struct Step {
    /// 1-based line of the `$ ` in the file.
    line: usize,
    command: String,
    /// (1-based line, text)
    expected: Vec<(usize, String)>,
}

struct Block {
    line: usize,
    daemon: String,
    skip: Option<String>,
    steps: Vec<Step>,
}

struct Doc {
    path: PathBuf,
    lines: Vec<String>,
    configs: HashMap<String, String>,
    blocks: Vec<Block>,
}

fn attr<'a>(info: &'a str, key: &str) -> Option<&'a str> {
    info.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

fn parse(path: &Path) -> Doc {
    let text = std::fs::read_to_string(path).unwrap();
    let lines: Vec<String> = text.lines().map(str::to_string).collect();
    let mut configs = HashMap::new();
    let mut blocks = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let Some(info) = lines[i].strip_prefix("```") else {
            i += 1;
            continue;
        };
        if info.starts_with('`') {
            // a ```` fence: skip to its end
            i += 1;
            while i < lines.len() && !lines[i].starts_with("````") {
                i += 1;
            }
            i += 1;
            continue;
        }
        let info = info.trim().to_string();
        let open = i;
        i += 1;
        let body_start = i;
        while i < lines.len() && lines[i] != "```" {
            i += 1;
        }
        let body = &lines[body_start..i.min(lines.len())];
        i += 1;
        let lang = info.split_whitespace().next().unwrap_or("");
        if lang == "toml" {
            if let Some(name) = attr(&info, "sample") {
                configs.insert(name.to_string(), body.join("\n") + "\n");
            }
            continue;
        }
        if lang != "console" {
            continue;
        }
        let words: Vec<&str> = info.split_whitespace().collect();
        let skip = if words.contains(&"pending") {
            Some("pending: a feature not merged yet".to_string())
        } else if words.contains(&"skip") {
            let reason = open
                .checked_sub(1)
                .and_then(|j| lines[j].trim().strip_prefix("<!-- skip:"))
                .map(|r| r.trim_end_matches("-->").trim().to_string());
            Some(reason.unwrap_or_else(|| {
                panic!(
                    "{}:{}: a skipped sample needs a `<!-- skip: why -->` line above it",
                    path.display(),
                    open + 1
                )
            }))
        } else {
            None
        };
        let mut steps: Vec<Step> = Vec::new();
        let mut j = 0;
        while j < body.len() {
            let n = body_start + j + 1;
            if let Some(cmd) = body[j].strip_prefix("$ ") {
                let mut command = cmd.to_string();
                while command.ends_with('\\') && j + 1 < body.len() {
                    j += 1;
                    command.push('\n');
                    command.push_str(&body[j]);
                }
                steps.push(Step {
                    line: n,
                    command,
                    expected: Vec::new(),
                });
            } else {
                let step = steps.last_mut().unwrap_or_else(|| {
                    panic!("{}:{n}: output before any `$ ` command", path.display())
                });
                step.expected.push((n, body[j].clone()));
            }
            j += 1;
        }
        for s in &mut steps {
            while s.expected.last().is_some_and(|(_, l)| l.trim().is_empty()) {
                s.expected.pop();
            }
        }
        blocks.push(Block {
            line: open + 1,
            daemon: attr(&info, "daemon").unwrap_or("").to_string(),
            skip,
            steps,
        });
    }
    Doc {
        path: path.to_path_buf(),
        lines,
        configs,
        blocks,
    }
}

/// A daemon of one sample config, on ephemeral ports.
struct Daemon {
    doc_port: u16,
    port: u16,
    doc_admin: u16,
    admin: u16,
    shutdown: Shutdown,
    handle: tokio::task::JoinHandle<Result<(), jobd::RunError>>,
    _dir: tempfile::TempDir,
}

fn port_of(config: &str, key: &str, default: u16) -> u16 {
    let re = Regex::new(&format!(r#"(?m)^{key}\s*=\s*"[^"]*:(\d+)""#)).unwrap();
    re.captures(config)
        .map_or(default, |c| c[1].parse().unwrap())
}

async fn start_daemon(config: &str) -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::new();
    if !Regex::new(r"(?m)^(store\s*=|\[store\])")
        .unwrap()
        .is_match(config)
    {
        writeln!(text, "store = \"sqlite:{}/jobd.db\"", dir.path().display()).unwrap();
    }
    text.push_str(&config.replace("./jobd-data", &dir.path().display().to_string()));
    if !config.contains("[drain]") {
        text.push_str("\n[drain]\ngrace = \"50ms\"\ntimeout = \"2s\"\n");
    }
    // As `jobd serve` does: no kinds declared means the builtin ones.
    let parsed = Config::from_toml(&text).expect("sample config parses");
    let prepared = jobd::prepare(parsed.with_default_kinds()).expect("sample config is valid");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let admin = admin_listener.local_addr().unwrap().port();
    let shutdown = Shutdown::new();
    let handle = tokio::spawn(jobd::run_with_listeners(
        prepared,
        listener,
        Some(admin_listener),
        shutdown.clone(),
    ));
    // As a reader waits for "jobd serving": the first sample must not race
    // the start (recovery, migrations), which would change what it prints.
    let admin_addr = std::net::SocketAddr::from(([127, 0, 0, 1], admin));
    let t0 = Instant::now();
    while crate::helpers::http_get(admin_addr, "/readyz").await.0 != 200 {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "sample daemon never ready"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Daemon {
        doc_port: port_of(config, "listen", DOC_PORT),
        port,
        doc_admin: port_of(config, "admin_listen", DOC_ADMIN_PORT),
        admin,
        shutdown,
        handle,
        _dir: dir,
    }
}

impl Daemon {
    async fn stop(self) {
        self.shutdown.drain.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(30), self.handle).await;
    }
}

/// Docs address -> real address in a command.
/// The block's own daemon comes first: several sample configs of one file
/// may all say `localhost:50051`.
fn to_real(
    command: &str,
    current: &str,
    daemons: &HashMap<String, Daemon>,
    ids: &HashMap<String, String>,
) -> String {
    let mut c = command.to_string();
    let others = daemons.iter().filter(|(name, _)| *name != current);
    for d in daemons
        .get(current)
        .into_iter()
        .chain(others.map(|(_, d)| d))
    {
        for host in ["localhost", "127.0.0.1"] {
            c = c.replace(
                &format!("{host}:{}", d.doc_port),
                &format!("{host}:{}", d.port),
            );
            c = c.replace(
                &format!("{host}:{}", d.doc_admin),
                &format!("{host}:{}", d.admin),
            );
        }
    }
    for (doc, real) in ids {
        c = c.replace(doc, real);
    }
    c
}

/// Real address -> docs address in an output.
fn to_doc(output: &str, daemons: &HashMap<String, Daemon>) -> String {
    let mut o = output.to_string();
    for d in daemons.values() {
        o = o.replace(&format!(":{}", d.port), &format!(":{}", d.doc_port));
        o = o.replace(&format!(":{}", d.admin), &format!(":{}", d.doc_admin));
    }
    o
}

struct Masks {
    token: Regex,
    uuid: Regex,
    /// A line a watch prints per event (`jobd submit --wait`, `jobd watch`,
    /// client.py). How many a watch sees depends on timing (a snapshot
    /// taken before or after the job started), so bless keeps only the last.
    transition: Regex,
}

/// `actual` as the docs show it: a run of watch lines becomes `...` and the
/// last of them (the terminal state, which every watch ends with).
fn collapse_transitions(masks: &Masks, actual: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (i, line) in actual.iter().enumerate() {
        let is = |l: &str| masks.transition.is_match(l);
        if is(line) {
            if i == 0 || !is(actual[i - 1]) {
                out.push("...".to_string());
            }
            if actual.get(i + 1).is_some_and(|next| is(next)) {
                continue;
            }
        }
        out.push(line.trim_end().to_string());
    }
    out
}

const UUID: &str = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}";
const TIMESTAMP: &str = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)";
const HTTP_DATE: &str = r"[A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d GMT";
const DURATION: &str = r"\b\d+(?:\.\d+)?(?:ns|µs|us|ms|s|m|h)\b";
const CONTENT_LENGTH: &str = r"(?i:content-length): \d+";
/// A loopback address with a port: a client's (ephemeral) port in a
/// worker list, say.
const LOOPBACK_PORT: &str = r"127\.0\.0\.1:\d+";

impl Masks {
    fn new() -> Masks {
        Masks {
            token: Regex::new(&format!(
                "(?P<uuid>{UUID})|(?P<ts>{TIMESTAMP})|(?P<date>{HTTP_DATE})|(?P<cl>{CONTENT_LENGTH})|(?P<lo>{LOOPBACK_PORT})|(?P<dur>{DURATION})| {{2,}}"
            ))
            .unwrap(),
            uuid: Regex::new(UUID).unwrap(),
            transition: Regex::new(&format!(
                r"^(?:{TIMESTAMP} [a-z_]+ attempt=\d+|watch: [A-Z_]+ attempt=\d+ sequence=\d+)$"
            ))
            .unwrap(),
        }
    }

    /// The anchored pattern an expected line stands for; its capture groups
    /// are the UUIDs, in order (returned with it).
    fn pattern(&self, expected: &str) -> (Regex, Vec<String>) {
        let mut re = String::from("^");
        let mut ids = Vec::new();
        let mut last = 0;
        for m in self.token.captures_iter(expected) {
            let whole = m.get(0).unwrap();
            re.push_str(&regex::escape(&expected[last..whole.start()]));
            if let Some(u) = m.name("uuid") {
                ids.push(u.as_str().to_string());
                write!(re, "({UUID})").unwrap();
            } else if m.name("ts").is_some() {
                re.push_str(TIMESTAMP);
            } else if m.name("date").is_some() {
                re.push_str(HTTP_DATE);
            } else if m.name("cl").is_some() {
                re.push_str(r"(?i:content-length): \d+");
            } else if m.name("lo").is_some() {
                re.push_str(LOOPBACK_PORT);
            } else if m.name("dur").is_some() {
                re.push_str(r"\d+(?:\.\d+)?(?:ns|µs|us|ms|s|m|h)");
            } else {
                re.push_str(" +");
            }
            last = whole.end();
        }
        re.push_str(&regex::escape(&expected[last..]));
        re.push('$');
        (Regex::new(&re).unwrap(), ids)
    }
}

/// Matches `actual` lines against `expected` (`...` = any lines); on success
/// the (docs id, real id) pairs seen.
fn matches(
    masks: &Masks,
    expected: &[String],
    actual: &[&str],
    ids: &HashMap<String, String>,
) -> Option<Vec<(String, String)>> {
    let Some((first, rest)) = expected.split_first() else {
        return actual.is_empty().then(Vec::new);
    };
    if first.trim() == "..." {
        return (0..=actual.len()).find_map(|skip| matches(masks, rest, &actual[skip..], ids));
    }
    let (line, rest_actual) = actual.split_first()?;
    let (re, doc_ids) = masks.pattern(first.trim_end());
    let caps = re.captures(line.trim_end())?;
    let mut pairs = Vec::new();
    for (k, doc) in doc_ids.into_iter().enumerate() {
        let real = caps.get(k + 1).unwrap().as_str().to_string();
        if ids.get(&doc).is_some_and(|known| *known != real) {
            return None;
        }
        pairs.push((doc, real));
    }
    let mut more = matches(masks, rest, rest_actual, ids)?;
    pairs.append(&mut more);
    Some(pairs)
}

fn run(command: &str, cwd: &Path, addr: &str, pgids: &mut Vec<u32>) -> String {
    let out_path = cwd.join(".sample-output");
    let out = std::fs::File::create(&out_path).unwrap();
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_jobd")).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .current_dir(cwd)
        .env("PATH", path)
        .env("JOBD_ADDR", addr)
        .env_remove("JOBD_TOKEN")
        .env("NO_COLOR", "1")
        .env("TERM", "dumb")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .process_group(0)
        .spawn()
        .expect("sh runs");
    // Only a command that leaves something running in the background has
    // its group killed at the end of the file: pids are reused, so a group
    // id is not kept longer than needed.
    let backgrounds = command.lines().any(|l| {
        let l = l.split(" #").next().unwrap_or("").trim_end();
        l.ends_with('&') && !l.ends_with("&&")
    });
    if backgrounds {
        pgids.push(child.id());
    }
    let t0 = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if t0.elapsed() > COMMAND_TIMEOUT {
            // The whole group: sh and what it started (the group is alive
            // while sh is, so its id is still this command's).
            kill_groups(&[child.id()]);
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    std::fs::read_to_string(&out_path).unwrap_or_default()
}

fn kill_groups(pgids: &[u32]) {
    for pgid in pgids {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{pgid}")])
            .stderr(Stdio::null())
            .status();
    }
}

fn scratch_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for name in ["proto", "examples", "sdks"] {
        std::os::unix::fs::symlink(
            Path::new(env!("CARGO_MANIFEST_DIR")).join(name),
            dir.path().join(name),
        )
        .unwrap();
    }
    // The README's quickstart runs the binary `cargo build --release` makes.
    let release = dir.path().join("target/release");
    std::fs::create_dir_all(&release).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_jobd"), release.join("jobd")).unwrap();
    dir
}

fn diff(expected: &[(usize, String)], actual: &[&str]) -> String {
    let mut out = String::new();
    let n = expected.len().max(actual.len());
    for i in 0..n {
        let e = expected.get(i).map(|(_, l)| l.as_str());
        let a = actual.get(i).copied();
        if e.map(str::trim_end) == a.map(str::trim_end) {
            writeln!(out, "  {}", a.unwrap()).unwrap();
        } else {
            if let Some(e) = e {
                writeln!(out, "- {e}").unwrap();
            }
            if let Some(a) = a {
                writeln!(out, "+ {a}").unwrap();
            }
        }
    }
    out
}

/// Runs one file's samples; returns its failures and (in bless mode) its
/// new text.
async fn run_doc(
    doc: &Doc,
    masks: &Masks,
    bless: bool,
    skipped: &mut Vec<String>,
) -> (Vec<String>, Option<Vec<String>>) {
    let shown = doc
        .path
        .strip_prefix(env!("CARGO_MANIFEST_DIR"))
        .unwrap()
        .display()
        .to_string();
    let mut failures = Vec::new();
    let mut daemons: HashMap<String, Daemon> = HashMap::new();
    let mut ids: HashMap<String, String> = HashMap::new();
    let mut lines = doc.lines.clone();
    let mut changed = false;
    let mut pgids = Vec::new();
    let scratch = scratch_dir();
    for block in &doc.blocks {
        if let Some(why) = &block.skip {
            skipped.push(format!("{shown}:{} ({why})", block.line));
            continue;
        }
        if !daemons.contains_key(&block.daemon) {
            let config = if block.daemon.is_empty() {
                String::new()
            } else {
                doc.configs.get(&block.daemon).cloned().unwrap_or_else(|| {
                    panic!(
                        "{shown}:{}: no ```toml sample={} block",
                        block.line, block.daemon
                    )
                })
            };
            daemons.insert(block.daemon.clone(), start_daemon(&config).await);
        }
        let addr = format!("http://127.0.0.1:{}", daemons[&block.daemon].port);
        for step in &block.steps {
            let command = to_real(&step.command, &block.daemon, &daemons, &ids);
            let cwd = scratch.path().to_path_buf();
            let mut groups = std::mem::take(&mut pgids);
            let a = addr.clone();
            let (output, groups) = tokio::task::spawn_blocking(move || {
                let o = run(&command, &cwd, &a, &mut groups);
                (o, groups)
            })
            .await
            .unwrap();
            pgids = groups;
            let output = to_doc(&output, &daemons);
            let mut actual: Vec<&str> = output.lines().collect();
            while actual.last().is_some_and(|l| l.trim().is_empty()) {
                actual.pop();
            }
            let expected: Vec<String> = step.expected.iter().map(|(_, l)| l.clone()).collect();
            let matched = matches(masks, &expected, &actual, &ids);
            if !bless {
                match matched {
                    Some(pairs) => {
                        for (doc_id, real) in pairs {
                            ids.entry(doc_id).or_insert(real);
                        }
                    }
                    None => {
                        let first = step.expected.first().map_or(step.line, |(n, _)| *n);
                        failures.push(format!(
                            "{shown}:{first}: the output of `{}` (line {}) differs (- docs, + real):\n{}",
                            step.command,
                            step.line,
                            diff(&step.expected, &actual)
                        ));
                    }
                }
                continue;
            }
            // Bless: every output is written as it came, so that a file shows
            // one run, and the real ids replace the docs' ones from here on.
            let pairs = matched.unwrap_or_else(|| {
                let find = |ls: &[&str]| -> Vec<String> {
                    ls.iter()
                        .flat_map(|l| masks.uuid.find_iter(l).map(|m| m.as_str().to_string()))
                        .collect()
                };
                let exp: Vec<&str> = expected.iter().map(String::as_str).collect();
                find(&exp).into_iter().zip(find(&actual)).collect()
            });
            let mut renames = Vec::new();
            for (d, r) in pairs {
                if !ids.contains_key(&d) {
                    ids.insert(d.clone(), r.clone());
                    renames.push((d, r));
                }
            }
            // Lines added (or removed) by earlier steps move this one.
            let offset = lines.len() as isize - doc.lines.len() as isize;
            let at = (step.line + step.command.lines().count() - 1) as isize + offset;
            let at = usize::try_from(at).unwrap();
            let new = collapse_transitions(masks, &actual);
            let count = new.len();
            let old: Vec<String> = lines.splice(at..at + step.expected.len(), new).collect();
            changed |= old != lines[at..at + count];
            for l in &mut lines[at + count..] {
                for (d, r) in &renames {
                    *l = l.replace(d.as_str(), r);
                }
            }
        }
    }
    kill_groups(&pgids);
    for (_, d) in daemons {
        d.stop().await;
    }
    (failures, changed.then_some(lines))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_console_sample_in_the_docs_runs_as_shown() {
    let tools = [
        ("grpcurl", &["-version"][..]),
        ("curl", &["--version"][..]),
        ("jq", &["--version"][..]),
        ("python3", &["-c", "import grpc_tools, grpc_status"][..]),
    ];
    if !tools.iter().all(|(p, probe)| available(p, probe)) {
        return;
    }
    let bless = std::env::var_os("SAMPLES_BLESS").is_some();
    let masks = Masks::new();
    let mut failures = Vec::new();
    let mut skipped = Vec::new();
    let mut ran = 0;
    for path in markdown_files() {
        let doc = parse(&path);
        ran += doc
            .blocks
            .iter()
            .filter(|b| b.skip.is_none())
            .map(|b| b.steps.len())
            .sum::<usize>();
        if doc.blocks.is_empty() {
            continue;
        }
        let (mut f, new) = run_doc(&doc, &masks, bless, &mut skipped).await;
        failures.append(&mut f);
        if let Some(lines) = new {
            std::fs::write(&path, lines.join("\n") + "\n").unwrap();
            println!("blessed {}", path.display());
        }
    }
    println!("{ran} sample commands run; skipped blocks:");
    for s in &skipped {
        println!("  {s}");
    }
    assert!(
        ran >= 20,
        "only {ran} sample commands found: the parser is broken"
    );
    assert!(
        failures.is_empty(),
        "{} samples differ:\n\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn masks_hide_ids_times_and_durations_only() {
    let m = Masks::new();
    let ids = HashMap::new();
    let exp = |s: &str| vec![s.to_string()];
    let id = "01a23e0c-86ef-77ed-8b2c-9304931c7d69";
    let other = "01a23e17-fabb-72e9-8d33-9228fa48059d";
    let pairs = matches(
        &m,
        &exp(&format!("id: {id} at 2026-12-03T22:35:38.095523Z")),
        &[&format!("id: {other} at 2026-12-04T01:02:03Z")],
        &ids,
    )
    .unwrap();
    assert_eq!(pairs, vec![(id.to_string(), other.to_string())]);
    assert!(matches(&m, &exp("state: queued"), &["state: running"], &ids).is_none());
    assert!(matches(&m, &exp("took 1.5s"), &["took 250ms"], &ids).is_some());
    assert!(matches(&m, &exp("a  b"), &["a      b"], &ids).is_some());
    let dots = vec!["first".to_string(), "...".to_string(), "last".to_string()];
    assert!(matches(&m, &dots, &["first", "x", "y", "last"], &ids).is_some());
    assert!(matches(&m, &dots, &["first", "x"], &ids).is_none());
    let known: HashMap<String, String> = [(id.to_string(), id.to_string())].into();
    assert!(
        matches(&m, &exp(id), &[other], &known).is_none(),
        "a known id must stay the same"
    );
}
