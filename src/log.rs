//! Logging shim: forwards to `defmt` when the `defmt` feature is on, and to nothing otherwise.
//!
//! The arguments are still type-checked (inside a closure that is never called) when logging is
//! off, so a log line cannot rot silently.

#[cfg(feature = "defmt")]
macro_rules! log_at {
    ($level:ident, $($arg:tt)+) => { defmt::$level!($($arg)+) };
}

#[cfg(not(feature = "defmt"))]
macro_rules! log_at {
    ($level:ident, $fmt:literal $(, $arg:expr)* $(,)?) => {{
        let _ = || { $( let _ = &$arg; )* };
    }};
}

macro_rules! trace { ($($arg:tt)+) => { log_at!(trace, $($arg)+) }; }
macro_rules! debug { ($($arg:tt)+) => { log_at!(debug, $($arg)+) }; }
macro_rules! warn { ($($arg:tt)+) => { log_at!(warn, $($arg)+) }; }
