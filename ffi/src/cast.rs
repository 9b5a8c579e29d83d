//! The only module with `unsafe`: turning what C hands us (pointers, lengths, C strings) into
//! Rust references, and handing Rust values to C as opaque pointers.
//!
//! Every other module is safe Rust and goes through these helpers. Each helper NULL-checks
//! first and returns a `wscap_result` instead of dereferencing NULL.
//!
//! The contract that no helper can check, and that every entry point documents for C: a
//! non-NULL pointer is valid for what its parameter says (a live handle of that type, a
//! NUL-terminated string, `len` readable or writable bytes, a writable out-param), suitably
//! aligned, and not freed by another thread during the call.
//!
//! Ownership is fixed by the type, never by a cast at the call site (the pattern of rustls-ffi's
//! `Castable`): a [`BoxCastable`] type is always a `Box<RustType>` in C's hands, made by
//! [`to_boxed_ptr`] and destroyed once by [`free_boxed`]. A value that something else must share
//! (the registry, which a global-mode coordinator keeps alive) is boxed as an `Arc`: its
//! `RustType` says so (`Arc<Registry>`), and the handle is still one `Box`.
//!
//! C's `void *user_data` for callbacks that run on another thread crosses as a [`UserData`].
#![allow(unsafe_code)]

use std::ffi::{c_char, c_void, CStr};
use std::marker::PhantomData;
use std::ptr::NonNull;

use crate::result::wscap_result;

/// An opaque C type that stands for a Rust value.
pub(crate) trait Castable {
    /// The Rust value behind the pointer.
    type RustType;
}

/// A [`Castable`] that C holds as a `Box<RustType>`: created by [`to_boxed_ptr`], destroyed once
/// by [`free_boxed`].
pub(crate) trait BoxCastable: Castable {}

/// Moves `value` to the heap and gives C the pointer. C gives it back to [`free_boxed`].
pub(crate) fn to_boxed_ptr<C: BoxCastable>(value: C::RustType) -> *mut C {
    Box::into_raw(Box::new(value)).cast::<C>()
}

/// Borrows the value behind a handle for the length of one call.
pub(crate) fn try_ref<'a, C: Castable>(ptr: *const C) -> Result<&'a C::RustType, wscap_result> {
    if ptr.is_null() {
        return Err(wscap_result::NullArgument);
    }
    // SAFETY:
    // - `ptr` is not NULL (checked above);
    // - every `*const C` that C holds came from `to_boxed_ptr::<C>`, which made it from a
    //   `Box<C::RustType>`: it is aligned and points at an initialised `C::RustType`;
    // - the caller's contract (documented on each entry point) is that the handle has not been
    //   freed and is not freed during the call, so the borrow does not outlive the value;
    // - only shared access is handed out: every `RustType` here is `Sync` or used by one thread.
    Ok(unsafe { &*ptr.cast::<C::RustType>() })
}

/// Takes back and drops a handle made by [`to_boxed_ptr`]. NULL is a no-op.
pub(crate) fn free_boxed<C: BoxCastable>(ptr: *mut C) {
    if ptr.is_null() {
        return;
    }
    // SAFETY:
    // - `ptr` is not NULL and came from `to_boxed_ptr::<C>`, i.e. `Box::into_raw` of a
    //   `Box<C::RustType>` (ownership is fixed by the `BoxCastable` impl);
    // - the caller's contract is that it is freed once and not used afterwards or concurrently,
    //   so rebuilding the `Box` does not alias or double-free.
    drop(unsafe { Box::from_raw(ptr.cast::<C::RustType>()) });
}

/// C's opaque `void *user_data`, handed back to a C callback that runs on another thread (the
/// global-mode coordinator's). Rust never dereferences it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct UserData(*mut c_void);

impl UserData {
    /// Wraps C's pointer (NULL allowed).
    pub(crate) fn new(ptr: *mut c_void) -> Self {
        UserData(ptr)
    }

    /// The pointer, to pass back to C. (A method, so that a closure captures the whole
    /// `UserData`, which is `Send`, rather than its raw-pointer field, which is not.)
    pub(crate) fn get(self) -> *mut c_void {
        self.0
    }
}

// SAFETY:
// - Rust never reads or writes through the pointer: it is only stored and passed back to the C
//   callback it came with;
// - the entry points that take one (`wscap_global_request_borrow`) document that the callback
//   runs on another thread, so the C caller's contract is that `user_data` may be used there.
unsafe impl Send for UserData {}

/// A NUL-terminated C string as `&str`: NULL → `NullArgument`, not UTF-8 → `InvalidUtf8`.
pub(crate) fn try_str<'a>(ptr: *const c_char) -> Result<&'a str, wscap_result> {
    try_c_bytes(ptr)?
        .to_str()
        .map_err(|_| wscap_result::InvalidUtf8)
}

/// A NUL-terminated C string as a `CStr` (bytes not yet validated).
pub(crate) fn try_c_bytes<'a>(ptr: *const c_char) -> Result<&'a CStr, wscap_result> {
    if ptr.is_null() {
        return Err(wscap_result::NullArgument);
    }
    // SAFETY:
    // - `ptr` is not NULL (checked above);
    // - the caller's contract: it points at a NUL-terminated string that stays unchanged and
    //   allocated for the call, which bounds the borrow.
    Ok(unsafe { CStr::from_ptr(ptr) })
}

/// `len` elements at `ptr`. `len == 0` is an empty slice whatever `ptr` is (NULL allowed).
pub(crate) fn try_slice<'a, T>(ptr: *const T, len: usize) -> Result<&'a [T], wscap_result> {
    if len == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() {
        return Err(wscap_result::NullArgument);
    }
    if len > isize::MAX as usize / std::mem::size_of::<T>().max(1) {
        return Err(wscap_result::InvalidArgument);
    }
    // SAFETY:
    // - `ptr` is not NULL and `len * size_of::<T>()` fits in `isize` (checked above);
    // - the caller's contract: `ptr` points at `len` initialised, aligned `T`s in one
    //   allocation that nobody writes during the call. `T` here is a `#[repr(C)]` struct of
    //   pointers and integers, valid for every bit pattern C can store in it.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// A non-NULL out-param: checked up front (so a call with a NULL out-param fails before it
/// does any work), written at most once, at the end, on success.
pub(crate) struct Out<'a, T> {
    ptr: NonNull<T>,
    _borrow: PhantomData<&'a mut T>,
}

impl<T> Out<'_, T> {
    /// Writes the value. The old contents are not read or dropped (they are C data).
    pub(crate) fn write(self, value: T) {
        // SAFETY:
        // - `ptr` is not NULL (checked in `try_out`);
        // - the caller's contract: it points at writable, aligned storage for one `T`;
        // - `ptr::write` neither reads nor drops what was there: out-params hold C data
        //   (pointers, integers) with no destructor.
        unsafe { self.ptr.as_ptr().write(value) }
    }
}

/// Checks an out-param: NULL → `NullArgument`.
pub(crate) fn try_out<'a, T>(ptr: *mut T) -> Result<Out<'a, T>, wscap_result> {
    match NonNull::new(ptr) {
        Some(ptr) => Ok(Out {
            ptr,
            _borrow: PhantomData,
        }),
        None => Err(wscap_result::NullArgument),
    }
}

/// An optional out-param: NULL means the caller does not want the value.
pub(crate) fn optional_out<'a, T>(ptr: *mut T) -> Option<Out<'a, T>> {
    try_out(ptr).ok()
}

/// The caller's text buffer: `len` writable bytes at `buf`, and `out_n` for the length.
///
/// The convention of every entry point that returns text:
/// - it fits (`len >= text.len() + 1`): the text and a terminating NUL are written,
///   `*out_n = text.len()` (the NUL not counted), `Ok`;
/// - it does not: nothing is written to `buf`, `*out_n = text.len() + 1` (the `len` to pass),
///   `BufferTooSmall`;
/// - `buf` may be NULL only with `len == 0` (a size query); `out_n` must not be NULL.
pub(crate) struct TextBuf<'a> {
    buf: *mut c_char,
    len: usize,
    out_n: Out<'a, usize>,
}

/// Checks a text buffer (see [`TextBuf`]) before any work is done.
pub(crate) fn try_text_buf<'a>(
    buf: *mut c_char,
    len: usize,
    out_n: *mut usize,
) -> Result<TextBuf<'a>, wscap_result> {
    let out_n = try_out(out_n)?;
    if buf.is_null() && len != 0 {
        return Err(wscap_result::NullArgument);
    }
    Ok(TextBuf { buf, len, out_n })
}

impl TextBuf<'_> {
    /// Writes `text` by the convention above.
    pub(crate) fn write(self, text: &str) -> Result<(), wscap_result> {
        let bytes = text.as_bytes();
        let Some(needed) = bytes.len().checked_add(1) else {
            return Err(wscap_result::InvalidArgument);
        };
        if self.len < needed {
            self.out_n.write(needed);
            return Err(wscap_result::BufferTooSmall);
        }
        // SAFETY:
        // - `buf` is not NULL: `len >= needed >= 1`, and `try_text_buf` refused NULL with a
        //   non-zero `len`;
        // - the caller's contract: `buf` has `len >= bytes.len() + 1` writable bytes, so both the
        //   copy and the NUL after it stay in bounds;
        // - `bytes` is Rust-owned memory and cannot overlap the caller's buffer.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.buf.cast::<u8>(), bytes.len());
            self.buf.add(bytes.len()).write(0);
        }
        self.out_n.write(bytes.len());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn null_pointers_are_refused_without_dereferencing() {
        struct Opaque;
        impl Castable for Opaque {
            type RustType = u64;
        }
        assert_eq!(
            try_ref::<Opaque>(std::ptr::null()).unwrap_err(),
            wscap_result::NullArgument
        );
        assert_eq!(
            try_str(std::ptr::null()).unwrap_err(),
            wscap_result::NullArgument
        );
        assert_eq!(
            try_slice::<u32>(std::ptr::null(), 1).unwrap_err(),
            wscap_result::NullArgument
        );
        assert!(try_slice::<u32>(std::ptr::null(), 0).unwrap().is_empty());
        assert!(try_out::<u32>(std::ptr::null_mut()).is_err());
        assert!(optional_out::<u32>(std::ptr::null_mut()).is_none());
    }

    #[test]
    fn oversized_slices_are_refused() {
        let x = 0u64;
        assert_eq!(
            try_slice(&x, usize::MAX / 2).unwrap_err(),
            wscap_result::InvalidArgument
        );
    }

    #[test]
    fn text_buffer_convention() {
        let mut n = 0usize;
        let mut buf = [0x55 as c_char; 6];
        let r = try_text_buf(buf.as_mut_ptr(), 5, &mut n)
            .unwrap()
            .write("hello");
        assert_eq!((r, n), (Err(wscap_result::BufferTooSmall), 6));
        assert!(buf.iter().all(|&b| b == 0x55), "nothing written");
        try_text_buf(buf.as_mut_ptr(), 6, &mut n)
            .unwrap()
            .write("hello")
            .unwrap();
        assert_eq!(n, 5);
        assert_eq!(&buf, b"hello\0".map(|b| b as c_char).as_slice());
        let r = try_text_buf(std::ptr::null_mut(), 0, &mut n)
            .unwrap()
            .write("");
        assert_eq!((r, n), (Err(wscap_result::BufferTooSmall), 1));
        assert!(try_text_buf(std::ptr::null_mut(), 1, &mut n).is_err());
        assert!(try_text_buf(buf.as_mut_ptr(), 6, std::ptr::null_mut()).is_err());
    }
}
