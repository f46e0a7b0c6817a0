//! The report as text, markdown, JSON (format `airlock-doctor/1`, documented in the README) and
//! SARIF 2.1.0 (one rule per finding id, one result per finding that is not `enforced`).

use std::fmt::Write;

use serde_json::{json, Value};

use super::{Report, Verdict};

fn mark(v: Verdict) -> &'static str {
    match v {
        Verdict::Enforced => "enforced",
        Verdict::Unknown => "unknown",
        Verdict::Discipline => "depends on discipline",
        Verdict::Fragile => "FRAGILE",
    }
}

fn place(file: &str, line: usize) -> String {
    if line > 0 {
        format!("{file}:{line}")
    } else {
        file.to_owned()
    }
}

fn score(s: Option<u8>) -> String {
    s.map_or_else(|| "-/2".to_owned(), |s| format!("{s}/2"))
}

/// Plain text for a terminal. Evidence is cut at `per_question` lines per question.
pub fn text(r: &Report, per_question: usize) -> String {
    let mut o = String::new();
    for (i, q) in r.questions.iter().enumerate() {
        let _ = writeln!(
            o,
            "{}. {}  {} ({})",
            i + 1,
            q.title,
            mark(q.verdict),
            score(q.score)
        );
        for e in q.evidence.iter().take(per_question) {
            let _ = writeln!(
                o,
                "   [{}] {}: {}",
                e.verdict.as_str(),
                place(&e.file, e.line),
                e.message
            );
        }
        if q.evidence.len() > per_question {
            let _ = writeln!(
                o,
                "   … {} more (--format json lists all)",
                q.evidence.len() - per_question
            );
        }
        if q.verdict != Verdict::Enforced {
            let _ = writeln!(o, "   fix: {}", q.fix);
        }
        o.push('\n');
    }
    if !r.errors.is_empty() {
        let _ = writeln!(o, "Files not analysed ({}):", r.errors.len());
        for e in r.errors.iter().take(per_question) {
            let _ = writeln!(o, "   {}: {}", place(&e.file, e.line), e.message);
        }
        o.push('\n');
    }
    let _ = writeln!(o, "Score:");
    for q in &r.questions {
        let _ = writeln!(
            o,
            "   {:<14} {:<22} {}",
            q.id.as_str(),
            mark(q.verdict),
            score(q.score)
        );
    }
    if !r.todo.is_empty() {
        let _ = writeln!(o, "\nTo do, most urgent first:");
        for (i, t) in r.todo.iter().enumerate() {
            let _ = writeln!(o, "   {}. {t}", i + 1);
        }
    }
    o
}

fn md_escape(s: &str) -> String {
    s.replace('|', "\\|")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Markdown (for a pull-request comment or a wiki page).
pub fn markdown(r: &Report, per_question: usize) -> String {
    let mut o = String::from("# airlock doctor\n\n| question | verdict | score |\n|---|---|---|\n");
    for q in &r.questions {
        let _ = writeln!(
            o,
            "| {} | {} | {} |",
            q.title,
            mark(q.verdict),
            score(q.score)
        );
    }
    for q in &r.questions {
        let _ = writeln!(o, "\n## {}: {}\n", q.title, mark(q.verdict));
        for e in q.evidence.iter().take(per_question) {
            let _ = writeln!(
                o,
                "- **{}** `{}`: {}",
                e.verdict.as_str(),
                md_escape(&place(&e.file, e.line)),
                md_escape(&e.message)
            );
        }
        if q.evidence.len() > per_question {
            let _ = writeln!(o, "- … {} more", q.evidence.len() - per_question);
        }
        if q.verdict != Verdict::Enforced {
            let _ = writeln!(o, "\n**Fix:** {}", md_escape(q.fix));
        }
    }
    if !r.errors.is_empty() {
        let _ = writeln!(o, "\n## Files not analysed\n");
        for e in &r.errors {
            let _ = writeln!(
                o,
                "- `{}`: {}",
                md_escape(&place(&e.file, e.line)),
                md_escape(&e.message)
            );
        }
    }
    if !r.todo.is_empty() {
        let _ = writeln!(o, "\n## To do\n");
        for (i, t) in r.todo.iter().enumerate() {
            let _ = writeln!(o, "{}. {}", i + 1, md_escape(t));
        }
    }
    o
}

/// The stable JSON report.
pub fn json(r: &Report) -> Value {
    serde_json::to_value(r).unwrap_or(Value::Null)
}

/// SARIF 2.1.0: one run, the tool `airlock doctor`, a rule per finding id, a result per finding
/// that is not `enforced` (`fragile` error, `discipline` warning, `unknown` note).
pub fn sarif(r: &Report) -> Value {
    let mut rules: Vec<&'static str> = Vec::new();
    let mut results = Vec::new();
    let evidence = r
        .questions
        .iter()
        .flat_map(|q| q.evidence.iter().map(move |e| (q.id.as_str(), e)))
        .chain(r.errors.iter().map(|e| ("file", e)));
    for (question, e) in evidence {
        if e.verdict == Verdict::Enforced {
            continue;
        }
        if !rules.contains(&e.rule) {
            rules.push(e.rule);
        }
        let level = match e.verdict {
            Verdict::Fragile => "error",
            Verdict::Discipline => "warning",
            _ => "note",
        };
        let mut location = json!({"physicalLocation": {"artifactLocation": {"uri": e.file}}});
        if e.line > 0 {
            location["physicalLocation"]["region"] = json!({"startLine": e.line});
        }
        results.push(json!({
            "ruleId": e.rule,
            "level": level,
            "message": {"text": e.message},
            "locations": if e.file == super::server::SERVER { json!([]) } else { json!([location]) },
            "properties": {"question": question, "verdict": e.verdict.as_str()},
        }));
    }
    let rules: Vec<Value> = rules
        .iter()
        .map(|id| json!({"id": id, "shortDescription": {"text": id.replace(['.', '_'], " ")}}))
        .collect();
    json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {
                "name": "airlock doctor",
                "rules": rules,
            }},
            "results": results,
        }]
    })
}
