//! Renders a check as text, markdown, JSON or SARIF. Pure string building: the binary writes
//! the pieces out. `changes` stream (one piece per change) so output never has to hold the
//! whole plan; markdown keeps at most its size cap.

use serde_json::{json, Value};

use crate::analysis::{one_line, ChangeReport, Decision, Severity, Verdict};
use crate::plan::ChangeKind;

/// Version of the JSON output schema (`docs/check-json-schema.md`).
pub use crate::gate::SCHEMA_VERSION as JSON_SCHEMA_VERSION;

/// Markdown output never exceeds this many characters.
pub const MARKDOWN_MAX_CHARS: usize = 60_000;

fn kind_label(kind: ChangeKind) -> &'static str {
    match kind {
        ChangeKind::ReplaceCreateFirst => "replace (create first)",
        ChangeKind::ForgetReplace => "forget + create",
        k => k.as_str(),
    }
}

/// The JSON output, piece by piece: `open`, then `change` per listed change, then `close`.
pub mod json {
    use super::*;
    use crate::gate::{ChangeEntry, ReportTail, SCHEMA_VERSION};

    /// The start of the document.
    pub fn open() -> String {
        format!("{{\"schema_version\":{SCHEMA_VERSION},\"changes\":[")
    }

    /// One element of `changes[]` (`None` for a plain no-op); `first` tells whether a comma
    /// is needed.
    pub fn change(c: &ChangeReport, first: bool) -> Option<String> {
        let entry = ChangeEntry::of(c)?;
        let body = serde_json::to_string(&entry).unwrap_or_default();
        Some(if first { body } else { format!(",{body}") })
    }

    /// The rest of the document after `changes[]`: [`ReportTail`] with `decision` last.
    pub fn close(d: &Decision) -> String {
        let tail = ReportTail::of(d);
        let decision = Value::from(tail.decision);
        let mut members: Vec<String> = Vec::new();
        if let Ok(Value::Object(map)) = serde_json::to_value(&tail) {
            for (k, v) in map.iter().filter(|(k, _)| *k != "decision") {
                members.push(format!("{}:{v}", Value::String(k.clone())));
            }
        }
        members.push(format!("\"decision\":{decision}"));
        format!("],{}}}\n", members.join(","))
    }
}

/// Terminal output: one line per listed change as it streams, then findings and the verdict.
pub mod text {
    use super::*;

    struct Style(bool);
    impl Style {
        fn paint(&self, code: &str, s: &str) -> String {
            if self.0 {
                format!("\x1b[{code}m{s}\x1b[0m")
            } else {
                s.to_string()
            }
        }
    }

    fn symbol(kind: ChangeKind) -> (&'static str, &'static str) {
        match kind {
            ChangeKind::Create => ("+", "32"),
            ChangeKind::Update => ("~", "33"),
            ChangeKind::Delete => ("-", "31"),
            ChangeKind::ReplaceDestroyFirst => ("-/+", "31"),
            ChangeKind::ReplaceCreateFirst => ("+/-", "31"),
            ChangeKind::Forget => ("⊘", "35"),
            ChangeKind::ForgetReplace => ("⊘/+", "35"),
            ChangeKind::Read => ("<=", "36"),
            ChangeKind::NoOp => ("=", "2"),
            ChangeKind::Unknown => ("?", "31"),
        }
    }

    /// The line for one change, or `None` for a plain no-op.
    pub fn change(c: &ChangeReport, color: bool) -> Option<String> {
        if !c.is_interesting() {
            return None;
        }
        let st = Style(color);
        let (sym, code) = symbol(c.kind);
        let mut line = format!(
            "  {} {:<22} {}",
            st.paint(code, &format!("{sym:>3}")),
            kind_label(c.kind),
            one_line(&c.address)
        );
        if c.critical {
            line.push_str(&st.paint("1;31", " [critical]"));
        }
        if let Some(from) = &c.moved_from {
            line.push_str(&format!(" (moved from {})", one_line(from)));
        }
        if c.import {
            line.push_str(" (import)");
        }
        if let Some(d) = &c.deposed {
            line.push_str(&format!(" (deposed {})", one_line(d)));
        }
        if !c.replace_paths.is_empty() {
            line.push_str(&format!(" forced by {}", c.replace_paths.join(", ")));
        }
        if let Some(first) = c.reasons.first() {
            line.push_str(&st.paint("2", &format!(" — {first}")));
        }
        line.push('\n');
        Some(line)
    }

    /// Findings, counts and the verdict.
    pub fn footer(d: &Decision, color: bool) -> String {
        let st = Style(color);
        let mut out = String::new();
        if !d.findings.is_empty() {
            out.push_str("\nFindings:\n");
            for f in &d.findings {
                let (label, code) = match f.severity {
                    Severity::Deny => ("DENY  ", "1;31"),
                    Severity::Review => ("REVIEW", "1;33"),
                    Severity::Info => ("info  ", "2"),
                };
                out.push_str(&format!(
                    "  {} {} {}: {}\n",
                    st.paint(code, label),
                    f.rule,
                    f.address
                        .as_deref()
                        .map(one_line)
                        .unwrap_or_else(|| "(plan)".into()),
                    f.message
                ));
            }
            if d.findings_omitted > 0 {
                out.push_str(&format!(
                    "  ... {} more finding(s) not shown (see --format json)\n",
                    d.findings_omitted
                ));
            }
        }
        out.push_str(&format!("\n{}\n", summary_line(d)));
        let (code, why) = match d.verdict {
            Verdict::Allow => ("1;32", "no change needs a human"),
            Verdict::Review => (
                "1;33",
                "a human other than the author must review this plan",
            ),
            Verdict::Deny => ("1;31", "refused by policy"),
        };
        out.push_str(&format!(
            "Decision: {} ({why})\n",
            st.paint(code, d.verdict.as_str())
        ));
        out
    }
}

/// "2 to destroy, 1 to replace, ..." from the summary counts.
pub fn summary_line(d: &Decision) -> String {
    let n = |k: ChangeKind| d.summary.by_kind.get(k.as_str()).copied().unwrap_or(0);
    let replace = n(ChangeKind::ReplaceDestroyFirst) + n(ChangeKind::ReplaceCreateFirst);
    let mut parts = vec![
        format!("{} to destroy", n(ChangeKind::Delete)),
        format!("{replace} to replace"),
        format!("{} to create", n(ChangeKind::Create)),
        format!("{} to update", n(ChangeKind::Update)),
    ];
    let forget = n(ChangeKind::Forget) + n(ChangeKind::ForgetReplace);
    if forget > 0 {
        parts.push(format!("{forget} to forget"));
    }
    if d.summary.import > 0 {
        parts.push(format!("{} to import", d.summary.import));
    }
    if d.summary.moved > 0 {
        parts.push(format!("{} moved", d.summary.moved));
    }
    if n(ChangeKind::Read) > 0 {
        parts.push(format!("{} to read", n(ChangeKind::Read)));
    }
    if n(ChangeKind::Unknown) > 0 {
        parts.push(format!("{} unrecognised", n(ChangeKind::Unknown)));
    }
    parts.push(format!("{} unchanged", n(ChangeKind::NoOp)));
    parts.join(", ")
}

/// Markdown for a pull-request comment, capped at [`MARKDOWN_MAX_CHARS`].
pub struct Markdown {
    destructive: Section,
    all: Section,
    listed: u64,
}

/// Lines kept up to a character budget; the rest are counted.
struct Section {
    lines: Vec<String>,
    chars: usize,
    omitted: u64,
}

impl Section {
    fn new() -> Self {
        Section {
            lines: Vec::new(),
            chars: 0,
            omitted: 0,
        }
    }

    fn push(&mut self, line: String) {
        if self.chars + line.len() < MARKDOWN_MAX_CHARS {
            self.chars += line.len() + 1;
            self.lines.push(line);
        } else {
            self.omitted += 1;
        }
    }
}

/// Keeps text from breaking out of inline code or HTML in markdown.
fn md_code(s: &str) -> String {
    format!("`{}`", one_line(s).replace('`', "'"))
}

fn md_text(s: &str) -> String {
    one_line(s)
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn md_change(c: &ChangeReport) -> String {
    let mut line = format!("- **{}** {}", kind_label(c.kind), md_code(&c.address));
    if c.critical {
        line.push_str(" · critical");
    }
    if let Some(from) = &c.moved_from {
        line.push_str(&format!(" · moved from {}", md_code(from)));
    }
    if c.import {
        line.push_str(" · import");
    }
    if !c.replace_paths.is_empty() {
        let paths: Vec<String> = c.replace_paths.iter().map(|p| md_code(p)).collect();
        line.push_str(&format!(" · forced by {}", paths.join(", ")));
    }
    if let Some(r) = c.reasons.first() {
        line.push_str(&format!(" — {}", md_text(r)));
    }
    line
}

impl Default for Markdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Markdown {
    /// An empty report.
    pub fn new() -> Self {
        Markdown {
            destructive: Section::new(),
            all: Section::new(),
            listed: 0,
        }
    }

    /// Adds one change (plain no-ops are only counted in the summary).
    pub fn change(&mut self, c: &ChangeReport) {
        if !c.is_interesting() {
            return;
        }
        self.listed += 1;
        let line = md_change(c);
        if c.is_destructive() {
            self.destructive.push(line.clone());
        }
        self.all.push(line);
    }

    /// The comment, never longer than [`MARKDOWN_MAX_CHARS`] characters.
    pub fn finish(self, d: &Decision, warnings: &[String]) -> String {
        let icon = match d.verdict {
            Verdict::Allow => "✅",
            Verdict::Review => "⚠️",
            Verdict::Deny => "⛔",
        };
        let mut head = format!(
            "### {icon} airlock check: **{}**\n\n{}\n",
            d.verdict.as_str(),
            summary_line(d)
        );
        if let Some(stack) = &d.stack {
            head.push_str(&format!("\nStack: {}", md_code(stack)));
        }
        if let Some(v) = &d.plan.terraform_version {
            head.push_str(&format!("\nTerraform: {}", md_code(v)));
        }
        head.push('\n');
        for w in warnings {
            head.push_str(&format!("\n> **Warning:** {}\n", md_text(w)));
        }
        let mut findings = Section::new();
        for f in &d.findings {
            let mark = match f.severity {
                Severity::Deny => "⛔",
                Severity::Review => "⚠️",
                Severity::Info => "ℹ️",
            };
            let at = f
                .address
                .as_deref()
                .map(md_code)
                .unwrap_or_else(|| "plan".into());
            findings.push(format!(
                "- {mark} **{}** {at}: {}",
                f.rule,
                md_text(&f.message)
            ));
        }
        findings.omitted += d.findings_omitted;

        // Assemble within the cap; a truncation line says what was left out.
        let reserve = 400; // closing tags and the truncation line
        let budget = MARKDOWN_MAX_CHARS.saturating_sub(reserve);
        let mut out = String::new();
        let mut cut: u64 = 0;
        let mut used = 0usize;
        let mut push = |out: &mut String, s: &str, cut: &mut u64| {
            let n = s.chars().count() + 1;
            if used + n < budget {
                used += n;
                out.push_str(s);
                out.push('\n');
            } else {
                *cut += 1;
            }
        };
        push(&mut out, &head, &mut cut);
        if !findings.lines.is_empty() {
            push(&mut out, "#### Findings\n", &mut cut);
            for l in &findings.lines {
                push(&mut out, l, &mut cut);
            }
            cut += findings.omitted;
        }
        if !self.destructive.lines.is_empty() {
            push(&mut out, "\n#### Destructive changes\n", &mut cut);
            for l in &self.destructive.lines {
                push(&mut out, l, &mut cut);
            }
            cut += self.destructive.omitted;
        }
        if self.listed > 0 {
            out.push_str(&format!(
                "\n<details><summary>All {} changes (no-ops omitted)</summary>\n\n",
                self.listed
            ));
            for l in &self.all.lines {
                push(&mut out, l, &mut cut);
            }
            cut += self.all.omitted;
            out.push_str("\n</details>\n");
        }
        if cut > 0 {
            out.push_str(&format!(
                "\n**Truncated:** {cut} more line(s) not shown to stay under {MARKDOWN_MAX_CHARS} \
                 characters; run `airlock check --format json` for the full report.\n"
            ));
        }
        out
    }
}

/// SARIF 2.1.0 for code-scanning uploads; one result per finding.
pub fn sarif(d: &Decision, artifact: &str, tool_version: &str) -> String {
    let level = |s: Severity| match s {
        Severity::Deny => "error",
        Severity::Review => "warning",
        Severity::Info => "note",
    };
    let mut rule_ids: Vec<(&str, Severity)> = Vec::new();
    for f in &d.findings {
        if !rule_ids.iter().any(|(r, _)| *r == f.rule) {
            rule_ids.push((&f.rule, f.severity));
        }
    }
    let rules: Vec<Value> = rule_ids
        .iter()
        .map(|(id, sev)| {
            json!({
                "id": id,
                "name": id,
                "shortDescription": {"text": rule_description(id)},
                "defaultConfiguration": {"level": level(*sev)},
            })
        })
        .collect();
    let results: Vec<Value> = d
        .findings
        .iter()
        .map(|f| {
            let fingerprint = format!(
                "{:016x}",
                fnv1a(format!("{}\u{0}{}", f.rule, f.address.as_deref().unwrap_or("")).as_bytes())
            );
            let mut loc = json!({
                "physicalLocation": {
                    "artifactLocation": {"uri": artifact},
                    "region": {"startLine": 1}
                }
            });
            if let (Some(a), Some(obj)) = (&f.address, loc.as_object_mut()) {
                obj.insert(
                    "logicalLocations".into(),
                    json!([{"fullyQualifiedName": a, "kind": "resource"}]),
                );
            }
            json!({
                "ruleId": f.rule,
                "level": level(f.severity),
                "message": {"text": match &f.address {
                    Some(a) => format!("{}: {}", one_line(a), f.message),
                    None => f.message.clone(),
                }},
                "locations": [loc],
                "partialFingerprints": {"airlockFinding/v1": fingerprint},
            })
        })
        .collect();
    let doc = json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {
                "name": "airlock",
                "version": tool_version,
                "informationUri": "https://github.com/airlock/airlock",
                "rules": rules,
            }},
            "results": results,
            "properties": {"decision": d.verdict.as_str()},
        }]
    });
    let mut s = serde_json::to_string_pretty(&doc).unwrap_or_default();
    s.push('\n');
    s
}

fn rule_description(id: &str) -> &'static str {
    use crate::analysis::rules::*;
    match id {
        CRITICAL_DESTROY => "A critical resource is destroyed without an allow_destroy declaration",
        DECLARED_DESTROY => "A critical resource is destroyed, as declared by allow_destroy",
        PROTECTION_WEAKENED => "A protection attribute is turned off or weakened",
        PROTECTED_DELETE => "A resource is deleted while its deletion protection is on",
        BACKUPS_DELETED => "A resource is deleted and the provider deletes its backups with it",
        MASS_DESTRUCTION => "The plan destroys more instances than the mass-destruction limits",
        PRODUCTION_DESTROY => "A resource is destroyed in a production stack",
        MODULE_REMOVED => "A module call was removed",
        INSTANCE_KEY_REMOVED => "A count index or for_each key was removed",
        REPLACE_REQUESTED => "A replacement was requested with -replace",
        TAINTED_REPLACE => "A tainted object is replaced",
        FORGET => "An object is removed from state without being destroyed",
        UNKNOWN_ACTION => "An action list airlock does not recognise",
        PLAN_ERRORED => "The plan is errored and partial",
        _ => "A custom Rego policy rule",
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::Analyzer;
    use crate::config::Config;
    use crate::plan::{read_plan, PlanInfo};

    fn decide(plan: &str) -> (Decision, Vec<ChangeReport>) {
        let cfg = Config::default();
        let mut a = Analyzer::new(&cfg, None);
        let mut reports = Vec::new();
        let info = read_plan(plan.as_bytes(), |rc| reports.push(a.change(&rc))).unwrap();
        (a.finish(info), reports)
    }

    const PLAN: &str = r#"{"format_version":"1.2","terraform_version":"1.11.4","planned_values":{},
      "resource_changes":[
       {"address":"aws_db_instance.main","mode":"managed","type":"aws_db_instance","name":"main",
        "change":{"actions":["delete"],"before":{"password":"hunter2","deletion_protection":false},
        "after":null,"before_sensitive":{"password":true}},"action_reason":"delete_because_no_resource_config"},
       {"address":"terraform_data.a","mode":"managed","type":"terraform_data","name":"a",
        "change":{"actions":["create"],"before":null,"after":{"input":"secret-ish"}}},
       {"address":"terraform_data.n","mode":"managed","type":"terraform_data","name":"n",
        "change":{"actions":["no-op"],"before":{},"after":{}}}]}"#;

    #[test]
    fn json_is_valid_and_stable() {
        let (d, reports) = decide(PLAN);
        let mut s = json::open();
        let mut first = true;
        for r in &reports {
            if let Some(piece) = json::change(r, first) {
                s.push_str(&piece);
                first = false;
            }
        }
        s.push_str(&json::close(&d));
        assert!(s.trim_end().ends_with(r#""decision":"deny"}"#), "{s}");
        let v: Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["decision"], "deny");
        assert_eq!(v["schema_version"], 1);
        assert_eq!(v["changes"].as_array().unwrap().len(), 2);
        assert_eq!(v["changes"][0]["critical"], true);
        assert_eq!(v["summary"]["delete"], 1);
        assert_eq!(v["summary"]["no-op"], 1);
        assert_eq!(v["findings"][0]["rule"], "critical-destroy");
        crate::gate::tests::assert_matches_schema(&v);
        assert!(!s.contains("hunter2") && !s.contains("secret-ish"));
    }

    #[test]
    fn no_format_prints_attribute_values() {
        let (d, reports) = decide(PLAN);
        let mut md = Markdown::new();
        let mut text = String::new();
        for r in &reports {
            md.change(r);
            text.push_str(&text::change(r, false).unwrap_or_default());
        }
        text.push_str(&text::footer(&d, false));
        let md = md.finish(&d, &[]);
        let sarif = sarif(&d, "plan.json", "0.1.0");
        for out in [&text, &md, &sarif] {
            assert!(
                !out.contains("hunter2") && !out.contains("secret-ish"),
                "{out}"
            );
        }
        assert!(text.contains("Decision: deny"));
        assert!(!text.contains('\x1b'));
        let colored = text::footer(&d, true);
        assert!(colored.contains("\x1b[1;31mdeny"));
    }

    #[test]
    fn markdown_puts_destruction_first_and_caps_its_size() {
        let mut changes = Vec::new();
        for i in 0..3000 {
            changes.push(format!(
                r#"{{"address":"module.big.terraform_data.item_with_a_long_name[{i}]","mode":"managed","type":"terraform_data","name":"x","change":{{"actions":["create"]}}}}"#
            ));
        }
        changes.push(r#"{"address":"aws_s3_bucket.logs","mode":"managed","type":"aws_s3_bucket","name":"logs","change":{"actions":["delete"],"before":{}}}"#.into());
        let plan = format!(
            "{{\"planned_values\":{{}},\"resource_changes\":[{}]}}",
            changes.join(",")
        );
        let (d, reports) = decide(&plan);
        let mut md = Markdown::new();
        for r in &reports {
            md.change(r);
        }
        let out = md.finish(&d, &[]);
        assert!(out.chars().count() <= MARKDOWN_MAX_CHARS, "{}", out.len());
        assert!(out.contains("**Truncated:**"));
        let destructive = out.find("#### Destructive changes").unwrap();
        let details = out.find("<details>").unwrap();
        assert!(destructive < details);
        assert!(out
            .get(destructive..details)
            .unwrap()
            .contains("aws_s3_bucket.logs"));
        assert!(out.trim_end().ends_with("for the full report."));
        assert!(out.contains("</details>"));
    }

    #[test]
    fn sarif_is_2_1_0() {
        let (d, _) = decide(PLAN);
        let v: Value = serde_json::from_str(&sarif(&d, "plan.json", "0.1.0")).unwrap();
        assert_eq!(v["version"], "2.1.0");
        let r = &v["runs"][0]["results"][0];
        assert_eq!(r["ruleId"], "critical-destroy");
        assert_eq!(r["level"], "error");
        assert_eq!(
            r["locations"][0]["logicalLocations"][0]["fullyQualifiedName"],
            "aws_db_instance.main"
        );
        assert_eq!(
            v["runs"][0]["tool"]["driver"]["rules"][0]["id"],
            "critical-destroy"
        );
        let _ = PlanInfo::default();
    }
}
