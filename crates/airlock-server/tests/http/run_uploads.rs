//! Hostile run uploads in the streamed format (`run_upload`, what `airlock plan` sends): each is
//! refused with a clear status and message, and no run is stored. The checks after decoding (the
//! binary plan's tie to its JSON, the gate) are the JSON upload's, tested with real plans in
//! `airlock`'s `it::attacks`.

use airlock_core::Role;
use airlock_server::run_upload::{self, Writer, CONTENT_TYPE};
use airlock_server::ServerConfig;
use axum::body::Body;
use axum::http::header;
use serde_json::json;

use crate::support::{request, Auth, Resp, Server, Tok};

const STACK: &str = "uploads";

fn meta() -> Vec<u8> {
    json!({
        "fingerprint": airlock_core::inputs::fingerprint("1.11.4", &[]),
        "inputs": [],
        "terraform_version": "1.11.4",
    })
    .to_string()
    .into_bytes()
}

/// A stream of these parts, finished with `end`.
fn stream(parts: &[(&str, &[u8])]) -> Vec<u8> {
    let mut w = Writer::new(Vec::new()).unwrap();
    for (name, content) in parts {
        w.part(name, content).unwrap();
    }
    w.finish().unwrap()
}

async fn upload(s: &Server, token: &Tok, content_type: &str, body: Vec<u8>) -> Resp {
    s.send(
        request(
            "POST",
            &format!("/api/v1/stacks/{STACK}/runs"),
            Auth::Bearer(&token.secret),
        )
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::from(body))
        .unwrap(),
    )
    .await
}

async fn no_runs(s: &Server) {
    let runs = s.api_get(&format!("/api/v1/runs?stack={STACK}")).await;
    assert_eq!(runs["runs"], json!([]), "a refused upload stored a run");
}

#[tokio::test]
async fn hostile_streamed_uploads_get_a_clear_refusal_and_store_nothing() {
    let s = Server::new();
    s.stack(STACK, false);
    let agent = s.role_token(Role::Agent);
    let m = meta();
    let good_head: &[(&str, &[u8])] = &[(run_upload::META, &m), (run_upload::PLAN, b"not a zip")];
    let full = stream(good_head);
    // The same parts with the plan's SHA-256 altered: find the content and flip a byte of its
    // hash, in the decompressed stream, then compress again.
    let mut raw = zstd::decode_all(&full[..]).unwrap();
    let at = raw.windows(9).position(|w| w == b"not a zip").unwrap() + 9 + 4;
    raw[at] ^= 1;
    let altered = zstd::encode_all(&raw[..], 3).unwrap();
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("text/plain", full.clone(), 400, "not \"text/plain\""),
        (
            CONTENT_TYPE,
            br#"{"plan_b64": ""}"#.to_vec(),
            400,
            "not a valid zstd run upload",
        ),
        (
            "application/json",
            full.clone(),
            400,
            "invalid request body",
        ),
        (
            CONTENT_TYPE,
            full[..full.len() / 2].to_vec(),
            400,
            "truncated",
        ),
        (CONTENT_TYPE, altered, 400, "SHA-256"),
        (
            CONTENT_TYPE,
            stream(&[(run_upload::PLAN, b"x"), (run_upload::META, &m)]),
            400,
            "expected part run.json",
        ),
        (
            CONTENT_TYPE,
            stream(&[(run_upload::META, b"{\"fingerprint\": 1}")]),
            400,
            "invalid request body",
        ),
        (
            CONTENT_TYPE,
            stream(&[(run_upload::META, &m), (run_upload::PLAN, b"")]),
            400,
            "both required",
        ),
        (CONTENT_TYPE, stream(good_head), 400, "zip"),
        (CONTENT_TYPE, Vec::new(), 400, "truncated"),
    ];
    for (content_type, body, status, needle) in cases {
        let r = upload(&s, &agent, content_type, body).await;
        assert_eq!(r.status.as_u16(), status, "{content_type} {needle}: {r:?}");
        assert!(r.message().contains(needle), "{needle}: {}", r.message());
    }
    no_runs(&s).await;
}

#[tokio::test]
async fn a_decompression_bomb_is_refused_as_too_large() {
    let s = Server::with_config(ServerConfig {
        max_agent_run_upload_bytes: 2 * 1024 * 1024,
        ..ServerConfig::default()
    });
    s.stack(STACK, false);
    let agent = s.role_token(Role::Agent);
    // 256 MiB of zeros in a plan part: about 8 KiB on the wire, far under the limit.
    let mut w = Writer::new(Vec::new()).unwrap();
    w.part(run_upload::META, &meta()).unwrap();
    w.part_from(
        run_upload::PLAN,
        &mut std::io::Read::take(std::io::repeat(0), 256 << 20),
    )
    .unwrap();
    let bomb = w.finish().unwrap();
    assert!(bomb.len() < 2 * 1024 * 1024, "{}", bomb.len());
    let r = upload(&s, &agent, CONTENT_TYPE, bomb).await;
    assert_eq!(r.status.as_u16(), 413, "{r:?}");
    assert!(
        r.message().contains("decompresses to more than the 2 MiB"),
        "{}",
        r.message()
    );
    // A compressed body over the limit is refused before it is read, as a JSON one is.
    let noise: Vec<u8> = (0..3 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    let r = upload(&s, &agent, CONTENT_TYPE, noise).await;
    assert_eq!(r.status.as_u16(), 413, "{r:?}");
    no_runs(&s).await;
}

/// A zip with one member, `tfplan`, whose central directory declares it inflates to
/// `declared` bytes (its data is ten bytes: the declared sizes are checked before any member
/// is inflated).
fn zip_declaring(declared: u32) -> Vec<u8> {
    let name = b"tfplan";
    let data = [0u8; 10];
    let mut z = Vec::new();
    z.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
    z.extend_from_slice(&[20, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    z.extend_from_slice(&(data.len() as u32).to_le_bytes());
    z.extend_from_slice(&declared.to_le_bytes());
    z.extend_from_slice(&(name.len() as u16).to_le_bytes());
    z.extend_from_slice(&0u16.to_le_bytes());
    z.extend_from_slice(name);
    z.extend_from_slice(&data);
    let central = z.len() as u32;
    z.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
    z.extend_from_slice(&[20, 0, 20, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    z.extend_from_slice(&(data.len() as u32).to_le_bytes());
    z.extend_from_slice(&declared.to_le_bytes());
    z.extend_from_slice(&(name.len() as u16).to_le_bytes());
    z.extend_from_slice(&[0; 12]);
    z.extend_from_slice(&0u32.to_le_bytes());
    z.extend_from_slice(name);
    let size = z.len() as u32 - central;
    z.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    z.extend_from_slice(&[0, 0, 0, 0, 1, 0, 1, 0]);
    z.extend_from_slice(&size.to_le_bytes());
    z.extend_from_slice(&central.to_le_bytes());
    z.extend_from_slice(&0u16.to_le_bytes());
    z
}

#[tokio::test]
async fn a_plan_file_whose_members_inflate_past_the_uploaders_limit_is_refused_before_inflating() {
    // A zip member inflates ~1000x: a plan file well under the upload limit could make the
    // server hold gigabytes (a configuration snapshot of 250 members of 256 MiB each).
    let s = Server::with_config(ServerConfig {
        max_agent_run_upload_bytes: 2 * 1024 * 1024,
        ..ServerConfig::default()
    });
    s.stack(STACK, false);
    let agent = s.role_token(Role::Agent);
    let plan = zip_declaring(3 * 1024 * 1024);
    let body = stream(&[
        (run_upload::META, &meta()),
        (run_upload::PLAN, &plan),
        (run_upload::PLAN_JSON, b"{}"),
    ]);
    let r = upload(&s, &agent, CONTENT_TYPE, body).await;
    assert_eq!(r.status.as_u16(), 400, "{r:?}");
    assert!(
        r.message()
            .contains("inflate to 3 MB, more than the 2 MB accepted"),
        "{}",
        r.message()
    );
    no_runs(&s).await;
}

#[tokio::test]
async fn an_agents_user_plans_at_most_sixty_runs_an_hour() {
    use airlock_store::{NewAudit, RunRecord};
    const AGENT_RUNS_PER_HOUR: u64 = 60;
    let s = Server::new();
    s.stack(STACK, false);
    let agent = s.role_token(Role::Agent);
    let now = airlock_store::now_ms();
    // The runs its user planned in the last hour (one of them just over an hour ago).
    for i in 0..=AGENT_RUNS_PER_HOUR {
        let created = if i == 0 { now - 3_700_000 } else { now - 1000 };
        let run: RunRecord = serde_json::from_value(json!({
            "id": format!("run_{i:016x}"), "stack": STACK, "status": "needs_approval",
            "author": agent.id, "author_token": agent.id, "author_user": agent.id,
            "author_role": "agent", "created_at": created, "updated_at": created,
            "expires_at": now + 3_600_000, "fingerprint": "f", "terraform_version": "1.11.4",
            "planned_lineage": null, "planned_serial": null, "git_head": null, "git_base": null,
            "plan_sha256": "p", "config_sha256": null, "decision": "review", "report": {},
            "destroys": [], "required_approvals": 1, "approvals": [], "rejection": null,
            "applied_by": null, "apply_token": null, "apply_started_at": null,
            "finished_at": null, "note": null
        }))
        .unwrap();
        s.store
            .create_run(
                &run,
                &[],
                NewAudit::ok("test", "run.create", Some(STACK), json!({})),
            )
            .unwrap();
    }
    let r = upload(&s, &agent, CONTENT_TYPE, b"anything".to_vec()).await;
    assert_eq!(r.status.as_u16(), 429, "{r:?}");
    assert!(
        r.message().contains("planned 60 runs in the last hour"),
        "{}",
        r.message()
    );
    // Another agent's user, and a person, are not held back (their garbage is refused as such).
    for token in [s.role_token(Role::Agent), s.role_token(Role::Approver)] {
        let r = upload(&s, &token, CONTENT_TYPE, b"anything".to_vec()).await;
        assert_eq!(r.status.as_u16(), 400, "{r:?}");
    }
}
