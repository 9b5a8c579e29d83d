//! The gate every exported function runs its body in.
//!
//! A panic that unwinds out of an `extern "C"` function aborts the process, and inside a proxy
//! that is the proxy. So each entry point's body is `gate!({ ... })`: the body returns
//! `Result<Value, wscap_result>`, uses `?` on the NULL-checking helpers of [`crate::cast`], and
//! the gate turns the outcome, or a caught panic, into the function's C return type.

use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::result::wscap_result;

/// The C return types a gated body can settle into.
pub(crate) trait Gated: Sized {
    /// What the body returns on success.
    type Value;
    /// The C value for a body's outcome (`Err(Panic)` when the gate caught a panic).
    fn settle(outcome: Result<Self::Value, wscap_result>) -> Self;
}

impl Gated for wscap_result {
    type Value = ();
    fn settle(outcome: Result<(), wscap_result>) -> Self {
        match outcome {
            Ok(()) => wscap_result::Ok,
            Err(e) => e,
        }
    }
}

/// For `_free` / `_release`: nothing to report, and nothing escapes.
impl Gated for () {
    type Value = ();
    fn settle(_: Result<(), wscap_result>) -> Self {}
}

/// For the entry points that return a static string.
impl Gated for *const std::ffi::c_char {
    type Value = *const std::ffi::c_char;
    fn settle(outcome: Result<Self::Value, wscap_result>) -> Self {
        outcome.unwrap_or(crate::result::PANIC_TEXT)
    }
}

/// Runs `body`, catching any panic. Use it through [`gate!`].
pub(crate) fn run<R: Gated>(body: impl FnOnce() -> Result<R::Value, wscap_result>) -> R {
    // AssertUnwindSafe: after a caught panic the caller gets `Panic` and the state it can reach
    // is the registry, whose invariants hold at every step (atomics, copy-on-write host sets;
    // parking_lot mutexes do not poison). A half-built value is dropped by the unwind.
    R::settle(catch_unwind(AssertUnwindSafe(body)).unwrap_or(Err(wscap_result::Panic)))
}

/// The body of every exported function: `gate!({ ...; Ok(value) })`. See the module docs.
macro_rules! gate {
    ($body:block) => {
        $crate::gate::run(move || $body)
    };
}
pub(crate) use gate;

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::c_char;

    fn quiet<T>(f: impl FnOnce() -> T) -> T {
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let out = f();
        std::panic::set_hook(hook);
        out
    }

    #[test]
    fn panics_become_results() {
        let r: wscap_result = quiet(|| gate!({ panic!("boom") }));
        assert_eq!(r, wscap_result::Panic);
        let r: () = quiet(|| gate!({ panic!("boom") }));
        assert_eq!(r, ());
        let r: *const c_char = quiet(|| gate!({ panic!("boom") }));
        assert_eq!(r, crate::result::PANIC_TEXT);
    }

    #[test]
    fn outcomes_pass_through() {
        let r: wscap_result = gate!({ Ok(()) });
        assert_eq!(r, wscap_result::Ok);
        let r: wscap_result = gate!({ Err(wscap_result::NoCapacity) });
        assert_eq!(r, wscap_result::NoCapacity);
        let r: wscap_result = gate!({
            crate::cast::try_str(std::ptr::null())?;
            Ok(())
        });
        assert_eq!(r, wscap_result::NullArgument);
    }
}
