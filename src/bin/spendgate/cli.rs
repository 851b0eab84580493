//! Command-line interface: `spendgate check` and `spendgate test`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use spendgate::policy::{load_policy_dir, load_policy_file, CompiledPolicy, PolicyError};
use spendgate::policy_tests::run_policy_tests;

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
    /// Run the HTTP service on the embedded store.
    Serve {
        /// YAML configuration file (environment variables override it).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Listen address [default: 127.0.0.1:8080, or SPENDGATE_ADDR].
        #[arg(long)]
        addr: Option<String>,
        /// Data directory [default: data, or SPENDGATE_DATA].
        #[arg(long)]
        data: Option<PathBuf>,
        /// Rules directory [default: rules, or SPENDGATE_RULES].
        #[arg(long)]
        rules: Option<PathBuf>,
        /// A PostgreSQL store shared by several instances, `postgres://…` [default: the
        /// SQLite store in the data directory, or SPENDGATE_STORE].
        #[arg(long)]
        store: Option<String>,
        /// With a PostgreSQL store: how many shards the programs are split into, the same
        /// on every instance and fixed at the first start [default: 1, or SPENDGATE_SHARDS].
        #[arg(long)]
        shards: Option<u32>,
    },
    /// Load benchmark: drive mixed authorization traffic at a server and report latency.
    Loadgen(crate::loadgen::Args),
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
    /// Ledger tools.
    Ledger {
        #[command(subcommand)]
        command: LedgerCommand,
    },
    /// Match the ledger's captures of one day against a processor settlement file.
    Reconcile {
        /// Settlement CSV: authorization_id,amount,currency,settlement_date
        #[arg(long)]
        settlement: PathBuf,
        /// The settlement day, YYYY-MM-DD (UTC).
        #[arg(long)]
        date: String,
        #[arg(long, env = "SPENDGATE_DATA", default_value = "data")]
        data: PathBuf,
    },
    /// Replay authorizations (a store's, or a stream) through candidate policies and report
    /// what changes: codes, approval rate, amounts, rules, shadow rules, every flip.
    Replay(crate::analyst::ReplayArgs),
    /// Print a store's authorizations as JSON lines (request, card, balance before, what
    /// was decided): the stream `replay --input` reads.
    Decisions {
        #[arg(long, env = "SPENDGATE_DATA", default_value = "data")]
        data: PathBuf,
        /// Only this card's.
        #[arg(long)]
        card: Option<String>,
    },
    /// Generate a seeded stream of realistic authorizations (NG/GH/KE cards, bursts of
    /// card testing and impossible travel) for `replay --input`.
    Gen(crate::analyst::GenArgs),
    /// Print the JSON Schema of policy files (wire it into an editor's YAML language
    /// server: see README).
    Schema,
    /// Rule-by-rule difference of two policy files or directories.
    Diff {
        old: PathBuf,
        new: PathBuf,
        /// Print the changes as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run a durable authorization load against a store until killed (crash tests).
    #[command(hide = true)]
    Stress {
        #[arg(long)]
        data: PathBuf,
        #[arg(long, default_value = "rules")]
        rules: PathBuf,
        #[arg(long, default_value_t = 20)]
        cards: usize,
        #[arg(long, default_value_t = 4)]
        threads: usize,
        #[arg(long, default_value = "consumer-prepaid-africa")]
        policy: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum LedgerCommand {
    /// Check every ledger invariant over a store; exit 1 on any violation.
    Verify {
        #[arg(long, env = "SPENDGATE_DATA", default_value = "data")]
        data: PathBuf,
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

/// Everything in a store: a data directory's SQLite file, or a `postgres://…` database.
/// A sharded PostgreSQL database: shard 0 (`open_snapshots` reads every shard).
pub fn open_snapshot(data: &Path) -> Result<spendgate::store::Snapshot, String> {
    open_snapshots(data)?
        .into_iter()
        .next()
        .ok_or_else(|| "the store has no shard".to_string())
}

/// Every shard's contents (one for SQLite and an unsharded PostgreSQL database).
pub fn open_snapshots(data: &Path) -> Result<Vec<spendgate::store::Snapshot>, String> {
    use spendgate::store::postgres;
    if let spendgate::store::Location::Postgres(url) =
        spendgate::store::Location::parse(&data.to_string_lossy())
    {
        let mut db = postgres::connect(&url).map_err(|e| e.to_string())?;
        let shards = postgres::shard_count(&mut db).map_err(|e| e.to_string())?;
        let mut out = vec![spendgate::store::load_snapshot(&mut db).map_err(|e| e.to_string())?];
        for shard in 1..shards {
            let mut db =
                postgres::connect_shard(&url, i64::from(shard)).map_err(|e| e.to_string())?;
            // A shard never owned has no tables yet (and must not read shard 0's behind it).
            let tables: &mut dyn spendgate::store::sql::Db = &mut db;
            if !tables
                .has_table("spendgate_schema")
                .map_err(|e| e.to_string())?
            {
                out.push(spendgate::store::Snapshot::default());
                continue;
            }
            out.push(spendgate::store::load_snapshot(&mut db).map_err(|e| e.to_string())?);
        }
        return Ok(out);
    }
    let path = data.join(spendgate::store::DB_FILE);
    if !path.exists() {
        return Err(format!("no store at {}", path.display()));
    }
    let mut conn =
        rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| e.to_string())?;
    Ok(vec![
        spendgate::store::load_snapshot(&mut conn).map_err(|e| e.to_string())?
    ])
}

fn ledger_verify(data: &Path) -> ExitCode {
    let snapshots = match open_snapshots(data) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("spendgate: {e}");
            return ExitCode::FAILURE;
        }
    };
    let sharded = snapshots.len() > 1;
    let mut violations = 0;
    // Each shard is a ledger of its own (its programs' money never leaves it).
    for (shard, snapshot) in snapshots.iter().enumerate() {
        if sharded {
            println!("shard {shard}:");
        }
        let r = spendgate::ledger::verify::verify(&snapshot.ledger);
        println!("transfers:      {}", r.transfers);
        println!("accounts:       {}", r.accounts);
        println!(
            "holds:          {} pending, {} resolved",
            r.holds_pending, r.holds_resolved
        );
        for (c, total) in &r.totals {
            let cards = r.card_balances.get(c).copied().unwrap_or_default();
            println!("{c}:            sum of balances {total}, held on cards {cards}");
        }
        for v in &r.violations {
            println!("VIOLATION: {v}");
        }
        violations += r.violations.len();
    }
    if violations == 0 {
        println!("ok: every invariant holds");
        ExitCode::SUCCESS
    } else {
        println!("{violations} violation(s)");
        ExitCode::FAILURE
    }
}

fn reconcile_cmd(settlement: &Path, date: &str, data: &Path) -> ExitCode {
    let run = || -> Result<spendgate::reconcile::ReconReport, String> {
        let date = chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d")
            .map_err(|_| format!("--date `{date}` is not YYYY-MM-DD"))?;
        let text = std::fs::read_to_string(settlement)
            .map_err(|e| format!("{}: {e}", settlement.display()))?;
        let snapshot = open_snapshot(data)?;
        spendgate::reconcile::reconcile(&snapshot.ledger.transfers, &text, date)
            .map_err(|e| format!("{}: {e}", settlement.display()))
    };
    match run() {
        Ok(r) => {
            for (cat, lines) in [
                ("matched", &r.matched),
                ("mismatched", &r.mismatched),
                ("missing_in_settlement", &r.missing_in_settlement),
                ("missing_in_ledger", &r.missing_in_ledger),
            ] {
                if cat != "matched" {
                    for l in lines.iter() {
                        println!(
                            "{cat}: {} {} ledger={} settlement={}",
                            l.authorization_id,
                            l.currency,
                            l.ledger.map_or("-".into(), |a| a.to_string()),
                            l.settlement.map_or("-".into(), |a| a.to_string())
                        );
                    }
                }
            }
            for (c, cats) in &r.totals {
                for (cat, t) in cats {
                    println!("{c} {cat}: {} totalling {}", t.count, t.amount);
                }
            }
            if r.clean() {
                println!("ok: {} matched", r.matched.len());
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("spendgate: {e}");
            ExitCode::FAILURE
        }
    }
}

pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Serve {
            config,
            addr,
            data,
            rules,
            store,
            shards,
        } => {
            // Through the environment, so the configuration checks them like the others.
            if let Some(s) = store {
                std::env::set_var("SPENDGATE_STORE", s);
            }
            if let Some(n) = shards {
                std::env::set_var("SPENDGATE_SHARDS", n.to_string());
            }
            let mut c = match spendgate::http::Config::load(config.as_deref()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("spendgate: {e}");
                    return ExitCode::FAILURE;
                }
            };
            if let Some(a) = addr {
                c.addr = a;
            }
            if let Some(d) = data {
                c.data_dir = d;
            }
            if let Some(r) = rules {
                c.rules_dir = r;
            }
            match spendgate::http::run_server(c) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("spendgate: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Loadgen(args) => crate::loadgen::run(args),
        Command::Replay(args) => crate::analyst::replay_cmd(args),
        Command::Decisions { data, card } => crate::analyst::decisions_cmd(&data, card.as_deref()),
        Command::Diff { old, new, json } => crate::analyst::diff_cmd(&old, &new, json),
        Command::Gen(args) => crate::analyst::gen_cmd(args),
        Command::Schema => {
            println!(
                "{}",
                serde_json::to_string_pretty(&spendgate::policy::json_schema()).unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Command::Ledger {
            command: LedgerCommand::Verify { data },
        } => ledger_verify(&data),
        Command::Reconcile {
            settlement,
            date,
            data,
        } => reconcile_cmd(&settlement, &date, &data),
        Command::Stress {
            data,
            rules,
            cards,
            threads,
            policy,
        } => crate::stress::run(&data, &rules, cards, threads, &policy),
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
