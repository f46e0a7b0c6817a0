//! Runs the store conformance suite against every engine.

use std::sync::Arc;

use airlock_store::{conformance, SqliteStore, Store};

#[test]
fn sqlite_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open(&dir.path().join("airlock.db")).unwrap());
    conformance::run_all(&store);
}

#[test]
fn sqlite_history_is_immutable_in_the_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("airlock.db");
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).unwrap());
    conformance::writes_and_history(store.as_ref());
    conformance::runs(store.as_ref());
    let conn = rusqlite::Connection::open(&path).unwrap();
    for sql in [
        "DELETE FROM versions",
        "UPDATE versions SET serial = 99",
        "DELETE FROM audit",
        "UPDATE audit SET actor = 'x'",
        "DELETE FROM run_artifacts",
        "UPDATE run_artifacts SET data = x'00'",
    ] {
        let err = conn.execute(sql, []).unwrap_err().to_string();
        assert!(err.contains("immutable"), "{sql}: {err}");
    }
}

// ---- PostgreSQL ----
//
// These need a server: run them through `scripts/with-postgres.sh`, which starts a throwaway
// PostgreSQL 15 cluster (or passes AIRLOCK_TEST_DATABASE_URL through). Without one they fail:
// a skipped engine would look like a passing one.

use airlock_store::PostgresStore;

fn database_url() -> String {
    match std::env::var("AIRLOCK_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => panic!(
            "AIRLOCK_TEST_DATABASE_URL is not set: the PostgreSQL tests need a database. Run them through \
             scripts/with-postgres.sh (e.g. `scripts/with-postgres.sh cargo test -p airlock-store`), which starts a \
             throwaway PostgreSQL 15 cluster, or set AIRLOCK_TEST_DATABASE_URL to a database you may create databases from"
        ),
    }
}

/// The URL with its database name replaced.
fn with_dbname(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let authority = base.find("://").map_or(0, |i| i + 3);
    let path = base[authority..]
        .find('/')
        .map_or(base.len(), |i| authority + i);
    format!("{}/{db}{query}", &base[..path])
}

/// A fresh database per test, created from the given URL and dropped when the test ends.
struct TestDatabase {
    admin_url: String,
    name: String,
    url: String,
}

impl TestDatabase {
    fn new(test: &str) -> TestDatabase {
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let admin_url = database_url();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let name = format!("airlock_t_{test}_{}_{n}_{nanos}", std::process::id());
        let mut admin = postgres::Client::connect(&admin_url, postgres::NoTls)
            .unwrap_or_else(|e| panic!("cannot connect to AIRLOCK_TEST_DATABASE_URL: {e}"));
        admin
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .unwrap();
        let url = with_dbname(&admin_url, &name);
        TestDatabase {
            admin_url,
            name,
            url,
        }
    }

    fn client(&self) -> postgres::Client {
        postgres::Client::connect(&self.url, postgres::NoTls).unwrap()
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let Ok(mut admin) = postgres::Client::connect(&self.admin_url, postgres::NoTls) {
            let _ = admin.batch_execute(&format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.name
            ));
        }
    }
}

#[test]
fn postgres_url_rewrite_keeps_everything_but_the_database() {
    assert_eq!(
        with_dbname("postgres://u:p@127.0.0.1:5432/base", "x"),
        "postgres://u:p@127.0.0.1:5432/x"
    );
    assert_eq!(
        with_dbname("postgresql://u@h:1/base?sslmode=disable", "x"),
        "postgresql://u@h:1/x?sslmode=disable"
    );
    assert_eq!(with_dbname("postgres://u@h:1", "x"), "postgres://u@h:1/x");
}

#[test]
fn postgres_conforms() {
    let db = TestDatabase::new("conforms");
    // Through `open`, as the server does: the URL scheme picks the engine.
    let store = airlock_store::open(&db.url).unwrap();
    assert_eq!(store.engine(), "postgres");
    conformance::run_all(&store);
}

#[test]
fn postgres_replicas_share_locks_writes_and_audit() {
    let db = TestDatabase::new("replicas");
    let a: Arc<dyn Store> = Arc::new(PostgresStore::open(&db.url).unwrap());
    let b: Arc<dyn Store> = Arc::new(PostgresStore::open(&db.url).unwrap());
    conformance::run_replicas(&a, &b);
}

#[test]
fn postgres_replicas_migrate_at_once() {
    let db = TestDatabase::new("migrate");
    let stores: Vec<_> = (0..4)
        .map(|_| {
            let url = db.url.clone();
            std::thread::spawn(move || PostgresStore::open(&url).map(|_| ()))
        })
        .collect();
    for s in stores {
        s.join().unwrap().unwrap();
    }
    // Reopening applies nothing twice.
    PostgresStore::open(&db.url).unwrap();
    let rows = db
        .client()
        .query(
            "SELECT version FROM schema_migrations ORDER BY version",
            &[],
        )
        .unwrap();
    assert_eq!(
        rows.iter().map(|r| r.get::<_, i64>(0)).collect::<Vec<_>>(),
        [1, 2, 3]
    );
}

#[test]
fn postgres_history_is_immutable_in_the_schema() {
    let db = TestDatabase::new("immutable");
    let store: Arc<dyn Store> = Arc::new(PostgresStore::open(&db.url).unwrap());
    conformance::writes_and_history(store.as_ref());
    conformance::runs(store.as_ref());
    let mut conn = db.client();
    for sql in [
        "DELETE FROM versions",
        "UPDATE versions SET serial = 99",
        "TRUNCATE versions",
        "DELETE FROM audit",
        "UPDATE audit SET actor = 'x'",
        "TRUNCATE audit",
        "DELETE FROM run_artifacts",
        "UPDATE run_artifacts SET data = '\\x00'",
        "TRUNCATE run_artifacts",
        "TRUNCATE runs CASCADE",
    ] {
        let err = conn.batch_execute(sql).unwrap_err();
        let msg = err
            .as_db_error()
            .map(|e| e.message().to_owned())
            .unwrap_or_else(|| err.to_string());
        assert!(msg.contains("immutable"), "{sql}: {msg}");
    }
    assert_eq!(store.versions("conf/writes").unwrap().len(), 2);
    assert!(store
        .run_artifact("run_conf1", "plan.bin")
        .unwrap()
        .is_some());
}

#[test]
fn postgres_bad_url_is_a_clear_error_without_the_password() {
    let err = match airlock_store::open("postgres://user:s3cret@127.0.0.1:1/db?connect_timeout=2") {
        Ok(_) => panic!("connected to a closed port"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("cannot connect to PostgreSQL"), "{err}");
    assert!(err.contains("refused"), "the cause is named: {err}");
    assert!(!err.contains("s3cret"), "{err}");
    let err = match airlock_store::open("postgres://user:s3cret@127.0.0.1:notaport/db") {
        Ok(_) => panic!("accepted a bad port"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("invalid PostgreSQL URL"), "{err}");
    assert!(!err.contains("s3cret"), "{err}");
}

#[test]
fn postgres_survives_connections_dropped_by_the_server() {
    let db = TestDatabase::new("reconnect");
    let store: Arc<dyn Store> = Arc::new(PostgresStore::open(&db.url).unwrap());
    conformance::stacks(store.as_ref());
    // Fill the pool with idle connections, then have the server end every one of them, as a
    // restart or failover would.
    conformance::concurrent_locks_have_one_winner(&store);
    let mut admin = db.client();
    let killed = admin
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()",
            &[],
        )
        .unwrap()
        .len();
    assert!(killed >= 2, "only {killed} connections were open");
    std::thread::sleep(std::time::Duration::from_millis(200));
    // Reads and writes go on, on fresh connections.
    assert!(store.stack("conf/stacks").unwrap().is_some());
    conformance::locks(store.as_ref());
    conformance::writes_and_history(store.as_ref());
}
