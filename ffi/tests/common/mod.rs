//! Helpers shared by the C ABI tests: C strings, the never-written sentinel, and text by the
//! library's buffer convention.
#![allow(dead_code)]

use std::ffi::{c_char, CStr, CString};
use std::ptr::null_mut;

use wscap_ffi::{wscap_permit, wscap_permit_host, wscap_result as R};

/// A NUL-terminated copy of `s`.
pub fn cs(s: &str) -> CString {
    CString::new(s).unwrap()
}

/// A pointer that must never be written by a failing call.
pub fn sentinel<T>() -> *mut T {
    std::ptr::without_provenance_mut(0x5a5a_5a5a)
}

/// Text by the buffer convention: ask the size, then fetch (retrying if it grew).
pub fn text(f: impl Fn(*mut c_char, usize, *mut usize) -> R) -> String {
    let mut n = 0usize;
    loop {
        assert_eq!(f(null_mut(), 0, &mut n), R::BufferTooSmall);
        let mut buf = vec![0 as c_char; n];
        let mut written = 0usize;
        match f(buf.as_mut_ptr(), buf.len(), &mut written) {
            R::Ok => {
                assert_eq!(buf[written], 0, "NUL-terminated");
                // SAFETY: the buffer holds a NUL at `written`.
                let s = unsafe { CStr::from_ptr(buf.as_ptr()) };
                assert_eq!(s.to_bytes().len(), written);
                return s.to_str().unwrap().to_owned();
            }
            R::BufferTooSmall => n = written,
            other => panic!("{other:?}"),
        }
    }
}

/// The `ip:port` a permit holds a slot on.
pub fn host_of(p: *const wscap_permit) -> String {
    text(|b, l, n| wscap_permit_host(p, b, l, n))
}
