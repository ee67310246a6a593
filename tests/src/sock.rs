//! Setting a socket option that neither the standard library nor nix offers (IP_RECVERR on a
//! UDP socket, SO_NO_CHECK, PACKET_AUXDATA, ...): one `setsockopt(2)`, written once.

use std::os::fd::{AsFd, AsRawFd};

/// `setsockopt(fd, level, name, &value)`.
pub fn set_option<T>(fd: impl AsFd, level: i32, name: i32, value: T) -> std::io::Result<()> {
    // SAFETY: the pointer is to `value`, alive for the call, with its size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_fd().as_raw_fd(),
            level,
            name,
            &value as *const T as *const libc::c_void,
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// [`set_option`] with an `int` 1 (a flag turned on).
pub fn enable(fd: impl AsFd, level: i32, name: i32) -> std::io::Result<()> {
    set_option::<libc::c_int>(fd, level, name, 1)
}
