//! The Terraform side: the provider and one generic resource driven by the `kinds` table,
//! on `tf-provider`'s plugin-protocol-6 server.

use crate::cloud::{Cloud, Object};
use crate::kinds::{self, Kind, Mode, Planned, Problem, Ty, KINDS};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};
use tf_provider::schema::{
    Attribute, AttributeConstraint, AttributeType, Block, Description, Schema,
};
use tf_provider::value::{Value, ValueAny, ValueEmpty};
use tf_provider::{AttributePath, Diagnostics, DynamicResource, Provider, Resource};

/// The environment variable naming the cloud's directory when the provider block does not.
pub const DIR_ENV: &str = "AIRLOCK_TESTCLOUD_DIR";

struct Ctx {
    cloud: Cloud,
    region: String,
}

#[derive(Default)]
pub struct TestCloud {
    ctx: Arc<OnceLock<Ctx>>,
}

#[derive(Serialize, Deserialize)]
pub struct Config {
    #[serde(default)]
    data_dir: Value<String>,
    #[serde(default)]
    region: Value<String>,
}

fn string_attr(constraint: AttributeConstraint, description: &str) -> Attribute {
    Attribute {
        attr_type: AttributeType::String,
        description: Description::plain(description.to_string()),
        constraint,
        sensitive: false,
        deprecated: false,
    }
}

#[async_trait]
impl Provider for TestCloud {
    type Config<'a> = Config;
    type MetaState<'a> = ValueEmpty;

    fn schema(&self, _diags: &mut Diagnostics) -> Option<Schema> {
        Some(Schema {
            version: 0,
            block: Block {
                version: 0,
                attributes: [
                    (
                        "data_dir".to_string(),
                        string_attr(
                            AttributeConstraint::Optional,
                            "Directory holding the local cloud (default: $AIRLOCK_TESTCLOUD_DIR)",
                        ),
                    ),
                    (
                        "region".to_string(),
                        string_attr(
                            AttributeConstraint::Optional,
                            "Region named in ARNs (default us-east-1)",
                        ),
                    ),
                ]
                .into(),
                description: Description::plain(
                    "airlock's local test cloud (AWS-shaped, test-only)",
                ),
                ..Default::default()
            },
        })
    }

    async fn configure<'a>(
        &self,
        diags: &mut Diagnostics,
        _tf: String,
        config: Config,
    ) -> Option<()> {
        let dir = match config.data_dir {
            Value::Value(dir) if !dir.is_empty() => dir,
            Value::Unknown => {
                diags.error_short(
                    "data_dir must be known when the provider is configured",
                    AttributePath::new("data_dir"),
                );
                return None;
            }
            _ => match std::env::var(DIR_ENV) {
                Ok(dir) if !dir.is_empty() => dir,
                _ => {
                    diags.root_error(
                        "The local test cloud has no directory",
                        format!("set data_dir in the provider block, or the environment variable {DIR_ENV}"),
                    );
                    return None;
                }
            },
        };
        if let Err(e) = std::fs::create_dir_all(&dir) {
            diags.error(
                "Cannot create the cloud's directory",
                format!("{dir}: {e}"),
                AttributePath::new("data_dir"),
            );
            return None;
        }
        let region = config
            .region
            .as_option()
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| "us-east-1".into());
        if region.len() > 32
            || !region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            diags.error_short(
                "invalid region (lowercase letters, digits, hyphens)",
                AttributePath::new("region"),
            );
            return None;
        }
        // A provider process is configured once; a second call keeps the first cloud.
        let _ = self.ctx.set(Ctx {
            cloud: Cloud::new(dir),
            region,
        });
        Some(())
    }

    fn get_resources(
        &self,
        _diags: &mut Diagnostics,
    ) -> Option<HashMap<String, Box<dyn DynamicResource>>> {
        Some(
            KINDS
                .iter()
                .map(|kind| {
                    let res: Box<dyn DynamicResource> = Box::new(Res {
                        kind,
                        ctx: self.ctx.clone(),
                    });
                    // tf-provider names each type "aws_" + the name given here.
                    (kind.name.trim_start_matches("aws_").to_string(), res)
                })
                .collect(),
        )
    }
}

struct Res {
    kind: &'static Kind,
    ctx: Arc<OnceLock<Ctx>>,
}

type State = Value<BTreeMap<String, ValueAny>>;

fn attr_type(ty: Ty) -> AttributeType {
    match ty {
        Ty::Str => AttributeType::String,
        Ty::Int => AttributeType::Number,
        Ty::Bool => AttributeType::Bool,
        Ty::Tags => AttributeType::Map(Box::new(AttributeType::String)),
        Ty::StrSet => AttributeType::Set(Box::new(AttributeType::String)),
    }
}

/// A value in the plan as JSON; `None` when it (or anything in it) is unknown.
fn any_to_json(v: &ValueAny) -> Option<Json> {
    Some(match v {
        ValueAny::String(s) => Json::String(s.clone()),
        ValueAny::Number(n) => Json::from(*n),
        ValueAny::Bool(b) => Json::Bool(*b),
        ValueAny::List(l) => Json::Array(l.iter().map(any_to_json).collect::<Option<_>>()?),
        ValueAny::Map(m) => Json::Object(
            m.iter()
                .map(|(k, v)| Some((k.clone(), any_to_json(v)?)))
                .collect::<Option<_>>()?,
        ),
        ValueAny::Null => Json::Null,
        ValueAny::Unknown => return None,
    })
}

fn json_to_any(j: &Json) -> ValueAny {
    match j {
        Json::String(s) => ValueAny::String(s.clone()),
        Json::Number(n) => n.as_i64().map(ValueAny::Number).unwrap_or(ValueAny::Null),
        Json::Bool(b) => ValueAny::Bool(*b),
        Json::Array(l) => ValueAny::List(l.iter().map(json_to_any).collect()),
        Json::Object(m) => {
            ValueAny::Map(m.iter().map(|(k, v)| (k.clone(), json_to_any(v))).collect())
        }
        Json::Null => ValueAny::Null,
    }
}

fn report(diags: &mut Diagnostics, p: Problem) {
    match p.attr {
        Some(attr) => diags.error(p.summary, p.detail, AttributePath::new(attr)),
        None => diags.root_error(p.summary, p.detail),
    }
}

impl Res {
    fn ctx(&self, diags: &mut Diagnostics) -> Option<&Ctx> {
        let ctx = self.ctx.get();
        if ctx.is_none() {
            diags.root_error_short("The local test cloud provider is not configured");
        }
        ctx
    }

    fn planned(&self, map: &BTreeMap<String, ValueAny>) -> Planned {
        self.kind
            .all_attrs()
            .map(|a| {
                (
                    a.name.to_string(),
                    map.get(a.name).map_or(Some(Json::Null), any_to_json),
                )
            })
            .collect()
    }

    fn check(&self, diags: &mut Diagnostics, map: &BTreeMap<String, ValueAny>) -> Option<()> {
        let problems = kinds::check_values(self.kind, &self.planned(map));
        let ok = problems.is_empty();
        for p in problems {
            report(diags, p);
        }
        ok.then_some(())
    }

    /// A planned state as the object to store: computed values still unknown become null (the
    /// cloud fills them in); any other unknown value is an error.
    fn object(&self, diags: &mut Diagnostics, map: &BTreeMap<String, ValueAny>) -> Option<Object> {
        let mut obj = Object::new();
        for (name, v) in self.planned(map) {
            match v {
                Some(v) => {
                    obj.insert(name, v);
                }
                None if self.kind.attr(&name).is_some_and(|a| {
                    a.mode == Mode::Computed || a.mode == Mode::OptionalComputed
                }) =>
                {
                    obj.insert(name, Json::Null);
                }
                None => {
                    diags.root_error("Value unknown at apply", format!("{name} is still unknown"));
                    return None;
                }
            }
        }
        Some(obj)
    }

    /// The state Terraform sees for an object the cloud holds: every attribute of the schema,
    /// values of the wrong type (a bad hand edit) reported, not passed on.
    fn state(&self, diags: &mut Diagnostics, obj: &Object) -> Option<State> {
        let mut map = BTreeMap::new();
        let mut ok = true;
        for attr in self.kind.all_attrs() {
            let v = obj.get(attr.name).cloned().unwrap_or(Json::Null);
            if let Err(p) = kinds::check_type(attr, &v) {
                ok = false;
                diags.root_error(
                    format!(
                        "The cloud's {} {} has a bad value",
                        self.kind.name,
                        obj.get("id").and_then(Json::as_str).unwrap_or("?")
                    ),
                    format!("{}: {}", p.summary, p.detail),
                );
            }
            map.insert(attr.name.to_string(), json_to_any(&v));
        }
        ok.then_some(Value::Value(map))
    }
}

fn id_of(map: &BTreeMap<String, ValueAny>) -> String {
    match map.get("id") {
        Some(ValueAny::String(s)) => s.clone(),
        _ => String::new(),
    }
}

#[async_trait]
impl Resource for Res {
    type State<'a> = State;
    type PrivateState<'a> = ValueEmpty;
    type ProviderMetaState<'a> = ValueEmpty;

    fn schema(&self, _diags: &mut Diagnostics) -> Option<Schema> {
        let attributes = self
            .kind
            .all_attrs()
            .map(|a| {
                let constraint = match a.mode {
                    Mode::Required => AttributeConstraint::Required,
                    Mode::Optional => AttributeConstraint::Optional,
                    Mode::Default(_) | Mode::OptionalComputed => {
                        AttributeConstraint::OptionalComputed
                    }
                    Mode::Computed => AttributeConstraint::Computed,
                };
                let attr = Attribute {
                    attr_type: attr_type(a.ty),
                    description: Description::plain(a.name.to_string()),
                    constraint,
                    sensitive: a.sensitive,
                    deprecated: false,
                };
                (a.name.to_string(), attr)
            })
            .collect();
        Some(Schema {
            version: 0,
            block: Block {
                version: 0,
                attributes,
                description: Description::plain(self.kind.doc.to_string()),
                ..Default::default()
            },
        })
    }

    async fn validate<'a>(&self, diags: &mut Diagnostics, config: State) -> Option<()> {
        match config {
            Value::Value(map) => self.check(diags, &map),
            _ => Some(()),
        }
    }

    async fn read<'a>(
        &self,
        diags: &mut Diagnostics,
        state: State,
        _p: ValueEmpty,
        _m: ValueEmpty,
    ) -> Option<(State, ValueEmpty)> {
        let Value::Value(map) = state else {
            return Some((state, Value::Null));
        };
        let ctx = self.ctx(diags)?;
        match ctx.cloud.get(self.kind.name, &id_of(&map)) {
            Ok(Some(obj)) => Some((self.state(diags, &obj)?, Value::Null)),
            Ok(None) => Some((Value::Null, Value::Null)), // gone from the cloud
            Err(e) => {
                diags.root_error("Cannot read the cloud", e);
                None
            }
        }
    }

    async fn plan_create<'a>(
        &self,
        diags: &mut Diagnostics,
        proposed: State,
        _config: State,
        _m: ValueEmpty,
    ) -> Option<(State, ValueEmpty)> {
        let Value::Value(mut map) = proposed else {
            return Some((proposed, Value::Null));
        };
        self.check(diags, &map)?;
        for attr in self.kind.all_attrs() {
            let slot = map.entry(attr.name.to_string()).or_insert(ValueAny::Null);
            match attr.mode {
                Mode::Computed => *slot = ValueAny::Unknown,
                Mode::OptionalComputed if *slot == ValueAny::Null => *slot = ValueAny::Unknown,
                Mode::Default(d) if *slot == ValueAny::Null => *slot = json_to_any(&d.json()),
                _ => {}
            }
        }
        Some((Value::Value(map), Value::Null))
    }

    async fn plan_update<'a>(
        &self,
        diags: &mut Diagnostics,
        prior: State,
        proposed: State,
        config: State,
        _p: ValueEmpty,
        _m: ValueEmpty,
    ) -> Option<(State, ValueEmpty, Vec<AttributePath>)> {
        let (Value::Value(prior), Value::Value(mut map)) = (prior, proposed.clone()) else {
            return Some((proposed, Value::Null, Vec::new()));
        };
        let config = match config {
            Value::Value(config) => config,
            _ => BTreeMap::new(),
        };
        self.check(diags, &map)?;
        let mut replace = Vec::new();
        for attr in self.kind.all_attrs() {
            let configured = config.get(attr.name).is_some_and(|v| *v != ValueAny::Null);
            if let Mode::Default(d) = attr.mode {
                if !configured {
                    map.insert(attr.name.to_string(), json_to_any(&d.json()));
                }
            }
            if attr.force_new && map.get(attr.name) != prior.get(attr.name) {
                replace.push(AttributePath::new(attr.name));
            }
        }
        if self.kind.name == "aws_s3_object" && map.get("content") != prior.get("content") {
            map.insert("etag".into(), ValueAny::Unknown);
        }
        Some((Value::Value(map), Value::Null, replace))
    }

    async fn plan_destroy<'a>(
        &self,
        _diags: &mut Diagnostics,
        _prior: State,
        _p: ValueEmpty,
        _m: ValueEmpty,
    ) -> Option<ValueEmpty> {
        Some(Value::Null)
    }

    async fn create<'a>(
        &self,
        diags: &mut Diagnostics,
        planned: State,
        _config: State,
        _p: ValueEmpty,
        _m: ValueEmpty,
    ) -> Option<(State, ValueEmpty)> {
        let Value::Value(map) = planned else {
            return Some((planned, Value::Null));
        };
        let ctx = self.ctx(diags)?;
        let obj = self.object(diags, &map)?;
        match kinds::create(&ctx.cloud, &ctx.region, self.kind, &obj) {
            Ok(obj) => Some((self.state(diags, &obj)?, Value::Null)),
            Err(p) => {
                report(diags, p);
                None
            }
        }
    }

    async fn update<'a>(
        &self,
        diags: &mut Diagnostics,
        _prior: State,
        planned: State,
        _config: State,
        _p: ValueEmpty,
        _m: ValueEmpty,
    ) -> Option<(State, ValueEmpty)> {
        let Value::Value(map) = planned else {
            return Some((planned, Value::Null));
        };
        let ctx = self.ctx(diags)?;
        let obj = self.object(diags, &map)?;
        match kinds::update(&ctx.cloud, self.kind, &obj) {
            Ok(obj) => Some((self.state(diags, &obj)?, Value::Null)),
            Err(p) => {
                report(diags, p);
                None
            }
        }
    }

    async fn destroy<'a>(
        &self,
        diags: &mut Diagnostics,
        prior: State,
        _p: ValueEmpty,
        _m: ValueEmpty,
    ) -> Option<()> {
        let Value::Value(map) = prior else {
            return Some(());
        };
        let ctx = self.ctx(diags)?;
        let obj = self.object(diags, &map)?;
        match kinds::delete(&ctx.cloud, self.kind, &obj) {
            Ok(()) => Some(()),
            Err(p) => {
                report(diags, p);
                None
            }
        }
    }

    async fn import<'a>(&self, diags: &mut Diagnostics, id: String) -> Option<(State, ValueEmpty)> {
        let ctx = self.ctx(diags)?;
        match ctx.cloud.get(self.kind.name, &id) {
            Ok(Some(obj)) => Some((self.state(diags, &obj)?, Value::Null)),
            Ok(None) => {
                diags.root_error(
                    "Cannot import a missing object",
                    format!("the cloud holds no {} {id:?}", self.kind.name),
                );
                None
            }
            Err(e) => {
                diags.root_error("Cannot read the cloud", e);
                None
            }
        }
    }
}
