//! Connections are bounded like every other resource: at most `connections_max` open at
//! once, and one that delivers no request within `read_timeout_ms` is closed — silent,
//! trickling its head, or idle after its last answer.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::support::*;

/// How long until the server closes `stream` (reading and discarding what it sends), or
/// `None` if it is still open after `limit`.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        let left = limit.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_sends_no_request_is_closed_after_the_read_timeout() {
    let mut s = Server::start_configured(|c| c.read_timeout_ms = 300).await;
    let mut silent = TcpStream::connect(s.addr).await.unwrap();
    let mut trickling = TcpStream::connect(s.addr).await.unwrap();
    trickling
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: spendgate\r\n")
        .await
        .unwrap();
    let mut idle = TcpStream::connect(s.addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nhost: spendgate\r\n\r\n")
        .await
        .unwrap();
    let mut status_line = [0u8; 12];
    idle.read_exact(&mut status_line).await.unwrap();
    assert_eq!(
        &status_line, b"HTTP/1.1 200",
        "a complete request is answered"
    );
    for (name, stream) in [
        ("silent", &mut silent),
        ("trickling", &mut trickling),
        ("idle", &mut idle),
    ] {
        let closed = closed_within(stream, Duration::from_secs(5)).await;
        assert!(closed.is_some(), "the {name} connection is open after 5 s");
    }
    let (st, text, _) = s.call(Method::GET, "/healthz", None, None, None).await;
    assert_eq!(st, StatusCode::OK, "{text}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_bound_wait_until_one_closes() {
    let mut s = Server::start_configured(|c| c.connections_max = 2).await;
    let first = TcpStream::connect(s.addr).await.unwrap();
    let second = TcpStream::connect(s.addr).await.unwrap();
    let url = format!("http://{}/healthz", s.addr);
    let third = tokio::spawn(async move {
        let client = Client::new();
        client.get(&url).send().await.map(|r| r.status())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !third.is_finished(),
        "a third connection was served while two were open: {:?}",
        third.await
    );
    drop(first);
    let served = tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .expect("the third connection is served once one of the two closes")
        .unwrap();
    assert_eq!(served.unwrap(), StatusCode::OK);
    drop(second);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_does_not_arrive_in_time_is_refused_with_body_timeout() {
    let mut s = Server::start_configured(|c| c.read_timeout_ms = 300).await;
    let (key, _card) = s.tenant("ng", "NGN").await;
    let mut conn = TcpStream::connect(s.addr).await.unwrap();
    let head = format!(
        "POST /v1/authorizations HTTP/1.1\r\nhost: spendgate\r\nauthorization: Bearer {key}\r\n\
         content-type: application/json\r\ncontent-length: 200\r\n\r\n{{\"id\":"
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&answer).contains("body_timeout") {
        match tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => answer.extend_from_slice(&buf[..n]),
            other => panic!(
                "no answer after {:?} ({other:?}): {}",
                started.elapsed(),
                String::from_utf8_lossy(&answer)
            ),
        }
    }
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("/problems/body_timeout"), "{text}");
    assert!(started.elapsed() >= Duration::from_millis(250), "{text}");
    s.stop().await;
}
