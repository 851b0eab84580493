use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    spendgate::cli::run(spendgate::cli::Cli::parse())
}
