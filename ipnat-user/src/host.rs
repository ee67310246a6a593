//! Host settings ipnat changes, and puts back when it is removed (`ipnat down`).
//!
//! Steering sends a source's packets out of the interface that owns it, and the replies come
//! back on that interface while the main routing table points elsewhere: strict reverse-path
//! filtering (`rp_filter = 1`, the RHEL and Alibaba Cloud Linux default) would drop them. ipnat
//! sets loose mode (2) on the interfaces it steers for when the effective value (the larger of
//! `all` and the interface's) is strict, records the old value, and restores it on `ipnat down`.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

/// Where the old values of what ipnat changed are kept: beside no pin (bpffs holds only BPF
/// objects), in /run, named after the pin directory.
pub fn state_path(pin_path: &Path) -> PathBuf {
    let name: String = pin_path
        .to_string_lossy()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    PathBuf::from("/run/ipnat").join(format!("{name}.sysctl.json"))
}

/// sysctl key -> value before ipnat changed it.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Changed {
    pub sysctls: BTreeMap<String, String>,
}

fn proc_path(key: &str) -> PathBuf {
    PathBuf::from("/proc/sys").join(key.replace('.', "/"))
}

fn read(key: &str) -> std::io::Result<String> {
    Ok(std::fs::read_to_string(proc_path(key))?.trim().to_owned())
}

fn write(key: &str, value: &str) -> std::io::Result<()> {
    std::fs::write(proc_path(key), value)
}

fn load(state: &Path) -> Changed {
    std::fs::read_to_string(state)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

/// Makes reverse-path filtering loose on `ifaces` where it is strict; returns what it changed
/// now as (key, old value). Old values already recorded (by an earlier run) are kept.
pub fn loosen_rp_filter(ifaces: &[String], state: &Path) -> std::io::Result<Vec<(String, String)>> {
    let mut changed = load(state);
    let all: u8 = read("net.ipv4.conf.all.rp_filter")?.parse().unwrap_or(0);
    let mut now = Vec::new();
    for iface in ifaces {
        let key = format!("net.ipv4.conf.{iface}.rp_filter");
        let old = read(&key)?;
        let effective = all.max(old.parse().unwrap_or(0));
        if effective == 1 {
            write(&key, "2")?;
            changed
                .sysctls
                .entry(key.clone())
                .or_insert_with(|| old.clone());
            now.push((key, old));
        }
    }
    if !changed.sysctls.is_empty() {
        std::fs::create_dir_all(state.parent().unwrap_or(Path::new("/run")))?;
        std::fs::write(state, serde_json::to_string_pretty(&changed)?)?;
    }
    Ok(now)
}

/// What ipnat changed on the host, still in force.
pub fn changed(state: &Path) -> Changed {
    load(state)
}

/// Puts back every value ipnat changed and forgets them; returns (key, restored value).
pub fn restore(state: &Path) -> std::io::Result<Vec<(String, String)>> {
    let changed = load(state);
    let mut done = Vec::new();
    for (key, old) in changed.sysctls {
        // An interface that is gone took its setting with it.
        if proc_path(&key).exists() {
            write(&key, &old)?;
            done.push((key, old));
        }
    }
    match std::fs::remove_file(state) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    Ok(done)
}

/// Asks the kernel to resolve `addr`'s link-layer address on interface `ifindex` now (an
/// `RTM_NEWNEIGH` with `NTF_USE`, what `ip neigh replace ... use` does), so that the first
/// steered packet does not have to wait for ARP. Returns once the kernel accepted the request;
/// the resolution itself runs in the background.
pub fn resolve_neighbour(ifindex: u32, addr: std::net::Ipv4Addr) -> std::io::Result<()> {
    use std::mem::size_of;
    const NTF_USE: u8 = 0x01;
    const NDA_DST: u16 = 1;
    // nlmsghdr (16) + ndmsg (12) + rtattr NDA_DST (4 + 4).
    let len = 16 + 12 + 8;
    let mut msg = Vec::with_capacity(len);
    msg.extend_from_slice(&(len as u32).to_ne_bytes());
    msg.extend_from_slice(&libc::RTM_NEWNEIGH.to_ne_bytes());
    let flags = libc::NLM_F_REQUEST | libc::NLM_F_ACK | libc::NLM_F_CREATE | libc::NLM_F_REPLACE;
    msg.extend_from_slice(&(flags as u16).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    msg.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
    msg.push(libc::AF_INET as u8); // ndm_family
    msg.extend_from_slice(&[0, 0, 0]); // padding
    msg.extend_from_slice(&(ifindex as i32).to_ne_bytes());
    msg.extend_from_slice(&0u16.to_ne_bytes()); // ndm_state: NUD_NONE
    msg.push(NTF_USE); // ndm_flags
    msg.push(0); // ndm_type
    msg.extend_from_slice(&8u16.to_ne_bytes());
    msg.extend_from_slice(&NDA_DST.to_ne_bytes());
    msg.extend_from_slice(&addr.octets());
    // SAFETY: plain socket calls on buffers we own, with their lengths.
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
        let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
        let mut sa: libc::sockaddr_nl = std::mem::zeroed();
        sa.nl_family = libc::AF_NETLINK as u16;
        if libc::sendto(
            raw,
            msg.as_ptr().cast(),
            msg.len(),
            0,
            (&sa as *const libc::sockaddr_nl).cast(),
            size_of::<libc::sockaddr_nl>() as u32,
        ) < 0
        {
            return Err(std::io::Error::last_os_error());
        }
        // The ACK: an nlmsgerr whose error is 0 on success.
        let mut buf = [0u8; 256];
        let n = libc::recv(raw, buf.as_mut_ptr().cast(), buf.len(), 0);
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if n >= 20 && u16::from_ne_bytes([buf[4], buf[5]]) == libc::NLMSG_ERROR as u16 {
            let err = i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]);
            if err != 0 {
                return Err(std::io::Error::from_raw_os_error(-err));
            }
        }
    }
    Ok(())
}
