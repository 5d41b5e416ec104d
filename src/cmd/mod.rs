//! Command implementations (shell side: files, terminals, clocks).

pub mod check;
pub mod generate;
pub mod inspect;
pub mod replay;
pub mod tail;
