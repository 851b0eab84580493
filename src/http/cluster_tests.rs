//! The front door's routing when its view of the lease table is stale.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::Router;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

use super::{Gate, Slot};
use crate::cluster::Holder;

const POLL_MS: u64 = 100;
const READ_TIMEOUT_MS: u64 = 300;

fn gate_seeing(owner: &str, address: &str) -> Arc<Gate> {
    let gate = Gate {
        slots: vec![Slot::default()],
        admin_hash: String::new(),
        me: "me".into(),
        client: reqwest::Client::new(),
        poll: Duration::from_millis(POLL_MS),
        read_timeout: Duration::from_millis(READ_TIMEOUT_MS),
        observed: tokio::sync::Notify::new(),
    };
    gate.slots[0]
        .holder
        .store(Arc::new(Some(holder(owner, address))));
    Arc::new(gate)
}

fn holder(owner: &str, address: &str) -> Holder {
    Holder {
        owner: owner.into(),
        address: address.into(),
        epoch: 1,
        live: true,
    }
}

/// An address nothing listens on (connections to it are refused); the port stays taken,
/// so no other test's listener gets it, while the socket lives.
fn dead_address() -> (tokio::net::TcpSocket, String) {
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let a = format!("http://{}", s.local_addr().unwrap());
    (s, a)
}

/// A live owner answering every request with its name; counts what it served.
async fn live_owner(served: Arc<AtomicUsize>) -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = format!("http://{}", l.local_addr().unwrap());
    let app = Router::new().fallback(move |req: Request| {
        let served = served.clone();
        async move {
            served.fetch_add(1, Ordering::SeqCst);
            let by = req.headers().get(super::forward::FORWARDED).cloned();
            format!("new owner; forwarded by {by:?}")
        }
    });
    tokio::spawn(async move { axum::serve(l, app).await });
    a
}

/// The next reading of the lease table, `after` from now, names `owner` at `address`.
fn next_reading(gate: &Arc<Gate>, after_ms: u64, owner: &str, address: &str) {
    let (gate, h) = (gate.clone(), holder(owner, address));
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(after_ms)).await;
        gate.slots[0].holder.store(Arc::new(Some(h)));
        gate.observed.notify_waiters();
    });
}

fn get() -> Request {
    Request::builder()
        .uri("/v1/cards/card_1/balance")
        .body(Body::empty())
        .unwrap()
}

async fn text(r: axum::response::Response) -> (u16, String) {
    let code = r.status().as_u16();
    let b = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
    (code, String::from_utf8_lossy(&b).into_owned())
}

#[tokio::test]
async fn a_request_for_a_dead_owner_goes_to_the_owner_the_next_reading_names() {
    let served = Arc::new(AtomicUsize::new(0));
    let ((_reserved, dead), live) = (dead_address(), live_owner(served.clone()).await);
    let gate = gate_seeing("dead", &dead);
    next_reading(&gate, POLL_MS / 2, "new", &live);
    let (code, body) = text(gate.dispatch(0, get()).await).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body, "new owner; forwarded by Some(\"me\")");
    assert_eq!(served.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_dead_owner_the_lease_table_still_names_gets_a_503_within_three_polls() {
    let (_reserved, dead) = dead_address();
    let gate = gate_seeing("dead", &dead);
    let started = std::time::Instant::now();
    let r = gate.dispatch(0, get()).await;
    let waited = started.elapsed();
    assert_eq!(
        r.headers()
            .get("spendgate-owner")
            .unwrap()
            .to_str()
            .unwrap(),
        dead
    );
    let (code, body) = text(r).await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("/problems/not_owner"), "{body}");
    assert!(
        waited < Duration::from_millis(POLL_MS * 3 + 1_000),
        "{waited:?}"
    );
}

#[tokio::test]
async fn a_request_the_owner_may_have_received_is_never_sent_to_another() {
    // The owner takes the request and dies without answering: it may have acted on it.
    // Only then does the lease table name another owner.
    let served = Arc::new(AtomicUsize::new(0));
    let live = live_owner(served.clone()).await;
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dying = format!("http://{}", l.local_addr().unwrap());
    let gate = gate_seeing("dying", &dying);
    let g = gate.clone();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut buf = [0u8; 1024];
        let _ = s.read(&mut buf).await;
        next_reading(&g, 0, "new", &live);
        tokio::time::sleep(Duration::from_millis(POLL_MS / 2)).await;
        drop(s);
    });
    let (code, body) = text(gate.dispatch(0, get()).await).await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(served.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_body_that_does_not_arrive_in_time_is_not_forwarded_and_answers_408() {
    let served = Arc::new(AtomicUsize::new(0));
    let live = live_owner(served.clone()).await;
    let gate = gate_seeing("live", &live);
    let never = futures_util::stream::pending::<Result<axum::body::Bytes, std::io::Error>>();
    let req = Request::builder()
        .method("POST")
        .uri("/v1/authorizations")
        .body(Body::from_stream(never))
        .unwrap();
    let started = std::time::Instant::now();
    let (code, body) = tokio::time::timeout(Duration::from_secs(5), async {
        text(gate.dispatch(0, req).await).await
    })
    .await
    .expect("the front door gave up on the body");
    assert_eq!(code, 408, "{body}");
    assert!(body.contains("/problems/body_timeout"), "{body}");
    assert!(started.elapsed() >= Duration::from_millis(READ_TIMEOUT_MS - 50));
    assert_eq!(
        served.load(Ordering::SeqCst),
        0,
        "nothing reached the owner"
    );
}
