//! Streaming reader for plan JSON (`terraform show -json PLANFILE`, Terraform 0.12+ and
//! OpenTofu). `resource_changes` is visited element by element, so memory is bounded by the
//! largest single resource change, never by the plan; everything else is skipped unparsed.
//!
//! The caller hands over the bytes as an [`std::io::BufRead`]; this module never opens files.

use std::fmt;
use std::io::{BufRead, Read};

use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

/// Lines of wrapper noise tolerated before the JSON starts.
const MAX_NOISE_LINES: usize = 200;
/// Bytes of wrapper noise tolerated before the JSON starts.
const MAX_NOISE_BYTES: usize = 64 * 1024;

/// One entry of `resource_changes`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ResourceChange {
    /// Full address, e.g. `module.db.aws_db_instance.main[0]`.
    pub address: String,
    /// The address before a `moved` block, when it differs.
    pub previous_address: Option<String>,
    /// Module address, absent for the root module.
    pub module_address: Option<String>,
    /// `managed` or `data`.
    pub mode: String,
    /// Resource type, e.g. `aws_db_instance`.
    #[serde(rename = "type")]
    pub resource_type: String,
    /// Resource name.
    pub name: String,
    /// `count` or `for_each` key (cty JSON), if any.
    pub index: Option<Value>,
    /// Provider, e.g. `registry.terraform.io/hashicorp/aws`.
    pub provider_name: String,
    /// Deposed key, for a deposed object.
    pub deposed: Option<String>,
    /// The planned change.
    pub change: Change,
    /// Why Terraform chose this action, e.g. `replace_because_tainted`.
    pub action_reason: Option<String>,
}

/// The `change` object of a resource change. Values stay raw JSON until a rule needs them.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Change {
    /// Terraform's action list, e.g. `["delete","create"]`.
    pub actions: Vec<String>,
    /// The prior object (`null` for create).
    pub before: Option<Box<RawValue>>,
    /// The planned object (`null` for delete).
    pub after: Option<Box<RawValue>>,
    /// Which planned attributes are unknown until apply.
    pub after_unknown: Option<Box<RawValue>>,
    /// Which prior attributes are sensitive.
    pub before_sensitive: Option<Box<RawValue>>,
    /// Which planned attributes are sensitive.
    pub after_sensitive: Option<Box<RawValue>>,
    /// Attribute paths that force replacement.
    pub replace_paths: Option<Vec<Vec<Value>>>,
    /// Present when the resource is being imported.
    pub importing: Option<Box<RawValue>>,
}

/// How a resource change is classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ChangeKind {
    /// Nothing changes (still reported when the resource is moved or imported).
    NoOp,
    /// A new object.
    Create,
    /// A data source read.
    Read,
    /// An in-place update.
    Update,
    /// Destroy the old object, then create the new one (`["delete","create"]`).
    ReplaceDestroyFirst,
    /// Create the new object, then destroy the old one (`create_before_destroy`).
    ReplaceCreateFirst,
    /// Destroy the object.
    Delete,
    /// Remove the object from state, leaving it running (`removed { destroy = false }`).
    Forget,
    /// Replace a tainted object while forgetting the old one (`["create","forget"]` in
    /// Terraform, `["forget","create"]` in OpenTofu).
    ForgetReplace,
    /// An action list this version of airlock does not know.
    Unknown,
}

impl ChangeKind {
    /// Classifies Terraform's action list.
    pub fn from_actions(actions: &[String]) -> ChangeKind {
        let a: Vec<&str> = actions.iter().map(String::as_str).collect();
        match a.as_slice() {
            ["no-op"] => ChangeKind::NoOp,
            ["create"] => ChangeKind::Create,
            ["read"] => ChangeKind::Read,
            ["update"] => ChangeKind::Update,
            ["delete", "create"] => ChangeKind::ReplaceDestroyFirst,
            ["create", "delete"] => ChangeKind::ReplaceCreateFirst,
            ["delete"] => ChangeKind::Delete,
            ["forget"] => ChangeKind::Forget,
            ["create", "forget"] | ["forget", "create"] => ChangeKind::ForgetReplace,
            _ => ChangeKind::Unknown,
        }
    }

    /// Stable lower-case name used in every output format.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::NoOp => "no-op",
            ChangeKind::Create => "create",
            ChangeKind::Read => "read",
            ChangeKind::Update => "update",
            ChangeKind::ReplaceDestroyFirst => "replace",
            ChangeKind::ReplaceCreateFirst => "replace-create-first",
            ChangeKind::Delete => "delete",
            ChangeKind::Forget => "forget",
            ChangeKind::ForgetReplace => "forget-replace",
            ChangeKind::Unknown => "unknown",
        }
    }

    /// Whether an existing object is destroyed (delete or either kind of replace).
    pub fn destroys(self) -> bool {
        matches!(
            self,
            ChangeKind::Delete | ChangeKind::ReplaceDestroyFirst | ChangeKind::ReplaceCreateFirst
        )
    }

    /// Whether an existing object stops being managed by this state in any way.
    pub fn removes_from_state(self) -> bool {
        self.destroys() || matches!(self, ChangeKind::Forget | ChangeKind::ForgetReplace)
    }
}

impl ResourceChange {
    /// The classification of this change.
    pub fn kind(&self) -> ChangeKind {
        ChangeKind::from_actions(&self.change.actions)
    }

    /// Whether this is a managed resource (not a data source).
    pub fn is_managed(&self) -> bool {
        self.mode != "data"
    }

    /// Whether the change imports an existing object.
    pub fn is_import(&self) -> bool {
        self.change.importing.as_ref().is_some_and(|r| r.get() != "null")
    }

    /// The previous address when a `moved` block changed it.
    pub fn moved_from(&self) -> Option<&str> {
        self.previous_address
            .as_deref()
            .filter(|p| !p.is_empty() && *p != self.address)
    }
}

/// Facts about the plan document besides its resource changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlanInfo {
    /// `format_version`, e.g. `1.2`.
    pub format_version: Option<String>,
    /// `terraform_version` of the producer.
    pub terraform_version: Option<String>,
    /// `errored` (Terraform ≥ 1.6): the plan is partial because planning failed.
    pub errored: Option<bool>,
    /// `applyable` (Terraform ≥ 1.8).
    pub applyable: Option<bool>,
    /// `complete` (Terraform ≥ 1.8).
    pub complete: Option<bool>,
    /// Number of `resource_changes` entries read.
    pub resource_changes: usize,
    /// Things worth telling the user that did not stop the read.
    pub warnings: Vec<ReadWarning>,
}

/// Something unusual about the input that did not stop the read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadWarning {
    /// The input was UTF-16 with this byte order and was transcoded.
    Utf16(&'static str),
    /// Lines before the JSON were skipped (CI wrapper noise).
    NoiseBefore {
        /// How many lines.
        lines: usize,
    },
    /// Non-whitespace bytes after the JSON were ignored.
    NoiseAfter {
        /// How many bytes.
        bytes: u64,
    },
    /// `format_version` is newer than the versions airlock knows.
    UnknownFormatVersion(String),
}

impl fmt::Display for ReadWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadWarning::Utf16(order) => write!(f, "input is UTF-16 ({order}); transcoded to UTF-8"),
            ReadWarning::NoiseBefore { lines } => write!(
                f,
                "skipped {lines} non-JSON line(s) before the plan JSON (CI wrapper output?)"
            ),
            ReadWarning::NoiseAfter { bytes } => write!(
                f,
                "ignored {bytes} non-JSON byte(s) after the plan JSON (CI wrapper output?)"
            ),
            ReadWarning::UnknownFormatVersion(v) => write!(
                f,
                "plan format_version {v} is newer than airlock knows (1.x); reading it best-effort"
            ),
        }
    }
}

/// Why a plan could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanError {
    /// No bytes at all.
    Empty,
    /// A binary plan file (a zip archive) instead of its JSON rendering.
    BinaryPlan,
    /// No line starting with `{` within the tolerated noise.
    NoJsonObject,
    /// The JSON is malformed or has a value of the wrong type.
    Syntax {
        /// 1-based line within the JSON (after skipped noise).
        line: usize,
        /// 1-based column.
        column: usize,
        /// What the JSON parser said.
        message: String,
    },
    /// Valid JSON, but not a plan; says what it looks like instead.
    NotAPlan(String),
    /// Reading the input failed.
    Io(String),
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const EXPECTED: &str = "expected the JSON output of `terraform show -json PLANFILE`";
        match self {
            PlanError::Empty => write!(f, "the input is empty; {EXPECTED}"),
            PlanError::BinaryPlan => write!(
                f,
                "the input is a binary plan file; pass it as a file path so airlock can run \
                 `terraform show -json` on it, or convert it yourself"
            ),
            PlanError::NoJsonObject => write!(
                f,
                "no JSON object found at the start of the input; {EXPECTED}"
            ),
            PlanError::Syntax {
                line,
                column,
                message,
            } => write!(
                f,
                "malformed plan JSON at line {line} column {column}: {message}; {EXPECTED}"
            ),
            PlanError::NotAPlan(what) => write!(f, "not a plan: {what}; {EXPECTED}"),
            PlanError::Io(e) => write!(f, "reading the plan failed: {e}"),
        }
    }
}

impl std::error::Error for PlanError {}

impl From<serde_json::Error> for PlanError {
    fn from(e: serde_json::Error) -> Self {
        if e.is_io() {
            return PlanError::Io(e.to_string());
        }
        // serde_json appends " at line L column C"; keep the message without it.
        let full = e.to_string();
        let message = match full.rfind(" at line ") {
            Some(i) => full.get(..i).unwrap_or(&full).to_string(),
            None => full,
        };
        PlanError::Syntax {
            line: e.line(),
            column: e.column(),
            message,
        }
    }
}

/// Reads a plan, calling `on_change` once per resource change in document order.
pub fn read_plan<R, F>(mut input: R, on_change: F) -> Result<PlanInfo, PlanError>
where
    R: BufRead,
    F: FnMut(ResourceChange),
{
    let head = input.fill_buf().map_err(io_err)?;
    if head.is_empty() {
        return Err(PlanError::Empty);
    }
    if head.starts_with(b"PK\x03\x04") {
        return Err(PlanError::BinaryPlan);
    }
    if head.starts_with(&[0xEF, 0xBB, 0xBF]) {
        input.consume(3);
        return read_utf8(input, on_change, Vec::new());
    }
    let utf16 = if head.starts_with(&[0xFF, 0xFE]) {
        input.consume(2);
        Some(Utf16Order::Little)
    } else if head.starts_with(&[0xFE, 0xFF]) {
        input.consume(2);
        Some(Utf16Order::Big)
    } else if head.len() >= 2 && head.get(1) == Some(&0) && head.first() != Some(&0) {
        Some(Utf16Order::Little)
    } else if head.len() >= 2 && head.first() == Some(&0) && head.get(1) != Some(&0) {
        Some(Utf16Order::Big)
    } else {
        None
    };
    match utf16 {
        Some(order) => {
            let warning = ReadWarning::Utf16(order.name());
            let reader = std::io::BufReader::with_capacity(
                64 * 1024,
                Utf16Reader {
                    inner: input,
                    order,
                    pending: Vec::new(),
                    pos: 0,
                },
            );
            read_utf8(reader, on_change, vec![warning])
        }
        None => read_utf8(input, on_change, Vec::new()),
    }
}

fn io_err(e: std::io::Error) -> PlanError {
    PlanError::Io(e.to_string())
}

fn read_utf8<R, F>(
    mut input: R,
    mut on_change: F,
    mut warnings: Vec<ReadWarning>,
) -> Result<PlanInfo, PlanError>
where
    R: BufRead,
    F: FnMut(ResourceChange),
{
    let noise = skip_noise(&mut input)?;
    if noise > 0 {
        warnings.push(ReadWarning::NoiseBefore { lines: noise });
    }
    let mut de = serde_json::Deserializer::from_reader(&mut input);
    let top = TopLevel {
        on_change: &mut on_change,
    };
    let seen = top.deserialize(&mut de)?;
    drop(de);
    let trailing = count_trailing(&mut input)?;
    if trailing > 0 {
        warnings.push(ReadWarning::NoiseAfter { bytes: trailing });
    }
    seen.into_info(warnings)
}

/// Skips whole lines until one whose first non-blank byte is `{`; returns how many.
fn skip_noise<R: BufRead>(input: &mut R) -> Result<usize, PlanError> {
    let mut lines = 0usize;
    let mut bytes = 0usize;
    let mut in_noise_line = false;
    let mut saw_anything = false;
    loop {
        let buf = input.fill_buf().map_err(io_err)?;
        if buf.is_empty() {
            return Err(if saw_anything {
                PlanError::NoJsonObject
            } else {
                PlanError::Empty
            });
        }
        if in_noise_line {
            let (n, done) = match buf.iter().position(|&b| b == b'\n') {
                Some(p) => (p + 1, true),
                None => (buf.len(), false),
            };
            input.consume(n);
            bytes += n;
            in_noise_line = !done;
        } else {
            match buf.iter().position(|b| !b.is_ascii_whitespace()) {
                None => {
                    let n = buf.len();
                    input.consume(n);
                }
                Some(p) => {
                    saw_anything = true;
                    let first = buf.get(p).copied();
                    input.consume(p);
                    if first == Some(b'{') {
                        return Ok(lines);
                    }
                    lines += 1;
                    in_noise_line = true;
                }
            }
        }
        if lines > MAX_NOISE_LINES || bytes > MAX_NOISE_BYTES {
            return Err(PlanError::NoJsonObject);
        }
    }
}

/// Counts non-whitespace bytes left after the JSON document.
fn count_trailing<R: BufRead>(input: &mut R) -> Result<u64, PlanError> {
    let mut count = 0u64;
    loop {
        let buf = input.fill_buf().map_err(io_err)?;
        if buf.is_empty() {
            return Ok(count);
        }
        count += buf.iter().filter(|b| !b.is_ascii_whitespace()).count() as u64;
        let n = buf.len();
        input.consume(n);
    }
}

#[derive(Default)]
struct Seen {
    keys: Vec<String>,
    format_version: Option<String>,
    terraform_version: Option<String>,
    errored: Option<bool>,
    applyable: Option<bool>,
    complete: Option<bool>,
    resource_changes: usize,
    has_resource_changes: bool,
    has_planned_values: bool,
}

impl Seen {
    fn into_info(self, mut warnings: Vec<ReadWarning>) -> Result<PlanInfo, PlanError> {
        let has = |k: &str| self.keys.iter().any(|s| s == k);
        if !self.has_planned_values && !self.has_resource_changes {
            let what = if has("lineage") || has("serial") {
                "this is a Terraform state file (it has lineage/serial)".to_string()
            } else if has("values") {
                "this is `terraform show -json` of a state, not of a plan (it has `values` but no \
                 `planned_values`)"
                    .to_string()
            } else if self.keys.is_empty() {
                "the JSON object is empty".to_string()
            } else {
                let mut keys: Vec<&str> = self.keys.iter().map(String::as_str).take(6).collect();
                if self.keys.len() > 6 {
                    keys.push("...");
                }
                format!(
                    "the JSON object has no `planned_values` or `resource_changes` (its keys: {})",
                    keys.join(", ")
                )
            };
            return Err(PlanError::NotAPlan(what));
        }
        if let Some(v) = &self.format_version {
            let major = v.split('.').next().and_then(|m| m.parse::<u32>().ok());
            if major.is_none_or(|m| m > 1) {
                warnings.push(ReadWarning::UnknownFormatVersion(v.clone()));
            }
        }
        Ok(PlanInfo {
            format_version: self.format_version,
            terraform_version: self.terraform_version,
            errored: self.errored,
            applyable: self.applyable,
            complete: self.complete,
            resource_changes: self.resource_changes,
            warnings,
        })
    }
}

struct TopLevel<'a, F> {
    on_change: &'a mut F,
}

impl<'de, F: FnMut(ResourceChange)> DeserializeSeed<'de> for TopLevel<'_, F> {
    type Value = Seen;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Seen, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, F: FnMut(ResourceChange)> Visitor<'de> for TopLevel<'_, F> {
    type Value = Seen;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object (a plan)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Seen, A::Error> {
        let mut seen = Seen::default();
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "format_version" => seen.format_version = map.next_value::<Option<String>>()?,
                "terraform_version" => {
                    seen.terraform_version = map.next_value::<Option<String>>()?
                }
                "errored" => seen.errored = map.next_value::<Option<bool>>()?,
                "applyable" => seen.applyable = map.next_value::<Option<bool>>()?,
                "complete" => seen.complete = map.next_value::<Option<bool>>()?,
                "planned_values" => {
                    seen.has_planned_values = true;
                    map.next_value::<IgnoredAny>()?;
                }
                "resource_changes" => {
                    seen.has_resource_changes = true;
                    seen.resource_changes += map.next_value_seed(Changes {
                        on_change: &mut *self.on_change,
                    })?;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            if seen.keys.len() < 64 {
                seen.keys.push(key);
            }
        }
        Ok(seen)
    }
}

struct Changes<'a, F> {
    on_change: &'a mut F,
}

impl<'de, F: FnMut(ResourceChange)> DeserializeSeed<'de> for Changes<'_, F> {
    type Value = usize;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<usize, D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de, F: FnMut(ResourceChange)> Visitor<'de> for Changes<'_, F> {
    type Value = usize;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of resource changes")
    }

    fn visit_none<E>(self) -> Result<usize, E> {
        Ok(0)
    }

    fn visit_unit<E>(self) -> Result<usize, E> {
        Ok(0)
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<usize, D::Error> {
        d.deserialize_seq(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<usize, A::Error> {
        let mut n = 0usize;
        while let Some(rc) = seq.next_element::<ResourceChange>()? {
            if rc.address.is_empty() {
                return Err(serde::de::Error::custom(format!(
                    "resource change #{} has no `address`",
                    n + 1
                )));
            }
            n += 1;
            (self.on_change)(rc);
        }
        Ok(n)
    }
}

#[derive(Clone, Copy)]
enum Utf16Order {
    Little,
    Big,
}

impl Utf16Order {
    fn name(self) -> &'static str {
        match self {
            Utf16Order::Little => "little-endian",
            Utf16Order::Big => "big-endian",
        }
    }
}

/// Transcodes UTF-16 to UTF-8 on the fly; unpaired surrogates become U+FFFD.
struct Utf16Reader<R> {
    inner: R,
    order: Utf16Order,
    pending: Vec<u8>,
    pos: usize,
}

impl<R: BufRead> Utf16Reader<R> {
    fn refill(&mut self) -> std::io::Result<()> {
        self.pending.clear();
        self.pos = 0;
        let mut units = Vec::new();
        // Read an even number of bytes; keep a trailing high surrogate for the next round.
        let mut raw = [0u8; 16 * 1024];
        let mut have = 0usize;
        loop {
            let buf = raw.get_mut(have..).unwrap_or(&mut []);
            if buf.is_empty() {
                break;
            }
            let n = self.inner.read(buf)?;
            if n == 0 {
                break;
            }
            have += n;
            if have % 2 == 0 {
                break;
            }
        }
        for pair in raw.get(..have).unwrap_or(&[]).chunks(2) {
            let unit = match (pair, self.order) {
                ([a, b], Utf16Order::Little) => u16::from_le_bytes([*a, *b]),
                ([a, b], Utf16Order::Big) => u16::from_be_bytes([*a, *b]),
                _ => 0xFFFD,
            };
            units.push(unit);
        }
        for c in char::decode_utf16(units) {
            let c = c.unwrap_or(char::REPLACEMENT_CHARACTER);
            let mut b = [0u8; 4];
            self.pending.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
        }
        Ok(())
    }
}

impl<R: BufRead> Read for Utf16Reader<R> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.pos >= self.pending.len() {
            self.refill()?;
        }
        let rest = self.pending.get(self.pos..).unwrap_or(&[]);
        let n = rest.len().min(out.len());
        if let (Some(dst), Some(src)) = (out.get_mut(..n), rest.get(..n)) {
            dst.copy_from_slice(src);
        }
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(bytes: &[u8]) -> Result<(PlanInfo, Vec<ResourceChange>), PlanError> {
        let mut out = Vec::new();
        let info = read_plan(bytes, |rc| out.push(rc))?;
        Ok((info, out))
    }

    const SMALL: &str = r#"{"format_version":"1.2","terraform_version":"1.11.4",
      "planned_values":{},"resource_changes":[
        {"address":"terraform_data.a","mode":"managed","type":"terraform_data","name":"a",
         "change":{"actions":["delete"],"before":{"input":"x"},"after":null}},
        {"address":"terraform_data.b","mode":"managed","type":"terraform_data","name":"b",
         "change":{"actions":["no-op"],"before":{},"after":{}}}],
      "errored":false}"#;

    #[test]
    fn reads_changes_in_order() {
        let (info, changes) = read(SMALL.as_bytes()).unwrap();
        assert_eq!(info.resource_changes, 2);
        assert_eq!(info.terraform_version.as_deref(), Some("1.11.4"));
        assert_eq!(info.errored, Some(false));
        assert!(info.warnings.is_empty());
        assert_eq!(changes[0].kind(), ChangeKind::Delete);
        assert_eq!(changes[1].kind(), ChangeKind::NoOp);
    }

    #[test]
    fn classifies_every_action_list() {
        let k = |a: &[&str]| {
            ChangeKind::from_actions(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        };
        assert_eq!(k(&["create"]), ChangeKind::Create);
        assert_eq!(k(&["read"]), ChangeKind::Read);
        assert_eq!(k(&["update"]), ChangeKind::Update);
        assert_eq!(k(&["delete", "create"]), ChangeKind::ReplaceDestroyFirst);
        assert_eq!(k(&["create", "delete"]), ChangeKind::ReplaceCreateFirst);
        assert_eq!(k(&["forget"]), ChangeKind::Forget);
        assert_eq!(k(&["create", "forget"]), ChangeKind::ForgetReplace);
        assert_eq!(k(&["forget", "create"]), ChangeKind::ForgetReplace);
        assert_eq!(k(&["explode"]), ChangeKind::Unknown);
        assert_eq!(k(&[]), ChangeKind::Unknown);
    }

    #[test]
    fn accepts_byte_order_marks() {
        let mut utf8 = vec![0xEF, 0xBB, 0xBF];
        utf8.extend_from_slice(SMALL.as_bytes());
        assert_eq!(read(&utf8).unwrap().1.len(), 2);

        for (bom, big) in [([0xFFu8, 0xFE], false), ([0xFE, 0xFF], true)] {
            let mut bytes = bom.to_vec();
            for unit in SMALL.encode_utf16() {
                let b = if big { unit.to_be_bytes() } else { unit.to_le_bytes() };
                bytes.extend_from_slice(&b);
            }
            let (info, changes) = read(&bytes).unwrap();
            assert_eq!(changes.len(), 2);
            assert!(matches!(info.warnings[0], ReadWarning::Utf16(_)));
        }
    }

    #[test]
    fn skips_wrapper_noise_with_a_warning() {
        let input = format!(
            "[command]/usr/bin/terraform show -json plan\n\n{SMALL}%0A\n::set-output name=exitcode::0\n"
        );
        let (info, changes) = read(input.as_bytes()).unwrap();
        assert_eq!(changes.len(), 2);
        assert_eq!(
            info.warnings,
            vec![
                ReadWarning::NoiseBefore { lines: 1 },
                ReadWarning::NoiseAfter { bytes: 31 }
            ]
        );
    }

    #[test]
    fn hostile_inputs_are_clear_errors() {
        assert_eq!(read(b"").unwrap_err(), PlanError::Empty);
        assert_eq!(read(b"  \n\n ").unwrap_err(), PlanError::Empty);
        assert_eq!(read(b"PK\x03\x04rest").unwrap_err(), PlanError::BinaryPlan);
        assert_eq!(read(b"[1,2,3]").unwrap_err(), PlanError::NoJsonObject);
        assert!(matches!(read(b"{\"format_version\":").unwrap_err(), PlanError::Syntax { .. }));
        let truncated = &SMALL.as_bytes()[..SMALL.len() / 2];
        assert!(matches!(read(truncated).unwrap_err(), PlanError::Syntax { .. }));
        let deep = format!("{{\"x\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(read(deep.as_bytes()).is_err());
        let deep_change = format!(
            "{{\"resource_changes\":[{{\"address\":\"a\",\"change\":{{\"before\":{}1{}}}}}]}}",
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        // Kept raw (not recursed into) until a rule needs it: no stack overflow either way.
        let _ = read(deep_change.as_bytes());
        let huge = r#"{"planned_values":{},"resource_changes":[{"address":"a","index":1e999999}]}"#;
        assert!(matches!(read(huge.as_bytes()).unwrap_err(), PlanError::Syntax { .. }));
        let big_int = r#"{"planned_values":{},"resource_changes":[{"address":"a","index":123456789012345678901234567890}]}"#;
        assert!(read(big_int.as_bytes()).is_ok());
        let wrong = r#"{"planned_values":{},"resource_changes":[{"address":"a","change":{"actions":"delete"}}]}"#;
        let err = read(wrong.as_bytes()).unwrap_err().to_string();
        assert!(err.contains("invalid type"), "{err}");
        let not_array = r#"{"resource_changes":{"a":1}}"#;
        assert!(read(not_array.as_bytes()).is_err());
        let no_address = r#"{"resource_changes":[{"change":{}}]}"#;
        assert!(read(no_address.as_bytes()).unwrap_err().to_string().contains("no `address`"));
    }

    #[test]
    fn non_plans_say_what_they_are() {
        let state = r#"{"version":4,"terraform_version":"1.11.4","serial":3,"lineage":"x","resources":[]}"#;
        let e = read(state.as_bytes()).unwrap_err().to_string();
        assert!(e.contains("state file"), "{e}");
        let shown_state = r#"{"format_version":"1.0","values":{}}"#;
        let e = read(shown_state.as_bytes()).unwrap_err().to_string();
        assert!(e.contains("of a state"), "{e}");
        let other = r#"{"name":"package","version":"1.0.0"}"#;
        let e = read(other.as_bytes()).unwrap_err().to_string();
        assert!(e.contains("name, version"), "{e}");
        assert!(e.contains("terraform show -json"), "{e}");
    }

    #[test]
    fn null_resource_changes_and_imports_and_moves() {
        let plan = r#"{"planned_values":{},"resource_changes":null}"#;
        assert_eq!(read(plan.as_bytes()).unwrap().0.resource_changes, 0);
        let plan = r#"{"resource_changes":[
          {"address":"a.b","previous_address":"a.old","change":{"actions":["no-op"],"importing":{"id":"i-1"}}},
          {"address":"a.c","previous_address":"a.c","change":{"actions":["update"],"importing":null}}]}"#;
        let (_, ch) = read(plan.as_bytes()).unwrap();
        assert!(ch[0].is_import());
        assert_eq!(ch[0].moved_from(), Some("a.old"));
        assert!(!ch[1].is_import());
        assert_eq!(ch[1].moved_from(), None);
    }
}
