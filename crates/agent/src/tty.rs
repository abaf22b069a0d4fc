//! Terminals for container processes (`docker -t`), made the way runc makes
//! them: the launcher opens `/dev/ptmx` *inside* the container (its own
//! devpts instance, so `tty` in the container names a `/dev/pts/N` that
//! exists there), makes the slave its controlling terminal and stdio, and
//! hands the master to the agent over a unix socket (`SCM_RIGHTS`). The
//! agent reads the master into the stdout stream, writes stdin to it and
//! sets its window size.

use std::fs::File;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};

/// fd on which the launcher sends the terminal's master to the agent.
pub const CONSOLE_FD: RawFd = 4;

fn os_err(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

/// Open a new pseudo-terminal through `/dev/ptmx` of the current root:
/// (master, slave). The slave is opened from the master (`TIOCGPTPEER`),
/// never by path, so no file of the image is involved.
pub fn open_pty() -> Result<(OwnedFd, OwnedFd), String> {
    // SAFETY: open with a constant NUL-terminated path.
    let m = unsafe {
        libc::open(
            c"/dev/ptmx".as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if m < 0 {
        return Err(os_err(
            "opening /dev/ptmx in the container (is /dev/pts mounted?)",
        ));
    }
    // SAFETY: m is a descriptor we just opened and own.
    let master = unsafe { OwnedFd::from_raw_fd(m) };
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads one int.
    if unsafe { libc::ioctl(m, libc::TIOCSPTLCK, &unlock) } < 0 {
        return Err(os_err("unlocking the pseudo-terminal"));
    }
    // SAFETY: TIOCGPTPEER takes open flags and returns a new descriptor.
    let s = unsafe {
        libc::ioctl(
            m,
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if s < 0 {
        return Err(os_err("opening the pseudo-terminal's slave"));
    }
    // SAFETY: s is a descriptor the kernel just gave us.
    Ok((master, unsafe { OwnedFd::from_raw_fd(s) }))
}

/// In the launcher's child: make a terminal, owned by `uid:gid`, the
/// controlling terminal and stdio of this process (a new session), and send
/// its master on [`CONSOLE_FD`], which is closed afterwards.
pub fn attach_new_terminal(uid: u32, gid: u32, size: Option<(u16, u16)>) -> Result<(), String> {
    let (master, slave) = open_pty()?;
    if let Some((rows, cols)) = size.filter(|(r, c)| *r > 0 && *c > 0) {
        let m = File::from(master.try_clone().map_err(|e| format!("terminal: {e}"))?);
        set_window_size(&m, rows, cols)?;
    }
    let s = slave.as_raw_fd();
    // The workload (maybe not root) owns its terminal, as with runc; in a
    // user namespace without that id this fails and root keeps it.
    // SAFETY: fchown on our own descriptor.
    let _ = unsafe { libc::fchown(s, uid, gid) };
    // SAFETY: setsid/ioctl/dup2 on our own descriptors.
    unsafe {
        if libc::setsid() < 0 {
            return Err(os_err("setsid"));
        }
        if libc::ioctl(s, libc::TIOCSCTTY, 0) < 0 {
            return Err(os_err("making the terminal the controlling terminal"));
        }
        for fd in 0..=2 {
            if libc::dup2(s, fd) < 0 {
                return Err(os_err("attaching the terminal to stdio"));
            }
        }
    }
    send_fd(CONSOLE_FD, master.as_raw_fd())?;
    drop(master);
    drop(slave);
    // SAFETY: closing the console socket we were handed.
    unsafe { libc::close(CONSOLE_FD) };
    Ok(())
}

/// Send one descriptor over a unix socket.
pub fn send_fd(sock: RawFd, fd: RawFd) -> Result<(), String> {
    let fds = [fd];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    sendmsg::<()>(sock, &[IoSlice::new(b"t")], &cmsg, MsgFlags::empty(), None)
        .map(|_| ())
        .map_err(|e| format!("handing the terminal to the agent: {e}"))
}

/// Receive one descriptor sent with [`send_fd`] (non-blocking: the sender
/// has sent it before the launcher's `exec`, which the caller waited for).
pub fn recv_fd(sock: RawFd) -> Result<File, String> {
    let mut buf = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        sock,
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(|e| format!("receiving the container's terminal: {e}"))?;
    let mut got = None;
    for c in msg
        .cmsgs()
        .map_err(|e| format!("receiving the container's terminal: {e}"))?
    {
        if let ControlMessageOwned::ScmRights(fds) = c {
            for fd in fds {
                // SAFETY: the kernel installed these descriptors for us.
                let f = unsafe { File::from_raw_fd(fd) };
                if got.is_none() {
                    got = Some(f);
                }
            }
        }
    }
    got.ok_or_else(|| "the launcher sent no terminal".to_string())
}

/// Set the window size of a terminal (through its master); the kernel sends
/// SIGWINCH to the terminal's foreground process group.
pub fn set_window_size(master: &File, rows: u16, cols: u16) -> Result<(), String> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) } < 0 {
        return Err(os_err("setting the terminal's window size"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn a_pty_carries_bytes_and_a_window_size_and_its_master_crosses_a_socket() {
        let (master, slave) = open_pty().unwrap();
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        send_fd(a.as_raw_fd(), master.as_raw_fd()).unwrap();
        drop(master);
        let mut m = recv_fd(b.as_raw_fd()).unwrap();
        set_window_size(&m, 33, 101).unwrap();
        let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
        assert!(unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) } >= 0);
        assert_eq!((ws.ws_row, ws.ws_col), (33, 101));
        let mut s = File::from(slave);
        s.write_all(b"hi\n").unwrap();
        let mut buf = [0u8; 16];
        let n = m.read(&mut buf).unwrap();
        // The terminal's line discipline turns \n into \r\n.
        assert_eq!(&buf[..n], b"hi\r\n");
        // Nothing sent: receiving fails rather than blocks.
        assert!(recv_fd(b.as_raw_fd()).is_err());
    }
}
