//! Gratuitous ARP: "`address` is at this interface's MAC", broadcast on the interface, so that
//! neighbours (and a cloud's VPC that learns a HaVip's owner this way) update their entries at
//! once instead of when theirs expire. An ARP request whose sender and target are `address`
//! (RFC 5227's announcement), sent on an AF_PACKET socket.

use std::{
    mem::{size_of, zeroed},
    net::Ipv4Addr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

const ETH_P_ARP: u16 = 0x0806;

/// The announcement frame for `address` at `mac`.
pub fn garp_frame(mac: [u8; 6], address: Ipv4Addr) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    // Ethernet, IPv4, 6-byte hardware and 4-byte protocol addresses, a request.
    f[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&address.octets());
    // Target hardware address zero (unknown), target protocol address the same address.
    f[38..42].copy_from_slice(&address.octets());
    f
}

/// Broadcasts the announcement of `address` on interface `ifindex` whose MAC is `mac`.
pub fn send_garp(ifindex: u32, mac: [u8; 6], address: Ipv4Addr) -> std::io::Result<()> {
    let frame = garp_frame(mac, address);
    // SAFETY: plain socket calls on a socket this function owns and buffers it owns.
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let mut sll: libc::sockaddr_ll = zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = ETH_P_ARP.to_be();
        sll.sll_ifindex = ifindex as i32;
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&[0xff; 6]);
        let n = libc::sendto(
            fd.as_raw_fd(),
            frame.as_ptr() as *const libc::c_void,
            frame.len(),
            0,
            &sll as *const _ as *const libc::sockaddr,
            size_of::<libc::sockaddr_ll>() as u32,
        );
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_announcement_names_the_address_as_sender_and_target() {
        let f = garp_frame([2, 0, 0, 0, 0, 9], Ipv4Addr::new(10, 0, 0, 60));
        // Parsed with an independent implementation.
        let eth = etherparse::Ethernet2Header::from_slice(&f).unwrap().0;
        assert_eq!(eth.destination, [0xff; 6]);
        assert_eq!(eth.ether_type, etherparse::EtherType::ARP);
        let arp = etherparse::ArpPacket::from_slice(&f[14..]).unwrap();
        assert_eq!(arp.operation, etherparse::ArpOperation::REQUEST);
        assert_eq!(arp.sender_hw_addr(), &[2, 0, 0, 0, 0, 9]);
        assert_eq!(arp.sender_protocol_addr(), &[10, 0, 0, 60]);
        assert_eq!(arp.target_protocol_addr(), &[10, 0, 0, 60]);
        assert_eq!(arp.target_hw_addr(), &[0; 6]);
    }
}
