use std::process::ExitCode;

use clap::Parser;

mod analyst;
mod cli;
mod loadgen;
mod stress;

// mimalloc: no allocator lock contention between request threads.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    cli::run(cli::Cli::parse())
}
