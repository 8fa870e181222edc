//! The `command` handler: runs an operator-configured program per attempt.
//! The payload goes to stdin, stdout (capped) is the result, exit 0 is
//! success. The child runs in its own process group, so a timeout, cancel
//! or drain stops it and every process it started: SIGTERM to the group,
//! SIGKILL after `kill_grace`.
//!
//! A process that leaves the group (`setsid`, a daemonizing fork) escapes
//! that signal, so after every attempt jobd also kills each process that
//! still carries the attempt's `JOBD_JOB_ID` and `JOBD_ATTEMPT` in its
//! environment ([`kill_strays`]). Only a process that also clears its
//! environment outlives its job; run under an init (`docker run --init`)
//! so the system reaps such orphans.
//!
//! Long-running commands: each stderr line is a log line (`::progress N
//! message` sets the progress instead), and `JOBD_CHECKPOINT_FILE` names a
//! file holding the previous attempt's checkpoint (absent when none); what
//! the command leaves there when it exits, failed or not, is handed to the
//! next attempt. A command stopped by a timeout or cancel keeps none.
//!
//! Workflows: a job with parents gets `JOBD_PARENT_IDS` (space-separated,
//! depends_on order; left out past 2,000 parents) and `JOBD_PARENTS_DIR`,
//! a directory with one file per parent, named by its id, holding its
//! result (results past the attempt's 1 MiB bound are not written).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

use super::{Handler, HandlerError, JobContext, Output};

/// Bytes of stderr kept for `last_error` (the tail, where errors usually are).
pub const STDERR_TAIL_BYTES: usize = 4096;
/// After the program exits, how long to wait for its output pipes to close
/// (a background grandchild may hold them) before the group is killed.
const PIPE_CLOSE_WAIT: Duration = Duration::from_millis(500);

#[derive(Debug, Clone)]
pub struct CommandHandler {
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub working_dir: Option<PathBuf>,
    pub permanent_exit_codes: Vec<i32>,
    pub kill_grace: Duration,
    pub max_output_bytes: usize,
}

/// Sends `sig` to every process in the group led by `pid`.
fn signal_group(pid: u32, sig: libc::c_int) {
    // pid 0 would mean jobd's own group.
    if pid == 0 {
        return;
    }
    // SAFETY: kill(2) with a negative pid signals a process group; it has
    // no memory-safety preconditions.
    unsafe {
        libc::kill(-(pid as libc::pid_t), sig);
    }
}

/// SIGKILLs an attempt's process group when dropped. An attempt whose task
/// is aborted (a forced stop gives up on it after its bounded wait, or the
/// runtime shuts down) never reaches the kills below; `kill_on_drop` alone
/// would kill the leader only and leave the rest of its group running.
struct KillGroupOnDrop(u32);

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        signal_group(self.0, libc::SIGKILL);
    }
}

/// Kills every process of this user that still carries `JOBD_JOB_ID=id`
/// and `JOBD_ATTEMPT=attempt` in its environment (processes that left the
/// attempt's process group); returns how many. Reads `/proc`, so it runs on
/// the blocking pool; unreadable entries (other users, gone) are skipped.
pub fn kill_strays(id: &str, attempt: u32) -> usize {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let want_id = format!("JOBD_JOB_ID={id}");
    let want_attempt = format!("JOBD_ATTEMPT={attempt}");
    let me = std::process::id();
    let mut killed = 0;
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(env) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        let mut vars = env.split(|b| *b == 0);
        let (mut has_id, mut has_attempt) = (false, false);
        for v in &mut vars {
            has_id |= v == want_id.as_bytes();
            has_attempt |= v == want_attempt.as_bytes();
        }
        if has_id && has_attempt {
            // SAFETY: kill(2) has no memory-safety preconditions.
            if unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) } == 0 {
                killed += 1;
            }
        }
    }
    killed
}

/// After an attempt: processes it started outside its group go too.
async fn reap_strays(job: &JobContext) {
    let (id, attempt) = (job.id.to_string(), job.attempt);
    let killed = tokio::task::spawn_blocking(move || kill_strays(&id, attempt))
        .await
        .unwrap_or(0);
    if killed > 0 {
        tracing::warn!(job = %job.id, attempt = job.attempt, killed, "killed processes the command left running outside its process group");
    }
}

/// Reads everything, keeping the first `cap` bytes; returns them and
/// whether more was discarded. Memory stays bounded by `cap`.
async fn read_capped(mut r: impl AsyncRead + Unpin, cap: usize) -> (Vec<u8>, bool) {
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    let mut overflow = false;
    while let Ok(n) = r.read(&mut buf).await {
        if n == 0 {
            break;
        }
        let room = cap.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..n.min(room)]);
        overflow |= n > room;
    }
    (kept, overflow)
}

/// The `::progress N message` convention (GitHub Actions' `::` commands):
/// such a stderr line sets the job's progress instead of being logged.
const PROGRESS_COMMAND: &str = "::progress ";

/// Reads stderr to its end: each line goes to the job's log (a
/// `::progress N message` line sets its progress instead), and the last
/// `cap` bytes of the other lines are kept (for `last_error`).
async fn read_stderr(mut r: impl AsyncRead + Unpin, cap: usize, job: JobContext) -> Vec<u8> {
    let mut tail = std::collections::VecDeque::with_capacity(cap);
    let mut line: Vec<u8> = Vec::new();
    let mut buf = [0u8; 8192];
    let mut batch = Vec::new();
    let mut take_line = |line: &mut Vec<u8>, batch: &mut Vec<String>| {
        let text = String::from_utf8_lossy(line)
            .trim_end_matches('\r')
            .to_string();
        line.clear();
        if let Some(rest) = text.strip_prefix(PROGRESS_COMMAND) {
            let (n, message) = rest.split_once(' ').unwrap_or((rest, ""));
            if let Ok(n) = n.trim().parse::<u32>() {
                job.progress(n, message, &[]);
                return;
            }
        }
        for b in text.bytes().chain(std::iter::once(b'\n')) {
            if tail.len() == cap {
                tail.pop_front();
            }
            tail.push_back(b);
        }
        batch.push(text);
    };
    while let Ok(n) = r.read(&mut buf).await {
        if n == 0 {
            break;
        }
        for b in &buf[..n] {
            if *b == b'\n' {
                take_line(&mut line, &mut batch);
            } else if line.len() < crate::handlers::MAX_LOG_LINE_BYTES {
                line.push(*b);
            }
        }
        if !batch.is_empty() {
            job.log(batch.drain(..));
        }
    }
    if !line.is_empty() {
        take_line(&mut line, &mut batch);
        job.log(batch.drain(..));
    }
    let mut out: Vec<u8> = tail.into_iter().collect();
    if out.last() == Some(&b'\n') {
        out.pop();
    }
    out
}

/// The file named by `JOBD_CHECKPOINT_FILE`: it holds the previous
/// attempt's checkpoint (absent when there is none) and whatever the
/// command leaves in it when it exits is the next attempt's. Removed with
/// the attempt.
#[derive(Debug)]
struct CheckpointFile(std::path::PathBuf);

impl CheckpointFile {
    fn create(job: &JobContext) -> std::io::Result<CheckpointFile> {
        let name = format!("jobd-{}-{}.checkpoint", job.id, job.attempt);
        let file = CheckpointFile(std::env::temp_dir().join(name));
        let _ = std::fs::remove_file(&file.0);
        if !job.checkpoint.is_empty() {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&file.0)?;
            std::io::Write::write_all(&mut f, &job.checkpoint)?;
        }
        Ok(file)
    }

    /// Hands what the command left, if it changed, to the next attempt.
    async fn collect(&self, job: &JobContext) {
        let limit = crate::handlers::MAX_CHECKPOINT_BYTES as u64 + 1;
        let path = self.0.clone();
        let read = tokio::task::spawn_blocking(move || {
            let mut buf = Vec::new();
            let f = std::fs::File::open(path).ok()?;
            std::io::Read::read_to_end(&mut std::io::Read::take(f, limit), &mut buf).ok()?;
            Some(buf)
        });
        if let Ok(Some(buf)) = read.await {
            if buf != job.checkpoint {
                job.save_checkpoint(buf);
            }
        }
    }
}

/// Parents' ids listed in `JOBD_PARENT_IDS` at most (an environment
/// string is bounded by the kernel); with more, `JOBD_PARENTS_DIR` still
/// holds every inlined result.
const MAX_PARENT_IDS_IN_ENV: usize = 2000;

/// `JOBD_PARENTS_DIR`: one file per parent whose result was inlined, named
/// by its id, holding its result. Removed with the attempt.
#[derive(Debug)]
struct ParentsDir(Option<std::path::PathBuf>);

impl ParentsDir {
    fn create(job: &JobContext) -> std::io::Result<ParentsDir> {
        if job.parents.is_empty() {
            return Ok(ParentsDir(None));
        }
        let dir = std::env::temp_dir().join(format!("jobd-{}-{}.parents", job.id, job.attempt));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir)?;
        let dir = ParentsDir(Some(dir));
        if let Some(d) = &dir.0 {
            for p in job.parents.iter().filter(|p| !p.omitted) {
                std::fs::write(d.join(p.id.to_string()), &p.result)?;
            }
        }
        Ok(dir)
    }

    fn env(&self, job: &JobContext, cmd: &mut Command) {
        let Some(d) = &self.0 else { return };
        cmd.env("JOBD_PARENTS_DIR", d);
        if job.parents.len() <= MAX_PARENT_IDS_IN_ENV {
            let ids: Vec<String> = job.parents.iter().map(|p| p.id.to_string()).collect();
            cmd.env("JOBD_PARENT_IDS", ids.join(" "));
        }
    }
}

impl Drop for ParentsDir {
    fn drop(&mut self) {
        if let Some(d) = &self.0 {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

impl Drop for CheckpointFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl CommandHandler {
    fn command(&self, job: &JobContext, checkpoint: &CheckpointFile) -> Command {
        let mut cmd = Command::new(&self.argv[0]);
        cmd.args(&self.argv[1..])
            .envs(&self.env)
            .env("JOBD_JOB_ID", job.id.to_string())
            .env("JOBD_ATTEMPT", job.attempt.to_string())
            .env("JOBD_KIND", &job.kind)
            .env("JOBD_CHECKPOINT_FILE", &checkpoint.0)
            // Only the job's own context: never one jobd itself inherited.
            .env_remove("TRACEPARENT")
            .env_remove("TRACESTATE")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        if let Some(t) = &job.trace {
            cmd.env("TRACEPARENT", &t.traceparent);
            if !t.tracestate.is_empty() {
                cmd.env("TRACESTATE", &t.tracestate);
            }
        }
        if let Some(dir) = &self.working_dir {
            cmd.current_dir(dir);
        }
        cmd
    }

    /// SIGTERM to the group, SIGKILL after the grace; reaps the leader.
    async fn stop(&self, child: &mut Child, pid: u32) {
        signal_group(pid, libc::SIGTERM);
        if tokio::time::timeout(self.kill_grace, child.wait())
            .await
            .is_err()
        {
            signal_group(pid, libc::SIGKILL);
            let _ = child.wait().await;
        }
        // Grandchildren that ignored SIGTERM must not outlive the job.
        signal_group(pid, libc::SIGKILL);
    }
}

#[async_trait]
impl Handler for CommandHandler {
    async fn run(&self, job: JobContext) -> Result<Output, HandlerError> {
        let r = self.run_attempt(&job).await;
        reap_strays(&job).await;
        r
    }
}

impl CommandHandler {
    async fn run_attempt(&self, job: &JobContext) -> Result<Output, HandlerError> {
        let checkpoint = CheckpointFile::create(job).map_err(|e| {
            HandlerError::retryable(format!("cannot write the checkpoint file: {e}"))
        })?;
        let parents = ParentsDir::create(job).map_err(|e| {
            HandlerError::retryable(format!("cannot write the parents' results: {e}"))
        })?;
        let mut cmd = self.command(job, &checkpoint);
        parents.env(job, &mut cmd);
        let mut child = cmd.spawn().map_err(|e| {
            HandlerError::permanent(format!("cannot start {:?}: {e}", self.argv[0]))
        })?;
        let pid = child.id().unwrap_or(0);
        let _group = KillGroupOnDrop(pid);
        let mut stdin = child.stdin.take();
        let payload = job.payload.clone();
        let feed = async move {
            if let Some(s) = stdin.as_mut() {
                // A program that does not read its stdin is fine.
                let _ = s.write_all(&payload).await;
                let _ = s.shutdown().await;
            }
            drop(stdin);
        };
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let out_task = tokio::spawn(read_capped(stdout, self.max_output_bytes));
        let err_task = tokio::spawn(read_stderr(stderr, STDERR_TAIL_BYTES, job.clone()));
        // Fed on its own: a program may exit without reading all of stdin,
        // and a grandchild holding stdin open must not keep us waiting.
        let feeder = tokio::spawn(feed);
        let status = tokio::select! {
            status = child.wait() => {
                feeder.abort();
                status
            }
            _ = job.cancel.cancelled() => {
                feeder.abort();
                self.stop(&mut child, pid).await;
                return Err(HandlerError::retryable("command stopped"));
            }
        };
        // The leader exited; anything it left behind in its group goes too,
        // once the pipes had a moment to drain.
        let collect = async { (out_task.await, err_task.await) };
        let (out, err) = match tokio::time::timeout(PIPE_CLOSE_WAIT, collect).await {
            Ok(r) => r,
            Err(_) => {
                signal_group(pid, libc::SIGKILL);
                return Err(HandlerError::retryable(
                    "command exited but a process it started kept its output open; killed",
                ));
            }
        };
        signal_group(pid, libc::SIGKILL);
        let (stdout, overflow) = out.unwrap_or_default();
        let stderr = String::from_utf8_lossy(&err.unwrap_or_default())
            .trim()
            .to_string();
        checkpoint.collect(job).await;
        let status =
            status.map_err(|e| HandlerError::retryable(format!("waiting for command: {e}")))?;
        if status.success() {
            if overflow {
                tracing::warn!(job = %job.id, cap = self.max_output_bytes, "command output over the cap was discarded");
            }
            return Ok(Output {
                result: stdout.into(),
            });
        }
        let describe = |what: String| {
            if stderr.is_empty() {
                what
            } else {
                format!("{what}: {stderr}")
            }
        };
        match status.code() {
            Some(code) if self.permanent_exit_codes.contains(&code) => Err(
                HandlerError::permanent(describe(format!("exit code {code}"))),
            ),
            Some(code) => Err(HandlerError::retryable(describe(format!(
                "exit code {code}"
            )))),
            None => {
                use std::os::unix::process::ExitStatusExt;
                Err(HandlerError::retryable(describe(format!(
                    "killed by signal {}",
                    status.signal().unwrap_or(0)
                ))))
            }
        }
    }
}
