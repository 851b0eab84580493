//! The analyst's tools: replaying authorizations through candidate policies
//! (`replay.rs`, fed from a store by `history.rs`), reporting what changes
//! (`report.rs`) and comparing two policy versions (`diff.rs`).

pub mod diff;
pub mod generate;
pub mod history;
pub mod replay;
pub mod report;
