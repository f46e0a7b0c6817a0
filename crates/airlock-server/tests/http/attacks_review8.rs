//! Adversarial review "review8": the state firewall, tokens minted from tokens and the consoles,
//! attacked with a valid low-privilege credential (a stack-scoped admin is one too: its scope is
//! its privilege). Each test is one attack that succeeded on main and is refused since.

use airlock_core::Role;
use serde_json::json;

use crate::support::*;

/// A forge login decides approvals on every stack (the author of a change request may not
/// approve its run, and a login that belongs to no user blocks every approval), and is never
/// taken back. The attack: an admin of `dev/*` only gives `github:bob` (not yet mapped) to a
/// decoy user, so the change requests bob writes for prod resolve to the decoy, and bob
/// approves his own prod change; or gives an existing user a login that is not theirs.
#[tokio::test]
async fn a_stack_scoped_admin_cannot_give_forge_logins() {
    let s = Server::new();
    let dev_admin = s.token("dev-admin", Role::Admin, &["dev/*"], None);
    s.user("bob");
    let r = s
        .api(
            "POST",
            "/api/v1/users",
            &dev_admin,
            json!({"name": "decoy", "forge_logins": ["github:bob"]}),
        )
        .await;
    r.expect(403);
    assert!(r.message().contains("all stacks"), "{}", r.message());
    // A user without logins is what a scoped admin needs for its approver tokens.
    s.api(
        "POST",
        "/api/v1/users",
        &dev_admin,
        json!({"name": "decoy"}),
    )
    .await
    .expect(201);
    for user in ["decoy", "bob"] {
        s.api(
            "POST",
            &format!("/api/v1/users/{user}/forge-logins"),
            &dev_admin,
            json!({"login": "github:bob"}),
        )
        .await
        .expect(403);
    }
    assert_eq!(s.store.user_by_forge_login("github:bob").unwrap(), None);
    // The admin of all stacks still gives it to bob.
    s.api(
        "POST",
        "/api/v1/users/bob/forge-logins",
        &s.admin,
        json!({"login": "github:bob"}),
    )
    .await
    .expect(200);
    assert_eq!(
        s.store
            .user_by_forge_login("github:bob")
            .unwrap()
            .as_deref(),
        Some("bob")
    );
}

/// A plan-phase identity token (a JWT a cloud exchanges for credentials) is a token minted from
/// a token, and nothing revokes it: it may not outlive the token that asked for it. The attack:
/// an agent token that expires in two minutes (or a plan-phase token near its end) asks for one
/// and gets the full hour, so its cloud role stays reachable long after airlock refuses the
/// token. Expected: `exp` no later than the token's expiry; under a minute left, refused.
#[tokio::test]
async fn an_identity_token_expires_no_later_than_the_token_that_asked_for_it() {
    let s = Server::with_config(airlock_server::ServerConfig {
        public_url: Some("https://airlock.example".into()),
        ..airlock_server::ServerConfig::default()
    });
    s.stack("dev/app", false);
    let body = json!({"audience": "sts.amazonaws.com"});
    let uri = "/api/v1/stacks/dev%2Fapp/identity-token";
    let ends = airlock_store::now_ms() + 120_000;
    let agent = s.token("short-lived", Role::Agent, &["dev/*"], Some(ends));
    let r = s.api("POST", uri, &agent, body.clone()).await;
    r.expect(201);
    let exp_ms = r.json()["expires_at"].as_i64().expect("expires_at");
    assert!(
        exp_ms <= ends,
        "the identity token expires at {exp_ms}, {} s after the token that asked for it",
        (exp_ms - ends) / 1000
    );
    // Its plan-phase token ends with it too (clamped at mint), and so does what that asks for.
    let r = s
        .api(
            "POST",
            "/api/v1/stacks/dev%2Fapp/plan-token",
            &agent,
            json!(null),
        )
        .await;
    r.expect(201);
    let phase = Tok {
        id: r.json()["token_id"].as_str().unwrap().to_owned(),
        secret: r.json()["secret"].as_str().unwrap().to_owned(),
    };
    let r = s.api("POST", uri, &phase, body.clone()).await;
    r.expect(201);
    assert!(r.json()["expires_at"].as_i64().unwrap() <= ends);
    // Under a minute left: no identity token (the shortest one lives a minute).
    let dying = s.token(
        "dying",
        Role::Agent,
        &["dev/*"],
        Some(airlock_store::now_ms() + 30_000),
    );
    let r = s.api("POST", uri, &dying, body.clone()).await;
    r.expect(403);
    assert!(r.message().contains("expires"), "{}", r.message());
    // A token without an expiry still gets the hour it asks for.
    let lasting = s.token("lasting", Role::Agent, &["dev/*"], None);
    let r = s.api("POST", uri, &lasting, body).await;
    r.expect(201);
    assert!(r.json()["expires_at"].as_i64().unwrap() > airlock_store::now_ms() + 3_000_000);
}

/// A CI job's login token belongs to its trust (user = the trust's id, a user the trust
/// creates), so the trust's logins are counted, and end, by that user: the one-hour login
/// limit counts its parentless tokens, removing the trust revokes them. The attack: an admin
/// of `dev/*` only mints tokens for the user of a prod trust (its id is printed by every
/// `airlock oidc login`): they count against the prod trust's login limit (a thousand of them
/// and prod CI cannot log in for an hour), and carry the prod pipeline's identity.
/// Expected: `trust_` names, like `tok_` ones, are no user's to give or take.
#[tokio::test]
async fn a_user_cannot_take_the_name_of_a_trust() {
    let s = Server::new();
    let r = s
        .api(
            "POST",
            "/api/v1/oidc/trusts",
            &s.admin,
            json!({"forge": "github", "repository": "org/infra", "repository_id": "1001", "owner_id": "2002",
                   "git_ref": "refs/heads/main", "role": "ci", "stacks": ["prod/*"], "audience": "https://airlock.example"}),
        )
        .await;
    r.expect(201);
    let trust = r.json()["trust"]["id"].as_str().unwrap().to_owned();
    let dev_admin = s.token("dev-admin", Role::Admin, &["dev/*"], None);
    let r = s
        .api(
            "POST",
            "/api/v1/tokens",
            &dev_admin,
            json!({"name": "decoy", "role": "reader", "stacks": ["dev/*"], "user": trust}),
        )
        .await;
    r.expect(400);
    assert!(r.message().contains("trust"), "{}", r.message());
    for name in [trust.as_str(), "trust_0123456789abcdef"] {
        s.api("POST", "/api/v1/users", &dev_admin, json!({ "name": name }))
            .await
            .expect(400);
    }
}

/// What a browser sends on a cross-site `<form method="post" enctype="text/plain">` to the API
/// after its user once typed the token into the Basic-auth prompt a 401 raised (the browser
/// keeps it for the origin and sends it again by itself): the cached credential, the attacker's
/// `Origin` (or `null`) and `Sec-Fetch-Site: cross-site`, a body the form's one field spells as
/// JSON (`name` + `=` + `value`), or none at all (an approval needs no body).
fn cross_site_form(
    uri: &str,
    secret: &str,
    origin: Option<&str>,
    fetch_site: Option<&str>,
    body: &str,
) -> axum::http::Request<axum::body::Body> {
    let mut b = request("POST", uri, Auth::Basic("airlock", secret))
        .header(axum::http::header::CONTENT_TYPE, "text/plain")
        .header(axum::http::header::HOST, "airlock.example");
    if let Some(o) = origin {
        b = b.header(axum::http::header::ORIGIN, o);
    }
    if let Some(site) = fetch_site {
        b = b
            .header("sec-fetch-site", site)
            .header("sec-fetch-mode", "navigate");
    }
    b.body(axum::body::Body::from(body.to_owned())).unwrap()
}

/// The console refuses cross-site POSTs (CSRF token, `Origin`, `Sec-Fetch-Site`); the JSON API
/// behind it took them: a page on any site made a signed-in approver's browser create a removal
/// grant for a protected database (or approve a run: an empty body). Expected: a request a
/// browser marks as coming from another site changes nothing, whatever credential it carries;
/// requests without those headers (Terraform, the CLI, curl) and same-origin ones work.
#[tokio::test]
async fn a_cross_site_browser_post_to_the_api_changes_nothing() {
    let s = Server::new();
    s.stack("prod/db", true);
    let approver = s.role_token(Role::Approver);
    let uri = "/api/v1/stacks/prod%2Fdb/grants";
    // The form's field: name `{"addresses":["aws_db_instance.main"],"ttl":"1h","reason":"x`,
    // value `"}`; the browser joins them with `=`.
    let body = r#"{"addresses":["aws_db_instance.main"],"ttl":"1h","reason":"x="}"#;
    for (origin, site) in [
        (Some("https://evil.example"), Some("cross-site")),
        (Some("null"), Some("cross-site")),
        (Some("https://evil.airlock.example"), Some("same-site")),
        // A browser without Fetch Metadata still names the page's origin.
        (Some("https://evil.example"), None),
        (Some("null"), None),
        (None, Some("cross-site")),
    ] {
        let r = s
            .send(cross_site_form(uri, &approver.secret, origin, site, body))
            .await;
        assert_eq!(
            r.status, 403,
            "a cross-site POST (Origin {origin:?}, Sec-Fetch-Site {site:?}) was taken: {r:?}"
        );
        assert!(r.message().contains("cross-site"), "{}", r.message());
    }
    let grants = s.store.grants("prod/db").unwrap();
    assert!(grants.is_empty(), "a cross-site form made {grants:?}");
    // The same request from this origin's own page, or typed (no Origin), and from clients
    // that are not browsers, is taken.
    for (origin, site) in [
        (Some("http://airlock.example"), Some("same-origin")),
        (None, Some("none")),
        (None, None),
    ] {
        s.send(cross_site_form(uri, &approver.secret, origin, site, body))
            .await
            .expect(201);
    }
    assert_eq!(s.store.grants("prod/db").unwrap().len(), 3);
}

/// `auth::cross_site` compared only the host of `Origin` with `Host`: a page served over the
/// other scheme on the same host (`http://` beside an `https://` server, where a network
/// attacker writes the page) passed as this server's own, in a browser without Fetch Metadata.
/// Expected: an `Origin` is this server's only with its scheme, host and port: `--public-url`'s,
/// or the `Host` under the scheme the server is reached by (https with TLS or an https public
/// URL, http otherwise).
#[tokio::test]
async fn an_origin_of_another_scheme_or_port_on_the_same_host_is_cross_site() {
    let uri = "/api/v1/stacks/prod%2Fdb/grants";
    let body = r#"{"addresses":["aws_db_instance.main"],"ttl":"1h","reason":"x"}"#;
    let plain = Server::new();
    let tls = Server::with_config(airlock_server::ServerConfig {
        secure_cookies: true,
        ..airlock_server::ServerConfig::default()
    });
    let public = Server::with_config(airlock_server::ServerConfig {
        public_url: Some("https://airlock.example/".into()),
        secure_cookies: true,
        ..airlock_server::ServerConfig::default()
    });
    let refused_plain = ["https://airlock.example", "http://airlock.example:8080"];
    let refused_tls = ["http://airlock.example", "https://airlock.example:8443"];
    for (name, s, refused, taken) in [
        (
            "plain HTTP",
            &plain,
            refused_plain,
            "http://airlock.example",
        ),
        ("TLS", &tls, refused_tls, "https://airlock.example"),
        (
            "public URL",
            &public,
            refused_tls,
            "https://airlock.example",
        ),
    ] {
        s.stack("prod/db", true);
        let approver = s.role_token(Role::Approver);
        for origin in refused {
            let r = s
                .send(cross_site_form(
                    uri,
                    &approver.secret,
                    Some(origin),
                    None,
                    body,
                ))
                .await;
            assert_eq!(r.status, 403, "{name}: Origin {origin} was taken: {r:?}");
            assert!(r.message().contains("cross-site"), "{}", r.message());
        }
        assert!(s.store.grants("prod/db").unwrap().is_empty(), "{name}");
        s.send(cross_site_form(
            uri,
            &approver.secret,
            Some(taken),
            None,
            body,
        ))
        .await
        .expect(201);
    }
}

/// Console sessions: a token holds at most 16 (its 17th sign-in ends its oldest), and a server
/// with 10,000 refuses new sign-ins rather than end anyone's. The cap was per token, but one
/// user has as many tokens as it mints: an agent mints 60 plan-phase tokens an hour (one user),
/// a trust's pull-request jobs log in 1,000 times an hour (one user, the trust), and each signs
/// in 16 times, kept alive by a request now and then: 625 tokens fill the server, and from then
/// on no approver can sign in (503). Expected: one user holds at most 16 sessions, whatever its
/// tokens; a new sign-in ends that user's own least recently used one.
#[tokio::test]
async fn one_user_holds_at_most_sixteen_console_sessions_whatever_its_tokens() {
    let s = Server::new();
    s.stack("dev/app", false);
    let agent = s.token("bot", Role::Agent, &[], None);
    let mut browsers = Vec::new();
    for _ in 0..3 {
        let r = s
            .api(
                "POST",
                "/api/v1/stacks/dev%2Fapp/plan-token",
                &agent,
                json!(null),
            )
            .await;
        r.expect(201);
        let secret = r.json()["secret"].as_str().unwrap().to_owned();
        for _ in 0..16 {
            let b = crate::console::try_sign_in(&s, &secret)
                .await
                .unwrap_or_else(|r| panic!("sign-in: {r:?}"));
            browsers.push(b);
        }
    }
    let mut live = 0;
    for b in &browsers {
        if b.get("/ui/").await.status == 200 {
            live += 1;
        }
    }
    assert!(
        live <= 16,
        "one user (an agent and its plan-phase tokens) holds {live} console sessions"
    );
    // The newest ones are the ones kept.
    assert_eq!(browsers.last().unwrap().get("/ui/").await.status, 200);
}
