//! Logging shim: the crate's log macros (`trace!`, `debug!`, `warn!`) forward to `defmt` when
//! the `defmt` feature is on, else to the `log` crate when the `log` feature is on, else to
//! nothing.
//!
//! With both features on, `defmt` takes precedence and `log` receives nothing: a build that
//! enables `defmt` is a firmware build that chose defmt's deferred formatting, and sending the
//! same messages through `core::fmt` as well would put back the code size defmt saves. Every
//! message is written so that it means the same under both (`{}` placeholders whose arguments
//! implement both `Display` and `defmt::Format`).
//!
//! The arguments are still type-checked (inside a closure that is never called) when logging is
//! off, so a log line cannot rot silently.

#[cfg(feature = "defmt")]
macro_rules! log_at {
    ($level:ident, $($arg:tt)+) => { defmt::$level!($($arg)+) };
}

#[cfg(all(feature = "log", not(feature = "defmt")))]
macro_rules! log_at {
    ($level:ident, $($arg:tt)+) => { ::log::$level!($($arg)+) };
}

#[cfg(not(any(feature = "defmt", feature = "log")))]
macro_rules! log_at {
    ($level:ident, $fmt:literal $(, $arg:expr)* $(,)?) => {{
        let _ = || { $( let _ = &$arg; )* };
    }};
}

macro_rules! trace { ($($arg:tt)+) => { log_at!(trace, $($arg)+) }; }
macro_rules! debug { ($($arg:tt)+) => { log_at!(debug, $($arg)+) }; }
macro_rules! warn { ($($arg:tt)+) => { log_at!(warn, $($arg)+) }; }
