//! `POST /v1/kinds/{kind}/jobs`: Submit with the request body, as it is,
//! for the payload (any content type: text, JSON, an image), and the other
//! fields as query parameters. It is the Submit RPC: same validation,
//! roles, limits, metrics and reply as `POST /v1/jobs`.

use std::time::{Duration, SystemTime};

use tonic::Status;

use crate::api::error::{ApiError, Violation};
use crate::proto;

/// The query parameters taken, for the refusal of any other.
const PARAMETERS: &str =
    "key, priority, delay, label, ordering_key, fairness_key, max_attempts, timeout";

/// The SubmitRequest for `kind` with `payload`, from the query string:
/// `key` (idempotency key), `priority`, `delay` (a duration such as `30s`:
/// not before then), `label=k=v` (repeatable), `ordering_key`,
/// `fairness_key`, `max_attempts`, `timeout`. Every bad parameter is named.
pub(super) fn request(
    kind: String,
    payload: Vec<u8>,
    query: &str,
) -> Result<proto::SubmitRequest, Status> {
    let mut m = proto::SubmitRequest {
        kind,
        payload,
        ..Default::default()
    };
    let mut bad = Vec::new();
    let mut seen = Vec::new();
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        let mut refuse = |description: String| {
            bad.push(Violation {
                field: format!("query.{key}"),
                description,
            });
        };
        if key != "label" && seen.contains(&key) {
            refuse("given more than once".into());
            continue;
        }
        seen.push(key.clone());
        match key.as_ref() {
            "key" | "idempotency_key" => m.idempotency_key = value.into_owned(),
            "ordering_key" => m.ordering_key = value.into_owned(),
            "fairness_key" => m.fairness_key = value.into_owned(),
            "priority" => match value.parse() {
                Ok(p) => m.priority = p,
                Err(_) => refuse(format!(
                    "expected an integer (higher runs first, may be negative), got {value:?}"
                )),
            },
            "max_attempts" => match value.parse() {
                Ok(n) => m.max_attempts = n,
                Err(_) => refuse(format!(
                    "expected a whole number of attempts (0 = the kind's default), got {value:?}"
                )),
            },
            "delay" => match duration(&value) {
                Ok(d) => m.run_at = SystemTime::now().checked_add(d).map(Into::into),
                Err(why) => refuse(why),
            },
            "timeout" => match duration(&value) {
                Ok(d) => m.timeout = prost_types::Duration::try_from(d).ok(),
                Err(why) => refuse(why),
            },
            "label" | "labels" => match value.split_once('=') {
                Some((k, v)) if !k.is_empty() => {
                    m.labels.insert(k.to_string(), v.to_string());
                }
                _ => refuse(format!("expected key=value, got {value:?}")),
            },
            _ => refuse(format!(
                "unknown query parameter; this route takes {PARAMETERS}"
            )),
        }
    }
    if bad.is_empty() {
        Ok(m)
    } else {
        Err(ApiError::InvalidArgument(bad).into())
    }
}

/// A duration as the CLI takes it: `30s`, `5m`, `1h 30m`, `250ms`.
fn duration(value: &str) -> Result<Duration, String> {
    humantime::parse_duration(value.trim())
        .map_err(|e| format!("expected a duration such as 30s, 5m or 1h, got {value:?} ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_fill_the_request() {
        let m = request(
            "echo".into(),
            b"hi there".to_vec(),
            "key=k1&priority=-3&delay=30s&label=a=b&label=c=d%3De&ordering_key=o&timeout=2s\
             &fairness_key=t",
        )
        .unwrap();
        assert_eq!(m.kind, "echo");
        assert_eq!(m.payload, b"hi there");
        assert_eq!(m.idempotency_key, "k1");
        assert_eq!(m.priority, -3);
        assert_eq!(m.ordering_key, "o");
        assert_eq!(m.fairness_key, "t");
        assert_eq!(m.labels.get("c").map(String::as_str), Some("d=e"));
        assert_eq!(m.timeout.unwrap().seconds, 2);
        let run_at = SystemTime::try_from(m.run_at.unwrap()).unwrap();
        let ahead = run_at.duration_since(SystemTime::now()).unwrap();
        assert!(ahead > Duration::from_secs(25) && ahead <= Duration::from_secs(30));
    }

    #[test]
    fn bad_query_values_name_the_parameter() {
        for (query, field, says) in [
            ("priority=high", "query.priority", "expected an integer"),
            ("delay=soon", "query.delay", "expected a duration"),
            ("delay=-5s", "query.delay", "expected a duration"),
            ("label=nokey", "query.label", "expected key=value"),
            ("max_attempts=-1", "query.max_attempts", "whole number"),
            ("prio=1", "query.prio", "unknown query parameter"),
            ("key=a&key=b", "query.key", "more than once"),
        ] {
            let e = request("echo".into(), vec![], query).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{query}");
            assert!(
                e.message().contains(field) && e.message().contains(says),
                "{query}: {}",
                e.message()
            );
        }
    }
}
