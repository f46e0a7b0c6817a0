//! Reader for Terraform's binary plan file (`terraform plan -out`), enough to tie a plan JSON to
//! the binary that will be applied.
//!
//! A plan file is a zip archive. Its `tfplan` member is a protobuf message (`tfplan.Plan`,
//! Terraform's `internal/plans/planproto/planfile.proto`); its `tfstate` member is the prior
//! state (state v4 JSON). This module reads, from those two members only, what decides what an
//! apply does to managed objects: every resource instance change (address, deposed key, action),
//! every output change, the planning mode, whether planning errored, and the lineage and serial
//! of the prior state. Attribute values are never decoded.
//!
//! **Invariant:** no I/O, never panics on input, bounded memory: the members it reads may
//! inflate to at most the caller's `max_inflated` in all (checked on their declared sizes before
//! any is inflated, and no member inflates past its declared size: a zip member inflates up to
//! ~1000x, so a small upload could otherwise make the server hold gigabytes), and what it
//! decodes from them is bounded in proportion (changes by a budget, the module manifest by a
//! count of records and keys). The server judges a run's plan JSON only after [`PlanFile::matches_json`] says the
//! JSON lists exactly the changes of the binary it stores.

use std::collections::BTreeSet;
use std::fmt;

use crate::plan::{bounded_list, Scalar};

/// Largest inflated `tfplan` or `tfstate` member accepted.
pub const MAX_MEMBER_BYTES: usize = 256 * 1024 * 1024;
/// What [`PlanFile::parse`] lets the members it reads inflate to in all (the server passes the
/// uploader's own limit to [`PlanFile::parse_within`]).
pub const MAX_INFLATED_BYTES: usize = 1024 * 1024 * 1024;
/// Memory the decoded changes may take beyond [`CHANGE_BYTES_PER_PLAN_BYTE`] per `tfplan` byte.
const CHANGES_BASE_BYTES: usize = 64 * 1024 * 1024;
/// A real change takes a few hundred bytes of `tfplan` (address, provider, values) and ~150
/// decoded; a crafted one takes 5 bytes (a one-letter address and nothing else).
const CHANGE_BYTES_PER_PLAN_BYTE: usize = 2;
/// Most modules `tfconfig/modules.json` may list (module calls of a configuration, not
/// instances: real ones have tens to hundreds).
const MAX_MODULES: usize = 10_000;

/// The plan file format versions this reader understands (Terraform 1.x writes 3).
const PLAN_FORMAT_VERSION: u64 = 3;

/// Why a body is not a readable plan file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanFileError(pub String);

impl fmt::Display for PlanFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "binary plan: {}", self.0)
    }
}

impl std::error::Error for PlanFileError {}

fn err<T>(m: impl Into<String>) -> Result<T, PlanFileError> {
    Err(PlanFileError(m.into()))
}

/// One resource instance change of the binary plan.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct BinaryChange {
    /// Instance address as Terraform renders it.
    pub address: String,
    /// Deposed key, for a change to a deposed object.
    pub deposed: Option<String>,
    /// Actions as the plan JSON spells them (`["delete","create"]`, ...).
    pub actions: Vec<String>,
}

impl BinaryChange {
    /// What a plan JSON entry (`resource_changes` or `resource_drift`) says, in the terms the
    /// binary plan is compared in: address, deposed key and actions.
    pub fn of(rc: &crate::plan::ResourceChange) -> BinaryChange {
        BinaryChange {
            address: rc.address.clone(),
            deposed: rc.deposed.clone(),
            actions: rc.change.actions.clone(),
        }
    }
}

/// What the binary plan says an apply will do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlanFile {
    /// Terraform version that wrote the plan.
    pub terraform_version: String,
    /// The planning mode (`tfplan.Plan.ui_mode`, field 17).
    pub mode: PlanMode,
    /// Planning failed part-way (such a plan cannot be applied).
    pub errored: bool,
    /// Every resource instance change, no-ops included, sorted.
    pub changes: Vec<BinaryChange>,
    /// What the refresh found changed outside Terraform (`resource_drift`, field 18): in a
    /// refresh-only plan, what an apply records in the state (an update, or a delete that drops
    /// the instance). Sorted.
    pub drift: Vec<BinaryChange>,
    /// Root output changes: name and actions, sorted.
    pub outputs: Vec<(String, Vec<String>)>,
    /// Lineage of the prior state (None when the plan holds no prior state).
    pub prior_lineage: Option<String>,
    /// Serial of the prior state.
    pub prior_serial: Option<u64>,
    /// The prior state as embedded (state v4 JSON, refreshed: what the apply starts from).
    pub prior_state: Vec<u8>,
    /// The configuration `terraform apply PLAN` will use (it never reads the checkout's): each
    /// file of a local module with its path relative to the root module's directory, plus the
    /// embedded `.terraform.lock.hcl`. Sorted by path.
    pub config_files: Vec<(String, Vec<u8>)>,
    /// Modules whose source is not a local directory (registry, git, ...): their files are in the
    /// plan but are not part of any checkout.
    pub remote_modules: Vec<String>,
    /// Every embedded configuration file, by module key (`""` for the root module) and file
    /// name, local and remote modules alike: `airlock apply` compares them with what its own
    /// `terraform init` put in the checkout.
    pub module_files: Vec<(String, String, Vec<u8>)>,
    /// The backend the plan was made with, which `terraform apply PLAN` writes state to.
    pub backend: Option<PlanBackend>,
}

impl PlanFile {
    /// The (lineage, serial) of the state the plan was made against: `(None, None)` for an
    /// empty stack (whose plan holds no lineage, or an empty one). `airlock plan` claims it and
    /// the server checks the claim with this same function.
    pub fn planned_against(&self) -> (Option<String>, Option<u64>) {
        match (self.prior_lineage.as_deref(), self.prior_serial) {
            (None | Some(""), _) => (None, None),
            (Some(l), s) => (Some(l.to_owned()), s),
        }
    }
}

/// `tfplan.Mode`: how the plan was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PlanMode {
    /// `terraform plan`.
    #[default]
    Normal,
    /// `terraform plan -destroy`.
    Destroy,
    /// `terraform plan -refresh-only`: an apply changes no infrastructure, it records in the
    /// state what the refresh found (the plan's drift).
    RefreshOnly,
}

impl PlanMode {
    /// The mode's code in `tfplan.Plan.ui_mode`; an unknown code is refused (a mode this reader
    /// does not know may do what it does not know).
    fn from_code(code: u64) -> Result<PlanMode, PlanFileError> {
        match code {
            0 => Ok(PlanMode::Normal),
            1 => Ok(PlanMode::Destroy),
            2 => Ok(PlanMode::RefreshOnly),
            other => err(format!("unknown planning mode {other}")),
        }
    }

    /// `normal`, `destroy`, `refresh-only` (as the run record and metadata spell it).
    pub fn as_str(self) -> &'static str {
        match self {
            PlanMode::Normal => "normal",
            PlanMode::Destroy => "destroy",
            PlanMode::RefreshOnly => "refresh-only",
        }
    }

    /// The inverse of [`PlanMode::as_str`].
    pub fn parse(s: &str) -> Option<PlanMode> {
        [PlanMode::Normal, PlanMode::Destroy, PlanMode::RefreshOnly]
            .into_iter()
            .find(|m| m.as_str() == s)
    }
}

/// `tfplan.Backend`: where `terraform apply PLAN` reads and writes state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlanBackend {
    /// Backend type, e.g. `http`.
    pub kind: String,
    /// Workspace name.
    pub workspace: String,
    /// The backend configuration's string attributes (others are left out).
    pub config: Vec<(String, String)>,
}

impl PlanBackend {
    /// A string attribute of the configuration.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.config
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Checks that this is airlock's `http` backend for exactly `state_url` (address, lock and
    /// unlock address), in the default workspace.
    pub fn check_is(&self, state_url: &str) -> Result<(), String> {
        if self.kind != "http" {
            return Err(format!(
                "the plan's backend is {:?}, not airlock's http backend",
                self.kind
            ));
        }
        if !self.workspace.is_empty() && self.workspace != "default" {
            return Err(format!(
                "the plan's workspace is {:?}, not default",
                self.workspace
            ));
        }
        for key in ["address", "lock_address", "unlock_address"] {
            if self.get(key) != Some(state_url) {
                return Err(format!(
                    "the plan's backend {key} is {:?}, not {state_url}: terraform apply would write state elsewhere",
                    self.get(key).unwrap_or("unset")
                ));
            }
        }
        // The state lock is where the apply waits for its plan check: it must be a LOCK.
        for (key, method) in [("lock_method", "LOCK"), ("unlock_method", "UNLOCK")] {
            if self.get(key).is_some_and(|m| m != method) {
                return Err(format!(
                    "the plan's backend {key} is {:?}, not {method}: airlock's state lock takes {method} only",
                    self.get(key).unwrap_or_default()
                ));
            }
        }
        // The apply talks to the state as its run (the run-bound token in its environment),
        // over a verified connection: a plan carrying its own credentials or turning off the
        // certificate check would have it talk as someone else, or to someone else.
        for key in ["username", "password"] {
            if self.get(key).is_some_and(|v| !v.is_empty()) {
                return Err(format!(
                    "the plan's backend sets {key}: terraform apply would talk to the state as that identity, not as its run"
                ));
            }
        }
        if self.get("skip_cert_verification") == Some("true") {
            return Err(
                "the plan's backend sets skip_cert_verification = true: terraform apply would not verify the state server's certificate".into(),
            );
        }
        Ok(())
    }
}

impl PlanFile {
    /// Reads a plan file, letting the members it reads inflate to [`MAX_INFLATED_BYTES`].
    pub fn parse(bytes: &[u8]) -> Result<PlanFile, PlanFileError> {
        PlanFile::parse_within(bytes, MAX_INFLATED_BYTES)
    }

    /// Reads a plan file whose members it reads inflate to at most `max_inflated` bytes in all
    /// (by their declared sizes, checked before any is inflated).
    pub fn parse_within(bytes: &[u8], max_inflated: usize) -> Result<PlanFile, PlanFileError> {
        let members = zip_members(bytes)?;
        let inflated = members
            .iter()
            .filter(|m| m.is_read())
            .fold(0usize, |sum, m| sum.saturating_add(m.uncompressed));
        if inflated > max_inflated {
            return err(format!(
                "its members inflate to {} MB, more than the {} MB accepted for this upload",
                inflated / 1_000_000,
                max_inflated / 1_000_000
            ));
        }
        let Some(tfplan) = members.iter().find(|m| m.name == "tfplan") else {
            return err("the archive has no tfplan member: not a Terraform plan file");
        };
        let mut plan = decode_plan(&tfplan.inflate(bytes)?)?;
        if let Some(state) = members.iter().find(|m| m.name == "tfstate") {
            let body = state.inflate(bytes)?;
            #[derive(serde::Deserialize)]
            struct Prior {
                serial: u64,
                lineage: String,
            }
            let prior: Prior = serde_json::from_slice(&body)
                .map_err(|e| PlanFileError(format!("its prior state is not readable: {e}")))?;
            plan.prior_lineage = Some(prior.lineage);
            plan.prior_serial = Some(prior.serial);
            plan.prior_state = body;
        }
        read_config(bytes, &members, &mut plan)?;
        Ok(plan)
    }

    /// Checks that `json_changes` (the `resource_changes` of a plan JSON: address, deposed key,
    /// actions) and `json_outputs` (`output_changes`: name, actions) are exactly this binary
    /// plan's. Returns the first differences found, in words.
    pub fn matches_json(
        &self,
        json_changes: &[BinaryChange],
        json_outputs: &[(String, Vec<String>)],
    ) -> Result<(), String> {
        let mut problems = change_differences(
            &self.changes,
            json_changes,
            ("the binary plan has", "that the JSON does not list"),
            ("the JSON lists", "that the binary plan does not have"),
        );
        let ours: BTreeSet<&(String, Vec<String>)> = self.outputs.iter().collect();
        let theirs: BTreeSet<&(String, Vec<String>)> = json_outputs.iter().collect();
        for (name, actions) in ours.symmetric_difference(&theirs).take(5) {
            problems.push(format!(
                "output {name} ({}) differs between the binary plan and the JSON",
                actions.join("+")
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}

impl PlanFile {
    /// A resource change that a refresh-only plan must not have: Terraform makes none in that
    /// mode (its apply only records the drift), so a refresh-only binary with a change that is
    /// not a no-op was not made by Terraform, and its change would be applied unjudged.
    pub fn refresh_only_change(&self) -> Option<&BinaryChange> {
        (self.mode == PlanMode::RefreshOnly)
            .then(|| {
                self.changes
                    .iter()
                    .find(|c| c.actions.iter().any(|a| a != "no-op"))
            })
            .flatten()
    }

    /// Checks that `json_drift` (the `resource_drift` of a plan JSON) is exactly this binary
    /// plan's drift. For a refresh-only plan the drift is what the apply records, so the JSON a
    /// server judges must list every drifted instance with the binary's actions: an instance the
    /// binary drops from the state cannot be hidden from reviewers or shown as an update.
    pub fn matches_json_drift(&self, json_drift: &[BinaryChange]) -> Result<(), String> {
        let problems = change_differences(
            &self.drift,
            json_drift,
            (
                "the binary plan's drift has",
                "that the JSON's resource_drift does not list",
            ),
            (
                "the JSON's resource_drift lists",
                "that the binary plan's drift does not have",
            ),
        );
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}

/// The changes only one side has (at most 5 each way), in words: `(before, after)` frame the
/// change for each side, e.g. ("the JSON lists", "that the binary plan does not have").
fn change_differences(
    ours: &[BinaryChange],
    theirs: &[BinaryChange],
    only_ours: (&str, &str),
    only_theirs: (&str, &str),
) -> Vec<String> {
    let ours: BTreeSet<&BinaryChange> = ours.iter().collect();
    let theirs: BTreeSet<&BinaryChange> = theirs.iter().collect();
    let words = |(before, after): (&str, &str), c: &BinaryChange| {
        format!("{before} {} {} {after}", c.actions.join("+"), describe(c))
    };
    let mut out: Vec<String> = ours
        .difference(&theirs)
        .take(5)
        .map(|c| words(only_ours, c))
        .collect();
    out.extend(
        theirs
            .difference(&ours)
            .take(5)
            .map(|c| words(only_theirs, c)),
    );
    out
}

fn describe(c: &BinaryChange) -> String {
    match &c.deposed {
        Some(d) => format!("{} (deposed {d})", c.address),
        None => c.address.clone(),
    }
}

/// Fills `config_files` and `remote_modules` from the `tfconfig/` members: `modules.json` maps
/// each module key to its directory, relative to the root module's; `tfconfig/m-KEY/FILE` holds
/// the files Terraform loaded for that module.
/// One record of `tfconfig/modules.json`, read strictly: exactly the keys Terraform writes, each
/// once, and no case- or fold-variant of them (Go's decoder would read `"source"` as `Source`,
/// and the last duplicate wins, so a lenient reader would see another manifest than Terraform).
struct ManifestModule {
    key: String,
    source: String,
    dir: String,
}

fn read_manifest(body: &[u8]) -> Result<Vec<ManifestModule>, PlanFileError> {
    let bad = |m: String| PlanFileError(format!("tfconfig/modules.json: {m}"));
    let records = serde_json::from_slice::<Records>(body).map_err(|e| bad(e.to_string()))?;
    let mut out = Vec::with_capacity(records.0.len());
    let mut keys = std::collections::BTreeSet::new();
    for fields in records.0 {
        let mut seen = std::collections::BTreeSet::new();
        let (mut key, mut source, mut dir) = (None, String::new(), None);
        for (k, v) in fields {
            if !["Key", "Source", "Version", "Dir"].contains(&k.as_str()) {
                return Err(bad(format!("unexpected key {k:?}")));
            }
            if !seen.insert(k.clone()) {
                return Err(bad(format!("key {k:?} appears twice")));
            }
            let text = match v {
                Scalar(serde_json::Value::String(t)) => t,
                _ if k == "Version" => continue,
                _ => return Err(bad(format!("{k} is not a string"))),
            };
            match k.as_str() {
                "Key" => key = Some(text),
                "Source" => source = text,
                "Dir" => dir = Some(text),
                _ => {}
            }
        }
        let (Some(key), Some(dir)) = (key, dir) else {
            return Err(bad("a module record lacks Key or Dir".into()));
        };
        if !keys.insert(key.clone()) {
            return Err(bad(format!("module {key:?} is listed twice")));
        }
        out.push(ManifestModule { key, source, dir });
    }
    Ok(out)
}

/// The records of `tfconfig/modules.json`, each a JSON object with its keys in order and
/// duplicates kept (so they can be refused), at most [`MAX_MODULES`] records of at most five
/// keys (one more than Terraform writes, to name the unexpected one), values read as
/// [`Scalar`]s: a crafted manifest of millions of records or keys, or of huge values, is
/// refused or skipped as it is read, not built first.
struct Records(Vec<Vec<(String, Scalar)>>);

impl<'de> serde::Deserialize<'de> for Records {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let records: Vec<Record> = bounded_list(d, MAX_MODULES, "module records")?;
        Ok(Records(records.into_iter().map(|r| r.0).collect()))
    }
}

struct Record(Vec<(String, Scalar)>);

impl<'de> serde::Deserialize<'de> for Record {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Record;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Record, A::Error> {
                let mut out = Vec::new();
                while let Some(k) = m.next_key::<String>()? {
                    if out.len() == 5 {
                        return Err(serde::de::Error::custom(
                            "a module record with more than five keys",
                        ));
                    }
                    out.push((k, m.next_value()?));
                }
                Ok(Record(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// Fills `config_files`, `module_files` and `remote_modules` from the `tfconfig/` members:
/// `modules.json` maps each module key to its directory, relative to the root module's;
/// `tfconfig/m-KEY/FILE` holds the files Terraform loaded for that module.
fn read_config(bytes: &[u8], members: &[Member], plan: &mut PlanFile) -> Result<(), PlanFileError> {
    let Some(manifest) = members.iter().find(|m| m.name == "tfconfig/modules.json") else {
        return err("the plan holds no configuration snapshot (tfconfig/modules.json)");
    };
    let modules = read_manifest(&manifest.inflate(bytes)?)?;
    let by_key: std::collections::BTreeMap<&str, &ManifestModule> =
        modules.iter().map(|m| (m.key.as_str(), m)).collect();
    for m in members {
        if m.name == ".terraform.lock.hcl" {
            plan.config_files.push((m.name.clone(), m.inflate(bytes)?));
            continue;
        }
        let Some(rest) = m.name.strip_prefix("tfconfig/m-") else {
            if m.name.starts_with("tfconfig/") && m.name != "tfconfig/modules.json" {
                return err(format!("unexpected configuration member {}", m.name));
            }
            continue;
        };
        let Some((key, file)) = rest.split_once('/') else {
            return err(format!("unexpected configuration member {}", m.name));
        };
        if file.is_empty() || file.contains('/') {
            return err(format!("unexpected configuration member {}", m.name));
        }
        let Some(module) = by_key.get(key) else {
            return err(format!(
                "{} belongs to no module of tfconfig/modules.json",
                m.name
            ));
        };
        let content = m.inflate(bytes)?;
        plan.module_files
            .push((module.key.clone(), file.to_owned(), content.clone()));
        let local = module.key.is_empty()
            || module.source.starts_with("./")
            || module.source.starts_with("../");
        if !local {
            if !plan.remote_modules.contains(&module.key) {
                plan.remote_modules.push(module.key.clone());
            }
            continue;
        }
        let path = airlock_core::inputs::join(&module.dir, file);
        plan.config_files.push((path, content));
    }
    plan.config_files.sort();
    plan.module_files.sort();
    Ok(())
}

/// Whether a `.terraform.lock.hcl` locks any provider. Terraform embeds a lock file in every
/// plan, a bare header when the checkout has none (no providers to lock): only one that locks
/// something must match a file of the checkout.
pub fn lock_file_locks_providers(lock: &[u8]) -> bool {
    lock.windows(10).any(|w| w == b"provider \"")
}

// --- zip (only what Terraform's archive/zip writer produces: stored or deflated, no zip64) ---

struct Member {
    name: String,
    method: u16,
    compressed: usize,
    uncompressed: usize,
    local_offset: usize,
}

fn u16_at(b: &[u8], at: usize) -> Result<u16, PlanFileError> {
    match b.get(at..at + 2) {
        Some(&[x, y]) => Ok(u16::from_le_bytes([x, y])),
        _ => err("the zip archive is truncated"),
    }
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, PlanFileError> {
    match b.get(at..at + 4) {
        Some(&[w, x, y, z]) => Ok(u32::from_le_bytes([w, x, y, z])),
        _ => err("the zip archive is truncated"),
    }
}

fn usize_at(b: &[u8], at: usize) -> Result<usize, PlanFileError> {
    usize::try_from(u32_at(b, at)?).or_else(|_| err("a zip size does not fit"))
}

const EOCD_SIG: u32 = 0x0605_4b50;
const CENTRAL_SIG: u32 = 0x0201_4b50;
const LOCAL_SIG: u32 = 0x0403_4b50;

fn zip_members(b: &[u8]) -> Result<Vec<Member>, PlanFileError> {
    if !b.starts_with(b"PK\x03\x04") {
        return err("not a zip archive (a binary plan from `terraform plan -out` is one)");
    }
    // The end-of-central-directory record is the last 22 bytes plus an optional comment.
    let last = b.len().saturating_sub(22);
    let first = last.saturating_sub(65_535);
    let eocd = (first..=last)
        .rev()
        .find(|&i| u32_at(b, i).ok() == Some(EOCD_SIG))
        .ok_or_else(|| PlanFileError("the zip archive has no central directory".into()))?;
    let count = usize::from(u16_at(b, eocd + 10)?);
    let cd_size = usize_at(b, eocd + 12)?;
    let mut at = usize_at(b, eocd + 16)?;
    // The central directory must end exactly where its end record starts, and hold exactly
    // `count` entries: Go's reader tolerates more, and a second copy of a member there could
    // be read by Terraform and not by us.
    if at.checked_add(cd_size) != Some(eocd) || at == 0xFFFF_FFFF {
        return err("the zip central directory does not end at its end record");
    }
    if count > 10_000 {
        return err("the zip archive lists too many members");
    }
    let mut members = Vec::with_capacity(count);
    for _ in 0..count {
        if u32_at(b, at)? != CENTRAL_SIG {
            return err("the zip central directory is malformed");
        }
        let name_len = usize::from(u16_at(b, at + 28)?);
        let extra_len = usize::from(u16_at(b, at + 30)?);
        let comment_len = usize::from(u16_at(b, at + 32)?);
        let name = b
            .get(at + 46..at + 46 + name_len)
            .ok_or_else(|| PlanFileError("the zip archive is truncated".into()))?;
        let compressed = usize_at(b, at + 20)?;
        let uncompressed = usize_at(b, at + 24)?;
        if compressed == 0xFFFF_FFFF || uncompressed == 0xFFFF_FFFF {
            return err("zip64 members are not supported (a plan member over 4 GiB)");
        }
        let name = String::from_utf8_lossy(name).into_owned();
        if members.iter().any(|m: &Member| m.name == name) {
            return err(format!("the zip archive has member {name:?} twice"));
        }
        let local_offset = usize_at(b, at + 42)?;
        if local_offset == 0xFFFF_FFFF {
            return err("zip64 member offsets are not supported");
        }
        members.push(Member {
            name,
            method: u16_at(b, at + 10)?,
            compressed,
            uncompressed,
            local_offset,
        });
        at += 46 + name_len + extra_len + comment_len;
    }
    if at != eocd {
        return err("the zip central directory holds more than its end record counts");
    }
    Ok(members)
}

impl Member {
    /// Whether [`PlanFile::parse_within`] inflates this member (and counts it in its limit).
    fn is_read(&self) -> bool {
        matches!(
            self.name.as_str(),
            "tfplan" | "tfstate" | "tfconfig/modules.json" | ".terraform.lock.hcl"
        ) || self.name.starts_with("tfconfig/m-")
    }

    fn inflate(&self, b: &[u8]) -> Result<Vec<u8>, PlanFileError> {
        let at = self.local_offset;
        if u32_at(b, at)? != LOCAL_SIG {
            return err(format!("zip member {} has no local header", self.name));
        }
        let start = at + 30 + usize::from(u16_at(b, at + 26)?) + usize::from(u16_at(b, at + 28)?);
        let data = b
            .get(start..start.saturating_add(self.compressed))
            .ok_or_else(|| PlanFileError(format!("zip member {} is truncated", self.name)))?;
        if self.uncompressed > MAX_MEMBER_BYTES {
            return err(format!("zip member {} is too large", self.name));
        }
        let out = match self.method {
            0 => data.to_vec(),
            // Never past the declared size: the limit the caller checked is on declared sizes.
            8 => miniz_oxide::inflate::decompress_to_vec_with_limit(data, self.uncompressed)
                .map_err(|e| {
                    // The status only: the error also carries what was inflated so far.
                    PlanFileError(match e.status {
                        miniz_oxide::inflate::TINFLStatus::HasMoreOutput => format!(
                            "zip member {} inflates past its declared {} bytes",
                            self.name, self.uncompressed
                        ),
                        status => format!("zip member {} does not inflate: {status:?}", self.name),
                    })
                })?,
            m => {
                return err(format!(
                    "zip member {} uses compression method {m}",
                    self.name
                ))
            }
        };
        if out.len() != self.uncompressed {
            return err(format!("zip member {} has the wrong size", self.name));
        }
        Ok(out)
    }
}

// --- protobuf (wire format only; field numbers from planfile.proto) ---

enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn new(b: &'a [u8]) -> Self {
        Reader { b, at: 0 }
    }

    fn varint(&mut self) -> Result<u64, PlanFileError> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let Some(&byte) = self.b.get(self.at) else {
                return err("the tfplan message is truncated");
            };
            self.at += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        err("the tfplan message has an overlong varint")
    }

    /// The next field number and value, or None at the end.
    fn next(&mut self) -> Result<Option<(u64, Field<'a>)>, PlanFileError> {
        if self.at >= self.b.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let field = match key & 7 {
            0 => Field::Varint(self.varint()?),
            1 => self.skip(8)?,
            5 => self.skip(4)?,
            2 => {
                let len = usize::try_from(self.varint()?)
                    .or_else(|_| err("a tfplan length does not fit"))?;
                let end = self.at.checked_add(len).filter(|&e| e <= self.b.len());
                let Some(end) = end else {
                    return err("the tfplan message is truncated");
                };
                let bytes = self.b.get(self.at..end).unwrap_or_default();
                self.at = end;
                Field::Bytes(bytes)
            }
            w => return err(format!("the tfplan message uses wire type {w}")),
        };
        Ok(Some((key >> 3, field)))
    }

    fn skip(&mut self, n: usize) -> Result<Field<'a>, PlanFileError> {
        if self.at + n > self.b.len() {
            return err("the tfplan message is truncated");
        }
        self.at += n;
        Ok(Field::Fixed)
    }
}

fn text(b: &[u8], what: &str) -> Result<String, PlanFileError> {
    String::from_utf8(b.to_vec()).or_else(|_| err(format!("{what} is not UTF-8")))
}

/// `tfplan.Action` as the plan JSON spells it.
fn actions(code: u64) -> Result<Vec<String>, PlanFileError> {
    let names: &[&str] = match code {
        0 => &["no-op"],
        1 => &["create"],
        2 => &["read"],
        3 => &["update"],
        5 => &["delete"],
        6 => &["delete", "create"],
        7 => &["create", "delete"],
        8 => &["forget"],
        9 => &["create", "forget"],
        other => return err(format!("unknown planned action {other}")),
    };
    Ok(names.iter().map(|s| (*s).to_owned()).collect())
}

/// The action of a `tfplan.Change` message (field 1), if the message sets one.
fn change_action(b: &[u8]) -> Result<Option<u64>, PlanFileError> {
    let mut r = Reader::new(b);
    let mut action = None;
    while let Some((n, f)) = r.next()? {
        if n == 1 {
            action = Some(varint(n, f)?);
        }
    }
    Ok(action)
}

/// The value of a varint field, refusing any other wire type for it.
fn varint(n: u64, f: Field<'_>) -> Result<u64, PlanFileError> {
    match f {
        Field::Varint(v) => Ok(v),
        _ => err(format!("tfplan field {n} has the wrong wire type")),
    }
}

/// The bytes of a length-delimited field, refusing any other wire type for it.
fn bytes(n: u64, f: Field<'_>) -> Result<&[u8], PlanFileError> {
    match f {
        Field::Bytes(b) => Ok(b),
        _ => err(format!("tfplan field {n} has the wrong wire type")),
    }
}

// Protobuf semantics, as Terraform's decoder applies them: the last value of a scalar field
// wins, and several occurrences of a singular message field are MERGED (parsing their
// concatenation gives exactly that), so a trailing empty `Change` does not reset an action.

fn decode_plan(b: &[u8]) -> Result<PlanFile, PlanFileError> {
    let mut plan = PlanFile::default();
    let mut version = None;
    let mut backend = Vec::new();
    let mut left =
        CHANGES_BASE_BYTES.saturating_add(b.len().saturating_mul(CHANGE_BYTES_PER_PLAN_BYTE));
    let mut take = |strings: usize, actions: &[String]| {
        // The entry (with room for its list to grow), its strings and its action list.
        let cost = 2 * std::mem::size_of::<BinaryChange>()
            + strings
            + std::mem::size_of_val(actions)
            + actions.iter().map(String::len).sum::<usize>();
        left = left.checked_sub(cost).ok_or_else(|| {
            PlanFileError(format!(
                "its {} KB tfplan describes more changes than a plan of that size holds (millions of near-empty ones); refused",
                b.len() / 1000
            ))
        })?;
        Ok::<(), PlanFileError>(())
    };
    let mut r = Reader::new(b);
    while let Some((n, f)) = r.next()? {
        match n {
            1 => version = Some(varint(n, f)?),
            3 | 18 => {
                let c = decode_resource_change(bytes(n, f)?)?;
                take(
                    c.address.len() + c.deposed.as_ref().map_or(0, String::len),
                    &c.actions,
                )?;
                if n == 3 {
                    &mut plan.changes
                } else {
                    &mut plan.drift
                }
                .push(c);
            }
            4 => {
                let o = decode_output_change(bytes(n, f)?)?;
                take(o.0.len(), &o.1)?;
                plan.outputs.push(o);
            }
            13 => backend.extend_from_slice(bytes(n, f)?),
            14 => plan.terraform_version = text(bytes(n, f)?, "terraform_version")?,
            17 => plan.mode = PlanMode::from_code(varint(n, f)?)?,
            20 => plan.errored = varint(n, f)? != 0,
            // Deferred changes (27) are applied in a later plan; everything else is context.
            _ => {}
        }
    }
    if version != Some(PLAN_FORMAT_VERSION) {
        return err(format!(
            "plan format version {} is not supported (Terraform 1.x writes {PLAN_FORMAT_VERSION})",
            version.map_or("missing".into(), |v| v.to_string())
        ));
    }
    if !backend.is_empty() {
        plan.backend = Some(decode_backend(&backend)?);
    }
    plan.changes.sort();
    plan.drift.sort();
    plan.outputs.sort();
    Ok(plan)
}

fn decode_resource_change(b: &[u8]) -> Result<BinaryChange, PlanFileError> {
    let (mut address, mut deposed, mut change) = (String::new(), None, Vec::new());
    let mut r = Reader::new(b);
    while let Some((n, f)) = r.next()? {
        match n {
            13 => address = text(bytes(n, f)?, "a change address")?,
            7 => {
                let s = bytes(n, f)?;
                deposed = (!s.is_empty())
                    .then(|| text(s, "a deposed key"))
                    .transpose()?;
            }
            9 => change.extend_from_slice(bytes(n, f)?),
            _ => {}
        }
    }
    if address.is_empty() {
        return err("a resource change has no address");
    }
    Ok(BinaryChange {
        address,
        deposed,
        actions: actions(change_action(&change)?.unwrap_or(0))?,
    })
}

fn decode_output_change(b: &[u8]) -> Result<(String, Vec<String>), PlanFileError> {
    let (mut name, mut change) = (String::new(), Vec::new());
    let mut r = Reader::new(b);
    while let Some((n, f)) = r.next()? {
        match n {
            1 => name = text(bytes(n, f)?, "an output name")?,
            2 => change.extend_from_slice(bytes(n, f)?),
            _ => {}
        }
    }
    Ok((name, actions(change_action(&change)?.unwrap_or(0))?))
}

/// `tfplan.Backend`: type (1), config (2, a `DynamicValue` whose field 1 is msgpack), workspace (3).
fn decode_backend(b: &[u8]) -> Result<PlanBackend, PlanFileError> {
    let mut backend = PlanBackend::default();
    let mut config = Vec::new();
    let mut r = Reader::new(b);
    while let Some((n, f)) = r.next()? {
        match n {
            1 => backend.kind = text(bytes(n, f)?, "the backend type")?,
            2 => config.extend_from_slice(bytes(n, f)?),
            3 => backend.workspace = text(bytes(n, f)?, "the workspace")?,
            _ => {}
        }
    }
    let mut msgpack = Vec::new();
    let mut r = Reader::new(&config);
    while let Some((n, f)) = r.next()? {
        if n == 1 {
            msgpack = bytes(n, f)?.to_vec();
        }
    }
    backend.config = msgpack_string_attrs(&msgpack)?;
    Ok(backend)
}

/// The string- and bool-valued attributes of a msgpack map (a cty object), bools as `true` /
/// `false`; other values are skipped.
fn msgpack_string_attrs(b: &[u8]) -> Result<Vec<(String, String)>, PlanFileError> {
    if b.is_empty() {
        return Ok(Vec::new());
    }
    let mut m = Msgpack { b, at: 0 };
    let n = m.map_len()?;
    let mut out = Vec::new();
    for _ in 0..n {
        let key = m
            .string()?
            .ok_or_else(|| PlanFileError("a backend attribute name is not a string".into()))?;
        let save = m.at;
        match m.string()? {
            Some(v) => {
                if out.iter().any(|(k, _): &(String, String)| *k == key) {
                    return err(format!("backend attribute {key} appears twice"));
                }
                out.push((key, v));
            }
            None => {
                m.at = save;
                let flag = match m.b.get(save) {
                    Some(0xc3) => Some("true"),
                    Some(0xc2) => Some("false"),
                    _ => None,
                };
                m.skip(0)?;
                if let Some(flag) = flag {
                    if out.iter().any(|(k, _): &(String, String)| *k == key) {
                        return err(format!("backend attribute {key} appears twice"));
                    }
                    out.push((key, flag.to_owned()));
                }
            }
        }
    }
    Ok(out)
}

/// Just enough msgpack to read a map of attributes and skip any value.
struct Msgpack<'a> {
    b: &'a [u8],
    at: usize,
}

impl Msgpack<'_> {
    fn byte(&mut self) -> Result<u8, PlanFileError> {
        let v = *self
            .b
            .get(self.at)
            .ok_or_else(|| PlanFileError("the backend configuration is truncated".into()))?;
        self.at += 1;
        Ok(v)
    }

    fn be(&mut self, n: usize) -> Result<usize, PlanFileError> {
        let mut v: usize = 0;
        for _ in 0..n {
            v = v
                .checked_mul(256)
                .ok_or_else(|| PlanFileError("a backend length does not fit".into()))?
                + usize::from(self.byte()?);
        }
        Ok(v)
    }

    fn advance(&mut self, n: usize) -> Result<(), PlanFileError> {
        match self.at.checked_add(n).filter(|&e| e <= self.b.len()) {
            Some(e) => {
                self.at = e;
                Ok(())
            }
            None => err("the backend configuration is truncated"),
        }
    }

    fn map_len(&mut self) -> Result<usize, PlanFileError> {
        match self.byte()? {
            t @ 0x80..=0x8f => Ok(usize::from(t & 0x0f)),
            0xde => self.be(2),
            0xdf => self.be(4),
            _ => err("the backend configuration is not a msgpack map"),
        }
    }

    /// A string, or None (position unchanged only if the caller restores it) for another type.
    fn string(&mut self) -> Result<Option<String>, PlanFileError> {
        let len = match self.byte()? {
            t @ 0xa0..=0xbf => usize::from(t & 0x1f),
            0xd9 => self.be(1)?,
            0xda => self.be(2)?,
            0xdb => self.be(4)?,
            _ => return Ok(None),
        };
        let start = self.at;
        self.advance(len)?;
        let raw = self.b.get(start..self.at).unwrap_or_default();
        String::from_utf8(raw.to_vec())
            .map(Some)
            .or_else(|_| err("a backend string is not UTF-8"))
    }

    fn skip(&mut self, depth: usize) -> Result<(), PlanFileError> {
        if depth > 64 {
            return err("the backend configuration nests too deeply");
        }
        let t = self.byte()?;
        let (items, bytes) = match t {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => (0, 0),
            0x80..=0x8f => (2 * usize::from(t & 0x0f), 0),
            0x90..=0x9f => (usize::from(t & 0x0f), 0),
            0xa0..=0xbf => (0, usize::from(t & 0x1f)),
            0xc4 | 0xd9 => (0, self.be(1)?),
            0xc5 | 0xda => (0, self.be(2)?),
            0xc6 | 0xdb => (0, self.be(4)?),
            0xc7 => (0, self.be(1)? + 1),
            0xc8 => (0, self.be(2)? + 1),
            0xc9 => (0, self.be(4)? + 1),
            0xca => (0, 4),
            0xcb => (0, 8),
            0xcc | 0xd0 => (0, 1),
            0xcd | 0xd1 => (0, 2),
            0xce | 0xd2 => (0, 4),
            0xcf | 0xd3 => (0, 8),
            0xd4 => (0, 2),
            0xd5 => (0, 3),
            0xd6 => (0, 5),
            0xd7 => (0, 9),
            0xd8 => (0, 17),
            0xdc => (self.be(2)?, 0),
            0xdd => (self.be(4)?, 0),
            0xde => (2 * self.be(2)?, 0),
            0xdf => (2 * self.be(4)?, 0),
            _ => return err("the backend configuration holds an unknown msgpack type"),
        };
        self.advance(bytes)?;
        for _ in 0..items {
            self.skip(depth + 1)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }

    fn bytes_field(n: u64, b: &[u8], out: &mut Vec<u8>) {
        varint(n << 3 | 2, out);
        varint(b.len() as u64, out);
        out.extend_from_slice(b);
    }

    fn varint_field(n: u64, v: u64, out: &mut Vec<u8>) {
        varint(n << 3, out);
        varint(v, out);
    }

    fn change(addr: &str, action: u64) -> Vec<u8> {
        let mut c = Vec::new();
        varint_field(1, action, &mut c);
        let mut rc = Vec::new();
        bytes_field(13, addr.as_bytes(), &mut rc);
        bytes_field(9, &c, &mut rc);
        rc
    }

    #[test]
    fn decodes_changes_and_refuses_garbage() {
        let mut p = Vec::new();
        varint_field(1, 3, &mut p);
        bytes_field(3, &change("terraform_data.db", 5), &mut p);
        bytes_field(3, &change("terraform_data.a", 6), &mut p);
        bytes_field(14, b"1.11.4", &mut p);
        let plan = decode_plan(&p).unwrap();
        assert_eq!(plan.terraform_version, "1.11.4");
        assert_eq!(
            plan.changes
                .iter()
                .map(|c| (c.address.as_str(), c.actions.join("+")))
                .collect::<Vec<_>>(),
            [
                ("terraform_data.a", "delete+create".to_owned()),
                ("terraform_data.db", "delete".to_owned())
            ]
        );
        // Truncations anywhere are errors, never panics.
        for cut in 0..p.len() {
            let _ = decode_plan(p.get(..cut).unwrap());
        }
        assert!(decode_plan(&[]).is_err(), "no version");
        assert!(PlanFile::parse(b"PK\x03\x04garbage").is_err());
        assert!(PlanFile::parse(b"{}").is_err());
    }

    #[test]
    fn repeated_messages_merge_as_in_terraform() {
        // A trailing empty `Change` does not reset the action (protobuf merges the messages).
        let mut rc = change("terraform_data.notify", 5);
        bytes_field(9, &[], &mut rc);
        let mut p = Vec::new();
        varint_field(1, 3, &mut p);
        bytes_field(3, &rc, &mut p);
        let plan = decode_plan(&p).unwrap();
        assert_eq!(plan.changes[0].actions, ["delete"]);
        // A known field with the wrong wire type is refused, not skipped.
        let mut wrong = Vec::new();
        varint_field(1, 3, &mut wrong);
        varint_field(20, 1, &mut wrong);
        bytes_field(20, b"x", &mut wrong);
        assert!(decode_plan(&wrong).is_err());
    }

    #[test]
    fn backend_of_real_plans() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fuzz/corpus/planfile_reader");
        let plan = PlanFile::parse(&std::fs::read(dir.join("destroy.tfplan")).unwrap()).unwrap();
        let backend = plan.backend.unwrap();
        assert_eq!(backend.kind, "local");
        assert!(backend.check_is("http://x/state/s").is_err());
        let http = PlanBackend {
            kind: "http".into(),
            workspace: "default".into(),
            config: ["address", "lock_address", "unlock_address"]
                .iter()
                .map(|k| ((*k).to_owned(), "http://x/state/s".to_owned()))
                .collect(),
        };
        assert!(http.check_is("http://x/state/s").is_ok());
        assert!(http.check_is("http://evil/state/s").is_err());
        let mut get_lock = http.clone();
        get_lock.config.push(("lock_method".into(), "GET".into()));
        assert!(get_lock.check_is("http://x/state/s").is_err());
        let mut explicit = http.clone();
        explicit.config.push(("lock_method".into(), "LOCK".into()));
        explicit
            .config
            .push(("skip_cert_verification".into(), "false".into()));
        assert!(explicit.check_is("http://x/state/s").is_ok());
        for (key, value) in [
            ("password", "tok_of_someone_else"),
            ("username", "someone"),
            ("skip_cert_verification", "true"),
        ] {
            let mut b = http.clone();
            b.config.push((key.into(), value.into()));
            assert!(b.check_is("http://x/state/s").is_err(), "{key}");
        }
        assert!(!plan.module_files.is_empty());
    }

    #[test]
    fn planning_mode_and_drift_of_real_plans() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fuzz/corpus/planfile_reader");
        let read = |name: &str| PlanFile::parse(&std::fs::read(dir.join(name)).unwrap()).unwrap();
        assert_eq!(read("create.tfplan").mode, PlanMode::Normal);
        assert_eq!(read("destroy.tfplan").mode, PlanMode::Destroy);
        // `terraform plan -refresh-only` on the local test cloud after a VPC's CIDR was changed
        // and an instance deleted behind Terraform's back: no resource change, the drift in
        // field 18.
        let plan = read("refresh-only.tfplan");
        assert_eq!(plan.mode, PlanMode::RefreshOnly);
        assert!(plan.changes.is_empty(), "{:?}", plan.changes);
        let drift: Vec<(&str, String)> = plan
            .drift
            .iter()
            .map(|c| (c.address.as_str(), c.actions.join("+")))
            .collect();
        assert_eq!(
            drift,
            [
                ("aws_instance.bastion", "delete".to_owned()),
                ("aws_vpc.main", "update".to_owned())
            ]
        );
        let c = |a: &str, act: &str| BinaryChange {
            address: a.into(),
            deposed: None,
            actions: vec![act.into()],
        };
        assert!(plan
            .matches_json_drift(&[
                c("aws_vpc.main", "update"),
                c("aws_instance.bastion", "delete")
            ])
            .is_ok());
        // A JSON that hides the drop, or shows it as an update, does not describe this binary.
        let e = plan
            .matches_json_drift(&[c("aws_vpc.main", "update")])
            .unwrap_err();
        assert!(e.contains("delete aws_instance.bastion"), "{e}");
        assert!(plan
            .matches_json_drift(&[
                c("aws_vpc.main", "update"),
                c("aws_instance.bastion", "update")
            ])
            .is_err());
        // The mode codes: 0, 1, 2; anything else is refused, not read as normal.
        for (code, mode) in [
            (0, PlanMode::Normal),
            (1, PlanMode::Destroy),
            (2, PlanMode::RefreshOnly),
        ] {
            let mut p = Vec::new();
            varint_field(1, 3, &mut p);
            varint_field(17, code, &mut p);
            bytes_field(18, &change("aws_instance.x", 5), &mut p);
            let plan = decode_plan(&p).unwrap();
            assert_eq!(plan.mode, mode);
            assert_eq!(plan.drift[0].actions, ["delete"]);
            assert!(plan.changes.is_empty());
        }
        let mut p = Vec::new();
        varint_field(1, 3, &mut p);
        varint_field(17, 3, &mut p);
        assert!(decode_plan(&p).unwrap_err().0.contains("planning mode"));
        // A refresh-only plan with a resource change is not one Terraform makes.
        assert_eq!(plan.refresh_only_change(), None);
        let mut p = Vec::new();
        varint_field(1, 3, &mut p);
        varint_field(17, 2, &mut p);
        bytes_field(3, &change("aws_instance.x", 5), &mut p);
        bytes_field(3, &change("aws_vpc.y", 0), &mut p);
        let forged = decode_plan(&p).unwrap();
        assert_eq!(
            forged.refresh_only_change().map(|c| c.address.as_str()),
            Some("aws_instance.x")
        );
        let normal = PlanFile {
            mode: PlanMode::Normal,
            ..forged
        };
        assert_eq!(normal.refresh_only_change(), None);
        assert_eq!(PlanMode::parse("refresh-only"), Some(PlanMode::RefreshOnly));
        assert_eq!(PlanMode::parse("refresh_only"), None);
    }

    #[test]
    fn json_must_list_exactly_the_binary_changes() {
        let c = |a: &str, acts: &[&str]| BinaryChange {
            address: a.into(),
            deposed: None,
            actions: acts.iter().map(|s| (*s).to_owned()).collect(),
        };
        let plan = PlanFile {
            changes: vec![c("terraform_data.db", &["delete"])],
            ..PlanFile::default()
        };
        assert!(plan
            .matches_json(&[c("terraform_data.db", &["delete"])], &[])
            .is_ok());
        let e = plan
            .matches_json(&[c("terraform_data.db", &["update"])], &[])
            .unwrap_err();
        assert!(
            e.contains("binary plan has delete terraform_data.db"),
            "{e}"
        );
    }
}
