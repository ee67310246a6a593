//! Real TCP and UDP exchanges between namespaces, and what each side saw.

use super::*;

/// What each side of one exchange saw.
#[derive(Debug)]
pub struct Exchange {
    /// The peer address the server's socket reported.
    pub server_saw_peer: SocketAddr,
    /// The local address of the server's accepted socket.
    pub server_local: SocketAddr,
    /// The address the client's reply came from (UDP) or it connected to (TCP).
    pub client_saw_peer: SocketAddr,
    /// The bytes the server received.
    pub request: Vec<u8>,
    /// The bytes the client received.
    pub response: Vec<u8>,
}

const TIMEOUT: Duration = Duration::from_secs(5);

/// A TCP request from `client` to `target:port`, served by a listener on `server`. The server
/// answers with the request reversed followed by `response_len` bytes of filler.
pub fn tcp_exchange(
    client: &Netns,
    server: &Netns,
    target: Ipv4Addr,
    port: u16,
    request: &[u8],
    response_len: usize,
) -> Result<Exchange> {
    tcp_exchange_from(client, None, server, target, port, request, response_len)
}

/// [`tcp_exchange`] with the client's socket bound to `bind` first.
pub fn tcp_exchange_from(
    client: &Netns,
    bind: Option<Ipv4Addr>,
    server: &Netns,
    target: Ipv4Addr,
    port: u16,
    request: &[u8],
    response_len: usize,
) -> Result<Exchange> {
    tcp_exchange_at(
        client,
        bind,
        server,
        Ipv4Addr::UNSPECIFIED,
        target,
        port,
        request,
        response_len,
    )
}

/// [`tcp_exchange_from`] with the server listening on `listen` (the wildcard address for
/// `0.0.0.0`).
#[allow(clippy::too_many_arguments)]
pub fn tcp_exchange_at(
    client: &Netns,
    bind: Option<Ipv4Addr>,
    server: &Netns,
    listen: Ipv4Addr,
    target: Ipv4Addr,
    port: u16,
    request: &[u8],
    response_len: usize,
) -> Result<Exchange> {
    let listener = server.within(move || Ok(TcpListener::bind((listen, port))?))?;
    let server_thread = std::thread::spawn(move || -> Result<(SocketAddr, SocketAddr, Vec<u8>)> {
        listener.set_nonblocking(false)?;
        let (mut s, peer) = listener.accept()?;
        s.set_read_timeout(Some(TIMEOUT))?;
        s.set_write_timeout(Some(TIMEOUT))?;
        let local = s.local_addr()?;
        let mut len = [0u8; 4];
        s.read_exact(&mut len)?;
        let mut req = vec![0u8; u32::from_be_bytes(len) as usize];
        s.read_exact(&mut req)?;
        let mut resp: Vec<u8> = req.iter().rev().copied().collect();
        resp.extend((0..response_len).map(|i| (i % 251) as u8));
        s.write_all(&resp)?;
        Ok((peer, local, req))
    });
    let req = request.to_vec();
    let client_result = client.within(move || -> Result<(SocketAddr, Vec<u8>)> {
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        if let Some(addr) = bind {
            sock.bind(&SocketAddr::from((addr, 0)).into())?;
        }
        sock.connect_timeout(&SocketAddr::from((target, port)).into(), TIMEOUT)
            .with_context(|| format!("connect to {target}:{port}"))?;
        let mut s: TcpStream = sock.into();
        s.set_read_timeout(Some(TIMEOUT))?;
        s.set_write_timeout(Some(TIMEOUT))?;
        s.write_all(&(req.len() as u32).to_be_bytes())?;
        s.write_all(&req)?;
        let mut resp = Vec::new();
        s.read_to_end(&mut resp)?;
        Ok((s.peer_addr()?, resp))
    });
    let (client_saw_peer, response) = match client_result {
        Ok(r) => r,
        Err(e) => {
            // Unblock the server's accept so its thread ends.
            let _ = server.within(move || {
                Ok(TcpStream::connect_timeout(
                    &SocketAddr::from(([127, 0, 0, 1], port)),
                    TIMEOUT,
                ))
            });
            let _ = server_thread.join();
            return Err(e);
        }
    };
    let (server_saw_peer, server_local, request) = server_thread.join().expect("server thread")?;
    Ok(Exchange {
        server_saw_peer,
        server_local,
        client_saw_peer,
        request,
        response,
    })
}

/// A UDP request from `client` to `target:port`; the server echoes it reversed.
pub fn udp_exchange(
    client: &Netns,
    server: &Netns,
    target: Ipv4Addr,
    port: u16,
    request: &[u8],
) -> Result<Exchange> {
    udp_exchange_at(
        client,
        None,
        server,
        Ipv4Addr::UNSPECIFIED,
        target,
        port,
        request,
    )
}

/// [`udp_exchange`] with the client's socket bound to `bind` (else the wildcard, unconnected)
/// and the server's to `listen`.
pub fn udp_exchange_at(
    client: &Netns,
    bind: Option<Ipv4Addr>,
    server: &Netns,
    listen: Ipv4Addr,
    target: Ipv4Addr,
    port: u16,
    request: &[u8],
) -> Result<Exchange> {
    let sock = server.within(move || Ok(UdpSocket::bind((listen, port))?))?;
    sock.set_read_timeout(Some(TIMEOUT))?;
    let server_thread = std::thread::spawn(move || -> Result<(SocketAddr, Vec<u8>)> {
        let mut buf = vec![0u8; 65536];
        let (n, peer) = sock.recv_from(&mut buf)?;
        buf.truncate(n);
        let resp: Vec<u8> = buf.iter().rev().copied().collect();
        sock.send_to(&resp, peer)?;
        Ok((peer, buf))
    });
    let req = request.to_vec();
    let (client_saw_peer, response) = client.within(move || -> Result<(SocketAddr, Vec<u8>)> {
        let s = UdpSocket::bind((bind.unwrap_or(Ipv4Addr::UNSPECIFIED), 0))?;
        s.set_read_timeout(Some(TIMEOUT))?;
        s.send_to(&req, (target, port))?;
        let mut buf = vec![0u8; 65536];
        let (n, from) = s.recv_from(&mut buf).context("no UDP reply")?;
        buf.truncate(n);
        Ok((from, buf))
    })?;
    let (server_saw_peer, request) = server_thread.join().expect("server thread")?;
    Ok(Exchange {
        server_saw_peer,
        server_local: SocketAddr::from((listen, port)),
        client_saw_peer,
        request,
        response,
    })
}

/// Echoes one datagram that `server` receives back to its sender, in a thread; the sender's
/// address as the server saw it.
pub fn udp_echo_once(server: UdpSocket) -> std::thread::JoinHandle<std::io::Result<SocketAddr>> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        let (n, peer) = server.recv_from(&mut buf)?;
        server.send_to(&buf[..n], peer)?;
        Ok(peer)
    })
}
