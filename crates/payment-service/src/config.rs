//! The payment service's settings: the platform's common sections and its simulated card
//! network and cap.

use platform::config::{CommonSettings, ServiceSettings};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct Settings {
    #[serde(flatten)]
    pub common: CommonSettings,
    pub payment: PaymentSettings,
}

impl ServiceSettings for Settings {
    const PORT: u16 = platform::dev::PAYMENT_PORT;

    fn common(&self) -> &CommonSettings {
        &self.common
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct PaymentSettings {
    /// Share of charges the simulated card network declines (0.0 to 1.0, none by default),
    /// decided from the order id so that a run is reproducible.
    pub decline_rate: f64,
    /// Most money one account may ever be paid in ($100,000,000,000.00 by default): every
    /// balance and sum stays far inside the database's 64-bit integers.
    pub max_deposited_cents: i64,
}

impl Default for PaymentSettings {
    fn default() -> Self {
        PaymentSettings {
            decline_rate: 0.0,
            max_deposited_cents: 10_000_000_000_000,
        }
    }
}
