//! The one /metrics parser of the suite.

use std::net::SocketAddr;

/// The /metrics text of a daemon's probe port.
pub async fn scrape(admin: SocketAddr) -> String {
    super::http_get(admin, "/metrics").await.1
}

/// The value of the one sample whose name and labels are exactly `series`.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .split(' ')
            .next()?
            .parse()
            .ok()
    })
}

/// [`sample`], which must be there.
pub fn must_sample(text: &str, series: &str) -> f64 {
    sample(text, series).unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
}

/// The sum of every sample whose line starts with `prefix` (a family, or
/// the family with some of its labels).
pub fn metric_sum(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
