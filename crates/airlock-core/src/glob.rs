//! Glob matching for stack scopes (`prod/*`) and resource addresses (`module.network.*`).
//! `*` matches any run of characters (including `/`, `.` and brackets); `?` matches one
//! character (in stack scopes); everything else matches itself. Kept deliberately small and
//! predictable.

use crate::address;

/// Does `pattern` match all of `text`? For stack scopes: `*` is any run of characters, `?` is
/// one character.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    matches(pattern, &Subject::whole(text), Some('?'))
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
/// a `for_each` key) covers `address`. The one meaning of an address pattern: `airlock.hcl`
/// `protect` and `allow_destroy`, and `airlock stack protect --address` in the plan gate and the
/// firewall.
///
/// The address is read with Terraform's grammar (`address::parse_instance_address`). A pattern
/// covers it when it matches the address, or the resource without its instance key
/// (`aws_s3_bucket.b` covers `aws_s3_bucket.b["x"]`, whatever the key holds); a pattern starting
/// with `module.` also when it matches a module path the address is inside, and in the module
/// steps it may name an instance key or leave it out (`module.db`, `module.db[0]` and
/// `module.db.module.x` cover `module.db[0].module.x["a"].t.n`). An address that does not parse
/// is matched as text, cut at each `.` and at its last `[` (the rule before addresses were
/// parsed).
pub fn address_matches(pattern: &str, address: &str) -> bool {
    let in_modules = pattern.starts_with("module.");
    let subject = address::parse_instance_address(address)
        .map(|a| Subject::instance(&a, in_modules))
        .filter(|s| s.text.iter().copied().eq(address.chars()))
        .unwrap_or_else(|| Subject::cut_as_text(address, in_modules));
    matches(pattern, &subject, None)
}

/// What a pattern is matched against: a text, spans of it a match may leave out (a module
/// step's instance key) and positions where a match may end besides the text's end (the
/// address's module paths, its resource without the key). Positions count characters, in order.
#[derive(Default)]
struct Subject {
    text: Vec<char>,
    optional: Vec<(usize, usize)>,
    ends: Vec<usize>,
}

impl Subject {
    /// All of `text`, nothing left out.
    fn whole(text: &str) -> Subject {
        Subject {
            text: text.chars().collect(),
            ..Subject::default()
        }
    }

    /// A parsed address rendered back, with its resource without the key as an end; with
    /// `in_modules` also each module step (with and without its key) as an end and each module
    /// step's key optional.
    fn instance(a: &address::InstanceAddress, in_modules: bool) -> Subject {
        let mut s = Subject::default();
        let mut key = String::new();
        for step in &a.module {
            s.text.extend("module.".chars().chain(step.name.chars()));
            if in_modules {
                s.ends.push(s.text.len());
            }
            if let Some(k) = &step.key {
                key.clear();
                k.render_into(&mut key);
                let start = s.text.len();
                s.text.extend(key.chars());
                if in_modules {
                    s.optional.push((start, s.text.len()));
                    s.ends.push(s.text.len());
                }
            }
            s.text.push('.');
        }
        // With `in_modules`, a match may end at every `.` outside keys, as it could before
        // addresses were parsed (`module.a.aws_s3_bucket` covers the module's buckets).
        if a.data {
            s.text.extend("data".chars());
            if in_modules {
                s.ends.push(s.text.len());
            }
            s.text.push('.');
        }
        s.text.extend(a.resource_type.chars());
        if in_modules {
            s.ends.push(s.text.len());
        }
        s.text.extend(['.'].into_iter().chain(a.name.chars()));
        if let Some(k) = &a.key {
            s.ends.push(s.text.len());
            key.clear();
            k.render_into(&mut key);
            s.text.extend(key.chars());
        }
        s
    }

    /// `address` as text, for an address that does not parse: ends at its last `[` when it ends
    /// with `]` (the key), and with `in_modules` at every `.`.
    fn cut_as_text(address: &str, in_modules: bool) -> Subject {
        let mut s = Subject::whole(address);
        let key = address
            .strip_suffix(']')
            .and_then(|a| a.rfind('['))
            .map(|at| address.get(..at).map_or(0, |a| a.chars().count()));
        for (i, c) in s.text.iter().enumerate() {
            if (in_modules && *c == '.') || key == Some(i) {
                s.ends.push(i);
            }
        }
        s
    }
}

/// The one matcher: does `pattern` match the subject's text from its start to its end or to one
/// of its `ends`, with any of its optional spans left out? `*` matches any run of characters,
/// `one` (if any) exactly one character, everything else itself. Runs the pattern as an
/// automaton over the text (the set of pattern positions reached at each text position):
/// time pattern × text, no recursion, no backtracking.
fn matches(pattern: &str, subject: &Subject, one: Option<char>) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    // `at[i]`: the pattern's first `i` characters match the text read so far.
    let mut at = vec![false; p.len() + 1];
    let mut next = at.clone();
    // What was reached before an optional span, waiting at the span's end.
    let mut skipping: Vec<(usize, Vec<bool>)> = Vec::new();
    if let Some(start) = at.first_mut() {
        *start = true;
    }
    for ti in 0..=subject.text.len() {
        for (_, before) in skipping.iter().filter(|(end, _)| *end == ti) {
            at.iter_mut().zip(before).for_each(|(a, b)| *a |= *b);
        }
        skipping.retain(|(end, _)| *end != ti);
        // A `*` also matches no character (in order, so `**` passes on at once).
        for (pi, c) in p.iter().enumerate() {
            if *c == '*' && at.get(pi) == Some(&true) {
                if let Some(n) = at.get_mut(pi + 1) {
                    *n = true;
                }
            }
        }
        let may_end = ti == subject.text.len() || subject.ends.binary_search(&ti).is_ok();
        if may_end && at.last() == Some(&true) {
            return true;
        }
        let Some(&t) = subject.text.get(ti) else {
            break;
        };
        if let Ok(i) = subject
            .optional
            .binary_search_by_key(&ti, |&(start, _)| start)
        {
            if let Some(&(_, end)) = subject.optional.get(i) {
                skipping.push((end, at.clone()));
            }
        }
        next.fill(false);
        for (pi, &c) in p.iter().enumerate() {
            if at.get(pi) != Some(&true) {
                continue;
            }
            let to = if c == '*' {
                pi
            } else if Some(c) == one || c == t {
                pi + 1
            } else {
                continue;
            };
            if let Some(n) = next.get_mut(to) {
                *n = true;
            }
        }
        std::mem::swap(&mut at, &mut next);
        if skipping.is_empty() && !at.contains(&true) {
            return false;
        }
    }
    false
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
        // A module pattern may end at any `.` outside keys (a type within a module).
        assert!(address_matches(
            "module.a.aws_s3_bucket",
            "module.a.aws_s3_bucket.logs"
        ));
        assert!(address_matches(
            "module.a.aws_s3_bucket",
            "module.a[\"x\"].aws_s3_bucket.logs[0]"
        ));
        assert!(!address_matches(
            "module.a.aws_s3_bucket",
            "module.a.aws_s3_bucket_policy.logs"
        ));
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

    /// A module address covers every instance inside it, whatever the module's instance keys
    /// (count, for_each), and a resource address every instance of it, whatever its key holds.
    #[test]
    fn addresses_cover_keyed_modules_and_keys_with_brackets() {
        for (pattern, address) in [
            ("module.db", "module.db[0].t.n"),
            ("module.db", "module.db[\"eu\"].t.n"),
            ("module.db", "module.db[\"e.u\"].module.x[1].t.n[\"k\"]"),
            ("module.db[0]", "module.db[0].t.n"),
            (
                "module.db.module.x",
                "module.db[0].module.x[\"a\"].data.t.n",
            ),
            ("module.db[0].module.x", "module.db[0].module.x[\"a\"].t.n"),
            (
                "module.db.module.x[\"a\"]",
                "module.db[3].module.x[\"a\"].t.n",
            ),
            ("module.db.t.n", "module.db[0].t.n[\"k\"]"),
            ("module.d*", "module.db[0].t.n"),
            ("module.db[*].t.n", "module.db[\"eu\"].t.n[2]"),
            ("t.n", "t.n[\"a[b\"]"),
            ("t.n", "t.n[\"a]b\"]"),
            ("t.n", "t.n[\"[\"]"),
            ("module.db.t.n", "module.db[\"]\"].t.n[\"a[b\"]"),
            ("module.db.data.t.n", "module.db[0].data.t.n"),
        ] {
            assert!(
                address_matches(pattern, address),
                "{pattern} covers {address}"
            );
        }
        for (pattern, address) in [
            ("module.db", "module.dbx.t.n"),
            ("module.db", "module.dbx[0].t.n"),
            ("module.db", "module.d.t.n"),
            ("module.db[0]", "module.db[1].t.n"),
            ("module.db[0]", "module.db.t.n"),
            ("module.db.module.x", "module.db[0].module.xy[\"a\"].t.n"),
            ("module.x", "module.db[0].module.x.t.n"),
            ("t.n", "t.nx[\"a[b\"]"),
            ("t.n[\"a\"]", "t.n[\"a[b\"]"),
            ("t.n", "module.db[0].t.n"),
            // Inside a key, `.` and `[` are text, not where an address may be cut.
            ("module.db[\"e", "module.db[\"e.u\"].t.n"),
        ] {
            assert!(
                !address_matches(pattern, address),
                "{pattern} does not cover {address}"
            );
        }
        // An address Terraform would not render is matched as text, as before.
        assert!(address_matches("a.b", "a.b[zz]"));
        assert!(address_matches("module.x", "module.x.not an address"));
        assert!(!address_matches("module.x", "module.xy.not an address"));
        // Deep module paths cost pattern × address, not a combination per key.
        let deep = format!("{}t.n", "module.m[0].".repeat(1000));
        let pattern = format!("{}q", "module.m.*".repeat(20));
        let started = std::time::Instant::now();
        assert!(!address_matches(&pattern, &deep));
        assert!(address_matches("module.m.module.m.*", &deep));
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
    }
}
