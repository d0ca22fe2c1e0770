//! Account storage behind a small trait, so a persistent store can replace the in-memory one.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::account::{Account, AccountKind};

/// Where accounts live. Methods take closures so a store can keep its own locking discipline.
pub trait Store: Send + Sync + 'static {
    /// Adds or replaces an account; `Err` when the store is full.
    fn put(&self, account: Account) -> Result<(), StoreFull>;
    /// Removes an account and returns it.
    fn remove(&self, jid: &str) -> Option<Account>;
    /// Runs `f` on the account; `false` when there is none.
    fn with(&self, jid: &str, f: &mut dyn FnMut(&mut Account)) -> bool;
    /// The JID of the account with this `accountID`.
    fn jid_by_account_id(&self, account_id: u64) -> Option<String>;
    /// The JID of a Partner user, by integrator and user identifier.
    fn jid_by_user(&self, integrator: u16, user_identifier: &str) -> Option<String>;
    /// The JID of the account whose LID user part is `lid_user` (see [`crate::account::lid_user_for`]).
    fn jid_by_lid(&self, lid_user: &str) -> Option<String>;
    /// Every account's JID.
    fn jids(&self) -> Vec<String>;
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The store refuses new accounts past its configured size.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("account store full ({0} accounts)")]
pub struct StoreFull(pub usize);

/// Accounts in memory, bounded in count.
pub struct MemoryStore {
    max_accounts: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    accounts: HashMap<String, Account>,
    by_account_id: HashMap<u64, String>,
    by_user: HashMap<(u16, String), String>,
    by_lid: HashMap<String, String>,
}

fn user_key(account: &Account) -> Option<(u16, String)> {
    match &account.kind {
        AccountKind::Interop { integrator, user_identifier } => Some((*integrator, user_identifier.clone())),
        AccountKind::WhatsApp { .. } => None,
    }
}

impl MemoryStore {
    pub fn new(max_accounts: usize) -> Self {
        MemoryStore { max_accounts, inner: Mutex::new(Inner::default()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind: keep serving it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Store for MemoryStore {
    fn put(&self, account: Account) -> Result<(), StoreFull> {
        let mut inner = self.lock();
        if !inner.accounts.contains_key(&account.jid) && inner.accounts.len() >= self.max_accounts {
            return Err(StoreFull(self.max_accounts));
        }
        // Only Partner users log in by accountID; phone numbers must not shadow them.
        if let Some(key) = user_key(&account) {
            inner.by_account_id.insert(account.account_id, account.jid.clone());
            inner.by_user.insert(key, account.jid.clone());
        }
        inner.by_lid.insert(crate::account::lid_user_for(&account.jid), account.jid.clone());
        inner.accounts.insert(account.jid.clone(), account);
        Ok(())
    }

    fn remove(&self, jid: &str) -> Option<Account> {
        let mut inner = self.lock();
        let account = inner.accounts.remove(jid)?;
        inner.by_lid.remove(&crate::account::lid_user_for(jid));
        if let Some(key) = user_key(&account) {
            inner.by_account_id.remove(&account.account_id);
            inner.by_user.remove(&key);
        }
        Some(account)
    }

    fn with(&self, jid: &str, f: &mut dyn FnMut(&mut Account)) -> bool {
        match self.lock().accounts.get_mut(jid) {
            Some(a) => {
                f(a);
                true
            }
            None => false,
        }
    }

    fn jid_by_account_id(&self, account_id: u64) -> Option<String> {
        self.lock().by_account_id.get(&account_id).cloned()
    }

    fn jid_by_user(&self, integrator: u16, user_identifier: &str) -> Option<String> {
        self.lock().by_user.get(&(integrator, user_identifier.to_owned())).cloned()
    }

    fn jid_by_lid(&self, lid_user: &str) -> Option<String> {
        self.lock().by_lid.get(lid_user).cloned()
    }

    fn jids(&self) -> Vec<String> {
        self.lock().accounts.keys().cloned().collect()
    }

    fn len(&self) -> usize {
        self.lock().accounts.len()
    }
}
