//! Differential and attack tests of the state reader's reuse of unchanged resource elements
//! (`ParsedState::parse` with a previous body): for every (previous, new) pair of a corpus of
//! realistic mutations and hostile bodies, reading `new` reusing `previous` gives exactly what
//! reading `new` alone gives, and reading `new` alone gives what the reader of main (commit
//! 5a7e909, before reuse existed) gave: `testdata/reuse-golden.txt` holds a digest of main's
//! result for each case, written by that reader (`STATE_REUSE_GOLDEN_WRITE=1`).

use super::*;

const TESTDATA: &str = include_str!("testdata/terraform-1.11.json");
const GOLDEN: &str = include_str!("testdata/reuse-golden.txt");

/// A pretty-printed state cut around its `resources` array: the text before the first
/// element, the elements (each a JSON object as Terraform indents it), the text after the last.
#[derive(Clone)]
struct Doc {
    head: String,
    elements: Vec<String>,
    tail: String,
}

impl Doc {
    /// Cuts a state Terraform printed (elements open with `    {` and close with `    }` lines).
    fn cut(text: &str) -> Doc {
        let open = text.find("\"resources\": [\n").expect("a resources array") + 15;
        let (head, rest) = text.split_at(open);
        let mut elements = Vec::new();
        let mut at = 0;
        while let Some(start) = rest[at..].find("    {\n").map(|s| s + at) {
            if !rest[at..start].trim().trim_matches(',').is_empty() {
                break;
            }
            let end = rest[start..].find("\n    }").expect("element end") + start + 6;
            elements.push(rest[start..end].to_owned());
            at = end;
        }
        Doc {
            head: head.to_owned(),
            elements,
            tail: rest[at..].to_owned(),
        }
    }

    fn text(&self) -> String {
        format!("{}{}{}", self.head, self.elements.join(",\n"), self.tail)
    }
}

/// A generated state like the benchmark's: `n` resources with one or two ~1 KB instances.
fn generated(n: usize, serial: u64) -> String {
    let mut els = Vec::new();
    for i in 0..n {
        els.push(element(i, "v1"));
    }
    format!(
        "{{\n  \"version\": 4,\n  \"terraform_version\": \"1.11.4\",\n  \"serial\": {serial},\n  \"lineage\": \"6f1f7a8e-0a47-4b0e-9d5f-2f2f2a0e1c11\",\n  \"outputs\": {{\n    \"o\": {{\n      \"value\": \"x\",\n      \"type\": \"string\"\n    }}\n  }},\n  \"resources\": [\n{}\n  ],\n  \"check_results\": null\n}}\n",
        els.join(",\n")
    )
}

/// Resource element `i` of a generated state, its attributes marked with `tag`.
fn element(i: usize, tag: &str) -> String {
    let module = if i % 3 == 1 {
        format!("      \"module\": \"module.m[{i}]\",\n")
    } else {
        String::new()
    };
    let (mode, count) = if i % 5 == 4 {
        ("data", 1)
    } else {
        ("managed", 1 + i % 2)
    };
    let mut instances = Vec::new();
    for k in 0..count {
        let key = if count > 1 {
            format!("          \"index_key\": {k},\n")
        } else {
            String::new()
        };
        instances.push(format!(
            "        {{\n{key}          \"schema_version\": 0,\n          \"attributes\": {{\n            \"arn\": \"arn:aws:s3:::bucket-{i}-{k}\",\n            \"id\": \"id-{i}-{k}\",\n            \"tags\": {{\n              \"Name\": \"{tag} \\\"quoted\\\" {{[\"\n            }},\n            \"nested\": [[{{\"a\": [1, 2, {{}}]}}]]\n          }},\n          \"sensitive_attributes\": [],\n          \"private\": \"eyJzY2hlbWFfdmVyc2lvbiI6IjAifQ==\",\n          \"identity\": {{\"id\": \"id-{i}-{k}\"}}\n        }}"
        ));
    }
    format!(
        "    {{\n{module}      \"mode\": \"{mode}\",\n      \"type\": \"aws_s3_bucket\",\n      \"name\": \"b{i}\",\n      \"provider\": \"provider[\\\"registry.terraform.io/hashicorp/aws\\\"]\",\n      \"instances\": [\n{}\n      ]\n    }}",
        instances.join(",\n")
    )
}

/// One case: a previous body (valid) and a new body (valid or not).
pub(super) struct Case {
    pub name: String,
    pub old: Vec<u8>,
    pub new: Vec<u8>,
}

fn case(cases: &mut Vec<Case>, name: &str, old: &str, new: impl Into<Vec<u8>>) {
    cases.push(Case {
        name: name.to_owned(),
        old: old.as_bytes().to_vec(),
        new: new.into(),
    });
}

/// Realistic mutations of `old` (a pretty-printed state whose elements `Doc::cut` finds).
fn mutations(cases: &mut Vec<Case>, base: &str, old: &str) {
    let doc = Doc::cut(old);
    let n = doc.elements.len();
    assert!(n >= 3, "{base}: {n} elements");
    let with = |f: &dyn Fn(&mut Doc)| {
        let mut d = doc.clone();
        f(&mut d);
        d.text()
    };
    let c = |cases: &mut Vec<Case>, name: &str, new: String| {
        case(cases, &format!("{base}/{name}"), old, new)
    };
    c(cases, "same", old.to_owned());
    for (at, pos) in [("first", 0), ("middle", n / 2), ("last", n - 1)] {
        c(
            cases,
            &format!("change-attribute-{at}"),
            with(&|d| d.elements[pos] = d.elements[pos].replacen("\"id\": \"", "\"id\": \"X", 1)),
        );
        c(
            cases,
            &format!("remove-{at}"),
            with(&|d| {
                d.elements.remove(pos);
            }),
        );
        c(
            cases,
            &format!("insert-{at}"),
            with(&|d| d.elements.insert(pos, element(1000 + pos, "new"))),
        );
        c(
            cases,
            &format!("insert-after-{at}"),
            with(&|d| d.elements.insert(pos + 1, element(2000 + pos, "new"))),
        );
        c(
            cases,
            &format!("rename-{at}"),
            with(&|d| {
                d.elements[pos] = d.elements[pos].replacen("\"name\": \"", "\"name\": \"r", 1)
            }),
        );
        c(
            cases,
            &format!("reindent-{at}"),
            with(&|d| d.elements[pos] = d.elements[pos].replace("\n", "\n ")),
        );
        c(
            cases,
            &format!("compact-{at}"),
            with(&|d| {
                let v: serde_json::Value = serde_json::from_str(&d.elements[pos]).unwrap();
                d.elements[pos] = v.to_string();
            }),
        );
        // The same resource twice: one copy reused, the other parsed (or both reused).
        c(
            cases,
            &format!("duplicate-reindented-{at}"),
            with(&|d| {
                let copy = d.elements[pos].replace("\n", "\n\t");
                d.elements.push(copy)
            }),
        );
        c(
            cases,
            &format!("duplicate-same-bytes-{at}"),
            with(&|d| {
                let copy = d.elements[pos].clone();
                d.elements.insert(0, copy)
            }),
        );
        // Hostile: an old element followed by garbage, by a trailing comma, by form feed.
        c(
            cases,
            &format!("garbage-after-{at}"),
            with(&|d| d.elements[pos].push_str(" x")),
        );
        c(
            cases,
            &format!("second-object-after-{at}"),
            with(&|d| d.elements[pos].push_str(" {}")),
        );
        c(
            cases,
            &format!("form-feed-after-{at}"),
            with(&|d| d.elements[pos].push('\u{c}')),
        );
        c(
            cases,
            &format!("form-feed-before-{at}"),
            with(&|d| d.elements[pos].insert(0, '\u{c}')),
        );
        c(
            cases,
            &format!("truncated-in-{at}"),
            with(&|d| {
                let e = &d.elements[pos];
                d.elements[pos] = e[..e.len() / 2].to_owned();
                d.elements.truncate(pos + 1);
                d.tail.clear();
            }),
        );
        c(
            cases,
            &format!("unclosed-{at}"),
            with(&|d| {
                d.elements[pos].pop();
            }),
        );
        for (what, bad) in [
            ("number", "1"),
            ("null", "null"),
            ("string", "\"x\""),
            ("array", "[]"),
            ("empty-object", "{}"),
        ] {
            c(
                cases,
                &format!("element-{what}-{at}"),
                with(&|d| d.elements[pos] = bad.to_owned()),
            );
        }
        c(
            cases,
            &format!("nesting-too-deep-{at}"),
            with(&|d| {
                let deep = format!("{}{}", "[".repeat(MAX_NESTING), "]".repeat(MAX_NESTING));
                d.elements[pos] = d.elements[pos].replacen(
                    "\"attributes\": {",
                    &format!("\"attributes\": {{\"deep\": {deep},"),
                    1,
                );
            }),
        );
        c(
            cases,
            &format!("unknown-key-{at}"),
            with(&|d| {
                d.elements[pos] = d.elements[pos].replacen("\"mode\"", "\"Mode\"", 1);
            }),
        );
        c(
            cases,
            &format!("bad-mode-{at}"),
            with(&|d| {
                d.elements[pos] = d.elements[pos].replacen("\"mode\": \"", "\"mode\": \"x", 1);
            }),
        );
    }
    let mut utf8 = with(&|d| {
        d.elements[n / 2] = d.elements[n / 2].replacen("\"id\": \"", "\"id\": \"\u{1}", 1)
    })
    .into_bytes();
    let at = utf8.iter().position(|&b| b == 1).unwrap();
    utf8[at] = 0xff;
    cases.push(Case {
        name: format!("{base}/invalid-utf8-middle"),
        old: old.as_bytes().to_vec(),
        new: utf8,
    });
    c(
        cases,
        "change-two-adjacent",
        with(&|d| {
            for e in &mut d.elements[1..3] {
                *e = e.replacen("\"id\": \"", "\"id\": \"Z", 1);
            }
        }),
    );
    c(
        cases,
        "insert-three-remove-two",
        with(&|d| {
            for k in 0..3 {
                d.elements.insert(1, element(3000 + k, "new"));
            }
            d.elements.remove(n);
            d.elements.remove(n);
        }),
    );
    c(
        cases,
        "change-every-other",
        with(&|d| {
            for e in d.elements.iter_mut().step_by(2) {
                *e = e.replacen("\"id\": \"", "\"id\": \"W", 1);
            }
        }),
    );
    c(
        cases,
        "reorder",
        with(&|d| {
            d.elements.swap(0, n - 1);
        }),
    );
    c(
        cases,
        "reverse",
        with(&|d| {
            d.elements.reverse();
        }),
    );
    c(
        cases,
        "all-changed",
        with(&|d| {
            for e in &mut d.elements {
                *e = e.replace("\"id\": \"", "\"id\": \"Y");
            }
        }),
    );
    c(
        cases,
        "serial",
        old.replacen("\"serial\": ", "\"serial\": 1", 1),
    );
    c(cases, "empty-array", with(&|d| d.elements.clear()));
    c(
        cases,
        "trailing-comma",
        with(&|d| d.elements.last_mut().unwrap().push(',')),
    );
    c(
        cases,
        "leading-comma",
        with(&|d| d.elements[0].insert(0, ',')),
    );
    c(
        cases,
        "double-comma",
        with(&|d| d.elements[1].insert(0, ',')),
    );
    c(
        cases,
        "whitespace-everywhere",
        old.replace(": ", " :\r\n\t ").replace(",\n", "\n,"),
    );
    c(
        cases,
        "compact",
        serde_json::from_str::<serde_json::Value>(old)
            .unwrap()
            .to_string(),
    );
    // The resources array moved to other places of the body, other keys around it.
    let array = format!("[\n{}\n  ]", doc.elements.join(",\n"));
    let value: serde_json::Value = serde_json::from_str(old).unwrap();
    let top = value.as_object().unwrap();
    let field = |k: &str| top.get(k).map(|v| format!("\"{k}\": {v}"));
    let others: Vec<String> = [
        "version",
        "terraform_version",
        "serial",
        "lineage",
        "outputs",
        "check_results",
    ]
    .iter()
    .filter_map(|k| field(k))
    .collect();
    let body = |parts: Vec<String>| format!("{{\n  {}\n}}", parts.join(",\n  "));
    let resources = format!("\"resources\": {array}");
    c(
        cases,
        "resources-first",
        body([vec![resources.clone()], others.clone()].concat()),
    );
    c(
        cases,
        "resources-last",
        body([others.clone(), vec![resources.clone()]].concat()),
    );
    c(cases, "resources-absent", body(others.clone()));
    c(
        cases,
        "resources-null",
        body([others.clone(), vec!["\"resources\": null".into()]].concat()),
    );
    c(
        cases,
        "resources-object",
        body([others.clone(), vec!["\"resources\": {}".into()]].concat()),
    );
    c(
        cases,
        "resources-twice",
        body([others.clone(), vec![resources.clone(), resources.clone()]].concat()),
    );
    for variant in ["Resources", "reſources", "RESOURCES"] {
        c(
            cases,
            &format!("resources-and-{variant}"),
            body(
                [
                    others.clone(),
                    vec![
                        resources.clone(),
                        resources.replacen("resources", variant, 1),
                    ],
                ]
                .concat(),
            ),
        );
        c(
            cases,
            &format!("only-{variant}"),
            body(
                [
                    others.clone(),
                    vec![resources.replacen("resources", variant, 1)],
                ]
                .concat(),
            ),
        );
    }
    // Old elements' bytes where no element is: as another key's value, inside a string.
    let first = doc.elements[0].trim();
    c(
        cases,
        "element-as-check-results",
        body([others.clone(), vec![format!("\"check_results\": {first}")]].concat()),
    );
    c(
        cases,
        "element-as-output",
        body(
            [
                others[..4].to_vec(),
                vec![format!("\"outputs\": {{\"o\": {first}}}")],
            ]
            .concat(),
        ),
    );
    c(
        cases,
        "element-in-string",
        body(
            [
                others[..4].to_vec(),
                vec![format!(
                    "\"outputs\": {{\"o\": {{\"value\": {}}}}}",
                    serde_json::Value::String(array.clone())
                )],
            ]
            .concat(),
        ),
    );
    c(
        cases,
        "elements-at-top-level",
        format!("{{{}}}", doc.elements.join(",")),
    );
    c(cases, "array-at-top-level", array.clone());
    c(cases, "garbage-after-body", format!("{old} x"));
    c(cases, "form-feed-after-body", format!("{old}\u{c}"));
    c(cases, "second-body", format!("{old}{old}"));
    c(cases, "unclosed-array", with(&|d| d.tail = "\n".into()));
    c(
        cases,
        "array-closed-by-brace",
        with(&|d| d.tail = d.tail.replacen(']', "}", 1)),
    );
}

/// Every case: mutations of the Terraform-written test state and of generated ones, plus
/// pairs whose previous body is not the new one's ancestor.
pub(super) fn corpus() -> Vec<Case> {
    let mut cases = Vec::new();
    mutations(&mut cases, "terraform-1.11", TESTDATA);
    mutations(&mut cases, "generated-12", &generated(12, 5));
    mutations(&mut cases, "generated-3", &generated(3, 1));
    // A previous body unrelated to the new one, and the new body read after itself.
    let (a, b) = (generated(12, 5), TESTDATA.to_owned());
    case(
        &mut cases,
        "unrelated/testdata-after-generated",
        &a,
        b.clone(),
    );
    case(
        &mut cases,
        "unrelated/generated-after-testdata",
        &b,
        a.clone(),
    );
    // Small hand-written bodies.
    let small = r#"{"version":4,"serial":1,"lineage":"l","resources":[{"mode":"managed","type":"t","name":"a","provider":"provider[\"registry.terraform.io/h/p\"]","instances":[]},{"mode":"managed","type":"t","name":"b","provider":"provider[\"registry.terraform.io/h/p\"]","instances":[{"attributes":{"id":"1"}}]}]}"#;
    for (name, new) in [
        ("same", small.to_owned()),
        ("empty-instances-twice", small.replace("\"name\":\"b\"", "\"name\":\"a\"")),
        ("spaces", small.replace(",{", " , {")),
        ("tab", small.replace(",{", ",\t{")),
        ("cr", small.replace(",{", "\r,{")),
        ("vertical-tab", small.replace(",{", ",\u{b}{")),
        ("nbsp", small.replace(",{", ",\u{a0}{")),
        ("no-comma", small.replace("]},{", "]}{")),
        ("semicolon", small.replace("]},{", "]};{")),
        ("escaped-key", small.replace("\"resources\"", "\"re\\u0073ources\"")),
        ("escaped-key-variant", small.replace("\"resources\"", "\"re\\u017fources\"")),
        ("empty", String::new()),
        ("spaces-only", "  \n".into()),
        ("not-object", "[]".into()),
        ("version-3", small.replace("\"version\":4", "\"version\":3")),
        ("no-serial", small.replace("\"serial\":1,", "")),
        ("serial-negative", small.replace("\"serial\":1", "\"serial\":-1")),
        ("serial-string", small.replace("\"serial\":1", "\"serial\":\"1\"")),
        ("duplicate-serial", small.replace("\"serial\":1", "\"serial\":1,\"serial\":2")),
        ("bad-lineage", small.replace("\"lineage\":\"l\"", "\"lineage\":\"a b\"")),
        ("bad-version-string", small.replace("\"version\":4,", "\"version\":4,\"terraform_version\":\"x\",")),
        ("unknown-top-key", small.replace("\"serial\"", "\"x\":1,\"serial\"")),
        ("trailing-comma-top", small.replace("\"serial\":1,", "\"serial\":1,,")),
        ("top-trailing-comma-end", format!("{},}}", &small[..small.len() - 1])),
        ("missing-colon", small.replace("\"serial\":1", "\"serial\" 1")),
        ("leading-zero", small.replace("\"serial\":1", "\"serial\":01")),
        ("bad-literal", small.replace("\"lineage\":\"l\"", "\"lineage\":nul")),
        ("true-serial", small.replace("\"serial\":1", "\"serial\":true")),
        ("lone-brace", "{".into()),
        ("unterminated-key", "{\"vers".into()),
        ("unterminated-string", "{\"version\":4,\"lineage\":\"l".into()),
        ("control-in-key", small.replace("\"lineage\"", "\"line\u{1}age\"")),
        ("deep-output", format!("{{\"version\":4,\"serial\":1,\"lineage\":\"l\",\"outputs\":{{\"o\":{{\"value\":{}{}}}}}}}", "[".repeat(MAX_NESTING), "]".repeat(MAX_NESTING))),
        ("deep-index-key-120", small.replace("{\"attributes\"", &format!("{{\"index_key\":{}{},\"attributes\"", "[".repeat(120), "]".repeat(120)))),
        ("deep-index-key-126", small.replace("{\"attributes\"", &format!("{{\"index_key\":{}{},\"attributes\"", "[".repeat(126), "]".repeat(126)))),
        ("deep-output-ok", format!("{{\"version\":4,\"serial\":1,\"lineage\":\"l\",\"outputs\":{{\"o\":{{\"value\":{}{}}}}}}}", "[".repeat(100), "]".repeat(100))),
        ("deep-check-results", format!("{{\"version\":4,\"serial\":1,\"lineage\":\"l\",\"check_results\":{}{}}}", "[".repeat(MAX_NESTING), "]".repeat(MAX_NESTING))),
        ("deep-unclosed", format!("{{\"version\":4,\"serial\":1,\"lineage\":\"l\",\"check_results\":{}", "[".repeat(MAX_NESTING + 5))),
        ("multiline-error", small.replace(",\"resources\"", ",\n\n  \"resources\"").replace("\"name\":\"b\"", "\n  \"name\":\"b\",\"bogus\":1")),
        ("bad-instance-late-line", small.replace("{\"attributes\"", "\n\n   {\"status\":\"x\",\"attributes\"")),
    ] {
        case(&mut cases, &format!("small/{name}"), small, new);
    }
    cases
}

/// What main's reader returned for `body`, as a digest (the summary's public fields or the
/// error message).
fn outcome(body: &[u8]) -> String {
    let shown = match StateSummary::parse(body) {
        Ok(s) => format!(
            "ok {} {:?} {} {:?} {:?} {:?}",
            s.version, s.terraform_version, s.serial, s.lineage, s.instances, s.outputs
        ),
        Err(e) => format!("err {}", e.0),
    };
    let kind = &shown[..3];
    format!("{kind} {}", hex::encode(digest(&[shown.as_bytes()])))
}

/// Cases main's reader refused with another message. serde_json stops recursing 128 levels
/// below where it starts: main's one parse started at the top, the walk starts each value
/// where it is, so an `index_key` nested ~124 levels deep (serde's `Value`, the one recursive
/// type the reader uses) was "recursion limit exceeded" and is now "index_key must be an
/// integer (at most 2^53) or a string". Both refuse it.
const DIFFERENT_REFUSALS: &[&str] = &["small/deep-index-key-126"];

#[test]
fn the_reader_reads_every_case_as_main_did() {
    let cases = corpus();
    let got: Vec<String> = cases
        .iter()
        .map(|c| format!("{} {}", c.name, outcome(&c.new)))
        .collect();
    if std::env::var_os("STATE_REUSE_GOLDEN_WRITE").is_some() {
        std::fs::write(
            concat!(env!("CARGO_MANIFEST_DIR"), "/src/testdata/reuse-golden.txt"),
            got.join("\n") + "\n",
        )
        .unwrap();
        return;
    }
    let want: Vec<&str> = GOLDEN.lines().collect();
    assert_eq!(
        got.len(),
        want.len(),
        "the corpus changed: regenerate with main's reader"
    );
    for (g, w) in got.iter().zip(&want) {
        if let Some(name) = DIFFERENT_REFUSALS
            .iter()
            .find(|n| g.starts_with(&format!("{n} ")))
        {
            // Refused by both, with another message.
            assert_eq!(g.split(' ').nth(1), Some("err"), "{name}");
            assert_eq!(w.split(' ').nth(1), Some("err"), "{name}");
            assert_ne!(g, w, "{name} is no longer different: take it off the list");
            continue;
        }
        assert_eq!(g, w);
    }
    // The corpus has both outcomes in numbers.
    let ok = got.iter().filter(|l| l.contains(" ok ")).count();
    assert!(ok > 40 && got.len() - ok > 100, "{ok} of {}", got.len());
}

/// Reads `new` after `old` (as the server does: `old` read first, alone).
fn after(old: &[u8], new: &[u8]) -> (Result<ParsedState, StateError>, ParsedState) {
    let prev = ParsedState::parse(old.to_vec(), None).expect("the previous body is a state");
    (ParsedState::parse(new.to_vec(), Some(&prev)), prev)
}

#[test]
fn reading_with_reuse_gives_exactly_what_reading_alone_gives() {
    let mut reused_somewhere = 0;
    for c in corpus() {
        let alone = StateSummary::parse(&c.new);
        let (with, _) = after(&c.old, &c.new);
        match (&alone, &with) {
            (Ok(a), Ok(w)) => {
                // Every field, spans and the private element list included.
                assert_eq!(a, w.summary().as_ref(), "{}", c.name);
                assert_eq!(w.body(), c.new.as_slice());
                reused_somewhere += usize::from(w.reused_elements() > 0);
            }
            (Err(a), Err(w)) => assert_eq!(a, w, "{}", c.name),
            _ => panic!(
                "{}: alone {:?}, reusing {:?}",
                c.name,
                alone.as_ref().map(|_| "ok"),
                with.as_ref().map(|_| "ok")
            ),
        }
        // Reading the new body after itself reuses every element, and is the same.
        if let Ok(a) = &alone {
            let (again, _) = after(&c.new, &c.new);
            let again = again.expect("a state read again");
            assert_eq!(a, again.summary().as_ref(), "{} after itself", c.name);
            assert_eq!(again.reused_elements(), a.elements.len(), "{}", c.name);
        }
    }
    assert!(reused_somewhere > 80, "{reused_somewhere}");
}

/// The fast path is really taken: a write that changes one instance of a generated state
/// parses one element and reuses the rest; spans point at the same bytes.
#[test]
fn an_unchanged_element_is_reused_and_a_changed_one_parsed() {
    let old = generated(40, 7);
    let doc = Doc::cut(&old);
    for (what, new, parsed) in [
        (
            "one changed",
            {
                let mut d = doc.clone();
                d.elements[17] = d.elements[17].replace("v1", "v2");
                d.text()
            },
            1,
        ),
        (
            "one inserted",
            {
                let mut d = doc.clone();
                d.elements.insert(5, element(99, "v1"));
                d.text()
            },
            1,
        ),
        (
            "one removed",
            {
                let mut d = doc.clone();
                d.elements.remove(0);
                d.text()
            },
            0,
        ),
        (
            "serial and spacing",
            old.replace("\"serial\": 7", "\"serial\":   8"),
            0,
        ),
        (
            "two changed in a row",
            {
                let mut d = doc.clone();
                d.elements[3] = d.elements[3].replace("v1", "v2");
                d.elements[4] = d.elements[4].replace("v1", "v2");
                d.text()
            },
            2,
        ),
    ] {
        let (with, prev) = after(old.as_bytes(), new.as_bytes());
        let with = with.unwrap();
        let n = with.summary().elements.len();
        assert_eq!(with.reused_elements(), n - parsed, "{what}");
        for i in &with.summary().instances {
            let attrs = &new.as_bytes()[i.spans.value.clone().unwrap()];
            assert!(attrs.starts_with(b"{") && attrs.ends_with(b"}"), "{what}");
            let id = "\"id\": \"id-";
            assert!(
                attrs.windows(id.len()).any(|w| w == id.as_bytes()),
                "{what}"
            );
        }
        // A third body read after the second reuses from the second, not the first.
        let third = new.replace("v1", "v3");
        let again = ParsedState::parse(third.clone().into_bytes(), Some(&with)).unwrap();
        assert_eq!(
            again.summary().as_ref(),
            &StateSummary::parse(third.as_bytes()).unwrap()
        );
        drop(prev);
    }
}

/// HOLDS: a resource that appears twice is refused whether the copies are reused, parsed or
/// one of each; and a reused element can never hide an error of the element after it.
#[test]
fn reuse_never_hides_a_refusal() {
    let old = generated(6, 1);
    let doc = Doc::cut(&old);
    let reused_twice = {
        let mut d = doc.clone();
        d.elements.push(d.elements[2].clone());
        d.text()
    };
    let parsed_copy = {
        let mut d = doc.clone();
        d.elements.push(d.elements[2].replace("    ", "  "));
        d.text()
    };
    for new in [reused_twice, parsed_copy] {
        let (with, _) = after(old.as_bytes(), new.as_bytes());
        let e = with.unwrap_err();
        assert!(
            e.0.contains("aws_s3_bucket.b2: the resource appears more than once"),
            "{e}"
        );
    }
    // The previous body's bytes of one element, then a form feed, a trailing comma, garbage.
    for tail in ["\u{c}", ",", " x", "}"] {
        let mut d = doc.clone();
        d.elements[2].push_str(tail);
        let new = d.text();
        let (with, _) = after(old.as_bytes(), new.as_bytes());
        assert!(
            with.unwrap_err().0.starts_with("not a JSON object"),
            "{tail:?}"
        );
    }
}
