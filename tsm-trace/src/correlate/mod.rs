//! Correlation: nested calls into operations, the binding table, leaks.
