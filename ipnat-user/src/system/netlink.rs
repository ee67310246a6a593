//! rtnetlink requests (addresses, neighbours) and the generic socket round trip `netdev`
//! uses too.

/// Sends one rtnetlink request and waits for its acknowledgement.
pub(super) fn netlink_request(msg_type: u16, flags: u16, body: &[u8]) -> std::io::Result<()> {
    netlink(libc::NETLINK_ROUTE, msg_type, flags, body, false).map(drop)
}

/// Sends one netlink request of `msg_type` with `body` on a socket of `protocol`; returns the
/// reply (`reply`: the first message the kernel answers with) or waits for the
/// acknowledgement. An error the kernel answers is returned as such.
pub(crate) fn netlink(
    protocol: i32,
    msg_type: u16,
    flags: u16,
    body: &[u8],
    reply: bool,
) -> std::io::Result<Vec<u8>> {
    let ack = if reply { 0 } else { libc::NLM_F_ACK as u16 };
    let fd = netlink_send(protocol, msg_type, flags | ack, body)?;
    let mut buf = vec![0u8; 8192];
    let n = netlink_recv(&fd, &mut buf)?;
    buf.truncate(n);
    // An nlmsgerr: error 0 is the acknowledgement.
    if buf.len() >= 20 && u16::from_ne_bytes([buf[4], buf[5]]) == libc::NLMSG_ERROR as u16 {
        let err = i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]);
        if err != 0 {
            return Err(std::io::Error::from_raw_os_error(-err));
        }
    }
    Ok(buf)
}

/// Opens a netlink socket of `protocol` and sends one request on it.
pub(super) fn netlink_send(
    protocol: i32,
    msg_type: u16,
    flags: u16,
    body: &[u8],
) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::mem::size_of;
    let len = 16 + body.len();
    let mut msg = Vec::with_capacity(len);
    msg.extend_from_slice(&(len as u32).to_ne_bytes());
    msg.extend_from_slice(&msg_type.to_ne_bytes());
    msg.extend_from_slice(&(flags | libc::NLM_F_REQUEST as u16).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    msg.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
    msg.extend_from_slice(body);
    // SAFETY: plain socket calls on buffers we own, with their lengths.
    unsafe {
        let fd = libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            protocol,
        );
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let fd: std::os::fd::OwnedFd = std::os::fd::FromRawFd::from_raw_fd(fd);
        let mut sa: libc::sockaddr_nl = std::mem::zeroed();
        sa.nl_family = libc::AF_NETLINK as u16;
        if libc::sendto(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            msg.as_ptr().cast(),
            msg.len(),
            0,
            (&sa as *const libc::sockaddr_nl).cast(),
            size_of::<libc::sockaddr_nl>() as u32,
        ) < 0
        {
            return Err(std::io::Error::last_os_error());
        }
        Ok(fd)
    }
}

/// One read from a netlink socket; the bytes read.
pub(super) fn netlink_recv(fd: &std::os::fd::OwnedFd, buf: &mut [u8]) -> std::io::Result<usize> {
    // SAFETY: a read into a buffer we own, of its length.
    let n = unsafe {
        libc::recv(
            std::os::fd::AsRawFd::as_raw_fd(fd),
            buf.as_mut_ptr().cast(),
            buf.len(),
            0,
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Sends an rtnetlink dump request (`msg_type` with `NLM_F_DUMP`) and calls `each` with every
/// message's type and body until the kernel's NLMSG_DONE; an error the kernel answers is
/// returned as such.
pub(super) fn dump(
    msg_type: u16,
    body: &[u8],
    mut each: impl FnMut(u16, &[u8]),
) -> std::io::Result<()> {
    let fd = netlink_send(libc::NETLINK_ROUTE, msg_type, libc::NLM_F_DUMP as u16, body)?;
    let mut buf = vec![0u8; 32768];
    loop {
        let n = netlink_recv(&fd, &mut buf)?;
        let data = &buf[..n];
        let mut off = 0;
        while off + 16 <= data.len() {
            let mlen = u32::from_ne_bytes(data[off..off + 4].try_into().expect("4")) as usize;
            let mtype = u16::from_ne_bytes([data[off + 4], data[off + 5]]);
            if mlen < 16 || off + mlen > data.len() {
                break;
            }
            if mtype == libc::NLMSG_DONE as u16 {
                return Ok(());
            }
            if mtype == libc::NLMSG_ERROR as u16 {
                let err = i32::from_ne_bytes(data[off + 16..off + 20].try_into().expect("4"));
                return Err(std::io::Error::from_raw_os_error(-err));
            }
            each(mtype, &data[off + 16..off + mlen]);
            off += (mlen + 3) & !3;
        }
    }
}

/// The attributes in `data` (after a message's fixed header), as (type, payload).
pub(super) fn attrs(data: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut a = 0;
    std::iter::from_fn(move || {
        if a + 4 > data.len() {
            return None;
        }
        let alen = u16::from_ne_bytes([data[a], data[a + 1]]) as usize;
        let kind = u16::from_ne_bytes([data[a + 2], data[a + 3]]);
        if alen < 4 || a + alen > data.len() {
            return None;
        }
        let p = &data[a + 4..a + alen];
        a += (alen + 3) & !3;
        Some((kind, p))
    })
}

/// A netlink attribute: length, type, payload, padded to 4 bytes.
pub(crate) fn attr(kind: u16, payload: &[u8]) -> Vec<u8> {
    let mut a = Vec::with_capacity(8 + payload.len());
    a.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
    a.extend_from_slice(&kind.to_ne_bytes());
    a.extend_from_slice(payload);
    while a.len() % 4 != 0 {
        a.push(0);
    }
    a
}

/// Asks the kernel to resolve `addr`'s link-layer address on interface `ifindex` now (an
/// `RTM_NEWNEIGH` with `NTF_USE`, what `ip neigh replace ... use` does), so that the first
/// steered packet does not have to wait for ARP. Returns once the kernel accepted the request;
/// the resolution itself runs in the background.
pub fn resolve_neighbour(ifindex: u32, addr: std::net::Ipv4Addr) -> std::io::Result<()> {
    const NTF_USE: u8 = 0x01;
    const NDA_DST: u16 = 1;
    let mut body = Vec::new();
    body.push(libc::AF_INET as u8); // ndm_family
    body.extend_from_slice(&[0, 0, 0]); // padding
    body.extend_from_slice(&(ifindex as i32).to_ne_bytes());
    body.extend_from_slice(&0u16.to_ne_bytes()); // ndm_state: NUD_NONE
    body.push(NTF_USE); // ndm_flags
    body.push(0); // ndm_type
    body.extend_from_slice(&attr(NDA_DST, &addr.octets()));
    netlink_request(
        libc::RTM_NEWNEIGH,
        (libc::NLM_F_CREATE | libc::NLM_F_REPLACE) as u16,
        &body,
    )
}

/// A netlink socket subscribed to the kernel's reports of IPv4 route, rule and address changes
/// and of link changes: anything that can change where a route back to a source leads.
pub fn routing_changes() -> std::io::Result<std::os::fd::OwnedFd> {
    use std::mem::size_of;
    const GROUPS: u32 = (libc::RTMGRP_LINK
        | libc::RTMGRP_IPV4_IFADDR
        | libc::RTMGRP_IPV4_ROUTE
        | libc::RTMGRP_IPV4_RULE) as u32;
    // SAFETY: plain socket calls; the address is a zeroed sockaddr_nl with its size.
    unsafe {
        let fd = libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        );
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let fd: std::os::fd::OwnedFd = std::os::fd::FromRawFd::from_raw_fd(fd);
        let mut sa: libc::sockaddr_nl = std::mem::zeroed();
        sa.nl_family = libc::AF_NETLINK as u16;
        sa.nl_groups = GROUPS;
        if libc::bind(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            (&sa as *const libc::sockaddr_nl).cast(),
            size_of::<libc::sockaddr_nl>() as u32,
        ) < 0
        {
            return Err(std::io::Error::last_os_error());
        }
        Ok(fd)
    }
}

/// Waits for the next report on a [`routing_changes`] socket. A socket that overran (the
/// kernel dropped reports: ENOBUFS) counts as a change too, since what changed is unknown.
pub fn wait_routing_change(fd: &std::os::fd::OwnedFd, buf: &mut [u8]) -> std::io::Result<()> {
    match netlink_recv(fd, buf) {
        Ok(_) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => Ok(()),
        Err(e) => Err(e),
    }
}
