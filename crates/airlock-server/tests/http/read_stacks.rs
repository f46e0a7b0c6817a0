//! Read stacks (`terraform_remote_state`): a plan-phase token may read the state of named other
//! stacks, never wider than its minter, read-only and state-only. Attacks first: each test tries
//! to make a read stack reach further than `GET /state/{stack}`.

use airlock_core::Role;
use airlock_server::router::table;
use axum::body::Body;
use axum::http::header;
use serde_json::{json, Value};

use crate::console::put_run;
use crate::matrix::{concrete, STATE};
use crate::support::*;

const APP_PLAN_TOKEN: &str = "/api/v1/stacks/dev%2Fapp/plan-token";

fn tok(r: &Resp) -> Tok {
    let v = r.json();
    Tok {
        id: v["token_id"].as_str().expect("token_id").to_owned(),
        secret: v["secret"].as_str().expect("secret").to_owned(),
    }
}

/// `dev/app` (planned), `dev/net` (read) and `prod/net` (neither), each at serial 1.
async fn fixture() -> Server {
    let s = Server::new();
    for stack in ["dev/app", "dev/net", "prod/net"] {
        s.stack(stack, false);
        s.locked_write(stack, &s.admin, &plain(1)).await.expect(200);
    }
    s
}

async fn ask(s: &Server, minter: &Tok, read: Value) -> Resp {
    s.api(
        "POST",
        APP_PLAN_TOKEN,
        minter,
        json!({ "read_stacks": read }),
    )
    .await
}

#[tokio::test]
async fn read_stacks_are_never_wider_than_the_minter_and_a_refusal_mints_nothing() {
    let s = fixture().await;
    let dev_agent = s.token("dev-bot", Role::Agent, &["dev/*"], None);
    let app_agent = s.token("app-bot", Role::Agent, &["dev/app"], None);
    let tokens_before = s.store.token_count().unwrap();
    let refusals: [(&Tok, Value, u16, &str, &str); 10] = [
        // Scope: the minter cannot read it itself.
        (
            &app_agent,
            json!(["dev/net"]),
            403,
            "dev/net",
            "may not read it itself",
        ),
        (
            &dev_agent,
            json!(["prod/net"]),
            403,
            "prod/net",
            "may not read it itself",
        ),
        (
            &dev_agent,
            json!(["dev/net", "prod/net"]),
            403,
            "prod/net",
            "never wider",
        ),
        // Exact names only.
        (&dev_agent, json!(["dev/*"]), 400, "dev/*", "pattern"),
        (&dev_agent, json!(["*"]), 400, "\"*\"", "pattern"),
        (&dev_agent, json!(["Dev/Net"]), 400, "Dev/Net", "lowercase"),
        (
            &dev_agent,
            json!(["dev/app"]),
            400,
            "dev/app",
            "planned stack itself",
        ),
        // It must exist (never auto-created, never a typo read as empty).
        (
            &dev_agent,
            json!(["dev/nett"]),
            422,
            "dev/nett",
            "does not exist",
        ),
        // Bounded.
        (
            &s.admin,
            json!((0..33).map(|i| format!("dev/s{i}")).collect::<Vec<_>>()),
            400,
            "33 read stacks",
            "at most 32",
        ),
        (
            &dev_agent,
            json!(["a".repeat(100_000)]),
            400,
            "too long",
            "read stack",
        ),
    ];
    for (minter, read, status, names, why) in refusals {
        let r = ask(&s, minter, read.clone()).await;
        r.expect(status);
        let m = r.message();
        assert!(m.contains(names) && m.contains(why), "{read}: {m}");
        assert!(m.len() < 1000, "the refusal is bounded: {}", m.len());
    }
    // Malformed bodies.
    for body in [
        json!({"read_stacks": "dev/net"}),
        json!({"read_stack": ["dev/net"]}),
        json!({"read_stacks": [1]}),
        json!(["dev/net"]),
    ] {
        s.api("POST", APP_PLAN_TOKEN, &dev_agent, body)
            .await
            .expect(400);
    }
    assert_eq!(
        s.store.token_count().unwrap(),
        tokens_before,
        "nothing was minted"
    );
    let denied: Vec<Value> = s
        .denials()
        .await
        .into_iter()
        .filter(|e| e["action"] == "token.plan_phase")
        .collect();
    assert_eq!(denied.len(), 10, "every refusal is audited: {denied:?}");
    assert_eq!(denied[0]["stack"], "dev/net");
    assert_eq!(denied[1]["stack"], "prod/net");

    // Within the minter's reach: minted, each once, and audited with its read stacks.
    let r = ask(&s, &dev_agent, json!(["dev/net", "dev/net"])).await;
    r.expect(201);
    assert_eq!(r.json()["read_stacks"], json!(["dev/net"]));
    let phase = tok(&r);
    assert_eq!(
        s.store.token(&phase.id).unwrap().unwrap().read_stacks,
        ["dev/net"]
    );
    let minted = s
        .audit()
        .await
        .into_iter()
        .rfind(|e| e["action"] == "token.plan_phase" && e["outcome"] == "ok")
        .unwrap();
    assert_eq!(minted["detail"]["read_stacks"], json!(["dev/net"]));
    assert_eq!(minted["detail"]["token"], phase.id.as_str());
    // No body, `null` and `{}` still mint a plain plan-phase token.
    for body in [Value::Null, json!({})] {
        let r = s.api("POST", APP_PLAN_TOKEN, &dev_agent, body).await;
        r.expect(201);
        assert_eq!(r.json()["read_stacks"], json!([]));
    }
}

#[tokio::test]
async fn a_read_stack_admits_the_state_read_and_nothing_else() {
    let s = fixture().await;
    let agent = s.token("bot", Role::Agent, &["dev/*"], None);
    let r = ask(&s, &agent, json!(["dev/net"])).await;
    r.expect(201);
    let phase = tok(&r);
    put_run(
        &s,
        "run_net",
        "dev/net",
        1,
        "someone",
        &json!({"resource_changes": []}),
        &[],
    );

    // The one thing it may do: read dev/net's state, as Terraform does (Basic auth).
    let r = s
        .call(
            "GET",
            "/state/dev/net",
            Auth::Basic("airlock", &phase.secret),
            Body::empty(),
        )
        .await;
    r.expect(200);
    assert_eq!(r.body, plain(1));

    // Every other route about dev/net is refused: lock, write, unlock, runs, plan tokens,
    // grants, history, drift, identity tokens, settings...
    let mut n = 0;
    for row in table().routes() {
        let (method, route) = (row.method.as_str(), row.path);
        if !route.contains("stack}") || (method, route) == ("GET", STATE) {
            continue;
        }
        n += 1;
        let (path, body) = concrete(&s, method, route, "dev/net", 9000 + n);
        let req = request(method, &path, Auth::Basic("airlock", &phase.secret))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body))
            .unwrap();
        let r = s.send(req).await;
        assert_eq!(r.status, 403, "{method} {path}: {r:?}");
        assert!(
            r.message().starts_with("permission denied"),
            "{method} {path}: {r:?}"
        );
    }
    assert!(n >= 20, "the table's stack routes were tried: {n}");
    // The Terraform protocol by hand, each with a body Terraform would send.
    let id = fresh_id("remote");
    let r = s.lock("dev/net", &phase, &id, "OperationTypePlan").await;
    r.expect(403);
    assert!(
        r.message().contains("may only read dev/net's state"),
        "{r:?}"
    );
    s.write("dev/net", &phase, Some(&id), &plain(2))
        .await
        .expect(403);
    s.tf("PUT", "/state/dev/net", &phase, &plain(2))
        .await
        .expect(403);
    s.unlock("dev/net", &phase, &id, "OperationTypePlan")
        .await
        .expect(403);
    // A run of dev/net: not shown, not listed, not approved, withdrawn or applied.
    for (method, path) in [
        ("GET", "/api/v1/runs/run_net"),
        ("GET", "/api/v1/runs/run_net/log"),
        ("GET", "/api/v1/runs/run_net/artifacts/summary.md"),
        ("POST", "/api/v1/runs/run_net/approve"),
        ("POST", "/api/v1/runs/run_net/withdraw"),
        ("POST", "/api/v1/runs/run_net/apply"),
    ] {
        let r = s
            .call(method, path, Auth::Bearer(&phase.secret), b"{}".to_vec())
            .await;
        assert_eq!(r.status, 403, "{method} {path}: {r:?}");
    }
    let listed = s
        .call(
            "GET",
            "/api/v1/runs",
            Auth::Bearer(&phase.secret),
            Body::empty(),
        )
        .await;
    listed.expect(200);
    assert!(!listed.text().contains("run_net"), "{}", listed.text());
    let r = s
        .api(
            "POST",
            "/api/v1/verify",
            &phase,
            json!({"stack": "dev/net"}),
        )
        .await;
    assert_eq!(r.status, 403, "{r:?}");
    // A third stack it was not given.
    s.get_state("prod/net", &phase).await.expect(403);
    // Nothing changed on dev/net.
    assert_eq!(s.versions("dev/net"), [1]);
    assert!(s.store.current_lock("dev/net").unwrap().is_none());
    assert_eq!(
        s.store.run("run_net").unwrap().unwrap().status,
        airlock_store::RunStatus::NeedsApproval
    );
    // Its own stack's rights are unchanged.
    s.get_state("dev/app", &phase).await.expect(200);
    let id = fresh_id("plan");
    s.lock("dev/app", &phase, &id, "OperationTypePlan")
        .await
        .expect(200);
    s.unlock("dev/app", &phase, &id, "OperationTypePlan")
        .await
        .expect(200);
    // The minter is revoked: the read goes with it.
    s.api(
        "DELETE",
        &format!("/api/v1/tokens/{}", agent.id),
        &s.admin,
        Value::Null,
    )
    .await
    .expect(200);
    let r = s.get_state("dev/net", &phase).await;
    r.expect(401);
    assert!(r.message().contains("revoked"), "{r:?}");
}

#[tokio::test]
async fn a_run_records_only_its_own_plan_tokens_read_stacks() {
    let s = fixture().await;
    let agent = s.token("bot", Role::Agent, &["dev/*"], None);
    let other = s.token("other", Role::Agent, &["dev/*"], None);
    let theirs = tok(ask(&s, &other, json!(["dev/net"])).await.expect(201));
    let mine = tok(ask(&s, &agent, json!([])).await.expect(201));
    let r = s
        .api(
            "POST",
            "/api/v1/stacks/dev%2Fnet/plan-token",
            &agent,
            json!({"read_stacks": ["dev/app"]}),
        )
        .await;
    let for_net = tok(r.expect(201));
    // The attack: name another principal's phase token, one minted for another stack, or an
    // unknown one, to borrow (or dodge) a record. Refused before anything else is read.
    for named in [theirs.id.as_str(), for_net.id.as_str(), "tok_nonexistent"] {
        let r = s
            .api(
                "POST",
                "/api/v1/stacks/dev%2Fapp/runs",
                &agent,
                json!({"fingerprint": "0".repeat(64), "inputs": [], "terraform_version": "1.11.4",
                       "plan_token": named, "plan_b64": "AAAA", "plan_json_b64": "e30="}),
            )
            .await;
        r.expect(400);
        assert!(r.message().contains("plan_token"), "{named}: {r:?}");
    }
    // Its own plan token passes that check (and the upload goes on to the next one).
    let r = s
        .api(
            "POST",
            "/api/v1/stacks/dev%2Fapp/runs",
            &agent,
            json!({"fingerprint": "0".repeat(64), "inputs": [], "terraform_version": "1.11.4",
                   "plan_token": mine.id, "plan_b64": "AAAA", "plan_json_b64": "e30="}),
        )
        .await;
    r.expect(400);
    assert!(!r.message().contains("plan_token"), "{r:?}");
    assert!(s
        .store
        .runs_where(&Default::default(), 100)
        .unwrap()
        .is_empty());
}

/// The read stack's one request in other spellings: percent-encoded, doubled or trailing
/// slashes, dot segments, another case, `HEAD`, a query string, and the MCP tools that read
/// state history. Each is refused, or is that same read of the current state and nothing more.
#[tokio::test]
async fn a_read_stack_is_not_reached_by_another_spelling_of_its_path() {
    let s = fixture().await;
    let agent = s.token("bot", Role::Agent, &["dev/*"], None);
    let r = ask(&s, &agent, json!(["dev/net"])).await;
    r.expect(201);
    let phase = tok(&r);
    let basic = || Auth::Basic("airlock", &phase.secret);
    for path in [
        "/state/dev%2Fnet",
        "/state/dev%2fnet",
        "/state/dev/net/",
        "/state//dev/net",
        "/state/dev/./net",
        "/state/dev/../dev/net",
        "/state/Dev/net",
        "/state/dev/net%00",
    ] {
        let r = s.call("GET", path, basic(), Body::empty()).await;
        assert!(
            r.status == 400 || r.status == 403 || r.status == 404,
            "GET {path}: {r:?}"
        );
    }
    let r = s
        .call("HEAD", "/state/dev/net", basic(), Body::empty())
        .await;
    assert_ne!(r.status, 200, "HEAD: {r:?}");
    // A query string changes nothing: the current state, as the plain read.
    for path in ["/state/dev/net?ID=x", "/state/dev/net?serial=0&version=1"] {
        let r = s.call("GET", path, basic(), Body::empty()).await;
        r.expect(200);
        assert_eq!(r.body, plain(1), "GET {path}");
    }
    // MCP tools that read dev/net's history or versions go through their own routes.
    for (tool, args) in [
        ("state_history", json!({"stack": "dev/net"})),
        ("state_resources", json!({"stack": "dev/net", "version": 1})),
        (
            "state_diff",
            json!({"stack": "dev/net", "from": 0, "to": 1}),
        ),
        ("get_stack", json!({"stack": "dev/net"})),
    ] {
        let v = crate::mcp::call(&s, &phase, tool, args).await;
        let why = crate::mcp::tool_error(&v);
        assert!(why.contains("permission denied"), "{tool}: {why}");
    }
    assert_eq!(s.versions("dev/net"), [1]);
    assert!(s.store.current_lock("dev/net").unwrap().is_none());
}
