//! Reader for Terraform state format v4 (`terraform.tfstate`): validates what Terraform's own
//! reader validates and extracts what the firewall and history need (serial, lineage, the set
//! of resource instances, outputs). Attribute values are never kept, only where they are in the
//! body: a diff compares the bytes of two bodies there (see [`StateDiff::between`]).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use crate::address::{self, InstanceKey, ModuleStep};

/// Why a body is not an acceptable state file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateError(pub String);

impl fmt::Display for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid state: {}", self.0)
    }
}

impl std::error::Error for StateError {}

/// The structured identity of a resource instance: what Terraform keys it by. Two instances are
/// the same instance exactly when these are equal; `Instance::address` is only its rendering.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InstanceAddr {
    /// Module instance path, empty for the root module.
    pub module: Vec<ModuleStep>,
    /// Managed resource or data source.
    pub mode: Mode,
    /// Resource type, e.g. `aws_db_instance`.
    pub resource_type: String,
    /// Resource name (an identifier).
    pub name: String,
    /// Instance key, for resources with count or for_each.
    pub key: Option<InstanceKey>,
}

/// What tells one remote object from its replacement: SHA-256 digests (never the values) of
/// the object's `id` attribute and of its resource identity (Terraform 1.12), when it has them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObjectIdentity {
    /// Digest of `attributes.id` (or `attributes_flat.id` in legacy states).
    pub id: Option<[u8; 32]>,
    /// Digest of the `identity` object, whitespace removed.
    pub identity: Option<[u8; 32]>,
}

/// One resource instance object in a state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// Absolute address as Terraform renders it, e.g. `module.net.aws_vpc.main["a"]`:
    /// unambiguous, because names are identifiers and keys are quoted.
    pub address: String,
    /// The structured identity `address` renders.
    pub addr: InstanceAddr,
    /// Resource type, e.g. `aws_db_instance`.
    pub resource_type: String,
    /// `managed` or `data`.
    pub mode: Mode,
    /// Deposed key for deposed objects (create_before_destroy leftovers).
    pub deposed: Option<String>,
    /// Whether the object is tainted.
    pub tainted: bool,
    /// Provider configuration address, e.g. `provider["registry.terraform.io/hashicorp/aws"]`.
    pub provider: String,
    /// What tells this object from a replacement at the same address.
    pub object: ObjectIdentity,
    /// Where the object's attributes, sensitive paths, private data and identity are in the
    /// parsed body (byte ranges, not values: a diff reads them from the body on demand).
    pub spans: ValueSpans,
}

impl Instance {
    /// The heap blocks this instance owns, by capacity: a client chooses the keys and module
    /// paths, and each instance holds its own copies of them (in `address` and in `addr`).
    pub fn heap_bytes(&self) -> usize {
        fn key(k: &Option<InstanceKey>) -> usize {
            match k {
                Some(InstanceKey::Str(s)) => s.capacity(),
                _ => 0,
            }
        }
        self.address.capacity()
            + self.resource_type.capacity()
            + self.provider.capacity()
            + self.deposed.as_ref().map_or(0, String::capacity)
            + self.addr.resource_type.capacity()
            + self.addr.name.capacity()
            + key(&self.addr.key)
            + self.addr.module.capacity() * std::mem::size_of::<ModuleStep>()
            + self
                .addr
                .module
                .iter()
                .map(|m| m.name.capacity() + key(&m.key))
                .sum::<usize>()
    }

    /// Whether this object's content (attributes, private data, status, identity) in `body`
    /// is byte for byte `other`'s in `other_body` (each the body its summary was parsed from).
    pub fn same_content(&self, body: &[u8], other: &Instance, other_body: &[u8]) -> bool {
        let (a, b) = (&self.spans, &other.spans);
        self.tainted == other.tainted
            && same_bytes(body, &a.value, other_body, &b.value)
            && same_bytes(body, &a.private, other_body, &b.private)
            && same_bytes(body, &a.identity, other_body, &b.identity)
    }
}

/// Whether two optional spans hold the same bytes (a span outside its body is never the same:
/// a diff shows a change rather than hide one).
fn same_bytes(
    a_body: &[u8],
    a: &Option<std::ops::Range<usize>>,
    b_body: &[u8],
    b: &Option<std::ops::Range<usize>>,
) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => match (a_body.get(a.clone()), b_body.get(b.clone())) {
            (Some(x), Some(y)) => x == y,
            _ => false,
        },
        _ => false,
    }
}

/// Byte ranges of an instance's or output's values in the body it was parsed from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ValueSpans {
    /// `attributes` (or `attributes_flat`), or an output's `value`.
    pub value: Option<std::ops::Range<usize>>,
    /// `sensitive_attributes`.
    pub sensitive: Option<std::ops::Range<usize>>,
    /// An instance's `private` (provider-private data).
    pub private: Option<std::ops::Range<usize>>,
    /// An instance's `identity` (Terraform 1.12 resource identity).
    pub identity: Option<std::ops::Range<usize>>,
}

/// The range `raw` occupies in `body` (a `RawValue` borrowed from it).
fn span_in(body: &str, raw: Option<&RawValue>) -> Option<std::ops::Range<usize>> {
    let raw = raw?.get();
    let start = (raw.as_ptr() as usize).checked_sub(body.as_ptr() as usize)?;
    let end = start.checked_add(raw.len())?;
    body.get(start..end)?;
    Some(start..end)
}

/// Resource mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
    /// Where the value is in the parsed body.
    pub spans: ValueSpans,
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
    /// The elements of the `resources` array: what a later read may reuse.
    elements: Vec<ResourceElement>,
}

/// One element of the top-level `resources` array as read.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ResourceElement {
    /// The element's bytes in the body (a JSON object, `{` to `}`).
    bytes: std::ops::Range<usize>,
    /// Its instance objects in `StateSummary::instances`.
    instances: std::ops::Range<usize>,
    /// The resource it holds (shared with the reads that reuse the element).
    key: std::sync::Arc<ResourceKey>,
}

/// What Terraform keys a resource by: module path, mode, type, name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ResourceKey {
    module: Vec<ModuleStep>,
    mode: Mode,
    resource_type: String,
    name: String,
}

#[derive(Deserialize)]
struct Sniff {
    version: Option<serde_json::Value>,
    serial: Option<serde_json::Value>,
}

// Terraform reads state with Go's encoding/json, which matches object keys to struct fields
// case-insensitively (with Unicode simple folding: "ſ" is "s", "K" (Kelvin) is "k"), lets the
// last duplicate win and ignores unknown keys. So at every level the firewall reads, every key
// must be exactly one of the keys below, once: then Go and airlock read the same fields.
// The lists are Terraform 1.11/1.12's `internal/states/statefile/version4.go`, plus the keys
// OpenTofu adds that Terraform ignores (`deprecated`, `depends_on`, `skip_destroy`).

const TOP_KEYS: &[&str] = &[
    "version",
    "terraform_version",
    "serial",
    "lineage",
    "outputs",
    "resources",
    "check_results",
];
const OUTPUT_KEYS: &[&str] = &["value", "type", "sensitive", "deprecated"];
const RESOURCE_KEYS: &[&str] = &[
    "module",
    "mode",
    "type",
    "name",
    "each",
    "provider",
    "instances",
];
const INSTANCE_KEYS: &[&str] = &[
    "index_key",
    "status",
    "deposed",
    "schema_version",
    "attributes",
    "attributes_flat",
    "sensitive_attributes",
    "identity_schema_version",
    "identity",
    "private",
    "dependencies",
    "create_before_destroy",
    "depends_on",
    "skip_destroy",
];

/// Go's simple case folding, for the characters that fold onto the ASCII letters of known keys.
fn go_fold(c: char) -> char {
    match c {
        '\u{17f}' => 's',
        '\u{212a}' => 'k',
        c => c.to_ascii_lowercase(),
    }
}

/// Which of `known` `key` is; refuses unknown keys, duplicates and variants Go would match.
fn known_key<E: de::Error>(
    key: &str,
    known: &[&str],
    seen: &mut u64,
    what: &str,
) -> Result<usize, E> {
    if let Some(i) = known.iter().position(|k| *k == key) {
        let bit = 1u64 << i;
        if *seen & bit != 0 {
            return Err(E::custom(format!(
                "duplicate key {key:?} in {what}: Terraform would read only the last one"
            )));
        }
        *seen |= bit;
        return Ok(i);
    }
    let shown = truncate(key);
    match known
        .iter()
        .find(|k| k.chars().map(go_fold).eq(key.chars().map(go_fold)))
    {
        Some(k) => Err(E::custom(format!(
            "key {shown:?} in {what} is a case variant of {k:?}, which Terraform would read as {k:?}"
        ))),
        None => Err(E::custom(format!(
            "unknown key {shown:?} in {what} (Terraform state v4 has: {})",
            known.join(", ")
        ))),
    }
}

/// An object key, borrowed from the body when it has no escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

/// Implements `Deserialize` for a struct read key by key through `known_key`.
macro_rules! strict_object {
    ($ty:ident, $keys:expr, $what:literal, |$map:ident, $out:ident, $i:ident| $body:block) => {
        impl<'de> Deserialize<'de> for $ty<'de> {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> Visitor<'de> for V {
                    type Value = $ty<'de>;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str(concat!($what, " (a JSON object)"))
                    }
                    fn visit_map<A: MapAccess<'de>>(
                        self,
                        mut $map: A,
                    ) -> Result<$ty<'de>, A::Error> {
                        let mut $out = $ty::default();
                        let mut seen = 0u64;
                        while let Some(key) = $map.next_key::<Key<'de>>()? {
                            let $i = known_key(&key.0, $keys, &mut seen, $what)?;
                            $body
                        }
                        Ok($out)
                    }
                }
                d.deserialize_map(V)
            }
        }
    };
}

/// The state's top level, read by [`read_top`] (not by serde: the `resources` array is walked
/// element by element so that elements of a previous body can be reused).
#[derive(Default)]
struct FileV4<'a> {
    version: Option<u64>,
    terraform_version: Option<String>,
    serial: Option<u64>,
    lineage: Option<String>,
    outputs: Outputs<'a>,
    resources: Vec<Element<'a>>,
}

/// One element of the top-level `resources` array and where it is in the body.
enum Element<'a> {
    /// Deserialized from its bytes.
    Parsed(std::ops::Range<usize>, ResourceV4<'a>),
    /// Byte for byte the previous body's element (by index in its summary's `elements`).
    Reused(std::ops::Range<usize>, usize),
}

/// Root outputs in file order; a name twice is refused (Go's map would keep the last).
/// `charged` is what reading them took from the reader's [`Budget`], given back once the
/// summary's outputs are built from them.
#[derive(Default)]
struct Outputs<'a> {
    list: Vec<(String, OutputV4<'a>)>,
    charged: usize,
}

/// Reads `outputs` (or `null`: none), taking each output from the budget as it is read.
struct OutputsSeed<'b>(&'b mut Budget);

impl<'de> DeserializeSeed<'de> for OutputsSeed<'_> {
    type Value = Outputs<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Outputs<'de>, D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for OutputsSeed<'_> {
    type Value = Outputs<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("outputs (a JSON object)")
    }
    fn visit_none<E: de::Error>(self) -> Result<Outputs<'de>, E> {
        Ok(Outputs::default())
    }
    fn visit_unit<E: de::Error>(self) -> Result<Outputs<'de>, E> {
        Ok(Outputs::default())
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Outputs<'de>, D::Error> {
        d.deserialize_map(self)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Outputs<'de>, A::Error> {
        let mut out = Outputs::default();
        let mut names = HashSet::new();
        while let Some(key) = map.next_key::<Key<'de>>()? {
            let name = key.0.into_owned();
            // The entry and its name twice (the list and the set), with room for both to grow.
            let cost = 2
                * (std::mem::size_of::<(String, OutputV4<'de>)>() + std::mem::size_of::<String>())
                + 2 * name.capacity();
            self.0.take_bytes(cost).map_err(de::Error::custom)?;
            out.charged += cost;
            if !names.insert(name.clone()) {
                return Err(de::Error::custom(format!(
                    "output {:?} appears twice: Terraform would read only the last one",
                    truncate(&name)
                )));
            }
            out.list.push((name, map.next_value()?));
        }
        Ok(out)
    }
}

#[derive(Default)]
struct OutputV4<'a> {
    value: Option<&'a RawValue>,
    sensitive: bool,
}

strict_object!(OutputV4, OUTPUT_KEYS, "an output", |map, out, i| {
    match i {
        0 => out.value = Some(map.next_value()?),
        2 => out.sensitive = map.next_value::<Option<bool>>()?.unwrap_or_default(),
        3 => {
            map.next_value::<Option<String>>()?;
        }
        _ => {
            map.next_value::<&'de RawValue>()?;
        }
    }
});

#[derive(Default)]
struct ResourceV4<'a> {
    module: Option<String>,
    mode: Option<String>,
    resource_type: Option<String>,
    name: Option<String>,
    each: Option<String>,
    provider: Option<String>,
    instances: Vec<InstanceV4<'a>>,
    /// What reading its instances took from the reader's [`Budget`], given back once the
    /// summary's instances are built from them.
    charged: usize,
}

/// Reads one element of `resources` (see `strict_object!`, which this is with a budget: the
/// instances are taken from it one by one as they are read, so a resource of millions of
/// near-empty instances is refused before they are all held).
struct ResourceSeed<'b>(&'b mut Budget);

impl<'de> DeserializeSeed<'de> for ResourceSeed<'_> {
    type Value = ResourceV4<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<ResourceV4<'de>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ResourceSeed<'_> {
    type Value = ResourceV4<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a resource (a JSON object)")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ResourceV4<'de>, A::Error> {
        let mut out = ResourceV4::default();
        let mut seen = 0u64;
        while let Some(key) = map.next_key::<Key<'de>>()? {
            match known_key(&key.0, RESOURCE_KEYS, &mut seen, "a resource")? {
                0 => out.module = map.next_value()?,
                1 => out.mode = map.next_value()?,
                2 => out.resource_type = map.next_value()?,
                3 => out.name = map.next_value()?,
                4 => out.each = map.next_value()?,
                5 => out.provider = map.next_value()?,
                _ => {
                    let (instances, charged) = map.next_value_seed(InstancesSeed(&mut *self.0))?;
                    out.instances = instances;
                    out.charged += charged;
                }
            }
        }
        Ok(out)
    }
}

/// Reads a resource's `instances` (or `null`: none), taking each from the budget as it is
/// read; the value is the instances and what they took.
struct InstancesSeed<'b>(&'b mut Budget);

impl<'de> DeserializeSeed<'de> for InstancesSeed<'_> {
    type Value = (Vec<InstanceV4<'de>>, usize);
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for InstancesSeed<'_> {
    type Value = (Vec<InstanceV4<'de>>, usize);
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a sequence")
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok((Vec::new(), 0))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok((Vec::new(), 0))
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let (mut instances, mut charged) = (Vec::new(), 0);
        while let Some(inst) = seq.next_element::<InstanceV4<'de>>()? {
            let cost = inst.transient_bytes();
            self.0.take_bytes(cost).map_err(de::Error::custom)?;
            charged += cost;
            instances.push(inst);
        }
        Ok((instances, charged))
    }
}

#[derive(Default)]
struct InstanceV4<'a> {
    /// Raw, read in [`read_resource`]: a key that is neither a number nor a string (a huge
    /// array, say) is refused without ever being built.
    index_key: Option<&'a RawValue>,
    status: Option<String>,
    deposed: Option<String>,
    attributes: Option<&'a RawValue>,
    attributes_flat: Option<&'a RawValue>,
    sensitive_attributes: Option<&'a RawValue>,
    identity: Option<&'a RawValue>,
    private: Option<&'a RawValue>,
}

strict_object!(
    InstanceV4,
    INSTANCE_KEYS,
    "a resource instance",
    |map, out, i| {
        match i {
            0 => out.index_key = map.next_value()?,
            1 => out.status = map.next_value()?,
            2 => out.deposed = map.next_value()?,
            // Go keeps a JSON null here as the raw text `null`.
            4 => out.attributes = Some(map.next_value()?),
            5 => out.attributes_flat = map.next_value()?,
            6 => out.sensitive_attributes = Some(map.next_value()?),
            8 => out.identity = map.next_value()?,
            9 => out.private = map.next_value()?,
            3 | 7 => {
                map.next_value::<Option<u64>>()?;
            }
            11 | 13 => {
                map.next_value::<Option<bool>>()?;
            }
            _ => {
                map.next_value::<&'de RawValue>()?;
            }
        }
    }
);

impl InstanceV4<'_> {
    /// Memory one instance takes while its resource is read, before its summary is built:
    /// itself in the resource's list and its key in the duplicate check (each with room for
    /// the collection to grow), and the strings it owns.
    fn transient_bytes(&self) -> usize {
        let key = self.index_key.map_or(0, |k| k.get().len());
        2 * (std::mem::size_of::<Self>()
            + std::mem::size_of::<(Option<InstanceKey>, Option<&str>)>())
            + key
            + self.status.as_ref().map_or(0, String::capacity)
            + self.deposed.as_ref().map_or(0, String::capacity)
    }
}

/// The raw text of the top-level `id` member of `obj`, a JSON object the state reader has
/// already validated (serde_json checked it when it captured the raw value): one scan of the
/// top level that steps over nested values without parsing them (parsing the attributes a
/// second time cost as much as the first parse). Keys compare after unescaping, as Terraform
/// reads them (`"i\u0064"` is `id`); a second `id` is refused.
fn top_level_id(obj: &str) -> Result<Option<&str>, String> {
    let b = obj.as_bytes();
    let bad = || "attributes: not a JSON object".to_owned();
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return Err(bad());
    }
    i += 1;
    let mut found = None;
    loop {
        i = skip_ws(b, i);
        match b.get(i) {
            Some(b'}') => return Ok(found),
            Some(b',') => {
                i += 1;
                continue;
            }
            Some(b'"') => {}
            _ => return Err(bad()),
        }
        let key_end = string_end(b, i).ok_or_else(bad)?;
        let key = &obj[i..key_end];
        let is_id = if key.contains('\\') {
            serde_json::from_str::<String>(key).map_err(|e| format!("attributes: {e}"))? == "id"
        } else {
            key == "\"id\""
        };
        i = skip_ws(b, key_end);
        if b.get(i) != Some(&b':') {
            return Err(bad());
        }
        i = skip_ws(b, i + 1);
        let start = i;
        i = value_end(b, i).ok_or_else(bad)?;
        if is_id {
            if found.is_some() {
                return Err("attribute \"id\" appears twice in one object".into());
            }
            found = Some(&obj[start..i]);
        }
    }
}

/// JSON's whitespace (RFC 8259 and Go's `encoding/json`): space, tab, line feed, carriage
/// return. Not form feed or vertical tab, which `u8::is_ascii_whitespace` would accept.
fn is_json_ws(c: &u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r')
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(is_json_ws) {
        i += 1;
    }
    i
}

/// The index after the closing quote of the string that opens at `start`.
fn string_end(b: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    loop {
        i += memchr::memchr2(b'"', b'\\', b.get(i..)?)?;
        if b.get(i) == Some(&b'"') {
            return Some(i + 1);
        }
        i += 2;
    }
}

/// The index of the first byte at or after `i` that is `"`, `[`, `]`, `{` or `}` (or the
/// length): eight bytes at a time, so indentation and punctuation between strings cost little.
fn next_structural(b: &[u8], mut i: usize) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let has_zero_byte = |v: u64| v.wrapping_sub(ONES) & !v & HIGH != 0;
    while let Some(w) = b.get(i..i + 8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(w);
        let v = u64::from_le_bytes(word);
        // Setting bit 5 maps `[` onto `{` and `]` onto `}`, and no other byte onto either.
        let folded = v | (ONES * 0x20);
        if has_zero_byte(v ^ (ONES * u64::from(b'"')))
            || has_zero_byte(folded ^ (ONES * u64::from(b'{')))
            || has_zero_byte(folded ^ (ONES * u64::from(b'}')))
        {
            break;
        }
        i += 8;
    }
    while b
        .get(i)
        .is_some_and(|c| !matches!(c, b'"' | b'[' | b']' | b'{' | b'}'))
    {
        i += 1;
    }
    i.min(b.len())
}

/// The index after the JSON value that starts at `i` (nested values stepped over, strings
/// jumped with `memchr`).
fn value_end(b: &[u8], i: usize) -> Option<usize> {
    value_extent(b, i).map(|(end, _)| end)
}

/// The index after the JSON value that starts at `i`, and how deep its brackets nest (1 for
/// `[]` or `{}`, 0 for a string, number or literal). Exact for valid JSON; for invalid JSON the
/// end may be anywhere, so a caller checks the value it bounds with a full parser.
fn value_extent(b: &[u8], mut i: usize) -> Option<(usize, usize)> {
    match *b.get(i)? {
        b'"' => string_end(b, i).map(|end| (end, 0)),
        b'{' | b'[' => {
            let (mut depth, mut deepest) = (0usize, 0usize);
            loop {
                i = next_structural(b, i);
                match *b.get(i)? {
                    b'"' => {
                        i = string_end(b, i)?;
                        continue;
                    }
                    b'{' | b'[' => {
                        depth += 1;
                        deepest = deepest.max(depth);
                    }
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some((i + 1, deepest));
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
        }
        _ => {
            while b
                .get(i)
                .is_some_and(|c| !matches!(c, b',' | b'}' | b']') && !is_json_ws(c))
            {
                i += 1;
            }
            Some((i, 0))
        }
    }
}

fn digest(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// The object identity of one instance object: digests of its `id` and of its `identity`.
fn object_identity(inst: &InstanceV4<'_>) -> Result<ObjectIdentity, String> {
    let attrs = match inst.attributes {
        Some(a) => Some(a),
        None => inst.attributes_flat,
    }
    .map(RawValue::get)
    .filter(|a| a.trim_start().starts_with('{'));
    let id = match attrs.map(top_level_id).transpose()?.flatten() {
        None => None,
        Some(raw) => Some(
            serde_json::from_str::<serde_json::Value>(raw)
                .map_err(|e| format!("attributes: {e}"))?,
        )
        .filter(|v| !v.is_null())
        .map(|v| match v {
            serde_json::Value::String(s) => digest(&[b"s", s.as_bytes()]),
            other => digest(&[b"j", other.to_string().as_bytes()]),
        }),
    };
    let identity = inst
        .identity
        .map(RawValue::get)
        .filter(|t| *t != "null")
        .map(|t| {
            let mut h = Sha256::new();
            let (mut in_string, mut escaped) = (false, false);
            for &b in t.as_bytes() {
                if in_string {
                    match b {
                        _ if escaped => escaped = false,
                        b'\\' => escaped = true,
                        b'"' => in_string = false,
                        _ => {}
                    }
                } else if b.is_ascii_whitespace() {
                    continue;
                } else if b == b'"' {
                    in_string = true;
                }
                h.update([b]);
            }
            h.finalize().into()
        });
    Ok(ObjectIdentity { id, identity })
}

/// Longest lineage accepted (Terraform's are 36-character UUIDs).
const MAX_LINEAGE_LEN: usize = 128;

/// Deepest JSON nesting accepted. Terraform reads state with Go's `encoding/json`, which gives
/// up beyond 10,000 levels: a deeper state could be stored but never loaded again.
pub const MAX_NESTING: usize = 10_000;

/// Whether brackets nest deeper than `max` (outside strings). Linear, no recursion; strings
/// are jumped over with `memchr`.
fn nests_deeper_than(body: &[u8], max: usize) -> bool {
    let (mut depth, mut i) = (0usize, 0usize);
    loop {
        i = next_structural(body, i);
        let Some(&b) = body.get(i) else {
            return false;
        };
        match b {
            b'"' => match string_end(body, i) {
                Some(end) => {
                    i = end;
                    continue;
                }
                // An unterminated string: nothing after it nests, and the parser refuses it.
                None => return false,
            },
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 256 && !s.chars().any(|c| c.is_control() || c.is_whitespace())
}

/// Explains a body whose `version` or `serial` is missing or wrong (a full pass, so only called
/// once the body is already refused).
fn check_version_and_serial(text: &str) -> Result<(), StateError> {
    let err = |m: String| StateError(m);
    let sniff: Sniff = match serde_json::from_str(text) {
        Ok(sniff) => sniff,
        // A duplicate or mistyped key: the main reader's message says which.
        Err(e) if e.classify() == serde_json::error::Category::Data => return Ok(()),
        Err(e) => return Err(err(format!("not a JSON object: {e}"))),
    };
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
    Ok(())
}

/// What a read may reuse from the body before: its bytes and the summary read from them
/// (only ever a pair this reader made, see [`ParsedState`]).
type Previous<'p> = Option<(&'p [u8], &'p StateSummary)>;

/// Why a body is refused, the checks in the order the reader has always made them: empty,
/// UTF-8, nesting, then (one pass) version and serial, then the first problem in the body.
/// Called with `problem`, the first problem the walk met: a full pass over the body is only
/// ever made on this path, once the body is refused.
fn refuse(body: &[u8], text: &str, problem: String) -> StateError {
    if nests_deeper_than(body, MAX_NESTING) {
        return StateError(format!(
            "JSON nests deeper than {MAX_NESTING} levels, which Terraform cannot read back"
        ));
    }
    if let Err(e) = check_version_and_serial(text) {
        return e;
    }
    StateError(problem)
}

/// The message of a walk's syntax error at byte `i`: [`refuse`] replaces it with serde's own
/// account of the body (`not a JSON object: ...`), so this one is shown only if serde read the
/// body as JSON, which would be a bug of the walk.
fn syntax_error(b: &[u8], i: usize) -> String {
    let (line, column) = position(b, i);
    format!("not a JSON object: unexpected input at line {line} column {column}")
}

/// Line and column of byte `i`, counted as serde_json counts them (column = bytes since the
/// line's start).
fn position(b: &[u8], i: usize) -> (usize, usize) {
    let before = b.get(..i).unwrap_or(b);
    let line_start = memchr::memrchr(b'\n', before).map_or(0, |n| n + 1);
    let lines = before.get(..line_start).unwrap_or_default();
    (
        1 + memchr::memchr_iter(b'\n', lines).count(),
        before.len() - line_start,
    )
}

/// Deserializes the value at `at` in `text` with the state's serde types, borrowing from
/// `text` (so spans stay offsets in the whole body). An error is told at its place in the
/// whole body, as a parse of the whole body would tell it.
fn value<'a, T: Deserialize<'a>>(text: &'a str, at: std::ops::Range<usize>) -> Result<T, String> {
    value_seed(text, at, std::marker::PhantomData::<T>)
}

/// [`value`] read by a seed (one that takes from the reader's [`Budget`]).
fn value_seed<'a, S: DeserializeSeed<'a>>(
    text: &'a str,
    at: std::ops::Range<usize>,
    seed: S,
) -> Result<S::Value, String> {
    let start = at.start;
    let mut de = serde_json::Deserializer::from_str(&text[at]);
    let read = seed.deserialize(&mut de).and_then(|v| de.end().map(|()| v));
    read.map_err(|e| {
        let shown = e.to_string();
        if e.line() == 0 {
            return shown;
        }
        let code = shown
            .strip_suffix(&format!(" at line {} column {}", e.line(), e.column()))
            .unwrap_or(&shown);
        let (line, column) = position(text.as_bytes(), start);
        let (line, column) = if e.line() == 1 {
            (line, column + e.column())
        } else {
            (line + e.line() - 1, e.column())
        };
        format!("{code} at line {line} column {column}")
    })
}

/// Refuses anything but a JSON object at the top, with serde's words for what it is.
struct AnObject;

impl<'de> Deserialize<'de> for AnObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = AnObject;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("the state (a JSON object)")
            }
            fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<AnObject, A::Error> {
                Ok(AnObject)
            }
        }
        d.deserialize_map(V)
    }
}

/// Reads the top level of a state: a strict walk of the object (JSON whitespace only, one
/// comma between members, nothing after the object), each key checked by `known_key`, each
/// value but the `resources` array deserialized from its bytes by the serde types, and the
/// `resources` array element by element (see [`read_resources`]). Stops at the first problem,
/// in document order; [`refuse`] turns it into the reader's message.
fn read_top<'a>(
    text: &'a str,
    prev: Previous<'_>,
    budget: &mut Budget,
) -> Result<FileV4<'a>, String> {
    let b = text.as_bytes();
    let syntax = |i: usize| syntax_error(b, i);
    let mut out = FileV4::default();
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return Err(match serde_json::from_str::<AnObject>(text) {
            Err(e) => e.to_string(),
            Ok(_) => syntax(i),
        });
    }
    i = skip_ws(b, i + 1);
    let mut seen = 0u64;
    if b.get(i) != Some(&b'}') {
        loop {
            if b.get(i) != Some(&b'"') {
                return Err(syntax(i));
            }
            let key_end = string_end(b, i).ok_or_else(|| syntax(i))?;
            let key: Key<'_> = serde_json::from_str(&text[i..key_end]).map_err(|_| syntax(i))?;
            let which = known_key::<serde_json::Error>(&key.0, TOP_KEYS, &mut seen, "the state")
                .map_err(|e| {
                    let (line, column) = position(b, key_end);
                    format!("{e} at line {line} column {column}")
                })?;
            i = skip_ws(b, key_end);
            if b.get(i) != Some(&b':') {
                return Err(syntax(i));
            }
            i = skip_ws(b, i + 1);
            if which == 5 && b.get(i) == Some(&b'[') {
                i = read_resources(text, i, prev, &mut out.resources, budget)?;
            } else {
                let (end, depth) = value_extent(b, i).ok_or_else(|| syntax(i))?;
                // The value sits inside the top-level object: one level more. Too deep stops
                // the walk before serde sees the value; `refuse`'s whole-body scan then finds
                // the same depth and says so.
                if depth > MAX_NESTING - 1 {
                    return Err(syntax(i));
                }
                let at = i..end;
                match which {
                    0 => out.version = value(text, at)?,
                    1 => out.terraform_version = value(text, at)?,
                    2 => out.serial = value(text, at)?,
                    3 => out.lineage = value(text, at)?,
                    4 => out.outputs = value_seed(text, at, OutputsSeed(&mut *budget))?,
                    // Not an array (walked above): `null` (no resources), or serde's refusal.
                    5 => {
                        if value::<Option<Vec<de::IgnoredAny>>>(text, at)?.is_some() {
                            return Err(syntax(i));
                        }
                    }
                    _ => {
                        value::<Option<&'a RawValue>>(text, at)?;
                    }
                }
                i = end;
            }
            i = skip_ws(b, i);
            match b.get(i) {
                Some(b',') => i = skip_ws(b, i + 1),
                Some(b'}') => break,
                _ => return Err(syntax(i)),
            }
        }
    }
    let end = skip_ws(b, i + 1);
    if end != b.len() {
        return Err(syntax(end));
    }
    Ok(out)
}

/// Bytes of an element's start that index it for [`read_resources`]' second look: enough
/// that the elements of a real state (whose mode, type and name come first) rarely share them.
const ELEMENT_PREFIX: usize = 256;
/// Previous elements with the same start compared at most per element: bodies crafted with
/// many elements sharing their first bytes cost at most this many extra comparisons of each
/// element (an unbounded search would be quadratic). A miss only costs a parse.
const MAX_CANDIDATES: usize = 4;

/// Which element of the previous body, if any, is byte for byte the one at `i` of `b`.
struct Matcher<'p> {
    old_body: &'p [u8],
    old: &'p [ResourceElement],
    /// The previous element after the last one found.
    next: usize,
    /// Elements that followed none found (after two, the index is built).
    misses: usize,
    /// Previous elements by their first [`ELEMENT_PREFIX`] bytes.
    index: Option<HashMap<&'p [u8], Vec<usize>>>,
}

impl<'p> Matcher<'p> {
    fn new(prev: Previous<'p>) -> Option<Matcher<'p>> {
        let (old_body, summary) = prev?;
        Some(Matcher {
            old_body,
            old: &summary.elements,
            next: 0,
            misses: 0,
            index: None,
        })
    }

    /// The previous element equal to the bytes at `b[i..]`, and its length.
    fn find(&mut self, b: &[u8], i: usize) -> Option<(usize, usize)> {
        let (old_body, old) = (self.old_body, self.old);
        let same = |k: usize| {
            let e = old.get(k)?;
            let len = e.bytes.len();
            (b.get(i..i + len)? == old_body.get(e.bytes.clone())?).then_some((k, len))
        };
        // Most writes keep elements in order: the next one, or the one after it (one
        // element inserted, removed or changed before).
        let found = same(self.next).or_else(|| same(self.next + 1)).or_else(|| {
            // Elements moved further: look them up by their first bytes.
            self.misses += 1;
            if self.misses < 2 {
                return None;
            }
            let index = self.index.get_or_insert_with(|| {
                let mut index: HashMap<&[u8], Vec<usize>> = HashMap::new();
                for (k, e) in old.iter().enumerate() {
                    let start = e.bytes.start;
                    if let Some(prefix) = old_body.get(start..start + ELEMENT_PREFIX) {
                        if e.bytes.len() >= ELEMENT_PREFIX {
                            index.entry(prefix).or_default().push(k);
                        }
                    }
                }
                index
            });
            let prefix = b.get(i..i + ELEMENT_PREFIX)?;
            index
                .get(prefix)?
                .iter()
                .take(MAX_CANDIDATES)
                .find_map(|&k| same(k))
        });
        if let Some((k, _)) = found {
            self.next = k + 1;
        }
        found
    }
}

/// Reads the top-level `resources` array that opens at `i`; returns the index after it.
///
/// At each element, the previous body's elements it most likely is ([`Matcher`]) are compared
/// byte for byte with the body there. An element whose bytes are equal is that element: a
/// JSON object's extent is fixed by its own bytes once it starts at a value position (its
/// brackets and strings close where they closed in the previous body), and what it holds
/// depends only on those bytes, so its resource and instances are the previous ones, their
/// spans moved by the difference of the offsets. Any other element is deserialized from its
/// bytes (serde checks them whole).
fn read_resources<'a>(
    text: &'a str,
    mut i: usize,
    prev: Previous<'_>,
    out: &mut Vec<Element<'a>>,
    budget: &mut Budget,
) -> Result<usize, String> {
    let b = text.as_bytes();
    let syntax = |i: usize| syntax_error(b, i);
    let mut matcher = Matcher::new(prev);
    i = skip_ws(b, i + 1);
    if b.get(i) == Some(&b']') {
        return Ok(i + 1);
    }
    loop {
        let end = match matcher.as_mut().and_then(|m| m.find(b, i)) {
            Some((k, len)) => {
                out.push(Element::Reused(i..i + len, k));
                i + len
            }
            None => {
                let (end, depth) = value_extent(b, i).ok_or_else(|| syntax(i))?;
                // Elements sit inside the top-level object and this array: two levels more.
                // (A reused element nests exactly as deep as it did in the previous body, at
                // the same place, where the reader checked it: so it needs no check here.)
                // Too deep: `refuse` reports it, as above.
                if depth > MAX_NESTING - 2 {
                    return Err(syntax(i));
                }
                let resource = value_seed(text, i..end, ResourceSeed(&mut *budget))?;
                out.push(Element::Parsed(i..end, resource));
                end
            }
        };
        i = skip_ws(b, end);
        match b.get(i) {
            Some(b',') => i = skip_ws(b, i + 1),
            Some(b']') => return Ok(i + 1),
            _ => return Err(syntax(i)),
        }
    }
}

/// A span moved from one body to another, where the bytes around it start at `to` instead of
/// `from`.
fn moved(
    span: &Option<std::ops::Range<usize>>,
    from: usize,
    to: usize,
) -> Option<std::ops::Range<usize>> {
    span.as_ref()
        .map(|r| r.start - from + to..r.end - from + to)
}

/// The address prefix of a resource's instances (`module.m[0].data.t.n`).
fn resource_base(key: &ResourceKey) -> String {
    address::render_resource(
        &key.module,
        key.mode == Mode::Data,
        &key.resource_type,
        &key.name,
    )
}

/// Checks one deserialized resource and appends its instances; returns what identifies it.
/// `seen` holds the resources before it: Terraform merges two entries for one resource and
/// keeps the last one's provider, so a second is refused.
fn read_resource(
    r: ResourceV4<'_>,
    text: &str,
    seen_resources: &mut HashSet<std::sync::Arc<ResourceKey>>,
    instances: &mut Vec<Instance>,
    budget: &mut Budget,
) -> Result<std::sync::Arc<ResourceKey>, StateError> {
    let err = |m: String| StateError(m);
    let resource_type = r.resource_type.unwrap_or_default();
    let name = r.name.unwrap_or_default();
    let mode = match r.mode.as_deref().unwrap_or_default() {
        "managed" => Mode::Managed,
        "data" => Mode::Data,
        other => {
            return Err(err(format!(
                "resource mode {:?} is neither managed nor data",
                truncate(other)
            )))
        }
    };
    if !address::is_identifier(&resource_type) || !address::is_identifier(&name) {
        return Err(err(format!(
            "resource type {:?} or name {:?} is not an identifier (a letter or _, then letters, digits, _ or -)",
            truncate(&resource_type),
            truncate(&name)
        )));
    }
    let module = match r.module.as_deref().unwrap_or_default() {
        "" => Vec::new(),
        m => address::parse_module_path(m).map_err(err)?,
    };
    let key = std::sync::Arc::new(ResourceKey {
        module,
        mode,
        resource_type,
        name,
    });
    let base = resource_base(&key);
    if !matches!(r.each.as_deref(), None | Some("" | "list" | "map")) {
        return Err(err(format!(
            "{}: \"each\" must be \"list\" or \"map\"",
            truncate(&base)
        )));
    }
    let provider = r.provider.unwrap_or_default();
    address::validate_provider(&provider).map_err(|e| err(format!("{}: {e}", truncate(&base))))?;
    if !seen_resources.insert(std::sync::Arc::clone(&key)) {
        return Err(err(format!(
            "{}: the resource appears more than once",
            truncate(&base)
        )));
    }
    let mut seen: HashSet<(Option<InstanceKey>, Option<&str>)> = HashSet::new();
    for inst in &r.instances {
        let index = match inst.index_key.map(RawValue::get) {
            None | Some("null") => None,
            Some(raw) if raw.starts_with('"') => Some(InstanceKey::Str(
                serde_json::from_str(raw).map_err(|e| err(format!("index_key: {e}")))?,
            )),
            Some(raw) => match serde_json::from_str::<serde_json::Number>(raw)
                .ok()
                .and_then(|n| n.as_u64())
            {
                Some(n) if n <= address::MAX_INT_KEY => Some(InstanceKey::Int(n)),
                _ => {
                    return Err(err(format!(
                        "{}: index_key must be an integer (at most 2^53) or a string",
                        truncate(&base)
                    )))
                }
            },
        };
        let mut address = base.clone();
        if let Some(k) = &index {
            k.render_into(&mut address);
        }
        let tainted = match inst.status.as_deref() {
            None | Some("") => false,
            Some("tainted") => true,
            Some(other) => {
                return Err(err(format!(
                    "{}: unknown status {:?}",
                    truncate(&address),
                    truncate(other)
                )))
            }
        };
        let deposed = inst.deposed.clone().filter(|d| !d.is_empty());
        if let Some(d) = &deposed {
            if d.len() != 8 || !d.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(err(format!(
                    "{}: deposed key must be 8 hexadecimal digits",
                    truncate(&address)
                )));
            }
        }
        if !seen.insert((
            index.clone(),
            inst.deposed.as_deref().filter(|d| !d.is_empty()),
        )) {
            return Err(err(format!(
                "{}: instance appears multiple times",
                truncate(&address)
            )));
        }
        let object =
            object_identity(inst).map_err(|e| err(format!("{}: {e}", truncate(&address))))?;
        instances.push(Instance {
            spans: ValueSpans {
                value: span_in(text, inst.attributes.or(inst.attributes_flat)),
                sensitive: span_in(text, inst.sensitive_attributes),
                private: span_in(text, inst.private),
                identity: span_in(text, inst.identity),
            },
            address,
            addr: InstanceAddr {
                module: key.module.clone(),
                mode,
                resource_type: key.resource_type.clone(),
                name: key.name.clone(),
                key: index,
            },
            resource_type: key.resource_type.clone(),
            mode,
            deposed,
            tainted,
            provider: provider.clone(),
            object,
        });
        if let Some(last) = instances.last() {
            budget.take(last)?;
        }
    }
    Ok(key)
}

/// Memory a state's summary may take beyond its body's size: every state of a sane size.
const SUMMARY_BASE_BYTES: usize = 64 * 1024 * 1024;
/// And per byte of the body: ordinary states take ~1-7 (their instances' addresses, types and
/// providers); a client who repeats a long module path or key over many near-empty instances
/// makes each body byte hold hundreds (a 177 KB body held 49 MB).
const SUMMARY_BYTES_PER_BODY_BYTE: usize = 8;

/// What is left of the memory a summary may take ([`SUMMARY_BASE_BYTES`] and
/// [`SUMMARY_BYTES_PER_BODY_BYTE`]), taken instance by instance as the reader builds them, so
/// a crafted state is refused before it has allocated more than that.
struct Budget {
    left: usize,
    body_len: usize,
}

impl Budget {
    fn new(body_len: usize) -> Budget {
        Budget {
            left: SUMMARY_BASE_BYTES
                .saturating_add(body_len.saturating_mul(SUMMARY_BYTES_PER_BODY_BYTE)),
            body_len,
        }
    }

    fn take(&mut self, inst: &Instance) -> Result<(), StateError> {
        self.take_bytes(std::mem::size_of::<Instance>() + inst.heap_bytes())
            .map_err(StateError)
    }

    fn take_bytes(&mut self, cost: usize) -> Result<(), String> {
        self.left = self.left.checked_sub(cost).ok_or_else(|| {
            format!(
                "the state would take more than {} MB of memory to read for its {} KB: a module path, key or provider repeated over many near-empty instances or outputs; refused",
                (SUMMARY_BASE_BYTES + self.body_len * SUMMARY_BYTES_PER_BODY_BYTE) / 1_000_000,
                self.body_len / 1000
            )
        })?;
        Ok(())
    }

    /// Gives back what was taken for something the reader no longer holds.
    fn give(&mut self, cost: usize) {
        self.left = self.left.saturating_add(cost);
    }
}

/// Reads a state body, reusing what `prev` read from the elements of its `resources` array
/// that are byte for byte in `body` (see [`read_resources`]). The one reader: every rule is
/// checked here whether elements are reused or not, and the result is the same.
fn read(body: &[u8], prev: Previous<'_>) -> Result<(StateSummary, usize), StateError> {
    let err = |m: String| StateError(m);
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(err("the body is empty".into()));
    }
    let text = std::str::from_utf8(body).map_err(|e| err(format!("not UTF-8: {e}")))?;
    // Nesting is checked by the walk on what it parses (values and changed elements, each at
    // its depth in the body); `refuse` checks the whole body first, as it always did.
    let mut budget = Budget::new(body.len());
    let file = read_top(text, prev, &mut budget).map_err(|problem| refuse(body, text, problem))?;
    let (Some(version @ 4), Some(serial)) = (file.version, file.serial) else {
        check_version_and_serial(text)?;
        return Err(err(
            "the \"version\" and \"serial\" fields are required".into()
        ));
    };
    let lineage = file.lineage.unwrap_or_default();
    if lineage.is_empty() || lineage.len() > MAX_LINEAGE_LEN || !valid_name(&lineage) {
        return Err(err(
            "lineage must be a non-empty string without spaces (a UUID)".into(),
        ));
    }
    let terraform_version = file.terraform_version.unwrap_or_default();
    if !terraform_version.is_empty()
        && !terraform_version
            .split(['.', '-', '+'])
            .next()
            .is_some_and(|major| !major.is_empty() && major.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(err(format!(
            "terraform_version {:?} is not a version",
            truncate(&terraform_version)
        )));
    }

    let mut instances = Vec::new();
    let mut elements = Vec::with_capacity(file.resources.len());
    let mut resources_seen: HashSet<std::sync::Arc<ResourceKey>> =
        HashSet::with_capacity(file.resources.len());
    let mut reused = 0;
    for element in file.resources {
        let first = instances.len();
        let (bytes, key) = match element {
            Element::Parsed(bytes, r) => {
                let charged = r.charged;
                let key = read_resource(r, text, &mut resources_seen, &mut instances, &mut budget)?;
                budget.give(charged);
                (bytes, key)
            }
            Element::Reused(bytes, k) => {
                // `read_resources` only reuses an element of `prev`.
                let found = prev.and_then(|(_, s)| {
                    let e = s.elements.get(k)?;
                    Some((e, s.instances.get(e.instances.clone())?))
                });
                let Some((e, old_instances)) = found else {
                    return Err(err("internal error: a reused element vanished".into()));
                };
                // Every check of the resource held in the previous body, which had these
                // bytes; only the one that spans elements is made again.
                if !resources_seen.insert(std::sync::Arc::clone(&e.key)) {
                    return Err(err(format!(
                        "{}: the resource appears more than once",
                        truncate(&resource_base(&e.key))
                    )));
                }
                let (from, to) = (e.bytes.start, bytes.start);
                for i in old_instances {
                    budget.take(i)?;
                    instances.push(Instance {
                        spans: ValueSpans {
                            value: moved(&i.spans.value, from, to),
                            sensitive: moved(&i.spans.sensitive, from, to),
                            private: moved(&i.spans.private, from, to),
                            identity: moved(&i.spans.identity, from, to),
                        },
                        ..i.clone()
                    });
                }
                reused += 1;
                (bytes, std::sync::Arc::clone(&e.key))
            }
        };
        elements.push(ResourceElement {
            bytes,
            instances: first..instances.len(),
            key,
        });
    }
    // The summary's outputs are built beside the list read (their names move, not copied).
    let (list, charged) = (file.outputs.list, file.outputs.charged);
    budget
        .take_bytes(list.len() * std::mem::size_of::<Output>())
        .map_err(StateError)?;
    let outputs: Vec<Output> = list
        .into_iter()
        .map(|(name, o)| Output {
            spans: ValueSpans {
                value: span_in(text, o.value),
                ..ValueSpans::default()
            },
            name,
            sensitive: o.sensitive,
        })
        .collect();
    budget.give(charged);
    let summary = StateSummary {
        version,
        terraform_version,
        serial,
        lineage,
        instances,
        outputs,
        elements,
    };
    Ok((summary, reused))
}

/// A state body and the summary this reader read from it, owned together: the only way to
/// give a read a previous body, so a summary can never be paired with bytes it was not read
/// from (not from a database, not from another body).
pub struct ParsedState {
    body: std::sync::Arc<Vec<u8>>,
    summary: std::sync::Arc<StateSummary>,
    reused: usize,
}

impl fmt::Debug for ParsedState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParsedState")
            .field("body_len", &self.body.len())
            .field("instances", &self.summary.instances.len())
            .field("reused_elements", &self.reused)
            .finish()
    }
}

impl ParsedState {
    /// Reads `body` like [`StateSummary::parse`], reusing what was read from `previous` for
    /// the elements of the `resources` array it shares byte for byte (typically all but the
    /// few a write changed). The result is exactly `StateSummary::parse(&body)`'s.
    /// The body is shared, not copied (a server holds it for the store as well).
    pub fn parse(
        body: impl Into<std::sync::Arc<Vec<u8>>>,
        previous: Option<&ParsedState>,
    ) -> Result<ParsedState, StateError> {
        let body = body.into();
        let prev = previous.map(|p| (p.body.as_slice(), p.summary.as_ref()));
        let (summary, reused) = read(&body, prev)?;
        Ok(ParsedState {
            body,
            summary: std::sync::Arc::new(summary),
            reused,
        })
    }

    /// The body.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The summary read from it.
    pub fn summary(&self) -> &std::sync::Arc<StateSummary> {
        &self.summary
    }

    /// How many resource elements were taken from the previous body rather than parsed.
    pub fn reused_elements(&self) -> usize {
        self.reused
    }

    /// Roughly the memory this holds (the body, and the summary's instances with their
    /// strings), for caches that bound what they keep.
    pub fn approx_bytes(&self) -> usize {
        self.body.len() + self.summary.approx_bytes()
    }
}

impl StateSummary {
    /// Parses and validates a state v4 document.
    pub fn parse(body: &[u8]) -> Result<StateSummary, StateError> {
        read(body, None).map(|(summary, _)| summary)
    }

    /// Roughly the memory this holds (its instances with every string and module path they
    /// own, by capacity), for caches that bound what they keep: a client chooses keys and
    /// module paths, so a small body can hold a large summary.
    pub fn approx_bytes(&self) -> usize {
        self.instances.capacity() * std::mem::size_of::<Instance>()
            + self
                .instances
                .iter()
                .map(Instance::heap_bytes)
                .sum::<usize>()
            + self.elements.len() * 128
    }

    /// Addresses of current (non-deposed) managed instances.
    pub fn managed_addresses(&self) -> BTreeSet<&str> {
        self.instances
            .iter()
            .filter(|i| i.mode == Mode::Managed && i.deposed.is_none())
            .map(|i| i.address.as_str())
            .collect()
    }

    /// Managed instance objects of `self` that a write of `next` would destroy or drop from
    /// Terraform's view (data sources are never counted). An object of `self` is removed when
    /// `next` has no object with the same structured identity (module path, mode, type, name,
    /// key) and the same deposed key, which covers:
    /// - an instance dropped from state (`destroy`, `state rm`), moved elsewhere (`state mv`,
    ///   another module path or key), or whose type or mode changed;
    /// - a current object that became deposed (create_before_destroy: Terraform destroys
    ///   deposed objects), and a deposed object that then disappears;
    ///
    /// or when `next` has such an object but it is not the same remote object:
    /// - its provider configuration address changed (Terraform would manage it through another
    ///   provider configuration, e.g. another account or region);
    /// - its `id` attribute changed or vanished (`-replace`, taint and apply), when the old
    ///   object had one;
    /// - its resource identity (Terraform 1.12 `identity`) changed, when both have one.
    ///
    /// Limit: an object with neither an `id` attribute nor an identity cannot be told from its
    /// replacement.
    pub fn removed_in<'a>(&'a self, next: &StateSummary) -> Vec<&'a Instance> {
        fn key(i: &Instance) -> (&InstanceAddr, Option<&str>) {
            (&i.addr, i.deposed.as_deref())
        }
        // Most writes keep every instance in place: `next`'s object at the same position with
        // the same key (which includes the mode) is the one the index would find (keys are
        // unique within a state), so the index is built only for the first object that moved.
        let next_instances = &next.instances;
        let mut index: Option<HashMap<(&InstanceAddr, Option<&str>), &Instance>> = None;
        self.instances
            .iter()
            .enumerate()
            .filter(|(_, i)| i.mode == Mode::Managed)
            .filter(|&(k, i)| {
                let found = match next_instances.get(k) {
                    Some(n) if key(n) == key(i) => Some(n),
                    _ => index
                        .get_or_insert_with(|| {
                            next_instances
                                .iter()
                                .filter(|n| n.mode == Mode::Managed)
                                .map(|n| (key(n), n))
                                .collect()
                        })
                        .get(&key(i))
                        .copied(),
                };
                match found {
                    None => true,
                    Some(n) => !i.same_object(n),
                }
            })
            .map(|(_, i)| i)
            .collect()
    }
}

impl Instance {
    /// Whether `next` (at the same address, or where a `moved` block took it) is still this
    /// remote object (see `removed_in`).
    pub fn same_object(&self, next: &Instance) -> bool {
        let (old, new) = (&self.object, &next.object);
        self.provider == next.provider
            && (old.id.is_none() || old.id == new.id)
            && (old.identity.is_none() || new.identity.is_none() || old.identity == new.identity)
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
    /// Computes what changed from `old` to `new`, each a body and the summary parsed from it:
    /// an instance or output changed when its content's bytes differ (compared in the bodies,
    /// so no two different contents can look the same).
    pub fn between(old: (&[u8], &StateSummary), new: (&[u8], &StateSummary)) -> StateDiff {
        fn index(s: &StateSummary) -> BTreeMap<String, &Instance> {
            let key = |i: &Instance| match &i.deposed {
                Some(d) => format!("{} (deposed {d})", i.address),
                None => i.address.clone(),
            };
            s.instances.iter().map(|i| (key(i), i)).collect()
        }
        let (old_map, new_map) = (index(old.1), index(new.1));
        let mut d = StateDiff::default();
        for (k, i) in &new_map {
            match old_map.get(k) {
                None => d.added.push(k.clone()),
                Some(o) if !o.same_content(old.0, i, new.0) => d.changed.push(k.clone()),
                Some(_) => {}
            }
        }
        d.removed = old_map
            .keys()
            .filter(|k| !new_map.contains_key(*k))
            .cloned()
            .collect();
        fn outputs(s: &StateSummary) -> BTreeMap<&str, &Output> {
            s.outputs.iter().map(|o| (o.name.as_str(), o)).collect()
        }
        let (old_out, new_out) = (outputs(old.1), outputs(new.1));
        let names: BTreeSet<&str> = old_out.keys().chain(new_out.keys()).copied().collect();
        d.outputs_changed = names
            .into_iter()
            .filter(|n| match (old_out.get(n), new_out.get(n)) {
                (Some(a), Some(b)) => !same_bytes(old.0, &a.spans.value, new.0, &b.spans.value),
                _ => true,
            })
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
        { "module": "module.m[0]", "mode": "managed", "type": "aws_db_instance", "name": "db", "provider": "module.m.provider[\"registry.terraform.io/hashicorp/aws\"]",
          "instances": [ { "index_key": "k", "attributes": {"id": "2"} }, { "index_key": 1, "status": "tainted", "attributes": {} },
                         { "index_key": 1, "deposed": "0000000a", "attributes": {} } ] },
        { "mode": "data", "type": "aws_ami", "name": "x", "provider": "provider[\"registry.terraform.io/hashicorp/aws\"]", "instances": [ { "attributes": {} } ] }
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
                "unknown key",
            ),
            (
                r#"{"version":4,"serial":1,"lineage":"x","resources":[{"mode":"weird","type":"t","name":"n"}]}"#,
                "mode",
            ),
            (
                r#"{"version":4,"serial":1,"lineage":"x","resources":[{"mode":"managed","type":"t","name":"n","provider":"provider[\"registry.terraform.io/hashicorp/aws\"]","instances":[{"status":"bad"}]}]}"#,
                "status",
            ),
            (
                r#"{"version":4,"serial":1,"lineage":"x","resources":[{"mode":"managed","type":"t","name":"n","provider":"provider[\"registry.terraform.io/hashicorp/aws\"]","instances":[{"deposed":"abc"}]}]}"#,
                "deposed",
            ),
            (
                r#"{"version":4,"serial":1,"lineage":"x","resources":[{"mode":"managed","type":"t","name":"n","provider":"provider[\"registry.terraform.io/hashicorp/aws\"]","instances":[{"deposed":"0000000g"}]}]}"#,
                "deposed",
            ),
            (
                r#"{"version":4,"serial":1,"lineage":"x","resources":[{"mode":"managed","type":"t","name":"n","provider":"provider[\"registry.terraform.io/hashicorp/aws\"]","instances":[{},{}]}]}"#,
                "multiple",
            ),
            (
                r#"{"version":4,"serial":1,"lineage":"x","resources":[{"mode":"managed","type":"t","name":"n","provider":"provider[\"registry.terraform.io/hashicorp/aws\"]","instances":[{"index_key":1.5}]}]}"#,
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
                r#""attributes": { "id": "1", "input": 2 }"#,
            )
            .replace(r#"{ "index_key": "k", "attributes": {"id": "2"} }, "#, "");
        let new = StateSummary::parse(new_text.as_bytes()).unwrap();
        let removed: Vec<_> = old
            .removed_in(&new)
            .iter()
            .map(|i| i.address.clone())
            .collect();
        assert_eq!(removed, ["module.m[0].aws_db_instance.db[\"k\"]"]);
        let d = StateDiff::between((STATE.as_bytes(), &old), (new_text.as_bytes(), &new));
        assert_eq!(d.changed, ["terraform_data.a"]);
        assert_eq!(d.removed, ["module.m[0].aws_db_instance.db[\"k\"]"]);
        assert!(d.added.is_empty());
    }

    const AWS: &str = r#"provider[\"registry.terraform.io/hashicorp/aws\"]"#;

    /// A state with the given resources (JSON text).
    fn doc(resources: &[String]) -> String {
        format!(
            r#"{{"version":4,"serial":1,"lineage":"x","resources":[{}]}}"#,
            resources.join(",")
        )
    }

    /// A managed resource `aws_db_instance.main` with the given instances (JSON text).
    fn db(instances: &str) -> String {
        format!(
            r#"{{"mode":"managed","type":"aws_db_instance","name":"main","provider":"{AWS}","instances":[{instances}]}}"#
        )
    }

    /// The attack on the 64-bit fingerprints `state diff` (and the MCP diff) compared: SipHash
    /// with fixed keys, so collisions could be searched for offline. These two attribute
    /// objects were found by such a search (~2^33 hashes, minutes on one core) and had the same
    /// fingerprint, so a version that changed one into the other showed no change. Contents
    /// are now compared byte for byte in the two bodies.
    #[test]
    fn a_change_between_once_colliding_contents_is_seen() {
        const A: &str = r#"{"id":"f16ee43520d7deb0"}"#;
        const B: &str = r#"{"id":"078b0bdccb407dcd"}"#;
        // The old fingerprint of an instance: its attributes, private data, status, identity.
        let old_fingerprint = |attrs: &str| {
            use std::hash::{DefaultHasher, Hash, Hasher};
            let mut h = DefaultHasher::new();
            for p in [Some(attrs), None, None, None] {
                p.hash(&mut h);
            }
            h.finish()
        };
        assert_eq!(old_fingerprint(A), old_fingerprint(B), "the planted pair");
        let version = |instance: &str| doc(&[db(instance)]);
        let diff = |old: &str, new: &str| {
            let (o, n) = (version(old), version(new));
            let so = StateSummary::parse(o.as_bytes()).unwrap_or_else(|e| panic!("{o}: {e}"));
            let sn = StateSummary::parse(n.as_bytes()).unwrap_or_else(|e| panic!("{n}: {e}"));
            StateDiff::between((o.as_bytes(), &so), (n.as_bytes(), &sn)).changed
        };
        let changed = ["aws_db_instance.main"];
        assert_eq!(
            diff(
                &format!(r#"{{"attributes":{A}}}"#),
                &format!(r#"{{"attributes":{B}}}"#)
            ),
            changed
        );
        // Every part of the content counts; the same content is unchanged.
        let base = r#"{"attributes":{"id":"a"},"private":"cA==","identity":{"id":"a"}}"#;
        assert!(diff(base, base).is_empty());
        for other in [
            r#"{"attributes":{"id":"b"},"private":"cA==","identity":{"id":"a"}}"#,
            r#"{"attributes":{"id":"a"},"private":"cQ==","identity":{"id":"a"}}"#,
            r#"{"attributes":{"id":"a"},"identity":{"id":"a"}}"#,
            r#"{"attributes":{"id":"a"},"private":"cA==","identity":{"id":"b"}}"#,
            r#"{"attributes":{"id":"a"},"private":"cA==","identity":{"id":"a"},"status":"tainted"}"#,
        ] {
            assert_eq!(diff(base, other), changed, "{other}");
            assert_eq!(diff(other, base), changed, "{other}");
        }
        // Outputs too.
        let with_output = |v: &str| {
            let text = format!(
                r#"{{"version":4,"serial":1,"lineage":"x","outputs":{{"o":{{"value":{v}}}}}}}"#
            );
            let s = StateSummary::parse(text.as_bytes()).unwrap();
            (text, s)
        };
        let ((ta, sa), (tb, sb)) = (with_output(A), with_output(B));
        let d = StateDiff::between((ta.as_bytes(), &sa), (tb.as_bytes(), &sb));
        assert_eq!(d.outputs_changed, ["o"]);
        assert!(
            StateDiff::between((ta.as_bytes(), &sa), (ta.as_bytes(), &sa))
                .outputs_changed
                .is_empty()
        );
    }

    fn removed(old: &str, new: &str) -> Vec<String> {
        let old = StateSummary::parse(old.as_bytes()).unwrap_or_else(|e| panic!("{old}: {e}"));
        let new = StateSummary::parse(new.as_bytes()).unwrap_or_else(|e| panic!("{new}: {e}"));
        old.removed_in(&new)
            .iter()
            .map(|i| match &i.deposed {
                Some(d) => format!("{} deposed {d}", i.address),
                None => i.address.clone(),
            })
            .collect()
    }

    #[test]
    fn refuses_keys_go_reads_differently_at_every_level() {
        let inst = r#"{"attributes":{"id":"a"}}"#;
        let cases = [
            // top level
            (
                r#"{"version":4,"serial":1,"lineage":"x","Lineage":"y"}"#.to_owned(),
                r#"key "Lineage" in the state is a case variant of "lineage""#,
            ),
            (
                r#"{"version":4,"serial":1,"lineage":"x","resources":[],"reſources":[]}"#
                    .to_owned(),
                r#"key "reſources" in the state is a case variant of "resources""#,
            ),
            (
                r#"{"version":4,"serial":1,"lineage":"x","lineage":"y"}"#.to_owned(),
                r#"duplicate key "lineage" in the state"#,
            ),
            (
                r#"{"version":4,"serial":1,"lineage":"x","bogus":1}"#.to_owned(),
                r#"unknown key "bogus" in the state"#,
            ),
            // outputs
            (
                r#"{"version":4,"serial":1,"lineage":"x","outputs":{"o":{"value":1,"Value":2}}}"#
                    .to_owned(),
                r#"key "Value" in an output is a case variant of "value""#,
            ),
            (
                r#"{"version":4,"serial":1,"lineage":"x","outputs":{"o":{"value":1,"value":2}}}"#
                    .to_owned(),
                r#"duplicate key "value" in an output"#,
            ),
            (
                r#"{"version":4,"serial":1,"lineage":"x","outputs":{"o":{"value":1},"o":{"value":2}}}"#
                    .to_owned(),
                r#"output "o" appears twice"#,
            ),
            (
                r#"{"version":4,"serial":1,"lineage":"x","outputs":{"o":{"valu":1}}}"#.to_owned(),
                r#"unknown key "valu" in an output"#,
            ),
            // resources
            (
                doc(&[db(inst).replace(r#""name":"main""#, r#""name":"main","Name":"orphan""#)]),
                r#"key "Name" in a resource is a case variant of "name""#,
            ),
            (
                doc(&[db(inst).replace(r#""name":"main""#, r#""name":"main","name":"orphan""#)]),
                r#"duplicate key "name" in a resource"#,
            ),
            (
                doc(&[db(inst).replace(r#""type""#, r#""TYPE""#)]),
                r#"key "TYPE" in a resource is a case variant of "type""#,
            ),
            (
                doc(&[db(inst).replace(r#""name":"main""#, r#""name":"main","count":2"#)]),
                r#"unknown key "count" in a resource"#,
            ),
            // instances
            (
                doc(&[db(r#"{"attributes":{"id":"a"},"index_\u212aey":1}"#)]),
                "key \"index_\u{212a}ey\" in a resource instance is a case variant of \"index_key\"",
            ),
            (
                doc(&[db(r#"{"attributes":{"id":"a"},"ſtatus":"tainted"}"#)]),
                r#"key "ſtatus" in a resource instance is a case variant of "status""#,
            ),
            (
                doc(&[db(r#"{"attributes":{"id":"a"},"attributes":{"id":"b"}}"#)]),
                r#"duplicate key "attributes" in a resource instance"#,
            ),
            (
                doc(&[db(r#"{"attributes":{"id":"a"},"provider":"x"}"#)]),
                r#"unknown key "provider" in a resource instance"#,
            ),
            // the object's id, which tells an object from its replacement
            (
                doc(&[db(r#"{"attributes":{"id":"a","x":1,"id":"b"}}"#)]),
                r#"attribute "id" appears twice"#,
            ),
        ];
        for (body, want) in cases {
            let e = StateSummary::parse(body.as_bytes()).expect_err(&body);
            assert!(e.0.contains(want), "{body}:\n  {e}\n  wanted {want}");
        }
        // Escapes decode to the same key, as in Go.
        let escaped = doc(&[db(r#"{"\u0061ttributes":{"id":"a"}}"#)]);
        assert_eq!(
            StateSummary::parse(escaped.as_bytes())
                .unwrap()
                .instances
                .len(),
            1
        );
    }

    #[test]
    fn refuses_addresses_outside_terraforms_grammar() {
        let inst = r#"{"attributes":{"id":"a"}}"#;
        let with = |from: &str, to: &str| doc(&[db(inst).replacen(from, to, 1)]);
        let cases = [
            (
                with(r#""name":"main""#, r#""name":"main[\"k\"]""#),
                "is not an identifier",
            ),
            (
                with(r#""name":"main""#, r#""name":"a.b""#),
                "is not an identifier",
            ),
            (
                with(r#""name":"main""#, r#""name":"1a""#),
                "is not an identifier",
            ),
            (
                with(r#""name":"main""#, r#""name":"""#),
                "is not an identifier",
            ),
            (
                with(r#""type":"aws_db_instance""#, r#""type":"aws db""#),
                "is not an identifier",
            ),
            (
                with(r#""mode""#, r#""module":"module.a.b","mode""#),
                "module address",
            ),
            (
                with(r#""mode""#, r#""module":"module.a[\"k\"]x","mode""#),
                "module address",
            ),
            (
                with(r#""mode""#, r#""module":"module.a[01]","mode""#),
                "module address",
            ),
            (
                with(r#""mode""#, r#""module":"module.a[\"\\u0041\"]","mode""#),
                "module address",
            ),
            (
                with(r#""mode""#, r#""each":"set","mode""#),
                "\"each\" must be",
            ),
            (with(AWS, ""), "provider address"),
            (with(AWS, "aws"), "provider address"),
            (with(AWS, "provider.aws"), "provider address"),
            (
                with(AWS, r#"provider[\"hashicorp/aws\"]"#),
                "provider address",
            ),
            (
                with(
                    AWS,
                    r#"module.a[0].provider[\"registry.terraform.io/hashicorp/aws\"]"#,
                ),
                "provider address",
            ),
            (doc(&[db(r#"{"index_key":9007199254740993}"#)]), "index_key"),
            (doc(&[db(r#"{"index_key":-1}"#)]), "index_key"),
            (doc(&[db(r#"{"index_key":true}"#)]), "index_key"),
            (doc(&[db(inst), db(inst)]), "appears more than once"),
            (
                doc(&[db(inst), db("").replace(AWS, &format!("{AWS}.west"))]),
                "appears more than once",
            ),
        ];
        for (body, want) in cases {
            let e = StateSummary::parse(body.as_bytes()).expect_err(&body);
            assert!(e.0.contains(want), "{body}:\n  {e}\n  wanted {want}");
        }
    }

    #[test]
    fn reads_a_state_terraform_1_11_wrote() {
        // count, for_each with odd keys, modules with for_each and count, data sources in
        // modules, sensitive outputs, a tainted object and a deposed one (create_before_destroy
        // whose new object's provisioner failed).
        let s = StateSummary::parse(include_bytes!("testdata/terraform-1.11.json")).unwrap();
        let addrs: Vec<String> = s
            .instances
            .iter()
            .map(|i| {
                format!(
                    "{}{}",
                    i.address,
                    if i.deposed.is_some() {
                        " (deposed)"
                    } else {
                        ""
                    }
                )
            })
            .collect();
        assert_eq!(
            addrs,
            [
                "terraform_data.cbd",
                "terraform_data.cbd (deposed)",
                "terraform_data.counted[0]",
                "terraform_data.counted[1]",
                "terraform_data.keyed[\"a\"]",
                "terraform_data.keyed[\"b c\"]",
                "terraform_data.keyed[\"x.y[\\\"z\\\"]\"]",
                "terraform_data.single",
                "module.m[\"one\"].data.terraform_remote_state.self",
                "module.m[\"one\"].terraform_data.inner",
                "module.m[\"tw\\\"o\"].data.terraform_remote_state.self",
                "module.m[\"tw\\\"o\"].terraform_data.inner",
                "module.n[0].data.terraform_remote_state.self",
                "module.n[0].terraform_data.inner",
            ]
        );
        assert!(s.instances.first().unwrap().tainted);
        assert!(s
            .instances
            .iter()
            .filter(|i| i.mode == Mode::Managed)
            .all(|i| i.object.id.is_some()));
        assert_eq!(s.outputs.iter().filter(|o| o.sensitive).count(), 1);
        assert!(s.removed_in(&s).is_empty());
    }

    #[test]
    fn removed_in_counts_every_way_an_object_goes() {
        let v1 = doc(&[db(r#"{"attributes":{"id":"a","size":1}}"#)]);
        // An in-place update keeps the object.
        assert!(removed(&v1, &doc(&[db(r#"{"attributes":{"id":"a","size":2}}"#)])).is_empty());
        // Dropped, replaced (id changes or vanishes), deposed.
        assert_eq!(removed(&v1, &doc(&[])), ["aws_db_instance.main"]);
        assert_eq!(
            removed(&v1, &doc(&[db(r#"{"attributes":{"id":"b"}}"#)])),
            ["aws_db_instance.main"]
        );
        assert_eq!(
            removed(&v1, &doc(&[db(r#"{"attributes":{}}"#)])),
            ["aws_db_instance.main"]
        );
        assert_eq!(
            removed(&v1, &doc(&[db(r#"{"attributes":{"id":null}}"#)])),
            ["aws_db_instance.main"]
        );
        assert_eq!(
            removed(
                &v1,
                &doc(&[db(
                    r#"{"attributes":{"id":"b"}},{"deposed":"0a0b0c0d","attributes":{"id":"a"}}"#
                )])
            ),
            ["aws_db_instance.main"]
        );
        assert_eq!(
            removed(
                &v1,
                &doc(&[db(r#"{"deposed":"0a0b0c0d","attributes":{"id":"a"}}"#)])
            ),
            ["aws_db_instance.main"]
        );
        // A deposed object that disappears.
        let deposed = doc(&[db(
            r#"{"attributes":{"id":"b"}},{"deposed":"0a0b0c0d","attributes":{"id":"a"}}"#,
        )]);
        assert_eq!(
            removed(&deposed, &doc(&[db(r#"{"attributes":{"id":"b"}}"#)])),
            ["aws_db_instance.main deposed 0a0b0c0d"]
        );
        // Another provider configuration, type, mode, key or module is another instance.
        assert_eq!(
            removed(
                &v1,
                &doc(&[db(r#"{"attributes":{"id":"a"}}"#).replace(AWS, &format!("{AWS}.west"))])
            ),
            ["aws_db_instance.main"]
        );
        for (from, to) in [
            (r#""type":"aws_db_instance""#, r#""type":"aws_rds_cluster""#),
            (r#""mode":"managed""#, r#""mode":"data""#),
            (r#""mode""#, r#""module":"module.m","mode""#),
        ] {
            let moved = doc(&[db(r#"{"attributes":{"id":"a","size":1}}"#).replace(from, to)]);
            assert_eq!(removed(&v1, &moved), ["aws_db_instance.main"], "{to}");
        }
        assert_eq!(
            removed(
                &v1,
                &doc(&[db(r#"{"index_key":0,"attributes":{"id":"a","size":1}}"#)])
            ),
            ["aws_db_instance.main"]
        );
        // Resource identity (Terraform 1.12): compared when both sides have one.
        let ident = |i: &str| {
            doc(&[db(&format!(
                r#"{{"attributes":{{"id":"a"}},"identity_schema_version":0,"identity":{i}}}"#
            ))])
        };
        assert!(removed(&v1, &ident(r#"{"arn":"x"}"#)).is_empty());
        assert!(removed(&ident(r#"{"arn":"x"}"#), &ident(r#"{ "arn" : "x" }"#)).is_empty());
        assert!(removed(&ident(r#"{"arn":"x"}"#), &v1).is_empty());
        assert_eq!(
            removed(&ident(r#"{"arn":"x"}"#), &ident(r#"{"arn":"y"}"#)),
            ["aws_db_instance.main"]
        );
        // The limit: with neither id nor identity, a replacement looks like an update.
        let no_id = |v: &str| doc(&[db(&format!(r#"{{"attributes":{{"name":"{v}"}}}}"#))]);
        assert!(removed(&no_id("a"), &no_id("b")).is_empty());
        // Keys and values decode as JSON: escapes change nothing, nested ids are not the id.
        assert!(removed(&v1, &doc(&[db(r#"{"attributes":{"\u0069d":"\u0061"}}"#)])).is_empty());
        assert_eq!(
            removed(&v1, &doc(&[db(r#"{"attributes":{"\u0069d":"b"}}"#)])),
            ["aws_db_instance.main"]
        );
        assert!(removed(
            &v1,
            &doc(&[db(
                r#"{"attributes":{"x":{"id":"z"},"y":["id"],"id" : "a" ,"z":"id"}}"#
            )])
        )
        .is_empty());
        // Legacy flatmap attributes carry the id too.
        let flat = |v: &str| doc(&[db(&format!(r#"{{"attributes_flat":{{"id":"{v}"}}}}"#))]);
        assert_eq!(removed(&flat("a"), &flat("b")), ["aws_db_instance.main"]);
        // Data sources are never removals.
        let data = doc(&[db(r#"{"attributes":{"id":"a"}}"#).replace("managed", "data")]);
        assert!(removed(&data, &doc(&[])).is_empty());
    }

    /// `removed_in` matches objects in place and falls back to an index once they move: its
    /// answer is the index's whatever the order (reordered, inserted, dropped, a data source
    /// taking a managed instance's position, deposed objects).
    #[test]
    fn removed_in_finds_objects_in_place_or_moved() {
        let inst =
            |k: usize, id: &str| format!(r#"{{"index_key":{k},"attributes":{{"id":"{id}"}}}}"#);
        let state = |entries: &[(usize, &str)], data: bool| {
            let list: Vec<String> = entries.iter().map(|&(k, id)| inst(k, id)).collect();
            let mut resources = vec![db(&list.join(","))];
            if data {
                resources.insert(0, db(&inst(0, "d")).replace("managed", "data"));
            }
            doc(&resources)
        };
        let by_index = |old: &str, new: &str| -> Vec<String> {
            let (old, new) = (
                StateSummary::parse(old.as_bytes()).unwrap(),
                StateSummary::parse(new.as_bytes()).unwrap(),
            );
            let kept: HashMap<(&InstanceAddr, Option<&str>), &Instance> = new
                .instances
                .iter()
                .filter(|i| i.mode == Mode::Managed)
                .map(|i| ((&i.addr, i.deposed.as_deref()), i))
                .collect();
            old.instances
                .iter()
                .filter(|i| i.mode == Mode::Managed)
                .filter(|i| {
                    kept.get(&(&i.addr, i.deposed.as_deref()))
                        .is_none_or(|n| !i.same_object(n))
                })
                .map(|i| i.address.clone())
                .collect()
        };
        let v1 = [(0, "a"), (1, "b"), (2, "c"), (3, "d")];
        let cases: Vec<(Vec<(usize, &str)>, bool)> = vec![
            (v1.to_vec(), false),
            (vec![(0, "a"), (1, "B"), (2, "c"), (3, "d")], false),
            (vec![(3, "d"), (2, "c"), (1, "b"), (0, "a")], false),
            (vec![(0, "a"), (2, "c"), (3, "d")], false),
            (
                vec![(0, "a"), (9, "z"), (1, "b"), (2, "c"), (3, "D")],
                false,
            ),
            (v1.to_vec(), true),
            (vec![(1, "b"), (2, "c")], true),
            (vec![], false),
        ];
        for (old_data, new_data) in [(false, false), (true, false), (false, true)] {
            for (entries, data) in &cases {
                let old = state(&v1, old_data);
                let new = state(entries, *data || new_data);
                assert_eq!(removed(&old, &new), by_index(&old, &new), "{new}");
                assert_eq!(removed(&new, &old), by_index(&new, &old), "{new}");
            }
        }
        assert_eq!(
            removed(
                &state(&v1, false),
                &state(&[(0, "a"), (1, "B"), (3, "d")], false)
            ),
            ["aws_db_instance.main[1]", "aws_db_instance.main[2]"]
        );
    }

    #[test]
    fn the_structural_scan_stops_at_every_bracket_and_quote() {
        // Every position of every byte value: the scan finds exactly the first of `"[]{}`.
        for len in 0..40 {
            for at in 0..=len {
                for b in 0..=255u8 {
                    let mut v = vec![b' '; len];
                    if at < len {
                        v[at] = b;
                    }
                    let want = if at < len && b"\"[]{}".contains(&b) {
                        at
                    } else {
                        len
                    };
                    assert_eq!(next_structural(&v, 0), want, "byte {b:#x} at {at} of {len}");
                }
            }
        }
        assert!(nests_deeper_than(&[b'['; 20], 19));
        assert!(!nests_deeper_than(b"[[[\"[[[[[[[[\"]]]", 3));
        assert!(nests_deeper_than(b"{ \"a\" :  [ { \"b\": [1] } ] }", 3));
        assert!(!nests_deeper_than(b"{ \"a\" :  [ { \"b\": [1] } ] }", 4));
    }

    #[test]
    fn top_level_id_reads_only_the_top_level() {
        let cases: &[(&str, Option<&str>)] = &[
            (r#"{"id":"a"}"#, Some(r#""a""#)),
            (r#"{ "x" : {"id":"inner"}, "id" : 7 }"#, Some("7")),
            (
                r#"{"x":[{"id":1},"]}\"{"],"y":"\"id\"","id":null}"#,
                Some("null"),
            ),
            (r#"{"i\u0064":"esc"}"#, Some(r#""esc""#)),
            (r#"{"x":"id","ids":1,"Id":2}"#, None),
            (r#"{}"#, None),
            (
                r#"{"a":true,"b":-1.5e3,"id":{"k":["v"]}}"#,
                Some(r#"{"k":["v"]}"#),
            ),
        ];
        for (obj, want) in cases {
            assert_eq!(top_level_id(obj).unwrap(), *want, "{obj}");
        }
        for dup in [r#"{"id":1,"id":2}"#, r#"{"id":1,"i\u0064":2}"#] {
            assert!(top_level_id(dup).unwrap_err().contains("twice"), "{dup}");
        }
    }
}

#[cfg(test)]
#[path = "state_reuse_tests.rs"]
mod reuse_tests;
