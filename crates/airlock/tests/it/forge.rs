//! The forge stand-in (`tests/forge/standin.mjs`) and its self-tests: each proves the stand-in
//! refuses and records a request the real forge would refuse, so a test that finds no violation
//! means something. Other tests use [`ForgeStandIn`] from here.

#[path = "../forge/standin.rs"]
mod standin;

use std::io::{Read, Write};

pub use standin::{ForgeStandIn, Recorded};

const TOKEN: &str = "ghs_standin_selftest";
const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

/// Sends a request as the CI identity; returns (status, body).
fn call(
    f: &ForgeStandIn,
    method: &str,
    url: &str,
    body: Option<serde_json::Value>,
) -> (u16, String) {
    call_with(
        method,
        url,
        body,
        &[("Authorization", &format!("Bearer {}", f.token))],
    )
}

fn call_with(
    method: &str,
    url: &str,
    body: Option<serde_json::Value>,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let mut req = ureq::request(method, url).set("User-Agent", "airlock-selftest");
    for (k, v) in headers {
        req = req.set(k, v);
    }
    let result = match body {
        Some(b) => req.send_json(b),
        None => req.call(),
    };
    match result {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(s, r)) => (s, r.into_string().unwrap()),
        Err(e) => panic!("{method} {url}: {e}"),
    }
}

/// The last recorded request, which must have been refused with `status` and a violation
/// mentioning `needle`.
fn last_refused(f: &ForgeStandIn, status: u16, needle: &str) -> Recorded {
    let last = f.requests().pop().expect("a recorded request");
    assert_eq!(last.status, status, "{last:#?}");
    assert!(
        last.violations.iter().any(|v| v.contains(needle)),
        "expected a violation mentioning {needle:?}: {last:#?}"
    );
    last
}

#[test]
fn standin_accepts_a_valid_comment_and_status_and_keeps_them() {
    let f = ForgeStandIn::start(TOKEN);
    let gh = f.url_github();
    let (s, body) = call(
        &f,
        "POST",
        &format!("{gh}/repos/o/r/issues/7/comments"),
        Some(serde_json::json!({"body": "hello"})),
    );
    assert_eq!(s, 201, "{body}");
    let (s, _) = call(
        &f,
        "POST",
        &format!("{gh}/repos/o/r/statuses/{SHA}"),
        Some(
            serde_json::json!({"state": "pending", "context": "airlock/app", "description": "planning"}),
        ),
    );
    assert_eq!(s, 201);
    let (s, body) = call(
        &f,
        "GET",
        &format!("{gh}/repos/o/r/commits/{SHA}/status"),
        None,
    );
    assert_eq!(s, 200);
    let combined: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(combined["state"], "pending");
    let state = f.state();
    assert_eq!(state["github"]["comments"][0]["body"], "hello");
    assert_eq!(state["github"]["statuses"][0]["context"], "airlock/app");
    f.assert_no_violations();
}

#[test]
fn standin_refuses_an_unknown_operation() {
    let f = ForgeStandIn::start(TOKEN);
    let (s, _) = call(
        &f,
        "POST",
        &format!("{}/repos/o/r/issues/7/commentz", f.url_github()),
        Some(serde_json::json!({"body": "x"})),
    );
    assert_eq!(s, 404);
    last_refused(&f, 404, "no operation POST /repos/o/r/issues/7/commentz");
    // A known path with a method the description does not define for it.
    let (s, _) = call(
        &f,
        "PUT",
        &format!("{}/repos/o/r/issues/7/comments", f.url_github()),
        Some(serde_json::json!({"body": "x"})),
    );
    assert_eq!(s, 404);
    // A malformed path parameter (issue numbers are integers).
    let (s, _) = call(
        &f,
        "GET",
        &format!("{}/repos/o/r/issues/seven/comments", f.url_github()),
        None,
    );
    assert_eq!(s, 404);
    last_refused(&f, 404, "is not an integer");
    let (s, _) = call(
        &f,
        "GET",
        &format!("{}/projects/1/merge_requests/2/discussions", f.url_gitlab()),
        None,
    );
    assert_eq!(s, 404);
    last_refused(&f, 404, "no documented endpoint");
}

#[test]
fn standin_refuses_a_missing_required_body_property() {
    let f = ForgeStandIn::start(TOKEN);
    let (s, _) = call(
        &f,
        "POST",
        &format!("{}/repos/o/r/issues/7/comments", f.url_github()),
        Some(serde_json::json!({"text": "x"})),
    );
    assert_eq!(s, 422);
    last_refused(&f, 422, r#"required property "body" is missing"#);
    let (s, _) = call(
        &f,
        "POST",
        &format!("{}/repos/o/r/issues/7/comments", f.url_github()),
        None,
    );
    assert_eq!(s, 422);
    last_refused(&f, 422, "a JSON request body is required");
    let (s, _) = call(
        &f,
        "POST",
        &format!("{}/projects/12/merge_requests/3/notes", f.url_gitlab()),
        Some(serde_json::json!({"note": "x"})),
    );
    assert_eq!(s, 400);
    let last = last_refused(&f, 400, "body is missing");
    assert!(
        last.violations
            .iter()
            .any(|v| v.contains("parameter note is not documented")),
        "{last:#?}"
    );
    assert!(f.state()["github"]["comments"]
        .as_array()
        .unwrap()
        .is_empty());
    assert!(f.state()["gitlab"]["notes"].as_array().unwrap().is_empty());
}

#[test]
fn standin_refuses_a_state_outside_the_enum_and_wrong_types() {
    let f = ForgeStandIn::start(TOKEN);
    let gh = f.url_github();
    let (s, _) = call(
        &f,
        "POST",
        &format!("{gh}/repos/o/r/statuses/{SHA}"),
        Some(serde_json::json!({"state": "failed", "context": "c"})),
    );
    assert_eq!(s, 422);
    last_refused(&f, 422, r#"body.state: "failed" is not one of"#);
    let (s, _) = call(
        &f,
        "POST",
        &format!("{gh}/repos/o/r/statuses/{SHA}"),
        Some(serde_json::json!({"state": "success", "context": 5})),
    );
    assert_eq!(s, 422);
    last_refused(&f, 422, "body.context: expected string, got integer");
    let (s, _) = call(
        &f,
        "GET",
        &format!("{gh}/repos/o/r/issues/7/comments?per_page=ten"),
        None,
    );
    assert_eq!(s, 422);
    last_refused(&f, 422, "query parameter per_page");
    let (s, _) = call(
        &f,
        "GET",
        &format!("{gh}/repos/o/r/issues/7/comments?perpage=10"),
        None,
    );
    assert_eq!(s, 422);
    last_refused(&f, 422, "query parameter perpage is not defined");
    // A misspelt property, which GitHub would drop silently (the status would land under "default").
    let (s, _) = call(
        &f,
        "POST",
        &format!("{gh}/repos/o/r/statuses/{SHA}"),
        Some(serde_json::json!({"state": "success", "contxt": "airlock/app"})),
    );
    assert_eq!(s, 422);
    last_refused(&f, 422, r#"property "contxt" is not in the description"#);
    // `additionalProperties: false` where the description says so.
    let (s, _) = call(
        &f,
        "POST",
        &format!("{gh}/orgs/acme/code-security/configurations/17/attach"),
        Some(serde_json::json!({"scope": "all", "extra": true})),
    );
    assert_eq!(s, 422);
    last_refused(&f, 422, r#"property "extra" is not allowed"#);
    // GitLab's vocabulary is not GitHub's: `failure` is GitHub's, GitLab says `failed`.
    let (s, _) = call(
        &f,
        "POST",
        &format!("{}/projects/12/statuses/{SHA}", f.url_gitlab()),
        Some(serde_json::json!({"state": "failure", "name": "airlock/app"})),
    );
    assert_eq!(s, 400);
    last_refused(&f, 400, r#"parameter state: "failure" is not one of"#);
    assert!(f.state()["github"]["statuses"]
        .as_array()
        .unwrap()
        .is_empty());
}

#[test]
fn standin_refuses_a_wrong_or_missing_token() {
    let f = ForgeStandIn::start(TOKEN);
    let url = format!("{}/repos/o/r/issues/7/comments", f.url_github());
    let (s, body) = call_with(
        "GET",
        &url,
        None,
        &[("Authorization", "Bearer ghs_not_the_token")],
    );
    assert_eq!(s, 401);
    assert!(body.contains("Bad credentials"), "{body}");
    last_refused(&f, 401, "do not match");
    let (s, _) = call_with("GET", &url, None, &[]);
    assert_eq!(s, 401);
    last_refused(&f, 401, "no credentials");
    // Both header forms GitHub accepts work with the right token; GitLab's PRIVATE-TOKEN too.
    assert_eq!(
        call_with(
            "GET",
            &url,
            None,
            &[("Authorization", &format!("token {TOKEN}"))]
        )
        .0,
        200
    );
    let notes = format!("{}/projects/12/merge_requests/3/notes", f.url_gitlab());
    assert_eq!(
        call_with("GET", &notes, None, &[("PRIVATE-TOKEN", TOKEN)]).0,
        200
    );
    assert_eq!(
        call_with("GET", &notes, None, &[("PRIVATE-TOKEN", "glpat-wrong")]).0,
        401
    );
}

#[test]
fn standin_refuses_a_request_without_user_agent() {
    let f = ForgeStandIn::start(TOKEN);
    // ureq always sends a User-Agent, so this request is written by hand.
    let addr = f.base.trim_start_matches("http://");
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    write!(
        conn,
        "GET /github/repos/o/r/issues/7/comments HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(answer.contains("User-Agent"), "{answer}");
    last_refused(&f, 403, "no User-Agent");
}

#[test]
fn standin_refuses_an_oversized_comment_like_the_forges() {
    let f = ForgeStandIn::start(TOKEN);
    let url = format!("{}/repos/o/r/issues/7/comments", f.url_github());
    // Exactly GitHub's limit (in characters, not bytes) is accepted; one more is refused.
    let at_limit = "é".repeat(65_536);
    assert_eq!(
        call(
            &f,
            "POST",
            &url,
            Some(serde_json::json!({"body": at_limit}))
        )
        .0,
        201
    );
    let (s, body) = call(
        &f,
        "POST",
        &url,
        Some(serde_json::json!({"body": "x".repeat(65_537)})),
    );
    assert_eq!(s, 422);
    assert!(
        body.contains("body is too long (maximum is 65536 characters)"),
        "{body}"
    );
    last_refused(&f, 422, "too long");
    let notes = format!("{}/projects/12/merge_requests/3/notes", f.url_gitlab());
    let (s, body) = call(
        &f,
        "POST",
        &notes,
        Some(serde_json::json!({"body": "x".repeat(1_000_001)})),
    );
    assert_eq!(s, 400);
    assert!(body.contains("maximum is 1000000 characters"), "{body}");
    assert_eq!(f.state()["github"]["comments"].as_array().unwrap().len(), 1);
    assert!(f.state()["gitlab"]["notes"].as_array().unwrap().is_empty());
}

#[test]
fn standin_paginates_and_injects_failures() {
    let f = ForgeStandIn::start(TOKEN);
    let url = format!("{}/repos/o/r/issues/7/comments", f.url_github());
    for i in 0..3 {
        assert_eq!(
            call(
                &f,
                "POST",
                &url,
                Some(serde_json::json!({"body": format!("c{i}")}))
            )
            .0,
            201
        );
    }
    let resp = ureq::get(&format!("{url}?per_page=2"))
        .set("User-Agent", "t")
        .set("Authorization", &format!("Bearer {TOKEN}"))
        .call()
        .unwrap();
    let link = resp.header("link").unwrap().to_owned();
    assert!(link.contains("page=2>; rel=\"next\""), "{link}");
    f.fail_next("GET", r"/issues/7/comments$", 1, 502, &[]);
    assert_eq!(call(&f, "GET", &url, None).0, 502);
    assert_eq!(call(&f, "GET", &url, None).0, 200);
    f.fail_next(
        "POST",
        r"/issues/7/comments$",
        1,
        429,
        &[("Retry-After", "1")],
    );
    let resp = ureq::post(&url)
        .set("User-Agent", "t")
        .set("Authorization", &format!("Bearer {TOKEN}"))
        .send_json(serde_json::json!({"body": "x"}));
    match resp {
        Err(ureq::Error::Status(429, r)) => assert_eq!(r.header("retry-after"), Some("1")),
        other => panic!("expected an injected 429, got {other:?}"),
    }
    assert_eq!(f.state()["github"]["comments"].as_array().unwrap().len(), 3);
    f.assert_no_violations();
}

/// The stand-in accepts what GitHub documents as valid: the API description's own request
/// examples for every write airlock makes are served, with no violation (so its checks are not
/// stricter than GitHub where airlock relies on them).
#[test]
fn standin_accepts_the_descriptions_own_request_examples() {
    let f = ForgeStandIn::start(TOKEN);
    let modules = std::env::var("AIRLOCK_TEST_NODE_MODULES").unwrap();
    let spec_path = format!("{modules}/@octokit/openapi/generated/api.github.com.json");
    let spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&spec_path).unwrap()).unwrap();
    let resolve = |v: &serde_json::Value| -> serde_json::Value {
        let mut v = v.clone();
        while let Some(r) = v["$ref"].as_str() {
            v = spec.pointer(r.trim_start_matches('#')).unwrap().clone();
        }
        v
    };
    let (s, _) = call(
        &f,
        "POST",
        &format!("{}/repos/o/r/issues/7/comments", f.url_github()),
        Some(serde_json::json!({"body": "x"})),
    );
    assert_eq!(s, 201);
    let comment_id = f.state()["github"]["comments"][0]["id"].as_u64().unwrap();
    for (template, method, path, status) in [
        (
            "/repos/{owner}/{repo}/issues/{issue_number}/comments",
            "post",
            "/repos/o/r/issues/7/comments".to_owned(),
            201,
        ),
        (
            "/repos/{owner}/{repo}/issues/comments/{comment_id}",
            "patch",
            format!("/repos/o/r/issues/comments/{comment_id}"),
            200,
        ),
        (
            "/repos/{owner}/{repo}/statuses/{sha}",
            "post",
            format!("/repos/o/r/statuses/{SHA}"),
            201,
        ),
    ] {
        let body = resolve(&spec["paths"][template][method]["requestBody"]);
        let example =
            resolve(&body["content"]["application/json"]["examples"]["default"])["value"].clone();
        assert!(
            example.is_object(),
            "{template}: the description has a request example"
        );
        let (got, answer) = call(
            &f,
            &method.to_uppercase(),
            &format!("{}{path}", f.url_github()),
            Some(example),
        );
        assert_eq!(got, status, "{method} {template}: {answer}");
    }
    f.assert_no_violations();
}

/// Issues (`airlock ci drift`): what GitHub's description requires is required here too.
#[test]
fn standin_refuses_issues_github_would_refuse() {
    let f = ForgeStandIn::start(TOKEN);
    let issues = format!("{}/repos/o/r/issues", f.url_github());
    let (s, _) = call(
        &f,
        "POST",
        &issues,
        Some(serde_json::json!({"body": "no title"})),
    );
    assert_eq!(s, 422);
    last_refused(&f, 422, r#"required property "title" is missing"#);
    let (s, _) = call(
        &f,
        "PATCH",
        &format!("{issues}/1"),
        Some(serde_json::json!({"state": "gone"})),
    );
    assert_eq!(s, 422);
    let (s, _) = call(&f, "GET", &format!("{issues}?state=everything"), None);
    assert_eq!(s, 422);
    // A valid round trip is served and leaves no violation.
    let (s, body) = call(
        &f,
        "POST",
        &issues,
        Some(serde_json::json!({"title": "t", "body": "b"})),
    );
    assert_eq!(s, 201, "{body}");
    let number = serde_json::from_str::<serde_json::Value>(&body).unwrap()["number"].clone();
    let (s, _) = call(
        &f,
        "PATCH",
        &format!("{issues}/{number}"),
        Some(serde_json::json!({"state": "closed", "state_reason": "completed"})),
    );
    assert_eq!(s, 200);
    let (s, body) = call(
        &f,
        "GET",
        &format!("{issues}?state=closed&per_page=100&page=1"),
        None,
    );
    assert_eq!(s, 200, "{body}");
    assert!(body.contains("\"state\":\"closed\""), "{body}");
}

/// GitLab's issues endpoints (`airlock ci drift`): the documented parameters, types, enums,
/// Grape's "at least one of" and "mutually exclusive", the description and title limits, the
/// token, and 404 for a project the token is no member of. A documented filter the stand-in
/// does not implement is answered 501 and recorded, never silently ignored.
#[test]
fn standin_refuses_gitlab_issue_requests_gitlab_would_refuse() {
    let f = ForgeStandIn::start(TOKEN);
    f.gitlab_member_only_of(TOKEN, &["12"]);
    let gl = f.url_gitlab();
    let issues = format!("{gl}/projects/12/issues");
    let token = [("PRIVATE-TOKEN", TOKEN)];
    let gl_call = |method: &str, url: &str, body: Option<serde_json::Value>| {
        call_with(method, url, body, &token)
    };
    // Create: a title is required; GitHub's `body` is not GitLab's `description`.
    let (s, _) = gl_call(
        "POST",
        &issues,
        Some(serde_json::json!({"description": "d"})),
    );
    assert_eq!(s, 400);
    last_refused(&f, 400, "title is missing");
    let (s, _) = gl_call(
        "POST",
        &issues,
        Some(serde_json::json!({"title": "t", "body": "b"})),
    );
    assert_eq!(s, 400);
    last_refused(&f, 400, "parameter body is not documented");
    let (s, body) = gl_call(
        "POST",
        &issues,
        Some(serde_json::json!({"title": "t", "description": "x".repeat(1_048_577)})),
    );
    assert_eq!(s, 400);
    assert!(body.contains("maximum is 1048576 characters"), "{body}");
    let (s, body) = gl_call(
        "POST",
        &issues,
        Some(serde_json::json!({"title": "t".repeat(256)})),
    );
    assert_eq!(s, 400);
    assert!(body.contains("maximum is 255 characters"), "{body}");
    assert!(f.state()["gitlab"]["issues"].as_array().unwrap().is_empty());
    // A valid create, at the description's limit in characters (not bytes).
    let (s, body) = gl_call(
        "POST",
        &issues,
        Some(serde_json::json!({"title": "t", "description": "é".repeat(1_048_576)})),
    );
    assert_eq!(s, 201, "{}", &body[..200.min(body.len())]);
    let iid = serde_json::from_str::<serde_json::Value>(&body).unwrap()["iid"].clone();
    assert_eq!(iid, 1);
    // Update: at least one field; GitHub's `state` is not GitLab's `state_event`.
    let one = format!("{issues}/{iid}");
    let (s, _) = gl_call("PUT", &one, Some(serde_json::json!({})));
    assert_eq!(s, 400);
    last_refused(&f, 400, "at least one parameter must be provided");
    let (s, _) = gl_call("PUT", &one, Some(serde_json::json!({"state": "closed"})));
    assert_eq!(s, 400);
    last_refused(&f, 400, "parameter state is not documented");
    let (s, _) = gl_call(
        "PUT",
        &one,
        Some(serde_json::json!({"state_event": "closed"})),
    );
    assert_eq!(s, 400);
    last_refused(&f, 400, r#"parameter state_event: "closed" is not one of"#);
    let (s, _) = gl_call(
        "PUT",
        &format!("{issues}/one"),
        Some(serde_json::json!({"title": "x"})),
    );
    assert_eq!(s, 400);
    last_refused(&f, 400, "is not an integer");
    // List: types, enums (`open` is GitHub's), mutually exclusive filters.
    let (s, _) = gl_call("GET", &format!("{issues}?state=open"), None);
    assert_eq!(s, 400);
    last_refused(&f, 400, r#"parameter state: "open" is not one of"#);
    let (s, _) = gl_call("GET", &format!("{issues}?author_id=me"), None);
    assert_eq!(s, 400);
    last_refused(&f, 400, r#"parameter author_id: "me" is not an integer"#);
    let (s, _) = gl_call(
        "GET",
        &format!("{issues}?author_id=1&author_username=bot"),
        None,
    );
    assert_eq!(s, 400);
    last_refused(&f, 400, "mutually exclusive");
    let (s, _) = gl_call("GET", &format!("{issues}?per_page=101"), None);
    assert_eq!(s, 400);
    last_refused(&f, 400, "above 100");
    let (s, _) = gl_call("GET", &format!("{issues}?creator=bot"), None);
    assert_eq!(s, 400);
    last_refused(&f, 400, "parameter creator is not documented");
    // A documented filter the stand-in does not implement: 501, recorded.
    let (s, _) = gl_call("GET", &format!("{issues}?labels=drift"), None);
    assert_eq!(s, 501);
    let last = f.requests().pop().unwrap();
    assert!(
        last.standin_errors.iter().any(|e| e.contains("labels")),
        "{last:#?}"
    );
    // Another project: 404 (the token is a member of project 12 only); no token or a wrong one: 401.
    let (s, body) = gl_call("GET", &format!("{gl}/projects/13/issues"), None);
    assert_eq!(
        (s, body.contains("404 Project Not Found")),
        (404, true),
        "{body}"
    );
    let (s, _) = gl_call(
        "POST",
        &format!("{gl}/projects/13/issues"),
        Some(serde_json::json!({"title": "t"})),
    );
    assert_eq!(s, 404);
    let (s, _) = call_with("GET", &issues, None, &[("PRIVATE-TOKEN", "glpat-wrong")]);
    assert_eq!(s, 401);
    let (s, _) = call_with("GET", &issues, None, &[]);
    assert_eq!(s, 401);
    assert_eq!(f.state()["gitlab"]["issues"].as_array().unwrap().len(), 1);

    // The round trip is served and recorded: filtered by author and state, closed, reopened.
    let (s, _) = gl_call(
        "PUT",
        &one,
        Some(serde_json::json!({"description": "cleared", "state_event": "close"})),
    );
    assert_eq!(s, 200);
    let open = format!("{issues}?author_id=41898282&state=opened&per_page=100&page=1");
    let (s, body) = gl_call("GET", &open, None);
    assert_eq!((s, body.as_str()), (200, "[]"));
    let (s, body) = gl_call(
        "GET",
        &format!("{issues}?author_id=41898282&state=closed"),
        None,
    );
    assert_eq!(s, 200);
    let list: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (list[0]["description"].as_str(), list[0]["state"].as_str()),
        (Some("cleared"), Some("closed"))
    );
    assert!(list[0]["web_url"]
        .as_str()
        .unwrap()
        .ends_with("/-/issues/1"));
    let (s, _) = gl_call("GET", &format!("{issues}?author_id=7&state=all"), None);
    assert_eq!(s, 200);
    let (s, _) = gl_call(
        "PUT",
        &one,
        Some(serde_json::json!({"state_event": "reopen"})),
    );
    assert_eq!(s, 200);
    let (_, body) = gl_call("GET", &open, None);
    assert!(body.contains("\"state\":\"opened\""), "{body}");
}
