//! A fake cloud for the provider tests and benchmarks.

use std::{
    collections::HashMap,
    io::{Read, Write},
    net::TcpListener,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use crate::netns::Netns;

/// A fake instance metadata service (AWS IMDSv2 or Alibaba Cloud's token mode): a token from
/// PUT /latest/api/token, then GETs that must carry it.
pub struct FakeImds {
    pub port: u16,
    pub data: Arc<Mutex<HashMap<String, String>>>,
    /// While set, the service answers nothing (a client times out).
    pub hang: Arc<AtomicBool>,
    /// GETs answered.
    pub gets: Arc<Mutex<usize>>,
}

impl FakeImds {
    /// Serves on 127.0.0.1 (a free port) in `ns`.
    pub fn start(ns: &Netns) -> Self {
        let listener = ns.within(|| Ok(TcpListener::bind("127.0.0.1:0")?)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let data: Arc<Mutex<HashMap<String, String>>> = Arc::default();
        let hang = Arc::new(AtomicBool::new(false));
        let gets = Arc::new(Mutex::new(0));
        let (d, h, g) = (data.clone(), hang.clone(), gets.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { continue };
                let (d, h, g) = (d.clone(), h.clone(), g.clone());
                // One thread a connection: clients may ask concurrently.
                std::thread::spawn(move || {
                    let mut req = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => req.extend_from_slice(&buf[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&req).to_string();
                    let mut words = text.split_whitespace();
                    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
                    if h.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_secs(2));
                        return;
                    }
                    let lower = text.to_ascii_lowercase();
                    let token_ok = lower.contains("x-aws-ec2-metadata-token: token-1")
                        || lower.contains("x-aliyun-ecs-metadata-token: token-1");
                    let (status, body) = if method == "PUT" && path == "/latest/api/token" {
                        (200, "token-1".to_owned())
                    } else if !token_ok {
                        (401, String::new())
                    } else {
                        *g.lock().unwrap() += 1;
                        let key = path.trim_start_matches("/latest/meta-data/");
                        match d.lock().unwrap().get(key) {
                            Some(b) => (200, b.clone()),
                            None => (404, String::new()),
                        }
                    };
                    let _ = write!(
                        s,
                        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                });
            }
        });
        Self {
            port,
            data,
            hang,
            gets,
        }
    }

    pub fn set(&self, key: &str, value: &str) {
        self.data
            .lock()
            .unwrap()
            .insert(key.to_owned(), value.to_owned());
    }
}
