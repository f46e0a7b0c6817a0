//! The token that minted a token is a column (`tokens.minted_by`, migration 0019) that the
//! server sets from the authenticated caller, and tokens a scoped admin minted before the
//! scoped-mint rule for people beyond its scope are revoked when the server starts
//! (`Store::revoke_unsafe_mints`). Each test is an attack, with the real binary.

use serde_json::{json, Value};

use crate::support::*;

fn token_named(s: &TestServer, name: &str) -> Value {
    s.token_where("name", name)
}

/// `token create --format json` as `by`: (id, secret).
fn mint(s: &TestServer, by: &str, args: &[&str]) -> (String, String) {
    let mut all = vec!["token", "create", "--format", "json"];
    all.extend_from_slice(args);
    let v: Value = serde_json::from_str(&s.ok(by, &all)).unwrap();
    (
        v["token"]["id"].as_str().unwrap().to_owned(),
        v["secret"].as_str().unwrap().to_owned(),
    )
}

/// A scoped admin whose token's name ends in another token's ` (tok_…)` still mints as
/// itself: the minter is the authenticated caller, not text (so it cannot borrow the root's
/// reach to mint for a prod person); and a request body naming a minter or a creator is
/// refused, whatever it names.
#[test]
fn a_token_name_or_a_request_body_cannot_choose_the_minter() {
    let s = TestServer::start();
    let root = token_named(&s, "bootstrap-admin")["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for u in ["carol", "alice", "erin"] {
        s.ok(&s.admin, &["user", "create", u]);
    }
    let forged_name = format!("root ({root})");
    let (carol_id, carol) = mint(
        &s,
        &s.admin,
        &[
            "--name",
            &forged_name,
            "--role",
            "admin",
            "--user",
            "carol",
            "--stack",
            "dev/*",
        ],
    );
    mint(
        &s,
        &s.admin,
        &[
            "--name",
            "alice-prod",
            "--role",
            "approver",
            "--user",
            "alice",
            "--stack",
            "prod/*",
        ],
    );
    // The scoped admin cannot mint for alice, a prod person, though its display text ends in
    // `(tok_root) (tok_carol)`.
    let out = s.fails(
        &carol,
        &[
            "token",
            "create",
            "--name",
            "alice-dev",
            "--role",
            "approver",
            "--user",
            "alice",
            "--stack",
            "dev/*",
        ],
    );
    assert!(out.contains("only an admin token for all stacks"), "{out}");
    // Within its scope, the minter it records is itself.
    mint(
        &s,
        &carol,
        &[
            "--name", "erin-dev", "--role", "approver", "--user", "erin", "--stack", "dev/*",
        ],
    );
    let erin = token_named(&s, "erin-dev");
    assert_eq!(erin["minted_by"], json!(carol_id), "{erin}");
    assert_eq!(
        erin["created_by"],
        json!(format!("{forged_name} ({carol_id})"))
    );
    assert_eq!(token_named(&s, "alice-prod")["minted_by"], json!(root));
    assert_eq!(token_named(&s, "bootstrap-admin")["minted_by"], Value::Null);
    // A body naming the minter (the root) or the creator is refused, and mints nothing.
    for field in ["minted_by", "created_by"] {
        let body = json!({"name": "alice-dev2", "role": "approver", "user": "alice",
                          "stacks": ["dev/*"], field: root});
        let (status, answer) = raw(
            "POST",
            &format!("{}/api/v1/tokens", s.url),
            &carol,
            body.to_string().as_bytes(),
        );
        assert_eq!(status, 400, "{field}: {answer}");
        assert!(answer.contains(field), "{answer}");
    }
    assert!(s.tokens().iter().all(|t| t["name"] != "alice-dev2"));
}

/// The tokens of a server from before the scoped-mint rule (id, user, name, role, stacks,
/// created_by), as it stored them: the minter only in `created_by`.
type TokenRow = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
);
const PRE_RULE: [TokenRow; 4] = [
    (
        "tok_root",
        "admin",
        "bootstrap-admin",
        "admin",
        "[]",
        "system",
    ),
    (
        "tok_carol",
        "carol",
        "carol-dev",
        "admin",
        r#"["dev/*"]"#,
        "bootstrap-admin (tok_root)",
    ),
    (
        "tok_alice",
        "alice",
        "alice-prod",
        "approver",
        r#"["prod/*"]"#,
        "bootstrap-admin (tok_root)",
    ),
    (
        "tok_imp",
        "alice",
        "alice-dev",
        "approver",
        r#"["dev/*"]"#,
        "carol-dev (tok_carol)",
    ),
];

/// A database as a server from before the scoped-mint rule left it: the root admin, carol's
/// admin token scoped to `dev/*`, alice a prod approver, and `tok_imp`, a `dev/*` approver
/// token carol's scoped admin minted in alice's name (allowed then): whoever holds carol's
/// token could approve as alice. The server, upgraded, revokes it at start and says so;
/// `token list` gives the reason, the audit names token, user and minter, alice's prod token
/// keeps working, and the next start revokes nothing.
#[test]
fn a_token_minted_before_the_scoped_mint_rule_for_a_wider_person_is_revoked_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let conn = rusqlite::Connection::open(data.join("airlock.db")).unwrap();
    conn.execute_batch(&airlock_store::conformance::migrations_before("sqlite", 19))
        .unwrap();
    let secrets: Vec<_> = (0..4).map(|_| airlock_server::tokens::generate()).collect();
    for u in ["admin", "carol", "alice"] {
        conn.execute(
            "INSERT INTO users (name, created_at, created_by) VALUES (?1, 1, 'system')",
            [u],
        )
        .unwrap();
    }
    for (i, (id, user, name, role, stacks, by)) in PRE_RULE.iter().enumerate() {
        conn.execute(
            "INSERT INTO tokens (id, secret_hash, name, role, stacks, created_at, created_by, user_name, read_stacks) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, '[]')",
            rusqlite::params![id, &secrets[i].hash[..], name, role, stacks, 1000 + i as i64, by, user],
        )
        .unwrap();
    }
    drop(conn);
    let admin = secrets[0].secret.clone();
    let (alice, imp) = (secrets[2].secret.clone(), secrets[3].secret.clone());

    let mut s = TestServer::start_on(&Backing::Dir(data.clone()), Some(&admin), &[], &[]);
    let warnings: Vec<&String> = s
        .started
        .iter()
        .filter(|l| l.starts_with("warning: revoked token"))
        .collect();
    assert_eq!(warnings.len(), 1, "{:?}", s.started);
    assert!(
        warnings[0].contains("tok_imp")
            && warnings[0].contains("user alice")
            && warnings[0].contains("minted by tok_carol"),
        "{}",
        warnings[0]
    );
    let imp_row = token_named(&s, "alice-dev");
    assert_eq!(imp_row["minted_by"], "tok_carol");
    assert!(!imp_row["revoked_at"].is_null());
    let list = s.ok(&admin, &["token", "list"]);
    assert!(
        list.contains("tok_imp was revoked by the server: minted before the scoped-mint rule"),
        "{list}"
    );
    // The impersonating token no longer authenticates; alice's own still does.
    let out = s.fails(&imp, &["stack", "list"]);
    assert!(out.contains("revoked") || out.contains("401"), "{out}");
    s.ok(&alice, &["stack", "list"]);
    let events = s.audit_of(&admin, "token.revoke_unsafe_mint");
    assert_eq!(events.len(), 1, "{events:?}");
    let d = &events[0]["detail"];
    assert_eq!(
        (&d["token"], &d["user"], &d["minted_by"]),
        (&json!("tok_imp"), &json!("alice"), &json!("tok_carol"))
    );
    assert!(d["reason"].as_str().unwrap().contains("tok_alice"), "{d}");
    s.kill();

    // Once judged, nothing more at the next start.
    let s = TestServer::start_on(&Backing::Dir(data), Some(&admin), &[], &[]);
    assert!(
        s.started
            .iter()
            .all(|l| !l.starts_with("warning: revoked token")),
        "{:?}",
        s.started
    );
    let events = s.audit_of(&admin, "token.revoke_unsafe_mint");
    assert_eq!(events.len(), 1);
}

/// A backup carries each token's minter; one edited to drop it reads as an older backup
/// (derived from `created_by`, as migration 0019 derives it), and one edited to change it, to
/// rewrite `created_by` with it, to leave the minter out, or to give the token another user is
/// refused by verify and import.
#[test]
fn an_edited_backup_cannot_hide_who_minted_a_token() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut s = TestServer::start_on(&Backing::Dir(data.clone()), None, &[], &[]);
    let admin = s.admin.clone();
    let root = token_named(&s, "bootstrap-admin")["id"]
        .as_str()
        .unwrap()
        .to_owned();
    s.ok(&admin, &["user", "create", "carol"]);
    s.ok(&admin, &["user", "create", "erin"]);
    let (carol_id, carol) = mint(
        &s,
        &admin,
        &[
            "--name",
            "carol-dev",
            "--role",
            "admin",
            "--user",
            "carol",
            "--stack",
            "dev/*",
        ],
    );
    let (erin_id, _) = mint(
        &s,
        &carol,
        &[
            "--name", "erin-dev", "--role", "approver", "--user", "erin", "--stack", "dev/*",
        ],
    );
    s.kill();
    let bk = tmp.path().join("bk");
    let cli = |args: &[&str]| {
        let out = offline_cli(args, &[]);
        (out.status.success(), text(&out))
    };
    let path = |p: &std::path::Path| p.to_str().unwrap().to_owned();
    let (ok, out) = cli(&["backup", "export", &path(&bk), "--data-dir", &path(&data)]);
    assert!(ok, "{out}");
    let written: Value =
        serde_json::from_slice(&std::fs::read(bk.join("tokens.json")).unwrap()).unwrap();
    let erin = written
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == erin_id.as_str())
        .unwrap();
    assert_eq!(erin["minted_by"], json!(carol_id));
    let original = std::fs::read(bk.join("tokens.json")).unwrap();
    let manifest = std::fs::read(bk.join("manifest.json")).unwrap();
    let restore = || {
        std::fs::write(bk.join("tokens.json"), &original).unwrap();
        std::fs::write(bk.join("manifest.json"), &manifest).unwrap();
    };
    let edit_erin = |edit: &dyn Fn(&mut Value)| {
        forge_backup_file(&bk, "tokens.json", |v| {
            for t in v.as_array_mut().unwrap() {
                if t["id"] == erin_id.as_str() {
                    edit(t);
                }
            }
        });
    };
    let refused = |what: &str, why: &str| {
        let (ok, out) = cli(&["backup", "verify", &path(&bk)]);
        assert!(!ok && out.contains(why), "{what}: {out}");
        let into = tmp.path().join(format!("x-{}", what.replace(' ', "-")));
        let (ok, out) = cli(&["backup", "import", &path(&bk), "--data-dir", &path(&into)]);
        assert!(
            !ok && out.contains("does not verify") && out.contains(why),
            "{what}: {out}"
        );
        restore();
    };
    edit_erin(&|t| t["minted_by"] = Value::Null);
    refused("minter erased", "disagrees with its created_by");
    edit_erin(&|t| t["minted_by"] = json!(root));
    refused("minter moved to the root", "disagrees with its created_by");
    edit_erin(&|t| {
        t["minted_by"] = Value::Null;
        t["created_by"] = json!("offline (uid 0 on host)");
    });
    refused("both rewritten", "audit event that created it");
    // Erin's approver token given to carol: carol's own approval and erin's token's would count
    // as two people's.
    edit_erin(&|t| t["user"] = json!("carol"));
    refused(
        "token moved to another user",
        "a backup cannot change whose a token is",
    );
    forge_backup_file(&bk, "tokens.json", |v| {
        v.as_array_mut()
            .unwrap()
            .retain(|t| t["id"] != carol_id.as_str());
    });
    let mpath = bk.join("manifest.json");
    let mut m: Value = serde_json::from_slice(&std::fs::read(&mpath).unwrap()).unwrap();
    m["summary"]["tokens"] = json!(m["summary"]["tokens"].as_u64().unwrap() - 1);
    std::fs::write(&mpath, m.to_string()).unwrap();
    refused("minter left out", "is not another token of tokens.json");
    // Dropped: read as a backup from before the column, the minter derived from created_by.
    forge_backup_file(&bk, "tokens.json", |v| {
        for t in v.as_array_mut().unwrap() {
            t.as_object_mut().unwrap().remove("minted_by");
        }
    });
    let (ok, out) = cli(&["backup", "verify", &path(&bk)]);
    assert!(ok, "{out}");
    let restored = tmp.path().join("restored");
    let (ok, out) = cli(&[
        "backup",
        "import",
        &path(&bk),
        "--data-dir",
        &path(&restored),
    ]);
    assert!(ok, "{out}");
    let s = TestServer::start_on(&Backing::Dir(restored), Some(&admin), &[], &[]);
    assert_eq!(token_named(&s, "erin-dev")["minted_by"], json!(carol_id));
    assert_eq!(token_named(&s, "carol-dev")["minted_by"], json!(root));
    // And the rule judges by it: erin holds a token minted through carol's scoped admin, so
    // even the root gives her nothing beyond dev/* until it is revoked.
    let out = s.fails(
        &admin,
        &[
            "token",
            "create",
            "--name",
            "erin-prod",
            "--role",
            "approver",
            "--user",
            "erin",
            "--stack",
            "prod/*",
        ],
    );
    assert!(out.contains(&format!("revoke {erin_id} first")), "{out}");
}

/// The same database on PostgreSQL, and two replicas upgrading it at once: the token is
/// revoked once, by one of them (one warning line between the two, one audit event).
#[test]
fn two_replicas_starting_at_once_revoke_a_pre_rule_token_once() {
    let db = TestDatabase::new("preminters");
    let secrets: Vec<_> = (0..4).map(|_| airlock_server::tokens::generate()).collect();
    let mut sql = airlock_store::conformance::migrations_before("postgres", 19);
    for u in ["admin", "carol", "alice"] {
        sql.push_str(&format!(
            "INSERT INTO users (name, created_at, created_by) VALUES ('{u}', 1, 'system');\n"
        ));
    }
    for (i, (id, user, name, role, stacks, by)) in PRE_RULE.iter().enumerate() {
        let hash: String = secrets[i].hash.iter().map(|b| format!("{b:02x}")).collect();
        sql.push_str(&format!(
            "INSERT INTO tokens (id, secret_hash, name, role, stacks, created_at, created_by, user_name, read_stacks) VALUES ('{id}', '\\x{hash}'::bytea, '{name}', '{role}', '{stacks}', {}, '{by}', '{user}', '[]');\n",
            1000 + i
        ));
    }
    db.sql(&sql);
    let admin = secrets[0].secret.clone();
    let replicas: Vec<_> = (0..2)
        .map(|_| {
            let (url, admin) = (db.url.clone(), admin.clone());
            std::thread::spawn(move || {
                TestServer::start_on(&Backing::Url(url), Some(&admin), &[], &[])
            })
        })
        .collect();
    let replicas: Vec<TestServer> = replicas.into_iter().map(|r| r.join().unwrap()).collect();
    let warnings: Vec<&String> = replicas
        .iter()
        .flat_map(|s| &s.started)
        .filter(|l| l.starts_with("warning: revoked token"))
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("tok_imp"), "{}", warnings[0]);
    for s in &replicas {
        let events = s.audit_of(&admin, "token.revoke_unsafe_mint");
        assert_eq!(events.len(), 1);
        s.fails(&secrets[3].secret, &["stack", "list"]);
        s.ok(&secrets[2].secret, &["stack", "list"]);
    }
}
