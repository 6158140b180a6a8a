//! The simulated card network: declines a fixed share of orders, the same ones on every run.

use uuid::Uuid;

/// FNV-1a over the id's bytes: stable across runs and platforms, spread well enough here.
fn stable_hash(id: Uuid) -> u64 {
    id.as_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| {
            (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
        })
}

/// Whether the card network declines this order's charge at the given rate.
pub fn is_declined(order_id: Uuid, rate: f64) -> bool {
    if rate <= 0.0 {
        return false;
    }
    if rate >= 1.0 {
        return true;
    }
    const SCALE: u64 = 1_000_000;
    (stable_hash(order_id) % SCALE) < (rate * SCALE as f64) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_decision_is_deterministic() {
        let id = Uuid::now_v7();
        assert_eq!(is_declined(id, 0.3), is_declined(id, 0.3));
    }

    #[test]
    fn rates_zero_and_one_are_absolute() {
        let id = Uuid::now_v7();
        assert!(!is_declined(id, 0.0));
        assert!(is_declined(id, 1.0));
    }

    #[test]
    fn the_declined_share_follows_the_rate() {
        let n = 20_000;
        let declined = (0..n).filter(|_| is_declined(Uuid::now_v7(), 0.1)).count();
        let share = declined as f64 / n as f64;
        assert!((0.08..0.12).contains(&share), "share {share}");
    }
}
