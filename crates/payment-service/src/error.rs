//! The payment service's errors: its record routes' failures, answered by the platform
//! (`platform::records`) with the account's names and constraints.

use crate::ledger::Account;
use platform::records::{Record, RecordError};

pub type PaymentError = RecordError<Account>;

impl Record for Account {
    const NAME: &'static str = "account";
    const INVALID: &'static str = "The account is not valid";
    const NOT_FOUND: &'static str = "No such account";
    const EXISTS: &'static str = "An account for this user already exists";
    const OVER_CAP: &'static str = "An account may be paid at most the cap in all";
    const PRIMARY_KEY: &'static str = "accounts_pkey";
    const CHECKS: &'static [&'static str] = &[
        "accounts_balance_cents_check",
        "accounts_deposited_cents_check",
    ];
}
