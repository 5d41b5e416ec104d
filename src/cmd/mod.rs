//! Command implementations (shell side: files, terminals, clocks).

pub mod generate;
pub mod inspect;
pub mod replay;
mod report;
pub mod tail;
