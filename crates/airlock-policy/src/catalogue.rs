//! The built-in critical-resource catalogue: which resource types lose data or identity when
//! destroyed, and which attributes protect them. The list is data (`data/critical-resources.txt`,
//! embedded at build time), so reviewing it never means reading rule code.

use std::collections::HashMap;
use std::sync::OnceLock;

/// The catalogue's source text, embedded at build time.
pub const CATALOGUE_SOURCE: &str = include_str!("../data/critical-resources.txt");

/// Whether a resource type is critical: destroying it is denied unless declared.
///
/// **API boundary:** the state server's firewall calls exactly this function; keep it stable.
pub fn is_critical_type(resource_type: &str) -> bool {
    matches!(entry(resource_type), Some(e) if e.class == Class::Critical)
}

/// The catalogue entry for a resource type, if it has one (critical or guarded).
pub fn entry(resource_type: &str) -> Option<&'static Entry> {
    catalogue().by_type.get(resource_type)
}

/// Every entry in the catalogue, in file order.
pub fn entries() -> &'static [Entry] {
    &catalogue().entries
}

/// How much a resource type matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Destroying it loses data or identity.
    Critical,
    /// Not critical, but it carries protection attributes worth watching.
    Guarded,
}

/// One resource type in the catalogue.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Terraform resource type, e.g. `aws_db_instance`.
    pub resource_type: &'static str,
    /// Critical or merely guarded.
    pub class: Class,
    /// Free-form category shown in reports (`database`, `bucket`, ...).
    pub category: &'static str,
    /// Attributes whose value makes a delete or replace dangerous.
    pub protections: Vec<Protection>,
    /// Protections that live in another resource referring to this one, or in alternative
    /// attributes (read by `airlock doctor` from configuration; the plan gate ignores them).
    pub companions: Vec<Companion>,
}

/// A protection held by a companion resource (`aws_s3_bucket_versioning` for a bucket), or one
/// of several alternative ways to write it. Alternatives share a `name`; one holding is enough.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Companion {
    /// What it protects, in words (`versioning`).
    pub name: &'static str,
    /// The companion's type; `None` for the resource itself.
    pub resource_type: Option<&'static str>,
    /// The companion's attribute that refers to the protected resource (`bucket`).
    pub link: &'static str,
    /// The attribute (of the companion) and its protective value.
    pub protection: Protection,
}

/// An attribute that protects a resource, and how to read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Protection {
    /// Attribute path as written in the catalogue, e.g. `settings.deletion_protection_enabled`.
    pub attribute: &'static str,
    /// When the attribute's value counts as protective.
    pub rule: ProtectRule,
    /// The provider refuses to delete the resource while the attribute is protective.
    pub blocks_delete: bool,
    /// The provider's default when the attribute is not written, if known (`@VALUE`).
    pub default: Option<&'static str>,
    /// Deleting the resource while the attribute is not protective deletes its backups with
    /// it (e.g. `delete_automated_backups`, true by default).
    pub deletes_backups: bool,
}

impl Protection {
    /// The attribute path split into steps.
    pub fn steps(&self) -> impl Iterator<Item = &'static str> {
        self.attribute.split('.')
    }
}

/// When an attribute's value counts as protective.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtectRule {
    /// Protective while `true`.
    True,
    /// Protective while not `true` (e.g. `skip_final_snapshot`, `force_destroy`).
    False,
    /// Protective while a number greater than zero; shrinking it weakens protection.
    Positive,
    /// A number whose shrinking weakens protection (e.g. a deletion window).
    NoShrink,
    /// Protective while set (non-null, non-empty).
    Set,
    /// Protective while equal to this string.
    Equals(&'static str),
    /// Protective while not equal to this string.
    NotEquals(&'static str),
}

/// A line of the catalogue source that could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogueError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for CatalogueError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "critical-resources.txt:{}: {}", self.line, self.message)
    }
}

impl std::error::Error for CatalogueError {}

struct Catalogue {
    entries: Vec<Entry>,
    by_type: HashMap<&'static str, Entry>,
}

fn catalogue() -> &'static Catalogue {
    static CATALOGUE: OnceLock<Catalogue> = OnceLock::new();
    CATALOGUE.get_or_init(|| {
        // The embedded file is checked by a unit test; a bad line is skipped, never a panic.
        let entries: Vec<Entry> = parse_catalogue(CATALOGUE_SOURCE)
            .into_iter()
            .filter_map(Result::ok)
            .collect();
        let by_type = entries
            .iter()
            .map(|e| (e.resource_type, e.clone()))
            .collect();
        Catalogue { entries, by_type }
    })
}

/// Parses catalogue source text: one result per non-comment line.
pub fn parse_catalogue(source: &'static str) -> Vec<Result<Entry, CatalogueError>> {
    source
        .lines()
        .enumerate()
        .filter_map(|(i, line)| {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                None
            } else {
                Some(parse_line(line).map_err(|message| CatalogueError {
                    line: i + 1,
                    message,
                }))
            }
        })
        .collect()
}

fn parse_line(line: &'static str) -> Result<Entry, String> {
    let mut words = line.split_whitespace();
    let resource_type = words.next().ok_or("missing resource type")?;
    let class = match words.next() {
        Some("critical") => Class::Critical,
        Some("guarded") => Class::Guarded,
        other => return Err(format!("expected `critical` or `guarded`, found {other:?}")),
    };
    let category = words.next().ok_or("missing category")?;
    let mut protections = Vec::new();
    let mut companions = Vec::new();
    for word in words {
        if let Some(c) = word.strip_prefix('+') {
            companions.push(parse_companion(c)?);
        } else {
            protections.push(parse_protection(word)?);
        }
    }
    Ok(Entry {
        resource_type,
        class,
        category,
        protections,
        companions,
    })
}

/// `NAME:TYPE.LINK:PROTECTION` or `NAME:self:PROTECTION`.
fn parse_companion(word: &'static str) -> Result<Companion, String> {
    let mut parts = word.splitn(3, ':');
    let (Some(name), Some(target), Some(protection)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(format!("cannot read companion `+{word}`"));
    };
    let (resource_type, link) = if target == "self" {
        (None, "")
    } else {
        let (t, l) = target
            .split_once('.')
            .ok_or_else(|| format!("companion `+{word}` needs TYPE.LINK or self"))?;
        (Some(t), l)
    };
    if name.is_empty() || link.is_empty() && resource_type.is_some() {
        return Err(format!("cannot read companion `+{word}`"));
    }
    Ok(Companion {
        name,
        resource_type,
        link,
        protection: parse_protection(protection)?,
    })
}

fn parse_protection(word: &'static str) -> Result<Protection, String> {
    let (word, default) = match word.rsplit_once('@') {
        Some((w, d)) if !d.is_empty() => (w, Some(d)),
        Some(_) => return Err(format!("empty default in `{word}`")),
        None => (word, None),
    };
    let (word, deletes_backups) = match word.strip_suffix('*') {
        Some(w) => (w, true),
        None => (word, false),
    };
    let (word, blocks_delete) = match word.strip_suffix('!') {
        Some(w) => (w, true),
        None => (word, false),
    };
    let (attribute, rule) = if let Some((a, v)) = word.split_once("!=") {
        (a, ProtectRule::NotEquals(v))
    } else if let Some((a, v)) = word.split_once('=') {
        let rule = match v {
            "true" => ProtectRule::True,
            "false" => ProtectRule::False,
            other => ProtectRule::Equals(other),
        };
        (a, rule)
    } else if let Some(a) = word.strip_suffix(">0") {
        (a, ProtectRule::Positive)
    } else if let Some(a) = word.strip_suffix(":max") {
        (a, ProtectRule::NoShrink)
    } else if let Some(a) = word.strip_suffix(":set") {
        (a, ProtectRule::Set)
    } else {
        return Err(format!("cannot read protection `{word}`"));
    };
    if attribute.is_empty() || attribute.split('.').any(str::is_empty) {
        return Err(format!("empty attribute path in `{word}`"));
    }
    Ok(Protection {
        attribute,
        rule,
        blocks_delete,
        default,
        deletes_backups,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_catalogue_parses_without_errors() {
        let errors: Vec<_> = parse_catalogue(CATALOGUE_SOURCE)
            .into_iter()
            .filter_map(Result::err)
            .collect();
        assert!(errors.is_empty(), "{errors:?}");
        assert!(entries().len() > 80);
    }

    #[test]
    fn no_type_is_listed_twice() {
        let mut seen = std::collections::HashSet::new();
        for e in entries() {
            assert!(
                seen.insert(e.resource_type),
                "{} listed twice",
                e.resource_type
            );
        }
    }

    #[test]
    fn critical_types_cover_the_three_clouds() {
        for t in [
            "aws_db_instance",
            "aws_s3_bucket",
            "aws_kms_key",
            "google_sql_database_instance",
            "google_storage_bucket",
            "azurerm_key_vault",
            "azurerm_storage_account",
        ] {
            assert!(is_critical_type(t), "{t}");
        }
        assert!(!is_critical_type("aws_instance"), "guarded, not critical");
        assert!(!is_critical_type("terraform_data"));
        assert!(!is_critical_type(""));
    }

    #[test]
    fn protections_are_read() {
        let db = entry("aws_db_instance").map(|e| e.protections.clone());
        let db = db.unwrap_or_default();
        assert!(db.contains(&Protection {
            attribute: "deletion_protection",
            rule: ProtectRule::True,
            blocks_delete: true,
            default: Some("false"),
            deletes_backups: false,
        }));
        assert!(db.contains(&Protection {
            attribute: "skip_final_snapshot",
            rule: ProtectRule::False,
            blocks_delete: false,
            default: Some("false"),
            deletes_backups: false,
        }));
        assert!(db.contains(&Protection {
            attribute: "delete_automated_backups",
            rule: ProtectRule::False,
            blocks_delete: false,
            default: Some("true"),
            deletes_backups: true,
        }));
        assert!(db
            .iter()
            .any(|p| p.attribute == "delete_automated_backups" && p.default == Some("true")));
        let bucket = entry("aws_s3_bucket").map(|e| e.companions.clone());
        let bucket = bucket.unwrap_or_default();
        assert_eq!(bucket.len(), 2);
        assert_eq!(bucket[0].resource_type, Some("aws_s3_bucket_versioning"));
        assert_eq!(bucket[0].link, "bucket");
        assert_eq!(bucket[0].protection.rule, ProtectRule::Equals("Enabled"));
        assert_eq!(bucket[1].resource_type, None);
        assert!(db
            .iter()
            .any(|p| p.attribute == "backup_retention_period" && p.rule == ProtectRule::Positive));
    }

    #[test]
    fn bad_lines_are_errors_not_panics() {
        let r = parse_catalogue(
            "x_type bogus db\nok_type critical db a=true\ny critical db ==\nz critical db a=true@\n\
             w critical db +v:nodot:a=true\n",
        );
        assert!(r.get(3).is_some_and(|r| r.is_err()));
        assert!(r.get(4).is_some_and(|r| r.is_err()));
        assert!(r.first().is_some_and(|r| r.is_err()));
        assert!(r.get(1).is_some_and(|r| r.is_ok()));
        assert!(r.get(2).is_some_and(|r| r.is_err()));
    }
}
