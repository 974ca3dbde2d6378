//! The connection table: every socket of the loop in one `slab`, addressed
//! by a [`Handle`] that cannot outlive its connection.
//!
//! A slab key is reused as soon as its connection is gone, so a bare key
//! kept somewhere (a timer, the registry, a readiness event) could name a
//! newer connection in the same slot. A handle carries the key *and* the
//! connection's unique id; looking it up after the connection is gone
//! finds nothing. The mio token of a connection encodes both as well, so
//! a readiness event that arrives for a connection dropped earlier in the
//! same turn is ignored rather than applied to its successor.
//!
//! The table also keeps the two per-turn lists of the loop: connections
//! with output to flush at the end of the turn ("dirty"), and connections
//! to read again without waiting for a readiness event ("resume"), and the
//! buffer pool every connection borrows from.

use std::time::Instant;

use mio::Token;
use slab::Slab;

use super::lifecycle::Conn;
use crate::buffer::{BufferPool, OutQueue};
use crate::metrics::Direction;

/// Names one connection for as long as it lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Handle {
    key: usize,
    id: u64,
}

/// Slab keys stay below this, so that the key and 32 bits of the id fit
/// in a token, clear of the listener tokens at the top of the range.
const MAX_KEY: usize = u32::MAX as usize - 16;

impl Handle {
    /// The mio token of this connection: the key in the low 32 bits, the
    /// low 32 bits of the id above.
    pub fn token(self) -> Token {
        Token(self.key | ((self.id & 0xFFFF_FFFF) as usize) << 32)
    }

    /// The connection's unique id (never reused in this process).
    pub fn id(self) -> u64 {
        self.id
    }
}

/// Every connection of the loop.
#[derive(Default)]
pub struct Conns {
    slab: Slab<Conn>,
    /// The id of the last connection inserted.
    last_id: u64,
    /// Buffers for partial input and pending output.
    pub pool: BufferPool,
    /// Connections with output queued this turn, each once.
    dirty: Vec<Handle>,
    /// Connections to read again this turn without a readiness event.
    resume: Vec<Handle>,
}

impl Conns {
    /// Adds the connection `make` builds for the handle it will have;
    /// `None` when the table is full.
    pub fn insert(&mut self, make: impl FnOnce(Handle) -> Conn) -> Option<Handle> {
        let entry = self.slab.vacant_entry();
        if entry.key() > MAX_KEY {
            return None;
        }
        self.last_id += 1;
        let handle = Handle {
            key: entry.key(),
            id: self.last_id,
        };
        entry.insert(make(handle));
        Some(handle)
    }

    /// The handle a readiness event's token names, if that connection is
    /// still here.
    pub fn by_token(&self, token: Token) -> Option<Handle> {
        let key = token.0 & 0xFFFF_FFFF;
        let conn = self.slab.get(key)?;
        let handle = Handle { key, id: conn.id };
        (handle.token() == token).then_some(handle)
    }

    pub fn get(&self, handle: Handle) -> Option<&Conn> {
        self.slab
            .get(handle.key)
            .filter(|conn| conn.id == handle.id)
    }

    pub fn get_mut(&mut self, handle: Handle) -> Option<&mut Conn> {
        self.slab
            .get_mut(handle.key)
            .filter(|conn| conn.id == handle.id)
    }

    pub fn contains(&self, handle: Handle) -> bool {
        self.get(handle).is_some()
    }

    /// The connection and the buffer pool together, for work that needs
    /// a buffer for one connection.
    pub fn with_pool(&mut self, handle: Handle) -> Option<(&mut Conn, &mut BufferPool)> {
        let conn = self
            .slab
            .get_mut(handle.key)
            .filter(|conn| conn.id == handle.id)?;
        Some((conn, &mut self.pool))
    }

    /// Takes the connection out of the table.
    pub fn remove(&mut self, handle: Handle) -> Option<Conn> {
        self.contains(handle).then(|| self.slab.remove(handle.key))
    }

    /// The output queue of `handle`, put on this turn's flush list.
    pub fn queue(&mut self, handle: Handle) -> Option<&mut Vec<u8>> {
        self.mark_dirty(handle);
        let (conn, pool) = self.with_pool(handle)?;
        Some(
            conn.out
                .get_or_insert_with(|| OutQueue::new(pool.get()))
                .tail(),
        )
    }

    /// Times the frame just queued to `handle` (see `OutQueue`): from
    /// `read_at`, the read that completed its source, to the write that
    /// finishes sending it.
    pub fn time_last_frame(&mut self, handle: Handle, read_at: Instant, direction: Direction) {
        if let Some(out) = self.get_mut(handle).and_then(|conn| conn.out.as_mut()) {
            out.time_last_frame(read_at, direction);
        }
    }

    /// Puts `handle` on this turn's flush list (also how a draining
    /// connection gets its FIN once its output is out).
    pub fn mark_dirty(&mut self, handle: Handle) {
        if let Some(conn) = self.get_mut(handle) {
            if !conn.dirty {
                conn.dirty = true;
                self.dirty.push(handle);
            }
        }
    }

    /// The flush list, emptied.
    pub fn take_dirty(&mut self) -> Vec<Handle> {
        std::mem::take(&mut self.dirty)
    }

    pub fn has_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Reads `handle` again this turn, readiness event or not.
    pub fn resume(&mut self, handle: Handle) {
        self.resume.push(handle);
    }

    /// The resume list, emptied.
    pub fn take_resume(&mut self) -> Vec<Handle> {
        std::mem::take(&mut self.resume)
    }

    pub fn has_resume(&self) -> bool {
        !self.resume.is_empty()
    }

    /// The connections to be read again this turn.
    pub fn resume_list(&self) -> &[Handle] {
        &self.resume
    }

    /// Every connection's handle, for a pass over all of them.
    pub fn handles(&self) -> Vec<Handle> {
        self.slab
            .iter()
            .map(|(key, conn)| Handle { key, id: conn.id })
            .collect()
    }

    /// The first connection for which `matches` holds.
    pub fn find(&self, matches: impl Fn(&Conn) -> bool) -> Option<Handle> {
        self.slab
            .iter()
            .find(|(_, conn)| matches(conn))
            .map(|(key, conn)| Handle { key, id: conn.id })
    }

    pub fn iter(&self) -> impl Iterator<Item = &Conn> {
        self.slab.iter().map(|(_, conn)| conn)
    }

    /// Gives back the table's room once a burst left it at most a quarter
    /// full (only the vacant entries after the last live one can go).
    pub fn shrink(&mut self) {
        if self.slab.capacity() > 64 && self.slab.len() * 4 <= self.slab.capacity() {
            self.slab.shrink_to_fit();
        }
    }

    pub fn len(&self) -> usize {
        self.slab.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slab.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_names_its_connection_and_no_successor() {
        let a = Handle { key: 5, id: 1 };
        let b = Handle { key: 5, id: 2 };
        assert_ne!(a.token(), b.token());
        assert_eq!(a.token().0 & 0xFFFF_FFFF, 5);
        assert!(
            Handle {
                key: MAX_KEY,
                id: u64::MAX
            }
            .token()
            .0 <= usize::MAX - 16
        );
    }
}
