//! Adversarial review of this session's new surfaces (issue "review4"): trust pinning, the
//! per-store recent-body chunk reuse, `/metrics`' optional token. Each test is one attack; a
//! test marked `#[ignore = "open: ..."]` is a hole (it fails until fixed), the others pass
//! today and pin the refusal.

use airlock_core::Role;
use airlock_store::{NewAudit, OidcTrustRecord};
use axum::body::Body;
use serde_json::{json, Value};

use crate::support::*;

/// A trust as it was stored before trusts were pinned (migration 0011): no repository ids.
fn legacy_trust(s: &Server, id: &str, stacks: &[&str]) {
    let t = OidcTrustRecord {
        id: id.into(),
        forge: "github".into(),
        issuer: "https://token.actions.githubusercontent.com".into(),
        audience: "https://airlock.example".into(),
        repository: "org/infra".into(),
        repository_id: None,
        owner_id: None,
        git_ref: Some("refs/heads/main".into()),
        environment: None,
        role: "ci".into(),
        stacks: stacks.iter().map(|s| (*s).to_owned()).collect(),
        lifetime_ms: 3_600_000,
        created_at: 1,
        created_by: "test".into(),
        removed_at: None,
        removed_by: None,
    };
    s.store
        .add_oidc_trust(
            &t,
            NewAudit::ok("test", "oidc.trust_add", None, json!({"trust": id})),
        )
        .expect("add legacy trust");
}

fn stored_trust(s: &Server, id: &str) -> OidcTrustRecord {
    s.store
        .oidc_trusts()
        .expect("trusts")
        .into_iter()
        .find(|t| t.id == id)
        .expect("the trust")
}

async fn pin(s: &Server, token: &Tok, id: &str, repo: &str, owner: &str) -> Resp {
    s.api(
        "POST",
        &format!("/api/v1/oidc/trusts/{id}/pin"),
        token,
        json!({"repository_id": repo, "owner_id": owner}),
    )
    .await
}

/// HOLDS (an admin scoped to `dev/*`): pinning a legacy trust that reaches `prod/*` (so it
/// would start issuing `ci` tokens for prod, to whichever repository ids the scoped admin
/// chooses) is refused, and the trust stays unpinned; nothing is audited as a pin.
#[tokio::test]
async fn attacks_tier4_a_scoped_admin_cannot_pin_a_trust_beyond_its_stacks() {
    let s = Server::new();
    legacy_trust(&s, "trust_prod_legacy", &["prod/*"]);
    legacy_trust(&s, "trust_all_legacy", &[]);
    let dev_admin = s.token("dev-admin", Role::Admin, &["dev/*"], None);
    for id in ["trust_prod_legacy", "trust_all_legacy"] {
        let r = pin(&s, &dev_admin, id, "1001", "2002").await;
        assert_eq!(r.status, 403, "{id}: {r:?}");
        let t = stored_trust(&s, id);
        assert_eq!((t.repository_id, t.owner_id), (None, None), "{id}");
    }
    assert!(
        !s.audit()
            .await
            .iter()
            .any(|e| e["action"] == "oidc.trust_pin" && e["outcome"] == "ok"),
        "a refused pin was audited as done"
    );
}

/// HOLDS: ids that only look like a forge's decimal id (signs, spaces, exponents, non-ASCII
/// digits, a JSON number, over 20 digits, empty) are refused on pin, so a pinned id is always
/// compared byte for byte with the forge's signed claim; a trust is pinned once, and a removed
/// trust is not revived by a pin.
#[tokio::test]
async fn attacks_tier4_pin_takes_only_plain_decimal_ids_once_and_never_revives() {
    let s = Server::new();
    legacy_trust(&s, "trust_a", &[]);
    for bad in [
        " 1001",
        "1001 ",
        "+1001",
        "-1001",
        "1e3",
        "1001\n",
        "\u{ff11}\u{ff10}\u{ff10}\u{ff11}",
        "0x3e9",
        "",
        "123456789012345678901",
    ] {
        let r = pin(&s, &s.admin, "trust_a", bad, "2002").await;
        assert_eq!(r.status, 400, "{bad:?}: {r:?}");
        let r = pin(&s, &s.admin, "trust_a", "1001", bad).await;
        assert_eq!(r.status, 400, "owner {bad:?}: {r:?}");
    }
    // A JSON number is not the string the forge's claim is compared as.
    let r = s
        .api(
            "POST",
            "/api/v1/oidc/trusts/trust_a/pin",
            &s.admin,
            json!({"repository_id": 1001, "owner_id": 2002}),
        )
        .await;
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(stored_trust(&s, "trust_a").repository_id, None);

    pin(&s, &s.admin, "trust_a", "1001", "2002")
        .await
        .expect(200);
    let again = pin(&s, &s.admin, "trust_a", "9999", "9999").await;
    assert!(again.status.is_client_error(), "re-pinned: {again:?}");
    let t = stored_trust(&s, "trust_a");
    assert_eq!(
        (t.repository_id.as_deref(), t.owner_id.as_deref()),
        (Some("1001"), Some("2002"))
    );

    legacy_trust(&s, "trust_b", &[]);
    s.api(
        "POST",
        "/api/v1/oidc/trusts/trust_b/remove",
        &s.admin,
        json!({}),
    )
    .await
    .expect(200);
    let r = pin(&s, &s.admin, "trust_b", "1001", "2002").await;
    assert!(r.status.is_client_error(), "a removed trust pinned: {r:?}");
    let t = stored_trust(&s, "trust_b");
    assert!(t.removed_at.is_some() && t.repository_id.is_none(), "{t:?}");
}

/// A deterministic body of `len` bytes that chunks like real data (no long repeats).
fn noise(seed: u64, len: usize) -> String {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b"0123456789abcdef"[(x & 15) as usize])
        })
        .collect()
}

fn big_state(serial: u64, lineage: &str, parts: &[&str]) -> Vec<u8> {
    let outputs: serde_json::Map<String, Value> = parts
        .iter()
        .enumerate()
        .map(|(i, p)| (format!("o{i}"), json!({"value": p, "type": "string"})))
        .collect();
    let doc = json!({"version": 4, "terraform_version": "1.11.4", "serial": serial,
                     "lineage": lineage, "outputs": outputs, "resources": [], "check_results": null});
    serde_json::to_vec_pretty(&doc).expect("json")
}

#[track_caller]
fn reads_back(s: &Server, stack: &str, serial: u64, want: &[u8]) {
    let got = s
        .store
        .version_bytes(stack, serial)
        .unwrap_or_else(|e| panic!("{stack} serial {serial} cannot be read back: {e}"));
    assert!(
        got == want,
        "{stack} serial {serial} reads back different bytes"
    );
}

/// HOLDS: the recent-body chunk reuse never makes a version point at a chunk that is not
/// stored. Tried: a write refused inside its transaction (a stale serial, then another
/// lineage) whose new chunks were hashed but never committed, followed by a write sharing
/// them; two stacks written with the same chunks; a body that ends inside a remembered
/// chunk's bytes. Every stored version reads back byte for byte.
#[tokio::test]
async fn attacks_tier4_chunk_reuse_never_points_at_an_unstored_chunk() {
    let s = Server::new();
    s.stack("dev/a", false);
    s.stack("dev/b", false);
    let ci = s.role_token(Role::Ci);
    let (p1, p2, p3) = (noise(1, 300_000), noise(2, 300_000), noise(3, 300_000));

    let v1 = big_state(1, LINEAGE, &[&p1, &p2]);
    s.locked_write("dev/a", &ci, &v1).await.expect(200);
    // Refused writes carrying new chunks (p3): a stale serial and another lineage.
    let stale = big_state(1, LINEAGE, &[&p1, &p3]);
    let r = s.locked_write("dev/a", &ci, &stale).await;
    assert!(r.status.is_client_error(), "{r:?}");
    let other = big_state(2, "00000000-0000-4000-8000-000000000000", &[&p3, &p2]);
    let r = s.locked_write("dev/a", &ci, &other).await;
    assert!(r.status.is_client_error(), "{r:?}");
    // Now a write that shares p3 with the refused ones and p1 with the stored one.
    let v2 = big_state(2, LINEAGE, &[&p1, &p3]);
    s.locked_write("dev/a", &ci, &v2).await.expect(200);
    // Another stack with the same chunks, then a body ending inside a remembered chunk.
    let b1 = big_state(1, LINEAGE, &[&p3, &p1]);
    s.locked_write("dev/b", &ci, &b1).await.expect(200);
    // A body whose last output is a prefix of a remembered chunk's bytes.
    let v3 = big_state(3, LINEAGE, &[&p1, &p3[..150_001]]);
    s.locked_write("dev/a", &ci, &v3).await.expect(200);
    reads_back(&s, "dev/a", 1, &v1);
    reads_back(&s, "dev/a", 2, &v2);
    reads_back(&s, "dev/b", 1, &b1);
    reads_back(&s, "dev/a", 3, &v3);
    let got = s.get_state("dev/a", &ci).await;
    got.expect(200);
}

/// HOLDS: `/metrics` with a credential that does not authenticate (expired, revoked, empty,
/// a Basic password that is no token, a scheme airlock does not speak) is a 401 and audited,
/// never the anonymous view; a phase-less reader scoped to `dev/*` sees no `prod/*` gauge
/// even through a glob-like stack name.
#[tokio::test]
async fn attacks_tier4_metrics_bad_credentials_are_refused_and_scope_holds() {
    let s = Server::new();
    let ci = s.role_token(Role::Ci);
    for stack in ["dev/app", "prod/db", "devx/app"] {
        s.stack(stack, false);
        let path = format!("/api/v1/stacks/{}/drift", stack.replace('/', "%2F"));
        s.api(
            "POST",
            &path,
            &ci,
            json!({"serial": null, "error": "refresh failed"}),
        )
        .await
        .expect(201);
    }
    let expired = s.token("old", Role::Admin, &[], Some(1));
    let revoked = s.token("gone", Role::Admin, &[], None);
    s.call(
        "DELETE",
        &format!("/api/v1/tokens/{}", revoked.id),
        Auth::Bearer(&s.admin.secret),
        Body::empty(),
    )
    .await
    .expect(200);
    let denied_before = s.denials().await.len();
    let headers = [
        format!("Bearer {}", expired.secret),
        format!("Bearer {}", revoked.secret),
        "Bearer ".to_owned(),
        "Bearer".to_owned(),
        format!("Token {}", s.admin.secret),
        format!("Bearer {} extra", s.admin.secret),
        format!("Bearer {}", s.admin.id),
    ];
    for h in &headers {
        let r = s.call("GET", "/metrics", Auth::Raw(h), Body::empty()).await;
        assert_eq!(r.status, 401, "{h:?}: {r:?}");
        assert!(!r.text().contains("stack="), "{h:?}");
    }
    let r = s
        .call(
            "GET",
            "/metrics",
            Auth::Basic("terraform", "not-a-token"),
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, 401, "{r:?}");
    assert!(
        s.denials().await.len() == denied_before + headers.len() + 1,
        "every refused /metrics credential is audited"
    );

    let dev = s.token("dev", Role::Reader, &["dev/*"], None);
    let r = s
        .call("GET", "/metrics", Auth::Bearer(&dev.secret), Body::empty())
        .await;
    r.expect(200);
    let text = r.text();
    assert!(text.contains("stack=\"dev/app\""), "{text}");
    assert!(
        !text.contains("prod/db") && !text.contains("devx/app"),
        "{text}"
    );
}
