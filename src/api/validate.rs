//! Checks at the edge: every field of every request, before the engine sees
//! it. Each check names the field it rejects.

use std::time::Duration;

use bytes::Bytes;
use uuid::Uuid;

use super::error::{ApiError, Violation};
use crate::config::{KindSettings, MAX_ATTEMPTS_LIMIT, MAX_TIMEOUT};
use crate::job::{now_micros, JobState, Micros, NewJob, MAX_ORDERING_KEY_LEN};
use crate::proto;
use crate::store::ListQuery;

pub use crate::job::{is_valid_kind, MAX_KIND_LEN};
mod dedup;
mod depends;
mod request_hash;
pub use dedup::MAX_DEDUP_KEY_BYTES;
pub use depends::depends_on;
pub use request_hash::request_hash;

pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 256;
pub const MAX_LABELS: usize = 32;
pub const MAX_LABEL_KEY_BYTES: usize = 63;
pub const MAX_LABEL_VALUE_BYTES: usize = 256;
pub const MAX_RUN_AT_AHEAD: Duration = crate::job::MAX_AHEAD;
pub const DEFAULT_PAGE_SIZE: u32 = 100;
pub const MAX_PAGE_SIZE: u32 = 1000;

/// Parses a job id field.
pub fn job_id(field: &str, s: &str) -> Result<Uuid, ApiError> {
    if s.is_empty() {
        return Err(ApiError::invalid(field, "required"));
    }
    Uuid::try_parse(s)
        .map_err(|_| ApiError::invalid(field, format!("{s:?} is not a job id (a UUID)")))
}

pub(super) fn duration(d: &prost_types::Duration) -> Option<Duration> {
    if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
        return None;
    }
    Some(Duration::new(d.seconds as u64, d.nanos as u32))
}

fn timestamp_micros(t: &prost_types::Timestamp) -> Option<Micros> {
    // RFC 3339 range: 0001-01-01 .. 9999-12-31.
    if !(-62_135_596_800..=253_402_300_799).contains(&t.seconds)
        || !(0..1_000_000_000).contains(&t.nanos)
    {
        return None;
    }
    Some(t.seconds * 1_000_000 + i64::from(t.nanos) / 1000)
}

/// Validates one submit. `prefix` names the field's place in a batch
/// (`requests[3].`); `lookup` finds a configured kind, or words why not.
/// Every violation is reported, not just the first.
pub fn submit<'a>(
    req: proto::SubmitRequest,
    prefix: &str,
    lookup: impl Fn(&str) -> Result<&'a KindSettings, String>,
) -> Result<NewJob, ApiError> {
    let mut v = Violations {
        prefix,
        list: Vec::new(),
    };
    let kind = submit_kind(&req, lookup, &mut v);
    submit_keys(&req, &mut v);
    let timeout = match &req.timeout {
        None => None,
        Some(d) => match duration(d) {
            Some(d) if !d.is_zero() && d <= MAX_TIMEOUT => Some(d),
            _ => {
                v.bad("timeout", "must be more than 0 and at most 24h".into());
                None
            }
        },
    };
    let now = now_micros();
    let run_at = submit_run_at(&req, now, &mut v);
    let start_before = submit_start_before(&req, now, &mut v);
    let dedup = dedup::dedup(req.dedup.as_ref(), run_at.is_some(), &mut v);
    submit_labels(&req, &mut v);
    let (Some(kind), true) = (kind, v.list.is_empty()) else {
        return Err(ApiError::InvalidArgument(v.list));
    };
    let max_attempts = if req.max_attempts == 0 {
        kind.max_attempts
    } else {
        req.max_attempts
    };
    let timeout = timeout.unwrap_or(kind.timeout);
    // The kind's start_within counts from now; the earlier deadline wins.
    let start_before = match kind.start_within {
        Some(w) => {
            let within = crate::job::add_micros(now, w);
            Some(start_before.map_or(within, |t| t.min(within)))
        }
        None => start_before,
    };
    let request_hash = request_hash(&req, max_attempts, timeout);
    let labels = req.labels.into_iter().collect();
    // A first DEBOUNCE submit waits its window too (capped by max_wait).
    let run_at = match &dedup {
        Some(crate::job::Dedup {
            mode: crate::job::DedupMode::Debounce { window, max_wait },
            ..
        }) => Some(crate::store::dedup::debounced_run_at(
            now, now, *window, *max_wait,
        )),
        _ => run_at,
    };
    // Once more on the values in effect (the kind's start_within, the
    // debounce window): a deadline not after run_at could never be met.
    if let (Some(deadline), Some(due)) = (start_before, run_at) {
        if deadline <= due {
            return Err(ApiError::invalid(
                format!("{prefix}start_before"),
                "not after run_at (with the kind's start_within and any dedup window): \
                 the job could never start",
            ));
        }
    }
    let fairness_key = if req.fairness_key.is_empty() {
        req.ordering_key.clone()
    } else {
        req.fairness_key
    };
    Ok(NewJob {
        id: Uuid::now_v7(),
        kind: req.kind,
        max_attempts,
        priority: req.priority,
        idempotency_key: Some(req.idempotency_key).filter(|k| !k.is_empty()),
        labels,
        payload: Bytes::from(req.payload),
        timeout,
        run_at,
        request_hash,
        created_at: now,
        ordering_key: Some(req.ordering_key).filter(|k| !k.is_empty()),
        trace: None,
        start: None,
        parents: Vec::new(),
        on_parent_failure: Default::default(),
        start_before,
        dedup,
        fairness_key,
    })
}

/// The violations found in one request so far, each field named with the
/// request's place in a batch.
struct Violations<'p> {
    prefix: &'p str,
    list: Vec<Violation>,
}

impl Violations<'_> {
    fn bad(&mut self, field: &str, description: String) {
        self.list.push(Violation {
            field: format!("{}{field}", self.prefix),
            description,
        });
    }
}

/// The configured kind a submit names, with its payload within the kind's
/// limit.
fn submit_kind<'a>(
    req: &proto::SubmitRequest,
    lookup: impl Fn(&str) -> Result<&'a KindSettings, String>,
    v: &mut Violations<'_>,
) -> Option<&'a KindSettings> {
    let kind = if req.kind.is_empty() {
        v.bad("kind", "required".into());
        None
    } else if !is_valid_kind(&req.kind) {
        v.bad(
            "kind",
            format!("{:?} must match [a-z0-9][a-z0-9_.-]{{0,63}}", req.kind),
        );
        None
    } else {
        let k = lookup(&req.kind);
        if let Err(why) = &k {
            v.bad("kind", why.clone());
        }
        k.ok()
    };
    if let Some(k) = kind {
        if req.payload.len() > k.max_payload_bytes {
            v.bad(
                "payload",
                format!(
                    "{} bytes is over the limit of {} bytes",
                    req.payload.len(),
                    k.max_payload_bytes
                ),
            );
        }
    }
    kind
}

/// The idempotency key, the ordering key and `max_attempts`.
fn submit_keys(req: &proto::SubmitRequest, v: &mut Violations<'_>) {
    if let Some(why) = key_problem(&req.idempotency_key, MAX_IDEMPOTENCY_KEY_BYTES) {
        v.bad("idempotency_key", why);
    }
    if let Some(why) = ordering_key_problem(&req.ordering_key) {
        v.bad("ordering_key", why);
    }
    // The same bound and alphabet as the ordering key it defaults to.
    if let Some(why) = ordering_key_problem(&req.fairness_key) {
        v.bad("fairness_key", why);
    }
    if req.max_attempts > MAX_ATTEMPTS_LIMIT {
        v.bad(
            "max_attempts",
            format!("at most {MAX_ATTEMPTS_LIMIT} (0 = the kind's default)"),
        );
    }
}

/// `run_at`, a valid time at most a year after `now`.
fn submit_run_at(
    req: &proto::SubmitRequest,
    now: Micros,
    v: &mut Violations<'_>,
) -> Option<Micros> {
    match &req.run_at {
        None => None,
        Some(t) => match timestamp_micros(t) {
            Some(m) if m <= now + MAX_RUN_AT_AHEAD.as_micros() as i64 => Some(m),
            Some(_) => {
                v.bad("run_at", "at most one year ahead".into());
                None
            }
            None => {
                v.bad("run_at", "not a valid timestamp".into());
                None
            }
        },
    }
}

/// A start deadline: valid, in the future, within a year (that it comes
/// after the run_at in effect is checked once that is known).
fn submit_start_before(
    req: &proto::SubmitRequest,
    now: Micros,
    v: &mut Violations<'_>,
) -> Option<Micros> {
    let t = req.start_before.as_ref()?;
    let bad = match timestamp_micros(t) {
        None => "not a valid timestamp",
        Some(m) if m <= now => "already past: a start deadline must be in the future",
        Some(m) if m > now + MAX_RUN_AT_AHEAD.as_micros() as i64 => "at most one year ahead",
        Some(m) => return Some(m),
    };
    v.bad("start_before", bad.into());
    None
}

/// How many labels, and the size of each key and value.
fn submit_labels(req: &proto::SubmitRequest, v: &mut Violations<'_>) {
    if req.labels.len() > MAX_LABELS {
        v.bad("labels", format!("at most {MAX_LABELS} labels"));
    }
    for (key, value) in &req.labels {
        if key.is_empty() || key.len() > MAX_LABEL_KEY_BYTES {
            v.bad(
                &format!("labels[{key:?}]"),
                format!("label keys are 1..={MAX_LABEL_KEY_BYTES} bytes"),
            );
        }
        if value.len() > MAX_LABEL_VALUE_BYTES {
            v.bad(
                &format!("labels[{key:?}]"),
                format!("label values are at most {MAX_LABEL_VALUE_BYTES} bytes"),
            );
        }
    }
}

/// Why an ordering key (in Submit or a ListJobs filter) is refused, if it is.
pub fn ordering_key_problem(key: &str) -> Option<String> {
    key_problem(key, MAX_ORDERING_KEY_LEN)
}

/// Why a client's key (idempotency, ordering, fairness, dedup) is refused,
/// if it is: more than `max` bytes, or a NUL (the stores' text columns).
fn key_problem(key: &str, max: usize) -> Option<String> {
    if key.len() > max {
        Some(format!("at most {max} bytes"))
    } else if key.contains('\0') {
        Some("must not contain NUL characters".into())
    } else {
        None
    }
}

/// A ListJobs request as a store query (its `limit` one more than the
/// page, to tell whether another page exists) and the labels to match.
pub fn list(
    req: proto::ListJobsRequest,
) -> Result<(ListQuery, std::collections::BTreeMap<String, String>), ApiError> {
    let state = proto::JobState::try_from(req.state)
        .map_err(|_| ApiError::invalid("state", format!("unknown state {}", req.state)))?;
    if !req.kind.is_empty() && !is_valid_kind(&req.kind) {
        return Err(ApiError::invalid(
            "kind",
            format!("{:?} is not a kind name", req.kind),
        ));
    }
    if let Some(why) = ordering_key_problem(&req.ordering_key) {
        return Err(ApiError::invalid("ordering_key", why));
    }
    let newest_first = match proto::ListJobsOrder::try_from(req.order) {
        Ok(proto::ListJobsOrder::NewestFirst) => true,
        Ok(_) => false,
        Err(_) => {
            return Err(ApiError::invalid(
                "order",
                format!("unknown order {}", req.order),
            ))
        }
    };
    if req.labels.len() > MAX_LABELS {
        return Err(ApiError::invalid(
            "labels",
            format!("at most {MAX_LABELS} labels"),
        ));
    }
    if let Some((k, _)) = req
        .labels
        .iter()
        .find(|(k, v)| k.len() > MAX_LABEL_KEY_BYTES || v.len() > MAX_LABEL_VALUE_BYTES)
    {
        return Err(ApiError::invalid(
            format!("labels[{k:?}]"),
            format!(
                "label keys are at most {MAX_LABEL_KEY_BYTES} bytes and values \
                 {MAX_LABEL_VALUE_BYTES}"
            ),
        ));
    }
    let limit = page_size(req.page_size)?;
    let query = ListQuery {
        state: crate::api::convert::state_from_proto(state),
        kind: Some(req.kind).filter(|k| !k.is_empty()),
        ordering_key: Some(req.ordering_key).filter(|k| !k.is_empty()),
        after: decode_page_token(&req.page_token)?,
        limit: limit + 1,
        newest_first,
    };
    Ok((query, req.labels.into_iter().collect()))
}

/// Page size with its default and bound.
pub fn page_size(n: u32) -> Result<usize, ApiError> {
    match n {
        0 => Ok(DEFAULT_PAGE_SIZE as usize),
        n if n <= MAX_PAGE_SIZE => Ok(n as usize),
        _ => Err(ApiError::invalid(
            "page_size",
            format!("at most {MAX_PAGE_SIZE}"),
        )),
    }
}

const PAGE_TOKEN_PREFIX: &str = "after:";

/// Page tokens are opaque to clients: base64 of `after:<last id>`.
pub fn encode_page_token(last: Uuid) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{PAGE_TOKEN_PREFIX}{last}"))
}

pub fn decode_page_token(token: &str) -> Result<Option<Uuid>, ApiError> {
    use base64::Engine;
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || ApiError::invalid("page_token", "not a token returned by ListJobs");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    let text = String::from_utf8(raw).map_err(|_| bad())?;
    let id = text.strip_prefix(PAGE_TOKEN_PREFIX).ok_or_else(bad)?;
    Uuid::try_parse(id).map(Some).map_err(|_| bad())
}

/// Jobs one RetryJobs call handles when the request does not say.
pub const DEFAULT_RETRY_LIMIT: usize = 1000;
/// Jobs one RetryJobs call handles at most: the reply lists each id, and
/// the call must end well within the request timeout.
pub const MAX_RETRY_LIMIT: usize = 10_000;

/// A kind named in an admin request: required and well-formed (whether it
/// is configured is the engine's question: NOT_FOUND).
pub fn kind_name(field: &str, s: &str) -> Result<(), ApiError> {
    if s.is_empty() {
        return Err(ApiError::invalid(field, "required"));
    }
    if !is_valid_kind(s) {
        return Err(ApiError::invalid(
            field,
            format!("{s:?} must match [a-z0-9][a-z0-9_.-]{{0,63}}"),
        ));
    }
    Ok(())
}

/// Which jobs a RetryJobs call names.
#[derive(Debug, Clone)]
pub enum RetrySelection {
    /// These ids (no duplicates, in the order given).
    Ids(Vec<Uuid>),
    Filter(RetryFilter),
}

#[derive(Debug, Clone)]
pub struct RetryFilter {
    /// FAILED or CANCELLED.
    pub state: JobState,
    pub kind: Option<String>,
    pub labels: Vec<(String, String)>,
    pub finished_after: Option<Micros>,
    pub finished_before: Option<Micros>,
}

impl RetryFilter {
    /// Whether a job of the selected state and kind matches the rest.
    pub fn matches(&self, job: &crate::job::Job) -> bool {
        let at = job.finished_at.unwrap_or(0);
        self.labels
            .iter()
            .all(|(k, v)| job.labels.get(k) == Some(v))
            && self.finished_after.is_none_or(|t| at >= t)
            && self.finished_before.is_none_or(|t| at < t)
    }
}

/// Validates a RetryJobs request: ids or a filter (exactly one), and the
/// limit. Returns the selection and the effective limit.
pub fn retry(req: &proto::RetryJobsRequest) -> Result<(RetrySelection, usize), ApiError> {
    let limit = match req.limit as usize {
        0 => DEFAULT_RETRY_LIMIT,
        n if n > MAX_RETRY_LIMIT => {
            return Err(ApiError::invalid(
                "limit",
                format!("at most {MAX_RETRY_LIMIT}"),
            ))
        }
        n => n,
    };
    let sel = match (&req.filter, req.ids.is_empty()) {
        (Some(_), false) => {
            return Err(ApiError::invalid(
                "ids",
                "give either ids or a filter, not both",
            ))
        }
        (None, true) => return Err(ApiError::invalid("ids", "give ids or a filter")),
        (None, false) => {
            if req.ids.len() > limit {
                return Err(ApiError::invalid(
                    "ids",
                    format!("{} ids given, more than limit ({limit})", req.ids.len()),
                ));
            }
            let mut seen = std::collections::HashSet::new();
            let mut ids = Vec::with_capacity(req.ids.len());
            for (i, s) in req.ids.iter().enumerate() {
                let id = job_id(&format!("ids[{i}]"), s)?;
                if seen.insert(id) {
                    ids.push(id);
                }
            }
            RetrySelection::Ids(ids)
        }
        (Some(f), true) => RetrySelection::Filter(retry_filter(f)?),
    };
    Ok((sel, limit))
}

fn retry_filter(f: &proto::RetryFilter) -> Result<RetryFilter, ApiError> {
    let mut v: Vec<Violation> = Vec::new();
    let mut bad = |field: &str, description: String| {
        v.push(Violation {
            field: format!("filter.{field}"),
            description,
        })
    };
    let state = match proto::JobState::try_from(f.state) {
        Ok(proto::JobState::Failed) => Some(JobState::Failed),
        Ok(proto::JobState::Cancelled) => Some(JobState::Cancelled),
        _ => {
            bad(
                "state",
                "JOB_STATE_FAILED or JOB_STATE_CANCELLED (only finished, unsuccessful jobs are retried)"
                    .into(),
            );
            None
        }
    };
    if !f.kind.is_empty() && !is_valid_kind(&f.kind) {
        bad(
            "kind",
            format!("{:?} must match [a-z0-9][a-z0-9_.-]{{0,63}}", f.kind),
        );
    }
    if f.labels.len() > MAX_LABELS {
        bad("labels", format!("at most {MAX_LABELS} labels"));
    }
    for (key, value) in &f.labels {
        if key.is_empty() || key.len() > MAX_LABEL_KEY_BYTES || value.len() > MAX_LABEL_VALUE_BYTES
        {
            bad(
                &format!("labels[{key:?}]"),
                format!(
                    "label keys are 1..={MAX_LABEL_KEY_BYTES} bytes, values at most {MAX_LABEL_VALUE_BYTES}"
                ),
            );
        }
    }
    let mut time = |field: &str, t: &Option<prost_types::Timestamp>| match t {
        None => None,
        Some(t) => {
            let m = timestamp_micros(t);
            if m.is_none() {
                bad(field, "not a valid timestamp".into());
            }
            m
        }
    };
    let finished_after = time("finished_after", &f.finished_after);
    let finished_before = time("finished_before", &f.finished_before);
    if let (Some(a), Some(b)) = (finished_after, finished_before) {
        if a >= b {
            bad(
                "finished_before",
                "must be later than finished_after".into(),
            );
        }
    }
    match state {
        Some(state) if v.is_empty() => Ok(RetryFilter {
            state,
            kind: (!f.kind.is_empty()).then(|| f.kind.clone()),
            labels: f
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            finished_after,
            finished_before,
        }),
        _ => Err(ApiError::InvalidArgument(v)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_pattern() {
        for ok in ["a", "echo", "0", "a.b-c_d", &"a".repeat(64)] {
            assert!(is_valid_kind(ok), "{ok}");
        }
        for bad in ["", "A", "-a", ".a", "a b", "é", &"a".repeat(65), "a/b"] {
            assert!(!is_valid_kind(bad), "{bad}");
        }
    }

    #[test]
    fn page_token_round_trip_and_garbage() {
        let id = Uuid::now_v7();
        assert_eq!(decode_page_token(&encode_page_token(id)).unwrap(), Some(id));
        assert_eq!(decode_page_token("").unwrap(), None);
        for bad in ["!!", "YWJj", &id.to_string()] {
            assert!(decode_page_token(bad).is_err(), "{bad}");
        }
    }

    /// Valid encodings of each request, to mutate: mutations of real
    /// messages reach the validation rules that random bytes rarely decode to.
    fn seeds() -> Vec<Vec<u8>> {
        use prost::Message;
        let full = proto::SubmitRequest {
            kind: "echo".into(),
            payload: b"payload".to_vec(),
            idempotency_key: "key-1".into(),
            priority: -5,
            max_attempts: 3,
            timeout: Some(prost_types::Duration {
                seconds: 30,
                nanos: 5,
            }),
            run_at: Some(prost_types::Timestamp {
                seconds: 1_900_000_000,
                nanos: 7,
            }),
            labels: [("team".to_string(), "a".to_string())].into(),
            ordering_key: "customer-7".into(),
            depends_on: vec!["$0".into(), Uuid::now_v7().to_string()],
            on_dependency_failure: proto::DependencyFailure::Run as i32,
            start_before: Some(prost_types::Timestamp {
                seconds: 1_900_000_100,
                nanos: 9,
            }),
            dedup: Some(proto::Dedup {
                key: "d".into(),
                mode: proto::DedupMode::Debounce as i32,
                window: Some(prost_types::Duration {
                    seconds: 5,
                    nanos: 0,
                }),
                max_wait: None,
            }),
            fairness_key: "tenant-3".into(),
        };
        vec![
            full.encode_to_vec(),
            proto::SubmitBatchRequest {
                requests: vec![full.clone(), full],
            }
            .encode_to_vec(),
            proto::ListJobsRequest {
                state: 2,
                kind: "echo".into(),
                page_size: 10,
                page_token: encode_page_token(Uuid::now_v7()),
                ..Default::default()
            }
            .encode_to_vec(),
            proto::GetStatusRequest {
                id: Uuid::now_v7().to_string(),
            }
            .encode_to_vec(),
        ]
    }

    /// Decodes `bytes` as every request message and validates what decodes.
    fn decode_and_validate(bytes: &[u8], kind: &crate::config::KindSettings) {
        use prost::Message;
        if let Ok(req) = proto::SubmitRequest::decode(bytes) {
            let _ = depends_on(&req.depends_on, req.on_dependency_failure, "", &[], 1000);
            let found = |k: &str| (k == kind.name).then_some(kind).ok_or(String::new());
            let _ = submit(req, "", found);
        }
        if let Ok(b) = proto::SubmitBatchRequest::decode(bytes) {
            let earlier = [Some(Uuid::now_v7()), None];
            for req in b.requests {
                let policy = req.on_dependency_failure;
                let _ = depends_on(&req.depends_on, policy, "requests[2].", &earlier, 3);
                let _ = submit(req, "requests[0].", |_| Ok(kind));
            }
        }
        if let Ok(r) = proto::ListJobsRequest::decode(bytes) {
            let _ = page_size(r.page_size);
            let _ = decode_page_token(&r.page_token);
        }
        if let Ok(r) = proto::GetStatusRequest::decode(bytes) {
            let _ = job_id("id", &r.id);
        }
        let _ = proto::WatchStatusRequest::decode(bytes);
        let _ = proto::CancelRequest::decode(bytes);
    }

    /// A fuzzer that runs in CI (cargo-fuzz needs a nightly toolchain, which
    /// this project's machines do not have): random bytes and mutations of
    /// valid requests (byte flips, inserts, cuts, splices), decoded as each
    /// request message and validated: errors, never panics.
    /// `JOBD_FUZZ_CASES` (default 50,000) and `JOBD_FUZZ_SEED` (printed)
    /// make longer runs and reproductions.
    #[test]
    fn arbitrary_and_mutated_requests_never_panic() {
        use rand::{Rng, SeedableRng};
        let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
        let seed = env("JOBD_FUZZ_SEED").unwrap_or_else(rand::random);
        let cases = env("JOBD_FUZZ_CASES").unwrap_or(50_000);
        println!("JOBD_FUZZ_SEED={seed} JOBD_FUZZ_CASES={cases}");
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let kind = crate::config::Config::default()
            .with_default_kinds()
            .validate()
            .unwrap()
            .remove(0);
        let seeds = seeds();
        for case in 0..cases {
            let bytes: Vec<u8> = if case % 2 == 0 {
                let len = rng.random_range(0..256);
                (0..len).map(|_| rng.random()).collect()
            } else {
                let mut b = seeds[rng.random_range(0..seeds.len())].clone();
                for _ in 0..rng.random_range(1..5) {
                    let at = rng.random_range(0..=b.len());
                    match rng.random_range(0..4) {
                        0 if at < b.len() => b[at] ^= 1 << rng.random_range(0..8),
                        1 => b.insert(at, rng.random()),
                        2 => b.truncate(at),
                        _ => {
                            let other = &seeds[rng.random_range(0..seeds.len())];
                            let from = rng.random_range(0..other.len());
                            b.splice(at..at, other[from..].iter().copied());
                        }
                    }
                }
                b
            };
            decode_and_validate(&bytes, &kind);
        }
    }

    /// Durations and times at the ends of their ranges (where conversions
    /// to microseconds overflow) are refused, not panics.
    #[test]
    fn extreme_durations_and_times_are_refused() {
        let kind = crate::config::Config::default()
            .with_default_kinds()
            .validate()
            .unwrap()
            .remove(0);
        // run_at / timeout at the ends of their ranges.
        use prost::Message;
        for (secs, nanos) in [
            (i64::MAX, 999_999_999),
            (i64::MIN, -999_999_999),
            (0, i32::MIN),
        ] {
            let req = proto::SubmitRequest {
                kind: kind.name.clone(),
                timeout: Some(prost_types::Duration {
                    seconds: secs,
                    nanos,
                }),
                run_at: Some(prost_types::Timestamp {
                    seconds: secs,
                    nanos,
                }),
                ..Default::default()
            };
            decode_and_validate(&req.encode_to_vec(), &kind);
            let name = kind.name.clone();
            let found = |k: &str| (k == name).then_some(&kind).ok_or(String::new());
            assert!(submit(req, "", found).is_err());
        }
    }
}
