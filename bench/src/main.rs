//! `repl-bench`: the benchmark harness.

fn main() {}
