//! BTF: resolve struct offsets at run time (vmlinux + module split BTF).
