//! The README and the guide (`docs/src`, an mdBook) hold together: every
//! relative link points at a file that exists and, with `#anchor`, at a
//! heading that exists in it (the slugs GitHub and mdBook make); the README
//! stays the first hour, not the manual.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

const README_MAX_LINES: usize = 260;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// README.md and every `.md` under docs/src, sorted.
pub fn markdown_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "md") {
                out.push(p);
            }
        }
    }
    let mut out = vec![root().join("README.md")];
    walk(&root().join("docs/src"), &mut out);
    out.sort();
    out
}

/// The lines of `text` outside fenced code blocks, with their numbers
/// (1-based).
fn prose_lines(text: &str) -> Vec<(usize, &str)> {
    let mut fence: Option<&str> = None;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        let marker = if t.starts_with("````") {
            Some("````")
        } else if t.starts_with("```") {
            Some("```")
        } else {
            None
        };
        match (fence, marker) {
            (None, Some(m)) => fence = Some(m),
            (Some(f), Some(m)) if f == m && t.trim_end() == m => fence = None,
            (None, None) => out.push((i + 1, line)),
            _ => {}
        }
    }
    out
}

/// `line` without its inline code spans (a link inside backticks is text).
fn strip_code_spans(line: &str) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some(start) = rest.find('`') {
        out.push_str(&rest[..start]);
        let ticks = rest[start..].chars().take_while(|c| *c == '`').count();
        let after = &rest[start + ticks..];
        match after.find(&"`".repeat(ticks)) {
            Some(end) => rest = &after[end + ticks..],
            None => {
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The heading slug GitHub and mdBook give `heading` (its text without the
/// leading `#`s): lower case, letters, digits, `_` and `-` kept, spaces to
/// `-`, everything else dropped.
pub fn slug(heading: &str) -> String {
    let text = strip_code_spans_keep(heading);
    text.trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| {
            if c.is_alphanumeric() || c == '_' || c == '-' {
                Some(c)
            } else if c == ' ' {
                Some('-')
            } else {
                None
            }
        })
        .collect()
}

/// Heading text as rendered: code spans keep their content, links their text.
fn strip_code_spans_keep(heading: &str) -> String {
    let mut s = heading.replace('`', "");
    // [text](target) -> text
    while let (Some(a), Some(m)) = (s.find('['), s.find("](")) {
        let Some(end) = s[m..].find(')') else { break };
        if a > m {
            break;
        }
        s = format!("{}{}{}", &s[..a], &s[a + 1..m], &s[m + end + 1..]);
    }
    s
}

/// Every anchor the file's headings make (duplicates get `-1`, `-2`, ...).
pub fn anchors(text: &str) -> HashSet<String> {
    let mut out = HashSet::new();
    for (_, line) in prose_lines(text) {
        let hashes = line.chars().take_while(|c| *c == '#').count();
        if (1..=6).contains(&hashes) && line[hashes..].starts_with(' ') {
            let base = slug(&line[hashes..]);
            let mut s = base.clone();
            let mut n = 0;
            while out.contains(&s) {
                n += 1;
                s = format!("{base}-{n}");
            }
            out.insert(s);
        }
    }
    out
}

/// Every `[text](target)` and `![alt](target)` target in prose, with its
/// line number.
fn links(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, line) in prose_lines(text) {
        let line = strip_code_spans(line);
        let mut rest = line.as_str();
        while let Some(i) = rest.find("](") {
            let after = &rest[i + 2..];
            let Some(end) = after.find(')') else { break };
            let target = after[..end].split_whitespace().next().unwrap_or("");
            out.push((n, target.to_string()));
            rest = &after[end..];
        }
    }
    out
}

fn is_external(target: &str) -> bool {
    target.contains("://") || target.starts_with("mailto:") || target.starts_with('<')
}

#[test]
fn every_relative_link_and_anchor_resolves() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in markdown_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        let here = file.parent().unwrap();
        let shown = file.strip_prefix(root()).unwrap().display().to_string();
        for (line, target) in links(&text) {
            if target.is_empty() || is_external(&target) {
                continue;
            }
            checked += 1;
            let (path, anchor) = match target.split_once('#') {
                Some((p, a)) => (p, Some(a)),
                None => (target.as_str(), None),
            };
            let dest = if path.is_empty() {
                file.clone()
            } else {
                here.join(path)
            };
            if !dest.exists() {
                broken.push(format!(
                    "{shown}:{line}: {target}: no file {}",
                    dest.display()
                ));
                continue;
            }
            if let Some(anchor) = anchor {
                let is_md = dest.extension().is_some_and(|x| x == "md");
                assert!(
                    is_md,
                    "{shown}:{line}: {target}: an anchor in a file that is not markdown"
                );
                let text = std::fs::read_to_string(&dest).unwrap();
                if !anchors(&text).contains(anchor) {
                    broken.push(format!(
                        "{shown}:{line}: {target}: no heading makes #{anchor}"
                    ));
                }
            }
        }
    }
    assert!(
        checked > 50,
        "only {checked} links found: the parser is broken"
    );
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_summary_lists_every_chapter() {
    let src = root().join("docs/src");
    let summary = std::fs::read_to_string(src.join("SUMMARY.md")).unwrap();
    let listed: HashSet<String> = links(&summary).into_iter().map(|(_, t)| t).collect();
    for file in markdown_files() {
        let Ok(rel) = file.strip_prefix(&src) else {
            continue;
        };
        let rel = rel.display().to_string();
        if rel != "SUMMARY.md" {
            assert!(
                listed.contains(&rel),
                "docs/src/SUMMARY.md does not list {rel}"
            );
        }
    }
}

#[test]
fn the_readme_is_short() {
    let text = std::fs::read_to_string(root().join("README.md")).unwrap();
    let n = text.lines().count();
    assert!(
        n <= README_MAX_LINES,
        "README.md has {n} lines, at most {README_MAX_LINES}: move the detail into docs/src"
    );
    // The commands CI and newcomers rely on.
    assert!(
        text.contains("cargo run --release -- serve"),
        "the run command"
    );
    assert!(text.contains("\ncargo test "), "the test command");
}

#[test]
fn slugs_are_githubs() {
    assert_eq!(
        slug(" HTTP/JSON (curl, scripts, browsers)"),
        "httpjson-curl-scripts-browsers"
    );
    assert_eq!(slug(" Drain (SIGTERM / SIGINT)"), "drain-sigterm--sigint");
    assert_eq!(
        slug(" Writing a worker in any language"),
        "writing-a-worker-in-any-language"
    );
    assert_eq!(slug(" `jobd work`: a command"), "jobd-work-a-command");
    let a = anchors("# A\n\n## A\n```\n# not a heading\n```\n");
    assert!(a.contains("a") && a.contains("a-1") && !a.contains("not-a-heading"));
}
