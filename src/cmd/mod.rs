//! Command implementations (shell side: files, terminals, clocks).

pub mod generate;
