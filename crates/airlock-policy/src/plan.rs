//! Streaming reader for plan JSON (`terraform show -json PLANFILE`, Terraform 0.12+ and
//! OpenTofu). `resource_changes` is visited element by element, so memory is bounded by the
//! largest single resource change, never by the plan; everything else is skipped unparsed.
//!
//! The caller hands over the bytes as an [`std::io::BufRead`]; this module never opens files.

use std::fmt;
use std::io::{BufRead, Read};

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
    /// Terraform's action list, e.g. `["delete","create"]` (at most [`MAX_ACTIONS`]).
    #[serde(deserialize_with = "actions")]
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
    /// Attribute paths that force replacement (at most [`MAX_REPLACE_PATHS`] of
    /// [`MAX_PATH_STEPS`] steps; a step that is neither a string nor a number reads as `null`).
    #[serde(deserialize_with = "replace_paths")]
    pub replace_paths: Option<Vec<Vec<Value>>>,
    /// Present when the resource is being imported.
    pub importing: Option<Box<RawValue>>,
}

/// Most actions a change may list (Terraform's have one or two).
pub const MAX_ACTIONS: usize = 4;
/// Most replace paths a change may list, and steps a path may have.
pub const MAX_REPLACE_PATHS: usize = 1_000;
/// See [`MAX_REPLACE_PATHS`].
pub const MAX_PATH_STEPS: usize = 100;
/// Most root outputs or variables a plan may list (real configurations have tens to hundreds).
pub const MAX_ROOT_NAMES: usize = 10_000;

/// The values of a plan JSON are the planner's, and a JSON tree takes 16-30 bytes of memory per
/// byte of text: the lists the readers keep are read with a bound, as they come, never built
/// first and counted after.
pub(crate) fn bounded_list<'de, D, T>(
    d: D,
    max: usize,
    what: &'static str,
) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct V<T> {
        max: usize,
        what: &'static str,
        _t: std::marker::PhantomData<T>,
    }
    impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for V<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "a list of at most {} {}", self.max, self.what)
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut s: A) -> Result<Vec<T>, A::Error> {
            let mut out = Vec::new();
            while let Some(x) = s.next_element()? {
                if out.len() == self.max {
                    return Err(serde::de::Error::custom(format!(
                        "more than {} {}",
                        self.max, self.what
                    )));
                }
                out.push(x);
            }
            Ok(out)
        }
    }
    d.deserialize_seq(V {
        max,
        what,
        _t: std::marker::PhantomData,
    })
}

fn actions<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    bounded_list(d, MAX_ACTIONS, "actions")
}

/// A string or a number of a planner's JSON (a replace path's step, a module manifest's
/// field); anything else reads as `null`, skipped unbuilt (a tree takes 16-30 bytes per byte).
pub(crate) struct Scalar(pub(crate) Value);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a number")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(Value::String(v.to_owned())))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(Value::from(v)))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(Value::from(v)))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar(Value::from(v)))
            }
            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Scalar, E> {
                Ok(Scalar(Value::Null))
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<Scalar, E> {
                Ok(Scalar(Value::Null))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut s: A) -> Result<Scalar, A::Error> {
                while s.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(Scalar(Value::Null))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Scalar, A::Error> {
                while m
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(Scalar(Value::Null))
            }
        }
        d.deserialize_any(V)
    }
}

/// One replace path, at most [`MAX_PATH_STEPS`] steps.
struct Path(Vec<Value>);

impl<'de> Deserialize<'de> for Path {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let steps: Vec<Scalar> = bounded_list(d, MAX_PATH_STEPS, "steps in a replace path")?;
        Ok(Path(steps.into_iter().map(|s| s.0).collect()))
    }
}

fn replace_paths<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Vec<Vec<Value>>>, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Option<Vec<Vec<Value>>>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("replace paths")
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            let paths: Vec<Path> = bounded_list(d, MAX_REPLACE_PATHS, "replace paths")?;
            Ok(Some(paths.into_iter().map(|p| p.0).collect()))
        }
    }
    d.deserialize_option(V)
}

/// `output_changes` of a plan JSON: each root output's name and actions, in name order (values
/// are not read). Each entry is a change itself (`{"actions": [...], "before": ...}`), not
/// wrapped in `change` as resource changes are. At most [`MAX_ROOT_NAMES`].
pub fn output_changes(plan_json: &[u8]) -> Result<Vec<(String, Vec<String>)>, String> {
    #[derive(Deserialize)]
    struct Out {
        #[serde(deserialize_with = "actions")]
        actions: Vec<String>,
    }
    #[derive(Deserialize)]
    struct Plan {
        #[serde(default)]
        output_changes: Names<Out>,
    }
    let p: Plan = serde_json::from_slice(plan_json).map_err(|e| e.to_string())?;
    Ok(p.output_changes
        .0
        .into_iter()
        .map(|(n, o)| (n, o.actions))
        .collect())
}

/// The managed objects of a plan JSON's `prior_state` (the state the binary plan was made
/// from, as Terraform renders it), by address and deposed key, their `values` kept as raw
/// text borrowed from the plan.
#[derive(Debug)]
pub struct PriorObjects<'a>(
    std::collections::HashMap<(String, Option<String>), Option<&'a RawValue>>,
);

/// Values longer than this are compared as text only (a JSON tree of a value costs 16-30
/// bytes of memory per byte of its text).
const MAX_PARSED_VALUE: usize = 4 << 20;

/// Reads `prior_state.values` of a plan JSON: every managed resource instance of every module.
/// An instance listed twice is an error (Terraform lists each once).
pub fn prior_objects(plan_json: &[u8]) -> Result<PriorObjects<'_>, String> {
    #[derive(Deserialize)]
    struct Plan<'a> {
        #[serde(borrow, default)]
        prior_state: Option<State<'a>>,
    }
    #[derive(Deserialize)]
    struct State<'a> {
        #[serde(borrow, default)]
        values: Option<Values<'a>>,
    }
    #[derive(Deserialize)]
    struct Values<'a> {
        #[serde(borrow, default)]
        root_module: Option<Module<'a>>,
    }
    #[derive(Deserialize)]
    struct Module<'a> {
        #[serde(borrow, default)]
        resources: Vec<Resource<'a>>,
        #[serde(borrow, default)]
        child_modules: Vec<Module<'a>>,
    }
    #[derive(Deserialize)]
    struct Resource<'a> {
        address: String,
        mode: String,
        #[serde(default)]
        deposed_key: Option<String>,
        #[serde(borrow)]
        values: Option<&'a RawValue>,
    }
    let plan: Plan = serde_json::from_slice(plan_json).map_err(|e| e.to_string())?;
    let mut out = std::collections::HashMap::new();
    let mut modules: Vec<Module> = plan
        .prior_state
        .and_then(|s| s.values)
        .and_then(|v| v.root_module)
        .into_iter()
        .collect();
    while let Some(m) = modules.pop() {
        for r in m.resources.into_iter().filter(|r| r.mode == "managed") {
            let key = (r.address, r.deposed_key.filter(|d| !d.is_empty()));
            if out.insert(key.clone(), r.values).is_some() {
                return Err(format!(
                    "prior_state lists {}{} twice",
                    key.0,
                    key.1.map(|d| format!(" (deposed {d})")).unwrap_or_default()
                ));
            }
        }
        modules.extend(m.child_modules);
    }
    Ok(PriorObjects(out))
}

impl PriorObjects<'_> {
    /// The address and deposed key of every object.
    pub fn keys(&self) -> impl Iterator<Item = &(String, Option<String>)> {
        self.0.keys()
    }

    /// A managed change starts from the plan's prior state: its `before` is the prior state's
    /// object at its address (Terraform plans every change from it, and applies a delete with
    /// the change's `before`, not with the state). A binary plan whose changes start from other
    /// objects renders as such a JSON, so this ties what reviewers read as "before" (and what
    /// the gate compares with "after") to the state the apply starts from. Changes that start
    /// from nothing (create, read) have no `before`.
    pub fn check_before(&self, rc: &ResourceChange) -> Result<(), String> {
        if !rc.is_managed() {
            return Ok(());
        }
        let deposed = rc.deposed.as_deref().filter(|d| !d.is_empty());
        let what = match deposed {
            Some(d) => format!("{} (deposed {d})", rc.address),
            None => rc.address.clone(),
        };
        let Some(before) = rc.change.before.as_deref().filter(|b| b.get() != "null") else {
            // Only a create starts from nothing: an update or delete from no object reaches
            // the provider as a create, and the rules that read the prior value see none.
            return match rc.change.actions.as_slice() {
                [a] if a == "create" => Ok(()),
                _ => Err(format!(
                    "the {} of {what} starts from no object",
                    rc.change.actions.join("+")
                )),
            };
        };
        let Some(prior) = self
            .0
            .get(&(rc.address.clone(), deposed.map(str::to_owned)))
        else {
            return Err(format!(
                "the change of {what} starts from an object the plan's prior state does not have"
            ));
        };
        // Terraform leaves out the `values` of an object without attributes (its `before` is
        // `{}`).
        let empty = RawValue::from_string("{}".to_owned()).map_err(|e| e.to_string())?;
        if same_json(before, prior.unwrap_or(&empty)) {
            return Ok(());
        }
        Err(format!(
            "the change of {what} starts from another object than the plan's prior state has there (its \"before\" differs)"
        ))
    }
}

/// The same JSON value: the same text, or (each at most [`MAX_PARSED_VALUE`]) the same value
/// spelled otherwise.
fn same_json(a: &RawValue, b: &RawValue) -> bool {
    let (a, b) = (a.get(), b.get());
    a == b
        || (a.len() <= MAX_PARSED_VALUE
            && b.len() <= MAX_PARSED_VALUE
            && matches!(
                (serde_json::from_str::<Value>(a), serde_json::from_str::<Value>(b)),
                (Ok(x), Ok(y)) if x == y
            ))
}

/// A root variable of a plan JSON: its planned value and, from the configuration, its default
/// and whether it is sensitive. Values stay raw text.
#[derive(Debug)]
pub struct RootVariable {
    /// The variable's name.
    pub name: String,
    /// The planned value.
    pub value: Box<RawValue>,
    /// The configuration's default, if it declares one.
    pub default: Option<Box<RawValue>>,
    /// Declared `sensitive`.
    pub sensitive: bool,
}

/// Values larger than this are never the default (compared as text, not as JSON).
const MAX_COMPARED_VALUE: usize = 64 * 1024;

impl RootVariable {
    /// The planned value as compact JSON, as an approver reads it (Go's `\u003e` escapes
    /// undone), on one line, at most `max` characters; one over 64 KiB is shown as sent.
    pub fn shown(&self, max: usize) -> String {
        let raw = self.value.get();
        let text = match raw.len() <= MAX_COMPARED_VALUE {
            true => serde_json::from_str::<Value>(raw)
                .map_or_else(|_| raw.to_owned(), |v| v.to_string()),
            false => raw.chars().take(max).collect(),
        };
        text.chars().filter(|c| !c.is_control()).take(max).collect()
    }

    /// Whether the planned value is the declared default (the same JSON value; one over
    /// 64 KiB is compared as text, so a large default written differently counts as set).
    pub fn is_default(&self) -> bool {
        let Some(default) = &self.default else {
            return false;
        };
        let (a, b) = (self.value.get(), default.get());
        if a.len() > MAX_COMPARED_VALUE || b.len() > MAX_COMPARED_VALUE {
            return a == b;
        }
        match (
            serde_json::from_str::<Value>(a),
            serde_json::from_str::<Value>(b),
        ) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        }
    }
}

/// The root variables of a plan JSON (`variables`, with `configuration.root_module.variables`
/// for defaults and sensitivity), in name order; at most [`MAX_ROOT_NAMES`] of each.
pub fn root_variables(plan_json: &[u8]) -> Result<Vec<RootVariable>, String> {
    #[derive(Deserialize)]
    struct Planned {
        #[serde(default)]
        value: Option<Box<RawValue>>,
    }
    #[derive(Deserialize)]
    struct Declared {
        #[serde(default)]
        default: Option<Box<RawValue>>,
        #[serde(default)]
        sensitive: bool,
    }
    #[derive(Deserialize, Default)]
    struct Root {
        #[serde(default)]
        variables: Names<Declared>,
    }
    #[derive(Deserialize, Default)]
    struct Configuration {
        #[serde(default)]
        root_module: Root,
    }
    #[derive(Deserialize)]
    struct Plan {
        #[serde(default)]
        variables: Names<Planned>,
        #[serde(default)]
        configuration: Configuration,
    }
    let plan: Plan = serde_json::from_slice(plan_json).map_err(|e| e.to_string())?;
    let mut declared: std::collections::BTreeMap<String, Declared> = plan
        .configuration
        .root_module
        .variables
        .0
        .into_iter()
        .collect();
    Ok(plan
        .variables
        .0
        .into_iter()
        .map(|(name, planned)| {
            let d = declared.remove(&name);
            RootVariable {
                value: planned
                    .value
                    .unwrap_or_else(|| RawValue::from_string("null".into()).unwrap_or_default()),
                default: d.as_ref().and_then(|d| d.default.clone()),
                sensitive: d.is_some_and(|d| d.sensitive),
                name,
            }
        })
        .collect())
}

/// A JSON object read as name-value pairs sorted by name, at most [`MAX_ROOT_NAMES`] entries
/// (a name twice keeps the last, as Go's map and serde's would).
struct Names<T>(Vec<(String, T)>);

impl<T> Default for Names<T> {
    fn default() -> Self {
        Names(Vec::new())
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Names<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for V<T> {
            type Value = Names<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "an object of at most {MAX_ROOT_NAMES} names")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<Names<T>, A::Error> {
                let mut out = std::collections::BTreeMap::new();
                while let Some((k, v)) = m.next_entry::<String, T>()? {
                    out.insert(k, v);
                    if out.len() > MAX_ROOT_NAMES {
                        return Err(serde::de::Error::custom(format!(
                            "more than {MAX_ROOT_NAMES} names"
                        )));
                    }
                }
                Ok(Names(out.into_iter().collect()))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
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
        self.change
            .importing
            .as_ref()
            .is_some_and(|r| r.get() != "null")
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
            ReadWarning::Utf16(order) => {
                write!(f, "input is UTF-16 ({order}); transcoded to UTF-8")
            }
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
        /// Byte offset in the JSON text (after a byte-order mark and skipped noise).
        offset: u64,
        /// What is wrong.
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
            PlanError::Syntax { offset, message } => write!(
                f,
                "malformed plan JSON at byte {offset}: {message}; {EXPECTED}"
            ),
            PlanError::NotAPlan(what) => write!(f, "not a plan: {what}; {EXPECTED}"),
            PlanError::Io(e) => write!(f, "reading the plan failed: {e}"),
        }
    }
}

impl std::error::Error for PlanError {}

/// Which array of the plan JSON a read visits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Section {
    /// `resource_changes`: what an apply does to the infrastructure.
    #[default]
    ResourceChanges,
    /// `resource_drift`: what the refresh found changed outside Terraform. In a refresh-only
    /// plan it is what an apply records in the state (its `resource_changes` is empty).
    ResourceDrift,
}

impl Section {
    /// The array's key.
    pub fn key(self) -> &'static str {
        match self {
            Section::ResourceChanges => "resource_changes",
            Section::ResourceDrift => "resource_drift",
        }
    }
}

/// Reads a plan, calling `on_change` once per resource change in document order.
pub fn read_plan<R, F>(input: R, on_change: F) -> Result<PlanInfo, PlanError>
where
    R: BufRead,
    F: FnMut(ResourceChange),
{
    read_plan_section(input, Section::ResourceChanges, on_change)
}

/// Reads a plan, calling `on_change` once per element of `section` in document order (the
/// entries of `resource_drift` have the shape of `resource_changes` entries).
pub fn read_plan_section<R, F>(
    mut input: R,
    section: Section,
    on_change: F,
) -> Result<PlanInfo, PlanError>
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
        return read_utf8(input, section, on_change, Vec::new());
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
            read_utf8(reader, section, on_change, vec![warning])
        }
        None => read_utf8(input, section, on_change, Vec::new()),
    }
}

/// The plan's JSON text alone, for consumers that need the whole document (Rego): byte-order
/// marks and UTF-16 are decoded and wrapper noise before and after the JSON is cut off, with
/// the same warnings [`read_plan`] gives. This holds the whole plan in memory.
pub fn plan_text(bytes: &[u8]) -> Result<(String, Vec<ReadWarning>), PlanError> {
    let mut warnings = Vec::new();
    let decoded: std::borrow::Cow<'_, [u8]> =
        if let Some(rest) = bytes.strip_prefix(&[0xEF, 0xBB, 0xBF]) {
            rest.into()
        } else if bytes.starts_with(&[0xFF, 0xFE])
            || bytes.starts_with(&[0xFE, 0xFF])
            || (bytes.len() >= 2 && (bytes.get(1) == Some(&0)) != (bytes.first() == Some(&0)))
        {
            let mut out = Vec::with_capacity(bytes.len() / 2);
            let mut r = read_plan_transcoder(bytes);
            r.read_to_end(&mut out).map_err(io_err)?;
            warnings.push(ReadWarning::Utf16(
                if bytes.starts_with(&[0xFE, 0xFF]) || bytes.first() == Some(&0) {
                    "big-endian"
                } else {
                    "little-endian"
                },
            ));
            out.into()
        } else {
            bytes.into()
        };
    let mut input: &[u8] = &decoded;
    let noise = skip_noise(&mut input)?;
    if noise > 0 {
        warnings.push(ReadWarning::NoiseBefore { lines: noise });
    }
    let mut scan = Scanner::default();
    let end = match scan.feed(input) {
        Ok(Some(end)) => end,
        Ok(None) => {
            return Err(PlanError::Syntax {
                offset: input.len() as u64,
                message: "unexpected end of input: the plan JSON is truncated".into(),
            })
        }
        Err(message) => {
            return Err(PlanError::Syntax {
                offset: scan.error_at as u64,
                message: message.into(),
            })
        }
    };
    let (json, rest) = input.split_at(end.min(input.len()));
    let trailing = rest.iter().filter(|b| !b.is_ascii_whitespace()).count() as u64;
    if trailing > 0 {
        warnings.push(ReadWarning::NoiseAfter { bytes: trailing });
    }
    let text = String::from_utf8(json.to_vec()).map_err(|e| PlanError::Syntax {
        offset: e.utf8_error().valid_up_to() as u64,
        message: "invalid UTF-8".into(),
    })?;
    Ok((text, warnings))
}

fn read_plan_transcoder(bytes: &[u8]) -> Utf16Reader<&[u8]> {
    let (order, body) = if let Some(rest) = bytes.strip_prefix(&[0xFF, 0xFE]) {
        (Utf16Order::Little, rest)
    } else if let Some(rest) = bytes.strip_prefix(&[0xFE, 0xFF]) {
        (Utf16Order::Big, rest)
    } else if bytes.first() == Some(&0) {
        (Utf16Order::Big, bytes)
    } else {
        (Utf16Order::Little, bytes)
    };
    Utf16Reader {
        inner: body,
        order,
        pending: Vec::new(),
        pos: 0,
    }
}

fn io_err(e: std::io::Error) -> PlanError {
    PlanError::Io(e.to_string())
}

fn read_utf8<R, F>(
    mut input: R,
    section: Section,
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
    let mut stream = Stream::new(input);
    let seen = read_top_level(&mut stream, section, &mut on_change)?;
    let trailing = stream.count_trailing()?;
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

/// Nesting deeper than this is refused (Terraform's own plans stay far below it).
const MAX_DEPTH: usize = 10_000;

/// A window over the input. Values the reader keeps (one resource change, a top-level scalar)
/// are held whole in `buf`; everything else is scanned and dropped chunk by chunk, so memory is
/// bounded by the largest kept value plus one input chunk.
struct Stream<R> {
    input: R,
    buf: Vec<u8>,
    /// Start of the unconsumed bytes in `buf`.
    pos: usize,
    /// Input offset of `buf[0]`.
    base: u64,
    eof: bool,
}

impl<R: BufRead> Stream<R> {
    fn new(input: R) -> Self {
        Stream {
            input,
            buf: Vec::new(),
            pos: 0,
            base: 0,
            eof: false,
        }
    }

    fn offset(&self) -> u64 {
        self.base + self.pos as u64
    }

    fn syntax(&self, message: impl Into<String>) -> PlanError {
        PlanError::Syntax {
            offset: self.offset(),
            message: message.into(),
        }
    }

    /// Drops `buf[..keep_from]` and appends the next input chunk. False at end of input.
    fn fill(&mut self, keep_from: usize) -> Result<bool, PlanError> {
        if keep_from > 0 {
            self.buf.drain(..keep_from);
            self.base += keep_from as u64;
            self.pos = self.pos.saturating_sub(keep_from);
        }
        if self.eof {
            return Ok(false);
        }
        let chunk = self.input.fill_buf().map_err(io_err)?;
        if chunk.is_empty() {
            self.eof = true;
            return Ok(false);
        }
        self.buf.extend_from_slice(chunk);
        let n = chunk.len();
        self.input.consume(n);
        Ok(true)
    }

    /// The next non-whitespace byte, without consuming it.
    fn peek(&mut self) -> Result<Option<u8>, PlanError> {
        loop {
            while let Some(&b) = self.buf.get(self.pos) {
                if b.is_ascii_whitespace() {
                    self.pos += 1;
                } else {
                    return Ok(Some(b));
                }
            }
            if !self.fill(self.pos)? {
                return Ok(None);
            }
        }
    }

    fn expect(&mut self, want: u8, what: &str) -> Result<(), PlanError> {
        match self.peek()? {
            Some(b) if b == want => {
                self.pos += 1;
                Ok(())
            }
            Some(_) => Err(self.syntax(format!("expected {what}"))),
            None => Err(self.syntax(format!("unexpected end of input, expected {what}"))),
        }
    }

    /// Scans one JSON value starting at the next non-whitespace byte. With `keep`, the value's
    /// bytes stay in `buf` and their range is returned (valid until the next call); otherwise
    /// they are dropped as the scan goes.
    fn value(&mut self, keep: bool) -> Result<std::ops::Range<usize>, PlanError> {
        if self.peek()?.is_none() {
            return Err(self.syntax("unexpected end of input, expected a value"));
        }
        let mut start = self.pos;
        let mut scan = Scanner::default();
        let mut at = start;
        loop {
            match scan.feed(self.buf.get(at..).unwrap_or(&[])) {
                Err(msg) => {
                    self.pos = at + scan.error_at;
                    return Err(self.syntax(msg));
                }
                Ok(Some(len)) => {
                    self.pos = at + len;
                    return Ok(start..self.pos);
                }
                Ok(None) => {
                    // Keep the value's bytes only when asked; drop everything before it.
                    let keep_from = if keep { start } else { self.buf.len() };
                    at = self.buf.len() - keep_from;
                    start -= keep_from.min(start);
                    self.pos = self.buf.len();
                    if !self.fill(keep_from)? {
                        return if scan.at_end() {
                            Ok(start..self.pos)
                        } else {
                            Err(self.syntax("unexpected end of input: the plan JSON is truncated"))
                        };
                    }
                }
            }
        }
    }

    /// Parses a kept value with serde, reporting errors at their input offset.
    fn parse<'a, T: Deserialize<'a>>(
        &'a self,
        range: std::ops::Range<usize>,
        context: &dyn Fn() -> String,
    ) -> Result<T, PlanError> {
        let bytes = self.buf.get(range.clone()).unwrap_or(&[]);
        serde_json::from_slice(bytes).map_err(|e| {
            let within = offset_of(bytes, e.line(), e.column());
            let message = e.to_string();
            let message = match message.rfind(" at line ") {
                Some(i) => message.get(..i).unwrap_or(&message).to_string(),
                None => message,
            };
            PlanError::Syntax {
                offset: self.base + (range.start + within) as u64,
                message: format!("{}: {message}", context()),
            }
        })
    }

    /// Counts non-whitespace bytes left after the JSON document.
    fn count_trailing(&mut self) -> Result<u64, PlanError> {
        let mut count = 0u64;
        loop {
            count += self
                .buf
                .get(self.pos..)
                .unwrap_or(&[])
                .iter()
                .filter(|b| !b.is_ascii_whitespace())
                .count() as u64;
            self.pos = self.buf.len();
            if !self.fill(self.pos)? {
                return Ok(count);
            }
        }
    }
}

/// Byte offset of serde_json's 1-based (line, column) within `bytes`.
fn offset_of(bytes: &[u8], line: usize, column: usize) -> usize {
    let mut offset = 0usize;
    for _ in 1..line {
        match memchr::memchr(b'\n', bytes.get(offset..).unwrap_or(&[])) {
            Some(p) => offset += p + 1,
            None => break,
        }
    }
    (offset + column.saturating_sub(1)).min(bytes.len())
}

/// A resumable scanner that finds where one JSON value ends. It checks strings and bracket
/// nesting; the full grammar is checked only for values that are then parsed.
#[derive(Default)]
struct Scanner {
    /// Open brackets, `true` for `{`.
    stack: Vec<bool>,
    in_string: bool,
    escape: bool,
    started: bool,
    /// A scalar (number or literal) outside any bracket.
    bare: bool,
    /// Offset of the error within the last fed slice.
    error_at: usize,
}

impl Scanner {
    /// Feeds the next bytes; returns how much of `data` the value still takes if it ends in
    /// `data`, or `None` if it continues past it.
    fn feed(&mut self, data: &[u8]) -> Result<Option<usize>, &'static str> {
        let mut i = 0usize;
        while i < data.len() {
            if self.escape {
                self.escape = false;
                i += 1;
                continue;
            }
            if self.in_string {
                match memchr::memchr2(b'"', b'\\', data.get(i..).unwrap_or(&[])) {
                    None => return Ok(None),
                    Some(p) => {
                        i += p;
                        if data.get(i) == Some(&b'\\') {
                            self.escape = true;
                        } else {
                            self.in_string = false;
                            if self.stack.is_empty() {
                                return Ok(Some(i + 1));
                            }
                        }
                        i += 1;
                    }
                }
                continue;
            }
            let b = data.get(i).copied().unwrap_or(b' ');
            if self.bare {
                if matches!(b, b',' | b'}' | b']') || b.is_ascii_whitespace() {
                    return Ok(Some(i));
                }
                i += 1;
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'{' | b'[' => {
                    if self.stack.len() >= MAX_DEPTH {
                        self.error_at = i;
                        return Err("nesting is too deep");
                    }
                    self.stack.push(b == b'{');
                }
                b'}' | b']' => match self.stack.pop() {
                    Some(open) if open == (b == b'}') => {
                        if self.stack.is_empty() {
                            return Ok(Some(i + 1));
                        }
                    }
                    _ => {
                        self.error_at = i;
                        return Err("mismatched bracket");
                    }
                },
                _ if !self.started => self.bare = true,
                _ => {}
            }
            self.started = true;
            i += 1;
        }
        Ok(None)
    }

    /// At end of input: a bare scalar ends there; anything else is truncated.
    fn at_end(&self) -> bool {
        self.bare
    }
}

fn read_top_level<R: BufRead, F: FnMut(ResourceChange)>(
    s: &mut Stream<R>,
    section: Section,
    on_change: &mut F,
) -> Result<Seen, PlanError> {
    let mut seen = Seen::default();
    s.expect(b'{', "`{` at the start of the plan")?;
    if s.peek()? == Some(b'}') {
        s.pos += 1;
        return Ok(seen);
    }
    loop {
        if s.peek()? != Some(b'"') {
            return Err(s.syntax("expected a key string"));
        }
        let r = s.value(true)?;
        let key: String = s.parse(r, &|| "object key".to_string())?;
        s.expect(b':', "`:` after a key")?;
        match key.as_str() {
            "format_version" | "terraform_version" | "errored" | "applyable" | "complete" => {
                let r = s.value(true)?;
                let v: Value = s.parse(r, &|| format!("`{key}`"))?;
                match key.as_str() {
                    "format_version" => seen.format_version = v.as_str().map(str::to_string),
                    "terraform_version" => seen.terraform_version = v.as_str().map(str::to_string),
                    "errored" => seen.errored = v.as_bool(),
                    "applyable" => seen.applyable = v.as_bool(),
                    _ => seen.complete = v.as_bool(),
                }
            }
            k if k == section.key() => {
                seen.has_resource_changes |= k == "resource_changes";
                read_changes(s, k, &mut seen.resource_changes, on_change)?;
            }
            "resource_changes" => {
                seen.has_resource_changes = true;
                s.value(false)?;
            }
            _ => {
                if key == "planned_values" {
                    seen.has_planned_values = true;
                }
                s.value(false)?;
            }
        }
        if seen.keys.len() < 64 {
            seen.keys.push(key);
        }
        match s.peek()? {
            Some(b',') => s.pos += 1,
            Some(b'}') => {
                s.pos += 1;
                return Ok(seen);
            }
            Some(_) => return Err(s.syntax("expected `,` or `}` after a top-level value")),
            None => return Err(s.syntax("unexpected end of input: the plan JSON is truncated")),
        }
    }
}

fn read_changes<R: BufRead, F: FnMut(ResourceChange)>(
    s: &mut Stream<R>,
    key: &str,
    count: &mut usize,
    on_change: &mut F,
) -> Result<(), PlanError> {
    match s.peek()? {
        Some(b'n') => {
            let r = s.value(true)?;
            let _: () = s.parse(r, &|| format!("`{key}`"))?;
            return Ok(());
        }
        Some(b'[') => s.pos += 1,
        _ => return Err(s.syntax(format!("`{key}` must be an array"))),
    }
    if s.peek()? == Some(b']') {
        s.pos += 1;
        return Ok(());
    }
    loop {
        let r = s.value(true)?;
        let n = *count + 1;
        let rc: ResourceChange = s.parse(r, &|| format!("resource change #{n}"))?;
        if rc.address.is_empty() {
            return Err(s.syntax(format!("resource change #{n} has no `address`")));
        }
        *count = n;
        on_change(rc);
        match s.peek()? {
            Some(b',') => s.pos += 1,
            Some(b']') => {
                s.pos += 1;
                return Ok(());
            }
            Some(_) => return Err(s.syntax(format!("expected `,` or `]` in `{key}`"))),
            None => return Err(s.syntax("unexpected end of input: the plan JSON is truncated")),
        }
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
            if have.is_multiple_of(2) {
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
            self.pending
                .extend_from_slice(c.encode_utf8(&mut b).as_bytes());
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

    fn change_with(
        prior: &PriorObjects<'_>,
        address: &str,
        actions: &[&str],
        before: &str,
    ) -> Result<(), String> {
        let mut rc = ResourceChange {
            address: address.into(),
            mode: "managed".into(),
            ..Default::default()
        };
        rc.change.actions = actions.iter().map(|a| a.to_string()).collect();
        rc.change.before = Some(RawValue::from_string(before.into()).unwrap());
        prior.check_before(&rc)
    }

    #[test]
    fn every_change_starts_from_the_plans_prior_state() {
        let plan = br#"{"prior_state":{"values":{"root_module":{
            "resources":[
              {"address":"t.a","mode":"managed","values":{"id":"1","input":"x"}},
              {"address":"t.a","mode":"managed","deposed_key":"d1","values":{"id":"0"}},
              {"address":"data.t.d","mode":"data","values":{"id":"9"}},
              {"address":"t.empty","mode":"managed"}],
            "child_modules":[{"resources":[
              {"address":"module.m[0].t.b","mode":"managed","values":{"id":"2"}}]}]}}},
          "resource_changes":[]}"#;
        let prior = prior_objects(plan).unwrap();
        let change = |address: &str, deposed: Option<&str>, mode: &str, before: &str| {
            let mut rc = ResourceChange {
                address: address.into(),
                mode: mode.into(),
                deposed: deposed.map(str::to_owned),
                ..Default::default()
            };
            rc.change.before = Some(RawValue::from_string(before.into()).unwrap());
            prior.check_before(&rc)
        };
        assert!(change("t.a", None, "managed", r#"{"id":"1","input":"x"}"#).is_ok());
        // The same value spelled otherwise.
        assert!(change(
            "t.a",
            None,
            "managed",
            r#"{ "input": "\u0078", "id": "1" }"#
        )
        .is_ok());
        assert!(change("t.a", Some("d1"), "managed", r#"{"id":"0"}"#).is_ok());
        assert!(change("module.m[0].t.b", None, "managed", r#"{"id":"2"}"#).is_ok());
        // Nothing to start from: a create; anything else from nothing is not Terraform's.
        assert!(change_with(&prior, "t.new", &["create"], "null").is_ok());
        let e = change_with(&prior, "t.a", &["delete"], "null").unwrap_err();
        assert!(e.contains("the delete of t.a starts from no object"), "{e}");
        assert!(change_with(&prior, "t.empty", &["update"], "{}").is_ok());
        // Data sources are read, not applied from their prior value.
        assert!(change("data.t.d", None, "data", r#"{"id":"other"}"#).is_ok());
        let e = change("t.a", None, "managed", r#"{"id":"2","input":"x"}"#).unwrap_err();
        assert!(e.contains("starts from another object"), "{e}");
        let e = change("t.a", Some("d2"), "managed", r#"{"id":"0"}"#).unwrap_err();
        assert!(
            e.contains("t.a (deposed d2)") && e.contains("does not have"),
            "{e}"
        );
        let e = change("t.ghost", None, "managed", r#"{"id":"1"}"#).unwrap_err();
        assert!(e.contains("does not have"), "{e}");
        let mut keys: Vec<_> = prior.keys().cloned().collect();
        keys.sort();
        assert_eq!(keys.len(), 4, "{keys:?}");
        // An instance listed twice, or a prior state listed twice, is not Terraform's.
        let twice = br#"{"prior_state":{"values":{"root_module":{"resources":[
            {"address":"t.a","mode":"managed","values":{}},
            {"address":"t.a","mode":"managed","values":{}}]}}}}"#;
        assert!(prior_objects(twice).unwrap_err().contains("twice"));
        let part_twice = br#"{"prior_state":{},"prior_state":{}}"#;
        assert!(prior_objects(part_twice).is_err());
        assert!(prior_objects(b"{}").unwrap().keys().next().is_none());
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
                let b = if big {
                    unit.to_be_bytes()
                } else {
                    unit.to_le_bytes()
                };
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
        assert!(matches!(
            read(b"{\"format_version\":").unwrap_err(),
            PlanError::Syntax { .. }
        ));
        let truncated = &SMALL.as_bytes()[..SMALL.len() / 2];
        assert!(matches!(
            read(truncated).unwrap_err(),
            PlanError::Syntax { .. }
        ));
        let deep = format!("{{\"x\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(read(deep.as_bytes()).is_err());
        let deep_change = format!(
            "{{\"resource_changes\":[{{\"address\":\"a\",\"change\":{{\"before\":{}1{}}}}}]}}",
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        // Kept raw (not recursed into) until a rule needs it: no stack overflow either way.
        let _ = read(deep_change.as_bytes());
        // The index is not read (nothing judges it; a planner could make it a tree of any
        // size): a number out of any float's range there reads.
        let huge = r#"{"planned_values":{},"resource_changes":[{"address":"a","index":1e999999}]}"#;
        assert!(read(huge.as_bytes()).is_ok());
        let huge = r#"{"planned_values":{},"resource_changes":[{"address":"a","action_reason":1e999999}]}"#;
        assert!(matches!(
            read(huge.as_bytes()).unwrap_err(),
            PlanError::Syntax { .. }
        ));
        let big_int = r#"{"planned_values":{},"resource_changes":[{"address":"a","index":123456789012345678901234567890}]}"#;
        assert!(read(big_int.as_bytes()).is_ok());
        let wrong = r#"{"planned_values":{},"resource_changes":[{"address":"a","change":{"actions":"delete"}}]}"#;
        let err = read(wrong.as_bytes()).unwrap_err().to_string();
        assert!(err.contains("invalid type"), "{err}");
        let not_array = r#"{"resource_changes":{"a":1}}"#;
        assert!(read(not_array.as_bytes()).is_err());
        let no_address = r#"{"resource_changes":[{"change":{}}]}"#;
        assert!(read(no_address.as_bytes())
            .unwrap_err()
            .to_string()
            .contains("no `address`"));
    }

    #[test]
    fn non_plans_say_what_they_are() {
        let state =
            r#"{"version":4,"terraform_version":"1.11.4","serial":3,"lineage":"x","resources":[]}"#;
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
    fn plan_text_strips_encoding_and_noise() {
        let input =
            format!("[command]terraform show -json\n{SMALL}\n::set-output name=exitcode::0\n");
        let (text, warnings) = plan_text(input.as_bytes()).unwrap();
        assert_eq!(text, SMALL);
        assert_eq!(warnings.len(), 2);
        let mut utf16 = vec![0xFF, 0xFE];
        for unit in SMALL.encode_utf16() {
            utf16.extend_from_slice(&unit.to_le_bytes());
        }
        assert_eq!(plan_text(&utf16).unwrap().0, SMALL);
        assert!(plan_text(&SMALL.as_bytes()[..40]).is_err());
        assert_eq!(plan_text(b"").unwrap_err(), PlanError::Empty);
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
