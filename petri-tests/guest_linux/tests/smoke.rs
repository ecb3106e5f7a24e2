//! A well-behaved host order passes on both models.

mod common;

use common::*;
use guest_linux::{BusState, KernelModel};
use vpci_protocol::MessageType;

fn well_behaved(model: KernelModel) {
    let mut vm = booted(model, FakeHost::new().with_function(SLOT0, 7));
    assert_eq!(vm.guest.failure(), None, "{}", vm.trace());
    assert_eq!(vm.guest.probe_result(), Some(Ok(())));
    assert_eq!(vm.guest.bus_state(), BusState::Installed);
    let dev = &vm.guest.devices()[0];
    assert!(dev.driver_bound && dev.resources_assigned, "{dev:?}");
    assert_eq!(vm.host.retargets.len(), 1);
    // Settled: now the host ejects and keeps the device backed until EJECTION_COMPLETE.
    vm.host.eject(SLOT0);
    vm.run(PROMPT);
    assert_eq!(vm.guest.failure(), None, "{}", vm.trace());
    assert_eq!(vm.host.sent(MessageType::EJECTION_COMPLETE), 1);
    assert_eq!(vm.host.sent(MessageType::DELETE_INTERRUPT_MESSAGE), 1);
    assert!(
        vm.host.position(MessageType::DELETE_INTERRUPT_MESSAGE)
            < vm.host.position(MessageType::EJECTION_COMPLETE)
    );
    assert_eq!(vm.guest.check_end_state(), None);
    let devs = vm.guest.devices();
    assert!(
        devs.iter().all(|d| !d.pci_dev && !d.child_present),
        "{devs:?}"
    );
}

/// Survey, D0, resources, driver probe, eject after settle, eject complete: 6.2 survives.
#[test]
fn well_behaved_host_passes_on_6_2() {
    well_behaved(KernelModel::Linux62);
}

/// The same order on 6.3 survives too.
#[test]
fn well_behaved_host_passes_on_6_3() {
    well_behaved(KernelModel::Linux63);
}
