//! mio `Token` allocation for the broker's many event sources.
//!
//! Scheme:
//! * tokens below [`FIRST_DYNAMIC`] are fixed and name one source each for
//!   the whole run (the signalfd, the command socket; room is left for more,
//!   such as a status socket);
//! * every other source (proxy TCP listeners, proxy UDP sockets, the two
//!   halves of each relayed connection, per-rule UDP relay sockets) gets
//!   `Token(FIRST_DYNAMIC + slot)` from a [`TokenSlab`], which maps the slot
//!   back to what the source is.
//!
//! A freed slot is not reused before the current batch of events is fully
//! handled ([`TokenSlab::end_batch`]): otherwise an event still queued in the
//! batch for the closed socket would be delivered to the new one.

use mio::Token;

/// The signalfd (SIGTERM, SIGINT, SIGHUP).
pub const SIGNALS: Token = Token(0);
/// The UDP command socket.
pub const COMMAND: Token = Token(1);
/// First token handed out by the slab.
pub const FIRST_DYNAMIC: usize = 16;

pub struct TokenSlab<T> {
    slots: Vec<Option<T>>,
    free: Vec<usize>,
    /// Slots freed during the current event batch, reusable after it.
    quarantine: Vec<usize>,
}

impl<T> Default for TokenSlab<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> TokenSlab<T> {
    pub fn new() -> Self {
        TokenSlab {
            slots: Vec::new(),
            free: Vec::new(),
            quarantine: Vec::new(),
        }
    }

    /// Stores `value` and returns the token to register its source with.
    pub fn insert(&mut self, value: T) -> Token {
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot] = Some(value);
                slot
            }
            None => {
                self.slots.push(Some(value));
                self.slots.len() - 1
            }
        };
        Token(FIRST_DYNAMIC + slot)
    }

    fn slot(token: Token) -> Option<usize> {
        token.0.checked_sub(FIRST_DYNAMIC)
    }

    pub fn get(&self, token: Token) -> Option<&T> {
        self.slots.get(Self::slot(token)?)?.as_ref()
    }

    pub fn get_mut(&mut self, token: Token) -> Option<&mut T> {
        self.slots.get_mut(Self::slot(token)?)?.as_mut()
    }

    /// Frees the token's slot; deregister the source from mio first.
    pub fn remove(&mut self, token: Token) -> Option<T> {
        let slot = Self::slot(token)?;
        let value = self.slots.get_mut(slot)?.take()?;
        self.quarantine.push(slot);
        Some(value)
    }

    /// Called after each batch of events: freed slots become reusable.
    pub fn end_batch(&mut self) {
        self.free.append(&mut self.quarantine);
    }

    pub fn len(&self) -> usize {
        self.slots.len() - self.free.len() - self.quarantine.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_start_after_the_fixed_ones() {
        let mut slab = TokenSlab::new();
        let a = slab.insert("a");
        assert_eq!(a, Token(FIRST_DYNAMIC));
        assert!(slab.get(COMMAND).is_none() && slab.get(SIGNALS).is_none());
        assert_eq!(slab.get(a), Some(&"a"));
    }

    #[test]
    fn freed_slot_is_reused_only_after_the_batch() {
        let mut slab = TokenSlab::new();
        let a = slab.insert(1);
        assert_eq!(slab.remove(a), Some(1));
        assert_eq!(slab.remove(a), None);
        let b = slab.insert(2);
        assert_ne!(a, b, "reused within the batch");
        assert!(slab.get(a).is_none(), "stale token must find nothing");
        slab.end_batch();
        let c = slab.insert(3);
        assert_eq!(c, a);
        *slab.get_mut(c).unwrap() += 1;
        assert_eq!(slab.get(c), Some(&4));
        assert_eq!(slab.len(), 2);
    }
}
