//! Upgrading without dropping anyone (`docs/UPGRADE.md`): on SIGUSR2 the
//! relay re-executes itself in place from the executable now at the path
//! it was started from, and hands every listener and every plain
//! connection, with its whole state, to the new image.
//!
//! | file | owns |
//! |---|---|
//! | `snapshot.rs` | the state format: versioned plain data, encode, decode, validate |
//! | `check.rs` | check mode: the new build's version and the formats it reads |
//! | `exec.rs` | the OS side: the open executable, memfd, `FD_CLOEXEC`, signal mask, `fexecve` |
//! | `sockets.rs` | descriptors named by a snapshot, checked before any is used |
//!
//! The loop's side — taking a snapshot of the live relay, restoring one,
//! and the SIGUSR2 state machine — is in `relay/handover.rs`,
//! `relay/snapshot.rs` and `relay/restore.rs`, next to the private state
//! they read and build.

pub mod check;
pub mod exec;
pub mod snapshot;
pub mod sockets;

pub use check::{take_check_flag, CHECK_FLAG};
pub use exec::{take_inherited_state, unblock_signals, UpgradePlan};
pub use snapshot::{Snapshot, SnapshotError};
