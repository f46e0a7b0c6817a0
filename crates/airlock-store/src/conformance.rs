//! The store conformance suite: behaviour every engine must have, run by each engine's tests
//! against a fresh, empty store. Panics (it is test code) with the failing check's name.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use airlock_core::audit::{verify_chain, GENESIS};
use airlock_core::refusal::{Refusal, RefusalKind};
use airlock_core::Role;
use serde_json::json;

use crate::*;

fn audit(action: &str) -> NewAudit {
    NewAudit::ok("test", action, None, json!({}))
}

fn state(serial: u64, lineage: &str, n: usize) -> Vec<u8> {
    let resources: Vec<_> = (0..n)
        .map(|i| json!({"mode":"managed","type":"terraform_data","name":format!("r{i}"),"provider":"p","instances":[{"attributes":{"id":format!("{i}")}}]}))
        .collect();
    serde_json::to_vec_pretty(&json!({"version":4,"terraform_version":"1.11.4","serial":serial,"lineage":lineage,"outputs":{},"resources":resources,"check_results":null})).unwrap()
}

fn attempt(body: Vec<u8>, serial: u64) -> WriteAttempt {
    WriteAttempt { body, serial, lineage: "lin".into(), author: "t".into(), lock_id: None, run_id: None, reason: None, restored_from: None }
}

fn store_it(_: &WriteContext<'_>) -> Result<WriteDecision, Refusal> {
    Ok(WriteDecision::Store { consume_grants: vec![], audit: audit("state.write") })
}

/// Every check, in order. Each gets its own stacks, so they may share one store.
pub fn run_all(store: &Arc<dyn Store>) {
    stacks(store.as_ref());
    tokens(store.as_ref());
    locks(store.as_ref());
    writes_and_history(store.as_ref());
    grants(store.as_ref());
    big_history_dedups(store.as_ref());
    concurrent_locks_have_one_winner(store);
    concurrent_writes_are_serialized(store);
    audit_chain_verifies(store.as_ref());
}

pub fn stacks(s: &dyn Store) {
    let st = s.create_stack("conf/stacks", true, StackSettings::defaults(true), audit("stack.create")).unwrap();
    assert!(st.production);
    assert_eq!(st.settings.direct_writes, vec![Role::Admin]);
    assert!(matches!(s.create_stack("conf/stacks", false, StackSettings::default(), audit("x")), Err(StoreError::Conflict(_))));
    assert_eq!(s.stack("conf/stacks").unwrap().unwrap().name, "conf/stacks");
    assert!(s.stack("conf/none").unwrap().is_none());
    let mut settings = st.settings.clone();
    settings.protect_types.push("aws_s3_bucket".into());
    let updated = s.update_stack_settings("conf/stacks", settings, audit("stack.settings")).unwrap();
    assert_eq!(updated.settings.protect_types, ["aws_s3_bucket"]);
    assert!(s.list_stacks().unwrap().iter().any(|x| x.name == "conf/stacks"));
    assert!(matches!(s.current_version("conf/none"), Err(StoreError::NotFound(_))));
}

pub fn tokens(s: &dyn Store) {
    let hash = [7u8; 32];
    let t = s
        .create_token(
            NewToken { id: "tok-conf".into(), secret_hash: hash, name: "alice".into(), role: Role::Approver, stacks: vec!["prod/*".into()], expires_at: Some(now_ms() + 60_000), created_by: "test".into(), run_id: None },
            audit("token.create"),
        )
        .unwrap();
    assert!(s.token_count().unwrap() >= 1);
    let found = s.token_by_hash(&hash).unwrap().unwrap();
    assert_eq!(found, t);
    assert!(s.token_by_hash(&[8u8; 32]).unwrap().is_none());
    let revoked = s.revoke_token("tok-conf", audit("token.revoke")).unwrap();
    assert!(revoked.revoked_at.is_some());
    assert!(s.token_by_hash(&hash).unwrap().unwrap().revoked_at.is_some());
    assert!(matches!(s.revoke_token("nope", audit("x")), Err(StoreError::NotFound(_))));
    assert!(s.list_tokens().unwrap().iter().any(|x| x.id == "tok-conf"));
}

fn new_lock(id: &str) -> NewLock {
    NewLock { id: id.into(), info: format!(r#"{{"ID":"{id}"}}"#).into_bytes(), operation: "OperationTypeApply".into(), owner_token: "t".into(), owner: "alice".into() }
}

pub fn locks(s: &dyn Store) {
    s.create_stack("conf/locks", false, StackSettings::default(), audit("stack.create")).unwrap();
    assert_eq!(s.lock("conf/locks", new_lock("a"), audit("lock")).unwrap(), LockOutcome::Acquired);
    match s.lock("conf/locks", new_lock("b"), audit("lock")).unwrap() {
        LockOutcome::Held(h) => {
            assert_eq!(h.id, "a");
            assert_eq!(h.info, br#"{"ID":"a"}"#);
        }
        other => panic!("second lock: {other:?}"),
    }
    assert!(matches!(s.unlock("conf/locks", UnlockBy::Id("b".into()), audit("unlock")).unwrap(), UnlockOutcome::Mismatch(_)));
    assert!(matches!(s.unlock("conf/locks", UnlockBy::Id("a".into()), audit("unlock")).unwrap(), UnlockOutcome::Released(_)));
    assert_eq!(s.unlock("conf/locks", UnlockBy::Force, audit("unlock")).unwrap(), UnlockOutcome::NotLocked);
    s.lock("conf/locks", new_lock("c"), audit("lock")).unwrap();
    assert!(matches!(s.unlock("conf/locks", UnlockBy::Force, audit("unlock")).unwrap(), UnlockOutcome::Released(_)));
    assert!(s.current_lock("conf/locks").unwrap().is_none());
    assert!(matches!(s.lock("conf/none", new_lock("x"), audit("lock")), Err(StoreError::NotFound(_))));
}

pub fn writes_and_history(s: &dyn Store) {
    let stack = "conf/writes";
    s.create_stack(stack, false, StackSettings::default(), audit("stack.create")).unwrap();
    let b1 = state(1, "lin", 3);
    let Ok(WriteResult::Stored(v1)) = s.write_state(stack, attempt(b1.clone(), 1), &mut store_it) else { panic!("first write") };
    assert_eq!(v1.serial, 1);
    assert_eq!(s.stack(stack).unwrap().unwrap().lineage.as_deref(), Some("lin"));
    // The firewall sees the current version and can load its bytes.
    let b2 = state(2, "lin", 2);
    let mut seen = None;
    let r = s
        .write_state(stack, attempt(b2.clone(), 2), &mut |ctx: &WriteContext<'_>| {
            seen = Some((ctx.current.map(|v| v.serial), (ctx.load_current)().unwrap()));
            store_it(ctx)
        })
        .unwrap();
    assert!(matches!(r, WriteResult::Stored(_)));
    assert_eq!(seen, Some((Some(1), b1.clone())));
    // Refusals and no-ops store nothing.
    let r = s.write_state(stack, attempt(state(3, "lin", 1), 3), &mut |_: &WriteContext<'_>| Err(Refusal::new(RefusalKind::Forbidden, "no"))).unwrap();
    assert!(matches!(r, WriteResult::Refused(_)));
    let r = s.write_state(stack, attempt(b2.clone(), 2), &mut |_: &WriteContext<'_>| Ok(WriteDecision::Unchanged)).unwrap();
    assert!(matches!(r, WriteResult::Unchanged));
    // A duplicate serial is a conflict, never an overwrite.
    assert!(matches!(s.write_state(stack, attempt(state(2, "lin", 9), 2), &mut store_it), Err(StoreError::Conflict(_))));
    let history = s.versions(stack).unwrap();
    assert_eq!(history.iter().map(|v| v.serial).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(s.current_version(stack).unwrap().unwrap().serial, 2);
    assert_eq!(s.version_bytes(stack, 1).unwrap(), b1);
    assert_eq!(s.version_bytes(stack, 2).unwrap(), b2);
    assert!(matches!(s.version_bytes(stack, 3), Err(StoreError::NotFound(_))));
    assert_eq!(s.version(stack, 1).unwrap().unwrap().sha256, hex::encode(crate::blob::sha256(&b1)));
    let report = s.verify(Some(stack)).unwrap();
    assert_eq!((report.checked, report.failures.len()), (2, 0));
}

pub fn grants(s: &dyn Store) {
    let stack = "conf/grants";
    s.create_stack(stack, false, StackSettings::default(), audit("stack.create")).unwrap();
    let g = s
        .create_grant(stack, NewGrant { id: "g1".into(), addresses: vec!["aws_db_instance.main".into()], reason: "r".into(), created_by: "a".into(), expires_at: now_ms() + 60_000, run_id: None }, audit("grant.create"))
        .unwrap();
    s.create_grant(stack, NewGrant { id: "g-expired".into(), addresses: vec!["x".into()], reason: "r".into(), created_by: "a".into(), expires_at: now_ms() - 1, run_id: None }, audit("grant.create")).unwrap();
    let mut active = Vec::new();
    s.write_state(stack, attempt(state(1, "lin", 1), 1), &mut |ctx: &WriteContext<'_>| {
        active = ctx.grants.iter().map(|g| g.id.clone()).collect();
        Ok(WriteDecision::Store { consume_grants: vec![g.id.clone()], audit: audit("state.write") })
    })
    .unwrap();
    assert_eq!(active, ["g1"], "only unexpired, unconsumed grants are offered");
    let after = s.grants(stack).unwrap();
    assert!(after.iter().find(|x| x.id == "g1").unwrap().consumed_at.is_some());
    s.write_state(stack, attempt(state(2, "lin", 1), 2), &mut |ctx: &WriteContext<'_>| {
        assert!(ctx.grants.is_empty(), "a consumed grant is single use");
        store_it(ctx)
    })
    .unwrap();
}

pub fn big_history_dedups(s: &dyn Store) {
    let stack = "conf/dedup";
    s.create_stack(stack, false, StackSettings::default(), audit("stack.create")).unwrap();
    let before = s.stored_state_bytes().unwrap();
    let base = state(1, "lin", 3000);
    let raw = base.len() as u64;
    for serial in 1..=10u64 {
        let body = String::from_utf8(state(serial, "lin", 3000)).unwrap().replace("\"id\": \"1500\"", &format!("\"id\": \"changed-{serial}\"")).into_bytes();
        assert!(matches!(s.write_state(stack, attempt(body, serial), &mut store_it).unwrap(), WriteResult::Stored(_)));
    }
    let grown = s.stored_state_bytes().unwrap() - before;
    assert!(grown < raw, "10 versions of a {raw}-byte state took {grown} bytes");
}

pub fn concurrent_locks_have_one_winner(s: &Arc<dyn Store>) {
    let stack = "conf/race";
    s.create_stack(stack, false, StackSettings::default(), audit("stack.create")).unwrap();
    for round in 0..5 {
        let wins = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let (s, wins) = (Arc::clone(s), Arc::clone(&wins));
                std::thread::spawn(move || {
                    if s.lock(stack, new_lock(&format!("r{round}-{i}")), audit("lock")).unwrap() == LockOutcome::Acquired {
                        wins.fetch_add(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(wins.load(Ordering::SeqCst), 1, "round {round}");
        s.unlock(stack, UnlockBy::Force, audit("unlock")).unwrap();
    }
}

pub fn concurrent_writes_are_serialized(s: &Arc<dyn Store>) {
    let stack = "conf/serial";
    s.create_stack(stack, false, StackSettings::default(), audit("stack.create")).unwrap();
    // Each writer stores current+1 as judged inside the transaction: no serial is lost or doubled.
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let s = Arc::clone(s);
            std::thread::spawn(move || {
                for _ in 0..5 {
                    let next = s.current_version(stack).unwrap().map_or(1, |v| v.serial + 1);
                    let _ = s.write_state(stack, attempt(state(next, "lin", 1), next), &mut |ctx: &WriteContext<'_>| {
                        if ctx.current.map_or(0, |v| v.serial) >= next {
                            return Err(Refusal::new(RefusalKind::Conflict, "stale"));
                        }
                        store_it(ctx)
                    });
                }
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
    let serials: Vec<u64> = s.versions(stack).unwrap().iter().map(|v| v.serial).collect();
    let expected: Vec<u64> = (1..=serials.len() as u64).collect();
    assert_eq!(serials, expected);
}

pub fn audit_chain_verifies(s: &dyn Store) {
    s.append_audit(NewAudit::denied("test", "denied", Some("conf/x"), json!({"why": "test"}))).unwrap();
    let events = s.audit_events(0, 100_000).unwrap();
    assert!(events.len() > 10);
    verify_chain(&events, GENESIS.to_owned()).unwrap();
    let page = s.audit_events(3, 2).unwrap();
    assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), [4, 5]);
}
