//! Which file descriptors cross into a sandbox or a container: only those
//! handed over on purpose. Everything else a caller held (a directory fd
//! opened on the host's `/`, say: the runc CVE-2024-21626 class) is marked
//! close-on-exec right before `exec`, so it never reaches the workload.
//!
//! Called between `fork` and `exec`: async-signal-safe system calls only,
//! no allocation.
//!
//! One home for the agent (before exec'ing a container's process) and the
//! host's sandbox launchers (before exec'ing `veil-agent` or QEMU): a crate of
//! its own because `veil-agent-api` is pure data linked by the policy engine
//! and its fuzzers, and the host must not link the agent. Not for: anything
//! but deciding which descriptors survive `exec`.

/// `CLOSE_RANGE_CLOEXEC` (Linux 5.11): mark the range close-on-exec.
const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
/// Highest descriptor the fallback walks when `close_range` is missing.
const FALLBACK_MAX_FD: libc::c_int = 65_536;

/// Mark every descriptor from 3 up close-on-exec, except `keep` (which is
/// made inheritable). Errors only if `keep` cannot be made inheritable.
///
/// Close-on-exec rather than close: std's `Command` reports a failed `exec`
/// through a close-on-exec pipe of its own, which must stay open until then.
pub fn cloexec_all_but(keep: Option<libc::c_int>) -> std::io::Result<()> {
    match keep {
        Some(k) if k >= 3 => {
            mark_range(3, (k - 1) as libc::c_uint);
            mark_range((k + 1) as libc::c_uint, libc::c_uint::MAX);
            // SAFETY: fcntl on a descriptor number; no memory is touched.
            if unsafe { libc::fcntl(k, libc::F_SETFD, 0) } < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        _ => mark_range(3, libc::c_uint::MAX),
    }
    Ok(())
}

/// [`cloexec_all_but`] for several descriptors (QEMU's sim channel and a
/// joined namespace's tap): every descriptor from 3 up close-on-exec, then
/// each of `keep` (those ≥ 3) inheritable again. No allocation.
pub fn cloexec_all_but_these(keep: &[libc::c_int]) -> std::io::Result<()> {
    mark_range(3, libc::c_uint::MAX);
    for &k in keep.iter().filter(|k| **k >= 3) {
        // SAFETY: fcntl on a descriptor number; no memory is touched.
        if unsafe { libc::fcntl(k, libc::F_SETFD, 0) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn mark_range(first: libc::c_uint, last: libc::c_uint) {
    if first > last {
        return;
    }
    // SAFETY: close_range with the CLOEXEC flag only changes descriptor flags.
    let r = unsafe { libc::syscall(libc::SYS_close_range, first, last, CLOSE_RANGE_CLOEXEC) };
    if r == 0 {
        return;
    }
    // Kernels before 5.11: walk the range (bounded; a descriptor above the
    // bound would need a raised RLIMIT_NOFILE that veil never sets).
    let end = (last.min(FALLBACK_MAX_FD as libc::c_uint)) as libc::c_int;
    let mut fd = first as libc::c_int;
    while fd <= end {
        // SAFETY: fcntl on a descriptor number; EBADF for unused numbers.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
        fd += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;

    /// A descriptor the parent holds without close-on-exec (as a shell's
    /// `exec 7</` does) is not visible in the child; the kept one is.
    #[test]
    fn only_the_kept_descriptor_crosses_exec() {
        // High numbers, so they cannot be mistaken for what `ls` opens.
        let (leaked, kept_fd) = (200, 201);
        let dir = std::fs::File::open("/").unwrap();
        let kept = std::fs::File::open("/proc/self/status").unwrap();
        // SAFETY: dup2 onto unused numbers; dup2 clears FD_CLOEXEC, as a
        // shell's `exec 200</` would leave it.
        unsafe {
            assert_eq!(libc::dup2(dir.as_raw_fd(), leaked), leaked);
            assert_eq!(libc::dup2(kept.as_raw_fd(), kept_fd), kept_fd);
        }
        let mut cmd = std::process::Command::new("/bin/sh");
        cmd.arg("-c").arg("ls /proc/self/fd/");
        // SAFETY: cloexec_all_but is async-signal-safe.
        unsafe { cmd.pre_exec(move || cloexec_all_but(Some(kept_fd))) };
        let out = cmd.output().unwrap();
        let listed: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect();
        assert!(
            listed.contains(&kept_fd.to_string()),
            "kept fd {kept_fd} missing: {listed:?}"
        );
        assert!(
            !listed.contains(&leaked.to_string()),
            "leaked fd {leaked} crossed exec: {listed:?}"
        );
    }

    /// Several kept descriptors cross; the one in between does not.
    #[test]
    fn only_the_kept_descriptors_cross_exec() {
        let (a, leaked, b) = (210, 211, 212);
        let f = std::fs::File::open("/proc/self/status").unwrap();
        // SAFETY: dup2 onto unused numbers.
        unsafe {
            for n in [a, leaked, b] {
                assert_eq!(libc::dup2(f.as_raw_fd(), n), n);
            }
        }
        let mut cmd = std::process::Command::new("/bin/sh");
        cmd.arg("-c").arg("ls /proc/self/fd/");
        // SAFETY: cloexec_all_but_these is async-signal-safe.
        unsafe { cmd.pre_exec(move || cloexec_all_but_these(&[a, b])) };
        let out = cmd.output().unwrap();
        let listed: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect();
        // SAFETY: closing the numbers this test dup'ed.
        unsafe {
            for n in [a, leaked, b] {
                libc::close(n);
            }
        }
        assert!(
            listed.contains(&a.to_string()) && listed.contains(&b.to_string()),
            "{listed:?}"
        );
        assert!(!listed.contains(&leaked.to_string()), "{listed:?}");
    }
}
