//! How many retry receipts this device has sent per incoming message, bounded two ways: a message
//! that never decrypts gets at most [`MAX_RETRIES`] receipts (as WhatsApp clients stop asking), and
//! the ledger remembers at most [`RetryLedger::CAPACITY`] messages, so a sender flooding
//! undecryptable messages costs a fixed amount of memory.

use std::collections::{HashMap, VecDeque};

/// Retry receipts sent, and retry receipts honoured, per message before giving up.
pub const MAX_RETRIES: u32 = 3;

/// The answer for one more failure of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    /// Send a retry receipt with this `count` (1-based).
    Ask(u32),
    /// [`MAX_RETRIES`] receipts were sent already: stop asking.
    GiveUp,
}

#[derive(Debug, Default)]
pub struct RetryLedger {
    counts: HashMap<String, u32>,
    /// Keys in first-failure order, to forget the oldest when full.
    order: VecDeque<String>,
}

impl RetryLedger {
    /// Messages remembered at once.
    pub const CAPACITY: usize = 1024;

    /// Records one more failure of message `key` and says whether to ask again.
    pub fn failed(&mut self, key: &str) -> RetryDecision {
        if let Some(count) = self.counts.get_mut(key) {
            if *count >= MAX_RETRIES {
                return RetryDecision::GiveUp;
            }
            *count += 1;
            return RetryDecision::Ask(*count);
        }
        if self.order.len() == Self::CAPACITY
            && let Some(oldest) = self.order.pop_front()
        {
            self.counts.remove(&oldest);
        }
        self.counts.insert(key.to_owned(), 1);
        self.order.push_back(key.to_owned());
        RetryDecision::Ask(1)
    }

    /// The message decrypted: its count is no longer needed.
    pub fn succeeded(&mut self, key: &str) {
        if self.counts.remove(key).is_some() {
            self.order.retain(|k| k != key);
        }
    }

    pub fn len(&self) -> usize {
        self.counts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_gets_at_most_max_retries_receipts() {
        let mut ledger = RetryLedger::default();
        let asked: Vec<_> = (0..MAX_RETRIES + 3).map(|_| ledger.failed("a/1")).collect();
        let mut expected: Vec<_> = (1..=MAX_RETRIES).map(RetryDecision::Ask).collect();
        expected.extend([RetryDecision::GiveUp; 3]);
        assert_eq!(asked, expected);
        assert_eq!(ledger.failed("a/2"), RetryDecision::Ask(1), "other messages keep their own count");
    }

    #[test]
    fn a_decrypted_message_is_forgotten() {
        let mut ledger = RetryLedger::default();
        ledger.failed("a/1");
        ledger.failed("a/1");
        ledger.succeeded("a/1");
        assert!(ledger.is_empty());
        assert_eq!(ledger.failed("a/1"), RetryDecision::Ask(1));
    }

    #[test]
    fn a_flood_of_failures_keeps_the_ledger_bounded() {
        let mut ledger = RetryLedger::default();
        for i in 0..RetryLedger::CAPACITY * 4 {
            assert_eq!(ledger.failed(&format!("flood/{i}")), RetryDecision::Ask(1));
        }
        assert_eq!(ledger.len(), RetryLedger::CAPACITY);
        assert_eq!(ledger.order.len(), RetryLedger::CAPACITY);
        // The newest are remembered, the oldest forgotten.
        let newest = format!("flood/{}", RetryLedger::CAPACITY * 4 - 1);
        assert_eq!(ledger.failed(&newest), RetryDecision::Ask(2));
        assert_eq!(ledger.failed("flood/0"), RetryDecision::Ask(1));
    }
}
