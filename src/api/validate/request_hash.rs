//! The hash of a submit that an idempotency key is checked against.

use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::proto;

/// A hash of everything a submit asks for, so a reused idempotency key with a
/// different request is told apart from a retry of the same one. Fields are
/// length-prefixed so no two requests encode alike. `max_attempts` and
/// `timeout` are the effective values (the kind's default filled in), so
/// leaving a field to the default and spelling the default out are the same
/// request.
pub fn request_hash(req: &proto::SubmitRequest, max_attempts: u32, timeout: Duration) -> [u8; 32] {
    let mut h = Sha256::new();
    let mut field = |b: &[u8]| {
        h.update((b.len() as u64).to_le_bytes());
        h.update(b);
    };
    field(req.kind.as_bytes());
    field(&req.payload);
    field(&req.priority.to_le_bytes());
    field(&max_attempts.to_le_bytes());
    field(format!("{}.{}", timeout.as_secs(), timeout.subsec_nanos()).as_bytes());
    match &req.run_at {
        Some(t) => field(format!("{}.{}", t.seconds, t.nanos).as_bytes()),
        None => field(b"-"),
    }
    let mut labels: Vec<_> = req.labels.iter().collect();
    labels.sort();
    for (k, v) in labels {
        field(k.as_bytes());
        field(v.as_bytes());
    }
    // Only when set, so jobs stored before ordering keys keep their hash.
    if !req.ordering_key.is_empty() {
        field(b"ordering_key");
        field(req.ordering_key.as_bytes());
    }
    if let Some(d) = &req.dedup {
        field(b"dedup");
        field(d.key.as_bytes());
        // KEEP spelled out and left to the default are the same request.
        let mode = match proto::DedupMode::try_from(d.mode) {
            Ok(proto::DedupMode::Unspecified) => proto::DedupMode::Keep as i32,
            _ => d.mode,
        };
        field(&mode.to_le_bytes());
        for t in [&d.window, &d.max_wait] {
            match t {
                Some(t) => field(format!("{}.{}", t.seconds, t.nanos).as_bytes()),
                None => field(b"-"),
            }
        }
    }
    if !req.fairness_key.is_empty() {
        field(b"fairness_key");
        field(req.fairness_key.as_bytes());
    }
    // Only when set, like the keys above: a different deadline is a
    // different request.
    if let Some(t) = &req.start_before {
        field(b"start_before");
        field(format!("{}.{}", t.seconds, t.nanos).as_bytes());
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_hash_tells_requests_apart() {
        let a = proto::SubmitRequest {
            kind: "echo".into(),
            payload: b"x".to_vec(),
            ..Default::default()
        };
        let hash = |r: &proto::SubmitRequest| request_hash(r, 3, Duration::from_secs(60));
        let mut b = a.clone();
        assert_eq!(hash(&a), hash(&b));
        b.priority = 1;
        assert_ne!(hash(&a), hash(&b));
        let mut c = a.clone();
        c.kind = "echox".into();
        c.payload = vec![];
        assert_ne!(hash(&a), hash(&c));
        assert_ne!(hash(&a), request_hash(&a, 4, Duration::from_secs(60)));
        assert_ne!(hash(&a), request_hash(&a, 3, Duration::from_millis(60_001)));
    }
}
