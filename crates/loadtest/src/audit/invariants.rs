//! The checks themselves, over the rows the audit loaded: each a pure function of the
//! snapshots, so a broken invariant is a failed [`Check`], never an error.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use uuid::Uuid;

use super::*;

/// The loaded rows, indexed for the joins.
pub(super) struct Rows<'a> {
    orders: &'a [OrderRow],
    order_by_id: HashMap<Uuid, &'a OrderRow>,
    products: &'a [ProductRow],
    reservations: &'a [ReservationRow],
    reservation_by_order: HashMap<Uuid, &'a ReservationRow>,
    accounts: &'a [AccountRow],
    charges: &'a [ChargeRow],
    /// All charge rows of an order (the primary key makes it at most one; the audit does not
    /// rely on that).
    charges_by_order: HashMap<Uuid, Vec<&'a ChargeRow>>,
}

impl<'a> Rows<'a> {
    pub(super) fn new(
        o: &'a OrdersSnapshot,
        i: &'a InventorySnapshot,
        p: &'a PaymentsSnapshot,
    ) -> Self {
        let order_by_id = o.orders.iter().map(|r| (r.id, r)).collect();
        let reservation_by_order = i.reservations.iter().map(|r| (r.order_id, r)).collect();
        let mut charges_by_order: HashMap<Uuid, Vec<&ChargeRow>> = HashMap::new();
        for c in &p.charges {
            charges_by_order.entry(c.order_id).or_default().push(c);
        }
        Self {
            orders: &o.orders,
            order_by_id,
            products: &i.products,
            reservations: &i.reservations,
            reservation_by_order,
            accounts: &p.accounts,
            charges: &p.charges,
            charges_by_order,
        }
    }

    fn charges_of(&self, order: Uuid) -> &[&'a ChargeRow] {
        self.charges_by_order
            .get(&order)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// Check 1: stock == received − Σ ACTIVE reserved == received − Σ COMPLETED qty, stock ≥ 0.
    pub(super) fn stock(&self) -> Check {
        let mut active: HashMap<i64, i64> = HashMap::new();
        for r in self.reservations.iter().filter(|r| r.status == "ACTIVE") {
            *active.entry(r.product_id).or_default() += i64::from(r.quantity);
        }
        let mut completed: BTreeMap<i64, i64> = BTreeMap::new();
        for o in self.orders.iter().filter(|o| o.status == "COMPLETED") {
            *completed.entry(o.product_id).or_default() += i64::from(o.quantity);
        }
        let mut bad = Vec::new();
        let mut good = Vec::new();
        for p in self.products {
            let act = active.get(&p.id).copied().unwrap_or(0);
            let done = completed.remove(&p.id).unwrap_or(0);
            let ok = p.stock >= 0 && p.stock == p.received - act && act == done;
            let eq = if p.stock == p.received - act {
                "=="
            } else {
                "!="
            };
            let line = format!(
                "product {}: stock {} {eq} received {} − active reserved {act}; COMPLETED qty {done}{}{}",
                p.id,
                p.stock,
                p.received,
                if act == done {
                    ""
                } else {
                    " (≠ active reserved)"
                },
                if p.stock < 0 { " (negative stock)" } else { "" },
            );
            if ok {
                good.push(line);
            } else {
                bad.push(line);
            }
        }
        // COMPLETED orders for products the inventory does not know.
        for (product, qty) in completed {
            bad.push(format!(
                "product {product}: unknown to inventory; COMPLETED qty {qty}"
            ));
        }
        let total = bad.len() + good.len();
        let passed = bad.is_empty();
        let mut detail = if passed {
            format!("{total} products consistent")
        } else {
            format!("{} of {total} products inconsistent", bad.len())
        };
        let shown: Vec<&String> = bad.iter().chain(good.iter()).collect();
        for line in shown.iter().take(MAX_PRODUCTS_SHOWN) {
            let _ = write!(detail, " | {line}");
        }
        if shown.len() > MAX_PRODUCTS_SHOWN {
            let _ = write!(detail, " | … {} more", shown.len() - MAX_PRODUCTS_SHOWN);
        }
        Check::new(CHECK_STOCK, passed, detail)
    }

    /// Check 2a: each COMPLETED order has an ACTIVE reservation matching it and a SUCCEEDED
    /// charge of the right amount (the order's amount, or the reservation's when the order has
    /// none).
    pub(super) fn completed_orders(&self) -> Check {
        let mut n = 0usize;
        let mut no_active = Offenders::default();
        let mut res_mismatch = Offenders::default();
        let mut no_success = Offenders::default();
        let mut wrong_amount = Offenders::default();
        for o in self.orders.iter().filter(|o| o.status == "COMPLETED") {
            n += 1;
            let res = self.reservation_by_order.get(&o.id).copied();
            match res {
                Some(r) if r.status == "ACTIVE" => {
                    if r.product_id != o.product_id
                        || r.quantity != o.quantity
                        || r.user_id != o.user_id
                        || o.amount_cents.is_some_and(|a| a != r.amount_cents)
                    {
                        res_mismatch.add(o.id);
                    }
                }
                _ => no_active.add(o.id),
            }
            let expected = o.amount_cents.or(res.map(|r| r.amount_cents));
            let succeeded: Vec<_> = self
                .charges_of(o.id)
                .iter()
                .filter(|c| c.status == "SUCCEEDED")
                .collect();
            if succeeded.is_empty() {
                no_success.add(o.id);
            } else if succeeded
                .iter()
                .any(|c| Some(c.amount_cents) != expected || c.user_id != o.user_id)
            {
                wrong_amount.add(o.id);
            }
        }
        let passed = no_active.is_empty()
            && res_mismatch.is_empty()
            && no_success.is_empty()
            && wrong_amount.is_empty();
        let detail = format!(
            "{n} COMPLETED: {} without an ACTIVE reservation{}, {} reservation not matching the order{}, \
             {} without a SUCCEEDED charge{}, {} charged the wrong amount or user{}",
            no_active.count,
            no_active.examples(),
            res_mismatch.count,
            res_mismatch.examples(),
            no_success.count,
            no_success.examples(),
            wrong_amount.count,
            wrong_amount.examples(),
        );
        Check::new(CHECK_COMPLETED_ORDERS, passed, detail)
    }

    /// Check 2b: each FAILED order has no ACTIVE reservation and no SUCCEEDED charge; for a stock
    /// reason no reservation and no charge at all; for a payment reason a FAILED charge.
    pub(super) fn failed_orders(&self) -> Check {
        let mut n = 0usize;
        let mut by_reason: BTreeMap<&str, usize> = BTreeMap::new();
        let mut active = Offenders::default();
        let mut succeeded = Offenders::default();
        let mut stock_reason_trail = Offenders::default();
        let mut payment_no_failed_charge = Offenders::default();
        let mut unknown_reason = Offenders::default();
        for o in self.orders.iter().filter(|o| o.status == "FAILED") {
            n += 1;
            let reason = o.failure_reason.as_deref().unwrap_or("");
            *by_reason.entry(reason).or_default() += 1;
            let res = self.reservation_by_order.get(&o.id).copied();
            let charges = self.charges_of(o.id);
            if res.is_some_and(|r| r.status == "ACTIVE") {
                active.add(o.id);
            }
            if charges.iter().any(|c| c.status == "SUCCEEDED") {
                succeeded.add(o.id);
            }
            if STOCK_REASONS.contains(&reason) {
                if res.is_some() || !charges.is_empty() {
                    stock_reason_trail.add(o.id);
                }
            } else if PAYMENT_REASONS.contains(&reason) {
                if !charges.iter().any(|c| c.status == "FAILED") {
                    payment_no_failed_charge.add(o.id);
                }
            } else {
                unknown_reason.add(o.id);
            }
        }
        let passed = active.is_empty()
            && succeeded.is_empty()
            && stock_reason_trail.is_empty()
            && payment_no_failed_charge.is_empty()
            && unknown_reason.is_empty();
        let reasons = if by_reason.is_empty() {
            String::new()
        } else {
            let list: Vec<String> = by_reason.iter().map(|(r, c)| format!("{r} {c}")).collect();
            format!(" ({})", list.join(", "))
        };
        let detail = format!(
            "{n} FAILED{reasons}: {} with an ACTIVE reservation{}, {} with a SUCCEEDED charge{}, \
             {} stock failures with a reservation or charge{}, {} payment failures without a FAILED charge{}, \
             {} with an unknown reason{}",
            active.count,
            active.examples(),
            succeeded.count,
            succeeded.examples(),
            stock_reason_trail.count,
            stock_reason_trail.examples(),
            payment_no_failed_charge.count,
            payment_no_failed_charge.examples(),
            unknown_reason.count,
            unknown_reason.examples(),
        );
        Check::new(CHECK_FAILED_ORDERS, passed, detail)
    }

    /// Check 3a: No order has more than one SUCCEEDED charge.
    pub(super) fn paid_once(&self) -> Check {
        let mut paid_orders = 0usize;
        let mut successes = 0usize;
        let mut twice = Offenders::default();
        for (order, charges) in &self.charges_by_order {
            let s = charges.iter().filter(|c| c.status == "SUCCEEDED").count();
            successes += s;
            if s > 0 {
                paid_orders += 1;
            }
            if s > 1 {
                twice.add(*order);
            }
        }
        let passed = twice.is_empty();
        let detail = format!(
            "{successes} SUCCEEDED charges over {paid_orders} orders; {} orders paid more than once{}",
            twice.count,
            twice.examples()
        );
        Check::new(CHECK_PAID_ONCE, passed, detail)
    }

    /// Check 3b: Per account and in total: balance + Σ SUCCEEDED charges == deposited.
    pub(super) fn money_conserved(&self) -> Check {
        let mut charged: HashMap<i64, i64> = HashMap::new();
        let mut total_charged = 0i64;
        for c in self.charges.iter().filter(|c| c.status == "SUCCEEDED") {
            *charged.entry(c.user_id).or_default() += c.amount_cents;
            total_charged += c.amount_cents;
        }
        let mut total_balance = 0i64;
        let mut total_deposited = 0i64;
        let mut off = Vec::new();
        for a in self.accounts {
            total_balance += a.balance_cents;
            total_deposited += a.deposited_cents;
            let ch = charged.remove(&a.user_id).unwrap_or(0);
            if a.balance_cents + ch != a.deposited_cents {
                off.push(format!(
                    "user {}: {} + {ch} != {}",
                    a.user_id, a.balance_cents, a.deposited_cents
                ));
            }
        }
        // Successful charges on users without an account.
        let mut no_account: Vec<(i64, i64)> = charged.into_iter().collect();
        no_account.sort_unstable();
        for (user, ch) in &no_account {
            off.push(format!("user {user}: no account, charged {ch}"));
        }
        let total_ok = total_balance + total_charged == total_deposited;
        let passed = total_ok && off.is_empty();
        let mut detail = format!(
            "Σ balance {total_balance} + Σ SUCCEEDED charges {total_charged} {} Σ deposited {total_deposited}; \
             {} of {} accounts off",
            if total_ok { "==" } else { "!=" },
            off.len() - no_account.len(),
            self.accounts.len(),
        );
        if !no_account.is_empty() {
            let _ = write!(
                detail,
                "; {} users charged without an account",
                no_account.len()
            );
        }
        if !off.is_empty() {
            let shown: Vec<&str> = off.iter().take(MAX_EXAMPLES).map(String::as_str).collect();
            let _ = write!(detail, " (e.g. {})", shown.join(", "));
        }
        Check::new(CHECK_MONEY_CONSERVED, passed, detail)
    }

    /// Check 4: Each RELEASED reservation: its order FAILED for a payment reason with a FAILED
    /// charge, released once (released_at set, not before reserved_at). A second release of the
    /// same units would show as surplus stock in the `stock` check.
    pub(super) fn released_reservations(&self) -> Check {
        let mut n = 0usize;
        let mut wrong_order = Offenders::default();
        let mut no_failed_charge = Offenders::default();
        let mut bad_release = Offenders::default();
        for r in self.reservations.iter().filter(|r| r.status == "RELEASED") {
            n += 1;
            match self.order_by_id.get(&r.order_id) {
                Some(o)
                    if o.status == "FAILED"
                        && o.failure_reason
                            .as_deref()
                            .is_some_and(|f| PAYMENT_REASONS.contains(&f)) => {}
                _ => wrong_order.add(r.order_id),
            }
            if !self
                .charges_of(r.order_id)
                .iter()
                .any(|c| c.status == "FAILED")
            {
                no_failed_charge.add(r.order_id);
            }
            if r.released_at.is_none_or(|t| t < r.reserved_at) {
                bad_release.add(r.order_id);
            }
        }
        let passed =
            wrong_order.is_empty() && no_failed_charge.is_empty() && bad_release.is_empty();
        let detail = format!(
            "{n} RELEASED: {} whose order is not FAILED for a payment reason{}, {} without a FAILED charge{}, \
             {} with a bad release time{}",
            wrong_order.count,
            wrong_order.examples(),
            no_failed_charge.count,
            no_failed_charge.examples(),
            bad_release.count,
            bad_release.examples(),
        );
        Check::new(CHECK_RELEASED_RESERVATIONS, passed, detail)
    }

    /// Reservations or charges whose order does not exist in the orders DB.
    pub(super) fn orphans(&self) -> Check {
        let mut res = Offenders::default();
        for r in self.reservations {
            if !self.order_by_id.contains_key(&r.order_id) {
                res.add(r.order_id);
            }
        }
        let mut charges = Offenders::default();
        for c in self.charges {
            if !self.order_by_id.contains_key(&c.order_id) {
                charges.add(c.order_id);
            }
        }
        let passed = res.is_empty() && charges.is_empty();
        let detail = format!(
            "{} of {} reservations and {} of {} charges have no order{}{}",
            res.count,
            self.reservations.len(),
            charges.count,
            self.charges.len(),
            res.examples(),
            charges.examples(),
        );
        Check::new(CHECK_ORPHANS, passed, detail)
    }

    /// Check 5a: No order left PENDING, and no saga left open: every order whose payment failed
    /// had inventory confirm that its stock went back. Once the system is quiet such an order
    /// is a lost one, so each is named by its id (up to [`MAX_OPEN_ORDERS_NAMED`] of each kind,
    /// with the total).
    pub(super) fn orders_final(&self) -> Check {
        let mut pending = Offenders::naming(MAX_OPEN_ORDERS_NAMED);
        let mut unconfirmed = Offenders::naming(MAX_OPEN_ORDERS_NAMED);
        for o in self.orders {
            match o.status.as_str() {
                "PENDING" => pending.add(o.id),
                _ if o.saga_open => unconfirmed.add(o.id),
                _ => {}
            }
        }
        let passed = pending.is_empty() && unconfirmed.is_empty();
        let detail = format!(
            "{} orders: {} PENDING{}, {} payment failures without a confirmed stock release{}",
            self.orders.len(),
            pending.count,
            pending.named(),
            unconfirmed.count,
            unconfirmed.named(),
        );
        Check::new(CHECK_ORDERS_FINAL, passed, detail)
    }
}

/// Check 5b: No outbox row left unpublished in any DB.
pub(super) fn outbox_drained(orders: i64, inventory: i64, payments: i64) -> Check {
    let total = orders + inventory + payments;
    Check::new(
        CHECK_OUTBOX_DRAINED,
        total == 0,
        format!(
            "{total} unpublished outbox rows (orders {orders}, inventory {inventory}, payments {payments})"
        ),
    )
}

/// Check 5c: Dead letters counted and shown: expected zero.
pub(super) fn dead_letters(
    orders: &[DeadLetterGroup],
    inventory: &[DeadLetterGroup],
    payments: &[DeadLetterGroup],
) -> Check {
    let sum = |g: &[DeadLetterGroup]| g.iter().map(|d| d.n).sum::<i64>();
    let (o, i, p) = (sum(orders), sum(inventory), sum(payments));
    let total = o + i + p;
    let mut detail =
        format!("{total} dead letters (orders {o}, inventory {i}, payments {p}; expected 0)");
    let groups: Vec<String> = [
        ("orders", orders),
        ("inventory", inventory),
        ("payments", payments),
    ]
    .iter()
    .flat_map(|(db, gs)| {
        gs.iter().map(move |g| {
            format!(
                "{db}: {} × consumer {} subject {} reason {:?}",
                g.n, g.consumer, g.subject, g.reason
            )
        })
    })
    .collect();
    if !groups.is_empty() {
        let shown: Vec<&str> = groups
            .iter()
            .take(MAX_EXAMPLES)
            .map(String::as_str)
            .collect();
        let _ = write!(detail, ": {}", shown.join("; "));
        if groups.len() > MAX_EXAMPLES {
            let _ = write!(detail, "; … {} more groups", groups.len() - MAX_EXAMPLES);
        }
    }
    Check::new(CHECK_DEAD_LETTERS, total == 0, detail)
}

/// Check 6: p95 latency and error rate, from the caller's figures.
pub(super) fn http_checks(http: Option<&HttpFigures>) -> [Check; 2] {
    match http {
        None => [
            Check::new(CHECK_HTTP_P95, true, "not measured"),
            Check::new(CHECK_HTTP_ERROR_RATE, true, "not measured"),
        ],
        Some(h) => {
            let p95_ok = h.p95_ms < h.p95_threshold_ms;
            let err_ok = h.error_rate <= h.max_error_rate;
            [
                Check::new(
                    CHECK_HTTP_P95,
                    p95_ok,
                    format!(
                        "p95 {:.1} ms {} threshold {:.1} ms",
                        h.p95_ms,
                        if p95_ok { "<" } else { ">=" },
                        h.p95_threshold_ms
                    ),
                ),
                Check::new(
                    CHECK_HTTP_ERROR_RATE,
                    err_ok,
                    format!(
                        "error rate {:.4}% {} allowed {:.4}%",
                        h.error_rate * 100.0,
                        if err_ok { "<=" } else { ">" },
                        h.max_error_rate * 100.0
                    ),
                ),
            ]
        }
    }
}

/// Offending ids: a count and the first few for the detail line.
struct Offenders {
    count: usize,
    /// How many ids are kept.
    limit: usize,
    first: Vec<Uuid>,
}

impl Default for Offenders {
    fn default() -> Self {
        Offenders::naming(MAX_EXAMPLES)
    }
}

impl Offenders {
    /// Keeps the first `limit` ids.
    fn naming(limit: usize) -> Self {
        Offenders {
            count: 0,
            limit,
            first: Vec::new(),
        }
    }

    fn add(&mut self, id: Uuid) {
        self.count += 1;
        if self.first.len() < self.limit {
            self.first.push(id);
        }
    }

    fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn ids(&self) -> String {
        let ids: Vec<String> = self.first.iter().map(Uuid::to_string).collect();
        ids.join(", ")
    }

    /// A few of the ids, as examples: " (e.g. a, b, …)".
    fn examples(&self) -> String {
        if self.first.is_empty() {
            return String::new();
        }
        let more = if self.count > self.first.len() {
            ", …"
        } else {
            ""
        };
        format!(" (e.g. {}{more})", self.ids())
    }

    /// Every id kept, and how many were not: " (a, b)" or " (first 20 of 25: a, b, …)".
    fn named(&self) -> String {
        if self.first.is_empty() {
            return String::new();
        }
        if self.count > self.first.len() {
            format!(
                " (first {} of {}: {})",
                self.first.len(),
                self.count,
                self.ids()
            )
        } else {
            format!(" ({})", self.ids())
        }
    }
}
