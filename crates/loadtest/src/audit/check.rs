//! The one check type: the audit's, the drain's, the fault schedule's and the capacity verdict
//! are all reported, printed and judged the same way.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub passed: bool,
    /// The numbers behind the verdict, e.g. "final stock 0 = 3000 − 3000 sold".
    pub detail: String,
}

impl Check {
    pub fn new(name: impl Into<String>, passed: bool, detail: impl Into<String>) -> Self {
        Check {
            name: name.into(),
            passed,
            detail: detail.into(),
        }
    }
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mark = if self.passed { "PASS" } else { "FAIL" };
        write!(f, "[{mark}] {}: {}", self.name, self.detail)
    }
}

/// Ids named in a check's detail, at most this many.
pub const NAMED: usize = 20;

/// The first [`NAMED`] of `ids`, and how many more there are: a failed check names what it
/// found without printing thousands of ids.
pub fn name_ids<T: std::fmt::Display>(ids: &[T]) -> String {
    let shown: Vec<String> = ids.iter().take(NAMED).map(T::to_string).collect();
    let more = ids.len().saturating_sub(NAMED);
    if more > 0 {
        format!("{} (and {more} more)", shown.join(", "))
    } else {
        shown.join(", ")
    }
}
