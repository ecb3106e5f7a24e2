//! Behaviour of the models beyond the catalogue: determinism, relations collapsing, the D0
//! retry of each version, timed waits, hang reporting, version-dependent messages, and two
//! host orders that break both kernels.

mod common;

use common::*;
use guest_linux::{ContextId, FailureKind, KernelModel};
use std::time::Duration;
use vpci_protocol::{MessageType, ProtocolVersion};

/// The C2 script of the catalogue, for replay checks.
fn c2_run(model: KernelModel) -> Vm {
    let mut host = FakeHost::new().with_function(SLOT0, 7);
    host.hold.insert(MessageType::CREATE_INTERRUPT_MESSAGE3);
    let mut vm = Vm::new(model, host);
    vm.run_until(PROMPT, |vm| {
        vm.host.sent(MessageType::CREATE_INTERRUPT_MESSAGE3) == 1
    });
    vm.host.eject(SLOT0);
    vm.step(ContextId::Driver(slot(SLOT0)));
    vm.host.release_held();
    vm.run(PROMPT);
    vm
}

/// The same choices give the same run: identical traces, failures and host logs.
#[test]
fn same_choices_give_the_same_run() {
    for model in [KernelModel::Linux62, KernelModel::Linux63] {
        let a = c2_run(model);
        let b = c2_run(model);
        assert_eq!(a.guest.trace(), b.guest.trace());
        assert_eq!(a.guest.failure(), b.guest.failure());
        assert_eq!(a.host.log, b.host.log);
    }
}

/// Relations records that pile up before the work runs collapse: one work item processes
/// only the newest record (here the function's serial number changed twice).
#[test]
fn relations_records_collapse_to_the_newest() {
    for model in [KernelModel::Linux62, KernelModel::Linux63] {
        let mut vm = Vm::new(model, FakeHost::new().with_function(SLOT0, 7));
        assert!(vm.run_until(&[ContextId::ProbePath], |vm| {
            vm.host.sent(MessageType::QUERY_BUS_RELATIONS) == 1
        }));
        for serial in [8, 9] {
            vm.host.functions.get_mut(&SLOT0).unwrap().serial = serial;
            vm.host.send_relations();
        }
        vm.drain(ContextId::ChannelCallback);
        vm.run(PROMPT);
        assert_eq!(vm.guest.failure(), None, "{}", vm.trace());
        assert_eq!(vm.host.sent(MessageType::QUERY_RESOURCE_REQUIREMENTS), 1);
        assert_eq!(vm.guest.devices()[0].serial, 9);
    }
}

/// A failed D0 entry on 6.2 releases resources, leaves D0 and restarts from the relations
/// query (the kdump fix that patch 4 reverted).
#[test]
fn d0_failure_6_2_retries_from_the_relations_query() {
    let mut host = FakeHost::new().with_function(SLOT0, 7);
    host.d0_failures = 1;
    let vm = booted(KernelModel::Linux62, host);
    assert_eq!(vm.guest.failure(), None, "{}", vm.trace());
    assert_eq!(vm.guest.probe_result(), Some(Ok(())));
    assert_eq!(vm.host.sent(MessageType::QUERY_BUS_RELATIONS), 2);
    assert_eq!(vm.host.sent(MessageType::BUS_D0ENTRY), 2);
    assert_eq!(vm.host.sent(MessageType::RESOURCES_RELEASED), 1);
    assert_eq!(vm.host.sent(MessageType::BUS_D0EXIT), 1);
}

/// A failed D0 entry on 6.3 retries inside `hv_pci_enter_d0`, without a new relations query.
#[test]
fn d0_failure_6_3_retries_d0_entry_only() {
    let mut host = FakeHost::new().with_function(SLOT0, 7);
    host.d0_failures = 1;
    let vm = booted(KernelModel::Linux63, host);
    assert_eq!(vm.guest.failure(), None, "{}", vm.trace());
    assert_eq!(vm.guest.probe_result(), Some(Ok(())));
    assert_eq!(vm.host.sent(MessageType::QUERY_BUS_RELATIONS), 1);
    assert_eq!(vm.host.sent(MessageType::BUS_D0ENTRY), 2);
    assert_eq!(vm.host.sent(MessageType::BUS_D0EXIT), 1);
}

/// BUS_D0EXIT is waited for with a 10-second timeout: the guest reports the deadline, and
/// once time reaches it the probe gives up.
#[test]
fn d0_exit_wait_times_out_after_ten_seconds() {
    let mut host = FakeHost::new().with_function(SLOT0, 7);
    host.d0_failures = 1;
    host.hold.insert(MessageType::BUS_D0EXIT);
    let mut vm = booted(KernelModel::Linux63, host);
    assert!(vm.guest.runnable().is_empty());
    let deadline = vm.guest.next_deadline().expect("a timed wait");
    assert!(deadline >= Duration::from_secs(10));
    assert!(
        vm.guest
            .blocked()
            .iter()
            .any(|(c, _)| *c == ContextId::ProbePath)
    );
    vm.guest.advance_time(deadline);
    vm.run(PROMPT);
    assert_eq!(vm.guest.failure(), None, "{}", vm.trace());
    assert_eq!(vm.guest.probe_result(), Some(Err(-71)));
    assert_eq!(vm.guest.next_deadline(), None);
}

/// A host that never answers QUERY_RESOURCE_REQUIREMENTS leaves the probe path waiting for
/// the survey and the work for the reply; the scheduler's hang declaration names them.
#[test]
fn a_host_that_never_answers_is_a_hang() {
    let mut host = FakeHost::new().with_function(SLOT0, 7);
    host.hold.insert(MessageType::QUERY_RESOURCE_REQUIREMENTS);
    let mut vm = booted(KernelModel::Linux62, host);
    assert!(vm.guest.runnable().is_empty());
    let blocked: Vec<ContextId> = vm.guest.blocked().iter().map(|(c, _)| *c).collect();
    assert_eq!(blocked, vec![ContextId::ProbePath, ContextId::Workqueue]);
    vm.guest.declare_hang();
    assert_eq!(vm.failure_kind(), Some(FailureKind::Hang));
}

/// The messages follow the negotiated version: 1.1 uses RESOURCES_ASSIGNED and
/// CREATE_INTERRUPT_MESSAGE, 1.2 the second forms, 1.4 CREATE_INTERRUPT_MESSAGE3.
#[test]
fn messages_follow_the_negotiated_version() {
    let cases = [
        (
            ProtocolVersion::V1_1,
            MessageType::RESOURCES_ASSIGNED,
            MessageType::CREATE_INTERRUPT_MESSAGE,
            4,
        ),
        (
            ProtocolVersion::V1_2,
            MessageType::RESOURCES_ASSIGNED2,
            MessageType::CREATE_INTERRUPT_MESSAGE2,
            3,
        ),
        (
            ProtocolVersion::V1_4,
            MessageType::RESOURCES_ASSIGNED2,
            MessageType::CREATE_INTERRUPT_MESSAGE3,
            1,
        ),
    ];
    for (max, resources, interrupt, offers) in cases {
        let mut host = FakeHost::new().with_function(SLOT0, 7);
        host.max_version = Some(max);
        let vm = booted(KernelModel::Linux63, host);
        assert_eq!(vm.guest.failure(), None, "{}", vm.trace());
        assert_eq!(vm.guest.protocol_version(), Some(max));
        assert_eq!(vm.host.sent(MessageType::QUERY_PROTOCOL_VERSION), offers);
        assert_eq!(vm.host.sent(resources), 1);
        assert_eq!(vm.host.sent(interrupt), 1);
    }
}

/// A host that no longer lists a bound function and then ejects it breaks both kernels: the
/// relations work unlinks the child, and the eject work unlinks it a second time.
#[test]
fn relations_dropping_a_function_before_its_eject_corrupt_the_list() {
    for model in [KernelModel::Linux62, KernelModel::Linux63] {
        let mut vm = booted(model, FakeHost::new().with_function(SLOT0, 7));
        vm.host.functions.get_mut(&SLOT0).unwrap().listed = false;
        vm.host.send_relations();
        vm.host.eject(SLOT0);
        vm.run(PROMPT);
        let f = vm.guest.failure().expect("both kernels fail");
        assert_eq!(f.kind, FailureKind::ListCorruption, "{}", vm.trace());
        assert_eq!(f.function, "hv_eject_device_work");
    }
}

/// A relations message that changes the identity in a slot without an EJECT leaves the
/// driver bound to a child that no longer exists (both kernels): a `ghost_device`.
#[test]
fn identity_change_without_eject_leaves_a_ghost_device() {
    for model in [KernelModel::Linux62, KernelModel::Linux63] {
        let mut vm = booted(model, FakeHost::new().with_function(SLOT0, 7));
        vm.host.functions.get_mut(&SLOT0).unwrap().serial = 9;
        vm.host.send_relations();
        vm.run(PROMPT);
        assert_eq!(vm.guest.failure(), None, "{}", vm.trace());
        let f = vm.guest.check_end_state().expect("a ghost device");
        // The guest holds the function: a ghost, not a leak (memory only).
        assert_eq!(f.kind, FailureKind::GhostDevice);
    }
}

/// Two BUS_RELATIONS in quick succession during the survey do not reach the C1 window on
/// their own: the first work to finish takes `survey_event`, later ones find it empty.
#[test]
fn two_relations_during_probe_do_not_reach_the_c1_window() {
    for first in [ContextId::ProbePath, ContextId::Workqueue] {
        let mut vm = Vm::new(
            KernelModel::Linux62,
            FakeHost::new().with_function(SLOT0, 7),
        );
        assert!(vm.run_until(&[ContextId::ProbePath], |vm| {
            vm.host.sent(MessageType::QUERY_BUS_RELATIONS) == 1
        }));
        assert!(vm.step(ContextId::ChannelCallback));
        vm.host.send_relations();
        vm.run(&[first, ContextId::ChannelCallback]);
        assert_eq!(vm.guest.failure(), None, "{}", vm.trace());
        assert_eq!(vm.guest.probe_result(), Some(Ok(())));
    }
}

/// A second EJECT for a function whose eject work is still queued makes
/// `hv_pci_eject_device` re-initialise a work item that is on the worklist (both kernels).
#[test]
fn a_second_eject_while_the_first_is_queued_corrupts_the_worklist() {
    for model in [KernelModel::Linux62, KernelModel::Linux63] {
        let mut vm = booted(model, FakeHost::new().with_function(SLOT0, 7));
        vm.host.eject(SLOT0);
        vm.host.eject(SLOT0);
        vm.run(PROMPT);
        let f = vm.guest.failure().expect("both kernels fail");
        assert_eq!(f.kind, FailureKind::ListCorruption, "{}", vm.trace());
        assert_eq!(f.context, ContextId::ChannelCallback);
    }
}

/// A second EJECT after the first eject work started (it is removing the driver) queues the
/// work again; its second run unlinks the child a second time (both kernels).
#[test]
fn a_second_eject_while_the_first_runs_unlinks_twice() {
    for model in [KernelModel::Linux62, KernelModel::Linux63] {
        let mut vm = booted(model, FakeHost::new().with_function(SLOT0, 7));
        vm.host.eject(SLOT0);
        assert!(vm.run_until(PROMPT, |vm| {
            vm.guest
                .runnable()
                .contains(&ContextId::Driver(slot(SLOT0)))
        }));
        vm.host.eject(SLOT0);
        vm.run(PROMPT);
        let f = vm.guest.failure().expect("both kernels fail");
        assert_eq!(f.kind, FailureKind::ListCorruption, "{}", vm.trace());
        assert_eq!(f.function, "hv_eject_device_work");
    }
}

/// A host that never answers CREATE_INTERRUPT_MESSAGE leaves 6.3's driver spinning: it stays
/// runnable but cannot progress, which `spinning` reports so a scheduler can call it a hang.
#[test]
fn an_unanswered_interrupt_request_spins() {
    let mut host = FakeHost::new().with_function(SLOT0, 7);
    host.hold.insert(MessageType::CREATE_INTERRUPT_MESSAGE3);
    let mut vm = Vm::new(KernelModel::Linux63, host);
    assert!(vm.run_until(
        PROMPT,
        |vm| vm.host.sent(MessageType::CREATE_INTERRUPT_MESSAGE3) == 1
    ));
    let driver = ContextId::Driver(slot(SLOT0));
    for _ in 0..3 {
        assert!(vm.step(driver));
    }
    assert_eq!(vm.guest.runnable(), vec![driver]);
    assert_eq!(vm.guest.spinning(), vec![driver]);
    vm.host.release_held();
    vm.deliver();
    assert!(vm.guest.spinning().is_empty());
    vm.run(PROMPT);
    assert_eq!(vm.guest.failure(), None, "{}", vm.trace());
    assert_eq!(vm.guest.probe_result(), Some(Ok(())));
}

/// Transaction ids are reused most-recently-freed first, as the channel's requestor does, so
/// a duplicated completion completes whichever request holds the id now: here a second copy
/// of the QUERY_RESOURCE_REQUIREMENTS completion ends the wait for BUS_D0ENTRY, and the guest
/// moves on to RESOURCES_ASSIGNED while the host has not answered D0 entry.
#[test]
fn a_duplicated_completion_completes_the_request_that_reused_its_id() {
    let mut host = FakeHost::new().with_function(SLOT0, 7);
    host.hold.insert(MessageType::QUERY_RESOURCE_REQUIREMENTS);
    host.hold.insert(MessageType::BUS_D0ENTRY);
    let mut vm = Vm::new(KernelModel::Linux63, host);
    assert!(vm.run_until(PROMPT, |vm| !vm.host.held.is_empty()));
    let qrr = vm.host.held.remove(0);
    vm.guest.receive(qrr.clone());
    assert!(vm.run_until(PROMPT, |vm| vm.host.sent(MessageType::BUS_D0ENTRY) == 1));
    vm.run(PROMPT);
    assert_eq!(vm.host.sent(MessageType::RESOURCES_ASSIGNED2), 0);
    vm.guest.receive(qrr);
    vm.run(PROMPT);
    assert_eq!(
        vm.host.sent(MessageType::RESOURCES_ASSIGNED2),
        1,
        "{}",
        vm.trace()
    );
    assert_eq!(
        vm.host.held.len(),
        1,
        "the real D0 completion is still held"
    );
}

/// A cloned guest continues exactly like the original: forking at a choice point and taking
/// the same choices gives the same run.
#[test]
fn a_cloned_guest_runs_like_the_original() {
    let mut host = FakeHost::new().with_function(SLOT0, 7);
    host.hold.insert(MessageType::CREATE_INTERRUPT_MESSAGE3);
    let mut vm = Vm::new(KernelModel::Linux62, host);
    assert!(vm.run_until(
        PROMPT,
        |vm| vm.host.sent(MessageType::CREATE_INTERRUPT_MESSAGE3) == 1
    ));
    let mut twin = vm.guest.clone();
    vm.host.eject(SLOT0);
    for p in vm.host.to_guest.iter().cloned() {
        twin.receive(p);
    }
    vm.deliver();
    let mut host_a = FakeHost::new().with_function(SLOT0, 7);
    let mut host_b = FakeHost::new().with_function(SLOT0, 7);
    for _ in 0..20 {
        let (Some(a), Some(b)) = (
            vm.guest.runnable().first().copied(),
            twin.runnable().first().copied(),
        ) else {
            break;
        };
        assert_eq!(a, b);
        vm.guest.step(a, &mut host_a);
        twin.step(b, &mut host_b);
    }
    assert_eq!(vm.guest.trace(), twin.trace());
    assert_eq!(vm.failure_kind(), Some(FailureKind::NullDeref));
    assert_eq!(vm.guest.failure(), twin.failure());
}
