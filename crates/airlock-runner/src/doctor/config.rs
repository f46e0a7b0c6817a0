//! What `airlock doctor` reads from one Terraform (`.tf`, `.tf.json`) or Terragrunt
//! (`terragrunt.hcl`) file: its blocks and attributes with their lines, values kept literal when
//! they are literals and as their source text otherwise (never evaluated).

use std::collections::BTreeMap;

use hcl_edit::expr::{Expression, ObjectKey, TraversalOperator};
use hcl_edit::structure::{BlockLabel, Body, Structure};
use hcl_edit::Span;

use crate::modules::MAX_TF_FILE;

/// Deepest block/object nesting kept (deeper parts are left out; no protection path is deeper).
const MAX_DEPTH: usize = 32;

/// A value as written: a literal, or the source text of anything else.
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    /// A string literal.
    Str(String),
    /// A number literal.
    Num(f64),
    /// `true` or `false`.
    Bool(bool),
    /// `null`.
    Null,
    /// An object (or a JSON object).
    Obj(BTreeMap<String, Val>),
    /// A tuple or list.
    List(Vec<Val>),
    /// Any other expression, as written (`var.x`, `"${local.y}"`, a function call).
    Expr(String),
}

impl Val {
    /// The variable this value is exactly (`var.NAME`, `"${var.NAME}"`), if it is one.
    pub fn variable(&self) -> Option<&str> {
        let Val::Expr(text) = self else { return None };
        let t = text.trim();
        let t = t
            .strip_prefix("\"${")
            .and_then(|t| t.strip_suffix("}\""))
            .unwrap_or(t);
        let name = t.trim().strip_prefix("var.")?;
        name.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            .then_some(name)
    }

    /// Whether the value is a literal (no expression anywhere in it).
    pub fn is_literal(&self) -> bool {
        match self {
            Val::Expr(_) => false,
            Val::Obj(m) => m.values().all(Val::is_literal),
            Val::List(l) => l.iter().all(Val::is_literal),
            _ => true,
        }
    }

    /// A short rendering for messages.
    pub fn show(&self) -> String {
        let s = match self {
            Val::Str(s) => format!("{s:?}"),
            Val::Num(n) => n.to_string(),
            Val::Bool(b) => b.to_string(),
            Val::Null => "null".into(),
            Val::Obj(_) => "{…}".into(),
            Val::List(_) => "[…]".into(),
            Val::Expr(e) => e.split_whitespace().collect::<Vec<_>>().join(" "),
        };
        crate::doctor::cut(&s, 80)
    }
}

/// One attribute: value and 1-based line.
#[derive(Debug, Clone, PartialEq)]
pub struct Attr {
    /// Its value.
    pub value: Val,
    /// 1-based line (0 in JSON, which has no positions).
    pub line: usize,
}

/// A block: type, labels, body, line.
#[derive(Debug, Clone, PartialEq)]
pub struct Block {
    /// The block type (`resource`, `backend`, ...).
    pub ident: String,
    /// Its labels.
    pub labels: Vec<String>,
    /// Its body.
    pub body: BlockBody,
    /// 1-based line where it starts.
    pub line: usize,
}

/// A body: attributes by name and nested blocks in order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BlockBody {
    /// Attributes by name.
    pub attrs: BTreeMap<String, Attr>,
    /// Nested blocks, in order.
    pub blocks: Vec<Block>,
}

impl BlockBody {
    /// The attribute `name`.
    pub fn attr(&self, name: &str) -> Option<&Attr> {
        self.attrs.get(name)
    }

    /// The first nested block of type `ident`.
    pub fn block(&self, ident: &str) -> Option<&Block> {
        self.blocks.iter().find(|b| b.ident == ident)
    }

    /// The value at a dotted path (`point_in_time_recovery.enabled`): through nested blocks
    /// (the first of a type) and object values. `None` when absent.
    pub fn lookup(&self, path: &str) -> Option<Attr> {
        let mut steps = path.split('.');
        let first = steps.next()?;
        let rest: Vec<&str> = steps.collect();
        if rest.is_empty() {
            return self.attr(first).cloned();
        }
        if let Some(b) = self.block(first) {
            return b.body.lookup(&rest.join("."));
        }
        // An object (or, in JSON, a nested block written as an object or a list of one).
        let a = self.attr(first)?;
        let mut v = &a.value;
        for step in &rest {
            v = match v {
                Val::Obj(m) => m.get(*step)?,
                Val::List(l) => match l.first()? {
                    Val::Obj(m) => m.get(*step)?,
                    _ => return None,
                },
                _ => return None,
            };
        }
        // A nested value has no line of its own: the containing attribute's line.
        Some(Attr {
            value: v.clone(),
            line: a.line,
        })
    }
}

/// A file that could not be read as configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileError {
    /// 1-based line, when known.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// Parses a `.tf`, `.tf.json` or `terragrunt.hcl` file (by `name`) into its top-level blocks.
pub fn parse(name: &str, content: &[u8]) -> Result<Vec<Block>, FileError> {
    let err = |line: usize, message: String| FileError { line, message };
    if content.len() > MAX_TF_FILE {
        return Err(err(
            0,
            format!(
                "{} bytes, more than the {} MiB a configuration file may have; not analysed",
                content.len(),
                MAX_TF_FILE >> 20
            ),
        ));
    }
    let text = std::str::from_utf8(content).map_err(|e| {
        let line = content
            .get(..e.valid_up_to())
            .map_or(1, |b| b.iter().filter(|&&c| c == b'\n').count() + 1);
        err(
            line,
            "not UTF-8 text (a binary file?), as Terraform requires; not analysed".into(),
        )
    })?;
    if name.ends_with(".json") {
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| err(e.line(), format!("invalid JSON: {e}")))?;
        return Ok(json_blocks(&v));
    }
    if let Some(line) = crate::modules::too_deep(text) {
        return Err(err(line, "nested too deeply; not analysed".into()));
    }
    let body = hcl_edit::parser::parse_body(text)
        .map_err(|e| err(e.location().line(), format!("invalid HCL: {}", e.message())))?;
    let lines = Lines::new(text);
    Ok(convert_body(&body, text, &lines, 0).blocks)
}

struct Lines(Vec<usize>);

impl Lines {
    fn new(text: &str) -> Self {
        Lines(
            text.bytes()
                .enumerate()
                .filter(|&(_, b)| b == b'\n')
                .map(|(i, _)| i)
                .collect(),
        )
    }
    fn of(&self, span: Option<std::ops::Range<usize>>) -> usize {
        span.map_or(0, |r| self.0.partition_point(|&n| n < r.start) + 1)
    }
}

fn convert_body(body: &Body, text: &str, lines: &Lines, depth: usize) -> BlockBody {
    let mut out = BlockBody::default();
    if depth > MAX_DEPTH {
        return out;
    }
    for s in body.iter() {
        match s {
            Structure::Attribute(a) => {
                out.attrs.insert(
                    a.key.as_str().to_owned(),
                    Attr {
                        value: convert_expr(&a.value, text, depth),
                        line: lines.of(a.span()),
                    },
                );
            }
            Structure::Block(b) => out.blocks.push(Block {
                ident: b.ident.as_str().to_owned(),
                labels: b
                    .labels
                    .iter()
                    .map(|l| match l {
                        BlockLabel::String(s) => s.value().to_string(),
                        BlockLabel::Ident(i) => i.as_str().to_string(),
                    })
                    .collect(),
                body: convert_body(&b.body, text, lines, depth + 1),
                line: lines.of(b.span()),
            }),
        }
    }
    out
}

fn source_text(e: &Expression, text: &str) -> String {
    e.span()
        .and_then(|r| text.get(r))
        .map_or_else(|| "(expression)".to_owned(), |s| s.trim().to_owned())
}

fn convert_expr(e: &Expression, text: &str, depth: usize) -> Val {
    if depth > MAX_DEPTH {
        return Val::Expr(source_text(e, text));
    }
    match e {
        Expression::Null(_) => Val::Null,
        Expression::Bool(b) => Val::Bool(*b.value()),
        Expression::Number(n) => n
            .value()
            .as_f64()
            .map_or_else(|| Val::Expr(source_text(e, text)), Val::Num),
        Expression::String(s) => Val::Str(s.value().to_string()),
        Expression::Array(a) => {
            Val::List(a.iter().map(|x| convert_expr(x, text, depth + 1)).collect())
        }
        Expression::Object(o) => {
            let mut m = BTreeMap::new();
            for (k, v) in o.iter() {
                let key = match k {
                    ObjectKey::Ident(i) => i.as_str().to_owned(),
                    ObjectKey::Expression(Expression::String(s)) => s.value().to_string(),
                    ObjectKey::Expression(other) => source_text(other, text),
                };
                m.insert(key, convert_expr(v.expr(), text, depth + 1));
            }
            Val::Obj(m)
        }
        Expression::Traversal(t) => {
            // Keep `var.x` recognisable whatever the spacing.
            if let (Expression::Variable(root), [op]) = (&t.expr, t.operators.as_slice()) {
                if let TraversalOperator::GetAttr(name) = op.value() {
                    return Val::Expr(format!("{}.{}", root.as_str(), name.as_str()));
                }
            }
            Val::Expr(source_text(e, text))
        }
        _ => Val::Expr(source_text(e, text)),
    }
}

/// Terraform JSON: `{"resource": {"TYPE": {"NAME": {...}}}}`, `{"terraform": {"backend": {"s3":
/// {...}}}}`, `{"variable": {"NAME": {...}}}`, `{"module": {"NAME": {...}}}`; a block may be a
/// list of objects. Nested objects stay values (looked up through [`BlockBody::lookup`]), except
/// the blocks the rules read as blocks (`backend`, `cloud`, `lifecycle`).
fn json_blocks(v: &serde_json::Value) -> Vec<Block> {
    let mut out = Vec::new();
    let Some(top) = v.as_object() else {
        return out;
    };
    // Labels per block type: resource and data have two, module/variable/provider/output one.
    for (ident, value) in top {
        let nlabels = match ident.as_str() {
            "resource" | "data" => 2,
            "module" | "variable" | "provider" | "output" => 1,
            "terraform" | "locals" => 0,
            _ => continue,
        };
        labelled(ident, value, nlabels, &mut Vec::new(), &mut out);
    }
    out
}

fn each(v: &serde_json::Value) -> Vec<&serde_json::Value> {
    match v {
        serde_json::Value::Array(items) => items.iter().collect(),
        other => vec![other],
    }
}

fn labelled(
    ident: &str,
    v: &serde_json::Value,
    nlabels: usize,
    labels: &mut Vec<String>,
    out: &mut Vec<Block>,
) {
    for item in each(v) {
        if labels.len() == nlabels {
            if let Some(obj) = item.as_object() {
                out.push(Block {
                    ident: ident.to_owned(),
                    labels: labels.clone(),
                    body: json_body(obj, 0),
                    line: 0,
                });
            }
            continue;
        }
        let Some(obj) = item.as_object() else {
            continue;
        };
        for (label, inner) in obj {
            labels.push(label.clone());
            labelled(ident, inner, nlabels, labels, out);
            labels.pop();
        }
    }
}

fn json_body(obj: &serde_json::Map<String, serde_json::Value>, depth: usize) -> BlockBody {
    let mut body = BlockBody::default();
    for (k, v) in obj {
        match k.as_str() {
            "backend" | "cloud" | "lifecycle" if depth < MAX_DEPTH => {
                let mut nested = Vec::new();
                let n = usize::from(k == "backend");
                labelled(k, v, n, &mut Vec::new(), &mut nested);
                body.blocks.extend(nested);
            }
            _ => {
                body.attrs.insert(
                    k.clone(),
                    Attr {
                        value: json_val(v, depth + 1),
                        line: 0,
                    },
                );
            }
        }
    }
    body
}

fn json_val(v: &serde_json::Value, depth: usize) -> Val {
    use serde_json::Value as J;
    if depth > MAX_DEPTH {
        return Val::Expr("(nested too deeply)".into());
    }
    match v {
        J::Null => Val::Null,
        J::Bool(b) => Val::Bool(*b),
        J::Number(n) => n.as_f64().map_or(Val::Null, Val::Num),
        // JSON strings may hold templates: `"${var.x}"` is an expression.
        J::String(s) if s.contains("${") => Val::Expr(format!("\"{s}\"")),
        J::String(s) => Val::Str(s.clone()),
        J::Array(a) => Val::List(a.iter().map(|x| json_val(x, depth + 1)).collect()),
        J::Object(o) => Val::Obj(
            o.iter()
                .map(|(k, x)| (k.clone(), json_val(x, depth + 1)))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hcl_literals_expressions_blocks_and_lines() {
        let src = "resource \"aws_db_instance\" \"db\" {\n  deletion_protection = false\n  \
                   backup_retention_period = var.keep\n  name = \"${var.n}\"\n  lifecycle {\n    \
                   prevent_destroy = true\n  }\n  tags = { a = 1 }\n}\n";
        let blocks = parse("main.tf", src.as_bytes()).unwrap();
        let r = &blocks[0];
        assert_eq!(r.labels, ["aws_db_instance", "db"]);
        assert_eq!(r.line, 1);
        let dp = r.body.attr("deletion_protection").unwrap();
        assert_eq!((dp.value.clone(), dp.line), (Val::Bool(false), 2));
        let keep = r.body.attr("backup_retention_period").unwrap();
        assert_eq!(keep.value.variable(), Some("keep"));
        assert_eq!(r.body.attr("name").unwrap().value.variable(), Some("n"));
        let pd = r.body.lookup("lifecycle.prevent_destroy").unwrap();
        assert_eq!((pd.value.clone(), pd.line), (Val::Bool(true), 6));
        assert_eq!(r.body.lookup("tags.a").unwrap().value, Val::Num(1.0));
    }

    #[test]
    fn json_configuration_reads_like_hcl() {
        let src = r#"{"resource": {"aws_s3_bucket": {"b": {"force_destroy": true,
            "versioning": [{"enabled": true}], "lifecycle": {"prevent_destroy": true}}}},
            "terraform": {"backend": {"s3": {"bucket": "x", "encrypt": true}}},
            "variable": {"v": {"default": "${var.w}"}}}"#;
        let blocks = parse("main.tf.json", src.as_bytes()).unwrap();
        let b = blocks.iter().find(|b| b.ident == "resource").unwrap();
        assert_eq!(b.labels, ["aws_s3_bucket", "b"]);
        assert_eq!(
            b.body.lookup("versioning.enabled").unwrap().value,
            Val::Bool(true)
        );
        assert_eq!(
            b.body.lookup("lifecycle.prevent_destroy").unwrap().value,
            Val::Bool(true)
        );
        let t = blocks.iter().find(|b| b.ident == "terraform").unwrap();
        let backend = t.body.block("backend").unwrap();
        assert_eq!(backend.labels, ["s3"]);
        assert_eq!(backend.body.attr("encrypt").unwrap().value, Val::Bool(true));
        let v = blocks.iter().find(|b| b.ident == "variable").unwrap();
        assert_eq!(v.body.attr("default").unwrap().value.variable(), Some("w"));
    }

    #[test]
    fn hostile_files_are_errors_with_lines() {
        let e = parse("a.tf", b"resource \"x\" \"y\" {\n  a = \n").unwrap_err();
        assert!(e.line >= 2 && e.message.starts_with("invalid HCL"), "{e:?}");
        let e = parse("b.tf", b"ok = 1\n\xff\xfe\x00binary").unwrap_err();
        assert_eq!(e.line, 2);
        let deep = "a = ".to_owned() + &"[".repeat(5000);
        assert!(parse("c.tf", deep.as_bytes()).is_err());
        assert!(parse("d.tf.json", b"{nope").is_err());
        assert!(parse("e.tf.json", b"[1,2]").unwrap().is_empty());
    }
}
