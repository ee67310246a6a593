//! Packet construction for tests, with checksums computed from scratch (RFC 1071) over the whole
//! packet: independent of the data plane's incremental arithmetic.

use std::net::Ipv4Addr;

pub use ipnat_common::ipproto::{
    DCCP as IPPROTO_DCCP, GRE as IPPROTO_GRE, ICMP as IPPROTO_ICMP, TCP as IPPROTO_TCP,
    UDP as IPPROTO_UDP, UDPLITE as IPPROTO_UDPLITE,
};

/// The Internet checksum of `data` (one's complement of the one's complement sum).
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum(data))
}

fn sum(data: &[u8]) -> u32 {
    let mut s = 0u32;
    for chunk in data.chunks(2) {
        let w = if chunk.len() == 2 {
            u16::from_be_bytes([chunk[0], chunk[1]])
        } else {
            u16::from_be_bytes([chunk[0], 0])
        };
        s += w as u32;
    }
    s
}

fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

pub fn pseudo_header(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(12);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.push(0);
    p.push(proto);
    p.extend_from_slice(&(len as u16).to_be_bytes());
    p
}

/// How the L4 checksum of a UDP packet is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UdpCsum {
    /// Computed (a computed zero is sent as 0xffff, RFC 768).
    Computed,
    /// Zero: "no checksum".
    Zero,
}

/// An IPv4 packet under construction; `l4` holds the L4 header and payload with the checksum
/// field zeroed, to be filled by [`Ipv4::finish`].
#[derive(Clone, Debug)]
pub struct Ipv4 {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    pub ttl: u8,
    pub id: u16,
    /// Flags and fragment offset (host order): 0x2000 = MF, low 13 bits = offset / 8.
    pub frag: u16,
    pub options: Vec<u8>,
    pub l4: Vec<u8>,
    pub vlan: Option<u16>,
    pub udp_csum: UdpCsum,
}

impl Ipv4 {
    pub fn new(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4: Vec<u8>) -> Self {
        Self {
            src,
            dst,
            proto,
            ttl: 64,
            id: 0x1234,
            frag: 0x4000, // DF
            options: Vec::new(),
            l4,
            vlan: None,
            udp_csum: UdpCsum::Computed,
        }
    }

    /// A TCP segment (ACK|PSH) with `payload`.
    pub fn tcp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, payload: &[u8]) -> Self {
        let mut l4 = Vec::new();
        l4.extend_from_slice(&sport.to_be_bytes());
        l4.extend_from_slice(&dport.to_be_bytes());
        l4.extend_from_slice(&0x0102_0304u32.to_be_bytes()); // seq
        l4.extend_from_slice(&0x0506_0708u32.to_be_bytes()); // ack
        l4.push(5 << 4);
        l4.push(0x18);
        l4.extend_from_slice(&65535u16.to_be_bytes());
        l4.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent
        l4.extend_from_slice(payload);
        Self::new(src, dst, IPPROTO_TCP, l4)
    }

    pub fn udp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, payload: &[u8]) -> Self {
        let mut l4 = Vec::new();
        l4.extend_from_slice(&sport.to_be_bytes());
        l4.extend_from_slice(&dport.to_be_bytes());
        l4.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        l4.extend_from_slice(&[0, 0]);
        l4.extend_from_slice(payload);
        Self::new(src, dst, IPPROTO_UDP, l4)
    }

    /// ICMP echo request.
    pub fn icmp_echo(src: Ipv4Addr, dst: Ipv4Addr, ident: u16, seq: u16, payload: &[u8]) -> Self {
        let mut l4 = vec![8, 0, 0, 0];
        l4.extend_from_slice(&ident.to_be_bytes());
        l4.extend_from_slice(&seq.to_be_bytes());
        l4.extend_from_slice(payload);
        Self::new(src, dst, IPPROTO_ICMP, l4)
    }

    /// An ICMP error (`icmp_type`/`code`, e.g. 3/4 fragmentation needed with `mtu`) quoting the
    /// first `quote_len` bytes of `quoted` as it was sent (checksums over the full datagram).
    pub fn icmp_error(
        src: Ipv4Addr,
        dst: Ipv4Addr,
        icmp_type: u8,
        code: u8,
        mtu: u16,
        quoted: &Ipv4,
        quote_len: usize,
    ) -> Self {
        let mut l4 = vec![icmp_type, code, 0, 0, 0, 0];
        l4.extend_from_slice(&mtu.to_be_bytes());
        let q = quoted.ip_bytes();
        l4.extend_from_slice(&q[..quote_len.min(q.len())]);
        Self::new(src, dst, IPPROTO_ICMP, l4)
    }

    /// Same packet with other addresses.
    pub fn with_addrs(&self, src: Ipv4Addr, dst: Ipv4Addr) -> Self {
        Self {
            src,
            dst,
            ..self.clone()
        }
    }

    fn l4_csum_offset(&self) -> Option<usize> {
        match self.proto {
            IPPROTO_TCP => Some(16),
            IPPROTO_UDP | IPPROTO_UDPLITE | IPPROTO_DCCP => Some(6),
            IPPROTO_ICMP => Some(2),
            _ => None,
        }
    }

    /// The L4 bytes with their checksum computed over the full L4 data.
    pub fn l4_with_checksum(&self) -> Vec<u8> {
        let mut l4 = self.l4.clone();
        let Some(off) = self.l4_csum_offset() else {
            return l4;
        };
        if l4.len() < off + 2 {
            return l4;
        }
        l4[off] = 0;
        l4[off + 1] = 0;
        let c = match self.proto {
            IPPROTO_ICMP => checksum(&l4),
            IPPROTO_UDP if self.udp_csum == UdpCsum::Zero => 0,
            proto => {
                let mut buf = pseudo_header(self.src, self.dst, proto, l4.len());
                buf.extend_from_slice(&l4);
                match checksum(&buf) {
                    0 if proto == IPPROTO_UDP => 0xffff,
                    c => c,
                }
            }
        };
        l4[off..off + 2].copy_from_slice(&c.to_be_bytes());
        l4
    }

    /// The IPv4 header (with checksum) for an L4 part of `l4_len` bytes.
    pub fn header(&self, l4_len: usize) -> Vec<u8> {
        assert!(self.options.len().is_multiple_of(4) && self.options.len() <= 40);
        let ihl = 20 + self.options.len();
        let mut h = Vec::with_capacity(ihl);
        h.push(0x40 | (ihl / 4) as u8);
        h.push(0);
        h.extend_from_slice(&((ihl + l4_len) as u16).to_be_bytes());
        h.extend_from_slice(&self.id.to_be_bytes());
        h.extend_from_slice(&self.frag.to_be_bytes());
        h.push(self.ttl);
        h.push(self.proto);
        h.extend_from_slice(&[0, 0]);
        h.extend_from_slice(&self.src.octets());
        h.extend_from_slice(&self.dst.octets());
        h.extend_from_slice(&self.options);
        let c = checksum(&h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h
    }

    /// The whole IPv4 packet: header plus L4 with checksums from scratch.
    pub fn ip_bytes(&self) -> Vec<u8> {
        let l4 = self.l4_with_checksum();
        let mut p = self.header(l4.len());
        p.extend_from_slice(&l4);
        p
    }

    /// An Ethernet frame carrying this packet.
    pub fn frame(&self) -> Vec<u8> {
        ethernet(self.vlan, 0x0800, &self.ip_bytes())
    }

    /// An Ethernet frame carrying bytes `[from, to)` of this packet's L4 part as one fragment
    /// (offset `from` must be a multiple of 8). The L4 checksum is the one of the whole datagram.
    pub fn fragment_frame(&self, from: usize, to: usize, more: bool) -> Vec<u8> {
        assert_eq!(from % 8, 0);
        let l4 = self.l4_with_checksum();
        let part = &l4[from..to.min(l4.len())];
        let frag = Self {
            frag: (if more { 0x2000 } else { 0 }) | (from / 8) as u16,
            ..self.clone()
        };
        let mut p = frag.header(part.len());
        p.extend_from_slice(part);
        ethernet(self.vlan, 0x0800, &p)
    }

    /// Makes the UDP/TCP checksum of `with_addrs(src, dst)` come out as zero (computed), by
    /// choosing the last two payload bytes. For exercising the "computed zero" rule.
    pub fn force_zero_checksum_for(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        let n = self.l4.len();
        assert!(n >= 10, "needs at least two payload bytes");
        assert!(n.is_multiple_of(2), "keep the adjusted word aligned");
        self.l4[n - 2] = 0;
        self.l4[n - 1] = 0;
        let off = self.l4_csum_offset().expect("L4 with checksum");
        let mut l4 = self.l4.clone();
        l4[off] = 0;
        l4[off + 1] = 0;
        let mut buf = pseudo_header(src, dst, self.proto, l4.len());
        buf.extend_from_slice(&l4);
        let s = fold(sum(&buf));
        // We want the folded sum to be 0xffff, so that the checksum (its complement) is 0.
        let w = 0xffffu16.wrapping_sub(s);
        self.l4[n - 2..].copy_from_slice(&w.to_be_bytes());
    }
}

pub const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0xa];
pub const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0xb];

/// An Ethernet frame (optionally 802.1Q tagged) around `payload`.
pub fn ethernet(vlan: Option<u16>, ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(18 + payload.len());
    f.extend_from_slice(&MAC_B);
    f.extend_from_slice(&MAC_A);
    if let Some(tag) = vlan {
        f.extend_from_slice(&0x8100u16.to_be_bytes());
        f.extend_from_slice(&tag.to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An IPv4 header whose own checksum is exact: (header length, total length, source,
/// destination).
fn checked_header(p: &[u8]) -> Result<(usize, usize, Ipv4Addr, Ipv4Addr), String> {
    if p.len() < 20 || p[0] >> 4 != 4 {
        return Err("not IPv4".into());
    }
    let ihl = (p[0] & 0xf) as usize * 4;
    if checksum(&p[..ihl]) != 0 {
        return Err(format!(
            "bad IPv4 header checksum {:02x}{:02x}",
            p[10], p[11]
        ));
    }
    Ok((
        ihl,
        u16::from_be_bytes([p[2], p[3]]) as usize,
        Ipv4Addr::new(p[12], p[13], p[14], p[15]),
        Ipv4Addr::new(p[16], p[17], p[18], p[19]),
    ))
}

/// Verifies the IPv4 header checksum and, for unfragmented TCP/UDP/ICMP, the L4 checksum of an
/// IPv4 packet (no Ethernet header). Returns a description of the first problem.
pub fn verify_ipv4(p: &[u8]) -> Result<(), String> {
    let (ihl, total, src, dst) = checked_header(p)?;
    let frag = u16::from_be_bytes([p[6], p[7]]);
    if frag & 0x3fff != 0 {
        return Ok(()); // a fragment: the L4 checksum covers the reassembled datagram
    }
    let l4 = &p[ihl..total];
    let ok = match p[9] {
        IPPROTO_ICMP => checksum(l4) == 0,
        IPPROTO_UDP if l4.len() >= 8 && l4[6] == 0 && l4[7] == 0 => true,
        proto @ (IPPROTO_TCP | IPPROTO_UDP) => {
            let mut buf = pseudo_header(src, dst, proto, l4.len());
            buf.extend_from_slice(l4);
            checksum(&buf) == 0
        }
        _ => true,
    };
    if ok {
        Ok(())
    } else {
        Err(format!("bad L4 checksum (proto {}) {src} -> {dst}", p[9]))
    }
}

/// Verifies an IPv4 packet whose L4 checksum the sender left to be completed later
/// (CHECKSUM_PARTIAL: offload, or GRO on a forwarding path): the header checksum is exact, and
/// a TCP or UDP checksum field holds what Linux puts there, the folded sum of the pseudo-header
/// (for the packet's own length) that the completion adds the segment's sum to.
pub fn verify_ipv4_partial(p: &[u8]) -> Result<(), String> {
    let (ihl, total, src, dst) = checked_header(p)?;
    let field = match p[9] {
        IPPROTO_TCP => ihl + 16,
        IPPROTO_UDP => ihl + 6,
        _ => return Ok(()),
    };
    let got = u16::from_be_bytes([p[field], p[field + 1]]);
    let want = fold(sum(&pseudo_header(src, dst, p[9], total - ihl)));
    if got == want {
        Ok(())
    } else {
        Err(format!(
            "partial L4 checksum {got:04x} is not the pseudo-header's {want:04x} (proto {}) {src} -> {dst}",
            p[9]
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3 example words: 0001 f203 f4f5 f6f7 -> sum ddf2, checksum 220d.
        assert_eq!(
            checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            0x220d
        );
    }

    #[test]
    fn built_packets_verify() {
        let a = Ipv4Addr::new(203, 0, 113, 10);
        let b = Ipv4Addr::new(198, 51, 100, 10);
        for p in [
            Ipv4::tcp(a, 1000, b, 80, b"hello"),
            Ipv4::udp(a, 1000, b, 53, b"odd"),
            Ipv4::icmp_echo(a, b, 7, 1, b"ping"),
        ] {
            verify_ipv4(&p.ip_bytes()).unwrap();
        }
        let mut z = Ipv4::udp(a, 1000, b, 53, b"zero");
        z.force_zero_checksum_for(a, b);
        let bytes = z.ip_bytes();
        assert_eq!(&bytes[26..28], &[0xff, 0xff]);
        verify_ipv4(&bytes).unwrap();
    }
}
