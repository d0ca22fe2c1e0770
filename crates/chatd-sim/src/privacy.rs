//! Privacy settings as the `privacy` IQ carries them: `<privacy><category name=".." value=".."/>
//! ...</privacy>`, the shape WhatsApp Web clients read (Baileys' `fetchPrivacySettings`) and write
//! one category at a time. The simulator stores them per account and answers with every category.
//! Of them it enforces `readreceipts` (a `read` receipt between two accounts is not relayed while
//! either has it `none`: see the chat handler); the others (who sees last-seen, profile, status)
//! concern stanzas the simulator does not relay.

use std::collections::BTreeMap;

/// The categories clients set, with the value an account starts with. WhatsApp's defaults for new
/// accounts are not public; these are the permissive ones, which is what the clients' UIs show
/// for a fresh account.
const CATEGORIES: &[(&str, &str)] = &[
    ("calladd", "all"),
    ("groupadd", "all"),
    ("last", "all"),
    ("messages", "all"),
    ("online", "all"),
    ("profile", "all"),
    ("readreceipts", "all"),
    ("status", "contacts"),
];

/// The values clients send (Baileys' `WAPrivacyValue`, `WAPrivacyOnlineValue`,
/// `WAReadReceiptsValue`, `WAPrivacyGroupAddValue`, `WAPrivacyCallValue`, `WAPrivacyMessagesValue`).
const VALUES: &[&str] = &["all", "contacts", "contact_blacklist", "none", "match_last_seen", "known"];

/// Why a `set` was refused (the IQ answers 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PrivacyError {
    #[error("unknown privacy category")]
    UnknownCategory,
    #[error("unknown privacy value")]
    UnknownValue,
}

/// One account's settings: only what it changed is stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Privacy {
    set: BTreeMap<&'static str, &'static str>,
}

impl Privacy {
    /// Every category with its current value, in name order.
    pub fn categories(&self) -> impl Iterator<Item = (&'static str, &'static str)> + '_ {
        CATEGORIES.iter().map(|&(name, default)| (name, self.set.get(name).copied().unwrap_or(default)))
    }

    /// Sets one category; the name and value must be ones clients use.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), PrivacyError> {
        let name = CATEGORIES.iter().find(|(n, _)| *n == name).ok_or(PrivacyError::UnknownCategory)?.0;
        let value = VALUES.iter().find(|v| **v == value).ok_or(PrivacyError::UnknownValue)?;
        self.set.insert(name, value);
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&'static str> {
        self.categories().find(|(n, _)| *n == name).map(|(_, v)| v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_account_has_every_category_and_a_set_changes_only_its_own() {
        let mut p = Privacy::default();
        assert_eq!(p.categories().count(), CATEGORIES.len());
        assert_eq!(p.get("readreceipts"), Some("all"));
        p.set("readreceipts", "none").unwrap();
        assert_eq!(p.get("readreceipts"), Some("none"));
        assert_eq!(p.get("last"), Some("all"));
    }

    #[test]
    fn unknown_names_and_values_are_refused_and_store_nothing() {
        let mut p = Privacy::default();
        assert_eq!(p.set("nickname", "all"), Err(PrivacyError::UnknownCategory));
        assert_eq!(p.set("last", "everyone"), Err(PrivacyError::UnknownValue));
        assert_eq!(p, Privacy::default());
    }
}
