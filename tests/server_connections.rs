//! The server under hostile clients (issue #27), as a subprocess under a low
//! open-file limit: silent sockets beyond the connection cap get 503 at once
//! and never lock others out; a client that sends no headers, or a body too
//! slowly, is answered or closed within its timeout; an idle keep-alive
//! connection is closed; a client that half-closes after its request gets
//! its reply.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `ferry serve` on a free port with at most `files` open files.
fn start(files: usize, extra: &str) -> Server {
    let model = common::model("smollm2");
    let cmd = format!(
        "ulimit -n {files} && exec {} serve -m {} --port 0 -t 1 --parallel 1 {extra}",
        env!("CARGO_BIN_EXE_ferry"),
        model.display()
    );
    let mut child = Command::new("sh")
        .args(["-c", &cmd])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = String::new();
    let addr = loop {
        let line = lines.next().expect("the server exited").unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if let Some(rest) = line.split("http://").nth(1) {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    assert!(
        seen.contains("at most") && seen.contains("ulimit -n"),
        "no warning about the open-file limit:\n{seen}"
    );
    // Keep draining stderr so the server never blocks on it.
    std::thread::spawn(move || for _ in lines {});
    Server { child, addr }
}

/// Send `request`, read until the server closes or `wait` passes; returns
/// the reply and how long it took.
fn exchange(addr: &str, request: &[u8], half_close: bool, wait: Duration) -> (String, Duration) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
    let t0 = Instant::now();
    s.write_all(request).unwrap();
    if half_close {
        s.shutdown(std::net::Shutdown::Write).unwrap();
    }
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    (String::from_utf8_lossy(&reply).into_owned(), t0.elapsed())
}

const HEALTH: &[u8] = b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

#[test]
fn hostile_clients_get_answers_not_a_locked_server() {
    let server = start(
        72,
        "--header-timeout 1 --body-timeout 1 --max-connections 500",
    );
    let addr = server.addr.as_str();
    // Silent sockets, more than the cap the open-file limit allows (24).
    let silent: Vec<TcpStream> = (0..40).map(|_| TcpStream::connect(addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(200));
    let (reply, took) = exchange(addr, HEALTH, false, Duration::from_secs(5));
    assert!(
        reply.starts_with("HTTP/1.1 503") && reply.contains("retry-after"),
        "over the cap: {reply:?}"
    );
    assert!(took < Duration::from_secs(1), "the 503 took {took:?}");
    // The header timeout closes the silent ones; then the server serves again.
    std::thread::sleep(Duration::from_millis(1500));
    let mut closed = 0;
    for mut s in silent {
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut buf = [0u8; 512];
        // Closed (0 bytes) by the timeout, or refused with a 503.
        match s.read(&mut buf) {
            Ok(0) => closed += 1,
            Ok(n) => assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 503")),
            Err(e) => panic!("a silent connection is still open: {e}"),
        }
    }
    assert!(closed >= 20, "{closed} closed by the header timeout");
    let (reply, _) = exchange(addr, HEALTH, false, Duration::from_secs(5));
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply:?}");

    // Headers that never end: closed after the header timeout.
    let (reply, took) = exchange(
        addr,
        b"GET /health HTTP/1.1\r\nHost: x\r\n",
        false,
        Duration::from_secs(5),
    );
    assert!(
        took < Duration::from_secs(4),
        "slow headers held {took:?}: {reply:?}"
    );
    // A body that never completes: 408 after the body timeout.
    let slow_body = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"prompt\":";
    let (reply, took) = exchange(addr, slow_body, false, Duration::from_secs(5));
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply:?}");
    assert!(took < Duration::from_secs(4), "{took:?}");
    // An idle keep-alive connection is closed after the header timeout.
    let keep = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n";
    let (reply, took) = exchange(addr, keep, false, Duration::from_secs(5));
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply:?}");
    assert!(
        took < Duration::from_secs(4),
        "idle keep-alive held {took:?}"
    );
    // A client that half-closes after its request still gets the reply.
    let body = br#"{"prompt":"Hello","max_tokens":2}"#;
    let mut req = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    let (reply, _) = exchange(addr, &req, true, Duration::from_secs(30));
    assert!(
        reply.starts_with("HTTP/1.1 200") && reply.contains("\"choices\""),
        "{reply:?}"
    );
}
