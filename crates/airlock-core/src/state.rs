//! Reader for Terraform state format v4 (`terraform.tfstate`): validates what Terraform's own
//! reader validates and extracts what the firewall and history need (serial, lineage, the set
//! of resource instances, outputs). Attribute values are never kept, only fingerprints.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::hash::{Hash, Hasher};

use serde::Deserialize;
use serde_json::value::RawValue;

/// Why a body is not an acceptable state file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateError(pub String);

impl fmt::Display for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid state: {}", self.0)
    }
}

impl std::error::Error for StateError {}

/// One resource instance object in a state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// Absolute address, e.g. `module.net.aws_vpc.main["a"]`.
    pub address: String,
    /// Resource type, e.g. `aws_db_instance`.
    pub resource_type: String,
    /// `managed` or `data`.
    pub mode: Mode,
    /// Deposed key for deposed objects (create_before_destroy leftovers).
    pub deposed: Option<String>,
    /// Whether the object is tainted.
    pub tainted: bool,
    /// Fingerprint of the object's content (attributes, private data, status).
    pub fingerprint: u64,
}

/// Resource mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A managed resource.
    Managed,
    /// A data source.
    Data,
}

/// One root output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// Output name.
    pub name: String,
    /// Whether Terraform marks it sensitive.
    pub sensitive: bool,
    /// Fingerprint of the value.
    pub fingerprint: u64,
}

/// What airlock knows about one state version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateSummary {
    /// Always 4.
    pub version: u64,
    /// Terraform version that wrote it.
    pub terraform_version: String,
    /// Serial number.
    pub serial: u64,
    /// Lineage (UUID chosen when the state was first created).
    pub lineage: String,
    /// Every resource instance object, in file order.
    pub instances: Vec<Instance>,
    /// Root outputs, by name.
    pub outputs: Vec<Output>,
}

#[derive(Deserialize)]
struct Sniff {
    version: Option<serde_json::Value>,
    serial: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileV4<'a> {
    version: u64,
    #[serde(default)]
    terraform_version: String,
    serial: u64,
    lineage: String,
    #[serde(default, borrow)]
    outputs: BTreeMap<String, OutputV4<'a>>,
    #[serde(default, borrow)]
    resources: Vec<ResourceV4<'a>>,
    #[serde(default, borrow)]
    #[allow(dead_code)]
    check_results: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct OutputV4<'a> {
    #[serde(borrow)]
    value: Option<&'a RawValue>,
    #[serde(default)]
    sensitive: bool,
}

#[derive(Deserialize)]
struct ResourceV4<'a> {
    #[serde(default)]
    module: String,
    mode: String,
    #[serde(rename = "type")]
    resource_type: String,
    name: String,
    #[serde(default, borrow)]
    instances: Vec<InstanceV4<'a>>,
}

#[derive(Deserialize)]
struct InstanceV4<'a> {
    #[serde(default)]
    index_key: Option<serde_json::Value>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    deposed: Option<String>,
    #[serde(default, borrow)]
    attributes: Option<&'a RawValue>,
    #[serde(default, borrow)]
    attributes_flat: Option<&'a RawValue>,
    #[serde(default, borrow)]
    private: Option<&'a RawValue>,
}

/// Longest lineage accepted (Terraform's are 36-character UUIDs).
const MAX_LINEAGE_LEN: usize = 128;

/// Deepest JSON nesting accepted. Terraform reads state with Go's `encoding/json`, which gives
/// up beyond 10,000 levels: a deeper state could be stored but never loaded again.
pub const MAX_NESTING: usize = 10_000;

/// Whether brackets nest deeper than `max` (outside strings). Linear, no recursion.
fn nests_deeper_than(body: &[u8], max: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in body {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

fn fingerprint(parts: &[Option<&str>]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for p in parts {
        p.hash(&mut h);
    }
    h.finish()
}

fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 256 && !s.chars().any(|c| c.is_control() || c.is_whitespace())
}

impl StateSummary {
    /// Parses and validates a state v4 document.
    pub fn parse(body: &[u8]) -> Result<StateSummary, StateError> {
        let err = |m: String| StateError(m);
        if body.iter().all(u8::is_ascii_whitespace) {
            return Err(err("the body is empty".into()));
        }
        let text = std::str::from_utf8(body).map_err(|e| err(format!("not UTF-8: {e}")))?;
        if nests_deeper_than(body, MAX_NESTING) {
            return Err(err(format!(
                "JSON nests deeper than {MAX_NESTING} levels, which Terraform cannot read back"
            )));
        }
        let sniff: Sniff =
            serde_json::from_str(text).map_err(|e| err(format!("not a JSON object: {e}")))?;
        match sniff.version.as_ref().and_then(serde_json::Value::as_u64) {
            None => return Err(err("the \"version\" field is missing or not a number".into())),
            Some(4) => {}
            Some(v) => {
                return Err(err(format!(
                    "state format version {v} is not supported; airlock stores format 4 (Terraform >= 0.12)"
                )))
            }
        }
        if !sniff.serial.as_ref().is_some_and(serde_json::Value::is_u64) {
            return Err(err(
                "the \"serial\" field must be a non-negative integer below 2^64".into(),
            ));
        }
        let file: FileV4<'_> = serde_json::from_str(text).map_err(|e| err(e.to_string()))?;
        if file.lineage.is_empty()
            || file.lineage.len() > MAX_LINEAGE_LEN
            || !valid_name(&file.lineage)
        {
            return Err(err(
                "lineage must be a non-empty string without spaces (a UUID)".into(),
            ));
        }
        if !file.terraform_version.is_empty()
            && !file
                .terraform_version
                .split(['.', '-', '+'])
                .next()
                .is_some_and(|major| !major.is_empty() && major.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(err(format!(
                "terraform_version {:?} is not a version",
                truncate(&file.terraform_version)
            )));
        }

        let mut instances = Vec::new();
        let mut seen: HashSet<(String, Option<String>)> = HashSet::new();
        for r in &file.resources {
            let mode = match r.mode.as_str() {
                "managed" => Mode::Managed,
                "data" => Mode::Data,
                other => {
                    return Err(err(format!(
                        "resource mode {:?} is neither managed nor data",
                        truncate(other)
                    )))
                }
            };
            if !valid_name(&r.resource_type) || !valid_name(&r.name) {
                return Err(err("a resource has an empty or invalid type or name".into()));
            }
            if r.module.len() > 4096 || r.module.chars().any(char::is_control) {
                return Err(err("a resource has an invalid module address".into()));
            }
            let mut base = String::new();
            if !r.module.is_empty() {
                base.push_str(&r.module);
                base.push('.');
            }
            if mode == Mode::Data {
                base.push_str("data.");
            }
            base.push_str(&r.resource_type);
            base.push('.');
            base.push_str(&r.name);
            for inst in &r.instances {
                let address = match &inst.index_key {
                    None | Some(serde_json::Value::Null) => base.clone(),
                    Some(serde_json::Value::Number(n)) if n.is_u64() => format!("{base}[{n}]"),
                    Some(k @ serde_json::Value::String(_)) => format!("{base}[{k}]"),
                    Some(_) => {
                        return Err(err(format!(
                            "{}: index_key must be an integer or a string",
                            truncate(&base)
                        )))
                    }
                };
                let tainted = match inst.status.as_deref() {
                    None | Some("") => false,
                    Some("tainted") => true,
                    Some(other) => {
                        return Err(err(format!(
                            "{address}: unknown status {:?}",
                            truncate(other)
                        )))
                    }
                };
                if let Some(d) = &inst.deposed {
                    if d.len() != 8 {
                        return Err(err(format!("{address}: deposed key must be 8 characters")));
                    }
                }
                if !seen.insert((address.clone(), inst.deposed.clone())) {
                    return Err(err(format!("{address}: instance appears multiple times")));
                }
                let attrs = inst.attributes.or(inst.attributes_flat).map(RawValue::get);
                instances.push(Instance {
                    fingerprint: fingerprint(&[
                        attrs,
                        inst.private.map(RawValue::get),
                        inst.status.as_deref(),
                    ]),
                    address,
                    resource_type: r.resource_type.clone(),
                    mode,
                    deposed: inst.deposed.clone(),
                    tainted,
                });
            }
        }
        let outputs = file
            .outputs
            .iter()
            .map(|(name, o)| Output {
                name: name.clone(),
                sensitive: o.sensitive,
                fingerprint: fingerprint(&[o.value.map(RawValue::get)]),
            })
            .collect();
        Ok(StateSummary {
            version: file.version,
            terraform_version: file.terraform_version,
            serial: file.serial,
            lineage: file.lineage,
            instances,
            outputs,
        })
    }

    /// Addresses of current (non-deposed) managed instances.
    pub fn managed_addresses(&self) -> BTreeSet<&str> {
        self.instances
            .iter()
            .filter(|i| i.mode == Mode::Managed && i.deposed.is_none())
            .map(|i| i.address.as_str())
            .collect()
    }

    /// Current managed instances present in `self` but absent from `next`: what a write of
    /// `next` would drop from the state.
    pub fn removed_in<'a>(&'a self, next: &StateSummary) -> Vec<&'a Instance> {
        let kept = next.managed_addresses();
        self.instances
            .iter()
            .filter(|i| {
                i.mode == Mode::Managed && i.deposed.is_none() && !kept.contains(i.address.as_str())
            })
            .collect()
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(60).collect()
}

/// Differences between two state versions.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct StateDiff {
    /// Instances only in the newer version.
    pub added: Vec<String>,
    /// Instances only in the older version.
    pub removed: Vec<String>,
    /// Instances in both whose content differs.
    pub changed: Vec<String>,
    /// Outputs added, removed or changed (by name only).
    pub outputs_changed: Vec<String>,
}

impl StateDiff {
    /// Computes what changed from `old` to `new`.
    pub fn between(old: &StateSummary, new: &StateSummary) -> StateDiff {
        let key = |i: &Instance| match &i.deposed {
            Some(d) => format!("{} (deposed {d})", i.address),
            None => i.address.clone(),
        };
        let old_map: BTreeMap<String, u64> = old
            .instances
            .iter()
            .map(|i| (key(i), i.fingerprint))
            .collect();
        let new_map: BTreeMap<String, u64> = new
            .instances
            .iter()
            .map(|i| (key(i), i.fingerprint))
            .collect();
        let mut d = StateDiff::default();
        for (k, fp) in &new_map {
            match old_map.get(k) {
                None => d.added.push(k.clone()),
                Some(ofp) if ofp != fp => d.changed.push(k.clone()),
                Some(_) => {}
            }
        }
        d.removed = old_map
            .keys()
            .filter(|k| !new_map.contains_key(*k))
            .cloned()
            .collect();
        let old_out: BTreeMap<&str, u64> = old
            .outputs
            .iter()
            .map(|o| (o.name.as_str(), o.fingerprint))
            .collect();
        let new_out: BTreeMap<&str, u64> = new
            .outputs
            .iter()
            .map(|o| (o.name.as_str(), o.fingerprint))
            .collect();
        let names: BTreeSet<&str> = old_out.keys().chain(new_out.keys()).copied().collect();
        d.outputs_changed = names
            .into_iter()
            .filter(|n| old_out.get(n) != new_out.get(n))
            .map(str::to_owned)
            .collect();
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_nesting_terraform_cannot_read() {
        let state = |depth: usize| {
            let value = format!(r#"{}"{{[\"]"{}"#, "[".repeat(depth), "]".repeat(depth));
            format!(
                r#"{{"version":4,"serial":1,"lineage":"l","outputs":{{"o":{{"value":{value}}}}}}}"#
            )
        };
        // Brackets inside strings (escaped quotes included) do not count.
        assert!(StateSummary::parse(state(MAX_NESTING - 4).as_bytes()).is_ok());
        assert!(matches!(
            StateSummary::parse(state(MAX_NESTING + 1).as_bytes()),
            Err(StateError(m)) if m.contains("nests deeper")
        ));
    }

    const STATE: &str = r#"{ "version": 4, "terraform_version": "1.11.4", "serial": 3, "lineage": "af8aa642-5371-9a05-1ee1-019d13b4a349",
      "outputs": { "o": { "value": "hello", "type": "string" }, "s": {"value": "x", "type": "string", "sensitive": true} },
      "resources": [
        { "mode": "managed", "type": "terraform_data", "name": "a", "provider": "provider[\"terraform.io/builtin/terraform\"]",
          "instances": [ { "schema_version": 0, "attributes": { "id": "1" }, "sensitive_attributes": [] } ] },
        { "module": "module.m[0]", "mode": "managed", "type": "aws_db_instance", "name": "db", "provider": "p",
          "instances": [ { "index_key": "k", "attributes": {"id": "2"} }, { "index_key": 1, "status": "tainted", "attributes": {} },
                         { "index_key": 1, "deposed": "00000001", "attributes": {} } ] },
        { "mode": "data", "type": "aws_ami", "name": "x", "provider": "p", "instances": [ { "attributes": {} } ] }
      ],
      "check_results": null }"#;

    #[test]
    fn reads_instances_and_outputs() {
        let s = StateSummary::parse(STATE.as_bytes()).unwrap();
        assert_eq!(s.serial, 3);
        let addrs: Vec<_> = s.instances.iter().map(|i| i.address.as_str()).collect();
        assert_eq!(
            addrs,
            [
                "terraform_data.a",
                "module.m[0].aws_db_instance.db[\"k\"]",
                "module.m[0].aws_db_instance.db[1]",
                "module.m[0].aws_db_instance.db[1]",
                "data.aws_ami.x"
            ]
        );
        assert_eq!(s.managed_addresses().len(), 3);
        assert!(s.instances.get(2).unwrap().tainted);
        assert_eq!(s.outputs.len(), 2);
    }

    #[test]
    fn refuses_what_terraform_refuses() {
        let cases = [
            ("", "empty"),
            ("   ", "empty"),
            ("[]", "JSON object"),
            ("{", "JSON"),
            (r#"{"serial":1,"lineage":"x"}"#, "version"),
            (r#"{"version":3,"serial":1,"lineage":"x"}"#, "not supported"),
            (r#"{"version":5,"serial":1,"lineage":"x"}"#, "not supported"),
            (r#"{"version":4,"serial":-1,"lineage":"x"}"#, "serial"),
            (r#"{"version":4,"serial":1.5,"lineage":"x"}"#, "serial"),
            (r#"{"version":4,"serial":1e40,"lineage":"x"}"#, "serial"),
            (
                r#"{"version":4,"serial":99999999999999999999999,"lineage":"x"}"#,
                "",
            ),
            (r#"{"version":4,"serial":1,"lineage":""}"#, "lineage"),
            (r#"{"version":4,"serial":1}"#, "lineage"),
            (
                r#"{"version":4,"serial":1,"lineage":"x","bogus":1}"#,
                "unknown field",
            ),
            (
                r#"{"version":4,"serial":1,"lineage":"x","resources":[{"mode":"weird","type":"t","name":"n"}]}"#,
                "mode",
            ),
            (
                r#"{"version":4,"serial":1,"lineage":"x","resources":[{"mode":"managed","type":"t","name":"n","instances":[{"status":"bad"}]}]}"#,
                "status",
            ),
            (
                r#"{"version":4,"serial":1,"lineage":"x","resources":[{"mode":"managed","type":"t","name":"n","instances":[{"deposed":"abc"}]}]}"#,
                "deposed",
            ),
            (
                r#"{"version":4,"serial":1,"lineage":"x","resources":[{"mode":"managed","type":"t","name":"n","instances":[{},{}]}]}"#,
                "multiple",
            ),
            (
                r#"{"version":4,"serial":1,"lineage":"x","resources":[{"mode":"managed","type":"t","name":"n","instances":[{"index_key":1.5}]}]}"#,
                "index_key",
            ),
        ];
        for (body, want) in cases {
            let e = StateSummary::parse(body.as_bytes()).expect_err(body);
            assert!(e.0.contains(want), "{body}: {e}");
        }
        assert!(StateSummary::parse(b"\xff\xfe").is_err());
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        // Deep nesting inside a value must not overflow the stack, whatever the verdict.
        let _ = StateSummary::parse(
            format!(
                r#"{{"version":4,"serial":1,"lineage":"x","outputs":{{"o":{{"value":{deep}}}}}}}"#
            )
            .as_bytes(),
        );
        let _ = StateSummary::parse(deep.as_bytes());
    }

    #[test]
    fn diff_and_removed() {
        let old = StateSummary::parse(STATE.as_bytes()).unwrap();
        let new_text = STATE
            .replace(
                r#""attributes": { "id": "1" }"#,
                r#""attributes": { "id": "9" }"#,
            )
            .replace(r#"{ "index_key": "k", "attributes": {"id": "2"} }, "#, "");
        let new = StateSummary::parse(new_text.as_bytes()).unwrap();
        let removed: Vec<_> = old
            .removed_in(&new)
            .iter()
            .map(|i| i.address.clone())
            .collect();
        assert_eq!(removed, ["module.m[0].aws_db_instance.db[\"k\"]"]);
        let d = StateDiff::between(&old, &new);
        assert_eq!(d.changed, ["terraform_data.a"]);
        assert_eq!(d.removed, ["module.m[0].aws_db_instance.db[\"k\"]"]);
        assert!(d.added.is_empty());
    }
}
