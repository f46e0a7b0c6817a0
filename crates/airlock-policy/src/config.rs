//! The repository configuration, `airlock.hcl`: stacks, extra protection, declared removals,
//! phase credentials and mass-destruction thresholds. It is reviewed like code, so the parser
//! is strict: an unknown block or attribute is an error naming its line, never ignored.

use std::fmt;

use hcl_edit::expr::Expression;
use hcl_edit::structure::{Attribute, Block, BlockLabel, Body, Structure};
use hcl_edit::Span;

/// A parsed `airlock.hcl`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Config {
    /// `stack "NAME" { ... }` blocks, in file order.
    pub stacks: Vec<StackConfig>,
    /// Every `protect { ... }` block, merged.
    pub protect: Protect,
    /// `allow_destroy "ADDRESS" { reason = ... }` declarations.
    pub allow_destroy: Vec<AllowDestroy>,
    /// `credentials "plan" | "apply" { env_from = [...] }`.
    pub credentials: Vec<Credentials>,
    /// `mass_destruction { ... }`, or the defaults.
    pub mass_destruction: MassDestruction,
}

/// One stack (one Terraform root module's state).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackConfig {
    /// Stack name, e.g. `prod/app`.
    pub name: String,
    /// Root module directory, relative to the repository.
    pub dir: Option<String>,
    /// A production stack: every destroy needs review.
    pub production: bool,
    /// Approvals a run of this stack needs.
    pub required_approvals: u32,
    /// Stacks this one is planned and applied after (`depends_on = ["net"]`): names of other
    /// stack blocks, without cycles.
    pub depends_on: Vec<String>,
    /// Path globs (`*` matches any run of characters, `/` included) of files outside the stack's
    /// inputs whose change also affects it.
    pub also_when_changed: Vec<String>,
    /// `destroy = true`: the change declares the stack's removal; it is planned with `-destroy`.
    /// Its directory stays until that destroy is applied.
    pub destroy: bool,
    /// Line of the block in the file.
    pub line: usize,
}

impl StackConfig {
    /// Whether two blocks say the same thing (everything but where they are in the file).
    pub fn same_settings(&self, other: &StackConfig) -> bool {
        StackConfig {
            line: other.line,
            ..self.clone()
        } == *other
    }
}

/// Extra protection on top of the built-in catalogue.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Protect {
    /// Resource types treated as critical.
    pub types: Vec<String>,
    /// Address globs (`*` matches any run of characters) treated as critical.
    pub addresses: Vec<String>,
}

/// A destruction the reviewed code declares on purpose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowDestroy {
    /// Address or glob; a resource address also covers its instances (`x.y` covers `x.y[0]`).
    pub address: String,
    /// Why, shown in the report.
    pub reason: String,
    /// Line of the block in the file.
    pub line: usize,
}

/// Which credentials a phase's process receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// `plan` or `apply`.
    pub phase: Phase,
    /// Environment variables passed through to that phase.
    pub env_from: Vec<String>,
    /// `oidc { ... }`: a short-lived identity token from airlock's OIDC issuer for this phase.
    pub oidc: Option<OidcProfile>,
}

/// `credentials "PHASE" { oidc { ... } }`: which clouds the phase's identity token is for. The
/// client writes the token to a private file and sets what each cloud's SDK reads, for that
/// phase's terraform process only. At least one cloud is named.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OidcProfile {
    /// The token's `aud` (AWS: `sts.amazonaws.com`; Azure: `api://AzureADTokenExchange`; GCP:
    /// the workload identity provider's audience).
    pub audience: String,
    /// AWS: the role to assume with the token (`AWS_ROLE_ARN`, `AWS_WEB_IDENTITY_TOKEN_FILE`).
    pub aws_role_arn: Option<String>,
    /// GCP: the workload identity provider (`//iam.googleapis.com/projects/N/locations/global/
    /// workloadIdentityPools/POOL/providers/PROVIDER`), written to an external-account file.
    pub gcp_workload_provider: Option<String>,
    /// GCP: the service account to impersonate (optional).
    pub gcp_service_account: Option<String>,
    /// Azure: the app registration's client id (with `azure_tenant_id`).
    pub azure_client_id: Option<String>,
    /// Azure: the tenant id.
    pub azure_tenant_id: Option<String>,
    /// Token lifetime in seconds (at most 3600, the default).
    pub ttl_seconds: Option<u64>,
}

/// A phase of a governed run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// `terraform plan`.
    Plan,
    /// `terraform apply`.
    Apply,
}

/// When destruction counts as mass destruction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MassDestruction {
    /// More than this many destroyed instances is mass destruction.
    pub max_count: u64,
    /// More than this percentage of the stack's instances is mass destruction...
    pub max_percent: f64,
    /// ...when the stack has at least this many instances.
    pub min_instances: u64,
}

impl Default for MassDestruction {
    fn default() -> Self {
        MassDestruction {
            max_count: 20,
            max_percent: 25.0,
            min_instances: 10,
        }
    }
}

impl Config {
    /// The stack of this name.
    pub fn stack(&self, name: &str) -> Option<&StackConfig> {
        self.stacks.iter().find(|s| s.name == name)
    }

    /// The OIDC profile of a phase, if it has one.
    pub fn oidc_for(&self, phase: Phase) -> Option<&OidcProfile> {
        self.credentials
            .iter()
            .find(|c| c.phase == phase)
            .and_then(|c| c.oidc.as_ref())
    }

    /// Environment variables for a phase (empty when not configured).
    pub fn credentials_for(&self, phase: Phase) -> &[String] {
        self.credentials
            .iter()
            .find(|c| c.phase == phase)
            .map(|c| c.env_from.as_slice())
            .unwrap_or(&[])
    }

    /// The `allow_destroy` declaration covering an address, if any.
    pub fn allowed_destroy(&self, address: &str) -> Option<&AllowDestroy> {
        self.allow_destroy
            .iter()
            .find(|a| address_matches(&a.address, address))
    }

    /// Whether `protect` makes this resource critical.
    pub fn protects(&self, resource_type: &str, address: &str) -> bool {
        self.protect.types.iter().any(|t| t == resource_type)
            || self
                .protect
                .addresses
                .iter()
                .any(|p| address_matches(p, address))
    }
}

/// How `new` loosens `old` for `stack`: each entry says, in words, one protection removed or
/// one destruction newly declared. Approvers see these first: a change that weakens the policy
/// it is judged by must be visible as such.
pub fn weakening(old: &Config, new: &Config, stack: &str) -> Vec<String> {
    let mut out = Vec::new();
    for t in old
        .protect
        .types
        .iter()
        .filter(|t| !new.protect.types.contains(t))
    {
        out.push(format!("removes protect for type {t}"));
    }
    for a in old
        .protect
        .addresses
        .iter()
        .filter(|a| !new.protect.addresses.contains(a))
    {
        out.push(format!("removes protect for {a}"));
    }
    for a in new
        .allow_destroy
        .iter()
        .filter(|a| !old.allow_destroy.iter().any(|o| o.address == a.address))
    {
        out.push(format!("adds allow_destroy for {}", a.address));
    }
    if let Some(o) = old.stack(stack) {
        match new.stack(stack) {
            None => out.push(format!("removes the stack block of {stack}")),
            Some(n) => {
                if o.production && !n.production {
                    out.push(format!("marks {stack} as no longer production"));
                }
                if n.destroy && !o.destroy {
                    out.push(format!("declares the removal of {stack} (destroy = true)"));
                }
                if n.required_approvals < o.required_approvals {
                    out.push(format!(
                        "lowers required_approvals of {stack} from {} to {}",
                        o.required_approvals, n.required_approvals
                    ));
                }
            }
        }
    }
    let (om, nm) = (old.mass_destruction, new.mass_destruction);
    if nm.max_count > om.max_count
        || nm.max_percent > om.max_percent
        || nm.min_instances > om.min_instances
    {
        out.push("raises the mass_destruction thresholds".into());
    }
    out
}

pub use airlock_core::glob::address_matches;

/// Why `airlock.hcl` could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// File name as given by the caller.
    pub file: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// What is wrong and what to do.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.file, line, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Largest `airlock.hcl` read. The HCL parser's tree takes ~125 bytes of memory per byte of a
/// list (`a = [1,1,...]`: 8 MB held 1 GB) and the server parses the planner's file, so the text
/// is bounded first: 1 MiB is a few thousand stack blocks.
pub const MAX_CONFIG_BYTES: usize = 1024 * 1024;

/// Parses `airlock.hcl` source; `file` names it in errors.
pub fn parse(source: &str, file: &str) -> Result<Config, ConfigError> {
    if source.len() > MAX_CONFIG_BYTES {
        return Err(ConfigError {
            file: file.to_string(),
            line: None,
            message: format!(
                "{} KiB, more than the {} KiB an airlock.hcl may hold",
                source.len() / 1024,
                MAX_CONFIG_BYTES / 1024
            ),
        });
    }
    let body = hcl_edit::parser::parse_body(source).map_err(|e| ConfigError {
        file: file.to_string(),
        line: Some(e.location().line()),
        message: format!("invalid HCL: {}", e.message()),
    })?;
    let newlines = source
        .bytes()
        .enumerate()
        .filter(|&(_, b)| b == b'\n')
        .map(|(i, _)| i)
        .collect();
    Parser { newlines, file }.config(&body)
}

struct Parser<'a> {
    /// Offsets of the source's newlines: a span's line by binary search, not by rescanning
    /// (a file with many blocks must not cost quadratic time).
    newlines: Vec<usize>,
    file: &'a str,
}

impl Parser<'_> {
    fn line_of(&self, span: Option<std::ops::Range<usize>>) -> Option<usize> {
        let start = span?.start;
        Some(self.newlines.partition_point(|&n| n < start) + 1)
    }

    fn err(&self, span: Option<std::ops::Range<usize>>, message: String) -> ConfigError {
        ConfigError {
            file: self.file.to_string(),
            line: self.line_of(span),
            message,
        }
    }

    fn config(&self, body: &Body) -> Result<Config, ConfigError> {
        let mut config = Config::default();
        let mut names = std::collections::HashSet::new();
        let mut saw_mass = false;
        for structure in body.iter() {
            let block = match structure {
                Structure::Block(b) => b,
                Structure::Attribute(a) => {
                    return Err(self.err(
                        a.span(),
                        format!(
                            "unexpected top-level attribute `{}`; expected blocks: stack, protect, \
                             allow_destroy, credentials, mass_destruction",
                            a.key.as_str()
                        ),
                    ))
                }
            };
            match block.ident.as_str() {
                "stack" => {
                    let stack = self.stack(block)?;
                    if !names.insert(stack.name.clone()) {
                        return Err(self.err(
                            block.span(),
                            format!("stack \"{}\" is declared twice", stack.name),
                        ));
                    }
                    config.stacks.push(stack);
                }
                "protect" => {
                    self.labels(block, 0)?;
                    for attr in self.attributes(block, &["types", "addresses"])? {
                        let list = self.string_list(attr)?;
                        match attr.key.as_str() {
                            "types" => config.protect.types.extend(list),
                            _ => config.protect.addresses.extend(list),
                        }
                    }
                }
                "allow_destroy" => {
                    let address = self.labels(block, 1)?.unwrap_or_default();
                    let mut reason = None;
                    for attr in self.attributes(block, &["reason"])? {
                        reason = Some(self.string(attr)?);
                    }
                    let reason = reason.filter(|r| !r.trim().is_empty()).ok_or_else(|| {
                        self.err(
                            block.span(),
                            format!(
                                "allow_destroy \"{address}\" needs a non-empty `reason`: it is \
                                 shown to the reviewers"
                            ),
                        )
                    })?;
                    config.allow_destroy.push(AllowDestroy {
                        address,
                        reason,
                        line: self.line_of(block.span()).unwrap_or(0),
                    });
                }
                "credentials" => {
                    let label = self.labels(block, 1)?.unwrap_or_default();
                    let phase = match label.as_str() {
                        "plan" => Phase::Plan,
                        "apply" => Phase::Apply,
                        other => {
                            return Err(self.err(
                                block.span(),
                                format!(
                                "credentials \"{other}\": the phase must be \"plan\" or \"apply\""
                            ),
                            ))
                        }
                    };
                    if config.credentials.iter().any(|c| c.phase == phase) {
                        return Err(self.err(
                            block.span(),
                            format!("credentials \"{label}\" is declared twice"),
                        ));
                    }
                    let mut env_from = Vec::new();
                    for attr in self.attributes_and(block, &["env_from"], &["oidc"])? {
                        env_from = self.string_list(attr)?;
                    }
                    let mut oidc = None;
                    for b in block.body.iter().filter_map(Structure::as_block) {
                        if oidc.is_some() {
                            return Err(self.err(b.span(), "`oidc` is declared twice".into()));
                        }
                        oidc = Some(self.oidc_profile(b)?);
                    }
                    config.credentials.push(Credentials {
                        phase,
                        env_from,
                        oidc,
                    });
                }
                "mass_destruction" => {
                    if saw_mass {
                        return Err(
                            self.err(block.span(), "mass_destruction is declared twice".into())
                        );
                    }
                    saw_mass = true;
                    self.labels(block, 0)?;
                    let m = &mut config.mass_destruction;
                    for attr in
                        self.attributes(block, &["max_count", "max_percent", "min_instances"])?
                    {
                        match attr.key.as_str() {
                            "max_count" => m.max_count = self.count(attr)?,
                            "min_instances" => m.min_instances = self.count(attr)?,
                            _ => {
                                let p = self.number(attr)?;
                                if !(0.0..=100.0).contains(&p) {
                                    return Err(self.err(
                                        attr.span(),
                                        "max_percent must be between 0 and 100".into(),
                                    ));
                                }
                                m.max_percent = p;
                            }
                        }
                    }
                }
                other => {
                    return Err(self.err(
                        block.span(),
                        format!(
                            "unknown block `{other}`; expected stack, protect, allow_destroy, \
                             credentials or mass_destruction"
                        ),
                    ))
                }
            }
        }
        self.check_dependencies(&config)?;
        Ok(config)
    }

    /// `depends_on` names declared stacks and has no cycle.
    fn check_dependencies(&self, config: &Config) -> Result<(), ConfigError> {
        let at = |s: &StackConfig, message: String| ConfigError {
            file: self.file.to_string(),
            line: Some(s.line),
            message,
        };
        let names: std::collections::HashSet<&str> =
            config.stacks.iter().map(|s| s.name.as_str()).collect();
        for s in &config.stacks {
            for d in &s.depends_on {
                if !names.contains(d.as_str()) {
                    return Err(at(
                        s,
                        format!(
                            "stack \"{}\" depends_on \"{d}\", which is not a stack block of this \
                             file",
                            s.name
                        ),
                    ));
                }
            }
        }
        match dependency_order(&config.stacks) {
            Ok(_) => Ok(()),
            Err(cycle) => {
                let first = cycle.first().and_then(|n| config.stack(n));
                Err(ConfigError {
                    file: self.file.to_string(),
                    line: first.map(|s| s.line),
                    message: format!(
                        "depends_on forms a cycle: {}; remove one of these dependencies",
                        cycle.join(" -> ")
                    ),
                })
            }
        }
    }

    fn stack(&self, block: &Block) -> Result<StackConfig, ConfigError> {
        let name = self.labels(block, 1)?.unwrap_or_default();
        if !valid_stack_name(&name) {
            return Err(self.err(
                block.span(),
                format!(
                    "invalid stack name \"{name}\": use 1 to 4 segments of [a-z0-9._-] separated \
                     by `/`, e.g. \"prod/app\""
                ),
            ));
        }
        let mut stack = StackConfig {
            name,
            dir: None,
            production: false,
            required_approvals: 1,
            depends_on: Vec::new(),
            also_when_changed: Vec::new(),
            destroy: false,
            line: self.line_of(block.span()).unwrap_or(0),
        };
        let allowed = [
            "dir",
            "production",
            "required_approvals",
            "depends_on",
            "also_when_changed",
            "destroy",
        ];
        for attr in self.attributes(block, &allowed)? {
            match attr.key.as_str() {
                "dir" => {
                    let dir = self.string(attr)?;
                    let inside = !dir.is_empty()
                        && !dir.starts_with('/')
                        && !dir.contains('\\')
                        && !dir.split('/').any(|s| s == "..");
                    if !inside {
                        return Err(self.err(
                            attr.span(),
                            format!(
                                "dir {dir:?} must be a directory relative to the repository root \
                                 (the directory of airlock.hcl), without `..`, e.g. \
                                 \"stacks/prod/app\""
                            ),
                        ));
                    }
                    stack.dir = Some(dir);
                }
                "production" => stack.production = self.boolean(attr)?,
                "destroy" => stack.destroy = self.boolean(attr)?,
                "depends_on" => {
                    stack.depends_on = self.string_list(attr)?;
                    let mut seen = std::collections::BTreeSet::new();
                    if let Some(d) = stack.depends_on.iter().find(|d| !seen.insert(*d)) {
                        return Err(
                            self.err(attr.span(), format!("depends_on lists \"{d}\" twice"))
                        );
                    }
                }
                "also_when_changed" => {
                    stack.also_when_changed = self.string_list(attr)?;
                    if let Some(g) = stack.also_when_changed.iter().find(|g| {
                        g.is_empty() || g.starts_with('/') || g.split('/').any(|s| s == "..")
                    }) {
                        return Err(self.err(
                            attr.span(),
                            format!(
                                "also_when_changed: {g:?} is not a path glob relative to the \
                                 repository root (e.g. \"shared/*.tf\")"
                            ),
                        ));
                    }
                }
                _ => {
                    let n = self.count(attr)?;
                    stack.required_approvals = u32::try_from(n)
                        .ok()
                        .filter(|n| (1..=10).contains(n))
                        .ok_or_else(|| {
                            self.err(
                                attr.span(),
                                "required_approvals must be between 1 and 10".into(),
                            )
                        })?;
                }
            }
        }
        Ok(stack)
    }

    /// Checks the label count; returns the single label when `want == 1`.
    fn labels(&self, block: &Block, want: usize) -> Result<Option<String>, ConfigError> {
        let ident = block.ident.as_str();
        if block.labels.len() != want {
            let shape = if want == 0 {
                format!("`{ident} {{ ... }}` takes no label")
            } else {
                format!("`{ident} \"LABEL\" {{ ... }}` takes exactly one label")
            };
            return Err(self.err(block.span(), shape));
        }
        Ok(block.labels.first().map(|l| match l {
            BlockLabel::Ident(i) => i.as_str().to_string(),
            BlockLabel::String(s) => s.value().to_string(),
        }))
    }

    /// The block's attributes, refusing nested blocks and unknown or repeated keys.
    fn attributes<'b>(
        &self,
        block: &'b Block,
        allowed: &[&str],
    ) -> Result<Vec<&'b Attribute>, ConfigError> {
        self.attributes_and(block, allowed, &[])
    }

    /// `credentials "PHASE" { oidc { ... } }`.
    fn oidc_profile(&self, block: &Block) -> Result<OidcProfile, ConfigError> {
        self.labels(block, 0)?;
        let allowed = [
            "audience",
            "aws_role_arn",
            "gcp_workload_provider",
            "gcp_service_account",
            "azure_client_id",
            "azure_tenant_id",
            "ttl_seconds",
        ];
        let mut p = OidcProfile::default();
        for attr in self.attributes(block, &allowed)? {
            if attr.key.as_str() == "ttl_seconds" {
                let n = self.count(attr)?;
                if !(60..=3600).contains(&n) {
                    return Err(self.err(
                        attr.span(),
                        "ttl_seconds must be between 60 and 3600 (tokens live at most 1 h)".into(),
                    ));
                }
                p.ttl_seconds = Some(n);
                continue;
            }
            let v = self.string(attr)?;
            if v.trim().is_empty() || v.len() > 300 || v.chars().any(char::is_control) {
                return Err(self.err(
                    attr.span(),
                    format!("`{}` must be 1-300 printable characters", attr.key.as_str()),
                ));
            }
            match attr.key.as_str() {
                "audience" => p.audience = v,
                "aws_role_arn" => p.aws_role_arn = Some(v),
                "gcp_workload_provider" => p.gcp_workload_provider = Some(v),
                "gcp_service_account" => p.gcp_service_account = Some(v),
                "azure_client_id" => p.azure_client_id = Some(v),
                _ => p.azure_tenant_id = Some(v),
            }
        }
        let fail = |m: &str| Err(self.err(block.span(), m.into()));
        if p.audience.is_empty() {
            return fail("oidc needs an `audience` (AWS: \"sts.amazonaws.com\")");
        }
        if p.azure_client_id.is_some() != p.azure_tenant_id.is_some() {
            return fail("oidc: azure_client_id and azure_tenant_id go together");
        }
        if p.gcp_service_account.is_some() && p.gcp_workload_provider.is_none() {
            return fail("oidc: gcp_service_account needs gcp_workload_provider");
        }
        if p.aws_role_arn.is_none()
            && p.gcp_workload_provider.is_none()
            && p.azure_client_id.is_none()
        {
            return fail(
                "oidc names no cloud: set aws_role_arn, gcp_workload_provider or azure_client_id and azure_tenant_id",
            );
        }
        Ok(p)
    }

    /// Like [`Self::attributes`], admitting the nested blocks named in `blocks` (the caller
    /// reads them).
    fn attributes_and<'b>(
        &self,
        block: &'b Block,
        allowed: &[&str],
        blocks: &[&str],
    ) -> Result<Vec<&'b Attribute>, ConfigError> {
        let mut out: Vec<&Attribute> = Vec::new();
        for s in block.body.iter() {
            match s {
                Structure::Attribute(a) => {
                    let key = a.key.as_str();
                    if !allowed.contains(&key) {
                        return Err(self.err(
                            a.span(),
                            format!(
                                "unknown attribute `{key}` in `{}`; expected {}",
                                block.ident.as_str(),
                                allowed.join(", ")
                            ),
                        ));
                    }
                    if out.iter().any(|o| o.key.as_str() == key) {
                        return Err(self.err(a.span(), format!("`{key}` is set twice")));
                    }
                    out.push(a);
                }
                Structure::Block(b) if blocks.contains(&b.ident.as_str()) => {}
                Structure::Block(b) => {
                    return Err(self.err(
                        b.span(),
                        format!(
                            "unexpected block `{}` inside `{}`",
                            b.ident.as_str(),
                            block.ident.as_str()
                        ),
                    ))
                }
            }
        }
        Ok(out)
    }

    fn string(&self, attr: &Attribute) -> Result<String, ConfigError> {
        match &attr.value {
            Expression::String(s) => Ok(s.value().to_string()),
            _ => Err(self.err(
                attr.span(),
                format!("`{}` must be a string literal", attr.key.as_str()),
            )),
        }
    }

    fn string_list(&self, attr: &Attribute) -> Result<Vec<String>, ConfigError> {
        let bad = || {
            self.err(
                attr.span(),
                format!(
                    "`{}` must be a list of string literals, e.g. [\"a\", \"b\"]",
                    attr.key.as_str()
                ),
            )
        };
        match &attr.value {
            Expression::Array(items) => items
                .iter()
                .map(|e| match e {
                    Expression::String(s) => Ok(s.value().to_string()),
                    _ => Err(bad()),
                })
                .collect(),
            _ => Err(bad()),
        }
    }

    fn boolean(&self, attr: &Attribute) -> Result<bool, ConfigError> {
        match &attr.value {
            Expression::Bool(b) => Ok(*b.value()),
            _ => Err(self.err(
                attr.span(),
                format!("`{}` must be true or false", attr.key.as_str()),
            )),
        }
    }

    fn number(&self, attr: &Attribute) -> Result<f64, ConfigError> {
        match &attr.value {
            Expression::Number(n) => n.value().as_f64().ok_or_else(|| {
                self.err(
                    attr.span(),
                    format!("`{}` is not a number", attr.key.as_str()),
                )
            }),
            _ => Err(self.err(
                attr.span(),
                format!("`{}` must be a number", attr.key.as_str()),
            )),
        }
    }

    fn count(&self, attr: &Attribute) -> Result<u64, ConfigError> {
        match &attr.value {
            Expression::Number(n) => n.value().as_u64().ok_or_else(|| {
                self.err(
                    attr.span(),
                    format!("`{}` must be a whole number ≥ 0", attr.key.as_str()),
                )
            }),
            _ => Err(self.err(
                attr.span(),
                format!("`{}` must be a whole number", attr.key.as_str()),
            )),
        }
    }
}

/// The stacks in an order where each comes after those it `depends_on` (ties keep file order),
/// or the names along a cycle (first name repeated at the end). Unknown names are ignored.
pub fn dependency_order(stacks: &[StackConfig]) -> Result<Vec<&StackConfig>, Vec<String>> {
    let by_name: std::collections::HashMap<&str, usize> = stacks
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    let index = |name: &str| by_name.get(name).copied();
    let mut done = vec![false; stacks.len()];
    let mut on_path = vec![false; stacks.len()];
    let mut out = Vec::with_capacity(stacks.len());
    // Iterative depth-first search (a hostile file may chain many stacks): each frame is a stack
    // and how many of its dependencies were visited; the frames are the current path.
    for root in 0..stacks.len() {
        let mut path: Vec<(usize, usize)> = vec![(root, 0)];
        if let Some(o) = on_path.get_mut(root) {
            *o = true;
        }
        while let Some(&mut (i, ref mut next)) = path.last_mut() {
            let (Some(s), false) = (stacks.get(i), done.get(i).copied().unwrap_or(true)) else {
                if let Some(o) = on_path.get_mut(i) {
                    *o = false;
                }
                path.pop();
                continue;
            };
            match s.depends_on.get(*next) {
                Some(d) => {
                    *next += 1;
                    let Some(j) = index(d) else { continue };
                    if on_path.get(j).copied().unwrap_or(false) {
                        let p = path.iter().position(|&(k, _)| k == j).unwrap_or(0);
                        let mut cycle: Vec<String> = path
                            .get(p..)
                            .unwrap_or_default()
                            .iter()
                            .filter_map(|&(k, _)| stacks.get(k).map(|s| s.name.clone()))
                            .collect();
                        cycle.push(d.clone());
                        return Err(cycle);
                    }
                    if let Some(o) = on_path.get_mut(j) {
                        *o = true;
                    }
                    path.push((j, 0));
                }
                None => {
                    if let Some(d) = done.get_mut(i) {
                        *d = true;
                    }
                    if let Some(o) = on_path.get_mut(i) {
                        *o = false;
                    }
                    out.push(s);
                    path.pop();
                }
            }
        }
    }
    Ok(out)
}

/// 1 to 4 `/`-separated segments of `[a-z0-9._-]`.
fn valid_stack_name(name: &str) -> bool {
    let segments: Vec<&str> = name.split('/').collect();
    (1..=4).contains(&segments.len())
        && segments.iter().all(|s| {
            !s.is_empty()
                && *s != "."
                && *s != ".."
                && s.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
                })
        })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_file_over_the_size_bound_is_refused_before_it_is_parsed() {
        let big = format!("a = [{}1]\n", "1,".repeat(MAX_CONFIG_BYTES / 2));
        let e = parse(&big, "airlock.hcl").unwrap_err().to_string();
        assert!(e.contains("more than the 1024 KiB"), "{e}");
        let fits = format!("# {}\n", "x".repeat(MAX_CONFIG_BYTES - 10));
        assert!(parse(&fits, "airlock.hcl").is_ok());
    }

    use super::*;

    const SAMPLE: &str = r#"
stack "prod/app" {
  dir                = "stacks/prod/app"
  production         = true
  required_approvals = 2
}
stack "dev" {
  dir = "stacks/dev"
}
protect {
  types     = ["aws_elasticsearch_domain"]     # added to the built-in critical list
  addresses = ["module.network.*"]
}
allow_destroy "module.legacy.aws_db_instance.old" {
  reason = "decommissioned; final snapshot taken"
}
credentials "plan"  { env_from = ["AWS_PLAN_ROLE_ARN"] }
credentials "apply" { env_from = ["AWS_APPLY_ROLE_ARN"] }
mass_destruction {
  max_count     = 5
  max_percent   = 10.5
  min_instances = 4
}
"#;

    #[test]
    fn weakening_names_each_loosened_rule() {
        let old = parse(SAMPLE, "airlock.hcl").unwrap();
        assert!(weakening(&old, &old, "prod/app").is_empty());
        let loose = SAMPLE
            .replace("production         = true", "production = false")
            .replace("required_approvals = 2", "required_approvals = 1")
            .replace(r#"addresses = ["module.network.*"]"#, "addresses = []")
            .replace("max_count     = 5", "max_count = 50")
            + "allow_destroy \"aws_db_instance.main\" {\n  reason = \"x\"\n}\n";
        let new = parse(&loose, "airlock.hcl").unwrap();
        assert_eq!(
            weakening(&old, &new, "prod/app"),
            [
                "removes protect for module.network.*",
                "adds allow_destroy for aws_db_instance.main",
                "marks prod/app as no longer production",
                "lowers required_approvals of prod/app from 2 to 1",
                "raises the mass_destruction thresholds"
            ]
        );
        // Tightening is not weakening.
        assert!(weakening(&new, &old, "prod/app")
            .iter()
            .all(|w| w.starts_with("removes protect for type") || w.contains("allow_destroy")));
    }

    #[test]
    fn parses_the_design_sample() {
        let c = parse(SAMPLE, "airlock.hcl").unwrap();
        let prod = c.stack("prod/app").unwrap();
        assert!(prod.production);
        assert_eq!(prod.required_approvals, 2);
        assert_eq!(prod.dir.as_deref(), Some("stacks/prod/app"));
        assert_eq!(prod.line, 2);
        assert_eq!(c.stack("dev").unwrap().required_approvals, 1);
        assert_eq!(c.protect.types, vec!["aws_elasticsearch_domain"]);
        assert_eq!(
            c.allow_destroy[0].reason,
            "decommissioned; final snapshot taken"
        );
        assert_eq!(c.allow_destroy[0].line, 14);
        assert_eq!(c.credentials_for(Phase::Plan), ["AWS_PLAN_ROLE_ARN"]);
        assert_eq!(c.credentials_for(Phase::Apply), ["AWS_APPLY_ROLE_ARN"]);
        assert_eq!(c.oidc_for(Phase::Plan), None);
        let o = parse(
            "credentials \"apply\" {\n env_from = [\"X\"]\n oidc {\n  audience = \"sts.amazonaws.com\"\n  aws_role_arn = \"arn:r\"\n  ttl_seconds = 900\n }\n}\n",
            "airlock.hcl",
        )
        .unwrap();
        let p = o.oidc_for(Phase::Apply).unwrap();
        assert_eq!(
            (
                p.audience.as_str(),
                p.aws_role_arn.as_deref(),
                p.ttl_seconds
            ),
            ("sts.amazonaws.com", Some("arn:r"), Some(900))
        );
        assert_eq!(o.credentials_for(Phase::Apply), ["X"]);
        assert_eq!(c.mass_destruction.max_count, 5);
        assert_eq!(c.mass_destruction.max_percent, 10.5);
        assert_eq!(c.mass_destruction.min_instances, 4);
    }

    #[test]
    fn empty_config_has_defaults() {
        let c = parse("", "airlock.hcl").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.mass_destruction.max_count, 20);
    }

    #[test]
    fn errors_name_file_and_line() {
        let cases = [
            (
                "stack \"a\" {\n  dri = \"x\"\n}\n",
                2,
                "unknown attribute `dri`",
            ),
            (
                "\n\nalow_destroy \"x\" {}\n",
                3,
                "unknown block `alow_destroy`",
            ),
            ("allow_destroy \"x\" {\n}\n", 1, "non-empty `reason`"),
            ("stack \"Prod\" {}\n", 1, "invalid stack name"),
            ("stack \"a\" {}\nstack \"a\" {}\n", 2, "declared twice"),
            ("credentials \"deploy\" {}\n", 1, "\"plan\" or \"apply\""),
            (
                "credentials \"plan\" {\n oidc {\n  audience = \"a\"\n }\n}\n",
                2,
                "names no cloud",
            ),
            (
                "credentials \"plan\" {\n oidc {\n  aws_role_arn = \"r\"\n }\n}\n",
                2,
                "needs an `audience`",
            ),
            (
                "credentials \"plan\" {\n oidc {\n audience = \"a\"\n azure_client_id = \"c\"\n }\n}\n",
                2,
                "go together",
            ),
            (
                "credentials \"plan\" {\n oidc {\n audience = \"a\"\n aws_role_arn = \"r\"\n ttl_seconds = 7200\n }\n}\n",
                5,
                "between 60 and 3600",
            ),
            (
                "credentials \"plan\" {\n oidc {\n audience = \"a\"\n aws_key = \"r\"\n }\n}\n",
                4,
                "unknown attribute `aws_key`",
            ),
            (
                "credentials \"plan\" {\n other {\n }\n}\n",
                2,
                "unexpected block `other`",
            ),
            (
                "protect {\n types = \"aws_x\"\n}\n",
                2,
                "list of string literals",
            ),
            (
                "stack \"a\" {\n production = \"yes\"\n}\n",
                2,
                "true or false",
            ),
            (
                "stack \"a\" {\n required_approvals = 0\n}\n",
                2,
                "between 1 and 10",
            ),
            (
                "mass_destruction {\n max_percent = 300\n}\n",
                2,
                "between 0 and 100",
            ),
            (
                "stack \"a\" {\n dir = \"x\"\n dir = \"y\"\n}\n",
                3,
                "redefined attribute",
            ),
            ("stack \"a\" {\n", 1, "invalid HCL"),
            ("x = 1\n", 1, "top-level attribute"),
            ("protect \"x\" {}\n", 1, "takes no label"),
        ];
        for (src, line, text) in cases {
            let e = parse(src, "repo/airlock.hcl").unwrap_err();
            assert_eq!(e.line, Some(line), "{src:?}: {e}");
            let shown = e.to_string();
            assert!(
                shown.starts_with(&format!("repo/airlock.hcl:{line}: ")),
                "{shown}"
            );
            assert!(shown.contains(text), "{src:?}: {shown}");
        }
    }

    #[test]
    fn pull_request_attributes_and_dependency_order() {
        let src = r#"
stack "app" {
  dir               = "stacks/app"
  depends_on        = ["net", "db"]
  also_when_changed = ["shared/*.json"]
}
stack "db" {
  dir        = "stacks/db"
  depends_on = ["net"]
}
stack "net" { dir = "stacks/net" }
stack "old" {
  dir     = "stacks/old"
  destroy = true
}
"#;
        let c = parse(src, "airlock.hcl").unwrap();
        let app = c.stack("app").unwrap();
        assert_eq!(app.depends_on, ["net", "db"]);
        assert_eq!(app.also_when_changed, ["shared/*.json"]);
        assert!(c.stack("old").unwrap().destroy && !app.destroy);
        let order: Vec<&str> = dependency_order(&c.stacks)
            .unwrap()
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(order, ["net", "db", "app", "old"]);
        // Same settings wherever the block is; any attribute is a difference.
        let moved = parse(&format!("\n\n{src}"), "airlock.hcl").unwrap();
        assert!(moved.stack("app").unwrap().same_settings(app));
        let mut other = app.clone();
        other.also_when_changed.clear();
        assert!(!other.same_settings(app));
        // Declaring a destroy is shown to approvers.
        let before = parse(&src.replace("  destroy = true\n", ""), "airlock.hcl").unwrap();
        assert_eq!(
            weakening(&before, &c, "old"),
            ["declares the removal of old (destroy = true)"]
        );
        let cases = [
            ("stack \"a\" {\n depends_on = [\"b\"]\n}\n", 1, "not a stack block"),
            (
                "stack \"a\" {\n depends_on = [\"b\"]\n}\nstack \"b\" {\n depends_on = [\"c\"]\n}\nstack \"c\" {\n depends_on = [\"a\"]\n}\n",
                1,
                "depends_on forms a cycle: a -> b -> c -> a",
            ),
            ("stack \"a\" {\n depends_on = [\"a\"]\n}\n", 1, "cycle: a -> a"),
            ("stack \"a\" {\n\n depends_on = \"b\"\n}\n", 3, "list of string literals"),
            ("stack \"a\" {}\nstack \"b\" {\n depends_on = [\"a\", \"a\"]\n}\n", 3, "twice"),
            ("stack \"a\" {\n also_when_changed = [\"../x\"]\n}\n", 2, "not a path glob"),
            ("stack \"a\" {\n also_when_changed = [\"/etc/*\"]\n}\n", 2, "not a path glob"),
            ("stack \"a\" {\n also_when_changed = [\"\"]\n}\n", 2, "not a path glob"),
            ("stack \"a\" {\n destroy = \"yes\"\n}\n", 2, "true or false"),
            ("stack \"a\" {\n dir = \"../x\"\n}\n", 2, "without `..`"),
            ("stack \"a\" {\n dir = \"/srv/x\"\n}\n", 2, "relative to the repository root"),
            ("stack \"a\" {\n dir = \"\"\n}\n", 2, "relative to the repository root"),
        ];
        for (src, line, text) in cases {
            let e = parse(src, "airlock.hcl").unwrap_err();
            assert_eq!(e.line, Some(line), "{src:?}: {e}");
            assert!(e.to_string().contains(text), "{src:?}: {e}");
        }
        // A long chain is ordered without recursion.
        let chain: String = (0..20_000)
            .map(|i| {
                if i == 0 {
                    "stack \"s0\" {}\n".to_string()
                } else {
                    format!("stack \"s{i}\" {{\n depends_on = [\"s{}\"]\n}}\n", i - 1)
                }
            })
            .rev()
            .collect();
        let c = parse(&chain, "airlock.hcl").unwrap();
        let order = dependency_order(&c.stacks).unwrap();
        assert_eq!(order.first().unwrap().name, "s0");
        assert_eq!(order.last().unwrap().name, "s19999");
    }

    #[test]
    fn address_patterns() {
        assert!(address_matches("aws_s3_bucket.b", "aws_s3_bucket.b"));
        assert!(address_matches("aws_s3_bucket.b", "aws_s3_bucket.b[0]"));
        assert!(address_matches("aws_s3_bucket.b", "aws_s3_bucket.b[\"x\"]"));
        assert!(!address_matches("aws_s3_bucket.b", "aws_s3_bucket.bb"));
        assert!(address_matches(
            "module.network.*",
            "module.network.aws_vpc.main"
        ));
        assert!(address_matches(
            "module.network",
            "module.network.aws_vpc.main"
        ));
        assert!(address_matches(
            "module.network",
            "module.network.module.x.aws_vpc.y[1]"
        ));
        assert!(!address_matches(
            "module.network",
            "module.network2.aws_vpc.main"
        ));
        assert!(address_matches(
            "*.aws_db_instance.*",
            "module.a.aws_db_instance.b"
        ));
        assert!(!address_matches(
            "aws_db_instance.old[1]",
            "aws_db_instance.old[0]"
        ));
        assert!(address_matches("*", "anything"));
    }
}
