//! "Did you mean …?": the closest of a set of known names to one that is
//! not among them, by edit distance, for refusals that name what exists
//! (an unknown kind, a stray argument). Imports nothing.

/// The edit distance between `a` and `b`: insertions, deletions,
/// substitutions and swaps of two neighbouring characters each count one
/// (the optimal string alignment distance: `ecoh` is one from `echo`).
pub fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // d[i][j]: the distance between a[..i] and b[..j].
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

/// The known name closest to `wanted`, if one is close enough to be a
/// likely slip: at most a third of the longer name's characters differ
/// (at least one), or one name holds the other. Ties go to the first
/// in `known`'s order.
pub fn closest<'a>(wanted: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let mut best: Option<(usize, &str)> = None;
    for k in known {
        let d = edit_distance(wanted, k);
        let longer = wanted.chars().count().max(k.chars().count());
        let near = d <= (longer / 3).max(1)
            || (!wanted.is_empty() && (k.contains(wanted) || wanted.contains(k)));
        if near && best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, k));
        }
    }
    best.map(|(_, k)| k)
}

/// `unknown {what} "x"; did you mean "y"? configured {what}s: a, b, c`
/// (see [`hint`]).
pub fn unknown<'a>(what: &str, wanted: &str, known: impl IntoIterator<Item = &'a str>) -> String {
    format!("unknown {what} {wanted:?}{}", hint(what, wanted, known))
}

/// `; did you mean "y"? configured {what}s: a, b, c` — the closest known
/// name if one is near, and the known names sorted, at most 20 of them.
pub fn hint<'a>(what: &str, wanted: &str, known: impl IntoIterator<Item = &'a str>) -> String {
    let mut names: Vec<&str> = known.into_iter().collect();
    names.sort_unstable();
    names.dedup();
    let mut msg = match closest(wanted, names.iter().copied()) {
        Some(near) => format!("; did you mean {near:?}? "),
        None => "; ".to_string(),
    };
    const SHOWN: usize = 20;
    if names.is_empty() {
        msg.push_str(&format!("no {what}s are configured"));
    } else {
        let more = names.len().saturating_sub(SHOWN);
        msg.push_str(&format!(
            "configured {what}s: {}",
            names[..names.len().min(SHOWN)].join(", ")
        ));
        if more > 0 {
            msg.push_str(&format!(" and {more} more"));
        }
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_counts_single_character_edits() {
        assert_eq!(edit_distance("echo", "echo"), 0);
        assert_eq!(edit_distance("ecko", "echo"), 1);
        assert_eq!(edit_distance("ecoh", "echo"), 1);
        assert_eq!(edit_distance("eho", "echo"), 1);
        assert_eq!(edit_distance("echoo", "echo"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn closest_suggests_near_names_only() {
        let kinds = ["echo", "sleep", "fail", "resize-image"];
        assert_eq!(closest("ecoh", kinds), Some("echo"));
        assert_eq!(closest("slep", kinds), Some("sleep"));
        assert_eq!(closest("resize", kinds), Some("resize-image"));
        assert_eq!(closest("zzzzzzzz", kinds), None);
        assert_eq!(closest("x", kinds), None);
    }

    #[test]
    fn unknown_names_the_closest_and_lists_all() {
        let m = unknown("kind", "ecoh", ["sleep", "echo", "fail"]);
        assert_eq!(
            m,
            "unknown kind \"ecoh\"; did you mean \"echo\"? configured kinds: echo, fail, sleep"
        );
        let m = unknown("kind", "zzzzzz", ["echo"]);
        assert_eq!(m, "unknown kind \"zzzzzz\"; configured kinds: echo");
    }
}
