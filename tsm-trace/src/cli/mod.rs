//! The command line: value parsers for flags and `TSM_TRACE_*` variables.

pub mod parse;
