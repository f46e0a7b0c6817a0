//! Custom rules in Rego, evaluated in-process with regorus, following conftest's conventions:
//! rules live in `package main`; `deny`, `violation` (and `deny_*`, `violation_*`) produce a
//! `deny` finding, `warn` (and `warn_*`) a `review` finding; each rule yields strings or
//! objects with a `msg` (optionally `address`/`resource`). The input is the whole plan JSON,
//! so this path holds the plan in memory; the built-in rules do not.
//!
//! The repository's Rego is the planner's text (an agent's, say), and regorus aborts the whole
//! process on some of it (`numbers.range(0, 1e12)` asks for terabytes at once; an allocation
//! failure is not recoverable in Rust). So where it runs is the caller's choice
//! ([`RegoRunner`]): [`InProcess`] on the planner's own machine (`airlock check`), in a child
//! process with bounded memory and CPU on the server (`airlock __rego-eval`, which speaks
//! [`write_job`] / [`read_job`] on its stdin and [`write_outcome`] / [`read_outcome`] on its
//! stdout).

use std::fmt;
use std::num::NonZeroU32;
use std::time::Duration;

use serde_json::Value;

use crate::analysis::{one_line, Finding, Severity};

/// Rego policies loaded and ready to evaluate.
pub struct RegoPolicies {
    engine: regorus::Engine,
    namespace: String,
}

/// Why Rego policies could not be loaded or evaluated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegoError {
    /// A policy file does not parse (under either Rego v1 or v0 syntax).
    Parse {
        /// The file name given by the caller.
        file: String,
        /// The parser's message.
        message: String,
    },
    /// No policy files were given.
    NoPolicies,
    /// Evaluation failed.
    Eval(String),
}

impl fmt::Display for RegoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegoError::Parse { file, message } => {
                write!(f, "Rego policy {file} does not parse: {message}")
            }
            RegoError::NoPolicies => write!(f, "no .rego files found in the policy directory"),
            RegoError::Eval(m) => write!(f, "evaluating the Rego policies failed: {m}"),
        }
    }
}

impl std::error::Error for RegoError {}

/// How long one evaluation may run. Policies are often an agent's (a run's `policy/**.rego`,
/// which the server evaluates in its `__rego-eval` child): real policies take milliseconds, a
/// hostile one loops over billions of pairs (Rego has no recursion, but nested iteration is
/// enough).
pub const TIME_LIMIT: Duration = Duration::from_secs(5);

/// Most elements `numbers.range` and `numbers.range_step` may build. regorus allocates a range
/// at once, before any of its limits is checked, so `numbers.range(1, 1e14)` would abort the
/// process on the failed allocation: the engine uses [`bounded_range`] instead.
pub const MAX_RANGE: u64 = 100_000;

/// A range longer than [`MAX_RANGE`].
#[derive(Debug)]
struct RangeTooLong(u64);

impl fmt::Display for RangeTooLong {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "numbers.range: a range of {} numbers is over this server's limit of {MAX_RANGE}",
            self.0
        )
    }
}

impl std::error::Error for RangeTooLong {}

/// The engine's bounds: [`TIME_LIMIT`], and the range builtins replaced by extensions (which
/// regorus looks up first) that refuse ranges over [`MAX_RANGE`].
fn bound(engine: &mut regorus::Engine) -> Result<(), RegoError> {
    engine.set_execution_timer_config(regorus::utils::limits::ExecutionTimerConfig {
        limit: TIME_LIMIT,
        check_interval: NonZeroU32::MIN,
    });
    let failed = |e: &dyn fmt::Display| RegoError::Eval(format!("bounding the Rego engine: {e}"));
    engine
        .add_extension(
            "numbers.range".into(),
            2,
            Box::new(|args: Vec<regorus::Value>| Ok(bounded_range(&args, false)?)),
        )
        .map_err(|e| failed(&e))?;
    engine
        .add_extension(
            "numbers.range_step".into(),
            3,
            Box::new(|args: Vec<regorus::Value>| Ok(bounded_range(&args, true)?)),
        )
        .map_err(|e| failed(&e))
}

/// `numbers.range(from, to)` or (`stepped`) `numbers.range_step(from, to, step)` of `args` as
/// OPA defines them (every integer from `from` to `to`, both included, either way; a step must
/// be positive), undefined for operands that are not integers, refused over [`MAX_RANGE`].
fn bounded_range(args: &[regorus::Value], stepped: bool) -> Result<regorus::Value, RangeTooLong> {
    let int = |i: usize| args.get(i).and_then(|v| v.as_i64().ok());
    let (Some(a), Some(b)) = (int(0), int(1)) else {
        return Ok(regorus::Value::Undefined);
    };
    let step = match (stepped, int(2)) {
        (false, _) => 1,
        (true, Some(s)) if s > 0 => s.unsigned_abs(),
        (true, _) => return Ok(regorus::Value::Undefined),
    };
    let count = a.abs_diff(b) / step + 1;
    if count > MAX_RANGE {
        return Err(RangeTooLong(count));
    }
    let values = (0..count)
        .map(|i| {
            let offset = i128::from(i) * i128::from(step);
            let v = if a <= b {
                i128::from(a) + offset
            } else {
                i128::from(a) - offset
            };
            // Between a and b: an i64.
            regorus::Value::from(v as i64)
        })
        .collect::<Vec<_>>();
    Ok(regorus::Value::from(values))
}

impl RegoPolicies {
    /// Loads `(file name, source)` pairs. Rego v1 syntax is tried first, then v0 (the syntax
    /// of older conftest policies).
    pub fn load(files: &[(String, String)]) -> Result<Self, RegoError> {
        if files.is_empty() {
            return Err(RegoError::NoPolicies);
        }
        match Self::load_as(files, false) {
            Ok(p) => Ok(p),
            Err(v1_error) => Self::load_as(files, true).map_err(|_| v1_error),
        }
    }

    fn load_as(files: &[(String, String)], v0: bool) -> Result<Self, RegoError> {
        let mut engine = regorus::Engine::new();
        engine.set_rego_v0(v0);
        bound(&mut engine)?;
        for (name, source) in files {
            engine
                .add_policy(name.clone(), source.clone())
                .map_err(|e| parse_error(name, &e))?;
        }
        Ok(RegoPolicies {
            engine,
            namespace: "main".into(),
        })
    }

    /// Evaluates the rules of `package main` against the plan JSON.
    pub fn evaluate(&mut self, plan_json: &str) -> Result<Vec<Finding>, RegoError> {
        self.engine
            .set_input_json(plan_json)
            .map_err(|e| RegoError::Eval(format!("the plan is not valid JSON for Rego: {e}")))?;
        let query = format!("data.{}", self.namespace);
        let results = self
            .engine
            .eval_query(query, false)
            .map_err(|e| RegoError::Eval(e.to_string()))?;
        let package = results
            .result
            .first()
            .and_then(|r| r.expressions.first())
            .map(|e| e.value.to_json_str())
            .transpose()
            .map_err(|e| RegoError::Eval(e.to_string()))?;
        let package: Value = match package {
            Some(s) => serde_json::from_str(&s).map_err(|e| RegoError::Eval(e.to_string()))?,
            None => return Ok(Vec::new()),
        };
        let mut findings = Vec::new();
        if let Value::Object(rules) = package {
            for (name, value) in rules {
                let severity = match rule_kind(&name) {
                    Some(s) => s,
                    None => continue,
                };
                for item in items(&value) {
                    let (message, address) = match item {
                        Value::String(s) => (s.clone(), None),
                        Value::Object(o) => (
                            o.get("msg")
                                .and_then(Value::as_str)
                                .map(str::to_string)
                                .unwrap_or_else(|| format!("{name} (no msg)")),
                            finding_address(o),
                        ),
                        Value::Bool(true) => (format!("rule {name} matched"), None),
                        _ => continue,
                    };
                    findings.push(Finding {
                        rule: format!("rego:{}.{name}", self.namespace),
                        severity,
                        address,
                        message: one_line(&message),
                    });
                }
            }
        }
        Ok(findings)
    }
}

/// conftest's rule-name conventions.
fn rule_kind(name: &str) -> Option<Severity> {
    let is = |prefix: &str| name == prefix || name.starts_with(&format!("{prefix}_"));
    if is("deny") || is("violation") {
        Some(Severity::Deny)
    } else if is("warn") {
        Some(Severity::Review)
    } else {
        None
    }
}

fn items(v: &Value) -> Vec<&Value> {
    match v {
        Value::Array(a) => a.iter().collect(),
        other => vec![other],
    }
}

/// The resource a Rego finding is about: `address`, or `resource` given as an address or as
/// the resource change itself (`"resource": rc`, whose `address` is used).
fn finding_address(o: &serde_json::Map<String, Value>) -> Option<String> {
    let resource = o.get("resource");
    o.get("address")
        .and_then(Value::as_str)
        .or_else(|| resource.and_then(Value::as_str))
        .or_else(|| {
            resource
                .and_then(|r| r.get("address"))
                .and_then(Value::as_str)
        })
        .map(str::to_string)
}

/// Memory a child evaluator may map (`RLIMIT_AS`): what the server lends one repository's Rego.
pub const SANDBOX_MEMORY_BYTES: u64 = 4 * 1024 * 1024 * 1024;
/// CPU seconds a child evaluator may use (`RLIMIT_CPU`).
pub const SANDBOX_CPU_SECONDS: u64 = 60;
/// The hidden `airlock` subcommand that evaluates one job.
pub const SANDBOX_COMMAND: &str = "__rego-eval";

/// Runs the repository's Rego policies on a plan's JSON text.
pub trait RegoRunner: Sync {
    /// Loads `files` (`(name, source)` pairs) and evaluates them on `plan_text`.
    fn run(&self, files: &[(String, String)], plan_text: &str) -> Result<Vec<Finding>, RegoError>;
}

/// Runs Rego in this process: for text its own user wrote (`airlock check`).
pub struct InProcess;

impl RegoRunner for InProcess {
    fn run(&self, files: &[(String, String)], plan_text: &str) -> Result<Vec<Finding>, RegoError> {
        RegoPolicies::load(files)?.evaluate(plan_text)
    }
}

/// A policy that does not parse, said as `file:line:col: the parser's message`, never with the
/// source text regorus quotes: a policy's text is the planner's, and a `policy/x.rego` linked to
/// `/proc/self/environ` once had the server answer (and log) the planner's environment. A
/// message not in regorus's shape is not shown at all.
fn parse_error(file: &str, e: &dyn fmt::Display) -> RegoError {
    let text = e.to_string();
    // regorus: "\n--> FILE:LINE:COL\n  |\nN | SOURCE LINE\n  | ^\nerror: MESSAGE".
    let at = text
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("--> "))
        .and_then(|at| {
            let mut parts = at.rsplitn(3, ':');
            let (col, line) = (parts.next()?, parts.next()?);
            let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
            (digits(line) && digits(col)).then(|| format!("{file}:{line}:{col}"))
        });
    let what = text.lines().find_map(|l| l.strip_prefix("error: "));
    let message = match (at, what) {
        (Some(at), Some(what)) => format!("{at}: {}", one_line(what)),
        _ => format!(
            "{file}: not valid Rego (the parser's message quotes the file, so it is not shown)"
        ),
    };
    RegoError::Parse {
        file: file.to_owned(),
        message,
    }
}

/// The job a child evaluator reads on its stdin: the policies as one line of JSON, then the
/// plan's text to the end.
pub fn write_job(
    out: &mut dyn std::io::Write,
    files: &[(String, String)],
    plan_text: &str,
) -> std::io::Result<()> {
    let head = serde_json::to_string(files).map_err(std::io::Error::other)?;
    out.write_all(head.as_bytes())?;
    out.write_all(b"\n")?;
    out.write_all(plan_text.as_bytes())
}

/// `(file name, source)` pairs of Rego.
pub type PolicyFiles = Vec<(String, String)>;

/// Splits a job written by [`write_job`] into its policies and plan text.
pub fn read_job(job: &[u8]) -> Result<(PolicyFiles, &str), String> {
    let (head, text) = job
        .iter()
        .position(|&b| b == b'\n')
        .and_then(|at| Some((job.get(..at)?, job.get(at + 1..)?)))
        .ok_or("the job has no policy line")?;
    let files = serde_json::from_slice(head).map_err(|e| format!("the policy line: {e}"))?;
    let text = std::str::from_utf8(text).map_err(|e| format!("the plan text: {e}"))?;
    Ok((files, text))
}

/// What a child evaluator prints: its findings, or why the policies did not load or run.
pub fn write_outcome(outcome: &Result<Vec<Finding>, RegoError>) -> String {
    let v = match outcome {
        Ok(findings) => serde_json::json!({"findings": findings.iter().map(|f| serde_json::json!({
            "rule": f.rule,
            "severity": f.severity.as_str(),
            "address": f.address,
            "message": f.message,
        })).collect::<Vec<_>>()}),
        Err(RegoError::Parse { file, message }) => {
            serde_json::json!({"parse_error": {"file": file, "message": message}})
        }
        Err(RegoError::NoPolicies) => serde_json::json!({"no_policies": true}),
        Err(RegoError::Eval(m)) => serde_json::json!({"eval_error": m}),
    };
    v.to_string()
}

/// Reads what [`write_outcome`] printed.
pub fn read_outcome(printed: &[u8]) -> Result<Result<Vec<Finding>, RegoError>, String> {
    #[derive(serde::Deserialize)]
    struct Printed {
        findings: Option<Vec<PrintedFinding>>,
        parse_error: Option<PrintedParse>,
        no_policies: Option<bool>,
        eval_error: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct PrintedFinding {
        rule: String,
        severity: String,
        address: Option<String>,
        message: String,
    }
    #[derive(serde::Deserialize)]
    struct PrintedParse {
        file: String,
        message: String,
    }
    let p: Printed = serde_json::from_slice(printed).map_err(|e| e.to_string())?;
    if let Some(e) = p.parse_error {
        return Ok(Err(RegoError::Parse {
            file: e.file,
            message: e.message,
        }));
    }
    if p.no_policies == Some(true) {
        return Ok(Err(RegoError::NoPolicies));
    }
    if let Some(m) = p.eval_error {
        return Ok(Err(RegoError::Eval(m)));
    }
    let findings = p.findings.ok_or("no findings and no error")?;
    findings
        .into_iter()
        .map(|f| {
            let severity = match f.severity.as_str() {
                "info" => Severity::Info,
                "review" => Severity::Review,
                "deny" => Severity::Deny,
                other => return Err(format!("unknown severity {other:?}")),
            };
            Ok(Finding {
                rule: f.rule,
                severity,
                address: f.address,
                message: f.message,
            })
        })
        .collect::<Result<Vec<_>, String>>()
        .map(Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAN: &str = r#"{"resource_changes":[{"address":"aws_s3_bucket.logs","type":"aws_s3_bucket","change":{"actions":["delete"]}},{"address":"terraform_data.a","type":"terraform_data","change":{"actions":["create"]}}]}"#;

    /// What a child evaluator reads and prints reads back as what it ran on and found.
    #[test]
    fn the_sandbox_protocol_round_trips() {
        let files = vec![(
            "p.rego".to_owned(),
            "package main\n# a \"quote\"\n".to_owned(),
        )];
        let mut job = Vec::new();
        write_job(&mut job, &files, PLAN).unwrap();
        let (read, text) = read_job(&job).unwrap();
        assert_eq!((read, text), (files, PLAN));
        assert!(read_job(b"no newline").is_err());
        let findings = vec![Finding {
            rule: "rego:main.deny".into(),
            severity: Severity::Deny,
            address: Some("aws_s3_bucket.logs".into()),
            message: "no".into(),
        }];
        for outcome in [
            Ok(findings),
            Ok(Vec::new()),
            Err(RegoError::Parse {
                file: "p.rego".into(),
                message: "bad".into(),
            }),
            Err(RegoError::NoPolicies),
            Err(RegoError::Eval("boom".into())),
        ] {
            let printed = write_outcome(&outcome);
            assert_eq!(
                read_outcome(printed.as_bytes()).unwrap(),
                outcome,
                "{printed}"
            );
        }
        assert!(read_outcome(b"{}").is_err());
        assert!(read_outcome(
            br#"{"findings":[{"rule":"r","severity":"fatal","address":null,"message":"m"}]}"#
        )
        .is_err());
    }

    /// A policy's text is the planner's: a parse error says where and why, never what the
    /// file holds (a policy linked to `/proc/self/environ` once had the server echo the
    /// planner's environment in its answer and its log).
    #[test]
    fn a_parse_error_carries_no_source_text() {
        for source in [
            "AIRLOCK_TOKEN=airlock_secret\0HOME=/root\0",
            "package main\n\ndeny contains msg if { msg := airlock_secret airlock_secret }\n",
            "package main\nx := \"airlock_secret\n",
        ] {
            let e = RegoPolicies::load(&[("policy/x.rego".into(), source.into())])
                .err()
                .unwrap_or_else(|| panic!("{source:?} parses"));
            let RegoError::Parse { file, message } = &e else {
                panic!("{e:?}");
            };
            assert_eq!(file, "policy/x.rego");
            let shown = e.to_string();
            assert!(
                !shown.contains("airlock_secret") && !shown.contains('\n'),
                "{shown}"
            );
            assert!(message.starts_with("policy/x.rego:"), "{message}");
        }
        let e = RegoPolicies::load(&[("policy/x.rego".into(), "SECRET=1".into())]).err();
        assert_eq!(
            e.map(|e| e.to_string()).as_deref(),
            Some("Rego policy policy/x.rego does not parse: policy/x.rego:1:1: expecting `package` Missing package declaration.")
        );
    }

    #[test]
    fn v1_rules_with_strings_and_objects() {
        let policy = r#"
package main

deny contains msg if {
  some rc in input.resource_changes
  "delete" in rc.change.actions
  msg := sprintf("%s is deleted", [rc.address])
}

warn_creates contains {"msg": "creates something", "address": rc.address} if {
  some rc in input.resource_changes
  rc.change.actions == ["create"]
}

helper := 1
"#;
        let mut p = RegoPolicies::load(&[("p.rego".into(), policy.into())]).unwrap();
        let mut f = p.evaluate(PLAN).unwrap();
        f.sort_by(|a, b| a.rule.cmp(&b.rule));
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].rule, "rego:main.deny");
        assert_eq!(f[0].severity, Severity::Deny);
        assert_eq!(f[0].message, "aws_s3_bucket.logs is deleted");
        assert_eq!(f[1].rule, "rego:main.warn_creates");
        assert_eq!(f[1].severity, Severity::Review);
        assert_eq!(f[1].address.as_deref(), Some("terraform_data.a"));
    }

    #[test]
    fn v0_conftest_syntax() {
        let policy = r#"
package main

violation[msg] {
  rc := input.resource_changes[_]
  rc.change.actions[_] == "delete"
  msg := sprintf("no deletes: %s", [rc.address])
}
"#;
        let mut p = RegoPolicies::load(&[("p.rego".into(), policy.into())]).unwrap();
        let f = p.evaluate(PLAN).unwrap();
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].severity, Severity::Deny);
        assert_eq!(f[0].message, "no deletes: aws_s3_bucket.logs");
    }

    #[test]
    fn other_packages_and_empty_sets_give_nothing() {
        let policy = "package other\n\ndeny contains \"x\" if { true }\n";
        let mut p = RegoPolicies::load(&[("p.rego".into(), policy.into())]).unwrap();
        assert!(p.evaluate(PLAN).unwrap().is_empty());
        let policy = "package main\n\ndeny contains \"x\" if { false }\n";
        let mut p = RegoPolicies::load(&[("p.rego".into(), policy.into())]).unwrap();
        assert!(p.evaluate(PLAN).unwrap().is_empty());
    }

    #[test]
    fn ranges_are_opas_and_bounded() {
        let policy = "package main\n\nwarn contains sprintf(\"%v %v %v %v %v\", [numbers.range(1, 3), numbers.range(3, 1), numbers.range_step(0, 10, 4), numbers.range_step(10, 0, 4), numbers.range(2, 2)]) if { true }\n";
        let mut p = RegoPolicies::load(&[("p.rego".into(), policy.into())]).unwrap();
        let f = p.evaluate(PLAN).unwrap();
        assert_eq!(f[0].message, "[1, 2, 3] [3, 2, 1] [0, 4, 8] [10, 6, 2] [2]");
        for rule in [
            "count(numbers.range(1, 100000000000000)) > 0",
            "count(numbers.range(-9223372036854775807, 9223372036854775807)) > 0",
            "count(numbers.range_step(1, 100000000000000, 2)) > 0",
        ] {
            let policy = format!("package main\n\ndeny contains \"x\" if {{\n  {rule}\n}}\n");
            let mut p = RegoPolicies::load(&[("p.rego".into(), policy)]).unwrap();
            let e = p.evaluate(PLAN).unwrap_err();
            assert!(
                e.to_string().contains("over this server's limit"),
                "{rule}: {e}"
            );
        }
    }

    #[test]
    fn an_evaluation_that_runs_too_long_is_an_error() {
        let policy = "package main\n\ndeny contains \"x\" if {\n  some i in numbers.range(1, 90000)\n  some j in numbers.range(1, 90000)\n  i == j + 100000\n}\n";
        let mut p = RegoPolicies::load(&[("p.rego".into(), policy.into())]).unwrap();
        let e = p.evaluate(PLAN).unwrap_err();
        assert!(matches!(e, RegoError::Eval(_)), "{e}");
    }

    #[test]
    fn errors_name_the_file() {
        let e = RegoPolicies::load(&[("bad.rego".into(), "package main\n deny {{{".into())])
            .err()
            .unwrap();
        assert!(e.to_string().contains("bad.rego"), "{e}");
        assert_eq!(RegoPolicies::load(&[]).err(), Some(RegoError::NoPolicies));
    }
}
