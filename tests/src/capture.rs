//! A packet capture on one interface (AF_PACKET), to check what really crossed the wire.

use std::{
    mem::{size_of, zeroed},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Result, bail};

use crate::netns::Netns;

/// One captured frame.
#[derive(Clone, Debug)]
pub struct Frame {
    pub bytes: Vec<u8>,
    /// The kernel said the checksum is not filled in yet (partial, TP_STATUS_CSUMNOTREADY):
    /// such a frame proves nothing about checksums.
    pub csum_not_ready: bool,
}

impl Frame {
    /// The IPv4 packet inside, if it is one (Ethernet, untagged).
    pub fn ipv4(&self) -> Option<&[u8]> {
        (self.bytes.len() >= 34 && self.bytes[12..14] == [0x08, 0x00]).then(|| &self.bytes[14..])
    }
}

/// Captures every frame received on `iface` inside `ns` until [`Capture::stop`].
pub struct Capture {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<Vec<Frame>>>>,
}

const ETH_P_ALL: u16 = 0x0003;
const TP_STATUS_CSUMNOTREADY: u32 = 1 << 3;

fn open(iface: &str) -> Result<OwnedFd> {
    // SAFETY: plain socket syscalls on buffers we own.
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, (ETH_P_ALL.to_be()) as i32);
        if fd < 0 {
            bail!("socket(AF_PACKET): {}", std::io::Error::last_os_error());
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let name = std::ffi::CString::new(iface)?;
        let index = libc::if_nametoindex(name.as_ptr());
        if index == 0 {
            bail!("no interface {iface}");
        }
        let mut sll: libc::sockaddr_ll = zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = ETH_P_ALL.to_be();
        sll.sll_ifindex = index as i32;
        if libc::bind(
            fd.as_raw_fd(),
            &sll as *const _ as *const libc::sockaddr,
            size_of::<libc::sockaddr_ll>() as u32,
        ) != 0
        {
            bail!(
                "bind AF_PACKET to {iface}: {}",
                std::io::Error::last_os_error()
            );
        }
        use crate::sock::{enable, set_option};
        enable(&fd, libc::SOL_PACKET, libc::PACKET_AUXDATA)?;
        // Large enough that a burst is not dropped while the test thread is busy; drops are
        // checked with PACKET_STATISTICS when the capture stops.
        set_option::<libc::c_int>(&fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 64 << 20)?;
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
        set_option(&fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, tv)?;
        Ok(fd)
    }
}

/// One frame; `flags` for recvmsg (MSG_DONTWAIT: only what is queued).
fn recv(fd: &OwnedFd, snap: usize, flags: i32) -> Option<Frame> {
    let mut buf = vec![0u8; 65536];
    let mut cmsg = [0u8; 256];
    // SAFETY: recvmsg into buffers we own; cmsgs parsed with the libc macros.
    unsafe {
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr() as *mut libc::c_void,
            iov_len: buf.len(),
        };
        let mut msg: libc::msghdr = zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cmsg.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = cmsg.len();
        let n = libc::recvmsg(fd.as_raw_fd(), &mut msg, flags);
        if n <= 0 {
            return None;
        }
        let mut csum_not_ready = false;
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_PACKET && (*c).cmsg_type == libc::PACKET_AUXDATA {
                let aux = (libc::CMSG_DATA(c) as *const libc::tpacket_auxdata).read_unaligned();
                csum_not_ready = aux.tp_status & TP_STATUS_CSUMNOTREADY != 0;
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
        buf.truncate((n as usize).min(snap));
        Some(Frame {
            bytes: buf,
            csum_not_ready,
        })
    }
}

/// Frames the kernel dropped for this socket (PACKET_STATISTICS).
fn dropped(fd: &OwnedFd) -> Result<u32> {
    // SAFETY: getsockopt into a struct we own.
    unsafe {
        let mut st: libc::tpacket_stats = zeroed();
        let mut len = size_of::<libc::tpacket_stats>() as libc::socklen_t;
        if libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_STATISTICS,
            &mut st as *mut _ as *mut libc::c_void,
            &mut len,
        ) != 0
        {
            bail!("PACKET_STATISTICS: {}", std::io::Error::last_os_error());
        }
        Ok(st.tp_drops)
    }
}

impl Capture {
    /// Starts capturing; returns once the socket is bound, so nothing sent afterwards is missed.
    pub fn start(ns: &Netns, iface: &str) -> Result<Self> {
        Self::start_snap(ns, iface, usize::MAX)
    }

    /// [`Capture::start`], keeping only the first `snap` bytes of each frame (headers: bulk
    /// traffic kept whole would cost gigabytes).
    pub fn start_snap(ns: &Netns, iface: &str, snap: usize) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let iface = iface.to_owned();
        let flag = stop.clone();
        let thread = ns.spawn(move || {
            let fd = match open(&iface) {
                Ok(fd) => {
                    let _ = tx.send(Ok(()));
                    fd
                }
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                    return Err(e);
                }
            };
            let mut frames = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                if let Some(f) = recv(&fd, snap, 0) {
                    frames.push(f);
                }
            }
            // Drain what is queued (without waiting: on a link with steady traffic, such as
            // BFD's every 100 ms, a wait for the next frame would never end).
            while let Some(f) = recv(&fd, snap, libc::MSG_DONTWAIT) {
                frames.push(f);
            }
            let drops = dropped(&fd)?;
            if drops > 0 {
                bail!(
                    "the capture on {iface} dropped {drops} frames: its results would be incomplete"
                );
            }
            Ok(frames)
        });
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => Ok(Self {
                stop,
                thread: Some(thread),
            }),
            Ok(Err(e)) => bail!("capture: {e}"),
            Err(_) => bail!("capture did not start"),
        }
    }

    /// Stops and returns every frame received.
    pub fn stop(mut self) -> Result<Vec<Frame>> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take().expect("joined once").join() {
            Ok(r) => r,
            Err(p) => std::panic::resume_unwind(p),
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
