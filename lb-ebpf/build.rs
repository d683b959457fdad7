use which::which;

/// Rebuild when bpf-linker changes: the eBPF object depends on it, and cargo can't see that.
fn main() {
    let bpf_linker = which("bpf-linker").expect("bpf-linker not on PATH: run `cargo xtask setup`");
    println!("cargo:rerun-if-changed={}", bpf_linker.display());
}
