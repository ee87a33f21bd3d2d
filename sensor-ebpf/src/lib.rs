//! Host builds see only this empty library (the agent's build script depends on this crate
//! so cargo rebuilds it when the kernel code changes); the programs are in `main.rs`.
#![no_std]
// The dependencies are the programs' (main.rs), where the lint applies.
#![allow(unused_crate_dependencies)]
