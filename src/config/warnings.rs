//! Settings that work but are likely not what was meant: logged at start,
//! printed by `check-config`.

use super::{Config, Role, TokenConfig};

/// Settings that work but are likely not what was meant (logged at start,
/// printed by `check-config`).
pub fn warnings(config: &Config, tokens: &[TokenConfig]) -> Vec<String> {
    let mut out = Vec::new();
    for (name, k) in &config.kinds {
        if let Some(c) = k.concurrency.filter(|c| *c > config.queue.workers) {
            out.push(format!(
                "kinds.{name}.concurrency = {c} is above queue.workers = {}: at most {} run at once",
                config.queue.workers, config.queue.workers
            ));
        }
        let program = k.command.as_ref().and_then(|argv| argv.first());
        if let Some(p) = program.filter(|p| !p.contains('/') && !on_path(p)) {
            out.push(format!(
                "kinds.{name}.command: {p:?} is not found on PATH; its jobs will fail until it is"
            ));
        }
    }
    let may_submit = |r: Role| matches!(r, Role::Submit | Role::Admin);
    if !tokens.is_empty() && !tokens.iter().any(|t| may_submit(t.role)) {
        out.push(
            "[auth] is on and no token has a role that may submit (submit or admin): every \
             Submit will be refused; add a token with role = \"submit\""
                .to_string(),
        );
    }
    out
}

/// Whether `program` is an executable file in a `PATH` directory.
fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            std::fs::metadata(dir.join(program))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(role: Role) -> TokenConfig {
        TokenConfig {
            token: super::super::Secret::new("t".repeat(20)),
            role,
        }
    }

    #[test]
    fn auth_without_a_submitting_token_is_warned_about() {
        let c = Config::default();
        let says = |tokens: &[TokenConfig]| {
            warnings(&c, tokens)
                .iter()
                .any(|w| w.contains("no token has a role that may submit"))
        };
        assert!(says(&[token(Role::Viewer), token(Role::Worker)]));
        assert!(!says(&[token(Role::Viewer), token(Role::Submit)]));
        assert!(!says(&[token(Role::Admin)]));
        assert!(!says(&[]), "auth off");
    }
}
