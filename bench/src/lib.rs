//! twill benchmarks.
