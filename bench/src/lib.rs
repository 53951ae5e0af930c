//! twill benchmarks: each benchmark module measures one aspect of the stack
//! and returns a [`results::BenchOutput`]; `report` turns the saved outputs
//! into `bench/RESULTS.md` and the latency chart.

// Unit tests unwrap freely; benchmark code never does on outside input.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod cni;
pub mod converge;
pub mod datapath;
pub mod footprint;
pub mod localetcd;
pub mod microbench;
pub mod nsthread;
pub mod probe;
pub mod report;
pub mod results;
pub mod scale;
pub mod stats;
pub mod storm;
pub mod svg;
pub mod wireguard;
