//! Helpers shared by the tests that work inside the hosts' network namespaces.

use stack::netns::netns_path;
use std::os::fd::AsRawFd;

/// Runs `f` on a thread that has entered `netns` (setns moves only the calling thread).
pub fn in_netns<T: Send + 'static>(netns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let file = std::fs::File::open(netns_path(netns)).expect("namespace handle");
    std::thread::spawn(move || {
        // SAFETY: a valid namespace file descriptor; only this thread changes namespace.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("thread in namespace")
}
