use which::which;

/// Building this crate links with `bpf-linker`; rebuild when it changes so a reinstalled linker
/// (for a new LLVM) is picked up. `cargo xtask setup` installs it.
fn main() {
    let bpf_linker = which("bpf-linker")
        .expect("bpf-linker not found on PATH: run `cargo xtask setup` to install it");
    println!("cargo:rerun-if-changed={}", bpf_linker.to_str().unwrap());
}
