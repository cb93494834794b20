//! Planted panics for the self-test of the panic-freedom link check.
//!
//! `.ci/panic-check/build.sh --self-test` builds the check once per module with
//! `RUSTFLAGS='--cfg virtq_plant_panic="<module>"'`, and each build must then FAIL to link:
//! that shows the check sees a panic path in that module. The cfg is not a Cargo feature, so
//! no dependency resolution or `--all-features` build can switch it on; in every other build
//! [`plant_panic!`] expands to nothing.

/// `plant_panic!("module", condition)`: under `--cfg virtq_plant_panic="module"`, panic when
/// `condition` holds (an input the optimiser cannot see through, so the path survives).
macro_rules! plant_panic {
    ($module:tt, $cond:expr) => {
        #[cfg(virtq_plant_panic = $module)]
        #[allow(clippy::panic)]
        {
            if $cond {
                panic!(concat!("panic planted in module ", $module));
            }
        }
    };
}
