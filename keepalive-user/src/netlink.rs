//! A netlink dump, the one loop sock_diag and ctnetlink share: send the
//! requests, read until NLMSG_DONE, hand each message to the caller.
//! Hand-written rather than a netlink crate: two read-only dumps need 60
//! lines, and every byte they decode is length-checked and fuzzed.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

pub const NLM_F_REQUEST: u16 = 1;
pub const NLM_F_ACK: u16 = 4;
pub const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
pub const NLMSG_HDRLEN: usize = 16;

/// A netlink message header for a dump request of `ty`, `payload` bytes after it.
pub fn header(ty: u16, seq: u32, payload: usize) -> Vec<u8> {
    header_with(ty, NLM_F_REQUEST | NLM_F_DUMP, seq, payload)
}

/// A netlink message header with `flags` (NLM_F_ACK for a single answer:
/// the acknowledgement ends it as NLMSG_DONE ends a dump).
pub fn header_with(ty: u16, flags: u16, seq: u32, payload: usize) -> Vec<u8> {
    let mut b = Vec::with_capacity(NLMSG_HDRLEN + payload);
    b.extend_from_slice(&((NLMSG_HDRLEN + payload) as u32).to_ne_bytes());
    b.extend_from_slice(&ty.to_ne_bytes());
    b.extend_from_slice(&flags.to_ne_bytes());
    b.extend_from_slice(&seq.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes());
    b
}

/// Opens a `protocol` netlink socket in the calling thread's namespace,
/// sends each request in turn and calls `each(type, payload)` for every
/// message of its dump.
pub fn dump(
    protocol: i32,
    requests: &[Vec<u8>],
    mut each: impl FnMut(u16, &[u8]),
) -> io::Result<()> {
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            protocol,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by socket(2) and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut buf = vec![0u8; 1 << 16];
    for req in requests {
        // SAFETY: valid buffer and length.
        if unsafe { libc::send(fd.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) } < 0 {
            return Err(io::Error::last_os_error());
        }
        loop {
            // SAFETY: valid buffer and length.
            let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            if walk(&buf[..n as usize], &mut each)? {
                break;
            }
        }
    }
    Ok(())
}

/// A netlink attribute, padded.
pub fn attr(ty: u16, payload: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(4 + payload.len() + 3);
    b.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
    b.extend_from_slice(&ty.to_ne_bytes());
    b.extend_from_slice(payload);
    b.resize((b.len() + 3) & !3, 0);
    b
}

/// One datagram's messages; true at NLMSG_DONE or an acknowledgement (public for the fuzzer).
pub fn walk(mut data: &[u8], each: &mut impl FnMut(u16, &[u8])) -> io::Result<bool> {
    let bad = |what| io::Error::new(io::ErrorKind::InvalidData, what);
    while data.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]) as usize;
        let ty = u16::from_ne_bytes([data[4], data[5]]);
        if len < NLMSG_HDRLEN || len > data.len() {
            return Err(bad("truncated netlink message"));
        }
        match ty {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let e = data[..len]
                    .get(16..20)
                    .ok_or_else(|| bad("short netlink error"))?;
                // The kernel sends -errno; 0 acknowledges (ends) a request.
                match i32::from_ne_bytes([e[0], e[1], e[2], e[3]]).checked_neg() {
                    Some(0) => return Ok(true),
                    Some(errno) if errno > 0 => return Err(io::Error::from_raw_os_error(errno)),
                    _ => return Err(bad("netlink error with a positive or invalid code")),
                }
            }
            _ => each(ty, &data[NLMSG_HDRLEN..len]),
        }
        data = data.get((len + 3) & !3..).unwrap_or(&[]);
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_messages_until_done_and_reports_errors() {
        let mut d = header(20, 1, 4);
        d.extend_from_slice(&[1, 2, 3, 4]);
        let mut done = header(NLMSG_DONE, 1, 0);
        done[0..4].copy_from_slice(&16u32.to_ne_bytes());
        d.extend_from_slice(&done);
        let mut seen = Vec::new();
        assert!(walk(&d, &mut |t, p| seen.push((t, p.to_vec()))).unwrap());
        assert_eq!(seen, [(20, vec![1, 2, 3, 4])]);

        let mut e = header(NLMSG_ERROR, 1, 4);
        e.extend_from_slice(&(-libc::EPERM).to_ne_bytes());
        let err = walk(&e, &mut |_, _| {}).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPERM));

        let mut ack = header(NLMSG_ERROR, 1, 4);
        ack.extend_from_slice(&0i32.to_ne_bytes());
        assert!(
            walk(&ack, &mut |_, _| {}).unwrap(),
            "an acknowledgement ends a request"
        );

        let mut short = header(20, 1, 8);
        short.truncate(18);
        assert!(walk(&short, &mut |_, _| {}).is_err());
    }
}
