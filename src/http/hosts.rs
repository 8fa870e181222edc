//! The `Host` check of browser-facing requests (JSON, server-sent events,
//! gRPC-Web, the dashboard). An Origin that matches Host proves nothing
//! after DNS rebinding: the attacker's page names its own host in both. So
//! the name itself must be one the operator serves under: `localhost`, an IP
//! address (a literal cannot be rebound), the name in `listen`, or one of
//! `[http] allowed_hosts`.

use std::net::IpAddr;

/// The names browser-facing requests may carry in `Host`.
#[derive(Debug, Clone)]
pub struct AllowedHosts {
    /// Lower case, without a trailing dot.
    names: Vec<String>,
    any: bool,
}

fn normal(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// The host part of `host[:port]` / `[v6]:port`, without brackets.
fn host_part(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("");
    }
    match authority.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    }
}

impl AllowedHosts {
    /// From the `listen` address and `[http] allowed_hosts`.
    pub fn new(listen: &str, configured: &[String]) -> AllowedHosts {
        let mut names = vec!["localhost".to_string()];
        let listen_host = host_part(listen);
        if !listen_host.is_empty() && listen_host.parse::<IpAddr>().is_err() {
            names.push(normal(listen_host));
        }
        names.extend(configured.iter().map(|n| normal(n)));
        AllowedHosts {
            any: configured.iter().any(|n| n == "*"),
            names,
        }
    }

    /// Whether a request naming `authority` (its `Host`, or the HTTP/2
    /// `:authority`) may be served.
    pub fn allows(&self, authority: &str) -> bool {
        if self.any {
            return true;
        }
        let host = host_part(authority.trim());
        if host.parse::<IpAddr>().is_ok() {
            return true;
        }
        let host = normal(host);
        self.names.contains(&host) || (host.ends_with(".localhost") && !host.starts_with('.'))
    }
}

#[cfg(test)]
mod tests {
    use super::AllowedHosts;

    #[test]
    fn names_ips_and_rebinding() {
        let h = AllowedHosts::new("0.0.0.0:50051", &["jobs.example.com".into()]);
        for ok in [
            "localhost:50051",
            "LOCALHOST",
            "127.0.0.1:8080",
            "[::1]:50051",
            "10.1.2.3",
            "jobs.example.com",
            "Jobs.Example.Com.:443",
            "app.localhost",
        ] {
            assert!(h.allows(ok), "{ok}");
        }
        for bad in [
            "evil.example:50051",
            "example.com",
            "",
            "localhost.evil.example",
        ] {
            assert!(!h.allows(bad), "{bad}");
        }
        let named = AllowedHosts::new("jobd.internal:50051", &[]);
        assert!(named.allows("jobd.internal:50051"));
        assert!(AllowedHosts::new("127.0.0.1:1", &["*".into()]).allows("evil.example"));
    }
}
