//! Real Debian kernels in qemu with the fixture modules (`cargo xtask vm-test`).
//!
//! - [`suite`]: the kernel matrix; [`prepare`] fetches kernels (private apt, cached in
//!   `.vm-cache/`) and builds the fixtures for each; [`plan`]: which suites run on which kernel;
//!   [`jobs`]: the pool that boots them `--jobs` at a time.
//! - [`qemu`]: [`run_in_vm_with`] boots a kernel with a `/scenarios/run.sh` and extra files →
//!   [`VmOutput`] (console log + named sections). Guest crash / timeout → `Err`.
//! - [`kv`]: [`parse_kv`], the fixtures' `key=value ...` record format.
//! - the suites' checkers: [`smoke`], [`scenarios`], [`lifecycle`], [`modules`], [`storm`],
//!   [`restart`], [`leaks`].
//!
//! Everything downloaded or built lives under `<repo>/.vm-cache/` (override: `TSM_VM_CACHE`).

pub mod cache;
pub mod diagnostics;
pub mod doctor;
pub mod generations;
pub mod initramfs;
pub mod jobs;
pub mod kernel;
pub mod kv;
pub mod leaks;
pub mod lifecycle;
pub mod module;
pub mod modules;
pub mod plan;
pub mod qemu;
pub mod restart;
pub mod scenarios;
pub mod smoke;
pub mod storm;
pub mod suite;
pub mod tools;

// The API other commands (demo, e2e, bench) use. Submodules never import from here: each
// names the sibling it needs, so no module imports one that imports it.
pub use kernel::KernelSpec;
pub use kv::parse_kv;
pub use qemu::{RunOptions, VmOutput, run_in_vm_with};
pub use suite::{VmTestArgs, prepare, run};
