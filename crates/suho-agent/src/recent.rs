//! A bounded set of the command ids the agent recently sent, oldest forgotten first. Because a
//! command id is derived from (user, signal), this is the set of (user, signal) pairs already
//! traded: a signal delivered again within the window sends nothing. Beyond the window, a
//! duplicate is still harmless, since it carries the same `event_id` and the engine executes a
//! command id once.

use std::collections::{HashSet, VecDeque};

/// At most `capacity` ids, in insertion order.
#[derive(Debug)]
pub struct RecentSet {
    ids: HashSet<String>,
    order: VecDeque<String>,
    capacity: usize,
}

impl RecentSet {
    /// An empty set that holds at most `capacity` ids (at least one).
    #[must_use]
    pub fn new(capacity: usize) -> RecentSet {
        RecentSet {
            ids: HashSet::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// Whether `id` was inserted and not yet forgotten.
    #[must_use]
    pub fn contains(&self, id: &str) -> bool {
        self.ids.contains(id)
    }

    /// Remembers `id`, forgetting the oldest when full; `false` if it was already there.
    pub fn insert(&mut self, id: String) -> bool {
        if self.ids.contains(&id) {
            return false;
        }
        while self.order.len() >= self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.ids.remove(&old);
            }
        }
        self.ids.insert(id.clone());
        self.order.push_back(id);
        true
    }

    /// How many ids are remembered.
    #[must_use]
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether nothing is remembered.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_up_to_capacity_and_forgets_the_oldest() {
        let mut r = RecentSet::new(2);
        assert!(r.insert("a".into()));
        assert!(!r.insert("a".into()), "already there");
        assert!(r.insert("b".into()));
        assert!(r.insert("c".into()));
        assert_eq!(r.len(), 2);
        assert!(!r.contains("a"), "oldest forgotten");
        assert!(r.contains("b") && r.contains("c"));
        let mut one = RecentSet::new(0);
        assert!(
            one.insert("x".into()) && one.contains("x"),
            "holds at least one"
        );
    }
}
