//! Runs the store conformance suite against every engine.

use std::sync::Arc;

use airlock_store::{
    conformance, NewToken, SqliteStore, Store, StoreError, TokenRecord, PLAN_ARTIFACT,
};

#[test]
fn sqlite_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("airlock.db")).unwrap());
    conformance::run_all(&store);
}

#[test]
fn sqlite_history_is_immutable_in_the_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("airlock.db");
    let engine = SqliteStore::open(&path).unwrap();
    conformance::plan_retention(&engine);
    let store: Arc<dyn Store> = Arc::new(engine);
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
    ]
    .into_iter()
    .chain(PURGE_ATTACKS)
    {
        let err = conn.execute(sql, []).unwrap_err().to_string();
        assert!(err.contains("immutable"), "{sql}: {err}");
    }
    purge_is_the_one_change(&*store, |sql| {
        conn.execute_batch(sql).map_err(|e| e.to_string())
    });
}

/// Raw SQL against a store's database after `conformance::plan_retention` (`run_ret_open`
/// needs approval and keeps its plan, `run_ret_done` is rejected and its plan purged): every
/// change to an artifact row but the purge of a terminal run's binary plan is refused by the
/// schema, whoever connects.
const PURGE_ATTACKS: [&str; 9] = [
    // A purge forced on a run that may still be applied (its apply would break).
    "UPDATE run_artifacts SET data = x'', purged_at = 1 WHERE run_id = 'run_ret_open' AND name = 'plan.tfplan'",
    // The plan JSON (what was reviewed) of a terminal run.
    "UPDATE run_artifacts SET data = x'', purged_at = 1 WHERE run_id = 'run_ret_done' AND name = 'plan.json'",
    // A tombstone re-dated, given bytes back, its hash or length rewritten, renamed, moved.
    "UPDATE run_artifacts SET purged_at = 2 WHERE run_id = 'run_ret_done' AND name = 'plan.tfplan'",
    "UPDATE run_artifacts SET data = x'00', purged_at = NULL WHERE run_id = 'run_ret_done' AND name = 'plan.tfplan'",
    "UPDATE run_artifacts SET sha256 = x'00' WHERE run_id = 'run_ret_done' AND name = 'plan.tfplan'",
    "UPDATE run_artifacts SET raw_len = 1 WHERE run_id = 'run_ret_done' AND name = 'plan.tfplan'",
    "UPDATE run_artifacts SET name = 'plan.old' WHERE run_id = 'run_ret_done' AND name = 'plan.tfplan'",
    "UPDATE run_artifacts SET run_id = 'run_ret_open' WHERE run_id = 'run_ret_done' AND name = 'plan.json'",
    // A tombstone inserted for an open run's artifact.
    "INSERT INTO run_artifacts (run_id, name, sha256, raw_len, data, purged_at) VALUES ('run_ret_open', 'apply.log', x'00', 1, x'', 1)",
];

/// The purge itself, by raw SQL, on a run made terminal behind the store's back: refused when it
/// also rewrites the hash or the length (in the same statement), allowed exactly as the store
/// makes it; the store then reads the plan as purged.
fn purge_is_the_one_change(store: &dyn Store, mut exec: impl FnMut(&str) -> Result<(), String>) {
    exec("UPDATE runs SET status = 'applied' WHERE id = 'run_ret_open'").unwrap();
    let target = "WHERE run_id = 'run_ret_open' AND name = 'plan.tfplan'";
    for change in [
        "data = x'', purged_at = 1, sha256 = x'00'",
        "data = x'', purged_at = 1, raw_len = 0",
        "data = x'', purged_at = 1, name = 'plan.gone'",
        "data = x'01', purged_at = 1",
        "data = x'', purged_at = NULL",
    ] {
        let err = exec(&format!("UPDATE run_artifacts SET {change} {target}")).unwrap_err();
        assert!(err.contains("immutable"), "{change}: {err}");
    }
    assert!(store
        .run_artifact("run_ret_open", PLAN_ARTIFACT)
        .unwrap()
        .is_some());
    exec(&format!(
        "UPDATE run_artifacts SET data = x'', purged_at = 1 {target}"
    ))
    .unwrap();
    assert!(matches!(
        store.run_artifact("run_ret_open", PLAN_ARTIFACT),
        Err(StoreError::Purged(_))
    ));
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
    assert_eq!(airlock_store::open(&db.url).unwrap().engine(), "postgres");
    conformance::run_all(&Arc::new(PostgresStore::open(&db.url).unwrap()));
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
        [1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20]
    );
}

#[test]
fn postgres_history_is_immutable_in_the_schema() {
    let db = TestDatabase::new("immutable");
    let engine = PostgresStore::open(&db.url).unwrap();
    conformance::plan_retention(&engine);
    let store: Arc<dyn Store> = Arc::new(engine);
    conformance::writes_and_history(store.as_ref());
    conformance::runs(store.as_ref());
    let mut conn = db.client();
    let mut exec = |sql: &str| {
        // PostgreSQL spells a blob literal '\x..'::bytea.
        let sql = sql
            .replace("x''", "'\\x'::bytea")
            .replace("x'00'", "'\\x00'::bytea")
            .replace("x'01'", "'\\x01'::bytea");
        conn.batch_execute(&sql).map_err(|err| {
            err.as_db_error()
                .map(|e| e.message().to_owned())
                .unwrap_or_else(|| err.to_string())
        })
    };
    for sql in [
        "DELETE FROM versions",
        "UPDATE versions SET serial = 99",
        "TRUNCATE versions",
        "DELETE FROM audit",
        "UPDATE audit SET actor = 'x'",
        "TRUNCATE audit",
        "DELETE FROM run_artifacts",
        "UPDATE run_artifacts SET data = x'00'",
        "TRUNCATE run_artifacts",
        "TRUNCATE runs CASCADE",
    ]
    .into_iter()
    .chain(PURGE_ATTACKS)
    {
        let msg = exec(sql).unwrap_err();
        assert!(msg.contains("immutable"), "{sql}: {msg}");
    }
    purge_is_the_one_change(&*store, exec);
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

/// Ends every other connection to `db`'s database from the server side, as a restart or
/// failover would (the store's pool held at least two); how many it ended.
fn end_every_connection(db: &TestDatabase) -> usize {
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
    killed
}

#[test]
fn postgres_survives_connections_dropped_by_the_server() {
    let db = TestDatabase::new("reconnect");
    let store: Arc<dyn Store> = Arc::new(PostgresStore::open(&db.url).unwrap());
    conformance::stacks(store.as_ref());
    // Fill the pool with idle connections, then have the server end every one of them, as a
    // restart or failover would.
    conformance::concurrent_locks_have_one_winner(&store);
    end_every_connection(&db);
    // Reads and writes go on, on fresh connections.
    assert!(store.stack("conf/stacks").unwrap().is_some());
    conformance::locks(store.as_ref());
    conformance::writes_and_history(store.as_ref());
}

/// As above, with a write as the first thing after the drop: a transaction sends BEGIN together
/// with its first statement, and a connection found dead there is replaced before anything of
/// the transaction ran, as when BEGIN went alone.
#[test]
fn postgres_writes_survive_connections_dropped_by_the_server() {
    let db = TestDatabase::new("reconnect_write");
    let store: Arc<dyn Store> = Arc::new(PostgresStore::open(&db.url).unwrap());
    conformance::concurrent_locks_have_one_winner(&store);
    let killed = end_every_connection(&db);
    // Writes first, each on the next dead connection from the pool, with a statement already
    // prepared there (so the dead connection shows only at BEGIN + statement), then reads.
    for _ in 0..=killed {
        let released = store
            .unlock(
                "conf/race",
                airlock_store::UnlockBy::Force,
                airlock_store::NewAudit::ok(
                    "test",
                    "lock.force_unlock",
                    Some("conf/race"),
                    serde_json::json!({}),
                ),
            )
            .unwrap();
        assert_eq!(released, airlock_store::UnlockOutcome::NotLocked);
    }
    conformance::locks(store.as_ref());
    conformance::writes_and_history(store.as_ref());
    assert!(store.stack("conf/locks").unwrap().is_some());
}

// ---- migration 0003 on a store that already holds tokens ----

/// Tokens as a store before users held them: the bootstrap admin, a revoked agent whose
/// plan-phase token minted another one, and an approver's run-bound token.
fn legacy_tokens_sql(hash: impl Fn(u8) -> String) -> String {
    let rows = [
        (
            "tok_00000000000000a1",
            "bootstrap-admin",
            "admin",
            "system",
            "NULL",
            "NULL",
            "NULL",
        ),
        (
            "tok_00000000000000b2",
            "bot",
            "agent",
            "bootstrap-admin (tok_00000000000000a1)",
            "9000",
            "5000",
            "NULL",
        ),
        (
            "tok_00000000000000c3",
            "plan for bot",
            "agent",
            "bot (tok_00000000000000b2)",
            "20000",
            "NULL",
            "NULL",
        ),
        (
            "tok_00000000000000d4",
            "plan for plan for bot",
            "agent",
            "plan for bot (tok_00000000000000c3)",
            "30000",
            "NULL",
            "NULL",
        ),
        (
            "tok_00000000000000e5",
            "alice",
            "approver",
            "bootstrap-admin (tok_00000000000000a1)",
            "NULL",
            "NULL",
            "NULL",
        ),
        (
            "tok_00000000000000f6",
            "apply run_x",
            "ci",
            "alice (tok_00000000000000e5)",
            "40000",
            "NULL",
            "'run_x'",
        ),
    ];
    rows.iter()
        .enumerate()
        .map(|(i, (id, name, role, by, exp, rev, run))| {
            format!(
                "INSERT INTO tokens (id, secret_hash, name, role, stacks, created_at, expires_at, revoked_at, created_by, run_id) VALUES ('{id}', {}, '{name}', '{role}', '[]', 1000, {exp}, {rev}, '{by}', {run});\n",
                hash(i as u8)
            )
        })
        .collect()
}

fn check_legacy_tokens_migrated(s: &dyn Store) {
    let t = |id: &str| s.token(id).unwrap().unwrap();
    let admin = t("tok_00000000000000a1");
    assert_eq!(
        (admin.user.as_str(), admin.parent_id.as_deref()),
        ("admin", None)
    );
    assert!(s.user("admin").unwrap().is_some());
    assert_eq!(t("tok_00000000000000b2").user, "tok_00000000000000b2");
    for (id, parent) in [
        ("tok_00000000000000c3", "tok_00000000000000b2"),
        ("tok_00000000000000d4", "tok_00000000000000c3"),
    ] {
        let phase = t(id);
        assert_eq!(phase.parent_id.as_deref(), Some(parent), "{id}");
        assert_eq!(
            phase.user, "tok_00000000000000b2",
            "{id} belongs to its root's user"
        );
        assert_eq!(phase.expires_at, Some(9000), "{id} expires with its root");
        assert_eq!(
            phase.revoked_at,
            Some(5000),
            "{id} is revoked with its root"
        );
    }
    assert_eq!(t("tok_00000000000000e5").user, "tok_00000000000000e5");
    let bound = t("tok_00000000000000f6");
    assert_eq!(bound.parent_id.as_deref(), Some("tok_00000000000000e5"));
    assert_eq!(bound.user, "tok_00000000000000e5");
    assert_eq!((bound.expires_at, bound.revoked_at), (Some(40000), None));
}

#[test]
fn sqlite_migration_gives_existing_tokens_users_and_parents() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("airlock.db");
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(include_str!("../migrations/sqlite/0001_init.sql"))
        .unwrap();
    conn.execute_batch(include_str!("../migrations/sqlite/0002_runs.sql"))
        .unwrap();
    conn.execute_batch("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL); INSERT INTO schema_migrations VALUES (1, 0), (2, 0);").unwrap();
    conn.execute_batch(&legacy_tokens_sql(|i| {
        format!("X'{}'", format!("{i:02x}").repeat(32))
    }))
    .unwrap();
    drop(conn);
    check_legacy_tokens_migrated(&SqliteStore::open(&path).unwrap());
}

#[test]
fn postgres_migration_gives_existing_tokens_users_and_parents() {
    let db = TestDatabase::new("legacy");
    let mut c = db.client();
    c.batch_execute(include_str!("../migrations/postgres/0001_init.sql"))
        .unwrap();
    c.batch_execute(include_str!("../migrations/postgres/0002_runs.sql"))
        .unwrap();
    c.batch_execute("CREATE TABLE schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL); INSERT INTO schema_migrations VALUES (1, 0), (2, 0);").unwrap();
    c.batch_execute(&legacy_tokens_sql(|i| {
        format!("'\\x{}'::bytea", format!("{i:02x}").repeat(32))
    }))
    .unwrap();
    drop(c);
    check_legacy_tokens_migrated(&PostgresStore::open(&db.url).unwrap());
}

/// Migration 0014: a database whose chunks are in the table 0001 created (WITHOUT ROWID, data
/// inline) keeps every chunk and every version when it moves them to a rowid table with a
/// unique hash index, and writes (new and already stored chunks) work on the new table.
#[test]
fn sqlite_migration_0014_keeps_every_chunk_and_version() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("airlock.db");
    let written = conformance::histories_sharing_chunks(&SqliteStore::open(&path).unwrap());
    // Put the chunks back into the table as 0001 defines it, and forget 0014.
    let init = include_str!("../migrations/sqlite/0001_init.sql");
    let start = init.find("CREATE TABLE chunks (").unwrap();
    let end = start + init[start..].find(';').unwrap() + 1;
    let old_table = init[start..end].replace("CREATE TABLE chunks", "CREATE TABLE chunks_old");
    assert!(old_table.contains("WITHOUT ROWID"), "{old_table}");
    let conn = rusqlite::Connection::open(&path).unwrap();
    let chunks = |conn: &rusqlite::Connection| -> Vec<(Vec<u8>, Vec<u8>, i64)> {
        let mut s = conn
            .prepare("SELECT hash, data, raw_len FROM chunks ORDER BY hash")
            .unwrap();
        s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    let before = chunks(&conn);
    assert!(before.len() > 10, "{} chunks", before.len());
    conn.execute_batch(&format!(
        "BEGIN; {old_table} INSERT INTO chunks_old SELECT hash, data, raw_len FROM chunks; \
         DROP TABLE chunks; ALTER TABLE chunks_old RENAME TO chunks; \
         DELETE FROM schema_migrations WHERE version = 14; COMMIT;"
    ))
    .unwrap();
    let schema = |conn: &rusqlite::Connection| -> String {
        conn.query_row(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'chunks'",
            [],
            |r| r.get(0),
        )
        .unwrap()
    };
    assert!(schema(&conn).contains("WITHOUT ROWID"));
    drop(conn);

    let store = SqliteStore::open(&path).unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    assert!(
        !schema(&conn).contains("WITHOUT ROWID"),
        "{}",
        schema(&conn)
    );
    assert_eq!(chunks(&conn), before, "every chunk, byte for byte");
    conformance::histories_read_back(&store, &written);
    // One row per hash: the unique index refuses a second.
    let (hash, data, raw_len) = &before[0];
    let err = conn
        .execute(
            "INSERT INTO chunks (hash, data, raw_len) VALUES (?1, ?2, ?3)",
            rusqlite::params![hash, data, raw_len],
        )
        .unwrap_err();
    assert!(err.to_string().contains("UNIQUE"), "{err}");
}

/// A database at migration 0017 with one run in each status, each with a binary plan, its
/// JSON and a log (`X'..'` literals; PostgreSQL's are rewritten by the caller).
fn runs_before_0018() -> String {
    use sha2::Digest as _;
    let mut sql = String::from(
        "INSERT INTO stacks (name, production, created_at, settings) VALUES ('old/app', FALSE, 1, '{}');\n",
    );
    for status in airlock_store::RunStatus::ALL {
        let id = format!("run_old_{}", status.as_str());
        sql += &format!(
            "INSERT INTO runs (id, stack_id, status, created_at, record) SELECT '{id}', id, '{}', 1, '{{}}' FROM stacks WHERE name = 'old/app';\n",
            status.as_str()
        );
        for (name, bytes) in [
            ("plan.tfplan", "plan"),
            ("plan.json", "json"),
            ("apply.log", "log"),
        ] {
            let data = zstd::encode_all(bytes.as_bytes(), 1).unwrap();
            let sha = sha2::Sha256::digest(bytes.as_bytes());
            sql += &format!(
                "INSERT INTO run_artifacts (run_id, name, sha256, raw_len, data) VALUES ('{id}', '{name}', X'{}', {}, X'{}');\n",
                hex(&sha),
                bytes.len(),
                hex(&data)
            );
        }
    }
    sql
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// After migration 0018: the binary plans of the runs that were terminal are tombstones (hash
/// and length kept), every other artifact and every open run's plan is byte for byte there.
fn check_0018_purged_terminal_plans(store: &dyn Store) {
    use sha2::Digest as _;
    for status in airlock_store::RunStatus::ALL {
        let id = format!("run_old_{}", status.as_str());
        let infos = store.run_artifact_infos(&id).unwrap();
        assert_eq!(infos.len(), 3, "{id}");
        let plan = infos.iter().find(|a| a.name == PLAN_ARTIFACT).unwrap();
        assert_eq!(plan.sha256, hex(&sha2::Sha256::digest(b"plan")), "{id}");
        assert_eq!(plan.len, 4, "{id}");
        if status.is_terminal() {
            assert!(plan.purged_at.is_some(), "{id}");
            assert!(matches!(
                store.run_artifact(&id, PLAN_ARTIFACT),
                Err(StoreError::Purged(_))
            ));
        } else {
            assert_eq!(plan.purged_at, None, "{id}");
            assert_eq!(
                store.run_artifact(&id, PLAN_ARTIFACT).unwrap().unwrap(),
                b"plan"
            );
        }
        assert_eq!(
            store.run_artifact(&id, "plan.json").unwrap().unwrap(),
            b"json"
        );
        assert_eq!(
            store.run_artifact(&id, "apply.log").unwrap().unwrap(),
            b"log"
        );
    }
}

#[test]
fn sqlite_migration_0018_purges_the_plans_of_terminal_runs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("airlock.db");
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(&conformance::migrations_before("sqlite", 18))
        .unwrap();
    conn.execute_batch(&runs_before_0018()).unwrap();
    drop(conn);
    check_0018_purged_terminal_plans(&SqliteStore::open(&path).unwrap());
}

#[test]
fn postgres_migration_0018_purges_the_plans_of_terminal_runs() {
    let db = TestDatabase::new("retention");
    let mut c = db.client();
    c.batch_execute(&conformance::migrations_before("postgres", 18))
        .unwrap();
    // PostgreSQL's blob literal is '\x..'.
    let sql = runs_before_0018()
        .replace(" X'", " '\\x")
        .replace(", X'", ", '\\x");
    c.batch_execute(&sql).unwrap();
    drop(c);
    check_0018_purged_terminal_plans(&PostgresStore::open(&db.url).unwrap());
}

// ---- migration 0019 (token minters) and the re-judging of tokens minted before the rule ----

/// [`pre_rule_tokens_sql`] with SQLite's blob literals for the hashes.
fn sqlite_pre_rule_tokens_sql() -> String {
    pre_rule_tokens_sql(|i| format!("X'{}'", format!("{i:02x}").repeat(32)))
}

/// Users and tokens as a server before the scoped-mint rule (and before `minted_by`) stored
/// them: the minter only in `created_by`'s trailing `(tok_…)`.
/// - carol's `tok_dev` is an admin scoped to `dev/*`; before the rule it minted `tok_imp`, a
///   `dev/*` approver token in the name of alice, a prod approver (`tok_alice`): whoever holds
///   `tok_dev` can approve as alice, a second approver (rule 1: revoked; its phase token too);
/// - bob's token is named `x (tok_root)`: its minter is still `tok_dev`, not `tok_root`, and
///   bob is wholly within `dev/*` (kept);
/// - dave was given `tok_dave_adm` (`dev/*`) by `tok_dev` and minted himself `tok_dave_dev2`
///   with it, then got `tok_dave_prod` from the root (rule 1 revokes `tok_dave_adm`, rule 2
///   `tok_dave_dev2`, the token to revoke, not dave's prod token);
/// - erin's expired token from `tok_dev` is not live (nothing to revoke);
/// - `tok_l1` and `tok_l2` name each other as minters (a corrupt database).
fn pre_rule_tokens_sql(hash: impl Fn(u8) -> String) -> String {
    // id, user, name, role, stacks, created_by, parent_id, expires_at
    type Row<'a> = (
        &'a str,
        &'a str,
        &'a str,
        &'a str,
        &'a str,
        &'a str,
        &'a str,
        &'a str,
    );
    let rows: [Row; 12] = [
        (
            "tok_root", "admin", "root", "admin", "[]", "system", "NULL", "NULL",
        ),
        (
            "tok_dev",
            "carol",
            "carol-dev",
            "admin",
            r#"["dev/*"]"#,
            "root (tok_root)",
            "NULL",
            "NULL",
        ),
        (
            "tok_alice",
            "alice",
            "alice",
            "approver",
            r#"["prod/*"]"#,
            "root (tok_root)",
            "NULL",
            "NULL",
        ),
        (
            "tok_imp",
            "alice",
            "alice-dev",
            "approver",
            r#"["dev/*"]"#,
            "carol-dev (tok_dev)",
            "NULL",
            "NULL",
        ),
        (
            "tok_imp_plan",
            "alice",
            "plan for alice-dev",
            "agent",
            r#"["dev/a"]"#,
            "alice-dev (tok_imp)",
            "'tok_imp'",
            "NULL",
        ),
        (
            "tok_bob",
            "bob",
            "x (tok_root)",
            "approver",
            r#"["dev/app"]"#,
            "x (tok_root) (tok_dev)",
            "NULL",
            "NULL",
        ),
        (
            "tok_dave_adm",
            "dave",
            "dave-adm",
            "admin",
            r#"["dev/*"]"#,
            "carol-dev (tok_dev)",
            "NULL",
            "NULL",
        ),
        (
            "tok_dave_dev2",
            "dave",
            "dave-x",
            "approver",
            r#"["dev/x"]"#,
            "dave-adm (tok_dave_adm)",
            "NULL",
            "NULL",
        ),
        (
            "tok_dave_prod",
            "dave",
            "dave-prod",
            "approver",
            r#"["prod/*"]"#,
            "root (tok_root)",
            "NULL",
            "NULL",
        ),
        (
            "tok_erin",
            "erin",
            "erin",
            "approver",
            r#"["dev/*"]"#,
            "carol-dev (tok_dev)",
            "NULL",
            "1",
        ),
        (
            "tok_l1",
            "looper",
            "l1",
            "approver",
            r#"["dev/*"]"#,
            "l2 (tok_l2)",
            "NULL",
            "NULL",
        ),
        (
            "tok_l2",
            "looper",
            "l2",
            "approver",
            r#"["dev/*"]"#,
            "l1 (tok_l1)",
            "NULL",
            "NULL",
        ),
    ];
    let mut sql = String::from(
        "INSERT INTO users (name, created_at, created_by) VALUES ('admin', 1, 'system'), ('carol', 1, 'root (tok_root)'), ('alice', 1, 'root (tok_root)'), ('bob', 1, 'carol-dev (tok_dev)'), ('dave', 1, 'carol-dev (tok_dev)'), ('erin', 1, 'carol-dev (tok_dev)'), ('looper', 1, 'x');\n",
    );
    for (i, (id, user, name, role, stacks, by, parent, expires)) in rows.iter().enumerate() {
        sql.push_str(&format!(
            "INSERT INTO tokens (id, secret_hash, name, role, stacks, created_at, expires_at, created_by, user_name, parent_id, read_stacks) VALUES ('{id}', {}, '{name}', '{role}', '{stacks}', {}, {expires}, '{by}', '{user}', {parent}, '[]');\n",
            hash(i as u8 + 1),
            10 + i
        ));
    }
    sql
}

const UNSAFE: &[&str] = &[
    "tok_dave_adm",
    "tok_dave_dev2",
    "tok_imp",
    "tok_l1",
    "tok_l2",
];

fn unsafe_mint_events(s: &dyn Store) -> Vec<airlock_core::audit::AuditRecord> {
    s.audit_events(0, 10_000)
        .unwrap()
        .into_iter()
        .filter(|e| e.action == "token.revoke_unsafe_mint")
        .collect()
}

/// After migration 0019: every minter is the column, read as `minter_id` read the text
/// (whatever the token's name holds); re-judging revokes exactly the tokens the rule refuses,
/// each once, with its reason and an audit event, and nothing the second time.
fn check_minters_and_rejudging(s: &dyn Store, revoked: &[TokenRecord]) {
    let t = |id: &str| s.token(id).unwrap().unwrap();
    for (id, minter) in [
        ("tok_root", None),
        ("tok_dev", Some("tok_root")),
        ("tok_imp", Some("tok_dev")),
        ("tok_imp_plan", Some("tok_imp")),
        ("tok_bob", Some("tok_dev")),
        ("tok_dave_dev2", Some("tok_dave_adm")),
        ("tok_l1", Some("tok_l2")),
    ] {
        assert_eq!(t(id).minted_by.as_deref(), minter, "{id}");
    }
    let mut ids: Vec<&str> = revoked.iter().map(|r| r.id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(ids, UNSAFE, "{revoked:#?}");
    for id in UNSAFE {
        let r = t(id);
        assert!(r.revoked_at.is_some(), "{id}");
        assert!(
            r.revoked_reason
                .as_deref()
                .is_some_and(|m| m.contains("scoped-mint rule")
                    || m.contains("chain of minters cannot be judged")),
            "{id}: {:?}",
            r.revoked_reason
        );
    }
    assert!(
        t("tok_imp_plan").revoked_at.is_some(),
        "dies with its parent"
    );
    for id in [
        "tok_root",
        "tok_dev",
        "tok_alice",
        "tok_bob",
        "tok_dave_prod",
    ] {
        assert_eq!(t(id).revoked_at, None, "{id} stays");
    }
    let events = unsafe_mint_events(s);
    assert_eq!(events.len(), UNSAFE.len(), "{events:#?}");
    let imp = events
        .iter()
        .find(|e| e.detail["token"] == "tok_imp")
        .unwrap();
    assert_eq!(imp.detail["user"], "alice");
    assert_eq!(imp.detail["minted_by"], "tok_dev");
    assert_eq!(imp.detail["through"], "tok_dev");
    assert!(imp.detail["reason"].as_str().unwrap().contains("tok_alice"));
    // Once is enough: the rule now holds for every live token.
    assert_eq!(s.revoke_unsafe_mints().unwrap(), []);
    assert_eq!(unsafe_mint_events(s).len(), UNSAFE.len());
    // A mint for the looping user stays refused, bounded, naming the corruption.
    let r = s.create_token(
        NewToken {
            id: "tok_l3".into(),
            secret_hash: [0xee; 32],
            name: "l3".into(),
            role: airlock_core::Role::Approver,
            stacks: vec!["dev/*".into()],
            expires_at: None,
            created_by: "root (tok_root)".into(),
            run_id: None,
            user: "looper".into(),
            parent_id: None,
            mint_limit: None,
            read_stacks: Vec::new(),
            minted_by: Some("tok_root".into()),
            job_ref: None,
        },
        airlock_store::NewAudit::ok("t", "token.create", None, serde_json::json!({})),
    );
    assert!(
        matches!(&r, Err(airlock_store::StoreError::Corrupt(m)) if m.contains("go on past 32")),
        "{r:?}"
    );
}

/// A server older than migration 0019 running beside a newer one (a rolling upgrade) writes
/// tokens without `minted_by`, their minter only in `created_by`: the next start fills it as
/// the migration did, and judges them by it (without the fill, each would count as the
/// operator's and `tok_imp` would stay live).
#[test]
fn sqlite_tokens_an_older_server_mints_after_migration_0019_are_judged_by_their_minter() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("airlock.db");
    drop(SqliteStore::open(&path).unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(&sqlite_pre_rule_tokens_sql()).unwrap();
    drop(conn);
    let store = SqliteStore::open(&path).unwrap();
    let revoked = store.revoke_unsafe_mints().unwrap();
    check_minters_and_rejudging(&store, &revoked);
}

#[test]
fn sqlite_migration_0019_fills_minters_and_tokens_minted_before_the_rule_are_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("airlock.db");
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(&conformance::migrations_before("sqlite", 19))
        .unwrap();
    conn.execute_batch(&sqlite_pre_rule_tokens_sql()).unwrap();
    drop(conn);
    let store = SqliteStore::open(&path).unwrap();
    let revoked = store.revoke_unsafe_mints().unwrap();
    check_minters_and_rejudging(&store, &revoked);
    // Reopening runs the fill no more; a minter, once set, is fixed in the schema.
    drop(store);
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.revoke_unsafe_mints().unwrap(), []);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let err = conn
        .execute(
            "UPDATE tokens SET minted_by = 'tok_root' WHERE id = 'tok_imp'",
            [],
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("immutable"), "{err}");
    let err = conn
        .execute(
            "UPDATE tokens SET minted_by = NULL WHERE id = 'tok_imp'",
            [],
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("immutable"), "{err}");
}

#[test]
fn postgres_migration_0019_fills_minters_and_two_replicas_revoke_each_pre_rule_token_once() {
    let db = TestDatabase::new("minters");
    let mut c = db.client();
    c.batch_execute(&conformance::migrations_before("postgres", 19))
        .unwrap();
    c.batch_execute(&pre_rule_tokens_sql(|i| {
        format!("'\\x{}'::bytea", format!("{i:02x}").repeat(32))
    }))
    .unwrap();
    // Two replicas start at once: each migrates (one fills) and re-judges.
    let start = Arc::new(std::sync::Barrier::new(2));
    let replicas: Vec<_> = (0..2)
        .map(|_| {
            let (url, start) = (db.url.clone(), Arc::clone(&start));
            std::thread::spawn(move || {
                let store = PostgresStore::open(&url).unwrap();
                start.wait();
                store.revoke_unsafe_mints().unwrap()
            })
        })
        .collect();
    let revoked: Vec<TokenRecord> = replicas
        .into_iter()
        .flat_map(|r| r.join().unwrap())
        .collect();
    let store = PostgresStore::open(&db.url).unwrap();
    check_minters_and_rejudging(&store, &revoked);
    let err = c
        .execute(
            "UPDATE tokens SET minted_by = 'tok_root' WHERE id = 'tok_imp'",
            &[],
        )
        .unwrap_err();
    assert!(format!("{err:?}").contains("immutable"), "{err:?}");
}
