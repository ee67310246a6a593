//! An IPv4 address or a network block, as the config writes them.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// An IPv4 address (`198.51.100.10`, a /32) or a network block (`120.0.0.0/25`), written as a
/// string in the config; a block's host bits must be zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Block(pub Ipv4Net);

impl Block {
    pub fn addr(self) -> Ipv4Addr {
        self.0.network()
    }

    pub fn prefix_len(self) -> u8 {
        self.0.prefix_len()
    }

    /// First and last address, as integers.
    pub fn range(self) -> (u32, u32) {
        (u32::from(self.0.network()), u32::from(self.0.broadcast()))
    }

    pub fn is_host(self) -> bool {
        self.0.prefix_len() == 32
    }
}

impl From<Ipv4Addr> for Block {
    fn from(a: Ipv4Addr) -> Self {
        Block(Ipv4Net::from(a))
    }
}

impl std::fmt::Display for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_host() {
            write!(f, "{}", self.0.addr())
        } else {
            write!(f, "{}", self.0)
        }
    }
}

impl std::str::FromStr for Block {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let net = if s.contains('/') {
            s.parse::<Ipv4Net>()
                .map_err(|_| format!("{s:?} is not an IPv4 address or block (a.b.c.d/len)"))?
        } else {
            Ipv4Net::from(
                s.parse::<Ipv4Addr>()
                    .map_err(|_| format!("{s:?} is not an IPv4 address"))?,
            )
        };
        if net.prefix_len() == 0 {
            return Err(format!("{s:?}: a /0 block would translate everything"));
        }
        if net.trunc() != net {
            return Err(format!(
                "{s:?} has host bits set; the block is {}",
                net.trunc()
            ));
        }
        Ok(Block(net))
    }
}

impl<'de> Deserialize<'de> for Block {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for Block {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}
