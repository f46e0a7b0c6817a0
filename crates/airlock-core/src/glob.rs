//! Glob matching for stack scopes (`prod/*`) and resource addresses (`module.network.*`).
//! `*` matches any run of characters (including `/`, `.` and brackets); `?` matches one
//! character; everything else matches itself. Kept deliberately small and predictable.

/// Does `pattern` match all of `text`?
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    // Iterative matcher with single-star backtracking: linear-ish, no recursion.
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(&c) if c == '?' || Some(&c) == t.get(ti) => {
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
    use super::glob_match;

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
    }
}
