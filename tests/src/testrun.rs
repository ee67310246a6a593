//! The real programs on test frames through BPF_PROG_TEST_RUN, with tables filled by the
//! controller library: the harness of the packet fixtures and the property tests.

use std::net::Ipv4Addr;

use aya::programs::{SchedClassifier, TestRun, TestRunOptions, Xdp};
use ipnat::{
    config::{Block, MappingConfig},
    dataplane::{Dataplane, Snapshot},
};
use ipnat_common::names;

use crate::netns::require_root;

pub const INET: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
pub const EIP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
pub const PRIV: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 10);
pub const EIP2: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 11);
pub const PRIV2: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 11);
/// A block mapping: 120.0.0.0/25 <-> 10.0.2.0/25, host bits kept.
pub const BLOCK_PUBLIC: &str = "120.0.0.0/25";
pub const BLOCK_PRIVATE: &str = "10.0.2.0/25";

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;

pub fn block(s: &str) -> Block {
    s.parse().unwrap()
}

/// The standard tables: EIP <-> PRIV, EIP2 <-> PRIV2, and the block.
pub fn standard_mappings() -> Vec<MappingConfig> {
    vec![
        MappingConfig {
            public: EIP.into(),
            private: PRIV.into(),
        },
        MappingConfig {
            public: EIP2.into(),
            private: PRIV2.into(),
        },
        MappingConfig {
            public: block(BLOCK_PUBLIC),
            private: block(BLOCK_PRIVATE),
        },
    ]
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Hook {
    /// XDP on receive: destination public -> private (fast path off).
    Xdp,
    /// TC on transmit: source private -> public (host orientation: public -> private).
    TcEgress,
    /// TC on receive; host orientation: destination private -> public.
    TcIngress,
}

/// The internal prefixes of [`Harness::host`]: the VPC.
pub const INTERNAL: &str = "10.0.0.0/16";

pub struct Harness {
    pub dp: Dataplane,
}

impl Harness {
    /// Loads the programs (not attached) with the standard tables.
    pub fn new() -> Self {
        require_root();
        let mut dp = Dataplane::load(None, 1024).expect("load the eBPF programs");
        dp.tables.apply(&standard_mappings()).expect("fill tables");
        Self { dp }
    }

    /// Loads the programs in host orientation (not attached) with the standard tables and
    /// [`INTERNAL`] as the internal prefixes.
    pub fn host() -> Self {
        let mut h = Self::new();
        h.dp.tables
            .apply_internal(&[INTERNAL.parse().unwrap()])
            .expect("internal prefixes");
        h.dp.tables.set_host(true).expect("host orientation");
        h
    }

    /// Runs `input` through `hook`: (return value, output frame).
    pub fn run(&self, hook: Hook, input: &[u8]) -> (u32, Vec<u8>) {
        let mut out = vec![0u8; input.len() + 512];
        let opts = TestRunOptions {
            data_in: Some(input),
            data_out: Some(&mut out),
            ..Default::default()
        };
        let ebpf = self.dp.ebpf();
        let r = match hook {
            Hook::Xdp => {
                let p: &Xdp = ebpf
                    .program(names::XDP_PROGRAM)
                    .unwrap()
                    .try_into()
                    .unwrap();
                p.test_run(opts)
            }
            Hook::TcEgress | Hook::TcIngress => {
                let name = if hook == Hook::TcEgress {
                    names::TC_EGRESS_PROGRAM
                } else {
                    names::TC_INGRESS_PROGRAM
                };
                let p: &SchedClassifier = ebpf.program(name).unwrap().try_into().unwrap();
                p.test_run(opts)
            }
        }
        .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN {hook:?} on {}: {e}", hex(input)));
        out.truncate(r.data_size_out as usize);
        (r.return_value, out)
    }

    pub fn snapshot(&self) -> Snapshot {
        self.dp.tables.snapshot().unwrap()
    }
}

impl Default for Harness {
    fn default() -> Self {
        Self::new()
    }
}

pub fn hex(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Replaces the pin at `path` with a new per-CPU array of `entries` u32 -> u64 counters, each
/// CPU's slot `i` holding `value(i)`: what an older ipnat with fewer outcome counters pinned.
pub fn pin_old_reason_counters(
    path: &std::path::Path,
    entries: u32,
    value: impl Fn(u32) -> u64,
) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
    const BPF_OBJ_PIN: libc::c_long = 6;
    const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;
    fn bpf(cmd: libc::c_long, attr: *mut u8, size: usize) -> libc::c_long {
        // SAFETY: `attr` points to `size` bytes the caller owns.
        unsafe { libc::syscall(libc::SYS_bpf, cmd, attr, size) }
    }
    let mut create = [0u32; 18];
    create[..4].copy_from_slice(&[BPF_MAP_TYPE_PERCPU_ARRAY, 4, 8, entries]);
    let fd = bpf(BPF_MAP_CREATE, create.as_mut_ptr().cast(), 72);
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just gave us this descriptor.
    let fd: std::os::fd::OwnedFd = unsafe { std::os::fd::FromRawFd::from_raw_fd(fd as i32) };
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd) as u64;
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
    for i in 0..entries {
        let values = vec![value(i); cpus];
        let mut attr = [raw, &i as *const u32 as u64, values.as_ptr() as u64, 0];
        if bpf(BPF_MAP_UPDATE_ELEM, attr.as_mut_ptr().cast(), 32) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    std::fs::remove_file(path)?;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    let mut attr = [c.as_ptr() as u64, raw];
    if bpf(BPF_OBJ_PIN, attr.as_mut_ptr().cast(), 16) < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// One packet through one hook: the input frame, the exact frame that must come out, the
/// verdict (pass unless `drop`), the one reason counter that must move, and the mapping whose
/// counters move by this packet (DNAT or host-in counters on XDP and TC ingress, SNAT or
/// host-out counters on TC egress).
pub struct Fixture {
    pub name: String,
    pub hook: Hook,
    pub input: Vec<u8>,
    pub expected: Vec<u8>,
    pub drop: bool,
    pub reason: ipnat_common::Reason,
    pub mapping: Option<Block>,
}

impl Fixture {
    /// A frame that must come out as `expected` and pass, counted under `reason` and by the
    /// mapping of `public`.
    pub fn translated(
        name: &str,
        hook: Hook,
        input: Vec<u8>,
        expected: Vec<u8>,
        reason: ipnat_common::Reason,
        public: impl Into<Block>,
    ) -> Self {
        Self {
            name: name.to_owned(),
            hook,
            input,
            expected,
            drop: false,
            reason,
            mapping: Some(public.into()),
        }
    }

    /// A frame that must come out as it went in, counted under `reason` and no mapping.
    pub fn untouched(name: &str, hook: Hook, frame: Vec<u8>, reason: ipnat_common::Reason) -> Self {
        Self {
            name: name.to_owned(),
            hook,
            expected: frame.clone(),
            input: frame,
            drop: false,
            reason,
            mapping: None,
        }
    }
}

/// A mapping's (packets, bytes) counted on `hook`'s side.
pub fn mapping_counters(s: &Snapshot, public: impl Into<Block>, hook: Hook) -> (u64, u64) {
    let public = public.into();
    let m = s
        .mappings
        .iter()
        .find(|m| m.mapping.public == public)
        .unwrap_or_else(|| panic!("no mapping {public}"));
    match hook {
        Hook::TcEgress => (m.snat_packets, m.snat_bytes),
        Hook::Xdp | Hook::TcIngress => (m.dnat_packets, m.dnat_bytes),
    }
}

/// Runs each fixture through the real program on `h` and compares the verdict, the bytes,
/// the reason counters (exactly one moves, by one) and the counters of every mapping in
/// `watched`; every IPv4 frame that comes out well formed must also verify on its own
/// (independent checksums). The failures, each naming its fixture.
pub fn run_fixtures(
    h: &Harness,
    fixtures: impl IntoIterator<Item = Fixture>,
    watched: &[Block],
) -> Vec<String> {
    use ipnat_common::Reason;
    let mut failures = Vec::new();
    for fx in fixtures {
        let before = h.snapshot();
        let (verdict, out) = h.run(fx.hook, &fx.input);
        let after = h.snapshot();
        let want_verdict = match (fx.hook, fx.drop) {
            (Hook::Xdp, false) => XDP_PASS,
            (Hook::Xdp, true) => XDP_DROP,
            (_, false) => TC_ACT_OK,
            (_, true) => TC_ACT_SHOT,
        };
        let label = format!("{:?} / {}", fx.hook, fx.name);
        if verdict != want_verdict {
            failures.push(format!("{label}: verdict {verdict}, want {want_verdict}"));
        }
        if out != fx.expected {
            failures.push(format!(
                "{label}: bytes differ\n   got  {}\n   want {}",
                hex(&out),
                hex(&fx.expected)
            ));
        }
        let delta = after.reasons[fx.reason.name()] - before.reasons[fx.reason.name()];
        let total: u64 = after.reasons.values().sum::<u64>() - before.reasons.values().sum::<u64>();
        if delta != 1 || total != 1 {
            failures.push(format!(
                "{label}: reason {} moved by {delta} (all reasons by {total}), want 1",
                fx.reason.name()
            ));
        }
        for &public in watched {
            let (p0, b0) = mapping_counters(&before, public, fx.hook);
            let (p1, b1) = mapping_counters(&after, public, fx.hook);
            let want = if fx.mapping == Some(public) {
                (1, fx.input.len() as u64)
            } else {
                (0, 0)
            };
            if (p1 - p0, b1 - b0) != want {
                failures.push(format!(
                    "{label}: mapping {public} counters moved by {:?}, want {want:?}",
                    (p1 - p0, b1 - b0)
                ));
            }
        }
        let ethertype_at = if fx.input[12..14] == [0x81, 0] {
            16
        } else {
            12
        };
        let is_ipv4 = fx.input[ethertype_at..ethertype_at + 2] == [0x08, 0x00];
        let well_formed = !matches!(fx.reason, Reason::PassMalformed | Reason::PassTruncatedL4);
        if is_ipv4
            && well_formed
            && let Err(e) = crate::packet::verify_ipv4(&out[ethertype_at + 2..])
        {
            failures.push(format!("{label}: output does not verify: {e}"));
        }
    }
    failures
}

/// Fails, listing them all, unless `failures` is empty.
pub fn assert_no_failures(failures: Vec<String>) {
    assert!(
        failures.is_empty(),
        "{} fixture failure(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Runs the program behind `prog` once on `input` with BPF_PROG_TEST_RUN, from any thread
/// (aya's test run needs the program object, which stays with the data plane): (return value,
/// output frame).
pub fn run_fd(prog: std::os::fd::BorrowedFd<'_>, input: &[u8]) -> (u32, Vec<u8>) {
    use std::os::fd::AsRawFd;
    const BPF_PROG_TEST_RUN: libc::c_long = 10;
    let mut out = vec![0u8; input.len() + 512];
    // union bpf_attr's `test`: prog_fd and retval, data_size_in and data_size_out, data_in,
    // data_out, repeat and duration; the rest zero.
    let mut attr = [0u64; 10];
    attr[0] = prog.as_raw_fd() as u64;
    attr[1] = input.len() as u64 | ((out.len() as u64) << 32);
    attr[2] = input.as_ptr() as u64;
    attr[3] = out.as_mut_ptr() as u64;
    attr[4] = 1;
    // SAFETY: the attribute buffer and the data buffers are ours, of the sizes given.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    assert!(
        rc == 0,
        "BPF_PROG_TEST_RUN: {}",
        std::io::Error::last_os_error()
    );
    out.truncate((attr[1] >> 32) as usize);
    ((attr[0] >> 32) as u32, out)
}
