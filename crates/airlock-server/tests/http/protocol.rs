//! The Terraform `http` backend contract (terraform-protocols.md §1): every status code, as the
//! server implements it, and malformed input.

use airlock_core::Role;
use airlock_server::ServerConfig;
use axum::body::Body;
use axum::http::header;

use crate::support::*;

#[tokio::test]
async fn get_is_204_before_the_first_write_then_200_with_the_exact_bytes() {
    let s = Server::new();
    s.stack("dev/app", false);
    let r = s.get_state("dev/app", &s.admin).await;
    r.expect(204);
    assert!(r.body.is_empty());

    let body = plain(1);
    let w = s.locked_write("dev/app", &s.admin, &body).await;
    w.expect(200);
    assert_eq!(w.json()["serial"], 1);

    let r = s.get_state("dev/app", &s.admin).await;
    r.expect(200);
    assert_eq!(
        r.body, body,
        "GET serves the bytes Terraform sent, verbatim"
    );
    assert_eq!(r.headers[header::CONTENT_TYPE], "application/json");
}

#[tokio::test]
async fn put_is_accepted_as_update_method() {
    let s = Server::new();
    s.stack("dev/app", false);
    let id = fresh_id("put");
    s.lock("dev/app", &s.admin, &id, "OperationTypeApply")
        .await
        .expect(200);
    s.tf(
        "PUT",
        &format!("/state/dev/app?ID={id}"),
        &s.admin,
        &plain(1),
    )
    .await
    .expect(200);
    assert_eq!(s.versions("dev/app"), [1]);
}

#[tokio::test]
async fn identical_resend_is_200_and_stores_nothing() {
    let s = Server::new();
    s.stack("dev/app", false);
    let id = fresh_id("apply");
    s.lock("dev/app", &s.admin, &id, "OperationTypeApply")
        .await
        .expect(200);
    s.write("dev/app", &s.admin, Some(&id), &plain(1))
        .await
        .expect(200);
    let again = s.write("dev/app", &s.admin, Some(&id), &plain(1)).await;
    again.expect(200);
    assert_eq!(s.versions("dev/app"), [1]);
    let writes = s
        .audit()
        .await
        .into_iter()
        .filter(|e| e["action"] == "state.write")
        .count();
    assert_eq!(writes, 1, "the no-op re-send is not recorded as a write");
}

#[tokio::test]
async fn chunked_state_write_is_accepted() {
    let s = Server::new();
    s.stack("dev/app", false);
    let id = fresh_id("apply");
    s.lock("dev/app", &s.admin, &id, "OperationTypeApply")
        .await
        .expect(200);
    let body = plain(1);
    let (a, b) = body.split_at(body.len() / 2);
    let req = request(
        "POST",
        &format!("/state/dev/app?ID={id}"),
        Auth::Basic("u", &s.admin.secret),
    )
    .header(header::TRANSFER_ENCODING, "chunked")
    .header("Content-MD5", md5_b64(&body))
    .body(chunked(&[a, b]).await)
    .unwrap();
    s.send(req).await.expect(200);
    assert_eq!(s.get_state("dev/app", &s.admin).await.body, body);
}

#[tokio::test]
async fn lock_conflict_is_423_with_the_holders_lock_json_verbatim() {
    let s = Server::new();
    s.stack("dev/app", false);
    let alice = s.token("alice", Role::Ci, &[], None);
    let bob = s.token("bob", Role::Ci, &[], None);
    // Odd spacing and an extra key: the holder's bytes must come back untouched.
    let holder = br#"{"ID":"holder-1234", "Operation":"OperationTypeApply","Info":"ci job 42","Who":"alice@build","Version":"1.9.0","Created":"2025-01-02T03:04:05Z","Path":"","X":1}"#;
    s.tf("LOCK", "/state/dev/app", &alice, holder)
        .await
        .expect(200);
    let r = s
        .lock("dev/app", &bob, "other-5678", "OperationTypeApply")
        .await;
    r.expect(423);
    assert_eq!(r.body, holder.to_vec());
    assert_eq!(r.headers[header::CONTENT_TYPE], "application/json");
    // Even the holder gets 423 for a second lock (Terraform never re-locks with the same ID).
    s.lock("dev/app", &alice, "again", "OperationTypeApply")
        .await
        .expect(423);
}

#[tokio::test]
async fn unlock_with_the_lock_body_is_200_and_a_different_id_is_423() {
    let s = Server::new();
    s.stack("dev/app", false);
    let ci = s.role_token(Role::Ci);
    s.lock("dev/app", &ci, "L1", "OperationTypeApply")
        .await
        .expect(200);
    let r = s.unlock("dev/app", &ci, "L2", "OperationTypeApply").await;
    r.expect(423);
    assert_eq!(r.body, lock_info("L1", "OperationTypeApply").into_bytes());
    s.unlock("dev/app", &ci, "L1", "OperationTypeApply")
        .await
        .expect(200);
    // The stack is free again.
    s.lock("dev/app", &s.admin, "L3", "OperationTypeApply")
        .await
        .expect(200);
    // Unlocking a stack that is not locked is harmless.
    s.unlock("dev/app", &s.admin, "L3", "OperationTypeApply")
        .await
        .expect(200);
    s.unlock("dev/app", &s.admin, "L3", "OperationTypeApply")
        .await
        .expect(200);
}

#[tokio::test]
async fn empty_unlock_is_a_force_unlock_for_approvers_and_admins_only() {
    let s = Server::new();
    s.stack("dev/app", false);
    let ci = s.role_token(Role::Ci);
    let agent = s.role_token(Role::Agent);
    let approver = s.role_token(Role::Approver);
    for (who, force) in [
        (&ci, false),
        (&agent, false),
        (&approver, true),
        (&s.admin, true),
    ] {
        s.lock("dev/app", &ci, "stuck", "OperationTypeApply")
            .await
            .expect(200);
        // Exactly what `terraform force-unlock` sends: an empty body, with Content-MD5 of "".
        let r = s.tf("UNLOCK", "/state/dev/app", who, b"").await;
        if force {
            r.expect(200);
            assert!(s.store.current_lock("dev/app").unwrap().is_none());
        } else {
            r.expect(403);
            assert!(r.message().contains("force-unlock"), "{}", r.message());
            assert!(s.store.current_lock("dev/app").unwrap().is_some());
            s.unlock("dev/app", &ci, "stuck", "OperationTypeApply")
                .await
                .expect(200);
        }
    }
    let forced = s
        .audit()
        .await
        .into_iter()
        .filter(|e| e["action"] == "lock.force_unlock" && e["outcome"] == "ok")
        .count();
    assert_eq!(forced, 2);
}

/// An UNLOCK releases only its sender's lock, checked in the transaction that deletes: an
/// agent's UNLOCK of lock ID X racing a CI token's LOCK with the same ID (lock IDs are chosen by
/// clients) never releases CI's lock. The holder was once read in one store call and the lock
/// deleted by ID in a second one, so a lock taken between the two was released by a token
/// without the force-unlock permission.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unlock_racing_anothers_lock_with_the_same_id_never_releases_it() {
    let s = Server::new();
    s.stack("dev/app", false);
    let ci = s.role_token(Role::Ci);
    let agent = s.role_token(Role::Agent);
    for round in 0..300 {
        let id = format!("race-{round}");
        let (attack, lock) = tokio::join!(
            s.unlock("dev/app", &agent, &id, "OperationTypePlan"),
            s.lock("dev/app", &ci, &id, "OperationTypeApply"),
        );
        lock.expect(200);
        // Nothing of the agent's to release (200), or CI's lock (403).
        assert!(
            [200, 403].contains(&attack.status.as_u16()),
            "round {round}: {attack:?}"
        );
        let held = s.store.current_lock("dev/app").unwrap();
        assert_eq!(
            held.map(|h| h.owner_token),
            Some(ci.id.clone()),
            "round {round}: the agent's UNLOCK ({attack:?}) released CI's lock"
        );
        s.unlock("dev/app", &ci, &id, "OperationTypeApply")
            .await
            .expect(200);
    }
    let agents_releases = s
        .audit()
        .await
        .into_iter()
        .filter(|e| e["outcome"] == "ok" && e["action"].as_str().unwrap_or("").contains("unlock"))
        .filter(|e| e["actor"].as_str().unwrap_or("").contains(&agent.id))
        .count();
    assert_eq!(agents_releases, 0);
}

/// An UNLOCK by ID is audited as what it released: an approver's own lock as `unlock`, CI's
/// lock as `lock.force_unlock` naming the lock and its holder. CI's late UNLOCK of its lock ID,
/// taken again by the approver meanwhile, is refused and releases nothing.
#[tokio::test]
async fn an_unlock_by_id_is_audited_as_what_it_released() {
    let s = Server::new();
    s.stack("dev/app", false);
    let ci = s.role_token(Role::Ci);
    let approver = s.role_token(Role::Approver);
    let releases = |events: Vec<serde_json::Value>| -> Vec<(String, serde_json::Value)> {
        events
            .into_iter()
            .filter(|e| e["outcome"] == "ok")
            .filter(|e| {
                ["unlock", "lock.force_unlock"].contains(&e["action"].as_str().unwrap_or(""))
            })
            .map(|e| {
                (
                    e["action"].as_str().unwrap_or("").to_owned(),
                    e["detail"].clone(),
                )
            })
            .collect()
    };
    s.lock("dev/app", &approver, "mine", "OperationTypeApply")
        .await
        .expect(200);
    s.unlock("dev/app", &approver, "mine", "OperationTypeApply")
        .await
        .expect(200);
    s.lock("dev/app", &ci, "X", "OperationTypeApply")
        .await
        .expect(200);
    s.unlock("dev/app", &approver, "X", "OperationTypeApply")
        .await
        .expect(200);
    assert_eq!(
        releases(s.audit().await),
        [
            ("unlock".to_owned(), serde_json::json!({})),
            (
                "lock.force_unlock".to_owned(),
                serde_json::json!({"lock_id": "X", "holder": format!("tester@host via ci ({})", ci.id)})
            ),
        ]
    );
    s.lock("dev/app", &approver, "X", "OperationTypeApply")
        .await
        .expect(200);
    let late = s.unlock("dev/app", &ci, "X", "OperationTypeApply").await;
    late.expect(403);
    assert!(
        late.message().contains(&format!(
            "belongs to tester@host via approver ({})",
            approver.id
        )),
        "{}",
        late.message()
    );
    let held = s.store.current_lock("dev/app").unwrap().expect("held");
    assert_eq!(held.owner_token, approver.id);
    assert_eq!(releases(s.audit().await).len(), 2);
}

#[tokio::test]
async fn chunked_empty_force_unlock_is_accepted() {
    let s = Server::new();
    s.stack("dev/app", false);
    s.lock("dev/app", &s.admin, "stuck", "OperationTypeApply")
        .await
        .expect(200);
    let approver = s.role_token(Role::Approver);
    // Observed from Terraform 1.11: a zero-length chunked body.
    let req = request(
        "UNLOCK",
        "/state/dev/app",
        Auth::Basic("u", &approver.secret),
    )
    .header(header::CONTENT_TYPE, "application/json")
    .header("Content-MD5", "1B2M2Y8AsgTpgAmY7PhCfg==")
    .header(header::TRANSFER_ENCODING, "chunked")
    .body(chunked(&[]).await)
    .unwrap();
    s.send(req).await.expect(200);
    assert!(s.store.current_lock("dev/app").unwrap().is_none());
}

#[tokio::test]
async fn unknown_stack_is_422_on_every_state_method_never_404() {
    let s = Server::new();
    for method in ["GET", "POST", "PUT", "LOCK", "UNLOCK"] {
        let body = match method {
            "LOCK" | "UNLOCK" => lock_info("x", "OperationTypePlan").into_bytes(),
            "GET" => Vec::new(),
            _ => plain(1),
        };
        let r = s.tf(method, "/state/prod/typo", &s.admin, &body).await;
        r.expect(422);
        assert!(r.message().contains("does not exist"), "{}", r.message());
    }
    assert!(s.store.stack("prod/typo").unwrap().is_none());
}

/// An UNLOCK of an unknown stack is refused as unknown whatever its body (a lock's, empty from
/// a token without the force-unlock permission, malformed); with `--auto-create-stacks` the
/// stack is created first, and then the body is judged.
#[tokio::test]
async fn an_unlock_of_an_unknown_stack_is_refused_as_unknown_before_its_body() {
    let agent_body = |s: &Server| {
        (
            s.role_token(Role::Agent),
            lock_info("x", "OperationTypePlan"),
        )
    };
    let s = Server::new();
    let (agent, info) = agent_body(&s);
    for (who, body) in [
        (&agent, info.as_bytes()),
        (&s.admin, info.as_bytes()),
        (&agent, b"".as_slice()),
        (&agent, b"{not json".as_slice()),
    ] {
        let r = s.tf("UNLOCK", "/state/prod/typo", who, body).await;
        r.expect(422);
        assert!(
            r.message().starts_with("stack prod/typo does not exist"),
            "{}",
            r.message()
        );
    }
    assert!(s.store.stack("prod/typo").unwrap().is_none());

    let s = Server::with_config(ServerConfig {
        auto_create_stacks: true,
        ..ServerConfig::default()
    });
    let (agent, info) = agent_body(&s);
    for (stack, body, status, message) in [
        ("sandbox/a", info.as_bytes(), 200, ""),
        (
            "sandbox/b",
            b"".as_slice(),
            403,
            "force-unlock refused: agent tokens do not have the force-unlock permission",
        ),
        (
            "sandbox/c",
            b"{not json".as_slice(),
            400,
            "unlock refused: ",
        ),
    ] {
        let r = s
            .tf("UNLOCK", &format!("/state/{stack}"), &agent, body)
            .await;
        r.expect(status);
        if status != 200 {
            assert!(r.message().starts_with(message), "{}", r.message());
        }
        assert!(s.store.stack(stack).unwrap().is_some(), "{stack}");
    }
}

#[tokio::test]
async fn auto_create_stacks_creates_on_first_use() {
    let s = Server::with_config(ServerConfig {
        auto_create_stacks: true,
        ..ServerConfig::default()
    });
    s.get_state("sandbox/x", &s.admin).await.expect(204);
    assert!(s.store.stack("sandbox/x").unwrap().is_some());
}

#[tokio::test]
async fn unsupported_methods_on_state_are_405() {
    let s = Server::new();
    s.stack("dev/app", false);
    for method in ["DELETE", "PATCH", "OPTIONS", "PROPFIND"] {
        let r = s
            .call(
                method,
                "/state/dev/app",
                Auth::Bearer(&s.admin.secret),
                Body::empty(),
            )
            .await;
        r.expect(405);
    }
}

#[tokio::test]
async fn write_on_a_locked_stack_without_the_holders_id_is_423() {
    let s = Server::new();
    s.stack("dev/app", false);
    s.lock("dev/app", &s.admin, "L1", "OperationTypeApply")
        .await
        .expect(200);
    for id in [None, Some("L2"), Some("")] {
        let r = s.write("dev/app", &s.admin, id, &plain(1)).await;
        r.expect(423);
    }
    assert!(s.versions("dev/app").is_empty());
}

#[tokio::test]
async fn write_on_an_unlocked_stack_is_409() {
    let s = Server::new();
    s.stack("dev/app", false);
    let r = s.write("dev/app", &s.admin, None, &plain(1)).await;
    r.expect(409);
    assert!(r.message().contains("not locked"), "{}", r.message());
    assert!(s.versions("dev/app").is_empty());
}

/// Locks `dev/app` as admin and returns the lock ID.
async fn locked(s: &Server) -> String {
    s.stack("dev/app", false);
    let id = fresh_id("apply");
    s.lock("dev/app", &s.admin, &id, "OperationTypeApply")
        .await
        .expect(200);
    id
}

#[tokio::test]
async fn malformed_state_bodies_are_400_and_store_nothing() {
    let s = Server::new();
    let id = locked(&s).await;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("not JSON", b"{\"version\": 4, ".to_vec()),
        ("array", b"[]".to_vec()),
        ("not UTF-8", vec![0xff, 0xfe, b'{', b'}']),
        (
            "version 3",
            br#"{"version":3,"serial":1,"lineage":"x"}"#.to_vec(),
        ),
        ("no serial", br#"{"version":4,"lineage":"x"}"#.to_vec()),
        (
            "negative serial",
            br#"{"version":4,"serial":-1,"lineage":"x"}"#.to_vec(),
        ),
        ("no lineage", br#"{"version":4,"serial":1}"#.to_vec()),
        (
            "empty lineage",
            br#"{"version":4,"serial":1,"lineage":""}"#.to_vec(),
        ),
        (
            "unknown top-level key",
            br#"{"version":4,"serial":1,"lineage":"x","surprise":true}"#.to_vec(),
        ),
        (
            "resources not a list",
            br#"{"version":4,"serial":1,"lineage":"x","resources":{}}"#.to_vec(),
        ),
    ];
    for (what, body) in cases {
        let r = s.write("dev/app", &s.admin, Some(&id), &body).await;
        assert_eq!(r.status, 400, "{what}: {r:?}");
        let _ = r.message();
    }
    assert!(s.versions("dev/app").is_empty());
}

#[tokio::test]
async fn wrong_or_invalid_content_md5_is_400() {
    let s = Server::new();
    let id = locked(&s).await;
    let body = plain(1);
    for md5 in [
        md5_b64(b"something else").as_str(),
        "not base64!",
        "",
        "AAAA",
    ] {
        let req = request(
            "POST",
            &format!("/state/dev/app?ID={id}"),
            Auth::Basic("u", &s.admin.secret),
        )
        .header("Content-MD5", md5)
        .body(Body::from(body.clone()))
        .unwrap();
        let r = s.send(req).await;
        assert_eq!(r.status, 400, "Content-MD5 {md5:?}: {r:?}");
        assert!(r.message().contains("Content-MD5"), "{}", r.message());
    }
    // Bytes damaged in transit: the answer says what happened, whether they no longer read as
    // a state or read as one the store would refuse for itself (a serial past i64). The MD5 is
    // checked on its own thread while the state is read, and before the store's own checks.
    let mut halved = body.clone();
    halved.truncate(halved.len() / 2);
    for damaged in [halved, plain(1u64 << 63)] {
        let req = request(
            "POST",
            &format!("/state/dev/app?ID={id}"),
            Auth::Basic("u", &s.admin.secret),
        )
        .header("Content-MD5", md5_b64(&body))
        .body(Body::from(damaged))
        .unwrap();
        let r = s.send(req).await;
        assert_eq!(r.status, 400, "{r:?}");
        assert!(
            r.message().contains("Content-MD5 does not match the body"),
            "{}",
            r.message()
        );
    }
    assert!(s.versions("dev/app").is_empty());
    // Without Content-MD5 (OpenTofu with an empty body, curl) the write is fine.
    s.call(
        "POST",
        &format!("/state/dev/app?ID={id}"),
        Auth::Basic("u", &s.admin.secret),
        body,
    )
    .await
    .expect(200);
}

#[tokio::test]
async fn oversized_state_is_413_with_or_without_content_length() {
    let s = Server::with_config(ServerConfig {
        max_state_bytes: 2048,
        ..ServerConfig::default()
    });
    let id = locked(&s).await;
    let many: Vec<(String, String)> = (0..40)
        .map(|i| ("terraform_data".to_owned(), format!("r{i}")))
        .collect();
    let refs: Vec<(&str, &str)> = many.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let big = state(1, LINEAGE, &refs);
    assert!(big.len() > 2048);
    let r = s.write("dev/app", &s.admin, Some(&id), &big).await;
    r.expect(413);
    // Streamed, so the limit is hit while reading.
    let chunks: Vec<&[u8]> = big.chunks(500).collect();
    let req = request(
        "POST",
        &format!("/state/dev/app?ID={id}"),
        Auth::Bearer(&s.admin.secret),
    )
    .header(header::TRANSFER_ENCODING, "chunked")
    .body(chunked(&chunks).await)
    .unwrap();
    s.send(req).await.expect(413);
    assert!(s.versions("dev/app").is_empty());
    // A state within the limit is fine.
    s.write("dev/app", &s.admin, Some(&id), &plain(1))
        .await
        .expect(200);
}

#[tokio::test]
async fn bad_lock_info_is_400_and_huge_lock_info_is_413() {
    let s = Server::new();
    s.stack("dev/app", false);
    let huge = format!(
        r#"{{"ID":"x","Operation":"OperationTypePlan","Info":"{}"}}"#,
        "a".repeat(20_000)
    );
    let long_id = format!(
        r#"{{"ID":"{}","Operation":"OperationTypePlan"}}"#,
        "i".repeat(300)
    );
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("empty", Vec::new(), 400),
        ("not JSON", b"lock please".to_vec(), 400),
        ("JSON array", b"[1]".to_vec(), 400),
        (
            "no ID",
            br#"{"Operation":"OperationTypePlan"}"#.to_vec(),
            400,
        ),
        (
            "empty ID",
            br#"{"ID":"","Operation":"OperationTypePlan"}"#.to_vec(),
            400,
        ),
        (
            "ID not a string",
            br#"{"ID":7,"Operation":"OperationTypePlan"}"#.to_vec(),
            400,
        ),
        (
            "ID with spaces",
            br#"{"ID":"a b","Operation":"OperationTypePlan"}"#.to_vec(),
            400,
        ),
        ("ID too long", long_id.into_bytes(), 400),
        ("huge", huge.into_bytes(), 413),
    ];
    for (what, body, status) in cases {
        let r = s.tf("LOCK", "/state/dev/app", &s.admin, &body).await;
        assert_eq!(r.status, status, "LOCK {what}: {r:?}");
        assert!(s.store.current_lock("dev/app").unwrap().is_none(), "{what}");
        if !body.is_empty() {
            let r = s.tf("UNLOCK", "/state/dev/app", &s.admin, &body).await;
            assert_eq!(r.status, status, "UNLOCK {what}: {r:?}");
        }
    }
}

#[tokio::test]
async fn bad_stack_names_are_400_on_state_and_api() {
    let s = Server::new();
    s.stack("prod/app", false);
    let long = "a".repeat(201);
    let state_paths = [
        "/state/..".to_owned(),
        "/state/prod/..".to_owned(),
        "/state/prod/../app".to_owned(),
        "/state/%2e%2e".to_owned(),
        "/state/prod/%2e%2e/app".to_owned(),
        "/state/prod%2Fapp".to_owned(),
        "/state/prod%2fapp".to_owned(),
        "/state/prod//app".to_owned(),
        "/state//prod/app".to_owned(),
        "/state/prod/app/".to_owned(),
        "/state/Prod/app".to_owned(),
        "/state/PROD".to_owned(),
        "/state/a/b/c/d/e".to_owned(),
        format!("/state/{long}"),
        "/state/prod/a%20b".to_owned(),
        "/state/prod/%C3%A4".to_owned(),
        "/state/.".to_owned(),
    ];
    for path in &state_paths {
        for method in ["GET", "POST", "LOCK", "UNLOCK"] {
            let r = s.tf(method, path, &s.admin, b"").await;
            assert_eq!(r.status, 400, "{method} {path}: {r:?}");
            assert!(
                r.message().contains("stack name"),
                "{path}: {}",
                r.message()
            );
        }
    }
    let api_names = [
        "..",
        "%2e%2e",
        "prod%2F..",
        "prod%2F%2Fapp",
        "Prod%2Fapp",
        "a%2Fb%2Fc%2Fd%2Fe",
        long.as_str(),
        "%2Fprod",
        "prod%2",
        "%ff",
    ];
    for name in api_names {
        for path in [
            format!("/api/v1/stacks/{name}"),
            format!("/api/v1/stacks/{name}/versions"),
        ] {
            let r = s
                .call("GET", &path, Auth::Bearer(&s.admin.secret), Body::empty())
                .await;
            assert_eq!(r.status, 400, "{path}: {r:?}");
        }
    }
    // The longest valid name is fine (and unknown: 422).
    let max = format!("/state/{}", "a".repeat(200));
    s.tf("GET", &max, &s.admin, b"").await.expect(422);
}

#[tokio::test]
async fn the_state_surface_never_answers_404() {
    // Terraform reads a 404 on GET as "no state yet"; no path under /state may produce one.
    let s = Server::new();
    for path in ["/state/", "/state", "/state//", "/state/?x=1"] {
        let r = s.tf("GET", path, &s.admin, b"").await;
        assert_ne!(r.status, 404, "GET {path}: {r:?}");
        assert!(r.status.is_client_error(), "GET {path}: {r:?}");
    }
}

#[tokio::test]
async fn health_and_metrics_need_no_token_and_unknown_routes_are_404() {
    let s = Server::new();
    s.call("GET", "/healthz", Auth::None, Body::empty())
        .await
        .expect(200);
    let m = s.call("GET", "/metrics", Auth::None, Body::empty()).await;
    m.expect(200);
    assert!(!m.text().is_empty());
    s.call(
        "GET",
        "/api/v1/nothing",
        Auth::Bearer(&s.admin.secret),
        Body::empty(),
    )
    .await
    .expect(404);
}

/// `/metrics` without a token names no stack (a monitoring port reaches more people than the
/// API); with a token it adds the drift gauges of that token's stacks only; a bad token is a
/// 401, audited, not a quiet fall-back to the anonymous view.
#[tokio::test]
async fn metrics_name_stacks_only_to_a_token_that_may_see_them() {
    let s = Server::new();
    let ci = s.role_token(Role::Ci);
    for stack in ["dev/app", "prod/secret-db"] {
        s.stack(stack, false);
        let path = format!("/api/v1/stacks/{}/drift", stack.replace('/', "%2F"));
        s.api(
            "POST",
            &path,
            &ci,
            serde_json::json!({"serial": null, "error": "refresh failed"}),
        )
        .await
        .expect(201);
    }
    let anonymous = s.call("GET", "/metrics", Auth::None, Body::empty()).await;
    anonymous.expect(200);
    let text = anonymous.text();
    assert!(text.contains("airlock_stacks_drift_unknown 2"), "{text}");
    assert!(!text.contains("stack="), "{text}");
    assert!(
        !text.contains("secret-db") && !text.contains("dev/app"),
        "{text}"
    );

    let dev = s.token("dev-reader", Role::Reader, &["dev/*"], None);
    let scoped = s
        .call("GET", "/metrics", Auth::Bearer(&dev.secret), Body::empty())
        .await;
    scoped.expect(200);
    let text = scoped.text();
    assert!(
        text.contains("airlock_stack_drift_unknown{stack=\"dev/app\"} 1"),
        "{text}"
    );
    assert!(!text.contains("secret-db"), "{text}");
    let all = s
        .call(
            "GET",
            "/metrics",
            Auth::Bearer(&s.admin.secret),
            Body::empty(),
        )
        .await;
    assert!(
        all.text().contains("stack=\"prod/secret-db\""),
        "{}",
        all.text()
    );

    let bad = s
        .call(
            "GET",
            "/metrics",
            Auth::Bearer("not-a-token"),
            Body::empty(),
        )
        .await;
    assert_eq!(bad.status, 401, "{bad:?}");
    assert!(!bad.text().contains("secret-db"));
    let audit = s.api_get("/api/v1/audit?outcome=denied").await.to_string();
    assert!(audit.contains("/metrics"), "{audit}");
}

#[tokio::test]
async fn only_the_holder_or_a_force_unlocker_may_release_a_lock_by_its_id() {
    let s = Server::new();
    s.stack("dev/app", false);
    let alice = s.token("alice", Role::Ci, &[], None);
    let mallory = s.token("mallory", Role::Ci, &[], None);
    let agent = s.role_token(Role::Agent);
    s.lock("dev/app", &alice, "L-alice", "OperationTypeApply")
        .await
        .expect(200);
    // The exact bytes of alice's lock, sent by someone else.
    for t in [&mallory, &agent] {
        let r = s
            .unlock("dev/app", t, "L-alice", "OperationTypeApply")
            .await;
        r.expect(403);
        assert!(r.message().contains("alice"), "{}", r.message());
        assert_eq!(
            s.store.current_lock("dev/app").unwrap().unwrap().id,
            "L-alice"
        );
    }
    let approver = s.role_token(Role::Approver);
    s.unlock("dev/app", &approver, "L-alice", "OperationTypeApply")
        .await
        .expect(200);
    assert!(s.store.current_lock("dev/app").unwrap().is_none());
}
