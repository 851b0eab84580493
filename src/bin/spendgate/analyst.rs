//! The analyst's commands: `replay`, `decisions`, `gen`, `diff`.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use chrono::{DateTime, NaiveDate, Utc};
use clap::Args;

use spendgate::analysis::history::{self, History};
use spendgate::analysis::replay::{replay, ReplayFilter, ReplayRecord};
use spendgate::analysis::{diff, report};
use spendgate::policy::load_policy_dir;

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The candidate rules directory.
    #[arg(long)]
    rules: PathBuf,
    /// The store whose authorizations are replayed.
    #[arg(long, env = "SPENDGATE_DATA", default_value = "data")]
    data: PathBuf,
    /// Replay a stream instead (JSON lines, as `spendgate decisions` or `spendgate gen`
    /// write them).
    #[arg(long)]
    input: Option<PathBuf>,
    /// From this time on (RFC 3339, or a UTC day YYYY-MM-DD).
    #[arg(long)]
    from: Option<String>,
    /// Before this time (RFC 3339, or a UTC day: up to its start).
    #[arg(long)]
    to: Option<String>,
    /// Only this program's cards.
    #[arg(long)]
    program: Option<String>,
    /// Print the whole report as JSON instead of the summary.
    #[arg(long, conflicts_with = "csv")]
    json: bool,
    /// Print every flipped decision as CSV instead of the summary.
    #[arg(long)]
    csv: bool,
    /// Also write a self-contained HTML report (charts, tables) to this file.
    #[arg(long)]
    html: Option<PathBuf>,
    /// Flips listed in the summary.
    #[arg(long, default_value_t = 20)]
    flips_shown: usize,
}

fn time(s: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
        .ok_or_else(|| format!("`{s}` is neither RFC 3339 nor YYYY-MM-DD"))
}

/// A stream of [`ReplayRecord`]s, one JSON object per line.
pub fn read_stream(path: &Path) -> Result<Vec<ReplayRecord>, String> {
    let f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line.map_err(|e| format!("{}: {e}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(
            serde_json::from_str(&line)
                .map_err(|e| format!("{}:{}: {e}", path.display(), i + 1))?,
        );
    }
    Ok(out)
}

fn store_history(data: &Path) -> Result<History, String> {
    let snapshot = crate::cli::open_snapshot(data)?;
    history::from_snapshot(snapshot)
}

pub fn replay_cmd(a: ReplayArgs) -> ExitCode {
    let run = || -> Result<(), String> {
        let policies = load_policy_dir(&a.rules).map_err(|errors| {
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        })?;
        let filter = ReplayFilter {
            from: a.from.as_deref().map(time).transpose()?,
            to: a.to.as_deref().map(time).transpose()?,
            program: a.program.clone(),
        };
        let h = match &a.input {
            Some(path) => History {
                records: read_stream(path)?,
                ..History::default()
            },
            None => store_history(&a.data)?,
        };
        if h.without_request > 0 {
            eprintln!(
                "note: {} decisions stored before schema version 5 have no request and are not replayed",
                h.without_request
            );
        }
        let bar = indicatif::ProgressBar::new(h.records.len() as u64).with_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} authorizations, {per_sec}, eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        let r = replay(
            &policies,
            &h.controls,
            h.records,
            h.releases,
            &filter,
            |n| {
                if n % 4096 == 0 {
                    bar.set_position(n);
                }
            },
        )
        .map_err(|e| e.to_string())?;
        bar.finish_and_clear();
        let mut out = std::io::stdout().lock();
        let text = if a.json {
            serde_json::to_string_pretty(&r).map_err(|e| e.to_string())? + "\n"
        } else if a.csv {
            report::flips_csv(&r)
        } else {
            report::summary(&r, a.flips_shown)
        };
        out.write_all(text.as_bytes()).map_err(|e| e.to_string())?;
        if let Some(path) = &a.html {
            std::fs::write(path, report::html(&r))
                .map_err(|e| format!("{}: {e}", path.display()))?;
            eprintln!("HTML report: {}", path.display());
        }
        Ok(())
    };
    exit(run())
}

#[derive(Debug, Args)]
pub struct GenArgs {
    /// The generator's seed: the same seed gives the same stream.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, default_value_t = 1000)]
    cards: usize,
    #[arg(long, default_value_t = 7)]
    days: u32,
    /// Authorizations per card per day, on average.
    #[arg(long, default_value_t = 4.0)]
    per_card_day: f64,
    /// The first day (UTC), YYYY-MM-DD.
    #[arg(long, default_value = "2026-06-01")]
    start: String,
    #[arg(long, default_value = "gen")]
    program: String,
    /// The policy governing the generated cards.
    #[arg(long, default_value = "consumer-prepaid-africa")]
    policy: String,
    /// Write here instead of standard output.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// `spendgate gen`: a seeded stream for `replay --input`.
pub fn gen_cmd(a: GenArgs) -> ExitCode {
    let run = || -> Result<(), String> {
        let o = spendgate::analysis::generate::GenOptions {
            seed: a.seed,
            cards: a.cards,
            days: a.days,
            per_card_day: a.per_card_day,
            start: time(&a.start)?,
            program: a.program.clone(),
            policy: a.policy.clone(),
        };
        let records = spendgate::analysis::generate::generate(&o);
        let sink: Box<dyn Write> = match &a.out {
            Some(p) => {
                Box::new(std::fs::File::create(p).map_err(|e| format!("{}: {e}", p.display()))?)
            }
            None => Box::new(std::io::stdout().lock()),
        };
        let mut out = std::io::BufWriter::new(sink);
        for r in &records {
            let line = serde_json::to_string(r).map_err(|e| e.to_string())?;
            writeln!(out, "{line}").map_err(|e| e.to_string())?;
        }
        out.flush().map_err(|e| e.to_string())?;
        eprintln!("{} authorizations on {} cards", records.len(), a.cards);
        Ok(())
    };
    exit(run())
}

/// `spendgate decisions`: a store's authorizations as JSON lines, oldest first.
pub fn decisions_cmd(data: &Path, card: Option<&str>) -> ExitCode {
    let run = || -> Result<(), String> {
        let h = store_history(data)?;
        let mut records = h.records;
        records.sort_by_key(|r| r.at);
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        for r in records
            .iter()
            .filter(|r| card.is_none_or(|c| r.request.card_id == c))
        {
            let line = serde_json::to_string(r).map_err(|e| e.to_string())?;
            writeln!(out, "{line}").map_err(|e| e.to_string())?;
        }
        out.flush().map_err(|e| e.to_string())
    };
    exit(run())
}

pub fn diff_cmd(old: &Path, new: &Path, json: bool) -> ExitCode {
    let run = || -> Result<(), String> {
        let changes = diff::diff(&diff::read_policies(old)?, &diff::read_policies(new)?);
        if json {
            println!(
                "{}",
                serde_json::to_string_pretty(&changes).map_err(|e| e.to_string())?
            );
        } else {
            print!("{}", diff::render(&changes));
        }
        Ok(())
    };
    exit(run())
}

/// A command's exit: its error, if any, on standard error.
fn exit(r: Result<(), String>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("spendgate: {e}");
            ExitCode::FAILURE
        }
    }
}
