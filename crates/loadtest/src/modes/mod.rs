//! The load modes: what each adds to the one executor (`session`).

pub mod capacity;
pub mod run;
