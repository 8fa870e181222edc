//! `jobd bench fair`: claim throughput of a `fairness = "round_robin"` kind
//! against a plain one, in the same run: the `drain` of `--jobs` no-op
//! jobs spread over `--keys` fairness keys, first on `--kind` (plain), then
//! on `--fair-kind` (declared with `fairness = "round_robin"`).

use super::{drain, BenchArgs, BenchError, Row};
use tonic::transport::Channel;

pub(super) async fn fair(a: &BenchArgs, chans: &[Channel]) -> Result<Vec<Row>, BenchError> {
    let keys = if a.keys == 0 { 10_000 } else { a.keys };
    let plain = BenchArgs {
        keys,
        fairness_keys: true,
        ..a.clone()
    };
    let mut plain_row = drain(&plain, chans).await?;
    plain_row.scenario = "fair: plain".into();
    let fair = BenchArgs {
        kind: a.fair_kind.clone(),
        ..plain
    };
    let mut fair_row = drain(&fair, chans).await?;
    fair_row.scenario = "fair: round_robin".into();
    fair_row.ratio = Some(fair_row.per_s / plain_row.per_s.max(1e-9));
    plain_row.ratio = Some(1.0);
    Ok(vec![plain_row, fair_row])
}
