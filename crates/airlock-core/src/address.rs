//! Terraform's address grammar, as far as a state file needs it: identifiers, instance keys,
//! module instance paths and provider configuration addresses. Parsing accepts only the
//! canonical spelling Terraform writes, so one address has exactly one spelling here, and a
//! rendering (`module.a["k"].aws_vpc.main[0]`) can never be produced by two different addresses.

use std::fmt::Write as _;

/// Longest identifier, module path or provider address accepted (Terraform has no limit; real
/// ones are far shorter).
const MAX_LEN: usize = 4096;

/// Terraform's identifier: a letter or `_`, then letters, digits, `_` and `-` (HCL's
/// `ValidIdentifier`, which takes Unicode letters and digits).
pub fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_alphabetic() || c == '_')
        && chars.all(|c| c.is_alphanumeric() || c == '_' || c == '-')
        && s.len() <= MAX_LEN
}

/// An instance key: `[0]` (count) or `["k"]` (for_each).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum InstanceKey {
    /// A count index.
    Int(u64),
    /// A for_each key.
    Str(String),
}

/// Largest integer key: Terraform reads `index_key` as a float64, exact up to 2^53.
pub const MAX_INT_KEY: u64 = 1 << 53;

impl InstanceKey {
    /// Appends `[0]` or `["k"]`, quoted as Terraform renders it.
    pub fn render_into(&self, out: &mut String) {
        match self {
            InstanceKey::Int(n) => {
                let _ = write!(out, "[{n}]");
            }
            InstanceKey::Str(s) => {
                out.push('[');
                hcl_quote_into(s, out);
                out.push(']');
            }
        }
    }
}

/// One step of a module instance path: `module.NAME` or `module.NAME[KEY]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModuleStep {
    /// The module call's name.
    pub name: String,
    /// Its instance key, for modules called with count or for_each.
    pub key: Option<InstanceKey>,
}

/// Whether Go's `unicode.IsPrint` would hold, near enough: what Terraform prints verbatim in a
/// quoted key rather than as `\uXXXX`. (Unassigned code points are not detected; such a key in a
/// module path is then refused as non-canonical, never misread.)
fn is_print(c: char) -> bool {
    let format_or_private = matches!(c,
        '\u{ad}' | '\u{600}'..='\u{605}' | '\u{61c}' | '\u{6dd}' | '\u{70f}' | '\u{180e}'
        | '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{206f}'
        | '\u{feff}' | '\u{fff9}'..='\u{fffb}' | '\u{e000}'..='\u{f8ff}'
        | '\u{f0000}'..='\u{10ffff}' | '\u{e0001}'..='\u{e007f}');
    !(c.is_control() || (c.is_whitespace() && c != ' ') || format_or_private)
}

/// Appends `s` as an HCL quoted string, exactly as Terraform's `toHCLQuotedString` does.
pub fn hcl_quote_into(s: &str, out: &mut String) {
    out.push('"');
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '$' | '%' => {
                out.push(c);
                if chars.peek() == Some(&'{') {
                    out.push(c);
                }
            }
            c if !is_print(c) => {
                let n = u32::from(c);
                let _ = if n < 0x10000 {
                    write!(out, "\\u{n:04x}")
                } else {
                    write!(out, "\\U{n:08x}")
                };
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Decodes an HCL quoted string at the start of `s` (which begins with `"`); returns the value
/// and the rest after the closing quote. Lenient: callers re-render and compare.
fn hcl_unquote(s: &str) -> Option<(String, &str)> {
    let body = s.strip_prefix('"')?;
    let mut out = String::new();
    let mut it = body.char_indices();
    while let Some((i, c)) = it.next() {
        match c {
            '"' => return Some((out, body.get(i + 1..)?)),
            '\\' => {
                let (_, e) = it.next()?;
                match e {
                    'n' => out.push('\n'),
                    'r' => out.push('\r'),
                    't' => out.push('\t'),
                    '"' => out.push('"'),
                    '\\' => out.push('\\'),
                    'u' | 'U' => {
                        let len = if e == 'u' { 4 } else { 8 };
                        let hex = body.get(i + 2..i + 2 + len)?;
                        let n = u32::from_str_radix(hex, 16).ok()?;
                        out.push(char::from_u32(n)?);
                        for _ in 0..len {
                            it.next();
                        }
                    }
                    _ => return None,
                }
            }
            '$' | '%' if body.get(i + 1..i + 3) == Some(if c == '$' { "${" } else { "%{" }) => {
                out.push(c);
                it.next();
            }
            '$' | '%' if body.get(i + 1..i + 2) == Some("{") => return None,
            c => out.push(c),
        }
    }
    None
}

/// Parses `[0]` or `["k"]` at the start of `s`; returns the key and the rest.
fn parse_key(s: &str) -> Option<(InstanceKey, &str)> {
    let inner = s.strip_prefix('[')?;
    let (key, rest) = if inner.starts_with('"') {
        let (v, rest) = hcl_unquote(inner)?;
        (InstanceKey::Str(v), rest)
    } else {
        let end = inner.find(|c: char| !c.is_ascii_digit())?;
        let n: u64 = inner.get(..end)?.parse().ok()?;
        (InstanceKey::Int(n), inner.get(end..)?)
    };
    Some((key, rest.strip_prefix(']')?))
}

/// Splits a leading identifier off `s`.
fn split_identifier(s: &str) -> Option<(&str, &str)> {
    let end = s
        .char_indices()
        .find(|&(_, c)| !(c.is_alphanumeric() || c == '_' || c == '-'))
        .map_or(s.len(), |(i, _)| i);
    let (id, rest) = s.split_at(end);
    is_identifier(id).then_some((id, rest))
}

/// Parses the module steps at the start of `s` (each `module.NAME`, optionally `[KEY]`,
/// separated by dots); returns them and the rest (after the dot that follows the last step, if
/// `s` goes on).
fn parse_module_prefix(mut s: &str, keys: bool) -> Option<(Vec<ModuleStep>, &str)> {
    let mut steps = Vec::new();
    while let Some(after) = s.strip_prefix("module.") {
        let (name, mut rest) = split_identifier(after)?;
        let mut key = None;
        if keys && rest.starts_with('[') {
            let (k, r) = parse_key(rest)?;
            key = Some(k);
            rest = r;
        }
        steps.push(ModuleStep {
            name: name.to_owned(),
            key,
        });
        match rest.strip_prefix('.') {
            Some(r) => s = r,
            None if rest.is_empty() => return Some((steps, rest)),
            None => return None,
        }
    }
    Some((steps, s))
}

/// Renders a module path as Terraform does (`module.a["k"].module.b`), empty for the root.
pub fn render_module_path(steps: &[ModuleStep]) -> String {
    let mut out = String::new();
    for (i, step) in steps.iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        out.push_str("module.");
        out.push_str(&step.name);
        if let Some(k) = &step.key {
            k.render_into(&mut out);
        }
    }
    out
}

/// Parses the `module` field of a state resource: a module instance path in canonical form.
pub fn parse_module_path(s: &str) -> Result<Vec<ModuleStep>, String> {
    let bad = || {
        format!(
            "module address {:?} is not a module instance path as Terraform writes it (module.NAME or module.NAME[KEY], joined by dots)",
            s.chars().take(80).collect::<String>()
        )
    };
    if s.len() > MAX_LEN {
        return Err(bad());
    }
    match parse_module_prefix(s, true) {
        Some((steps, "")) if !steps.is_empty() && render_module_path(&steps) == s => Ok(steps),
        _ => Err(bad()),
    }
}

/// A resource instance's address: `module.a["k"].data.aws_vpc.main[0]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceAddress {
    /// The module instance path (empty for the root module).
    pub module: Vec<ModuleStep>,
    /// A data resource (`data.` before the type).
    pub data: bool,
    /// The resource type.
    pub resource_type: String,
    /// The resource name.
    pub name: String,
    /// The instance key, for resources with count or for_each.
    pub key: Option<InstanceKey>,
}

impl InstanceAddress {
    /// The address as Terraform renders it.
    pub fn render(&self) -> String {
        let mut out = render_resource(&self.module, self.data, &self.resource_type, &self.name);
        if let Some(k) = &self.key {
            k.render_into(&mut out);
        }
        out
    }
}

/// Renders a resource's address without an instance key (`module.m[0].data.t.n`).
pub fn render_resource(
    module: &[ModuleStep],
    data: bool,
    resource_type: &str,
    name: &str,
) -> String {
    let mut out = render_module_path(module);
    if !out.is_empty() {
        out.push('.');
    }
    if data {
        out.push_str("data.");
    }
    out.push_str(resource_type);
    out.push('.');
    out.push_str(name);
    out
}

/// Parses a resource instance address in the canonical form Terraform renders (state, plan JSON),
/// keys and all; `None` for anything else (a module path alone, a non-canonical spelling).
pub fn parse_instance_address(s: &str) -> Option<InstanceAddress> {
    if s.len() > 4 * MAX_LEN {
        return None;
    }
    let (module, rest) = parse_module_prefix(s, true)?;
    let (data, rest) = match rest.strip_prefix("data.") {
        Some(r) => (true, r),
        None => (false, rest),
    };
    let (resource_type, rest) = split_identifier(rest)?;
    let (name, rest) = split_identifier(rest.strip_prefix('.')?)?;
    let (key, rest) = match rest {
        "" => (None, rest),
        _ => parse_key(rest).map(|(k, r)| (Some(k), r))?,
    };
    let address = InstanceAddress {
        module,
        data,
        resource_type: resource_type.to_owned(),
        name: name.to_owned(),
        key,
    };
    (rest.is_empty() && address.render() == s).then_some(address)
}

/// Whether `s` is a provider part (namespace or type): letters, digits, `-` and `_`, starting
/// and ending with a letter or digit, at most 64 characters.
fn is_provider_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.last().is_some_and(u8::is_ascii_alphanumeric)
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_')
}

/// Whether `s` is a provider source `HOST/NAMESPACE/TYPE` as Terraform writes it in state.
fn is_provider_source(s: &str) -> bool {
    let mut parts = s.split('/');
    let (Some(host), Some(ns), Some(ty), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let (name, port) = host.split_once(':').unwrap_or((host, "1"));
    let host_ok = !name.is_empty()
        && name.split('.').all(|l| {
            !l.is_empty()
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
        })
        && !port.is_empty()
        && port.bytes().all(|c| c.is_ascii_digit());
    let ns_ok = is_provider_part(ns) || (ns == "-" && host == "registry.terraform.io");
    host_ok && ns_ok && is_provider_part(ty) && !ty.starts_with("terraform-")
}

/// Validates a provider configuration address as Terraform writes it in state:
/// `provider["HOST/NS/TYPE"]`, optionally `.ALIAS`, optionally prefixed by a module path without
/// instance keys. Terraform silently skips a resource whose provider address does not parse, so
/// this must be at least as strict as Terraform.
pub fn validate_provider(s: &str) -> Result<(), String> {
    let bad = || {
        format!(
            "provider address {:?} is not provider[\"HOST/NAMESPACE/TYPE\"] with an optional .ALIAS (Terraform would silently drop this resource)",
            s.chars().take(80).collect::<String>()
        )
    };
    if s.len() > MAX_LEN {
        return Err(bad());
    }
    let (_, rest) = parse_module_prefix(s, false).ok_or_else(bad)?;
    let inner = rest.strip_prefix("provider[\"").ok_or_else(bad)?;
    let (source, mut rest) = inner.split_once("\"]").ok_or_else(bad)?;
    if !is_provider_source(source) {
        return Err(bad());
    }
    if let Some(r) = rest.strip_prefix('.') {
        let (_, r) = split_identifier(r).ok_or_else(bad)?;
        rest = r;
    }
    if rest.is_empty() {
        Ok(())
    } else {
        Err(bad())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers() {
        for ok in ["a", "_a", "db-1", "main_2", "données"] {
            assert!(is_identifier(ok), "{ok}");
        }
        for bad in [
            "",
            "1a",
            "-a",
            "a.b",
            "a[0]",
            "main[\"k\"]",
            "a b",
            "a\"",
            "a\u{0}",
        ] {
            assert!(!is_identifier(bad), "{bad}");
        }
    }

    #[test]
    fn module_paths_round_trip_and_only_canonically() {
        for ok in [
            "module.a",
            "module.a[0]",
            "module.a[\"k\"].module.b",
            "module.a[\"x.y[\\\"z\\\"]\"]",
            "module.a[\"$${x}\"]",
            "module.a[\"tab\\there\"]",
            "module.a[\"\\u200b\"]",
        ] {
            let steps = parse_module_path(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
            assert_eq!(render_module_path(&steps), ok);
        }
        let steps = parse_module_path("module.a[\"x.y\"].module.b[3]").unwrap();
        assert_eq!(
            steps,
            [
                ModuleStep {
                    name: "a".into(),
                    key: Some(InstanceKey::Str("x.y".into()))
                },
                ModuleStep {
                    name: "b".into(),
                    key: Some(InstanceKey::Int(3))
                }
            ]
        );
        for bad in [
            "",
            "module",
            "module.",
            "a",
            "module.a.",
            "module.a.b",
            "module.a[01]",
            "module.a[-1]",
            "module.a[\"k\"]x",
            "module.a[\"\\u0041\"]",
            "module.a[\"${x}\"]",
            "module.a[\"\u{200b}\"]",
            "module.a[k]",
            "module.1a",
            "module.a.aws_vpc.main",
            "module.a[\"k\"",
        ] {
            assert!(parse_module_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn instance_addresses_round_trip_and_only_canonically() {
        for ok in [
            "t.n",
            "t.n[0]",
            "data.t.n[\"a[b\"]",
            "module.a[0].t.n",
            "module.a[\"x.y\"].module.b.data.t.n[\"]\"]",
        ] {
            let a = parse_instance_address(ok).unwrap_or_else(|| panic!("{ok}"));
            assert_eq!(a.render(), ok);
        }
        let a = parse_instance_address("module.a[\"k\"].data.t.n[2]").unwrap();
        assert_eq!(
            a,
            InstanceAddress {
                module: vec![ModuleStep {
                    name: "a".into(),
                    key: Some(InstanceKey::Str("k".into()))
                }],
                data: true,
                resource_type: "t".into(),
                name: "n".into(),
                key: Some(InstanceKey::Int(2)),
            }
        );
        for bad in [
            "",
            "t",
            "t.",
            "module.a",
            "module.a[0]",
            "t.n.x",
            "t.n[01]",
            "t.n[\"a\"]x",
            "t.n[\"\\u0041\"]",
            "module.a[k].t.n",
            "t.n[\"a\"",
        ] {
            assert!(parse_instance_address(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn provider_addresses() {
        for ok in [
            "provider[\"registry.terraform.io/hashicorp/aws\"]",
            "provider[\"registry.terraform.io/hashicorp/aws\"].west",
            "module.a.module.b.provider[\"registry.terraform.io/hashicorp/aws\"]",
            "provider[\"terraform.io/builtin/terraform\"]",
            "provider[\"registry.terraform.io/-/aws\"]",
            "provider[\"localhost:8080/1password/onepassword\"]",
        ] {
            validate_provider(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "",
            "aws",
            "provider.aws",
            "provider.aws.west",
            "provider[\"aws\"]",
            "provider[\"hashicorp/aws\"]",
            "provider[\"a b/c/d\"]",
            "provider[\"registry.terraform.io/hashicorp/aws\"].x.y",
            "provider[\"registry.terraform.io/hashicorp/aws\"][0]",
            "provider[\"registry.terraform.io/hashicorp/terraform-provider-aws\"]",
            "provider[\"example.com/-/aws\"]",
            "module.a[0].provider[\"registry.terraform.io/hashicorp/aws\"]",
            "provider[\"registry.terraform.io/hashicorp/aws\"] ",
        ] {
            assert!(validate_provider(bad).is_err(), "{bad}");
        }
    }
}
