//! A state write reads only what changed: the resource elements a write shares byte for byte
//! with the stack's previous write through this server are taken from that write's summary
//! (`airlock_core::state::ParsedState`). What is stored, shown and judged by the firewall is
//! what a full read gives; a server that did not read the previous version reads in full.

use airlock_core::Role;
use serde_json::json;

use crate::support::*;

/// `airlock_state_elements_reused_total` of this server.
async fn reused(s: &Server) -> u64 {
    let r = s
        .call("GET", "/metrics", Auth::None, axum::body::Body::empty())
        .await;
    r.expect(200);
    r.text()
        .lines()
        .find_map(|l| l.strip_prefix("airlock_state_elements_reused_total "))
        .expect("the counter is exported")
        .parse()
        .expect("a number")
}

/// A pretty-printed state of `terraform_data` resources with these names, the `changed` ones
/// with one more attribute.
fn body(serial: u64, names: &[String], changed: &[&str]) -> Vec<u8> {
    let mut text = String::from_utf8(state(
        serial,
        LINEAGE,
        &names
            .iter()
            .map(|n| ("terraform_data", n.as_str()))
            .collect::<Vec<_>>(),
    ))
    .unwrap();
    for c in changed {
        let id = format!("\"terraform_data-{c}\"");
        text = text.replacen(&id, &format!("{id}, \"input\": 2"), 1);
    }
    text.into_bytes()
}

fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("r{i}")).collect()
}

/// The addresses and ids `GET /versions/{serial}` shows.
async fn shown(s: &Server, serial: u64) -> Vec<String> {
    let v = s
        .api_get(&format!("/api/v1/stacks/dev%2Fapp/versions/{serial}"))
        .await;
    v["instances"]
        .as_array()
        .unwrap_or_else(|| panic!("no instances in {v}"))
        .iter()
        .map(|i| i["address"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_write_after_a_write_reuses_its_unchanged_elements() {
    let s = Server::new();
    s.stack("dev/app", false);
    let all = names(30);
    s.locked_write("dev/app", &s.admin, &body(1, &all, &[]))
        .await
        .expect(200);
    assert_eq!(reused(&s).await, 0, "nothing to reuse on a first write");
    // One changed: 29 reused.
    s.locked_write("dev/app", &s.admin, &body(2, &all, &["r7"]))
        .await
        .expect(200);
    assert_eq!(reused(&s).await, 29);
    // One removed and one added (at the end), r7 as version 2 has it: the 29 others reused,
    // and the summary stored for the version is a full read's.
    let mut next = all.clone();
    next.remove(3);
    next.push("z".into());
    let third = body(3, &next, &["r7"]);
    s.locked_write("dev/app", &s.admin, &third)
        .await
        .expect(200);
    assert_eq!(reused(&s).await, 29 + 29);
    let full = airlock_core::state::StateSummary::parse(&third).unwrap();
    let want: Vec<String> = full.instances.iter().map(|i| i.address.clone()).collect();
    assert_eq!(shown(&s, 3).await, want);
    assert_eq!(s.get_state("dev/app", &s.admin).await.body, third);
    // The attribute diff between the versions reads the bodies at the summaries' spans.
    let d = s.api_get("/api/v1/stacks/dev%2Fapp/diff?from=2&to=3").await;
    assert_eq!(
        d["diff"],
        json!({"added": ["terraform_data.z"], "removed": ["terraform_data.r3"], "changed": [], "outputs_changed": []})
    );
}

#[tokio::test]
async fn a_write_after_another_servers_write_reads_in_full_and_stays_exact() {
    let a = Server::new();
    a.stack("dev/app", false);
    let all = names(10);
    a.locked_write("dev/app", &a.admin, &body(1, &all, &[]))
        .await
        .expect(200);
    // Another replica (or this one restarted): it did not read version 1, so it reads the
    // next write in full.
    let b = a.replica();
    b.locked_write("dev/app", &b.admin, &body(2, &all, &["r1"]))
        .await
        .expect(200);
    assert_eq!(reused(&b).await, 0);
    b.locked_write("dev/app", &b.admin, &body(3, &all, &["r1", "r2"]))
        .await
        .expect(200);
    assert_eq!(reused(&b).await, 9);
    // `a` still holds version 1: it reuses from it (exact against any body it read), and the
    // firewall judges against the stored current version 3, not against version 1.
    a.protect_db().await;
    let mut fewer = all.clone();
    fewer.remove(2);
    let r = a
        .locked_write("dev/app", &a.admin, &body(4, &fewer, &["r1"]))
        .await;
    r.expect(403);
    assert!(r.message().contains("terraform_data.r2"), "{}", r.message());
    assert_eq!(reused(&a).await, 8, "read reusing version 1");
    assert_eq!(a.versions("dev/app"), [1, 2, 3]);
    // Version 3's r1 and r2 kept, as written by `b`: allowed, and shown as written.
    a.locked_write("dev/app", &a.admin, &body(4, &all, &["r1", "r2"]))
        .await
        .expect(200);
    assert_eq!(shown(&a, 4).await.len(), 10);
}

/// HOLDS: the firewall refuses a write whose changed element drops or replaces a protected
/// object while every other element is reused.
#[tokio::test]
async fn the_firewall_refuses_what_the_changed_element_removes() {
    let s = Server::new();
    s.stack("dev/app", false);
    s.protect_db().await;
    let all = names(12);
    s.locked_write("dev/app", &s.admin, &body(1, &all, &[]))
        .await
        .expect(200);
    let before = reused(&s).await;
    // Renamed (the old address gone), replaced (another id), dropped.
    let mut renamed = all.clone();
    renamed[5] = "r5b".into();
    let mut dropped = all.clone();
    dropped.remove(5);
    for (what, new) in [
        ("renamed", body(2, &renamed, &[])),
        (
            "replaced",
            String::from_utf8(body(2, &all, &[]))
                .unwrap()
                .replace("\"terraform_data-r5\"", "\"terraform_data-r5-new\"")
                .into_bytes(),
        ),
        ("dropped", body(2, &dropped, &[])),
    ] {
        let r = s.locked_write("dev/app", &s.admin, &new).await;
        r.expect(403);
        assert!(
            r.message().contains("terraform_data.r5"),
            "{what}: {}",
            r.message()
        );
    }
    assert_eq!(
        reused(&s).await - before,
        11 * 3,
        "each refused write reused 11"
    );
    assert_eq!(s.versions("dev/app"), [1]);
    // A write that keeps the protected objects passes, and an agent gains nothing.
    s.locked_write("dev/app", &s.admin, &body(2, &all, &[]))
        .await
        .expect(200);
    let agent = s.role_token(Role::Agent);
    let r = s.write("dev/app", &agent, None, &body(3, &all, &[])).await;
    assert_ne!(r.status.as_u16(), 200);
}

impl Server {
    /// Protects every `terraform_data` resource of `dev/app`.
    async fn protect_db(&self) {
        self.api(
            "POST",
            "/api/v1/stacks/dev%2Fapp/protect",
            &self.admin,
            json!({"types": ["terraform_data"]}),
        )
        .await
        .expect(200);
    }
}
