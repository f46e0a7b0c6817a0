//! Runs the store conformance suite against every engine.

use std::sync::Arc;

use airlock_store::{conformance, SqliteStore, Store};

#[test]
fn sqlite_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("airlock.db")).unwrap());
    conformance::run_all(&store);
}

#[test]
fn sqlite_history_is_immutable_in_the_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("airlock.db");
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).unwrap());
    conformance::writes_and_history(store.as_ref());
    let conn = rusqlite::Connection::open(&path).unwrap();
    for sql in ["DELETE FROM versions", "UPDATE versions SET serial = 99", "DELETE FROM audit", "UPDATE audit SET actor = 'x'"] {
        let err = conn.execute(sql, []).unwrap_err().to_string();
        assert!(err.contains("immutable"), "{sql}: {err}");
    }
}
