//! The Unix domain socket stream that the LatZero server and the Rust SDK both use.
//!
//! tokio's `UnixStream` registers its socket with the reactor for reading *and* writing. On a
//! Unix socket that costs a wake-up per message: every time the peer reads, the kernel tells
//! the writer's side that there is room to write again, and the thread parked in `epoll_wait`
//! on this side wakes up for nothing. TCP only does that after a write found its buffer full.
//! On one vCPU this was two of the nine context switches of a sequential call.
//!
//! [`UdsStream`] registers the socket for reading only. Writes are plain non-blocking writes.
//! Only a write that would block registers a second descriptor (a duplicate of the socket) for
//! writability. That registration lives until the socket is writable again and is then dropped.
//! A fresh registration reports the socket's current state, so no wake-up is lost in between.
//!
//! [`UdsStream::set_send_buffer`] sizes the socket's send buffer. A Unix socket gets the
//! kernel's default (`net.core.wmem_default`, 208 KiB) and, unlike loopback TCP, never grows it:
//! the server raises it for the sockets it writes to ([`DEFAULT_SEND_BUFFER`]).
//!
//! [`spin`] keeps a runtime polling its sockets for a short window after activity, for the
//! server and the SDK alike.

pub mod spin;

use std::io::{self, Write};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream as StdStream;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

/// The send buffer the LatZero server asks for on the Unix sockets it serves, in bytes: what
/// loopback TCP's send buffer may grow to by itself (`net.ipv4.tcp_wmem`'s maximum, 4 MiB by
/// default). With the default 208 KiB, a server fanning messages out to four receivers found
/// their sockets full often enough to cost 12–29% of its fan-out rate over the Unix socket
/// (docs/BENCHMARKS.md). The size is a ceiling, not an allocation: the kernel only
/// holds what a slow reader has not taken yet.
pub const DEFAULT_SEND_BUFFER: usize = 4 * 1024 * 1024;

/// The largest send buffer a socket takes (`SO_SNDBUF` is a C `int`).
pub const MAX_SEND_BUFFER: usize = libc::c_int::MAX as usize;

/// What the kernel grants a Unix socket that asks for a send buffer of `bytes`, learned on a
/// socket pair made for the purpose. Linux cuts the request to `net.core.wmem_max` (and raises
/// it to its minimum, a few KiB).
pub fn send_buffer_granted(bytes: usize) -> io::Result<usize> {
    let (a, _b) = StdStream::pair()?;
    set_send_buffer(&a, bytes)?;
    send_buffer(&a)
}

/// Asks for a send buffer of `bytes` (`SO_SNDBUF`); more than [`MAX_SEND_BUFFER`] is refused.
fn set_send_buffer(s: &StdStream, bytes: usize) -> io::Result<()> {
    if bytes > MAX_SEND_BUFFER {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("a send buffer of {bytes} bytes is more than a socket takes (at most {MAX_SEND_BUFFER})"),
        ));
    }
    socket2::SockRef::from(s).set_send_buffer_size(bytes)
}

/// The send buffer the socket has, as the caller asked for it: Linux reports twice the size
/// granted (the other half pays for its bookkeeping), and this halves it again.
fn send_buffer(s: &StdStream) -> io::Result<usize> {
    let reported = socket2::SockRef::from(s).send_buffer_size()?;
    Ok(if cfg!(target_os = "linux") {
        reported / 2
    } else {
        reported
    })
}

/// A connected Unix stream socket, registered with the tokio reactor for reading only.
#[derive(Debug)]
pub struct UdsStream {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// The socket, watched for readability.
    sock: AsyncFd<StdStream>,
    /// A duplicate descriptor watched for writability, only while a write waits for room.
    write: Mutex<Option<AsyncFd<StdStream>>>,
    /// `write` is set (read without its lock on every write).
    watching: AtomicBool,
}

impl UdsStream {
    /// Connects to the socket at `path`.
    pub async fn connect(path: impl AsRef<Path>) -> io::Result<UdsStream> {
        UdsStream::from_tokio(tokio::net::UnixStream::connect(path).await?)
    }

    /// Takes over a tokio stream (its registration for writing is dropped). Must be called
    /// within a tokio runtime.
    pub fn from_tokio(s: tokio::net::UnixStream) -> io::Result<UdsStream> {
        UdsStream::from_std(s.into_std()?)
    }

    /// Takes over a std stream, which is set non-blocking. Must be called within a tokio
    /// runtime.
    pub fn from_std(s: StdStream) -> io::Result<UdsStream> {
        s.set_nonblocking(true)?;
        Ok(UdsStream {
            shared: Arc::new(Shared {
                sock: watch(s, Interest::READABLE)?,
                write: Mutex::new(None),
                watching: AtomicBool::new(false),
            }),
        })
    }

    /// Asks the kernel for a send buffer of `bytes` (`SO_SNDBUF`), which caps how much a
    /// writer may queue before its writes would block. Linux cuts the request to
    /// `net.core.wmem_max` ([`send_buffer_granted`] tells what it grants); more than
    /// [`MAX_SEND_BUFFER`] is refused.
    pub fn set_send_buffer(&self, bytes: usize) -> io::Result<()> {
        set_send_buffer(self.shared.sock.get_ref(), bytes)
    }

    /// The socket's send buffer, in bytes as [`UdsStream::set_send_buffer`] takes them.
    pub fn send_buffer(&self) -> io::Result<usize> {
        send_buffer(self.shared.sock.get_ref())
    }

    /// A connected pair (as `socketpair(2)`).
    pub fn pair() -> io::Result<(UdsStream, UdsStream)> {
        let (a, b) = StdStream::pair()?;
        Ok((UdsStream::from_std(a)?, UdsStream::from_std(b)?))
    }

    /// Splits into a read half and a write half, which may move to different tasks.
    pub fn into_split(self) -> (ReadHalf, WriteHalf) {
        (
            ReadHalf {
                shared: self.shared.clone(),
            },
            WriteHalf { shared: self.shared },
        )
    }
}

/// Registers `s` with the current runtime's reactor for `interest`.
#[allow(unsafe_code)]
fn watch(s: StdStream, interest: Interest) -> io::Result<AsyncFd<StdStream>> {
    // SAFETY: the `AsyncFd` owns `s`, which owns its descriptor and closes it only when
    // dropped, after the `AsyncFd` has deregistered it; nothing here replaces or closes it.
    unsafe { Ok(AsyncFd::register_with_interest(s, interest)?) }
}

/// The read half of a [`UdsStream`].
#[derive(Debug)]
pub struct ReadHalf {
    shared: Arc<Shared>,
}

impl AsyncRead for ReadHalf {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            let mut ready = ready!(self.shared.sock.poll_read_ready(cx))?;
            let read = ready.try_io(|s| {
                let n = buf.remaining();
                let got = read_into(s.get_ref(), buf)?;
                Ok(got > 0 && got < n)
            });
            match read {
                Ok(Ok(drained)) => {
                    // A short read emptied the socket's queue: forget the readiness now, as
                    // tokio's own sockets do, instead of learning it from one more read that
                    // would block. Data arriving after the read raises a new readiness event,
                    // which this does not clear (the guard clears only the event it saw).
                    if drained {
                        ready.clear_ready();
                    }
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                // Would block: the readiness was stale and has been cleared; wait again.
                Err(_) => continue,
            }
        }
    }
}

/// Reads what the socket holds, up to `buf`'s room, straight into `buf`'s unfilled bytes, as
/// tokio's own sockets do. A safe read would need those bytes initialised first: zeroing the
/// whole room, or reading into a buffer of our own and copying every byte received (as this
/// did before: ~250 instructions per pipelined call in the bench process, docs/BENCHMARKS.md).
#[allow(unsafe_code)]
fn read_into(s: &StdStream, buf: &mut ReadBuf<'_>) -> io::Result<usize> {
    // SAFETY: `unfilled_mut` hands out possibly uninitialised bytes that must not be
    // de-initialised; `read(2)` only writes to them, at most `room.len()` bytes, through a
    // pointer valid for that length while `room` borrows `buf`. It reports how many bytes it
    // wrote, and exactly those are then marked initialised and filled.
    let room = unsafe { buf.unfilled_mut() };
    let got = unsafe { libc::read(s.as_raw_fd(), room.as_mut_ptr().cast(), room.len()) };
    let got = usize::try_from(got).map_err(|_| io::Error::last_os_error())?;
    // SAFETY: `read(2)` initialised the first `got` bytes of the unfilled part.
    unsafe { buf.assume_init(got) };
    buf.advance(got);
    Ok(got)
}

/// The write half of a [`UdsStream`]. Dropping it shuts the write side down, as dropping
/// tokio's owned write half does.
#[derive(Debug)]
pub struct WriteHalf {
    shared: Arc<Shared>,
}

impl WriteHalf {
    /// Writes what the socket takes now, without waiting (`WouldBlock` if nothing). A writer
    /// that got `WouldBlock` waits with [`WriteHalf::writable`] before it tries again, so that
    /// the socket stops being watched for writing once it is writable.
    pub fn try_write(&self, b: &[u8]) -> io::Result<usize> {
        self.shared.sock.get_ref().write(b)
    }

    /// Ready when the socket has room for a write (or has failed). A caller whose write then
    /// still finds no room polls again.
    pub fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut slot = self.shared.write.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(watch(self.shared.sock.get_ref().try_clone()?, Interest::WRITABLE)?);
            self.shared.watching.store(true, Ordering::Relaxed);
        }
        let ready = match slot.as_ref().map(|fd| fd.poll_write_ready(cx)) {
            Some(Poll::Ready(r)) => r.map(drop),
            _ => return Poll::Pending,
        };
        // Writable (or failed): stop watching until the next write that would block.
        *slot = None;
        self.shared.watching.store(false, Ordering::Relaxed);
        Poll::Ready(ready)
    }

    /// Writes what the socket takes, waiting for room if it takes nothing: [`AsyncWrite`]'s
    /// `poll_write`, on a shared reference. A writer woken because the socket became writable
    /// passes through [`WriteHalf::poll_write_ready`] first, which stops watching it.
    pub fn poll_write_shared(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.shared.watching.load(Ordering::Relaxed) {
            ready!(self.poll_write_ready(cx))?;
        }
        loop {
            match self.try_write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => ready!(self.poll_write_ready(cx))?,
                r => return Poll::Ready(r),
            }
        }
    }

    /// Waits until the socket has room for a write (see [`WriteHalf::poll_write_ready`]).
    pub async fn writable(&self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_write_ready(cx)).await
    }

    /// Shuts the write side down: the peer reads end-of-stream.
    pub fn shutdown_write(&self) -> io::Result<()> {
        self.shared.sock.get_ref().shutdown(Shutdown::Write)
    }

    /// Shuts the read side down: a read of this socket, waiting or next, sees end-of-stream.
    pub fn shutdown_read(&self) -> io::Result<()> {
        self.shared.sock.get_ref().shutdown(Shutdown::Read)
    }
}

impl AsyncWrite for WriteHalf {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.poll_write_shared(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.shutdown_write())
    }
}

impl Drop for WriteHalf {
    fn drop(&mut self) {
        let _ = self.shutdown_write();
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// The events the process's epoll instances watch on descriptor `fd` (from
    /// `/proc/self/fdinfo`), or `None` if none watches it.
    fn epoll_events(fd: i32) -> Option<u32> {
        for e in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
            let Ok(target) = std::fs::read_link(e.path()) else {
                continue;
            };
            if target.to_str() != Some("anon_inode:[eventpoll]") {
                continue;
            }
            let Ok(info) = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", e.file_name().to_str().unwrap()))
            else {
                continue;
            };
            for line in info.lines() {
                let mut words = line.split_whitespace();
                if words.next() == Some("tfd:") && words.next() == Some(&fd.to_string()) {
                    words.next(); // "events:"
                    return Some(u32::from_str_radix(words.next().unwrap(), 16).unwrap());
                }
            }
        }
        None
    }

    const EPOLLIN: u32 = 0x1;
    const EPOLLOUT: u32 = 0x4;

    #[tokio::test]
    async fn the_socket_is_watched_for_reading_only() {
        // What this crate avoids: tokio's own stream is watched for writing too.
        let (t, _t2) = tokio::net::UnixStream::pair().unwrap();
        assert_ne!(epoll_events(t.as_raw_fd()).unwrap() & EPOLLOUT, 0);

        let (a, b) = UdsStream::pair().unwrap();
        let fd = a.shared.sock.get_ref().as_raw_fd();
        let (mut ar, mut aw) = a.into_split();
        let (mut br, mut bw) = b.into_split();
        aw.write_all(b"ping").await.unwrap();
        let mut got = [0; 4];
        br.read_exact(&mut got).await.unwrap();
        bw.write_all(b"pong").await.unwrap();
        ar.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"pong");
        let events = epoll_events(fd).expect("registered");
        assert_ne!(events & EPOLLIN, 0);
        assert_eq!(events & EPOLLOUT, 0, "events {events:#x}");
        assert!(aw.shared.write.lock().unwrap().is_none());
    }

    #[tokio::test]
    async fn a_short_read_forgets_the_readiness_without_losing_the_next_message() {
        let (a, b) = UdsStream::pair().unwrap();
        let (_ar, mut aw) = a.into_split();
        let (mut br, _bw) = b.into_split();
        let mut got = [0; 64];
        aw.write_all(b"one").await.unwrap();
        assert_eq!(br.read(&mut got).await.unwrap(), 3);
        // The queue is empty now, and the reactor's readiness says so: the next read waits
        // for the reactor instead of first asking the socket, which would say "would block".
        let shared = br.shared.clone();
        let ready = poll_once(std::future::poll_fn(|cx| {
            shared.sock.poll_read_ready(cx).map(|r| r.map(drop))
        }))
        .await;
        assert!(ready.is_pending(), "readiness kept after the queue was emptied");
        // And the message that comes next still wakes a waiting read.
        let mut read = std::pin::pin!(br.read(&mut got));
        assert!(poll_once(read.as_mut()).await.is_pending());
        aw.write_all(b"two").await.unwrap();
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), read)
            .await
            .expect("woken")
            .unwrap();
        assert_eq!(&got[..n], b"two");
    }

    /// Polls `f` once.
    async fn poll_once<F: Future + Unpin>(mut f: F) -> Poll<F::Output> {
        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut f).poll(cx))).await
    }

    #[tokio::test]
    async fn a_write_that_would_block_waits_for_room_and_then_stops_watching() {
        let (a, b) = UdsStream::pair().unwrap();
        let (_ar, mut aw) = a.into_split();
        let (mut br, _bw) = b.into_split();
        // Far more than a socket buffer: the writer blocks many times over.
        let sent: Vec<u8> = (0..8 << 20).map(|i: u32| (i % 251) as u8).collect();
        let writer = tokio::spawn(async move {
            aw.write_all(&sent).await.unwrap();
            aw
        });
        let mut got = Vec::new();
        let mut chunk = vec![0; 100_000];
        while got.len() < 8 << 20 {
            let n = br.read(&mut chunk).await.unwrap();
            assert!(n > 0);
            got.extend_from_slice(&chunk[..n]);
        }
        let aw = writer.await.unwrap();
        assert!(got.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
        assert!(aw.shared.write.lock().unwrap().is_none());
    }

    #[tokio::test]
    async fn try_write_says_would_block_when_full() {
        let (a, _b) = UdsStream::pair().unwrap();
        let (_ar, aw) = a.into_split();
        let chunk = vec![0; 64 * 1024];
        let err = loop {
            if let Err(e) = aw.try_write(&chunk) {
                break e;
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        // Still full: not ready.
        let ready = std::future::poll_fn(|cx| Poll::Ready(aw.poll_write_ready(cx))).await;
        assert!(ready.is_pending());
    }

    #[tokio::test]
    async fn the_send_buffer_is_what_was_asked_for_within_the_kernels_bounds() {
        let (a, _b) = UdsStream::pair().unwrap();
        a.set_send_buffer(64 * 1024).unwrap();
        // 64 KiB is below any kernel's cap (wmem_max is at least 208 KiB by default).
        assert_eq!(a.send_buffer().unwrap(), 64 * 1024);
        assert_eq!(send_buffer_granted(64 * 1024).unwrap(), 64 * 1024);
        let max = std::fs::read_to_string("/proc/sys/net/core/wmem_max").unwrap();
        let max: usize = max.trim().parse().unwrap();
        assert_eq!(send_buffer_granted(max + 1).unwrap(), max, "cut to net.core.wmem_max");
        let err = a.set_send_buffer(libc::c_int::MAX as usize + 1).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("more than a socket takes"), "{err}");
    }

    #[tokio::test]
    async fn a_larger_send_buffer_takes_more_before_a_write_would_block() {
        fn taken_before_full(a: UdsStream) -> usize {
            let (_ar, aw) = a.into_split();
            let chunk = vec![0; 64 * 1024];
            let mut taken = 0;
            loop {
                match aw.try_write(&chunk) {
                    Ok(n) => taken += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return taken,
                    Err(e) => panic!("{e}"),
                }
            }
        }
        let (small, _s) = UdsStream::pair().unwrap();
        small.set_send_buffer(64 * 1024).unwrap();
        let (large, _l) = UdsStream::pair().unwrap();
        large.set_send_buffer(192 * 1024).unwrap();
        let (s, l) = (taken_before_full(small), taken_before_full(large));
        assert!(l > 2 * s, "64 KiB took {s} bytes, 192 KiB took {l}");
    }

    #[tokio::test]
    async fn dropping_the_write_half_ends_the_peer_stream() {
        let (a, b) = UdsStream::pair().unwrap();
        let (_ar, mut aw) = a.into_split();
        let (mut br, _bw) = b.into_split();
        aw.write_all(b"last").await.unwrap();
        drop(aw);
        let mut got = Vec::new();
        br.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"last");
    }

    #[tokio::test]
    async fn reads_land_whole_and_in_order_in_uninitialised_room() {
        // `read_to_end` hands `poll_read` the vector's spare capacity, uninitialised, in
        // pieces smaller and larger than what the socket holds at the time.
        let (a, b) = UdsStream::pair().unwrap();
        let (_ar, mut aw) = a.into_split();
        let (mut br, _bw) = b.into_split();
        let sent: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
        let writer = {
            let sent = sent.clone();
            tokio::spawn(async move {
                for piece in sent.chunks(7_919) {
                    aw.write_all(piece).await.unwrap();
                }
            })
        };
        let mut got = Vec::new();
        br.read_to_end(&mut got).await.unwrap();
        writer.await.unwrap();
        assert_eq!(got.len(), sent.len());
        assert!(got == sent, "the bytes read differ from the bytes written");
    }

    #[tokio::test]
    async fn connects_by_path() {
        let dir = std::env::temp_dir().join(format!("latzero-uds-test-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let listener = tokio::net::UnixListener::bind(&dir).unwrap();
        let client = UdsStream::connect(&dir).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (_cr, mut cw) = client.into_split();
        let (mut sr, _sw) = UdsStream::from_tokio(server).unwrap().into_split();
        cw.write_all(b"hello").await.unwrap();
        let mut got = [0; 5];
        sr.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
        std::fs::remove_file(&dir).unwrap();
    }
}
