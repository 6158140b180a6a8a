//! Inventory (product) service: deducts stock for new orders, exactly once and never below zero,
//! and puts it back when the order's payment fails.

pub mod config;
pub mod error;
pub mod events;
pub mod routes;
pub mod startup;
pub mod stock;
