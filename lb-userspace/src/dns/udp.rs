//! Batched UDP I/O for the DNS server: one `recvmmsg` takes up to [`BATCH`] queries and one
//! `sendmmsg` returns their answers, as fast authoritative servers do; per query that saves
//! two system calls and a trip through the runtime. Non-blocking; the caller waits for
//! readiness.

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;

use socket2::SockAddr;

/// Queries taken per system call.
pub const BATCH: usize = 32;
/// Room for one query. Queries are small (a name and an OPT record); a longer datagram is
/// marked truncated and dropped.
const QUERY_ROOM: usize = 4096;

/// One received datagram.
#[derive(Debug, Clone, Copy)]
pub struct Datagram {
    pub len: usize,
    pub src: Option<SocketAddr>,
    /// Longer than [`QUERY_ROOM`]: the bytes are cut.
    pub truncated: bool,
}

pub struct Receiver {
    buffers: Vec<[u8; QUERY_ROOM]>,
    addresses: Vec<libc::sockaddr_storage>,
    pub received: Vec<Datagram>,
}

impl Default for Receiver {
    fn default() -> Self {
        Self {
            buffers: vec![[0; QUERY_ROOM]; BATCH],
            // SAFETY: all-zero is a valid sockaddr_storage (family AF_UNSPEC).
            addresses: vec![unsafe { std::mem::zeroed() }; BATCH],
            received: Vec::with_capacity(BATCH),
        }
    }
}

impl Receiver {
    /// Takes what is queued on `fd` (at most [`BATCH`]); `WouldBlock` when nothing is.
    pub fn receive(&mut self, fd: RawFd) -> io::Result<usize> {
        // On the stack: nothing is allocated per call.
        let mut iovecs: [libc::iovec; BATCH] =
            std::array::from_fn(|i| libc::iovec { iov_base: self.buffers[i].as_mut_ptr().cast(), iov_len: QUERY_ROOM });
        let addresses = self.addresses.as_mut_ptr();
        let mut headers: [libc::mmsghdr; BATCH] = std::array::from_fn(|i| {
            // SAFETY: all-zero is a valid msghdr; `i` is within `addresses` (BATCH long), and
            // the pointers set here outlive the call.
            let mut header: libc::mmsghdr = unsafe { std::mem::zeroed() };
            header.msg_hdr.msg_name = unsafe { addresses.add(i) }.cast();
            header.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as u32;
            header.msg_hdr.msg_iov = &mut iovecs[i];
            header.msg_hdr.msg_iovlen = 1;
            header
        });
        // SAFETY: `headers` describes BATCH buffers and addresses owned by self, alive and
        // unaliased for the duration of the call.
        let n =
            unsafe { libc::recvmmsg(fd, headers.as_mut_ptr(), BATCH as u32, libc::MSG_DONTWAIT, std::ptr::null_mut()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        self.received.clear();
        for (header, address) in headers.iter().zip(&self.addresses).take(n as usize) {
            // SAFETY: the kernel wrote a socket address of `msg_namelen` bytes.
            let src = unsafe { SockAddr::new(*address, header.msg_hdr.msg_namelen) }.as_socket();
            self.received.push(Datagram {
                len: header.msg_len as usize,
                src,
                truncated: header.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
            });
        }
        Ok(n as usize)
    }

    /// The bytes of the `i`th datagram received.
    pub fn bytes(&self, i: usize) -> &[u8] {
        &self.buffers[i][..self.received[i].len.min(QUERY_ROOM)]
    }
}

/// Sends up to [`BATCH`] of `replies` on `fd` in one call; returns how many were sent
/// (`WouldBlock` when the socket's buffer is full).
pub fn send(fd: RawFd, replies: &[(SocketAddr, Vec<u8>)]) -> io::Result<usize> {
    let replies = &replies[..replies.len().min(BATCH)];
    let addresses: [Option<SockAddr>; BATCH] =
        std::array::from_fn(|i| replies.get(i).map(|(to, _)| SockAddr::from(*to)));
    let mut iovecs: [libc::iovec; BATCH] = std::array::from_fn(|i| match replies.get(i) {
        Some((_, bytes)) => libc::iovec { iov_base: bytes.as_ptr() as *mut libc::c_void, iov_len: bytes.len() },
        None => libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 },
    });
    let mut headers: [libc::mmsghdr; BATCH] = std::array::from_fn(|i| {
        // SAFETY: all-zero is a valid msghdr; the pointers set below outlive the call.
        let mut header: libc::mmsghdr = unsafe { std::mem::zeroed() };
        if let Some(addr) = &addresses[i] {
            header.msg_hdr.msg_name = addr.as_ptr() as *mut libc::c_void;
            header.msg_hdr.msg_namelen = addr.len();
        }
        header.msg_hdr.msg_iov = &mut iovecs[i];
        header.msg_hdr.msg_iovlen = 1;
        header
    });
    // SAFETY: the first `replies.len()` headers point into `addresses`, `iovecs` and
    // `replies`, all alive for the call; the kernel only reads them.
    let n = unsafe { libc::sendmmsg(fd, headers.as_mut_ptr(), replies.len() as u32, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}
