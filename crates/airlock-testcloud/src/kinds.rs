//! The resource types: their attributes (one table), the checks on values, and what each
//! type does in the cloud on create, update and delete (AWS's rules that matter to airlock).

use crate::cloud::{encode_id, Cloud, Object, AUTOMATED_BACKUP, MAX_ENCODED_ID};
use serde_json::{json, Value as Json};
use std::net::Ipv4Addr;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Ty {
    Str,
    Int,
    Bool,
    /// `map(string)`
    Tags,
    /// `set(string)`
    StrSet,
}

#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Mode {
    Required,
    Optional,
    /// Optional; the provider plans this value when the configuration leaves it out.
    Default(Def),
    /// Optional; the provider fills it in on create when the configuration leaves it out.
    OptionalComputed,
    /// Set by the cloud only.
    Computed,
}

#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Def {
    Bool(bool),
    Int(i64),
    Str(&'static str),
}

impl Def {
    pub fn json(self) -> Json {
        match self {
            Def::Bool(b) => Json::Bool(b),
            Def::Int(i) => json!(i),
            Def::Str(s) => Json::String(s.into()),
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Attr {
    pub name: &'static str,
    pub ty: Ty,
    pub mode: Mode,
    /// Changing it replaces the object.
    pub force_new: bool,
    pub sensitive: bool,
}

const fn a(name: &'static str, ty: Ty, mode: Mode) -> Attr {
    Attr {
        name,
        ty,
        mode,
        force_new: false,
        sensitive: false,
    }
}

const fn new(name: &'static str, ty: Ty, mode: Mode) -> Attr {
    Attr {
        name,
        ty,
        mode,
        force_new: true,
        sensitive: false,
    }
}

use Mode::{Computed, Default as D, Optional, OptionalComputed, Required};
use Ty::{Bool, Int, Str, StrSet, Tags};

/// Every resource type has these.
const COMMON: [Attr; 3] = [
    a("id", Str, Computed),
    a("arn", Str, Computed),
    a("tags", Tags, Optional),
];

pub struct Kind {
    pub name: &'static str,
    pub attrs: &'static [Attr],
    pub doc: &'static str,
}

pub const KINDS: &[Kind] = &[
    Kind {
        name: "aws_vpc",
        doc: "A VPC; cannot be deleted while subnets are in it.",
        attrs: &[new("cidr_block", Str, Required), a("enable_dns_hostnames", Bool, D(Def::Bool(false)))],
    },
    Kind {
        name: "aws_subnet",
        doc: "A subnet of a VPC (its CIDR inside the VPC's); cannot be deleted while instances are in it.",
        attrs: &[
            new("vpc_id", Str, Required),
            new("cidr_block", Str, Required),
            new("availability_zone", Str, OptionalComputed),
            a("map_public_ip_on_launch", Bool, D(Def::Bool(false))),
        ],
    },
    Kind {
        name: "aws_ecs_cluster",
        doc: "An ECS cluster; its id is its ARN.",
        attrs: &[new("name", Str, Required)],
    },
    Kind {
        name: "aws_lb",
        doc: "A load balancer; refuses deletion while enable_deletion_protection is true.",
        attrs: &[
            new("name", Str, Required),
            new("internal", Bool, D(Def::Bool(false))),
            new("load_balancer_type", Str, D(Def::Str("application"))),
            a("subnets", StrSet, Optional),
            a("enable_deletion_protection", Bool, D(Def::Bool(false))),
            a("dns_name", Str, Computed),
        ],
    },
    Kind {
        name: "aws_instance",
        doc: "A virtual machine; refuses termination while disable_api_termination is true.",
        attrs: &[
            new("ami", Str, Required),
            a("instance_type", Str, Required),
            new("subnet_id", Str, Optional),
            a("disable_api_termination", Bool, D(Def::Bool(false))),
            a("private_ip", Str, Computed),
        ],
    },
    Kind {
        name: "aws_db_instance",
        doc: "A database. Refuses deletion while deletion_protection is true; leaves a final \
              snapshot unless skip_final_snapshot; keeps automated backups while \
              backup_retention_period > 0 and deletes them with the instance unless \
              delete_automated_backups = false.",
        attrs: &[
            new("identifier", Str, Required),
            new("engine", Str, Required),
            a("instance_class", Str, Required),
            a("allocated_storage", Int, D(Def::Int(20))),
            new("username", Str, Optional),
            Attr { sensitive: true, ..a("password", Str, Optional) },
            a("deletion_protection", Bool, D(Def::Bool(false))),
            a("skip_final_snapshot", Bool, D(Def::Bool(false))),
            a("final_snapshot_identifier", Str, Optional),
            a("backup_retention_period", Int, D(Def::Int(1))),
            a("delete_automated_backups", Bool, D(Def::Bool(true))),
            a("address", Str, Computed),
            a("endpoint", Str, Computed),
        ],
    },
    Kind {
        name: "aws_db_snapshot",
        doc: "A manual snapshot of a database; its id is db_snapshot_identifier.",
        attrs: &[
            new("db_instance_identifier", Str, Required),
            new("db_snapshot_identifier", Str, Required),
            a("snapshot_type", Str, Computed),
        ],
    },
    Kind {
        name: "aws_s3_bucket",
        doc: "A bucket; its id is its name. A bucket with objects cannot be deleted unless force_destroy.",
        attrs: &[new("bucket", Str, Required), a("force_destroy", Bool, D(Def::Bool(false)))],
    },
    Kind {
        name: "aws_s3_object",
        doc: "An object in a bucket; its id is \"BUCKET/KEY\".",
        attrs: &[
            new("bucket", Str, Required),
            new("key", Str, Required),
            a("content", Str, Optional),
            a("content_type", Str, D(Def::Str("binary/octet-stream"))),
            a("etag", Str, Computed),
        ],
    },
];

pub const ACCOUNT: &str = "123456789012";

impl Kind {
    pub fn find(name: &str) -> Option<&'static Kind> {
        KINDS.iter().find(|k| k.name == name)
    }

    /// Every attribute: the common ones, then the type's own.
    pub fn all_attrs(&self) -> impl Iterator<Item = &'static Attr> + '_ {
        COMMON.iter().chain(self.attrs.iter())
    }

    pub fn attr(&self, name: &str) -> Option<&'static Attr> {
        self.all_attrs().find(|a| a.name == name)
    }
}

/// A value as the provider sees it in a plan: known JSON, or unknown until apply.
pub type Planned = std::collections::BTreeMap<String, Option<Json>>;

/// A problem with one attribute's value (or the object as a whole when `attr` is `None`).
#[derive(Debug, PartialEq)]
pub struct Problem {
    pub attr: Option<&'static str>,
    pub summary: String,
    pub detail: String,
}

fn problem(attr: &'static str, summary: impl Into<String>, detail: impl Into<String>) -> Problem {
    Problem {
        attr: Some(attr),
        summary: summary.into(),
        detail: detail.into(),
    }
}

fn whole(summary: impl Into<String>, detail: impl Into<String>) -> Problem {
    Problem {
        attr: None,
        summary: summary.into(),
        detail: detail.into(),
    }
}

const MAX_STRING: usize = 4096;
const MAX_CONTENT: usize = 1 << 20;

/// Checks the known values of a configuration or plan. Unknown values are checked at apply.
pub fn check_values(kind: &Kind, values: &Planned) -> Vec<Problem> {
    let mut out = Vec::new();
    for attr in kind.all_attrs() {
        let Some(Some(v)) = values.get(attr.name) else {
            continue;
        };
        if v.is_null() {
            continue;
        }
        if let Err(p) = check_type(attr, v) {
            out.push(p);
            continue;
        }
        if let Err(p) = check_value(kind, attr, v) {
            out.push(p);
        }
    }
    out
}

/// The JSON value has the attribute's type.
pub fn check_type(attr: &Attr, v: &Json) -> Result<(), Problem> {
    let ok = match attr.ty {
        Str => v.is_string(),
        Int => v.as_i64().is_some(),
        Bool => v.is_boolean(),
        Tags => v
            .as_object()
            .is_some_and(|m| m.values().all(|x| x.is_string())),
        StrSet => v
            .as_array()
            .is_some_and(|l| l.iter().all(|x| x.is_string())),
    };
    if ok || v.is_null() {
        Ok(())
    } else {
        Err(problem(
            attr.name,
            format!("{} has the wrong type", attr.name),
            format!("expected {:?}, got {v}", attr.ty),
        ))
    }
}

fn check_value(kind: &Kind, attr: &Attr, v: &Json) -> Result<(), Problem> {
    let name = attr.name;
    if let Some(s) = v.as_str() {
        let max = if name == "content" {
            MAX_CONTENT
        } else {
            MAX_STRING
        };
        if s.len() > max {
            return Err(problem(
                name,
                format!("{name} is too long"),
                format!("{} bytes; the limit is {max}", s.len()),
            ));
        }
    }
    match (kind.name, name) {
        (_, "cidr_block") => {
            let (_, prefix) = parse_cidr(v.as_str().unwrap_or_default())
                .map_err(|d| problem(name, "invalid CIDR block", d))?;
            if !(16..=28).contains(&prefix) {
                return Err(problem(
                    name,
                    "invalid CIDR block",
                    format!("the netmask must be between /16 and /28, got /{prefix}"),
                ));
            }
        }
        (
            _,
            "identifier"
            | "db_instance_identifier"
            | "final_snapshot_identifier"
            | "db_snapshot_identifier",
        ) => {
            let max = if name == "identifier" || name == "db_instance_identifier" {
                63
            } else {
                255
            };
            check_rds_identifier(v.as_str().unwrap_or_default(), max)
                .map_err(|d| problem(name, format!("invalid {name}"), d))?;
        }
        ("aws_s3_bucket" | "aws_s3_object", "bucket") => {
            check_bucket_name(v.as_str().unwrap_or_default())
                .map_err(|d| problem(name, "invalid bucket name", d))?;
        }
        ("aws_s3_object", "key") => {
            let key = v.as_str().unwrap_or_default();
            if key.is_empty() || encode_id(&format!("b/{key}")).len() > MAX_ENCODED_ID - 64 {
                return Err(problem(name, "invalid key", "the key must be 1 to about 60 characters (shorter with non-ASCII bytes) in the test cloud"));
            }
        }
        ("aws_lb", "name") => check_name(v.as_str().unwrap_or_default(), 32, false)
            .map_err(|d| problem(name, "invalid name", d))?,
        ("aws_ecs_cluster", "name") => check_name(v.as_str().unwrap_or_default(), 255, true)
            .map_err(|d| problem(name, "invalid name", d))?,
        ("aws_lb", "load_balancer_type")
            if !["application", "network", "gateway"].contains(&v.as_str().unwrap_or_default()) =>
        {
            return Err(problem(
                name,
                "invalid load_balancer_type",
                "one of application, network, gateway",
            ));
        }
        (_, "ami") => check_prefixed(v, "ami-").map_err(|d| problem(name, "invalid ami", d))?,
        (_, "vpc_id") => {
            check_prefixed(v, "vpc-").map_err(|d| problem(name, "invalid vpc_id", d))?
        }
        (_, "subnet_id") => {
            check_prefixed(v, "subnet-").map_err(|d| problem(name, "invalid subnet_id", d))?
        }
        (_, "subnets") => {
            for s in v.as_array().into_iter().flatten() {
                check_prefixed(s, "subnet-").map_err(|d| problem(name, "invalid subnets", d))?;
            }
        }
        (_, "instance_type" | "instance_class" | "engine" | "username") => {
            let s = v.as_str().unwrap_or_default();
            if s.is_empty() || s.len() > 64 {
                return Err(problem(
                    name,
                    format!("invalid {name}"),
                    "1 to 64 characters",
                ));
            }
        }
        (_, "backup_retention_period") => check_range(v, 0, 35)
            .map_err(|d| problem(name, "invalid backup_retention_period", d))?,
        (_, "allocated_storage") => {
            check_range(v, 20, 65536).map_err(|d| problem(name, "invalid allocated_storage", d))?
        }
        (_, "tags") => {
            let tags = v.as_object().map(|m| m.len()).unwrap_or(0);
            if tags > 50 {
                return Err(problem(
                    name,
                    "too many tags",
                    format!("{tags} tags; the limit is 50"),
                ));
            }
            for (k, val) in v.as_object().into_iter().flatten() {
                let val = val.as_str().unwrap_or_default();
                if k.is_empty() || k.len() > 128 || val.len() > 256 {
                    return Err(problem(
                        name,
                        "invalid tag",
                        "keys are 1 to 128 characters, values at most 256",
                    ));
                }
            }
        }
        _ => {}
    }
    Ok(())
}

fn check_prefixed(v: &Json, prefix: &str) -> Result<(), String> {
    let s = v.as_str().unwrap_or_default();
    let rest = s
        .strip_prefix(prefix)
        .ok_or_else(|| format!("{s:?} does not start with {prefix:?}"))?;
    if rest.is_empty() || rest.len() > 32 || !rest.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(format!(
            "{s:?} is not {prefix} followed by 1 to 32 letters or digits"
        ));
    }
    Ok(())
}

fn check_range(v: &Json, min: i64, max: i64) -> Result<(), String> {
    match v.as_i64() {
        Some(n) if (min..=max).contains(&n) => Ok(()),
        _ => Err(format!("must be between {min} and {max}, got {v}")),
    }
}

/// `a.b.c.d/n`, with the address the network's first (AWS refuses host bits).
pub fn parse_cidr(s: &str) -> Result<(u32, u32), String> {
    let (addr, prefix) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?} is not ADDRESS/PREFIX"))?;
    let addr: Ipv4Addr = addr
        .parse()
        .map_err(|_| format!("{s:?}: {addr:?} is not an IPv4 address"))?;
    let prefix: u32 = prefix
        .parse()
        .ok()
        .filter(|p| *p <= 32)
        .ok_or_else(|| format!("{s:?}: the prefix must be 0 to 32"))?;
    let addr = u32::from(addr);
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    };
    if addr & !mask != 0 {
        return Err(format!(
            "{s:?} has host bits set; the network is {}/{prefix}",
            Ipv4Addr::from(addr & mask)
        ));
    }
    Ok((addr, prefix))
}

fn cidr_within(inner: &str, outer: &str) -> bool {
    match (parse_cidr(inner), parse_cidr(outer)) {
        (Ok((ia, ip)), Ok((oa, op))) => {
            let mask = if op == 0 { 0 } else { u32::MAX << (32 - op) };
            ip >= op && ia & mask == oa
        }
        _ => false,
    }
}

fn check_rds_identifier(s: &str, max: usize) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= max
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.ends_with('-')
        && !s.contains("--");
    if ok {
        Ok(())
    } else {
        Err(format!("{s:?}: 1 to {max} lowercase letters, digits and single hyphens, starting with a letter"))
    }
}

fn check_bucket_name(s: &str) -> Result<(), String> {
    let ok = (3..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?}: 3 to 63 lowercase letters, digits, dots and hyphens"
        ))
    }
}

fn check_name(s: &str, max: usize, underscore: bool) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || (underscore && b == b'_'))
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!("{s:?}: 1 to {max} letters, digits and hyphens"))
    }
}

fn hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    // The ids only need to differ; should the system's source fail, the clock still varies.
    if getrandom::fill(&mut buf).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (nanos >> (8 * (i % 16))) as u8;
        }
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

fn s<'a>(obj: &'a Object, name: &str) -> &'a str {
    obj.get(name).and_then(Json::as_str).unwrap_or_default()
}

fn b(obj: &Object, name: &str) -> bool {
    obj.get(name).and_then(Json::as_bool).unwrap_or(false)
}

/// Creates the object described by `planned` (every non-computed value known) and returns it
/// as stored. Checks what only the cloud knows: references exist, names are free.
pub fn create(
    cloud: &Cloud,
    region: &str,
    kind: &Kind,
    planned: &Object,
) -> Result<Object, Problem> {
    let mut obj = planned.clone();
    let arn = |service: &str, rest: &str| format!("arn:aws:{service}:{region}:{ACCOUNT}:{rest}");
    let get = |k: &str, id: &str| {
        cloud
            .get(k, id)
            .map_err(|e| whole("cannot read the cloud", e))
    };
    let id = match kind.name {
        "aws_vpc" => format!("vpc-{}", &hex(9)[..17]),
        "aws_subnet" => {
            let vpc_id = s(planned, "vpc_id");
            let vpc = get("aws_vpc", vpc_id)?.ok_or_else(|| {
                problem(
                    "vpc_id",
                    "InvalidVpcID.NotFound",
                    format!("the VPC {vpc_id:?} does not exist"),
                )
            })?;
            if !cidr_within(s(planned, "cidr_block"), s(&vpc, "cidr_block")) {
                return Err(problem(
                    "cidr_block",
                    "InvalidSubnet.Range",
                    format!(
                        "{} is not within the VPC's {}",
                        s(planned, "cidr_block"),
                        s(&vpc, "cidr_block")
                    ),
                ));
            }
            if obj.get("availability_zone").is_none_or(Json::is_null) {
                obj.insert("availability_zone".into(), format!("{region}a").into());
            }
            format!("subnet-{}", &hex(9)[..17])
        }
        "aws_ecs_cluster" => arn("ecs", &format!("cluster/{}", s(planned, "name"))),
        "aws_lb" => {
            for subnet in planned
                .get("subnets")
                .and_then(Json::as_array)
                .into_iter()
                .flatten()
            {
                let subnet = subnet.as_str().unwrap_or_default();
                get("aws_subnet", subnet)?.ok_or_else(|| {
                    problem(
                        "subnets",
                        "InvalidSubnetID.NotFound",
                        format!("the subnet {subnet:?} does not exist"),
                    )
                })?;
            }
            let name = s(planned, "name");
            obj.insert(
                "dns_name".into(),
                format!("{name}-{}.{region}.elb.amazonaws.com", hex(4)).into(),
            );
            arn(
                "elasticloadbalancing",
                &format!("loadbalancer/app/{name}/{}", hex(8)),
            )
        }
        "aws_instance" => {
            let mut ip = "172.31.0.10".to_string();
            if let Some(subnet_id) = planned.get("subnet_id").and_then(Json::as_str) {
                let subnet = get("aws_subnet", subnet_id)?.ok_or_else(|| {
                    problem(
                        "subnet_id",
                        "InvalidSubnetID.NotFound",
                        format!("the subnet {subnet_id:?} does not exist"),
                    )
                })?;
                if let Ok((net, _)) = parse_cidr(s(&subnet, "cidr_block")) {
                    ip = Ipv4Addr::from(net + 4 + u32::from(hex(1).as_bytes()[0] % 8)).to_string();
                }
            }
            obj.insert("private_ip".into(), ip.into());
            format!("i-{}", &hex(9)[..17])
        }
        "aws_db_instance" => {
            let id = s(planned, "identifier").to_string();
            let host = format!("{id}.c{}.{region}.rds.amazonaws.com", hex(6));
            obj.insert("endpoint".into(), format!("{host}:5432").into());
            obj.insert("address".into(), host.into());
            id
        }
        "aws_db_snapshot" => {
            let db = s(planned, "db_instance_identifier");
            get("aws_db_instance", db)?.ok_or_else(|| {
                problem(
                    "db_instance_identifier",
                    "DBInstanceNotFound",
                    format!("the database {db:?} does not exist"),
                )
            })?;
            obj.insert("snapshot_type".into(), "manual".into());
            s(planned, "db_snapshot_identifier").to_string()
        }
        "aws_s3_bucket" => s(planned, "bucket").to_string(),
        "aws_s3_object" => {
            let bucket = s(planned, "bucket");
            get("aws_s3_bucket", bucket)?.ok_or_else(|| {
                problem(
                    "bucket",
                    "NoSuchBucket",
                    format!("the bucket {bucket:?} does not exist"),
                )
            })?;
            format!("{bucket}/{}", s(planned, "key"))
        }
        other => return Err(whole("unknown resource type", other.to_string())),
    };
    if cloud.exists(kind.name, &id) {
        return Err(whole(
            "AlreadyExists",
            format!("the cloud already holds {} {id:?}", kind.name),
        ));
    }
    let arn = match kind.name {
        "aws_vpc" => arn("ec2", &format!("vpc/{id}")),
        "aws_subnet" => arn("ec2", &format!("subnet/{id}")),
        "aws_instance" => arn("ec2", &format!("instance/{id}")),
        "aws_db_instance" => arn("rds", &format!("db:{id}")),
        "aws_db_snapshot" => arn("rds", &format!("snapshot:{id}")),
        "aws_s3_bucket" => format!("arn:aws:s3:::{id}"),
        "aws_s3_object" => format!("arn:aws:s3:::{id}"),
        _ => id.clone(),
    };
    obj.insert("id".into(), id.clone().into());
    obj.insert("arn".into(), arn.into());
    if kind.name == "aws_s3_object" {
        obj.insert("etag".into(), etag(s(planned, "content")).into());
    }
    put(cloud, kind.name, &id, &obj)?;
    if kind.name == "aws_db_instance" {
        sync_automated_backups(cloud, &obj)?;
    }
    Ok(obj)
}

fn put(cloud: &Cloud, kind: &str, id: &str, obj: &Object) -> Result<(), Problem> {
    cloud
        .put(kind, id, obj)
        .map_err(|e| whole("cannot write to the cloud", e))
}

fn etag(content: &str) -> String {
    use md5::Digest;
    hex_of(&md5::Md5::digest(content.as_bytes()))
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A database's automated backups exist while its retention period is above zero.
fn sync_automated_backups(cloud: &Cloud, db: &Object) -> Result<(), Problem> {
    let id = s(db, "id");
    let retention = db
        .get("backup_retention_period")
        .and_then(Json::as_i64)
        .unwrap_or(0);
    if retention > 0 {
        let record = json!({
            "id": id,
            "db_instance_identifier": id,
            "db_instance_arn": s(db, "arn"),
            "backup_retention_period": retention,
            "status": "active",
        });
        put(
            cloud,
            AUTOMATED_BACKUP,
            id,
            record.as_object().expect("an object"),
        )
    } else {
        cloud
            .delete(AUTOMATED_BACKUP, id)
            .map(|_| ())
            .map_err(|e| whole("cannot write to the cloud", e))
    }
}

/// Updates an object in place to `planned` (computed values carried over from the prior state).
pub fn update(cloud: &Cloud, kind: &Kind, planned: &Object) -> Result<Object, Problem> {
    let id = s(planned, "id").to_string();
    let current = cloud
        .get(kind.name, &id)
        .map_err(|e| whole("cannot read the cloud", e))?;
    if current.is_none() {
        return Err(whole(
            "NotFound",
            format!(
                "the cloud no longer holds {} {id:?} (deleted outside Terraform?)",
                kind.name
            ),
        ));
    }
    let mut obj = planned.clone();
    if kind.name == "aws_s3_object" {
        obj.insert("etag".into(), etag(s(planned, "content")).into());
    }
    put(cloud, kind.name, &id, &obj)?;
    if kind.name == "aws_db_instance" {
        sync_automated_backups(cloud, &obj)?;
    }
    Ok(obj)
}

/// Deletes an object, as AWS would: protections are read from the cloud (what is true now),
/// the delete parameters from Terraform's state (they are arguments of the delete call).
pub fn delete(cloud: &Cloud, kind: &Kind, state: &Object) -> Result<(), Problem> {
    let id = s(state, "id");
    let read = |k: &str, id: &str| {
        cloud
            .get(k, id)
            .map_err(|e| whole("cannot read the cloud", e))
    };
    let list = |k: &str| cloud.list(k).map_err(|e| whole("cannot read the cloud", e));
    let Some(current) = read(kind.name, id)? else {
        return Ok(()); // already gone: deleting is done
    };
    match kind.name {
        "aws_vpc" => {
            let subnets = list("aws_subnet")?
                .into_iter()
                .filter(|o| s(o, "vpc_id") == id)
                .count();
            if subnets > 0 {
                return Err(whole(
                    "DependencyViolation",
                    format!("the VPC {id} has {subnets} subnet(s) and cannot be deleted"),
                ));
            }
        }
        "aws_subnet" => {
            let used = list("aws_instance")?
                .into_iter()
                .filter(|o| s(o, "subnet_id") == id)
                .count();
            if used > 0 {
                return Err(whole(
                    "DependencyViolation",
                    format!("the subnet {id} has {used} instance(s) and cannot be deleted"),
                ));
            }
        }
        "aws_lb" if b(&current, "enable_deletion_protection") => {
            return Err(whole(
                "OperationNotPermitted: Load balancer is protected from deletion",
                format!("{id} has enable_deletion_protection = true; turn it off first"),
            ));
        }
        "aws_instance" if b(&current, "disable_api_termination") => {
            return Err(whole(
                "OperationNotPermitted: The instance may not be terminated",
                format!("{id} has disable_api_termination = true; turn it off first"),
            ));
        }
        "aws_db_instance" => {
            if b(&current, "deletion_protection") {
                return Err(whole(
                    "InvalidParameterCombination: Cannot delete protected DB Instance, please disable deletion protection and try again",
                    format!("the database {id} has deletion_protection = true"),
                ));
            }
            if !b(state, "skip_final_snapshot") {
                let snap = s(state, "final_snapshot_identifier");
                if snap.is_empty() {
                    return Err(problem(
                        "final_snapshot_identifier",
                        "final_snapshot_identifier is required when skip_final_snapshot is false",
                        format!("deleting the database {id} must leave a final snapshot, and none is named"),
                    ));
                }
                if cloud.exists("aws_db_snapshot", snap) {
                    return Err(whole(
                        "DBSnapshotAlreadyExists",
                        format!("a snapshot named {snap:?} already exists"),
                    ));
                }
                let record = json!({
                    "id": snap,
                    "arn": format!("arn:aws:rds:{}:{ACCOUNT}:snapshot:{snap}", region_of(s(&current, "arn"))),
                    "db_instance_identifier": id,
                    "db_snapshot_identifier": snap,
                    "snapshot_type": "manual",
                    "tags": Json::Null,
                });
                put(
                    cloud,
                    "aws_db_snapshot",
                    snap,
                    record.as_object().expect("an object"),
                )?;
            }
            // AWS's default (and the provider's): automated backups go with the instance.
            let delete_backups = state
                .get("delete_automated_backups")
                .and_then(Json::as_bool)
                .unwrap_or(true);
            if let Some(mut backup) = read(AUTOMATED_BACKUP, id)? {
                if delete_backups {
                    cloud
                        .delete(AUTOMATED_BACKUP, id)
                        .map_err(|e| whole("cannot write to the cloud", e))?;
                } else {
                    backup.insert("status".into(), "retained".into());
                    put(cloud, AUTOMATED_BACKUP, id, &backup)?;
                }
            }
        }
        "aws_s3_bucket" => {
            let objects: Vec<Object> = list("aws_s3_object")?
                .into_iter()
                .filter(|o| s(o, "bucket") == id)
                .collect();
            if !objects.is_empty() && !b(state, "force_destroy") {
                return Err(whole(
                    "BucketNotEmpty: The bucket you tried to delete is not empty",
                    format!(
                        "{id} holds {} object(s); force_destroy = true deletes them with it",
                        objects.len()
                    ),
                ));
            }
            for o in objects {
                cloud
                    .delete("aws_s3_object", s(&o, "id"))
                    .map_err(|e| whole("cannot write to the cloud", e))?;
            }
        }
        _ => {}
    }
    cloud
        .delete(kind.name, id)
        .map_err(|e| whole("cannot write to the cloud", e))?;
    Ok(())
}

fn region_of(arn: &str) -> &str {
    arn.split(':').nth(3).unwrap_or("us-east-1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_are_checked() {
        assert_eq!(parse_cidr("10.0.0.0/16"), Ok((0x0a00_0000, 16)));
        assert!(parse_cidr("10.0.0.1/16").unwrap_err().contains("host bits"));
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("300.0.0.0/16").is_err());
        assert!(parse_cidr("garbage").is_err());
        assert!(cidr_within("10.0.1.0/24", "10.0.0.0/16"));
        assert!(!cidr_within("10.1.1.0/24", "10.0.0.0/16"));
        assert!(!cidr_within("10.0.0.0/8", "10.0.0.0/16"));
    }

    #[test]
    fn hostile_values_are_problems_not_panics() {
        let vpc = Kind::find("aws_vpc").unwrap();
        let mut v = Planned::new();
        v.insert("cidr_block".into(), Some("10.0.0.0/8".into()));
        v.insert("tags".into(), Some(json!({"k": "x".repeat(5000)})));
        let problems = check_values(vpc, &v);
        assert_eq!(problems.len(), 2, "{problems:?}");
        let db = Kind::find("aws_db_instance").unwrap();
        let mut v = Planned::new();
        v.insert("identifier".into(), Some("Prod_DB".into()));
        v.insert("backup_retention_period".into(), Some(json!(99)));
        v.insert("deletion_protection".into(), Some("yes".into()));
        v.insert("engine".into(), None);
        assert_eq!(check_values(db, &v).len(), 3);
    }
}
