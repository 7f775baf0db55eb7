//! The mapping nonce for a socket: derived from the user's secret and the
//! socket's address (`proto::portmap::derived_nonce`), so a daemon that
//! crashed and was restarted renews the mapping it left (and gets the same
//! public address back) instead of being refused it until its lease ends.
//!
//! The secret is 32 random bytes in `/dev/shm/gcb-pcp-key-UID`, made by the
//! first process that needs it (written to a file of its own, then linked
//! into place, so nobody reads a half-written one) and used only if it is a
//! regular file of this user with no access for anyone else: another user
//! could otherwise take over this user's mappings. It lives until the host
//! reboots, as the gateway's mappings of this host's last run need it no
//! longer than their lease. Where it cannot be had, each mapping gets a
//! random nonce, as before.

use std::ffi::CString;
use std::net::SocketAddrV4;

use once_cell::race::OnceBox;
use proto::Proto;

const KEY_LEN: usize = 32;

static KEY: OnceBox<Option<[u8; KEY_LEN]>> = OnceBox::new();

/// The nonce for `proto` `local` (module docs).
pub fn nonce_for(proto: Proto, local: SocketAddrV4) -> [u8; 12] {
    let key = KEY.get_or_init(|| {
        // SAFETY: geteuid cannot fail.
        let uid = unsafe { libc::geteuid() };
        let key = key_at(&format!("/dev/shm/gcb-pcp-key-{uid}"), uid);
        if key.is_none() {
            log!(Debug, "no PCP key in /dev/shm; mapping nonces are random, so a restarted process cannot renew its predecessor's mappings");
        }
        Box::new(key)
    });
    match key {
        Some(k) => proto::portmap::derived_nonce(k, proto, local),
        None => super::wire::nonce(),
    }
}

/// The key at `path`, made if missing; `None` if it is not safe to use.
fn key_at(path: &str, uid: libc::uid_t) -> Option<[u8; KEY_LEN]> {
    if let Some(k) = read(path, uid) {
        return Some(k);
    }
    let tmp = format!("{path}.{}", std::process::id());
    let (c_tmp, c_path) = (CString::new(tmp.as_str()).ok()?, CString::new(path).ok()?);
    let mut key = [0u8; KEY_LEN];
    for chunk in key.chunks_mut(8) {
        chunk.copy_from_slice(&crate::client::sys::random_u64().to_ne_bytes()[..chunk.len()]);
    }
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: a valid C string; the fd is closed below.
    let fd = unsafe { libc::open(c_tmp.as_ptr(), flags, 0o600 as libc::c_uint) };
    if fd >= 0 {
        // SAFETY: our own fd and a live buffer.
        let written = unsafe { crate::real::write(fd, key.as_ptr().cast(), KEY_LEN) };
        // SAFETY: as above; the link fails harmlessly if another process
        // linked its key first, and then that one is read.
        unsafe {
            crate::real::close(fd);
            if written == KEY_LEN as isize {
                libc::link(c_tmp.as_ptr(), c_path.as_ptr());
            }
            libc::unlink(c_tmp.as_ptr());
        }
    }
    read(path, uid)
}

/// The key file's bytes if it is a regular file of `uid`, private, of the right size.
fn read(path: &str, uid: libc::uid_t) -> Option<[u8; KEY_LEN]> {
    let c_path = CString::new(path).ok()?;
    // SAFETY: a valid C string; the fd is closed below.
    let fd = unsafe { libc::open(c_path.as_ptr(), libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    let sock = crate::client::sys::Sock::from_raw(fd);
    // SAFETY: a zeroed stat is a valid out-parameter.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: our fd.
    let ok = unsafe { libc::fstat(sock.raw(), &mut st) } == 0
        && st.st_mode & libc::S_IFMT == libc::S_IFREG
        && st.st_uid == uid
        && st.st_mode & 0o077 == 0
        && st.st_size == KEY_LEN as libc::off_t;
    if !ok {
        return None;
    }
    let mut key = [0u8; KEY_LEN];
    // SAFETY: our fd and a live buffer.
    let n = unsafe { crate::real::read(sock.raw(), key.as_mut_ptr().cast(), KEY_LEN) };
    (n == KEY_LEN as isize).then_some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_once_then_read_and_refused_when_others_may_read_it() {
        let dir = std::env::temp_dir().join(format!("gcb-pcp-key-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("key");
        let p = path.to_str().unwrap();
        // SAFETY: geteuid cannot fail.
        let uid = unsafe { libc::geteuid() };
        let first = key_at(p, uid).expect("made");
        assert_eq!(key_at(p, uid), Some(first), "the same key again");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "no temporary file left");
        assert_eq!(key_at(p, uid + 1), None, "another user's file is not used");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(read(p, uid), None, "a key others may read is not used");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
