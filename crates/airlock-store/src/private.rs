//! Files that hold the full state (secrets included): the data directory, the SQLite files and
//! backups. They are created owner-only (directories 0700, files 0600) whatever the process's
//! umask, by setting the mode explicitly after creation. Elsewhere than Unix they are plain.

use std::fs::File;
use std::io;
use std::path::Path;

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_: &Path, _: u32) -> io::Result<()> {
    Ok(())
}

/// Creates `dir` and any missing parents; each directory created here is made 0700. An
/// existing directory is left as it is (it may be shared, e.g. a home directory).
pub fn create_private_dir_all(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_private_dir_all(parent)?;
    }
    match create_private_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(e),
    }
}

/// Creates one directory, mode 0700 from its creation on; fails if it exists (so a path
/// someone else made first, in a shared temporary directory, is never used).
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)?;
    set_mode(dir, 0o700)
}

/// Creates (or truncates) a file for writing, mode 0600.
pub fn create_private_file(path: &Path) -> io::Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let f = options.open(path)?;
    set_mode(path, 0o600)?;
    Ok(f)
}

/// Makes a SQLite database file (and its `-wal` and `-shm` files, if present) 0600, creating
/// an empty database file if there is none. SQLite creates the `-wal` and `-shm` files with
/// the database file's mode, so they stay private too.
pub(crate) fn private_database(path: &Path) -> io::Result<()> {
    if !path.exists() {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            create_private_dir_all(parent)?;
        }
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        match options.open(path) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    for suffix in ["", "-wal", "-shm"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        let p = Path::new(&name);
        if p.exists() {
            set_mode(p, 0o600)?;
        }
    }
    Ok(())
}
