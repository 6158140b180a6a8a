pub mod capacity;
pub mod run;
