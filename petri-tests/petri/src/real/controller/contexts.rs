//! Guest contexts named as the kernel's own.

use kernel_shim::protocol::ContextKind;

/// A guest context named as the kernel's own: the probing process (`modprobe`, which runs
/// `hv_pci_probe` and the PCI core), a channel's tasklet (VMBus runs the driver's
/// `hv_pci_onchannelcallback` in softirq context), a workqueue's worker (`kworker`, running
/// `pci_devices_present_work` and `hv_eject_device_work` on the bus's ordered workqueue), the
/// rescind handler (`vmbus_onoffer_rescind`); with the shim's own name after it.
pub(super) fn kernel_context_name(kind: ContextKind, name: &str) -> String {
    if name.starts_with("vmbus_onoffer_rescind") {
        return format!("kworker [{name}: vmbus_onoffer_rescind, hv_pci_remove]");
    }
    match kind {
        ContextKind::Process => format!("modprobe [{name}: hv_pci_probe, PCI core]"),
        ContextKind::Tasklet => {
            format!("softirq [{name}: vmbus channel tasklet, hv_pci_onchannelcallback]")
        }
        ContextKind::Worker => {
            format!("kworker [{name}: pci_devices_present_work, hv_eject_device_work]")
        }
        ContextKind::Other(k) => format!("{name} (context kind {k})"),
    }
}

#[cfg(test)]
mod context_names {
    use super::*;

    /// Contexts read as the kernel's: the probing process, the channel's softirq tasklet, a
    /// workqueue worker, the rescind handler, each with the shim's own name kept.
    #[test]
    fn contexts_are_named_as_the_kernels() {
        let process = kernel_context_name(ContextKind::Process, "process");
        assert!(process.starts_with("modprobe [process"), "{process}");
        let tasklet = kernel_context_name(ContextKind::Tasklet, "tasklet:bus0");
        assert!(tasklet.contains("hv_pci_onchannelcallback"), "{tasklet}");
        let worker = kernel_context_name(ContextKind::Worker, "wq:hv_pci_1");
        assert!(worker.starts_with("kworker [wq:hv_pci_1"), "{worker}");
        let rescind = kernel_context_name(ContextKind::Process, "vmbus_onoffer_rescind:bus0");
        assert!(rescind.contains("hv_pci_remove"), "{rescind}");
    }
}
