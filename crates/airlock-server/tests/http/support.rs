//! The harness: the real router on a real SQLite store in a temp dir, tokens minted through
//! the store, requests driven with `tower::ServiceExt::oneshot`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use airlock_core::Role;
use airlock_server::{router, AppState, ServerConfig};
use airlock_store::{now_ms, NewAudit, NewToken, NewUser, SqliteStore, StackSettings, Store};
use axum::body::Body;
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::Router;
use base64::Engine;
use http_body_util::BodyExt;
use md5::{Digest, Md5};
use serde_json::{json, Value};
use tower::ServiceExt;

/// A minted token: its public id and its secret.
#[derive(Clone)]
pub struct Tok {
    pub id: String,
    pub secret: String,
}

/// One server, in process.
pub struct Server {
    _dir: Arc<tempfile::TempDir>,
    pub store: Arc<dyn Store>,
    app: Router,
    /// An unscoped admin token.
    pub admin: Tok,
    /// The scheme browsers reach the server by (`ServerConfig::scheme`), for their `Origin`.
    pub scheme: &'static str,
}

/// A response, fully read.
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("response is not JSON ({e}): {}", self.text()))
    }

    /// `error.message` of a JSON error body.
    pub fn message(&self) -> String {
        let v = self.json();
        v["error"]["message"]
            .as_str()
            .unwrap_or_else(|| panic!("no error.message in {v}"))
            .to_owned()
    }

    /// Asserts the status, showing the body when it differs.
    #[track_caller]
    pub fn expect(&self, status: u16) -> &Resp {
        assert_eq!(
            self.status.as_u16(),
            status,
            "unexpected status; body: {}",
            self.text()
        );
        self
    }
}

impl std::fmt::Debug for Resp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.text())
    }
}

/// How a request authenticates.
#[derive(Clone, Copy)]
pub enum Auth<'a> {
    None,
    Bearer(&'a str),
    /// Basic with this username and the token as password.
    Basic(&'a str, &'a str),
    /// This exact `Authorization` header value.
    Raw(&'a str),
}

impl Server {
    pub fn new() -> Server {
        Server::with_config(ServerConfig::default())
    }

    pub fn with_config(config: ServerConfig) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(&dir.path().join("airlock.db")).expect("open sqlite"));
        let scheme = config.scheme();
        let app = router::build(AppState::new(Arc::clone(&store), config));
        let mut s = Server {
            _dir: Arc::new(dir),
            store,
            app,
            admin: Tok {
                id: String::new(),
                secret: String::new(),
            },
            scheme,
        };
        s.admin = s.token("root", Role::Admin, &[], None);
        s
    }

    /// Another server process on the same database (its own caches, the same tokens): what a
    /// second replica or a restarted server is.
    pub fn replica(&self) -> Server {
        Server {
            _dir: Arc::clone(&self._dir),
            store: Arc::clone(&self.store),
            app: router::build(AppState::new(
                Arc::clone(&self.store),
                ServerConfig::default(),
            )),
            admin: self.admin.clone(),
            scheme: ServerConfig::default().scheme(),
        }
    }

    /// Mints a token directly through the store; it is its own identity (user = its id).
    pub fn token(&self, name: &str, role: Role, stacks: &[&str], expires_at: Option<i64>) -> Tok {
        self.token_of(None, name, role, stacks, expires_at)
    }

    /// Creates a user directly through the store.
    pub fn user(&self, name: &str) {
        self.store
            .create_user(
                NewUser {
                    name: name.to_owned(),
                    created_by: "test".into(),
                    forge_logins: Vec::new(),
                },
                NewAudit::ok("test", "user.create", None, json!({"user": name})),
            )
            .expect("create user");
    }

    /// Mints a token of `user` (None: its own identity) directly through the store.
    pub fn token_of(
        &self,
        user: Option<&str>,
        name: &str,
        role: Role,
        stacks: &[&str],
        expires_at: Option<i64>,
    ) -> Tok {
        let g = airlock_server::tokens::generate();
        let rec = self
            .store
            .create_token(
                NewToken {
                    id: g.id.clone(),
                    secret_hash: g.hash,
                    name: name.to_owned(),
                    role,
                    stacks: stacks.iter().map(|s| (*s).to_owned()).collect(),
                    expires_at,
                    created_by: "test".into(),
                    run_id: None,
                    user: user.map_or_else(|| g.id.clone(), str::to_owned),
                    parent_id: None,
                    mint_limit: None,
                    read_stacks: Vec::new(),
                    minted_by: None,
                    job_ref: None,
                },
                NewAudit::ok("test", "token.create", None, json!({"token": g.id})),
            )
            .expect("create token");
        assert_eq!(rec.id, g.id);
        Tok {
            id: g.id,
            secret: g.secret,
        }
    }

    /// One token per role, unscoped.
    pub fn role_token(&self, role: Role) -> Tok {
        self.token(role.as_str(), role, &[], None)
    }

    pub fn stack(&self, name: &str, production: bool) {
        self.store
            .create_stack(
                name,
                production,
                StackSettings::defaults(production),
                NewAudit::ok("test", "stack.create", Some(name), json!({})),
            )
            .expect("create stack");
    }

    pub fn versions(&self, stack: &str) -> Vec<u64> {
        self.store
            .versions(stack)
            .expect("versions")
            .iter()
            .map(|v| v.serial)
            .collect()
    }

    pub async fn send(&self, req: Request<Body>) -> Resp {
        let resp = self.app.clone().oneshot(req).await.expect("infallible");
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.expect("body").to_bytes().to_vec();
        Resp {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    /// Sends `method uri` with `body` (no extra headers but auth).
    pub async fn call(
        &self,
        method: &str,
        uri: &str,
        auth: Auth<'_>,
        body: impl Into<Body>,
    ) -> Resp {
        self.send(request(method, uri, auth).body(body.into()).unwrap())
            .await
    }

    /// Sends a body the way Terraform does: with Content-Type and Content-MD5.
    pub async fn tf(&self, method: &str, uri: &str, token: &Tok, body: &[u8]) -> Resp {
        self.send(
            request(method, uri, Auth::Basic("terraform", &token.secret))
                .header(header::CONTENT_TYPE, "application/json")
                .header("Content-MD5", md5_b64(body))
                .body(Body::from(body.to_vec()))
                .unwrap(),
        )
        .await
    }

    pub async fn get_state(&self, stack: &str, token: &Tok) -> Resp {
        self.call(
            "GET",
            &format!("/state/{stack}"),
            Auth::Bearer(&token.secret),
            Body::empty(),
        )
        .await
    }

    pub async fn lock(&self, stack: &str, token: &Tok, id: &str, op: &str) -> Resp {
        self.tf(
            "LOCK",
            &format!("/state/{stack}"),
            token,
            lock_info(id, op).as_bytes(),
        )
        .await
    }

    pub async fn unlock(&self, stack: &str, token: &Tok, id: &str, op: &str) -> Resp {
        self.tf(
            "UNLOCK",
            &format!("/state/{stack}"),
            token,
            lock_info(id, op).as_bytes(),
        )
        .await
    }

    pub async fn write(&self, stack: &str, token: &Tok, id: Option<&str>, body: &[u8]) -> Resp {
        let uri = match id {
            Some(id) => format!("/state/{stack}?ID={id}"),
            None => format!("/state/{stack}"),
        };
        self.tf("POST", &uri, token, body).await
    }

    /// LOCK (apply), POST ?ID=, UNLOCK; returns the write's response.
    pub async fn locked_write(&self, stack: &str, token: &Tok, body: &[u8]) -> Resp {
        let id = fresh_id("apply");
        self.lock(stack, token, &id, "OperationTypeApply")
            .await
            .expect(200);
        let r = self.write(stack, token, Some(&id), body).await;
        self.unlock(stack, token, &id, "OperationTypeApply")
            .await
            .expect(200);
        r
    }

    /// `GET /api/v1/...` as admin, JSON.
    pub async fn api_get(&self, path: &str) -> Value {
        let r = self
            .call("GET", path, Auth::Bearer(&self.admin.secret), Body::empty())
            .await;
        r.expect(200);
        r.json()
    }

    /// Sends a JSON body to the API.
    pub async fn api(&self, method: &str, path: &str, token: &Tok, body: Value) -> Resp {
        self.send(
            request(method, path, Auth::Bearer(&token.secret))
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body.to_string()))
                .unwrap(),
        )
        .await
    }

    /// Every audit event, via `/api/v1/audit`.
    pub async fn audit(&self) -> Vec<Value> {
        let mut all = Vec::new();
        let mut after = 0;
        loop {
            let page = self
                .api_get(&format!("/api/v1/audit?after={after}&limit=1000"))
                .await;
            let events = page["events"].as_array().expect("events").clone();
            let Some(last) = events.last() else { break };
            after = last["seq"].as_i64().expect("seq");
            all.extend(events);
        }
        all
    }

    /// Audit events with outcome `denied`.
    pub async fn denials(&self) -> Vec<Value> {
        self.audit()
            .await
            .into_iter()
            .filter(|e| e["outcome"] == "denied")
            .collect()
    }
}

/// A lock ID unique within the test binary.
pub fn fresh_id(what: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!(
        "{what}-{}-{}",
        now_ms(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn request(method: &str, uri: &str, auth: Auth<'_>) -> axum::http::request::Builder {
    let b = Request::builder()
        .method(Method::from_bytes(method.as_bytes()).expect("method"))
        .uri(uri);
    match auth {
        Auth::None => b,
        Auth::Bearer(t) => b.header(header::AUTHORIZATION, format!("Bearer {t}")),
        Auth::Basic(user, t) => b.header(header::AUTHORIZATION, basic(user, t)),
        Auth::Raw(v) => b.header(header::AUTHORIZATION, v),
    }
}

pub fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

pub fn md5_b64(body: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(Md5::digest(body))
}

/// Lock info exactly as Terraform marshals it (key order of `statemgr.LockInfo`).
pub fn lock_info(id: &str, op: &str) -> String {
    format!(
        r#"{{"ID":"{id}","Operation":"{op}","Info":"","Who":"tester@host","Version":"1.11.4","Created":"2026-11-24T03:09:07.006165048Z","Path":""}}"#
    )
}

pub const LINEAGE: &str = "5b0c1a52-6c1e-4d4a-9d8f-0a1b2c3d4e5f";

/// A state v4 document with one instance per `(type, name)`, pretty-printed like Terraform.
/// A type may carry a module prefix: `module.net.aws_vpc`.
pub fn state(serial: u64, lineage: &str, resources: &[(&str, &str)]) -> Vec<u8> {
    let resources: Vec<Value> = resources
        .iter()
        .map(|(t, n)| {
            let (module, t) = t.rsplit_once('.').unwrap_or(("", t));
            let mut r = json!({
                "mode": "managed",
                "type": t,
                "name": n,
                "provider": "provider[\"registry.terraform.io/hashicorp/aws\"]",
                "instances": [{
                    "schema_version": 0,
                    "attributes": {"id": format!("{t}-{n}")},
                    "sensitive_attributes": []
                }]
            });
            if !module.is_empty() {
                r["module"] = json!(module);
            }
            r
        })
        .collect();
    let doc = json!({
        "version": 4,
        "terraform_version": "1.11.4",
        "serial": serial,
        "lineage": lineage,
        "outputs": {},
        "resources": resources,
        "check_results": null
    });
    let mut out = serde_json::to_vec_pretty(&doc).expect("json");
    out.push(b'\n');
    out
}

/// A small state with a few plain resources.
pub fn plain(serial: u64) -> Vec<u8> {
    state(
        serial,
        LINEAGE,
        &[("terraform_data", "a"), ("terraform_data", "b")],
    )
}

/// Asserts that no secret occurs in `haystack`.
#[track_caller]
pub fn assert_no_secret(haystack: &str, secrets: &[&Tok]) {
    for t in secrets {
        assert!(
            !haystack.contains(&t.secret),
            "a token secret leaked into: {haystack}"
        );
        // The hex part alone must not leak either.
        let hexpart = t
            .secret
            .strip_prefix(airlock_server::tokens::SECRET_PREFIX)
            .unwrap_or(&t.secret);
        assert!(
            !haystack.contains(hexpart),
            "a token secret leaked into: {haystack}"
        );
    }
}

/// A streaming body of these chunks, with no length known up front (what hyper sends as
/// `Transfer-Encoding: chunked`).
pub async fn chunked(chunks: &[&[u8]]) -> Body {
    let (mut tx, body) = http_body_util::channel::Channel::<
        axum::body::Bytes,
        std::convert::Infallible,
    >::new(chunks.len().max(1));
    for c in chunks {
        tx.send_data(axum::body::Bytes::copy_from_slice(c))
            .await
            .expect("channel open");
    }
    drop(tx);
    Body::new(body)
}
