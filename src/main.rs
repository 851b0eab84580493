use std::process::ExitCode;

use clap::Parser;

// mimalloc: no allocator lock contention between request threads.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    spendgate::cli::run(spendgate::cli::Cli::parse())
}
