//! The race catalogue (C1-C5, C7 of `spec/linux-guest.md`), each driven by a scripted host
//! with the interleaving chosen explicitly: the 6.2 model must fail the way the kernel did, the
//! 6.3 model must survive (except C7, which the series did not fix).

mod common;

use common::*;
use guest_linux::{BusState, ContextId, FailureKind, KernelModel};
use vpci_protocol::MessageType;

const PROBE: ContextId = ContextId::ProbePath;
const CALLBACK: ContextId = ContextId::ChannelCallback;
const WQ: ContextId = ContextId::Workqueue;

fn driver0() -> ContextId {
    ContextId::Driver(slot(SLOT0))
}

// ---- C1: the survey completion outlives the probe ----

/// C1 script: the probe path sends QUERY_BUS_RELATIONS and waits; the host answers with
/// BUS_RELATIONS and rescinds the channel; the callback queues the relations work before the
/// rescind lands; the probe path sees the rescind first and leaves `hv_pci_query_relations`;
/// then the relations work runs.
fn c1(model: KernelModel) -> Vm {
    let mut vm = Vm::new(model, FakeHost::new().with_function(SLOT0, 7));
    assert!(vm.run_until(
        &[PROBE, CALLBACK],
        |vm| vm.host.sent(MessageType::QUERY_BUS_RELATIONS) == 1
    ));
    assert!(
        vm.step(CALLBACK),
        "BUS_RELATIONS is read: record and work queued"
    );
    vm.guest.rescind();
    vm.run(&[PROBE, WQ]);
    vm
}

/// C1 on 6.2: `hv_pci_query_relations` returns -ENODEV without flushing the workqueue; the
/// relations work then completes `survey_event`, which still points into the returned frame:
/// a write into a dead stack frame.
#[test]
fn c1_survey_completion_after_probe_returned_6_2_dead_stack_write() {
    let vm = c1(KernelModel::Linux62);
    let f = vm.guest.failure().expect("6.2 must fail");
    assert_eq!(f.kind, FailureKind::DeadStackWrite, "{}", vm.trace());
    assert_eq!(f.context, WQ);
    assert_eq!(f.function, "survey_child_resources");
}

/// C1 on 6.3: the probe path flushes the workqueue before its frame goes away, so the work
/// completes a live completion; the probe then fails cleanly with -ENODEV.
#[test]
fn c1_survey_completion_after_probe_returned_6_3_survives() {
    let vm = c1(KernelModel::Linux63);
    assert_eq!(vm.guest.failure(), None, "{}", vm.trace());
    assert_eq!(vm.guest.probe_result(), Some(Err(-19)));
}

// ---- C2: interrupt setup during eject ----

/// C2 script: the bus probes; at root-bus creation the driver binds and composes its MSI
/// (CREATE_INTERRUPT_MESSAGE sent, its completion held by the host, the driver busy-polling
/// and running the channel callback inline); EJECT arrives and is read by that inline callback;
/// then the host answers the interrupt request.
fn c2(model: KernelModel) -> Vm {
    let mut host = FakeHost::new().with_function(SLOT0, 7);
    host.hold.insert(MessageType::CREATE_INTERRUPT_MESSAGE3);
    let mut vm = Vm::new(model, host);
    assert!(vm.run_until(
        PROMPT,
        |vm| vm.host.sent(MessageType::CREATE_INTERRUPT_MESSAGE3) == 1
    ));
    vm.host.eject(SLOT0);
    assert!(
        vm.step(driver0()),
        "one polling iteration reads EJECT inline"
    );
    vm.host.release_held();
    vm.run(PROMPT);
    vm
}

/// C2 on 6.2: the polling loop gives up as soon as the child is marked ejecting, leaving the
/// vector without an interrupt descriptor; `hv_irq_unmask` then dereferences the NULL
/// `chip_data`.
#[test]
fn c2_eject_during_interrupt_setup_6_2_null_deref() {
    let vm = c2(KernelModel::Linux62);
    let f = vm.guest.failure().expect("6.2 must fail");
    assert_eq!(f.kind, FailureKind::NullDeref, "{}", vm.trace());
    assert_eq!(f.context, driver0());
    assert_eq!(f.function, "hv_arch_irq_unmask");
}

/// C2 on 6.3: the loop keeps polling (the device is still assigned), the interrupt is
/// composed and unmasked; the eject work waits for `state_lock`, then removes the driver and
/// completes the eject.
#[test]
fn c2_eject_during_interrupt_setup_6_3_survives() {
    let mut vm = c2(KernelModel::Linux63);
    assert_eq!(vm.guest.failure(), None, "{}", vm.trace());
    assert_eq!(vm.host.retargets.len(), 1);
    assert_eq!(vm.host.sent(MessageType::EJECTION_COMPLETE), 1);
    assert_eq!(vm.guest.check_end_state(), None);
}

/// C2 variant: the host fails CREATE_INTERRUPT_MESSAGE (it has already removed the function).
fn c2_failed(model: KernelModel) -> Vm {
    let mut host = FakeHost::new().with_function(SLOT0, 7);
    host.fail_interrupts = true;
    booted(model, host)
}

/// C2 variant on 6.2: a failed interrupt request leaves `chip_data` NULL and the unmask
/// dereferences it.
#[test]
fn c2_failed_interrupt_request_6_2_null_deref() {
    let vm = c2_failed(KernelModel::Linux62);
    assert_eq!(
        vm.failure_kind(),
        Some(FailureKind::NullDeref),
        "{}",
        vm.trace()
    );
}

/// C2 variant on 6.3: the unmask tolerates the missing descriptor (a warning, no hypercall).
#[test]
fn c2_failed_interrupt_request_6_3_survives() {
    let vm = c2_failed(KernelModel::Linux63);
    assert_eq!(vm.guest.failure(), None, "{}", vm.trace());
    assert!(vm.host.retargets.is_empty());
    assert_eq!(vm.guest.probe_result(), Some(Ok(())));
}

// ---- C3: eject before the root bus exists ----

/// C3 script: the function's requirements are queried and the survey completes; the probe
/// path sends BUS_D0ENTRY; the host then sends EJECT. The callback reads everything (second
/// relations, D0 completion, EJECT); the probe path takes one step (it picks the child for
/// RESOURCES_ASSIGNED but has not sent it); the workqueue runs everything it can; then the
/// probe path goes on.
fn c3(model: KernelModel) -> Vm {
    let mut vm = Vm::new(model, FakeHost::new().with_function(SLOT0, 7));
    assert!(vm.run_until(PROMPT, |vm| vm.host.sent(MessageType::BUS_D0ENTRY) == 1));
    vm.host.eject(SLOT0);
    vm.drain(CALLBACK);
    assert!(vm.step(PROBE));
    vm.drain(WQ);
    vm.run(PROMPT);
    vm
}

/// C3 on 6.2: nothing orders the eject work with the probe path; it finds no `pci_dev`,
/// unlinks the child and sends EJECTION_COMPLETE at once; the probe path then sends
/// RESOURCES_ASSIGNED for a function the guest already gave back.
#[test]
fn c3_eject_before_root_bus_6_2_ejected_device_access() {
    let vm = c3(KernelModel::Linux62);
    let f = vm.guest.failure().expect("6.2 must fail");
    assert_eq!(f.kind, FailureKind::EjectedDeviceAccess, "{}", vm.trace());
    assert_eq!(f.context, PROBE);
    assert_eq!(f.function, "hv_send_resources_allocated");
}

/// C3 on 6.3: the eject work waits on `state_lock` until the probe path has created the root
/// bus; it then finds the `pci_dev`, removes the driver, and only then sends
/// EJECTION_COMPLETE.
#[test]
fn c3_eject_before_root_bus_6_3_survives() {
    let mut vm = c3(KernelModel::Linux63);
    assert_eq!(vm.guest.failure(), None, "{}", vm.trace());
    let assigned = vm.host.position(MessageType::RESOURCES_ASSIGNED2).unwrap();
    let deleted = vm
        .host
        .position(MessageType::DELETE_INTERRUPT_MESSAGE)
        .unwrap();
    let ejected = vm.host.position(MessageType::EJECTION_COMPLETE).unwrap();
    assert!(assigned < deleted && deleted < ejected);
    assert_eq!(vm.guest.check_end_state(), None);
    assert!(vm.guest.devices().iter().all(|d| !d.pci_dev));
}

/// C3 second window: the eject work looks for the `pci_dev` just before root-bus creation
/// scans the function, and unlinks the child just after. Script: BUS_D0ENTRY sent; the host
/// ejects; the callback reads everything; the probe path runs until resources are assigned
/// (state probed); the workqueue runs until the eject work found no `pci_dev`; the probe path
/// scans the function; the workqueue finishes; then everything runs.
fn c3_scan(model: KernelModel) -> Vm {
    let mut vm = Vm::new(model, FakeHost::new().with_function(SLOT0, 7));
    assert!(vm.run_until(PROMPT, |vm| vm.host.sent(MessageType::BUS_D0ENTRY) == 1));
    vm.host.eject(SLOT0);
    vm.drain(CALLBACK);
    assert!(vm.run_until(&[PROBE, CALLBACK], |vm| vm.guest.bus_state()
        == BusState::Probed));
    vm.step_until(WQ, |vm| {
        vm.guest
            .trace()
            .iter()
            .any(|t| t.event.starts_with("no pci_dev"))
    });
    assert!(vm.step(PROBE), "the scan creates the pci_dev");
    vm.drain(WQ);
    vm.run(PROMPT);
    vm
}

/// C3 (scan window) on 6.2: EJECTION_COMPLETE goes out while the scan creates the `pci_dev`;
/// root-bus creation then binds the driver to a function the guest already gave back, and
/// its probe touches the device.
#[test]
fn c3_eject_during_root_bus_scan_6_2_driver_probes_a_gone_device() {
    let vm = c3_scan(KernelModel::Linux62);
    let f = vm.guest.failure().expect("6.2 must fail");
    assert_eq!(f.kind, FailureKind::EjectedDeviceAccess, "{}", vm.trace());
    assert_eq!(f.context, driver0());
}

/// C3 (scan window) on 6.3: the eject work cannot start before the probe path releases
/// `state_lock`, so the window does not exist.
#[test]
fn c3_eject_during_root_bus_scan_6_3_survives() {
    let mut vm = c3_scan(KernelModel::Linux63);
    assert_eq!(vm.guest.failure(), None, "{}", vm.trace());
    assert_eq!(vm.host.sent(MessageType::EJECTION_COMPLETE), 1);
    assert_eq!(vm.guest.check_end_state(), None);
}

// ---- C4: relations change during the probe path ----

/// C4 script: after the survey, the relations the host sends on BUS_D0ENTRY add a second
/// function. The callback reads them; the workqueue takes one step (6.2: it sends
/// QUERY_RESOURCE_REQUIREMENTS for the new function); the probe path sends RESOURCES_ASSIGNED
/// for the first function; the callback reads both completions; the probe path completes
/// resource assignment and programs the BARs; the workqueue runs what it can (6.2: links the
/// new function); then everything runs.
fn c4(model: KernelModel) -> Vm {
    let mut host = FakeHost::new().with_function(SLOT0, 7);
    host.add_at_d0.push((SLOT1, function(8)));
    let mut vm = Vm::new(model, host);
    assert!(vm.run_until(PROMPT, |vm| vm.host.sent(MessageType::BUS_D0ENTRY) == 1));
    vm.drain(CALLBACK);
    assert!(vm.step(WQ));
    assert!(vm.run_until(
        &[PROBE, CALLBACK],
        |vm| vm.host.sent(MessageType::RESOURCES_ASSIGNED2) == 1
    ));
    vm.drain(CALLBACK);
    assert!(
        vm.step(PROBE),
        "RESOURCES_ASSIGNED completes; BARs are programmed"
    );
    vm.drain(WQ);
    vm.run(PROMPT);
    vm
}

/// C4 on 6.2: the relations work links the new function after resources were assigned (the
/// survey no longer has a waiter), root-bus creation scans it, and a driver binds to a
/// function the host was never sent RESOURCES_ASSIGNED for.
#[test]
fn c4_function_added_during_probe_6_2_unresourced_device() {
    let vm = c4(KernelModel::Linux62);
    let f = vm.guest.failure().expect("6.2 must fail");
    assert_eq!(f.kind, FailureKind::UnresourcedDevice, "{}", vm.trace());
    assert_eq!(f.function, "pci_bus_add_devices");
    assert_eq!(vm.host.sent(MessageType::RESOURCES_ASSIGNED2), 1);
}

/// C4 on 6.3: the relations work waits on `state_lock`, then finds the bus installed and
/// rescans: the new function is scanned but not bound, and nothing breaks.
#[test]
fn c4_function_added_during_probe_6_3_survives() {
    let mut vm = c4(KernelModel::Linux63);
    assert_eq!(vm.guest.failure(), None, "{}", vm.trace());
    assert_eq!(vm.guest.bus_state(), BusState::Installed);
    let devs = vm.guest.devices();
    assert!(
        devs[0].driver_bound && devs[1].pci_dev && !devs[1].driver_bound,
        "{devs:?}"
    );
    assert_eq!(vm.guest.check_end_state(), None);
}

// ---- C5: rescind during probe ----

/// C5 script: the probe path is inside root-bus creation, the driver composing its MSI (the
/// completion held by the host), when the host rescinds the channel.
fn c5(model: KernelModel) -> Vm {
    let mut host = FakeHost::new().with_function(SLOT0, 7);
    host.hold.insert(MessageType::CREATE_INTERRUPT_MESSAGE3);
    let mut vm = Vm::new(model, host);
    assert!(vm.run_until(
        PROMPT,
        |vm| vm.host.sent(MessageType::CREATE_INTERRUPT_MESSAGE3) == 1
    ));
    vm.guest.rescind();
    vm.run(PROMPT);
    vm
}

/// C5 on 6.2: the polling loop finds the channel callback unhooked and gives up without a
/// descriptor; the unmask dereferences NULL.
#[test]
fn c5_rescind_during_probe_6_2_null_deref() {
    let vm = c5(KernelModel::Linux62);
    let f = vm.guest.failure().expect("6.2 must fail");
    assert_eq!(f.kind, FailureKind::NullDeref, "{}", vm.trace());
    assert_eq!(f.context, driver0());
}

/// C5 on 6.3: the unmask tolerates the missing descriptor, the probe finishes, and
/// `hv_pci_remove` tears the bus down in order (workqueue destroyed, driver removed, bus
/// freed).
#[test]
fn c5_rescind_during_probe_6_3_survives() {
    let vm = c5(KernelModel::Linux63);
    assert_eq!(vm.guest.failure(), None, "{}", vm.trace());
    assert!(vm.guest.removed());
    assert!(vm.guest.devices().iter().all(|d| !d.pci_dev));
}

// ---- C7: device memory pulled before the guest let go ----

/// C7 script: the device is bound and settled; the host sends EJECT and unmaps the BARs at
/// once; the eject work runs the driver's remove, which reads its status register.
fn c7(model: KernelModel) -> Vm {
    let mut vm = booted(model, FakeHost::new().with_function(SLOT0, 7));
    assert_eq!(vm.guest.failure(), None);
    vm.host.pull_memory_on_eject = true;
    vm.host.eject(SLOT0);
    vm.run(PROMPT);
    vm
}

/// C7 on 6.2: the driver's remove faults on the unbacked BAR.
#[test]
fn c7_memory_pulled_before_ejection_complete_6_2_unbacked_access() {
    let vm = c7(KernelModel::Linux62);
    let f = vm.guest.failure().expect("6.2 must fail");
    assert_eq!(f.kind, FailureKind::UnbackedAccess, "{}", vm.trace());
    assert_eq!(f.context, driver0());
    assert_eq!(f.function, "nvme_dev_disable (driver remove)");
}

/// C7 on 6.3: the series did not cover this; the same fault happens.
#[test]
fn c7_memory_pulled_before_ejection_complete_6_3_unbacked_access() {
    let vm = c7(KernelModel::Linux63);
    let f = vm.guest.failure().expect("6.3 must fail too");
    assert_eq!(f.kind, FailureKind::UnbackedAccess, "{}", vm.trace());
    assert_eq!(f.context, driver0());
}

/// C7 variant script: the host unmaps the function's config window (not its BARs) as soon as
/// it sends EJECT; the driver's remove disables the device through config space.
fn c7_config(model: KernelModel) -> Vm {
    let mut vm = booted(model, FakeHost::new().with_function(SLOT0, 7));
    assert_eq!(vm.guest.failure(), None);
    vm.host.pull_config_on_eject = true;
    vm.host.eject(SLOT0);
    vm.run(PROMPT);
    vm
}

/// C7 (config window) on 6.2: `pci_disable_device` in the driver's remove faults.
#[test]
fn c7_config_window_pulled_before_ejection_complete_6_2_unbacked_access() {
    let vm = c7_config(KernelModel::Linux62);
    let f = vm.guest.failure().expect("6.2 must fail");
    assert_eq!(f.kind, FailureKind::UnbackedAccess, "{}", vm.trace());
    assert_eq!(f.function, "pci_disable_device");
}

/// C7 (config window) on 6.3: the same fault.
#[test]
fn c7_config_window_pulled_before_ejection_complete_6_3_unbacked_access() {
    let vm = c7_config(KernelModel::Linux63);
    let f = vm.guest.failure().expect("6.3 must fail too");
    assert_eq!(f.kind, FailureKind::UnbackedAccess, "{}", vm.trace());
    assert_eq!(f.function, "pci_disable_device");
}
