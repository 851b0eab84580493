//! `spendgate stress`: durable authorization traffic against a store until killed.
//! The crash test SIGKILLs it at random moments and checks that every approval it
//! acknowledged (printed `ACK` line) survived.

use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use rust_decimal::Decimal;

use spendgate::decision::{Authorization, Channel, Country, KycStatus, Mcc, Merchant, TxnType};
use spendgate::issuing::{CardAction, CardKind, Cardholder, Program};
use spendgate::ledger::TransferKind;
use spendgate::money::Currency;
use spendgate::policy::load_policy_dir;
use spendgate::service::{AuthContext, Engine, EngineConfig, NewCard, Pending};
use spendgate::store::{Durability, Store};

const PROGRAM: &str = "stress";

pub fn run(data: &Path, rules: &Path, cards: usize, threads: usize, policy: &str) -> ExitCode {
    let policies = match load_policy_dir(rules) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{}", e[0]);
            return ExitCode::FAILURE;
        }
    };
    let (store, snapshot) = match Store::open(data, Durability::Full) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let engine = match Engine::open(policies, Arc::new(store), snapshot, EngineConfig::default()) {
        Ok(e) => Arc::new(e),
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let usd = Currency::USD;
    // Every step is idempotent, so a run killed during setup completes it next time.
    {
        let setup = || -> Result<(), spendgate::service::Rejection> {
            if engine.program(PROGRAM).is_none() {
                engine
                    .create_program(Program {
                        id: PROGRAM.into(),
                        policy: policy.into(),
                        currency: usd,
                    })?
                    .wait();
            }
            engine
                .deposit("stress-deposit", PROGRAM, Decimal::new(100_000_000, 0), usd)?
                .wait();
            for i in 0..cards {
                let h = format!("holder-{i}");
                engine
                    .create_cardholder(
                        &h,
                        Cardholder {
                            id: h.clone(),
                            program: PROGRAM.into(),
                            name: "Stress".into(),
                            kyc: KycStatus::Verified,
                            blocked: false,
                        },
                    )?
                    .wait();
                let new = NewCard {
                    program: PROGRAM.into(),
                    cardholder_id: h.clone(),
                    kind: CardKind::Virtual,
                    currency: Some(usd),
                    controls: None,
                    active: true,
                    expiry: None,
                    processor_card_token: None,
                };
                let json = engine.issue_card(&format!("card-{i}"), new)?.wait();
                let card: spendgate::service::responses::CardResponse = serde_json::from_str(&json)
                    .map_err(|e| spendgate::service::Rejection::InvalidRequest(e.to_string()))?;
                engine
                    .move_funds(
                        &format!("fund-{i}"),
                        &card.id,
                        TransferKind::TopUp,
                        Decimal::new(500, 0),
                    )?
                    .wait();
            }
            Ok(())
        };
        if let Err(e) = setup() {
            eprintln!("setup: {e}");
            return ExitCode::FAILURE;
        }
    }
    let card_ids = engine.card_ids();
    println!("READY {}", card_ids.len());
    let _ = std::io::stdout().flush();
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    std::thread::scope(|s| {
        for th in 0..threads.max(1) {
            let (engine, card_ids, run_id) = (engine.clone(), card_ids.clone(), run_id.clone());
            s.spawn(move || {
                let mut i: u64 = 0;
                loop {
                    i += 1;
                    let card = &card_ids[(i as usize * 7 + th) % card_ids.len()];
                    // Card lifecycle now and then: freeze, then unfreeze.
                    if i % 64 == 0 {
                        for (what, action) in [
                            ("freeze", CardAction::Freeze),
                            ("unfreeze", CardAction::Unfreeze),
                        ] {
                            let key = format!("{run_id}-{th}-{i}-{what}");
                            if engine
                                .card_action(&key, card, action)
                                .map(Pending::wait)
                                .is_ok()
                            {
                                done("status", &key);
                            }
                        }
                    }
                    let id = format!("{run_id}-{th}-{i}");
                    let txn = Authorization {
                        id: id.clone(),
                        card_id: card.clone(),
                        amount: Decimal::new(100 + (i % 50) as i64 * 7, 2),
                        currency: Currency::USD,
                        merchant: Merchant {
                            id: format!("m-{}", i % 97),
                            name: "Stress".into(),
                            mcc: Mcc::parse("5411").expect("valid"),
                            country: Country::parse("NG").expect("valid"),
                            location: None,
                        },
                        channel: Channel::Pos,
                        txn_type: TxnType::Purchase,
                        timestamp: None,
                        partial_ok: false,
                    };
                    // Acknowledged (printed) only once durable.
                    match engine
                        .authorize(&txn, &AuthContext::default())
                        .map(Pending::wait)
                    {
                        Ok(a) if a.response_code == "51" => {
                            let key = format!("{run_id}-topup-{th}-{i}");
                            match engine
                                .move_funds(&key, card, TransferKind::TopUp, Decimal::new(500, 0))
                                .map(Pending::wait)
                            {
                                Ok(_) => done("fund", &key),
                                Err(e) => eprintln!("top-up: {e}"),
                            }
                        }
                        Ok(a) if a.approved => {
                            // Exercise captures and reversals too (keys unique per run and
                            // thread: a key reused would replay another operation's answer).
                            let extra = match i % 4 {
                                0 => engine
                                    .capture(PROGRAM, &format!("{id}-c"), &id, txn.amount, true)
                                    .map(|p| p.wait())
                                    .map(|_| "captured"),
                                1 => engine
                                    .reverse(PROGRAM, &format!("{id}-r"), &id, None)
                                    .map(|p| p.wait())
                                    .map(|_| "reversed"),
                                _ => Ok("held"),
                            };
                            {
                                let mut out = std::io::stdout().lock();
                                let _ = writeln!(
                                    out,
                                    "ACK {id} {card} {}",
                                    extra.as_ref().copied().unwrap_or("held")
                                );
                                let _ = out.flush();
                            }
                            // Refund part of some captures.
                            if i % 8 == 0 && matches!(extra, Ok("captured")) {
                                let key = format!("{id}-refund");
                                let r = engine
                                    .refund(
                                        &key,
                                        card,
                                        Some(&id),
                                        Decimal::new(50, 2),
                                        Currency::USD,
                                    )
                                    .map(Pending::wait);
                                match r {
                                    Ok(_) => done("refund", &key),
                                    Err(e) => eprintln!("refund: {e}"),
                                }
                            }
                        }
                        Ok(_) => {}
                        Err(e) => eprintln!("authorize: {e}"),
                    }
                }
            });
        }
    });
    ExitCode::SUCCESS
}

/// Prints an acknowledged operation (durable: its `Pending` was waited on) for the crash
/// test, which then finds its stored answer after every kill.
fn done(scope: &str, key: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "DONE {scope} {key}");
    let _ = out.flush();
}
