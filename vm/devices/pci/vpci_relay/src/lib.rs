//! The per-bus vPCI relay of an OpenHCL-style paravisor.
//!
//! A Hyper-V host offers each virtual PCI bus to a VM as one VMBus channel speaking the vPCI
//! protocol. The relay owns both ends of such a bus: a vPCI client towards the host and a vPCI
//! endpoint towards the guest. Everything host-originated that can remove or change a device
//! (`BUS_RELATIONS`, `EJECT`, a channel rescind) and everything guest-originated that touches a
//! removed device passes through one per-bus state machine, so that an unmodified guest (such
//! as a Linux guest older than 6.3, whose `pci-hyperv` driver races under fast hotplug) never
//! sees a removal overlap its probe.
//!
//! The state machine (`BusRelay`) and its driver land with the relay issue; this crate is the
//! place they live in, and its guarantees are listed in the project's DESIGN.md.

#![forbid(unsafe_code)]
