//! Glob matching for stack scopes (`prod/*`) and resource addresses (`module.network.*`).
//! `*` matches any run of characters (including `/`, `.` and brackets); `?` matches one
//! character; everything else matches itself. Kept deliberately small and predictable.

/// Does `pattern` match all of `text`? For stack scopes: `*` is any run of characters, `?` is
/// one character.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    matches(pattern, text, Some('?'))
}

/// Does every stack `requested` covers fall inside `scope`? An empty list means all stacks.
/// Conservative: a requested glob must be one of the scope's globs, or be matched as text by a
/// scope glob without `?` (a `*` there covers whatever the requested glob's wildcards can).
pub fn within_scope(scope: &[String], requested: &[String]) -> bool {
    if scope.is_empty() {
        return true;
    }
    !requested.is_empty()
        && requested.iter().all(|g| {
            scope.iter().any(|c| {
                c == g || (glob_match(c, g) && (!c.contains('?') || !g.contains(['*', '?'])))
            })
        })
}

/// Whether `pattern` (an address, optionally with `*` globs; `?` is literal, as it may appear in
/// a `for_each` key) covers `address`. A pattern without an index also covers every instance:
/// `aws_s3_bucket.b` covers `aws_s3_bucket.b["x"]`, and a module address covers everything
/// inside it. The one meaning of an address pattern: `airlock.hcl` `protect` and
/// `allow_destroy`, and `airlock stack protect --address` in the plan gate and the firewall.
pub fn address_matches(pattern: &str, address: &str) -> bool {
    let glob = |p: &str, t: &str| matches(p, t, None);
    if glob(pattern, address) {
        return true;
    }
    // Strip a trailing instance key from the address, then try prefixes at `.` boundaries.
    let without_key = match address.strip_suffix(']') {
        Some(a) => a.rfind('[').and_then(|i| a.get(..i)).unwrap_or(address),
        None => address,
    };
    if glob(pattern, without_key) {
        return true;
    }
    // `module.x` covers `module.x.aws_y.z` and `module.x.module.w...`.
    pattern.starts_with("module.")
        && address
            .char_indices()
            .filter(|&(_, c)| c == '.')
            .filter_map(|(i, _)| address.get(..i))
            .any(|prefix| glob(pattern, prefix))
}

/// The one matcher: `*` matches any run of characters, `one` (if any) exactly one character,
/// everything else itself. Iterative with single-star backtracking: no recursion.
fn matches(pattern: &str, text: &str, one: Option<char>) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(&c) if Some(c) == one || Some(&c) == t.get(ti) => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p.get(pi..)
        .is_some_and(|rest| rest.iter().all(|&c| c == '*'))
}

#[cfg(test)]
mod tests {
    use super::{address_matches, glob_match};

    #[test]
    fn matches() {
        assert!(glob_match("prod/*", "prod/app"));
        assert!(glob_match("prod/*", "prod/a/b"));
        assert!(!glob_match("prod/*", "production/app"));
        assert!(glob_match("*", "anything"));
        assert!(glob_match(
            "module.network.*",
            "module.network.aws_vpc.main"
        ));
        assert!(glob_match(
            "aws_db_instance.*",
            "aws_db_instance.main[\"a\"]"
        ));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("abc", "abcd"));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("a*b*c", "aXXbYY"));
        assert!(glob_match("", ""));
        assert!(!glob_match("", "a"));
        // In address patterns `?` is literal (it is legal in for_each keys).
        assert!(address_matches("x.y[\"a?\"]", "x.y[\"a?\"]"));
        assert!(!address_matches("x.y[\"a?\"]", "x.y[\"ab\"]"));
        assert!(address_matches(
            "module.db",
            "module.db.aws_db_instance.main[0]"
        ));
        assert!(address_matches(
            "aws_db_instance.main",
            "aws_db_instance.main[\"a\"]"
        ));
        assert!(!address_matches(
            "aws_db_instance.main",
            "aws_db_instance.mainx"
        ));
    }
}
