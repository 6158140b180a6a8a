//! The inventory service's errors: its record routes' failures, answered by the platform
//! (`platform::records`) with the product's names and constraints.

use crate::stock::Product;
use platform::records::{Record, RecordError};

pub type InventoryError = RecordError<Product>;

impl Record for Product {
    const NAME: &'static str = "product";
    const INVALID: &'static str = "The product is not valid";
    const NOT_FOUND: &'static str = "No such product";
    const EXISTS: &'static str = "A product with this id already exists";
    const OVER_CAP: &'static str = "A product may receive at most the cap on units in all";
    const PRIMARY_KEY: &'static str = "products_pkey";
    const CHECKS: &'static [&'static str] = &[
        "products_stock_check",
        "products_price_cents_check",
        "products_received_check",
    ];
}
