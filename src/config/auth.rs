//! Bearer tokens: the roles, the secret wrapper, and the tokens file.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{invalid, ConfigError};

/// What a token may do (see `api::auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// JobService: submit and read (not Cancel).
    Submit,
    /// WorkerService only: take and report jobs of remote kinds.
    Worker,
    /// Read only: job status, lists and watches (a dashboard, a support
    /// engineer); may change nothing.
    Viewer,
    /// Everything.
    Admin,
}

/// A string that never prints: tokens stay out of logs and `check-config`.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(REDACTED)
    }
}

/// What `check-config` shows in place of a secret.
pub(crate) const REDACTED: &str = "<redacted>";

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    pub token: Secret,
    pub role: Role,
}

/// Bearer tokens for JobService. None configured: no authentication (fine
/// on loopback; see README "Security").
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub tokens: Vec<TokenConfig>,
    /// A file of `role token` lines (`#` comments), e.g. a mounted secret.
    pub tokens_file: Option<PathBuf>,
    /// Submit and SubmitBatch calls per second allowed to each token (a
    /// token bucket with one second of burst); past it RESOURCE_EXHAUSTED.
    /// 0 = no limit.
    pub submit_rate: u32,
}

/// Shortest token accepted: shorter ones are guessable.
pub(crate) const MIN_TOKEN_LEN: usize = 16;

impl AuthConfig {
    /// Checks the tokens written in the config itself (reads no file).
    pub fn check(&self) -> Result<(), ConfigError> {
        for (i, t) in self.tokens.iter().enumerate() {
            if t.token.expose().len() < MIN_TOKEN_LEN {
                return Err(invalid(
                    format!("auth.tokens[{i}]"),
                    "tokens must be at least 16 characters",
                ));
            }
        }
        Ok(())
    }

    /// Every configured token, reading `tokens_file` (once per call: the
    /// daemon calls this at start only); a bad one names its place.
    pub fn load_tokens(&self) -> Result<Vec<TokenConfig>, ConfigError> {
        self.check()?;
        let mut out = self.tokens.clone();
        let Some(path) = &self.tokens_file else {
            return Ok(out);
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            invalid(
                "auth.tokens_file",
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = |m: &str| invalid("auth.tokens_file", format!("line {}: {m}", n + 1));
            let (role, token) = line
                .split_once(char::is_whitespace)
                .ok_or_else(|| at("expected `role token`"))?;
            let role = match role {
                "submit" => Role::Submit,
                "admin" => Role::Admin,
                "worker" => Role::Worker,
                "viewer" => Role::Viewer,
                other => {
                    return Err(at(&format!(
                        "unknown role {other:?} (submit, viewer, worker or admin)"
                    )))
                }
            };
            let token = token.trim();
            if token.len() < MIN_TOKEN_LEN {
                return Err(at("tokens must be at least 16 characters"));
            }
            out.push(TokenConfig {
                token: Secret::new(token),
                role,
            });
        }
        Ok(out)
    }
}
