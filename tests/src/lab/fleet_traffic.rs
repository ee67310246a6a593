//! Traffic through a fleet while things fail: concurrent paced TCP downloads (each checked to
//! the byte, resets counted) and a sequence-numbered UDP stream (losses, the longest loss
//! window, reordering). For the fleet lab's figures.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::Result;

use crate::netns::Netns;

/// What the downloads saw.
#[derive(Debug, Default)]
pub struct DownloadReport {
    pub connections: usize,
    /// Connections that received every byte, in order.
    pub complete: usize,
    /// Connections reset (ECONNRESET), and other failures.
    pub resets: usize,
    pub failures: Vec<String>,
    pub secs: f64,
}

/// The byte at `offset` of every download (so a byte out of place is noticed).
fn pattern(offset: usize) -> u8 {
    (offset % 251) as u8
}

/// `conns` TCP downloads of `bytes` each from a server on `private:port` in `server` to
/// clients in `client` (bound in turn to each of `sources`) through `public:port`. The server
/// writes 16 KiB at a time with `pause` between writes, so the downloads last a while.
#[allow(clippy::too_many_arguments)]
pub fn tcp_downloads(
    client: &Netns,
    sources: &[Ipv4Addr],
    server: &Netns,
    (public, private): (Ipv4Addr, Ipv4Addr),
    port: u16,
    conns: usize,
    bytes: usize,
    pause: Duration,
) -> Result<JoinHandle<DownloadReport>> {
    let listener = server.within(move || Ok(TcpListener::bind((private, port))?))?;
    std::thread::spawn(move || {
        for _ in 0..conns {
            let Ok((mut s, _)) = listener.accept() else {
                return;
            };
            std::thread::spawn(move || {
                let mut sent = 0;
                while sent < bytes {
                    let n = 16384.min(bytes - sent);
                    let chunk: Vec<u8> = (sent..sent + n).map(pattern).collect();
                    if s.write_all(&chunk).is_err() {
                        return;
                    }
                    sent += n;
                    std::thread::sleep(pause);
                }
            });
        }
    });
    let mut clients = Vec::new();
    let start = Instant::now();
    for c in 0..conns {
        let source = sources[c % sources.len()];
        clients.push(client.spawn(move || -> Result<std::io::Result<usize>> {
            let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
            sock.bind(&SocketAddr::from((source, 0)).into())?;
            sock.set_read_timeout(Some(Duration::from_secs(30)))?;
            if let Err(e) = sock.connect_timeout(
                &SocketAddr::from((public, port)).into(),
                Duration::from_secs(10),
            ) {
                return Ok(Err(e));
            }
            let mut s: std::net::TcpStream = sock.into();
            let mut buf = vec![0u8; 65536];
            let mut got = 0usize;
            loop {
                match s.read(&mut buf) {
                    Ok(0) => return Ok(Ok(got)),
                    Ok(n) => {
                        if buf[..n]
                            .iter()
                            .enumerate()
                            .any(|(i, b)| *b != pattern(got + i))
                        {
                            return Ok(Err(std::io::Error::other("a byte out of place")));
                        }
                        got += n;
                    }
                    Err(e) => return Ok(Err(e)),
                }
            }
        }));
    }
    Ok(std::thread::spawn(move || {
        let mut r = DownloadReport {
            connections: conns,
            ..Default::default()
        };
        for c in clients {
            match c
                .join()
                .map_err(|_| anyhow::anyhow!("client panicked"))
                .and_then(|r| r)
            {
                Ok(Ok(n)) if n == bytes => r.complete += 1,
                Ok(Ok(n)) => r.failures.push(format!("ended after {n} of {bytes} bytes")),
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => r.resets += 1,
                Ok(Err(e)) => r.failures.push(e.to_string()),
                Err(e) => r.failures.push(e.to_string()),
            }
        }
        r.secs = start.elapsed().as_secs_f64();
        r
    }))
}

/// What the UDP stream saw.
#[derive(Debug, Default)]
pub struct UdpReport {
    pub sent: u32,
    pub received: u32,
    /// The longest run of consecutive datagrams lost, as time (run length × interval).
    pub longest_gap_ms: f64,
    /// Datagrams that arrived after a later one.
    pub reordered: u32,
}

/// A stream of `pps` datagrams a second for `secs` from `source` in `client` to `public:port`,
/// received on `private:port` in `server`. Each carries its sequence number.
pub fn udp_stream(
    client: &Netns,
    source: Ipv4Addr,
    server: &Netns,
    (public, private): (Ipv4Addr, Ipv4Addr),
    port: u16,
    pps: u32,
    secs: f64,
) -> Result<JoinHandle<UdpReport>> {
    let rx = server.within(move || Ok(UdpSocket::bind((private, port))?))?;
    rx.set_read_timeout(Some(Duration::from_millis(100)))?;
    let tx = client.within(move || Ok(UdpSocket::bind((source, 0))?))?;
    let done = Arc::new(AtomicBool::new(false));
    let n = (f64::from(pps) * secs) as u32;
    let interval = Duration::from_secs_f64(1.0 / f64::from(pps));
    let receiver = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut seen = vec![false; n as usize];
            let (mut max, mut reordered, mut received) = (None::<u32>, 0, 0);
            let mut buf = [0u8; 64];
            loop {
                match rx.recv_from(&mut buf) {
                    Ok((len, _)) if len >= 4 => {
                        let seq = u32::from_be_bytes(buf[..4].try_into().expect("4"));
                        if (seq as usize) < seen.len() && !seen[seq as usize] {
                            seen[seq as usize] = true;
                            received += 1;
                            if max.is_some_and(|m| seq < m) {
                                reordered += 1;
                            }
                            max = max.max(Some(seq));
                        }
                    }
                    _ if done.load(Ordering::Relaxed) => break,
                    _ => {}
                }
            }
            let (mut run, mut longest) = (0u32, 0u32);
            for s in &seen {
                run = if *s { 0 } else { run + 1 };
                longest = longest.max(run);
            }
            (received, longest, reordered)
        })
    };
    Ok(std::thread::spawn(move || {
        let start = Instant::now();
        for seq in 0..n {
            let at = start + interval * seq;
            if let Some(wait) = at.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let _ = tx.send_to(&seq.to_be_bytes(), (public, port));
        }
        std::thread::sleep(Duration::from_secs(1));
        done.store(true, Ordering::Relaxed);
        let (received, longest, reordered) = receiver.join().unwrap_or_default();
        UdpReport {
            sent: n,
            received,
            longest_gap_ms: f64::from(longest) * interval.as_secs_f64() * 1000.0,
            reordered,
        }
    }))
}

impl DownloadReport {
    /// "C of N downloads complete, R reset, F failed (the first failure)".
    pub fn summary(&self) -> String {
        format!(
            "{} of {} downloads complete, {} reset, {} failed{}",
            self.complete,
            self.connections,
            self.resets,
            self.failures.len(),
            self.failures
                .first()
                .map_or(String::new(), |f| format!(" ({f})")),
        )
    }
}

/// Downloads and UDP flows running together (see [`Traffic::start`]).
pub struct Traffic {
    downloads: JoinHandle<DownloadReport>,
    flows: Vec<JoinHandle<UdpReport>>,
}

/// What [`Traffic`] saw.
pub struct TrafficReport {
    pub downloads: DownloadReport,
    pub flows: Vec<UdpReport>,
}

impl Traffic {
    /// `conns` downloads of `bytes` (see [`tcp_downloads`], on `port`) and `flows` UDP flows of
    /// `pps` each for `secs` (on the ports after it), from `sources` in turn.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        client: &Netns,
        sources: &[Ipv4Addr],
        server: &Netns,
        target: (Ipv4Addr, Ipv4Addr),
        port: u16,
        (conns, bytes, pause): (usize, usize, Duration),
        (flows, pps, secs): (usize, u32, f64),
    ) -> Result<Self> {
        let downloads = tcp_downloads(client, sources, server, target, port, conns, bytes, pause)?;
        let flows = (0..flows)
            .map(|f| {
                let source = sources[f % sources.len()];
                udp_stream(
                    client,
                    source,
                    server,
                    target,
                    port + 1 + f as u16,
                    pps,
                    secs,
                )
            })
            .collect::<Result<_>>()?;
        Ok(Traffic { downloads, flows })
    }

    pub fn join(self) -> Result<TrafficReport> {
        let panicked = |_| anyhow::anyhow!("a traffic thread panicked");
        Ok(TrafficReport {
            downloads: self.downloads.join().map_err(panicked)?,
            flows: self
                .flows
                .into_iter()
                .map(|h| h.join().map_err(panicked))
                .collect::<Result<_>>()?,
        })
    }
}

impl TrafficReport {
    pub fn received(&self) -> u32 {
        self.flows.iter().map(|u| u.received).sum()
    }

    pub fn sent(&self) -> u32 {
        self.flows.iter().map(|u| u.sent).sum()
    }

    pub fn longest_gap_ms(&self) -> f64 {
        self.flows
            .iter()
            .map(|u| u.longest_gap_ms)
            .fold(0.0, f64::max)
    }

    pub fn reordered(&self) -> u32 {
        self.flows.iter().map(|u| u.reordered).sum()
    }
}
