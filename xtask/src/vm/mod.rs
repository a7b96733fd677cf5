//! Real Debian kernels in qemu with the fixture modules (`cargo xtask vm-test`).
//!
//! - [`suite`]: the kernel matrix; [`prepare`] fetches kernels (private apt, cached in
//!   `.vm-cache/`) and builds the fixtures for each; [`plan`]: which suites run on which kernel;
//!   [`jobs`]: the pool that boots them `--jobs` at a time.
//! - [`qemu`]: [`run_in_vm_with`] boots a kernel with a `/scenarios/run.sh` and extra files →
//!   [`VmOutput`] (console log + named sections). Guest crash / timeout → `Err`.
//! - [`kv`]: [`parse_kv`], the fixtures' `key=value ...` record format.
//! - [`fixtures`]: building the fixture modules for a kernel; [`tools`]: the static helpers.
//! - [`checks`]: what the checkers share ([`checks::Checks`], `/metrics` parsing).
//! - [`suites`]: one checker per suite (probes, generations, lifecycle, modules, storm,
//!   restart, doctor, the fixture smokes), and [`suites::leaks`] for every suite.
//!
//! Everything downloaded or built lives under `<repo>/.vm-cache/` (override: `TSM_VM_CACHE`).

pub mod cache;
pub mod checks;
pub mod fixtures;
pub mod initramfs;
pub mod jobs;
pub mod kernel;
pub mod kv;
pub mod plan;
pub mod qemu;
pub mod suite;
pub mod suites;
pub mod tools;

// The API other commands (demo, e2e, bench) use. Submodules never import from here: each
// names the sibling it needs, so no module imports one that imports it.
pub use kernel::KernelSpec;
pub use kv::parse_kv;
pub use qemu::{RunOptions, VmOutput, run_in_vm_with};
pub use suite::{VmTestArgs, prepare, run};
