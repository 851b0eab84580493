//! Command-line interface: `spendgate check` and `spendgate test`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::policy::{load_policy_dir, load_policy_file, CompiledPolicy, PolicyError};
use crate::policy_tests::run_policy_tests;

#[derive(Debug, Parser)]
#[command(
    name = "spendgate",
    version,
    about = "Authorization decisions and spend controls for card issuers"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate policy files; prints `file:line:col: rule: message` per error.
    Check {
        /// A rules directory or one policy file.
        #[arg(default_value = "rules")]
        path: PathBuf,
    },
    /// Run the tests embedded in policy files.
    Test {
        /// A rules directory or one policy file.
        #[arg(default_value = "rules")]
        path: PathBuf,
        /// Print the trace of passing tests too.
        #[arg(long)]
        verbose: bool,
    },
}

fn load(path: &Path) -> Result<Vec<Arc<CompiledPolicy>>, Vec<PolicyError>> {
    if path.is_dir() {
        load_policy_dir(path).map(|s| s.policies.into_values().collect())
    } else {
        load_policy_file(path).map(|p| vec![Arc::new(p)])
    }
}

fn print_errors(errors: &[PolicyError]) {
    for e in errors {
        eprintln!("{e}");
    }
    eprintln!(
        "{} error{}",
        errors.len(),
        if errors.len() == 1 { "" } else { "s" }
    );
}

pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Check { path } => match load(&path) {
            Ok(policies) => {
                for p in policies {
                    println!(
                        "ok: {} ({}): {} rules, {} tests, currency {}, time zone {}, version {}",
                        p.name,
                        p.file.display(),
                        p.rules.len(),
                        p.tests.len(),
                        p.currency,
                        p.timezone,
                        p.version
                    );
                }
                ExitCode::SUCCESS
            }
            Err(errors) => {
                print_errors(&errors);
                ExitCode::FAILURE
            }
        },
        Command::Test { path, verbose } => {
            let policies = match load(&path) {
                Ok(p) => p,
                Err(errors) => {
                    print_errors(&errors);
                    return ExitCode::FAILURE;
                }
            };
            let (mut passed, mut failed) = (0, 0);
            for p in policies {
                println!("{} ({}, version {})", p.name, p.file.display(), p.version);
                for r in run_policy_tests(&p) {
                    if r.passed {
                        passed += 1;
                        println!("  PASS {}", r.name);
                    } else {
                        failed += 1;
                        println!(
                            "  FAIL {}:{}: {}: {}",
                            p.file.display(),
                            r.line,
                            r.name,
                            r.message
                        );
                    }
                    if !r.passed || verbose {
                        if let Some(d) = &r.decision {
                            for t in &d.trace {
                                println!("       {:<24} {:<28} {}", t.rule, t.outcome, t.detail);
                            }
                        }
                    }
                }
            }
            println!("{passed} passed, {failed} failed");
            if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
