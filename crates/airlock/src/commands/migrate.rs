//! `airlock migrate`: applies pending migrations (embedded in the binary, forward-only) and
//! exits. `airlock server` does the same on start; this is for deploy pipelines that migrate
//! before rolling replicas. Also home of [`open_store`], shared with `airlock backup`.

use std::process::ExitCode;
use std::sync::Arc;

use airlock_store::StoreImport;
use anyhow::Context;

use crate::cli::DatabaseArgs;

/// How to open the database: create a missing SQLite data dir, or insist that it exists.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    Create,
    Refuse,
}

/// Opens (and migrates) the store `args` names, as `airlock server` does.
pub fn open_store(args: &DatabaseArgs, missing: Missing) -> anyhow::Result<Arc<dyn StoreImport>> {
    if let Some(url) = &args.database_url {
        return airlock_store::open_for_import(url).context("opening the database");
    }
    let path = args.data_dir.join("airlock.db");
    match missing {
        Missing::Create => airlock_store::private::create_private_dir_all(&args.data_dir)
            .with_context(|| format!("creating data dir {}", args.data_dir.display()))?,
        Missing::Refuse => {
            if !path.is_file() {
                anyhow::bail!(
                    "there is no airlock database at {} (pass the server's --data-dir, or --database-url)",
                    path.display()
                );
            }
        }
    }
    airlock_store::open_for_import(&path.to_string_lossy())
        .with_context(|| format!("opening {}", path.display()))
}

pub fn run(args: DatabaseArgs) -> anyhow::Result<ExitCode> {
    let store = open_store(&args, Missing::Create)?;
    crate::out(&format!(
        "migrations applied ({} database is up to date)\n",
        store.engine()
    ));
    Ok(ExitCode::SUCCESS)
}
