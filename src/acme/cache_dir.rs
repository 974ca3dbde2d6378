//! The `--cert-cache` directory and its permission rules.
//!
//! It holds the ACME account key and the certificate's private key, so
//! nobody but the relay's user may read it. At start, before anything is
//! read from it, main calls [`prepare`]:
//!
//! - missing: it is created (with missing parents) mode `0700`;
//! - ours (owned by the effective uid) and open to group or others: it is
//!   tightened to `0700`;
//! - someone else's and open to group or others: refused, with the reason
//!   (main exits 1): we cannot fix it, and whoever owns it could swap our
//!   keys;
//! - not a directory: refused.
//!
//! The default, when the flag is not given, is
//! `$HOME/.pyrycode-relay/certs` ([`default_dir`]).

use std::fmt;
use std::fs::{self, DirBuilder, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode of the directory: owner only.
const DIR_MODE: u32 = 0o700;
/// Bits that give group or others any access.
const GROUP_OR_WORLD: u32 = 0o077;

/// What [`prepare`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prepared {
    /// The directory was missing and has been created `0700`.
    Created,
    /// It was ours and open to others; now `0700`.
    Tightened {
        /// The permission bits it had.
        was: u32,
    },
    /// It was already private (or owned by someone else but private).
    Unchanged,
}

/// Why the directory cannot be used.
#[derive(Debug)]
pub enum CacheDirError {
    /// `$HOME` is not set and no `--cert-cache` was given.
    NoHome,
    /// The path exists and is not a directory.
    NotADirectory(PathBuf),
    /// Someone else owns it and group or others may access it.
    NotPrivate {
        /// The directory.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// Its permission bits.
        mode: u32,
    },
    /// Creating, inspecting or tightening it failed.
    Io {
        /// The directory.
        path: PathBuf,
        /// What failed.
        error: io::Error,
    },
}

impl fmt::Display for CacheDirError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CacheDirError::NoHome => {
                write!(
                    f,
                    "HOME is not set: give the certificate cache with --cert-cache"
                )
            }
            CacheDirError::NotADirectory(path) => {
                write!(f, "certificate cache {} is not a directory", path.display())
            }
            CacheDirError::NotPrivate { path, owner, mode } => write!(
                f,
                "certificate cache {} is owned by uid {owner} (not us) and has mode {mode:04o}: \
                 group or others can access it; make it 0700 or choose another --cert-cache",
                path.display()
            ),
            CacheDirError::Io { path, error } => {
                write!(f, "certificate cache {}: {error}", path.display())
            }
        }
    }
}

impl std::error::Error for CacheDirError {}

/// `$HOME/.pyrycode-relay/certs`, the default `--cert-cache`.
pub fn default_dir() -> Result<PathBuf, CacheDirError> {
    match std::env::var_os("HOME") {
        Some(home) if !home.is_empty() => Ok(Path::new(&home).join(".pyrycode-relay/certs")),
        _ => Err(CacheDirError::NoHome),
    }
}

/// Applies the rules above to `dir`.
pub fn prepare(dir: &Path) -> Result<Prepared, CacheDirError> {
    let io_error = |error| CacheDirError::Io {
        path: dir.to_owned(),
        error,
    };
    let metadata = match fs::metadata(dir) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            DirBuilder::new()
                .recursive(true)
                .mode(DIR_MODE)
                .create(dir)
                .map_err(io_error)?;
            // The umask may have taken bits away from 0700; set it exactly.
            fs::set_permissions(dir, Permissions::from_mode(DIR_MODE)).map_err(io_error)?;
            return Ok(Prepared::Created);
        }
        Err(error) => return Err(io_error(error)),
    };
    if !metadata.is_dir() {
        return Err(CacheDirError::NotADirectory(dir.to_owned()));
    }
    let mode = metadata.mode() & 0o7777;
    if mode & GROUP_OR_WORLD == 0 {
        return Ok(Prepared::Unchanged);
    }
    if metadata.uid() != effective_uid() {
        return Err(CacheDirError::NotPrivate {
            path: dir.to_owned(),
            owner: metadata.uid(),
            mode,
        });
    }
    fs::set_permissions(dir, Permissions::from_mode(DIR_MODE)).map_err(io_error)?;
    Ok(Prepared::Tightened { was: mode })
}

fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}
