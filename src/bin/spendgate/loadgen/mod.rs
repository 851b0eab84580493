//! `spendgate loadgen`: the load benchmark. Issues and funds cards through the real API,
//! then drives mixed authorization traffic (approvals, declines by several rules,
//! captures, reversals) over keep-alive connections, and reports throughput and latency
//! percentiles next to a minimal axum JSON endpoint measured the same way in the same run.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

mod input;
mod watch;
use input::replay_stream;
use watch::{server_report, server_write_bytes, write_report};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A running server; without it, one is started on a temporary data directory.
    #[arg(long)]
    pub addr: Option<SocketAddr>,
    /// With --addr: more instances of the same service (several on one PostgreSQL store)
    /// to spread the measured connections over, round robin, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub spread: Vec<SocketAddr>,
    /// Admin key of the running server (with --addr).
    #[arg(long, env = "SPENDGATE_ADMIN_KEY")]
    pub admin_key: Option<String>,
    #[arg(long, default_value_t = 10_000)]
    pub cards: usize,
    /// Programs the cards are spread over, round robin (`loadgen`, `loadgen-1`, …): with
    /// several instances on sharded PostgreSQL, programs in different shards spread the
    /// load over the owners.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub programs: u64,
    /// Connection counts to measure, comma-separated.
    #[arg(long, default_value = "4,64", value_delimiter = ',')]
    pub connections: Vec<usize>,
    /// Seconds of traffic per measurement.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Requests, in percent, that settle (capture or reverse) an earlier approval; at
    /// about the approval rate (≈ 45 %) open holds stop growing, as in a soak.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=90))]
    pub settle_percent: u64,
    /// Measure the minimal axum endpoint only before the first step (soaks: the steps
    /// then follow each other without idle gaps).
    #[arg(long)]
    pub baseline_once: bool,
    /// With --addr: the server's process id, to report its RSS and open descriptors after
    /// each step (a soak); a server this command starts is reported without it.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// With --addr: the server's data directory, to report its WAL and database size.
    #[arg(long)]
    pub server_data: Option<PathBuf>,
    /// Send a stream instead of the built-in mix (JSON lines, as `spendgate gen` or
    /// `spendgate decisions` write them): its cards are issued and funded as described,
    /// then every authorization is sent once, in order per card, over the first
    /// `--connections` count.
    #[arg(long)]
    pub input: Option<PathBuf>,
}

/// One keep-alive HTTP/1.1 connection (hyper's client connection): each `Conn` is exactly
/// one TCP connection, so `--connections N` means N connections, as a processor opens.
struct Conn {
    tx: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> std::io::Result<Conn> {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        Ok(Conn { tx })
    }

    async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> std::io::Result<(u16, String)> {
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "spendgate")
            .header("content-type", "application/json");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(std::io::Error::other)?;
        self.tx.ready().await.map_err(std::io::Error::other)?;
        let res = self
            .tx
            .send_request(req)
            .await
            .map_err(std::io::Error::other)?;
        let status = res.status().as_u16();
        let bytes = res
            .into_body()
            .collect()
            .await
            .map_err(std::io::Error::other)?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
    }
}

fn field(json: &str, key: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    v.get(key).and_then(|x| x.as_str()).map(str::to_string)
}

struct Setup {
    /// Where the measured connections go, round robin.
    targets: Vec<SocketAddr>,
    /// Each program's `Bearer` header.
    auths: Vec<String>,
    /// Each card, with its program's index in `auths`.
    cards: Vec<(String, usize)>,
}

async fn setup(addr: SocketAddr, admin: &str, n: usize, programs: usize) -> Result<Setup, String> {
    let mut auths = Vec::new();
    for p in 0..programs {
        let program = if p == 0 {
            "loadgen".to_string()
        } else {
            format!("loadgen-{p}")
        };
        auths.push(format!(
            "Bearer {}",
            program_key(addr, admin, &program).await?
        ));
    }
    // Issue and fund cards over 16 connections.
    let workers = 16;
    let mut handles = Vec::new();
    for w in 0..workers {
        let auths = auths.clone();
        handles.push(tokio::spawn(async move {
            let mut c = Conn::open(addr).await.map_err(|x| x.to_string())?;
            let mut ids = Vec::new();
            for i in (w..n).step_by(workers) {
                let p = i % auths.len();
                ids.push((issue_card(&mut c, &auths[p], i).await?, p));
            }
            Ok::<_, String>(ids)
        }));
    }
    let mut cards = Vec::new();
    for h in handles {
        cards.extend(h.await.map_err(|x| x.to_string())??);
    }
    Ok(Setup {
        targets: vec![addr],
        auths,
        cards,
    })
}

/// Creates `program` (or finds it), funds it, and returns a fresh API key for it.
async fn program_key(addr: SocketAddr, admin: &str, program: &str) -> Result<String, String> {
    let e = |x: std::io::Error| x.to_string();
    let mut c = Conn::open(addr).await.map_err(e)?;
    let bearer = format!("Bearer {admin}");
    let (st, body) = c
        .request(
            "POST",
            "/v1/programs",
            &[("authorization", &bearer)],
            &format!(r#"{{"id":"{program}","policy":"consumer-prepaid-africa","currency":"NGN"}}"#),
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
    let api_key = field(&body, "api_key").ok_or("no api_key")?;
    let auth = format!("Bearer {api_key}");
    let (st, body) = c
        .request(
            "POST",
            &format!("/v1/programs/{program}/deposits"),
            &[
                ("authorization", &auth),
                ("idempotency-key", "loadgen-deposit"),
            ],
            r#"{"amount":"100000000000.00","currency":"NGN"}"#,
        )
        .await
        .map_err(e)?;
    if st != 201 {
        return Err(format!("deposit: {st} {body}"));
    }
    Ok(api_key)
}

/// Issues card `i` (its own cardholder) and funds it; its id.
async fn issue_card(c: &mut Conn, auth: &str, i: usize) -> Result<String, String> {
    let h = format!("lg-holder-{i}");
    let k1 = format!("lg-h-{i}");
    let body = format!(r#"{{"id":"{h}","name":"Load Gen","kyc":"verified"}}"#);
    let (st, b) = c
        .request(
            "POST",
            "/v1/cardholders",
            &[("authorization", auth), ("idempotency-key", &k1)],
            &body,
        )
        .await
        .map_err(|x| x.to_string())?;
    if st != 201 {
        return Err(format!("cardholder: {st} {b}"));
    }
    let k2 = format!("lg-c-{i}");
    let body = format!(r#"{{"cardholder_id":"{h}","kind":"virtual"}}"#);
    let (st, b) = c
        .request(
            "POST",
            "/v1/cards",
            &[("authorization", auth), ("idempotency-key", &k2)],
            &body,
        )
        .await
        .map_err(|x| x.to_string())?;
    if st != 201 {
        return Err(format!("card: {st} {b}"));
    }
    let id = field(&b, "id").ok_or("no card id")?;
    let k3 = format!("lg-f-{i}");
    let (st, b) = c
        .request(
            "POST",
            &format!("/v1/cards/{id}/fund"),
            &[("authorization", auth), ("idempotency-key", &k3)],
            r#"{"amount":"1000000.00"}"#,
        )
        .await
        .map_err(|x| x.to_string())?;
    if st != 201 {
        return Err(format!("fund: {st} {b}"));
    }
    Ok(id)
}

#[derive(Default)]
struct Sample {
    latencies_us: Vec<u64>,
    by_code: std::collections::BTreeMap<String, u64>,
    captures: u64,
    reversals: u64,
    errors: u64,
}

fn auth_body(id: &str, card: &str, i: u64) -> String {
    let (mcc, country, amount) = match i % 20 {
        0 | 1 => ("7995", "NG", "5000.00"), // gambling: 57
        2 => ("5411", "BR", "5000.00"),     // outside travel countries: 62
        3 => ("5411", "NG", "900000.00"),   // above the 500 USD cap: 61
        // Small enough that the program's hourly exposure breaker (250k USD) holds out.
        _ => ("5411", "NG", "450.00"),
    };
    format!(
        r#"{{"id":"{id}","card_id":"{card}","amount":"{amount}","currency":"NGN","merchant":{{"id":"m-{}","name":"Shop","mcc":"{mcc}","country":"{country}"}},"channel":"pos","type":"purchase"}}"#,
        // 4999 is prime to the card stride, so card/merchant pairs vary.
        i % 4999
    )
}

async fn drive(
    s: Arc<Setup>,
    conns: usize,
    seconds: u64,
    run: &str,
    settle_percent: u64,
) -> Sample {
    let stop = Arc::new(AtomicBool::new(false));
    let mut hs = Vec::new();
    for w in 0..conns {
        let (s, stop, run) = (s.clone(), stop.clone(), run.to_string());
        hs.push(tokio::spawn(async move {
            let mut out = Sample::default();
            let Ok(mut c) = Conn::open(s.targets[w % s.targets.len()]).await else {
                out.errors += 1;
                return out;
            };
            let mut i = w as u64;
            let mut approved: Vec<(String, usize)> = Vec::new();
            let mut settled = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += conns as u64;
                // `settle_percent` of requests settle an earlier approval: half captures,
                // half reversals.
                if i % 100 < settle_percent {
                    if let Some((a, p)) = approved.pop() {
                        let auth = &s.auths[p];
                        settled += 1;
                        let capture = settled % 2 == 0;
                        let key = format!("{run}-s{i}");
                        let (path, body) = if capture {
                            (
                                format!("/v1/authorizations/{a}/captures"),
                                r#"{"amount":"450.00"}"#,
                            )
                        } else {
                            (format!("/v1/authorizations/{a}/reversals"), "{}")
                        };
                        match c
                            .request(
                                "POST",
                                &path,
                                &[("authorization", auth), ("idempotency-key", &key)],
                                body,
                            )
                            .await
                        {
                            Ok((201, _)) if capture => out.captures += 1,
                            Ok((201, _)) => out.reversals += 1,
                            _ => out.errors += 1,
                        }
                        continue;
                    }
                }
                let (card, p) = &s.cards[(i as usize * 7919) % s.cards.len()];
                let auth = &s.auths[*p];
                let id = format!("{run}-{i}");
                let body = auth_body(&id, card, i);
                let t = Instant::now();
                match c
                    .request(
                        "POST",
                        "/v1/authorizations",
                        &[("authorization", auth)],
                        &body,
                    )
                    .await
                {
                    Ok((200, resp)) => {
                        out.latencies_us.push(t.elapsed().as_micros() as u64);
                        let code = field(&resp, "response_code").unwrap_or_default();
                        if code == "00" {
                            approved.push((id, *p));
                        }
                        *out.by_code.entry(code).or_default() += 1;
                    }
                    _ => out.errors += 1,
                }
            }
            out
        }));
    }
    collect(hs, &stop, seconds).await
}

/// The baseline: a minimal axum JSON endpoint, driven the same way.
async fn baseline(conns: usize, seconds: u64) -> Sample {
    use axum::routing::post;
    let app = axum::Router::new().route(
        "/echo",
        post(|body: axum::body::Bytes| async move {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            axum::Json(serde_json::json!({"ok": true, "id": v.get("id")}))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let stop = Arc::new(AtomicBool::new(false));
    let mut hs = Vec::new();
    for w in 0..conns {
        let stop = stop.clone();
        hs.push(tokio::spawn(async move {
            let mut out = Sample::default();
            let Ok(mut c) = Conn::open(addr).await else {
                return out;
            };
            let mut i = w as u64;
            while !stop.load(Ordering::Relaxed) {
                i += conns as u64;
                let body = auth_body(&format!("b{i}"), "card", i);
                let t = Instant::now();
                match c.request("POST", "/echo", &[], &body).await {
                    Ok((200, _)) => out.latencies_us.push(t.elapsed().as_micros() as u64),
                    _ => out.errors += 1,
                }
            }
            out
        }));
    }
    let all = collect(hs, &stop, seconds).await;
    server.abort();
    all
}

/// Lets the connections run for `seconds`, stops them and merges what they saw.
async fn collect(
    hs: Vec<tokio::task::JoinHandle<Sample>>,
    stop: &AtomicBool,
    seconds: u64,
) -> Sample {
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Sample::default();
    for h in hs {
        if let Ok(o) = h.await {
            all.latencies_us.extend(o.latencies_us);
            for (k, v) in o.by_code {
                *all.by_code.entry(k).or_default() += v;
            }
            all.captures += o.captures;
            all.reversals += o.reversals;
            all.errors += o.errors;
        }
    }
    all
}

fn pct(v: &[u64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v[((v.len() as f64 * q) as usize).min(v.len() - 1)] as f64 / 1000.0
}

fn report(label: &str, s: &mut Sample, seconds: u64) -> f64 {
    s.latencies_us.sort_unstable();
    let rps = s.latencies_us.len() as f64 / seconds as f64;
    println!(
        "  {label:<34} {rps:>9.0} req/s   p50 {:>6.2} ms   p99 {:>6.2} ms   p99.9 {:>6.2} ms   errors {}",
        pct(&s.latencies_us, 0.5),
        pct(&s.latencies_us, 0.99),
        pct(&s.latencies_us, 0.999),
        s.errors
    );
    rps
}

struct Spawned {
    child: std::process::Child,
    data: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_server() -> Result<(SocketAddr, String, Spawned), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let addr: SocketAddr = format!("127.0.0.1:{port}")
        .parse()
        .map_err(|e: std::net::AddrParseError| e.to_string())?;
    let admin = format!("adm_{}", uuid::Uuid::new_v4().simple());
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let data: PathBuf = dir.path().join("data");
    let child = std::process::Command::new(exe)
        .args(["serve", "--addr", &addr.to_string(), "--data"])
        .arg(&data)
        .env("SPENDGATE_ADMIN_KEY", &admin)
        .env("SPENDGATE_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    Ok((
        addr,
        admin,
        Spawned {
            child,
            data,
            _dir: dir,
        },
    ))
}

pub fn run(args: Args) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadgen: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let mut _spawned = None;
        let (addr, admin) = match (args.addr, args.admin_key.clone()) {
            (Some(a), Some(k)) => (a, k),
            (Some(_), None) => {
                eprintln!("loadgen: --addr needs --admin-key (or SPENDGATE_ADMIN_KEY)");
                return ExitCode::FAILURE;
            }
            (None, _) => match spawn_server() {
                Ok((a, k, s)) => {
                    _spawned = Some(s);
                    (a, k)
                }
                Err(e) => {
                    eprintln!("loadgen: {e}");
                    return ExitCode::FAILURE;
                }
            },
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(mut c) = Conn::open(addr).await {
                if let Ok((200, _)) = c.request("GET", "/healthz", &[], "").await {
                    break;
                }
            }
            if Instant::now() > deadline {
                eprintln!("loadgen: server at {addr} did not come up");
                return ExitCode::FAILURE;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if let Some(path) = &args.input {
            let conns = args.connections.first().copied().unwrap_or(4);
            return match replay_stream(addr, &admin, path, conns).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("loadgen: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        let t = Instant::now();
        let s = match setup(addr, &admin, args.cards, args.programs as usize).await {
            Ok(mut s) => {
                s.targets.extend(&args.spread);
                Arc::new(s)
            }
            Err(e) => {
                eprintln!("loadgen: setup: {e}");
                return ExitCode::FAILURE;
            }
        };
        println!(
            "issued and funded {} cards in {:.1} s (3 requests each)",
            s.cards.len(),
            t.elapsed().as_secs_f64()
        );
        let mut base = 0.0;
        // Authorization ids unique to this invocation: a second run against the same
        // server must decide, not replay the first run's answers.
        let session = &uuid::Uuid::new_v4().simple().to_string()[..8];
        for (n, conns) in args.connections.iter().enumerate() {
            println!("{conns} connections, {} s each:", args.seconds);
            if n == 0 || !args.baseline_once {
                let mut b = baseline(*conns, args.seconds).await;
                base = report("baseline: minimal axum JSON endpoint", &mut b, args.seconds);
            }
            let pid = args
                .server_pid
                .or(_spawned.as_ref().map(|s: &Spawned| s.child.id()));
            let written_before = pid.and_then(server_write_bytes);
            let mut a = drive(
                s.clone(),
                *conns,
                args.seconds,
                &format!("r{n}-{session}"),
                args.settle_percent,
            )
            .await;
            let rps = report("spendgate POST /v1/authorizations", &mut a, args.seconds);
            println!(
                "  ratio {:.0}% of baseline; codes {:?}; captures {}, reversals {}",
                100.0 * rps / base.max(1.0),
                a.by_code,
                a.captures,
                a.reversals
            );
            if let (Some(before), Some(after)) = (written_before, pid.and_then(server_write_bytes))
            {
                println!(
                    "{}",
                    write_report(after.saturating_sub(before), a.latencies_us.len())
                );
            }
            let data = args
                .server_data
                .as_deref()
                .or(_spawned.as_ref().map(|s: &Spawned| s.data.as_path()));
            if let Some(line) = server_report(pid, data) {
                println!("{line}");
            }
        }
        ExitCode::SUCCESS
    })
}
