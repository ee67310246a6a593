//! The raw bpf(2) calls aya does not offer: batched map updates and lookups, and a test run
//! through a program descriptor held apart from its object.

/// bpf(2) with a `union bpf_attr` of `attr`'s size.
pub(super) fn bpf(cmd: libc::c_long, attr: &mut [u64]) -> libc::c_long {
    // SAFETY: the attribute buffer is as long as we say; pointers in it are the caller's.
    unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of_val(attr),
        )
    }
}

/// Entries written per BPF_MAP_UPDATE_BATCH call.
pub(super) const BATCH: usize = 65_536;

/// Writes `keys[i] -> values[i]` with BPF_MAP_UPDATE_BATCH, a system call per [`BATCH`]
/// entries instead of one per entry. The kernel updates each element as BPF_MAP_UPDATE_ELEM
/// does: a reader sees an entry's old or new value, whole. `Ok(false)`: the kernel has no batch
/// operations for this map (nothing was written; the caller writes one by one).
pub(super) fn update_batch<K: aya::Pod, V: aya::Pod>(
    fd: std::os::fd::BorrowedFd<'_>,
    keys: &[K],
    values: &[V],
) -> std::io::Result<bool> {
    const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
    assert_eq!(keys.len(), values.len());
    let fd = std::os::fd::AsRawFd::as_raw_fd(&fd) as u64;
    for (k, v) in keys.chunks(BATCH).zip(values.chunks(BATCH)) {
        // union bpf_attr, batch: in_batch, out_batch, keys, values, count | map_fd << 32,
        // elem_flags, flags. The slices outlive the call.
        let mut attr = [
            0,
            0,
            k.as_ptr() as u64,
            v.as_ptr() as u64,
            k.len() as u64 | (fd << 32),
            0,
            0,
        ];
        if bpf(BPF_MAP_UPDATE_BATCH, &mut attr) < 0 {
            let e = std::io::Error::last_os_error();
            // ENOTSUPP (524): no batch operations for this map type or kernel.
            if matches!(e.raw_os_error(), Some(libc::EINVAL | 524)) && k.as_ptr() == keys.as_ptr() {
                return Ok(false);
            }
            return Err(e);
        }
    }
    Ok(true)
}

/// Reads a whole hash map with BPF_MAP_LOOKUP_BATCH, [`BATCH`] entries a system call instead
/// of two per entry. `Ok(None)`: the kernel has no batch operations for this map.
pub(super) fn lookup_batch<K: aya::Pod + Default, V: aya::Pod + Default>(
    fd: std::os::fd::BorrowedFd<'_>,
) -> std::io::Result<Option<Vec<(K, V)>>> {
    let fd = std::os::fd::AsRawFd::as_raw_fd(&fd) as u64;
    let mut out = Vec::new();
    let read = read_batches(fd, size_of::<K>(), size_of::<V>(), |keys, values, n| {
        for i in 0..n {
            // SAFETY: the kernel wrote `n` whole keys and values of these sizes; Pod types
            // take any bytes, read unaligned.
            let (k, v) = unsafe {
                (
                    keys.as_ptr()
                        .add(i * size_of::<K>())
                        .cast::<K>()
                        .read_unaligned(),
                    values
                        .as_ptr()
                        .add(i * size_of::<V>())
                        .cast::<V>()
                        .read_unaligned(),
                )
            };
            out.push((k, v));
        }
        Ok(true)
    })?;
    Ok(read.then_some(out))
}

/// Reads map `fd` with BPF_MAP_LOOKUP_BATCH, [`BATCH`] entries a call, handing each batch
/// (keys, values, count) to `f`, which may stop early with `Ok(false)`. `Ok(false)`: the
/// kernel has no batch operations for this map, or `f` stopped.
pub(super) fn read_batches(
    fd: u64,
    key_size: usize,
    value_len: usize,
    mut f: impl FnMut(&[u8], &[u8], usize) -> std::io::Result<bool>,
) -> std::io::Result<bool> {
    const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
    let mut keys = vec![0u8; key_size * BATCH];
    let mut values = vec![0u8; value_len * BATCH];
    // The position tokens (a bucket index for hash maps); 8 bytes is room for any.
    let (mut token_in, mut token_out) = (0u64, 0u64);
    let mut first = true;
    loop {
        // union bpf_attr, batch: in_batch (NULL: from the start), out_batch, keys, values,
        // count | map_fd << 32, elem_flags, flags. The buffers outlive the call.
        let mut attr = [
            if first { 0 } else { &raw mut token_in as u64 },
            &raw mut token_out as u64,
            keys.as_mut_ptr() as u64,
            values.as_mut_ptr() as u64,
            BATCH as u64 | (fd << 32),
            0,
            0,
        ];
        let rc = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
        let err = (rc < 0).then(std::io::Error::last_os_error);
        // The kernel writes back how many entries it copied, also with ENOENT (the end).
        let n = (attr[4] & 0xffff_ffff) as usize;
        match err.as_ref().and_then(|e| e.raw_os_error()) {
            None | Some(libc::ENOENT) => {}
            Some(libc::EINVAL | 524) if first => return Ok(false),
            _ => return Err(err.expect("an error")),
        }
        if n > 0 && !f(&keys, &values, n)? {
            return Ok(false);
        }
        if err.is_some() {
            return Ok(true);
        }
        token_in = token_out;
        first = false;
    }
}

/// Runs the program `prog` once on `data` (BPF_PROG_TEST_RUN); its return value.
pub(super) fn test_run(prog: std::os::fd::BorrowedFd<'_>, data: &[u8]) -> std::io::Result<u32> {
    use std::os::fd::AsRawFd;
    const BPF_PROG_TEST_RUN: libc::c_long = 10;
    // union bpf_attr's `test`: prog_fd and retval, data_size_in and data_size_out, data_in,
    // data_out, repeat and duration, then the context and flags (unused: zero).
    let mut attr = [0u64; 10];
    attr[0] = prog.as_raw_fd() as u64;
    attr[1] = data.len() as u64;
    attr[2] = data.as_ptr() as u64;
    attr[4] = 1;
    if bpf(BPF_PROG_TEST_RUN, &mut attr) < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((attr[0] >> 32) as u32)
}

/// Opens the bpf object (a pinned program) at `path` (BPF_OBJ_GET).
pub(super) fn obj_get(path: &std::path::Path) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::{fd::FromRawFd, unix::ffi::OsStrExt};
    const BPF_OBJ_GET: libc::c_long = 7;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // union bpf_attr's `obj`: pathname, then bpf_fd and file_flags (zero).
    let mut attr = [c.as_ptr() as u64, 0];
    let fd = bpf(BPF_OBJ_GET, &mut attr);
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a descriptor the kernel just gave us.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// What the kernel says of a pinned link now: its program's id and the interface it is
/// attached to (0 once detached, e.g. by `bpftool link detach`). For XDP, TCX and netkit
/// links, whose info starts with the interface index.
pub(super) fn pinned_link_target(path: &std::path::Path) -> std::io::Result<(u32, u32)> {
    use std::os::fd::AsRawFd;
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    let fd = obj_get(path)?;
    // struct bpf_link_info: type, id, prog_id, then (8-byte aligned) the type's union, whose
    // first member is the ifindex for XDP, TCX and netkit links.
    let mut info = [0u32; 16];
    // union bpf_attr's `info`: bpf_fd and info_len, then the info pointer.
    let mut attr = [
        (fd.as_raw_fd() as u32 as u64) | ((std::mem::size_of_val(&info) as u64) << 32),
        info.as_mut_ptr() as u64,
    ];
    if bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr) < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((info[2], info[4]))
}
