//! The data directory, the database and backups are private whatever the umask.

use std::path::Path;

use serde_json::json;

use crate::support::*;

use super::{backup_cli, dir_arg};

/// Runs the CLI under umask 022 (the common default, which would make new files 0644).
fn cli_with_umask_022(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg("umask 022; exec \"$0\" \"$@\"")
        .arg(AIRLOCK)
        .args(args)
        .env_remove("AIRLOCK_DATABASE_URL")
        .env_remove("AIRLOCK_DATA_DIR")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Every file and directory below `root` (and `root`), with its mode.
fn modes_below(root: &Path) -> Vec<(String, u32)> {
    let mut out = vec![(root.display().to_string(), mode(root))];
    for e in std::fs::read_dir(root).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(modes_below(&p));
        } else {
            out.push((p.display().to_string(), mode(&p)));
        }
    }
    out
}

#[test]
fn data_dir_database_and_backups_are_private_whatever_the_umask() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data/nested");
    let (ok, out) = cli_with_umask_022(&["migrate", "--data-dir", dir_arg(&data)]);
    assert!(ok, "{out}");
    assert_eq!(mode(&data), 0o700, "data dir");
    assert_eq!(mode(&tmp.path().join("data")), 0o700, "created parent");
    let db = data.join("airlock.db");
    assert_eq!(mode(&db), 0o600, "database file");
    // SQLite gives -wal and -shm the database file's mode.
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; CREATE TABLE t (x); INSERT INTO t VALUES (1);",
        )
        .unwrap();
        for suffix in ["-wal", "-shm"] {
            let p = data.join(format!("airlock.db{suffix}"));
            assert_eq!(mode(&p), 0o600, "{}", p.display());
        }
    }

    // A deleted (archived) stack, to see the backup keep it.
    {
        use airlock_store::{NewAudit, StackSettings, Store};
        let store = airlock_store::SqliteStore::open(&db).unwrap();
        let audit = |a: &str| NewAudit::ok("test", a, Some("old/app"), json!({}));
        store
            .create_stack(
                "old/app",
                false,
                StackSettings::default(),
                audit("stack.create"),
            )
            .unwrap();
        store
            .archive_stack("old/app", "test", "gone", audit("stack.delete"))
            .unwrap();
    }
    let bk = tmp.path().join("backups/b1");
    let (ok, out) = cli_with_umask_022(&[
        "backup",
        "export",
        dir_arg(&bk),
        "--data-dir",
        dir_arg(&data),
    ]);
    assert!(ok, "{out}");
    for (path, m) in modes_below(&bk) {
        let want = if Path::new(&path).is_dir() {
            0o700
        } else {
            0o600
        };
        assert_eq!(m, want, "{path}");
    }

    // `verify --manifest-sha256` checks the hash printed at export.
    let printed = out
        .split("manifest.json SHA-256: ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap()
        .to_owned();
    let (ok, out) = backup_cli(&[
        "backup",
        "verify",
        dir_arg(&bk),
        "--manifest-sha256",
        &printed,
    ]);
    assert!(ok && out.contains("backup OK"), "{out}");
    let other = "0".repeat(64);
    let (ok, out) = backup_cli(&[
        "backup",
        "verify",
        dir_arg(&bk),
        "--manifest-sha256",
        &other,
    ]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("backup BROKEN: 1 problem(s)")
            && out.contains(&format!(
                "manifest.json has SHA-256 {printed}, not the {other} recorded at export"
            )),
        "{out}"
    );
    let (ok, out) = backup_cli(&["backup", "verify", dir_arg(&bk), "--manifest-sha256", "abc"]);
    assert!(
        !ok && out.contains("--manifest-sha256 must be the 64 hex digits"),
        "{out}"
    );

    // Import keeps the deletion.
    let restored = tmp.path().join("restored");
    let (ok, out) = cli_with_umask_022(&[
        "backup",
        "import",
        dir_arg(&bk),
        "--data-dir",
        dir_arg(&restored),
    ]);
    assert!(ok, "{out}");
    assert_eq!(mode(&restored), 0o700);
    let store = airlock_store::SqliteStore::open(&restored.join("airlock.db")).unwrap();
    let old = airlock_store::Store::stack(&store, "old/app")
        .unwrap()
        .unwrap();
    assert_eq!(old.archived.unwrap().reason, "gone");
}
