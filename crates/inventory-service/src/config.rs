//! The inventory service's settings: the platform's common sections and its own caps.

use platform::config::{CommonSettings, ServiceSettings};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct Settings {
    #[serde(flatten)]
    pub common: CommonSettings,
    pub inventory: InventorySettings,
}

impl ServiceSettings for Settings {
    const PORT: u16 = platform::dev::INVENTORY_PORT;

    fn common(&self) -> &CommonSettings {
        &self.common
    }
}

/// Caps on what an admin may enter: with them, price × quantity and every stock sum fit in the
/// database's 64-bit integers by a wide margin.
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(default)]
pub struct InventorySettings {
    /// Highest price of one unit ($1,000,000.00 by default).
    pub max_price_cents: i64,
    /// Most units a product may ever receive (creation plus restocks).
    pub max_units: i64,
}

impl Default for InventorySettings {
    fn default() -> Self {
        InventorySettings {
            max_price_cents: 100_000_000,
            max_units: 1_000_000_000,
        }
    }
}
