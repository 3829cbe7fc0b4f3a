//! Honest receipts: a RECEIPT waits for the broker's confirm of every
//! publish that came before it on the session.
//!
//! The session records each publish it asks for and each receipt it owes,
//! in order. The driver reports confirms as they arrive (in publish order,
//! as a confirm channel delivers them); a receipt is due once no publish is
//! ahead of it. The number of receipts waiting is bounded
//! (`limits.max_pending_receipts`), and the number of publishes awaiting
//! confirms is what back-pressure reads (`limits.max_unconfirmed_publishes`).

use std::collections::VecDeque;

#[derive(Debug)]
enum Entry {
    Publish,
    Receipt(String),
}

#[derive(Debug, Default)]
pub(super) struct Confirms {
    entries: VecDeque<Entry>,
    publishes: usize,
    receipts: usize,
}

/// Too many receipts wait for confirms.
#[derive(Debug)]
pub(super) struct TooManyReceipts;

impl Confirms {
    pub(super) fn publish(&mut self) {
        self.entries.push_back(Entry::Publish);
        self.publishes += 1;
    }

    /// A receipt owed: `Some` when it is due at once, `None` when it waits
    /// behind unconfirmed publishes.
    pub(super) fn receipt(
        &mut self,
        receipt: String,
        limit: usize,
    ) -> Result<Option<String>, TooManyReceipts> {
        if self.publishes == 0 {
            return Ok(Some(receipt));
        }
        if self.receipts >= limit {
            return Err(TooManyReceipts);
        }
        self.receipts += 1;
        self.entries.push_back(Entry::Receipt(receipt));
        Ok(None)
    }

    /// The oldest publish was confirmed: the receipts now due, in order.
    pub(super) fn confirmed(&mut self, due: &mut Vec<String>) {
        // A confirm after the queue was cleared (the session failed) is
        // for a publish nobody waits for any more.
        if self.publishes == 0 {
            return;
        }
        while let Some(entry) = self.entries.pop_front() {
            match entry {
                Entry::Publish => {
                    self.publishes -= 1;
                    break;
                }
                // Cannot be first while publishes are pending; kept safe.
                Entry::Receipt(r) => {
                    self.receipts -= 1;
                    due.push(r);
                }
            }
        }
        while let Some(Entry::Receipt(_)) = self.entries.front() {
            if let Some(Entry::Receipt(r)) = self.entries.pop_front() {
                self.receipts -= 1;
                due.push(r);
            }
        }
    }

    /// Publishes awaiting their confirm.
    pub(super) fn unconfirmed(&self) -> usize {
        self.publishes
    }

    /// Nothing is owed any more (the session failed).
    pub(super) fn clear(&mut self) {
        *self = Confirms::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipts_wait_for_earlier_publishes_only() {
        let mut c = Confirms::default();
        assert_eq!(
            c.receipt("r0".into(), 4).ok().flatten().as_deref(),
            Some("r0")
        );
        c.publish();
        c.publish();
        assert!(c.receipt("r1".into(), 4).ok().is_some_and(|r| r.is_none()));
        c.publish();
        assert!(c.receipt("r2".into(), 4).ok().is_some_and(|r| r.is_none()));
        let mut due = Vec::new();
        c.confirmed(&mut due);
        assert!(due.is_empty());
        c.confirmed(&mut due);
        assert_eq!(due, ["r1"]);
        c.confirmed(&mut due);
        assert_eq!(due, ["r1", "r2"]);
        assert_eq!(c.unconfirmed(), 0);
        c.confirmed(&mut due);
        assert_eq!(due.len(), 2);
    }

    #[test]
    fn waiting_receipts_are_bounded() {
        let mut c = Confirms::default();
        c.publish();
        assert!(c.receipt("a".into(), 1).is_ok());
        assert!(c.receipt("b".into(), 1).is_err());
    }
}
