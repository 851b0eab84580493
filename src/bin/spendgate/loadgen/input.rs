//! `loadgen --input`: a stream (from `spendgate gen` or `spendgate decisions`) sent to a
//! server instead of the built-in mix.

use std::net::SocketAddr;
use std::time::Instant;

use super::{field, Conn, Sample};

/// `--input`: a stream's cards issued and funded as the stream describes them (holder,
/// currency, the balance before their first authorization), then its authorizations sent
/// in order — each card's in its own order on one connection — with the server's card
/// ids in place of the stream's. The server decides at its own pace and clock: a day of
/// stream sent in seconds fills hourly and daily windows at once.
pub(super) async fn replay_stream(
    addr: SocketAddr,
    admin: &str,
    path: &std::path::Path,
    conns: usize,
) -> Result<(), String> {
    use std::collections::BTreeMap;
    let records = crate::analyst::read_stream(path)?;
    let first = records.first().ok_or("the stream is empty")?;
    let e = |x: std::io::Error| x.to_string();
    let mut c = Conn::open(addr).await.map_err(e)?;
    let bearer = format!("Bearer {admin}");
    let program = format!("loadgen-{}", first.program);
    let (st, body) = c
        .request(
            "POST",
            "/v1/programs",
            &[("authorization", &bearer)],
            &serde_json::json!({"id": program, "policy": first.policy, "currency": first.card_currency.code()})
                .to_string(),
        )
        .await
        .map_err(e)?;
    if st != 201 && st != 409 {
        return Err(format!("create program: {st} {body}"));
    }
    let (st, body) = c
        .request(
            "POST",
            &format!("/v1/programs/{program}/api_keys"),
            &[("authorization", &bearer)],
            "",
        )
        .await
        .map_err(e)?;
    if st != 201 {
        return Err(format!("api key: {st} {body}"));
    }
    let key = field(&body, "api_key").ok_or("no api_key")?;
    let auth = format!("Bearer {key}");
    // Each card once: its holder, currency and opening balance.
    let mut cards: BTreeMap<String, &spendgate::analysis::replay::ReplayRecord> = BTreeMap::new();
    for r in &records {
        cards.entry(r.request.card_id.clone()).or_insert(r);
    }
    let mut totals: BTreeMap<&str, rust_decimal::Decimal> = BTreeMap::new();
    for r in cards.values() {
        *totals.entry(r.card_currency.code()).or_default() += r.available.unwrap_or_default();
    }
    for (currency, total) in &totals {
        let (st, body) = c
            .request(
                "POST",
                &format!("/v1/programs/{program}/deposits"),
                &[("authorization", &auth), ("idempotency-key", &format!("in-dep-{currency}"))],
                &serde_json::json!({"amount": format!("{:.2}", total + rust_decimal::Decimal::ONE), "currency": currency}).to_string(),
            )
            .await
            .map_err(e)?;
        if st != 201 {
            return Err(format!("deposit: {st} {body}"));
        }
    }
    let mut ids: BTreeMap<String, String> = BTreeMap::new();
    for (stream_id, r) in &cards {
        let (st, b) = c
            .request(
                "POST",
                "/v1/cardholders",
                &[
                    ("authorization", &auth),
                    ("idempotency-key", &format!("in-h-{}", r.cardholder_id)),
                ],
                &serde_json::json!({"id": r.cardholder_id, "name": "Stream", "kyc": "verified"})
                    .to_string(),
            )
            .await
            .map_err(e)?;
        if st != 201 && st != 200 {
            return Err(format!("cardholder: {st} {b}"));
        }
        let (st, b) = c
            .request(
                "POST",
                "/v1/cards",
                &[("authorization", &auth), ("idempotency-key", &format!("in-c-{stream_id}"))],
                &serde_json::json!({"cardholder_id": r.cardholder_id, "kind": "virtual", "currency": r.card_currency.code()}).to_string(),
            )
            .await
            .map_err(e)?;
        if st != 201 {
            return Err(format!("card: {st} {b}"));
        }
        let id = field(&b, "id").ok_or("no card id")?;
        if let Some(a) = r.available.filter(|a| !a.is_zero()) {
            let (st, b) = c
                .request(
                    "POST",
                    &format!("/v1/cards/{id}/fund"),
                    &[
                        ("authorization", &auth),
                        ("idempotency-key", &format!("in-f-{stream_id}")),
                    ],
                    &serde_json::json!({"amount": a.to_string()}).to_string(),
                )
                .await
                .map_err(e)?;
            if st != 201 {
                return Err(format!("fund: {st} {b}"));
            }
        }
        ids.insert(stream_id.clone(), id);
    }
    // Shards by card: one card's authorizations stay in order on one connection. Each
    // carries its own time, moved so the stream ends now (impossible travel compares
    // transaction times; the server's windows keep its own clock).
    let conns = conns.max(1);
    let end = records
        .iter()
        .map(|r| r.at)
        .max()
        .unwrap_or_else(chrono::Utc::now);
    let now = chrono::Utc::now();
    let mut shards: Vec<Vec<String>> = vec![Vec::new(); conns];
    for r in &records {
        let mut t = r.request.clone();
        t.card_id = ids[&r.request.card_id].clone();
        if t.timestamp.is_none() {
            t.timestamp = Some(now - (end - r.at));
        }
        let shard = (spendgate::velocity::key_hash(&[r.request.card_id.as_bytes()]) % conns as u64)
            as usize;
        shards[shard].push(serde_json::to_string(&t).map_err(|x| x.to_string())?);
    }
    let started = Instant::now();
    let mut handles = Vec::new();
    for shard in shards {
        let auth = auth.clone();
        handles.push(tokio::spawn(async move {
            let mut c = Conn::open(addr).await.map_err(|x| x.to_string())?;
            let mut s = Sample::default();
            for body in shard {
                let t = Instant::now();
                let (st, b) = c
                    .request(
                        "POST",
                        "/v1/authorizations",
                        &[("authorization", &auth)],
                        &body,
                    )
                    .await
                    .map_err(|x| x.to_string())?;
                s.latencies_us.push(t.elapsed().as_micros() as u64);
                match (st, field(&b, "response_code")) {
                    (200, Some(code)) => *s.by_code.entry(code).or_default() += 1,
                    _ => s.errors += 1,
                }
            }
            Ok::<_, String>(s)
        }));
    }
    let mut all = Sample::default();
    for h in handles {
        let s = h.await.map_err(|x| x.to_string())??;
        all.latencies_us.extend(s.latencies_us);
        all.errors += s.errors;
        for (k, v) in s.by_code {
            *all.by_code.entry(k).or_default() += v;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "sent {} authorizations of {} cards over {conns} connections in {seconds:.1} s ({:.0}/s); codes {:?}; errors {}",
        records.len(),
        ids.len(),
        records.len() as f64 / seconds.max(1e-9),
        all.by_code,
        all.errors
    );
    if all.errors > 0 {
        return Err(format!("{} requests failed", all.errors));
    }
    Ok(())
}
