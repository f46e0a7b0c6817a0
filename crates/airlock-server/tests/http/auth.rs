//! Authentication: Bearer and Basic (password = token), and every way a credential is bad.

use airlock_core::Role;
use airlock_store::now_ms;
use axum::body::Body;
use axum::http::header;
use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn bearer_and_basic_with_any_username_authenticate() {
    let s = Server::new();
    s.stack("dev/app", false);
    let ci = s.role_token(Role::Ci);
    let spaced = format!("Bearer  {} ", ci.secret);
    // Schemes are case-insensitive (RFC 7235).
    let lower = format!("bearer {}", ci.secret);
    let upper_basic = format!(
        "BASIC {}",
        base64_encode(format!("u:{}", ci.secret).as_bytes())
    );
    for auth in [
        Auth::Raw(&lower),
        Auth::Raw(&upper_basic),
        Auth::Bearer(&ci.secret),
        Auth::Basic("terraform", &ci.secret),
        Auth::Basic("anyone at all", &ci.secret),
        // Terraform never sends Basic without a username, but curl -u :TOKEN does.
        Auth::Basic("", &ci.secret),
        Auth::Raw(&spaced),
    ] {
        let r = s.call("GET", "/state/dev/app", auth, Body::empty()).await;
        r.expect(204);
        let who = s.call("GET", "/api/v1/whoami", auth, Body::empty()).await;
        who.expect(200);
        assert_eq!(who.json()["role"], "ci");
        assert_eq!(who.json()["id"], ci.id.as_str());
    }
}

#[tokio::test]
async fn missing_token_is_401_with_a_challenge() {
    let s = Server::new();
    s.stack("dev/app", false);
    for (method, path) in [
        ("GET", "/state/dev/app"),
        ("POST", "/state/dev/app"),
        ("LOCK", "/state/dev/app"),
        ("UNLOCK", "/state/dev/app"),
        ("GET", "/api/v1/stacks"),
        ("GET", "/api/v1/tokens"),
        ("GET", "/api/v1/audit"),
    ] {
        let r = s.call(method, path, Auth::None, Body::empty()).await;
        r.expect(401);
        assert!(r.headers.contains_key(header::WWW_AUTHENTICATE));
        assert_eq!(r.json()["error"]["code"], "unauthenticated");
    }
}

#[tokio::test]
async fn malformed_authorization_headers_are_401() {
    let s = Server::new();
    s.stack("dev/app", false);
    let no_colon = format!("Basic {}", base64_encode(s.admin.secret.as_bytes()));
    let not_utf8 = format!("Basic {}", base64_encode(&[0xff, b':', 0xfe]));
    let cases = [
        "Bearer",
        "Bearer ",
        "Basic",
        "Basic !!!not-base64!!!",
        no_colon.as_str(),
        not_utf8.as_str(),
        "Token abc",
        "Digest username=\"x\"",
        "",
        "airlock_0000",
    ];
    for value in cases {
        let r = s
            .call("GET", "/state/dev/app", Auth::Raw(value), Body::empty())
            .await;
        assert_eq!(r.status, 401, "Authorization: {value:?}: {r:?}");
        assert_no_secret(&r.text(), &[&s.admin]);
    }
    // A header that is not even visible ASCII.
    let req = request("GET", "/state/dev/app", Auth::None)
        .header(
            header::AUTHORIZATION,
            axum::http::HeaderValue::from_bytes(b"Bearer \xff\xfe").unwrap(),
        )
        .body(Body::empty())
        .unwrap();
    s.send(req).await.expect(401);
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

#[tokio::test]
async fn wrong_expired_and_revoked_tokens_are_401() {
    let s = Server::new();
    s.stack("dev/app", false);
    let expired = s.token("old", Role::Admin, &[], Some(now_ms() - 1_000));
    let revoked = s.role_token(Role::Ci);
    let fine = s.token("fine", Role::Ci, &[], Some(now_ms() + 3_600_000));
    s.call(
        "GET",
        "/state/dev/app",
        Auth::Bearer(&revoked.secret),
        Body::empty(),
    )
    .await
    .expect(204);
    s.api(
        "DELETE",
        &format!("/api/v1/tokens/{}", revoked.id),
        &s.admin,
        json!(null),
    )
    .await
    .expect(200);
    let wrong = airlock_server::tokens::generate().secret;
    let cases = [
        (wrong.as_str(), "unknown token"),
        (expired.secret.as_str(), "expired"),
        (revoked.secret.as_str(), "revoked"),
    ];
    for (secret, why) in cases {
        for auth in [Auth::Bearer(secret), Auth::Basic("u", secret)] {
            let r = s.call("GET", "/state/dev/app", auth, Body::empty()).await;
            r.expect(401);
            assert!(r.message().contains(why), "{}", r.message());
            assert!(!r.text().contains(secret), "the secret is echoed: {r:?}");
            let r = s
                .tf(
                    "LOCK",
                    "/state/dev/app",
                    &Tok {
                        id: String::new(),
                        secret: secret.to_owned(),
                    },
                    lock_info("x", "OperationTypePlan").as_bytes(),
                )
                .await;
            r.expect(401);
        }
    }
    assert!(s.store.current_lock("dev/app").unwrap().is_none());
    s.call(
        "GET",
        "/state/dev/app",
        Auth::Bearer(&fine.secret),
        Body::empty(),
    )
    .await
    .expect(204);
    // Failed authentications are audited, without the secrets tried.
    let audit = serde_json::to_string(&s.audit().await).unwrap();
    assert!(audit.contains("unauthenticated"));
    assert!(!audit.contains(&wrong) && !audit.contains(&expired.secret));
    assert_no_secret(&audit, &[&revoked, &fine, &s.admin]);
}

#[tokio::test]
async fn secrets_never_appear_in_token_listings_audit_or_error_bodies() {
    let s = Server::new();
    s.stack("dev/app", false);
    let created = s
        .api(
            "POST",
            "/api/v1/tokens",
            &s.admin,
            json!({"name": "bot", "role": "agent", "stacks": ["dev/*"], "ttl": "1h"}),
        )
        .await;
    created.expect(201);
    let bot = Tok {
        id: created.json()["token"]["id"].as_str().unwrap().to_owned(),
        secret: created.json()["secret"].as_str().unwrap().to_owned(),
    };
    assert!(bot
        .secret
        .starts_with(airlock_server::tokens::SECRET_PREFIX));
    // The new secret works once shown…
    let who = s
        .call(
            "GET",
            "/api/v1/whoami",
            Auth::Bearer(&bot.secret),
            Body::empty(),
        )
        .await;
    who.expect(200);
    assert_eq!(who.json()["role"], "agent");
    // …and is never shown again, nor is its hash.
    let list = s
        .call(
            "GET",
            "/api/v1/tokens",
            Auth::Bearer(&s.admin.secret),
            Body::empty(),
        )
        .await;
    list.expect(200);
    let text = list.text();
    assert!(text.contains(&bot.id));
    assert_no_secret(&text, &[&bot, &s.admin]);
    let hash = hex_encode(&airlock_server::tokens::hash_secret(&bot.secret));
    assert!(!text.contains(&hash), "token hash listed: {text}");
    assert!(!text.contains("secret"), "{text}");

    // Refusals by this token, of all kinds, do not echo it either.
    let mut bodies = Vec::new();
    for r in [
        s.lock("dev/app", &bot, "x", "OperationTypeApply").await,
        s.write("dev/app", &bot, None, &plain(1)).await,
        s.tf("UNLOCK", "/state/dev/app", &bot, b"").await,
        s.get_state("prod/app", &bot).await,
        s.api("GET", "/api/v1/tokens", &bot, json!(null)).await,
    ] {
        assert!(r.status.is_client_error(), "{r:?}");
        bodies.push(r.text());
    }
    let audit = serde_json::to_string(&s.audit().await).unwrap();
    assert!(audit.contains(&bot.id), "the token is audited by id");
    assert!(!audit.contains(&hash));
    bodies.push(audit);
    for b in bodies {
        assert_no_secret(&b, &[&bot, &s.admin]);
    }
}

fn hex_encode(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Anyone can make the server refuse a request without a valid token, and each refusal was an
/// audit record, kept for good (~360 bytes each, at 2-3,500 a second). Expected: those refusals
/// (no token, an unknown one, a cross-site browser request) are audited within a budget (a
/// burst, then a few a second); past it they are counted (`/metrics`) and left out, and one
/// `audit.unaudited_refusals` event says how many when audit resumes. A valid token's refusals
/// (403) are audited one by one whatever the budget.
#[tokio::test]
async fn refusals_without_a_valid_token_are_audited_within_a_budget() {
    let s = Server::new();
    s.stack("dev/app", false);
    let reader = s.role_token(Role::Reader);
    let before = s.store.audit_events(0, 100_000).unwrap().len();
    let started = std::time::Instant::now();
    let sent = 5_000;
    for i in 0..sent {
        let r = match i % 3 {
            0 => {
                s.call("GET", "/state/dev/app", Auth::None, Body::empty())
                    .await
            }
            1 => {
                s.call(
                    "LOCK",
                    "/state/dev/app",
                    Auth::Bearer("airlock_guessed"),
                    Body::empty(),
                )
                .await
            }
            _ => {
                s.send(
                    request("POST", "/state/dev/app", Auth::None)
                        .header("sec-fetch-site", "cross-site")
                        .body(Body::empty())
                        .unwrap(),
                )
                .await
            }
        };
        assert!(matches!(r.status.as_u16(), 401 | 403), "{r:?}");
    }
    let elapsed = started.elapsed().as_secs_f64();
    // A valid token's refusals are audited one by one, budget spent or not.
    for _ in 0..50 {
        s.lock("dev/app", &reader, "x", "OperationTypeApply")
            .await
            .expect(403);
    }
    // So is a stored token's use after its revocation (a leaked token, say): it names the token.
    let leaked = s.role_token(Role::Ci);
    s.api(
        "DELETE",
        &format!("/api/v1/tokens/{}", leaked.id),
        &s.admin,
        json!(null),
    )
    .await
    .expect(200);
    for _ in 0..20 {
        s.call(
            "GET",
            "/state/dev/app",
            Auth::Bearer(&leaked.secret),
            Body::empty(),
        )
        .await
        .expect(401);
    }
    // Audit resumes: the next refusal records how many were left out before it.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    s.call("GET", "/state/dev/app", Auth::None, Body::empty())
        .await
        .expect(401);
    let events = s.store.audit_events(0, 100_000).unwrap();
    let new = &events[before..];
    let anonymous = new
        .iter()
        .filter(|e| {
            e.action == "denied" && (e.actor == "unauthenticated" || e.actor == "cross-site")
        })
        .count();
    let by_reader = new
        .iter()
        .filter(|e| e.action == "denied" && e.actor.contains(&reader.id))
        .count();
    let left_out: u64 = new
        .iter()
        .filter(|e| e.action == "audit.unaudited_refusals")
        .map(|e| e.detail["refusals"].as_u64().expect("a count"))
        .sum();
    assert_eq!(by_reader, 50, "a valid token's refusals were left out");
    let by_leaked = new
        .iter()
        .filter(|e| e.action == "denied" && e.actor.contains(&leaked.id))
        .count();
    assert_eq!(by_leaked, 20, "a revoked token's uses were left out");
    assert!(
        (anonymous as f64) < 100.0 + 20.0 * (elapsed + 1.0),
        "{anonymous} of {sent} refusals without a valid token audited in {elapsed:.1} s"
    );
    assert_eq!(
        anonymous as u64 + left_out,
        sent + 1,
        "every refusal is audited or counted in an audit.unaudited_refusals event"
    );
    let metrics = s.call("GET", "/metrics", Auth::None, Body::empty()).await;
    assert!(
        metrics
            .text()
            .contains(&format!("airlock_unaudited_refusals_total {left_out}\n")),
        "{}",
        metrics.text()
    );
}
