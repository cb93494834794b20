//! `Debug` for structs with more than five fields, without a panic path.
//!
//! `#[derive(Debug)]` on a struct with more than five fields calls core's
//! `Formatter::debug_struct_fields_finish`, which asserts that its two slices (names, values)
//! have the same length. They always do, but the function is too large to be inlined, so the
//! assertion survives optimisation as a panic path, and the panic-freedom link check
//! (`.ci/panic-check`) rejects it. [`debug_fields!`] writes the same output field by field
//! through `Formatter::debug_struct`, which has no such assertion. Structs with at most five
//! fields may keep the derive.

/// `debug_fields!(Type { field, ... })`, or for a generic type
/// `debug_fields!([generics with bounds] [parameters] Type { field, ... })`: implements
/// `Debug` with the output the derive would give.
macro_rules! debug_fields {
    ($name:ident { $($field:ident),+ $(,)? }) => {
        debug_fields!([] [] $name { $($field),+ });
    };
    ([$($gen:tt)*] [$($arg:tt)*] $name:ident { $($field:ident),+ $(,)? }) => {
        impl<$($gen)*> core::fmt::Debug for $name<$($arg)*> {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.debug_struct(stringify!($name))
                    $(.field(stringify!($field), &self.$field))+
                    .finish()
            }
        }
    };
}
