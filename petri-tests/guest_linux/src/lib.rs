//! Executable models of Linux's pci-hyperv guest driver (work in progress).

#![forbid(unsafe_code)]
