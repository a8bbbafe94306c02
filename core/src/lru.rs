//! A recency list keyed by name, with O(1) lookup, touch, insert, removal
//! and eviction: a map from name to slot in a slab of nodes linked most- to
//! least-recently used, with freed slots reused through a free list.
//!
//! It orders and stores; it never evicts on its own. Bounds (entries,
//! bytes) are the caller's policy: [`crate::cache::CertCache`] keeps one
//! list for certificates and one for negative entries, each with its own
//! bound.

use std::collections::HashMap;

/// Marks "no neighbour" in the intrusive list.
const NIL: usize = usize::MAX;

/// Where an entry lives, valid until the next call that removes entries
/// (`remove*`, `pop_lru`, `retain`, `clear`); `insert` and `touch` keep it
/// valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot(usize);

struct Node<T> {
    name: String,
    value: T,
    /// Towards the most recently used end.
    prev: usize,
    /// Towards the least recently used end.
    next: usize,
}

pub struct Lru<T> {
    index: HashMap<String, usize>,
    slots: Vec<Option<Node<T>>>,
    free: Vec<usize>,
    /// Most recently used.
    head: usize,
    /// Least recently used: the next `pop_lru` answer.
    tail: usize,
}

impl<T> Default for Lru<T> {
    fn default() -> Self {
        Lru::new()
    }
}

impl<T> Lru<T> {
    pub fn new() -> Self {
        Lru {
            index: HashMap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
        }
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// The slot of `name`, without touching its recency.
    pub fn find(&self, name: &str) -> Option<Slot> {
        self.index.get(name).map(|&slot| Slot(slot))
    }

    pub fn get(&self, name: &str) -> Option<&T> {
        self.find(name).and_then(|slot| self.value(slot))
    }

    pub fn value(&self, slot: Slot) -> Option<&T> {
        self.node(slot.0).map(|node| &node.value)
    }

    pub fn value_mut(&mut self, slot: Slot) -> Option<&mut T> {
        self.node_mut(slot.0).map(|node| &mut node.value)
    }

    /// Marks the entry as the most recently used.
    pub fn touch(&mut self, slot: Slot) {
        if self.head != slot.0 && self.node(slot.0).is_some() {
            self.unlink(slot.0);
            self.link_front(slot.0);
        }
    }

    /// Inserts `name` as the most recently used entry, replacing (and
    /// returning) an entry of the same name. Callers that bound the list
    /// evict with [`Self::pop_lru`] first, so freed slots are reused and
    /// the slab never grows past the bound.
    pub fn insert(&mut self, name: String, value: T) -> Option<T> {
        let old = self.remove(&name);
        let node = Node {
            name: name.clone(),
            value,
            prev: NIL,
            next: NIL,
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                if let Some(free) = self.slots.get_mut(slot) {
                    *free = Some(node);
                }
                slot
            }
            None => {
                self.slots.push(Some(node));
                self.slots.len() - 1
            }
        };
        self.index.insert(name, slot);
        self.link_front(slot);
        old
    }

    pub fn remove(&mut self, name: &str) -> Option<T> {
        let slot = self.find(name)?;
        self.remove_at(slot).map(|(_, value)| value)
    }

    pub fn remove_at(&mut self, slot: Slot) -> Option<(String, T)> {
        let slot = slot.0;
        self.node(slot)?;
        self.unlink(slot);
        let node = self.slots.get_mut(slot).and_then(Option::take)?;
        self.index.remove(&node.name);
        self.free.push(slot);
        Some((node.name, node.value))
    }

    /// Removes and returns the least recently used entry.
    pub fn pop_lru(&mut self) -> Option<(String, T)> {
        self.remove_at(Slot(self.tail))
    }

    /// Keeps only the entries for which `keep` is true, handing each
    /// removed one to `removed`.
    pub fn retain(&mut self, mut keep: impl FnMut(&str, &T) -> bool, mut removed: impl FnMut(T)) {
        let mut doomed = Vec::new();
        let mut slot = self.head;
        while let Some(node) = self.node(slot) {
            if !keep(&node.name, &node.value) {
                doomed.push(Slot(slot));
            }
            slot = node.next;
        }
        for slot in doomed {
            if let Some((_, value)) = self.remove_at(slot) {
                removed(value);
            }
        }
    }

    pub fn clear(&mut self) {
        self.index.clear();
        self.slots.clear();
        self.free.clear();
        self.head = NIL;
        self.tail = NIL;
    }

    /// Every value, mutably, in no particular order and without touching
    /// recency.
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.slots.iter_mut().flatten().map(|node| &mut node.value)
    }

    /// Entries from most to least recently used.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &T)> {
        let mut slot = self.head;
        std::iter::from_fn(move || {
            let node = self.node(slot)?;
            slot = node.next;
            Some((node.name.as_str(), &node.value))
        })
    }

    /// Slab size, for tests that check slots are reused.
    #[cfg(test)]
    pub(crate) fn capacity_used(&self) -> usize {
        self.slots.len()
    }

    /// Freed slots waiting for reuse, for the same tests.
    #[cfg(test)]
    pub(crate) fn free_slots(&self) -> usize {
        self.free.len()
    }

    fn node(&self, slot: usize) -> Option<&Node<T>> {
        self.slots.get(slot).and_then(Option::as_ref)
    }

    fn node_mut(&mut self, slot: usize) -> Option<&mut Node<T>> {
        self.slots.get_mut(slot).and_then(Option::as_mut)
    }

    fn set_prev(&mut self, slot: usize, prev: usize) {
        if let Some(node) = self.node_mut(slot) {
            node.prev = prev;
        }
    }

    fn set_next(&mut self, slot: usize, next: usize) {
        if let Some(node) = self.node_mut(slot) {
            node.next = next;
        }
    }

    fn unlink(&mut self, slot: usize) {
        let Some((prev, next)) = self.node(slot).map(|n| (n.prev, n.next)) else {
            return;
        };
        if prev == NIL {
            self.head = next;
        } else {
            self.set_next(prev, next);
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.set_prev(next, prev);
        }
        self.set_prev(slot, NIL);
        self.set_next(slot, NIL);
    }

    fn link_front(&mut self, slot: usize) {
        let old_head = self.head;
        self.set_prev(slot, NIL);
        self.set_next(slot, old_head);
        if old_head == NIL {
            self.tail = slot;
        } else {
            self.set_prev(old_head, slot);
        }
        self.head = slot;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names<T>(lru: &Lru<T>) -> Vec<&str> {
        lru.iter().map(|(n, _)| n).collect()
    }

    #[test]
    fn insert_puts_the_entry_first_and_pop_takes_the_last() {
        let mut lru = Lru::new();
        for (i, n) in ["a", "b", "c"].into_iter().enumerate() {
            assert_eq!(lru.insert(n.to_owned(), i), None);
        }
        assert_eq!(names(&lru), ["c", "b", "a"]);
        assert_eq!(lru.pop_lru(), Some(("a".to_owned(), 0)));
        assert_eq!(names(&lru), ["c", "b"]);
    }

    #[test]
    fn touch_moves_to_the_front_and_find_does_not() {
        let mut lru = Lru::new();
        for n in ["a", "b", "c"] {
            lru.insert(n.to_owned(), ());
        }
        let a = lru.find("a").unwrap();
        assert_eq!(names(&lru), ["c", "b", "a"]);
        lru.touch(a);
        assert_eq!(names(&lru), ["a", "c", "b"]);
        lru.touch(a);
        assert_eq!(names(&lru), ["a", "c", "b"]);
    }

    #[test]
    fn insert_of_an_existing_name_replaces_it_and_returns_the_old_value() {
        let mut lru = Lru::new();
        lru.insert("a".to_owned(), 1);
        lru.insert("b".to_owned(), 2);
        assert_eq!(lru.insert("a".to_owned(), 3), Some(1));
        assert_eq!(names(&lru), ["a", "b"]);
        assert_eq!(lru.get("a"), Some(&3));
        assert_eq!(lru.len(), 2);
    }

    #[test]
    fn remove_unlinks_from_any_position() {
        let mut lru = Lru::new();
        for n in ["a", "b", "c", "d"] {
            lru.insert(n.to_owned(), ());
        }
        assert_eq!(lru.remove("b"), Some(()));
        assert_eq!(lru.remove("b"), None);
        assert_eq!(lru.remove("d"), Some(()));
        assert_eq!(lru.remove("a"), Some(()));
        assert_eq!(names(&lru), ["c"]);
        assert_eq!(lru.pop_lru(), Some(("c".to_owned(), ())));
        assert_eq!(lru.pop_lru(), None);
        assert!(lru.is_empty());
    }

    #[test]
    fn retain_hands_back_what_it_removes_and_slots_are_reused() {
        let mut lru = Lru::new();
        for (i, n) in ["a", "b", "c", "d"].into_iter().enumerate() {
            lru.insert(n.to_owned(), i);
        }
        let mut gone = Vec::new();
        lru.retain(|_, &v| v % 2 == 0, |v| gone.push(v));
        gone.sort();
        assert_eq!(gone, [1, 3]);
        assert_eq!(names(&lru), ["c", "a"]);
        lru.insert("e".to_owned(), 4);
        lru.insert("f".to_owned(), 5);
        assert_eq!(lru.capacity_used(), 4);
        assert_eq!(lru.free_slots(), 0);
    }

    #[test]
    fn value_mut_changes_in_place() {
        let mut lru = Lru::new();
        lru.insert("a".to_owned(), 1);
        let slot = lru.find("a").unwrap();
        *lru.value_mut(slot).unwrap() = 5;
        assert_eq!(lru.get("a"), Some(&5));
    }

    #[test]
    fn clear_forgets_everything() {
        let mut lru = Lru::new();
        lru.insert("a".to_owned(), 1);
        lru.clear();
        assert!(lru.is_empty());
        assert_eq!(lru.pop_lru(), None);
        lru.insert("b".to_owned(), 2);
        assert_eq!(names(&lru), ["b"]);
    }
}
