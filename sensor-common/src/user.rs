//! Userspace-only impls: lets aya read and write these types in maps.

use crate::event::{AuthEvent, ConnState, ProcRecord, SessionEvent};

// SAFETY: plain #[repr(C)] data with no padding-dependent invariants and no pointers.
unsafe impl aya::Pod for ProcRecord {}
unsafe impl aya::Pod for ConnState {}
unsafe impl aya::Pod for SessionEvent {}
unsafe impl aya::Pod for AuthEvent {}
