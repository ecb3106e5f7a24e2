//! The host's protocol exchanges, message by message.

mod common;

use common::*;
use host_sim::*;
use vmbus_channel::PacketKind;
use vpci_protocol::*;

/// A host told to accept only 1.1 and 1.2 refuses Linux's 1.4 and 1.3 with REVISION_MISMATCH
/// (naming its own highest version) and accepts 1.2.
#[test]
fn negotiation_with_a_restricted_version_set() {
    let mut g = Guest::new(BusConfig {
        versions: vec![ProtocolVersion::V1_1, ProtocolVersion::V1_2],
        ..BusConfig::default()
    });
    for v in [ProtocolVersion::V1_4, ProtocolVersion::V1_3] {
        let id = g.request(query_version(v));
        let c = g.expect_completion(id);
        assert_eq!(c.status, Status::REVISION_MISMATCH);
        let CompletionBody::ProtocolVersion(r) = c.body else {
            panic!("{c:?}")
        };
        assert_eq!(r.body.protocol_version.get(), ProtocolVersion::V1_2.0);
        assert_eq!(g.bus.version(), None);
    }
    let id = g.request(query_version(ProtocolVersion::V1_2));
    assert_eq!(g.expect_completion(id).status, Status::SUCCESS);
    assert_eq!(g.bus.version(), Some(ProtocolVersion::V1_2));
    assert!(g.has_event(|e| matches!(
        e,
        HostEventKind::Negotiated {
            version: ProtocolVersion::V1_2
        }
    )));
}

/// Before a version is agreed the host refuses everything else with BAD_DATA.
#[test]
fn messages_before_negotiation_are_refused() {
    let mut g = Guest::with_functions(&[1]);
    let id = g.request(qrr(1));
    assert_eq!(g.expect_completion(id).status, Status::BAD_DATA);
    assert!(g.has_event(|e| matches!(e, HostEventKind::GuestError(GuestError::NotNegotiated(_)))));
    g.send(query_relations());
    assert!(g.take().is_empty(), "no relations before negotiation");
}

/// From 1.3 the survey is answered with BUS_RELATIONS2, carrying each function's identity
/// from its config space, its serial and its NUMA node.
#[test]
fn survey_from_1_3_is_bus_relations2() {
    let mut spec = FunctionSpec::nic(2).with_serial(0x77);
    spec.numa_node = Some(3);
    let mut g = Guest::new(BusConfig {
        functions: vec![FunctionSpec::nic(1), spec],
        ..BusConfig::default()
    });
    let id = g.request(query_version(ProtocolVersion::V1_4));
    g.expect_completion(id);
    g.send(query_relations());
    let out = g.take();
    assert_eq!(out.len(), 1);
    let Message::BusRelations2(r) = g.decode_message(&out[0]) else {
        panic!("{out:?}")
    };
    assert_eq!(r.functions.len(), 2);
    let f = &r.functions[1];
    assert_eq!((f.v_id.get(), f.d_id.get()), (0x15b3, 0x101a));
    assert_eq!((f.base_class, f.subclass), (2, 0));
    assert_eq!(f.subsystem_id.get(), 0x0001_15b3);
    assert_eq!((f.wslot, f.ser.get()), (slot(2), 0x77));
    assert_eq!((f.flags.get(), f.virtual_numa_node.get()), (1, 3));
    assert_eq!(r.functions[0].flags.get(), 0, "no NUMA node given");
}

/// Below 1.3 the survey is answered with BUS_RELATIONS.
#[test]
fn survey_below_1_3_is_bus_relations() {
    let mut g = Guest::new(BusConfig {
        versions: vec![ProtocolVersion::V1_1, ProtocolVersion::V1_2],
        functions: vec![FunctionSpec::nic(4)],
        ..BusConfig::default()
    });
    let id = g.request(query_version(ProtocolVersion::V1_2));
    g.expect_completion(id);
    g.send(query_relations());
    let out = g.take();
    let Message::BusRelations(r) = g.decode_message(&out[0]) else {
        panic!("{out:?}")
    };
    assert_eq!(r.functions[0].wslot, slot(4));
}

/// BUS_D0ENTRY makes the host send the relations a second time, and only then complete.
#[test]
fn d0_entry_sends_relations_again_then_completes() {
    let mut g = Guest::with_functions(&[1]);
    g.probe_to_survey(ProtocolVersion::V1_4);
    let id = g.request(d0_entry(0xf_e000_0000));
    let out = g.take();
    assert_eq!(out.len(), 2, "{out:?}");
    assert_eq!(relation_slots(&g.decode_message(&out[0])), [slot(1)]);
    assert_eq!(out[1].kind, PacketKind::Completion);
    assert_eq!(out[1].transaction_id, id);
    assert_eq!(g.decode_completion(&out[1]).status, Status::SUCCESS);
    assert_eq!(g.bus.d0_mmio_base(), Some(0xf_e000_0000));
    let id = g.request(encode(&Message::BusD0Exit(Fixed::new(wire::Empty {}))));
    assert_eq!(g.expect_completion(id).status, Status::SUCCESS);
    assert_eq!(g.bus.d0_mmio_base(), None);
}

/// QUERY_RESOURCE_REQUIREMENTS reports the probed BARs of the function's BAR sizes.
#[test]
fn requirements_report_probed_bars() {
    let mut spec = FunctionSpec::nic(1);
    spec.bars.push(BarSpec {
        size: 0x4000,
        bits64: false,
        prefetchable: false,
    });
    let mut g = Guest::new(BusConfig {
        functions: vec![spec],
        ..BusConfig::default()
    });
    let id = g.request(query_version(ProtocolVersion::V1_4));
    g.expect_completion(id);
    let id = g.request(qrr(1));
    let c = g.expect_completion(id);
    let CompletionBody::ResourceRequirements(r) = c.body else {
        panic!("{c:?}")
    };
    let probed: Vec<u32> = r.body.probed_bar.iter().map(|b| b.get()).collect();
    assert_eq!(
        probed,
        [0xfff0_000c, 0xffff_ffff, 0xffff_c000, 0, 0, 0],
        "1 MiB 64-bit prefetchable, then 16 KiB 32-bit"
    );
}

/// A request for a slot the host does not have fails with BAD_DATA by default, or with
/// the configured status, or gets no answer at all.
#[test]
fn unknown_slot_policy() {
    for (policy, expect) in [
        (UnknownSlot::default(), Some(Status::BAD_DATA)),
        (
            UnknownSlot::Fail(Status::UNSUCCESSFUL.0),
            Some(Status::UNSUCCESSFUL),
        ),
        (UnknownSlot::Ignore, None),
    ] {
        let mut g = Guest::new(BusConfig {
            functions: vec![FunctionSpec::nic(1)],
            policy: HostPolicy {
                unknown_slot: policy,
                ..HostPolicy::default()
            },
            ..BusConfig::default()
        });
        let id = g.request(query_version(ProtocolVersion::V1_4));
        g.expect_completion(id);
        let id = g.request(create_interrupt2(5, 0x30, 0));
        match expect {
            Some(status) => assert_eq!(g.expect_completion(id).status, status),
            None => assert!(g.take().is_empty()),
        }
        assert_eq!(g.bus.counters().unknown_slot, 1);
    }
}

/// RESOURCES_ASSIGNED2 in Linux's form programs the BARs (a 64-bit BAR above 4 GiB across
/// both registers) and is answered with success and the translated resources; the MMIO
/// address then resolves to the function's BAR.
#[test]
fn resources_assigned_programs_bars() {
    let mut g = Guest::with_functions(&[1]);
    g.probe_to_survey(ProtocolVersion::V1_4);
    g.enter_d0(0xfe00_0000);
    let id = g.request(resources_assigned2(1, 0x1_0000_0000, 1 << 20));
    let c = g.expect_completion(id);
    assert_eq!(c.status, Status::SUCCESS);
    let CompletionBody::ResourcesAssigned(r) = c.body else {
        panic!("{c:?}")
    };
    assert_eq!(r.head.wslot, slot(1));
    assert_eq!(r.head.memory_range[0].address.get(), 0x1_0000_0000);
    assert_eq!(g.bus.config_read(slot(1), 0x10, 4), Ok(0x0000_000c));
    assert_eq!(g.bus.config_read(slot(1), 0x14, 4), Ok(0x1));
    assert_eq!(
        g.bus.resolve_mmio(0x1_0000_2000),
        Some((slot(1), 0, 0x2000))
    );
    assert_eq!(g.bus.resolve_mmio(0x1_0010_0000), None, "past the BAR");
    let id = g.request(slot_msg(Message::ResourcesReleased, 1));
    assert_eq!(g.expect_status(id), Status::SUCCESS);
    assert_eq!(g.bus.resolve_mmio(0x1_0000_2000), None, "released");
}

/// CREATE_INTERRUPT_MESSAGE (1, 2 and 3) is answered with an x86 address/data pair:
/// 0xFEE00000 | APIC id << 12, and the vector; the function's table holds it until
/// DELETE_INTERRUPT_MESSAGE, and deleting an unknown pair is an error.
#[test]
fn interrupts_are_created_and_deleted() {
    let mut g = Guest::with_functions(&[1]);
    g.probe_to_survey(ProtocolVersion::V1_4);
    let reply = |c: Completion| match c.body {
        CompletionBody::CreateInterrupt(r) => {
            (r.body.int_desc.address.get(), r.body.int_desc.data.get())
        }
        other => panic!("{other:?}"),
    };
    let id = g.request(create_interrupt2(1, 0x30, 3));
    assert_eq!(reply(g.expect_completion(id)), (0xFEE0_3000, 0x30));
    let id = g.request(create_interrupt(1, 0x31, 0b100));
    assert_eq!(reply(g.expect_completion(id)), (0xFEE0_2000, 0x31));
    let id = g.request(create_interrupt3(1, 0x1234, 0));
    assert_eq!(reply(g.expect_completion(id)), (0xFEE0_0000, 0x1234));
    assert_eq!(g.bus.interrupts(slot(1)).len(), 3);

    // Linux sends the delete without asking for a completion.
    g.send(delete_interrupt(1, 0xFEE0_3000, 0x30));
    assert!(g.take().is_empty());
    assert_eq!(g.bus.interrupts(slot(1)).len(), 2);
    let id = g.request(delete_interrupt(1, 0xFEE0_3000, 0x30));
    assert_eq!(g.expect_status(id), Status::BAD_DATA);
    assert!(g.has_event(|e| matches!(
        e,
        HostEventKind::GuestError(GuestError::UnknownInterrupt { .. })
    )));
}

/// At protocol 1.1 Linux asks for an interrupt with an all-ones processor mask
/// (`CPU_AFFINITY_ALL`, "any processor"): the host maps it, to processor 0, as Hyper-V does;
/// a mask naming 33 processors is still refused.
#[test]
fn a_1_1_interrupt_for_any_processor_is_mapped() {
    let mut g = Guest::new(BusConfig {
        versions: vec![ProtocolVersion::V1_1],
        functions: vec![FunctionSpec::nic(1)],
        ..BusConfig::default()
    });
    g.probe_to_survey(ProtocolVersion::V1_1);
    let id = g.request(create_interrupt(1, 0x41, u64::MAX));
    let c = g.expect_completion(id);
    assert_eq!(c.status, Status::SUCCESS);
    let CompletionBody::CreateInterrupt(r) = c.body else {
        panic!("{c:?}")
    };
    assert_eq!(r.body.int_desc.address.get(), 0xFEE0_0000);
    let id = g.request(create_interrupt(1, 0x42, (1u64 << 33) - 1));
    assert_eq!(g.expect_completion(id).status, Status::BAD_DATA);
}

/// Function 0 of a device with other functions on the bus says so in its header type (bit 7
/// of the byte at 0x0E), in every read width that covers it, so that a PCI core scans the
/// device's other functions; a single-function device and function 1 do not.
#[test]
fn multi_function_bit_in_the_header_type() {
    let f1 = FunctionSpec::nic(WinSlot::new(2, 1).raw());
    let mut g = Guest::new(BusConfig {
        functions: vec![FunctionSpec::nic(1), FunctionSpec::nic(2), f1],
        ..BusConfig::default()
    });
    g.probe_to_survey(ProtocolVersion::V1_4);
    g.enter_d0(0xf_e000_0000);
    assert_eq!(g.bus.config_read(slot(2), 0x0e, 1), Ok(0x80));
    assert_eq!(
        g.bus.config_read(slot(2), 0x0c, 4).map(|v| v >> 16 & 0xff),
        Ok(0x80)
    );
    assert_eq!(
        g.bus.config_read(slot(2), 0x0e, 2).map(|v| v & 0xff),
        Ok(0x80)
    );
    assert_eq!(g.bus.config_read(slot(1), 0x0e, 1), Ok(0));
    assert_eq!(g.bus.config_read(WinSlot::new(2, 1), 0x0e, 1), Ok(0));
}

/// The interrupt table is bounded: past the policy's limit requests fail with BAD_DATA.
#[test]
fn interrupt_table_is_bounded() {
    let mut g = Guest::new(BusConfig {
        functions: vec![FunctionSpec::nic(1)],
        policy: HostPolicy {
            max_interrupts_per_function: 2,
            ..HostPolicy::default()
        },
        ..BusConfig::default()
    });
    g.probe_to_survey(ProtocolVersion::V1_4);
    for v in 0..2 {
        let id = g.request(create_interrupt2(1, 0x40 + v, 0));
        assert_eq!(g.expect_completion(id).status, Status::SUCCESS);
    }
    let id = g.request(create_interrupt2(1, 0x50, 0));
    assert_eq!(g.expect_completion(id).status, Status::BAD_DATA);
    assert_eq!(g.bus.interrupts(slot(1)).len(), 2);
}

/// POWER_STATE_CHANGE to D0 or D3 succeeds and reports the resulting state; any other state
/// is BAD_DATA. WRITE_BLOCK then READ_BLOCK returns the bytes written.
#[test]
fn power_and_config_blocks() {
    let mut g = Guest::with_functions(&[1]);
    g.probe_to_survey(ProtocolVersion::V1_4);
    let power = |state: u32| {
        encode(&Message::PowerStateChange(Fixed::new(
            wire::PowerStateBody {
                wslot: slot(1),
                power_state: state.into(),
            },
        )))
    };
    let id = g.request(power(4));
    let c = g.expect_completion(id);
    let CompletionBody::PowerStateChange(r) = c.body else {
        panic!("{c:?}")
    };
    assert_eq!(r.body.resultant_state.get(), 4);
    let id = g.request(power(2));
    assert_eq!(g.expect_completion(id).status, Status::BAD_DATA);

    let id = g.request(encode(&Message::WriteBlock(WriteBlock {
        head: wire::WriteBlockHead {
            block_id: 3.into(),
            wslot: slot(1),
            byte_count: 4.into(),
        },
        bytes: vec![1, 2, 3, 4],
        trailing: Vec::new(),
    })));
    assert_eq!(g.expect_completion(id).status, Status::SUCCESS);
    let id = g.request(encode(&Message::ReadBlock(Fixed::new(
        wire::ReadBlockBody {
            block_id: 3.into(),
            wslot: slot(1),
            bytes_requested: 6.into(),
        },
    ))));
    let c = g.expect_completion(id);
    let CompletionBody::ReadBlock(bytes) = c.body else {
        panic!("{c:?}")
    };
    assert_eq!(&bytes[..6], &[1, 2, 3, 4, 0, 0]);
}

/// Inspect shows the bus's functions, ejects and counters.
#[test]
fn inspect_tree() {
    let mut g = Guest::with_functions(&[1]);
    g.probe_to_survey(ProtocolVersion::V1_4);
    g.act(HostAction::Eject { slot: 1 }).unwrap();
    let tree = inspect::Inspect::inspect(&g.bus);
    assert_eq!(tree.query("version").unwrap().to_json(), "1.4");
    assert!(tree.query("functions/01.0/device/vendor_id").is_ok());
    assert!(tree.query("ejects/01.0/deadline").is_ok());
    assert_eq!(
        tree.query("counters/packets_received").unwrap().to_json(),
        3
    );
}

/// Guest MMIO reaches config space through the window Linux uses (select the slot at the
/// window's base, access config at +0x1000) and reaches BARs at their programmed addresses;
/// an address nothing decodes is a fault, and the window goes away at D0 exit.
#[test]
fn config_window_and_bar_mmio() {
    let base = 0xfe00_0000;
    let mut g = Guest::with_functions(&[1, 2]);
    g.probe_to_survey(ProtocolVersion::V1_4);
    g.request(d0_entry(base));
    g.take();
    g.bus.mmio_write(base, &2u32.to_le_bytes()).unwrap();
    let mut sel = [0u8; 4];
    g.bus.mmio_read(base, &mut sel).unwrap();
    assert_eq!(u32::from_le_bytes(sel), 2);
    let mut id = [0u8; 4];
    g.bus.mmio_read(base + 0x1000, &mut id).unwrap();
    assert_eq!(u32::from_le_bytes(id), 0x101a_15b3);
    let mut word = [0u8; 2];
    g.bus.mmio_read(base + 0x1002, &mut word).unwrap();
    assert_eq!(u16::from_le_bytes(word), 0x101a);
    // Program BAR 0 of slot 2 through the window, then write to it by address.
    g.bus
        .mmio_write(base + 0x1010, &0xc000_0000u32.to_le_bytes())
        .unwrap();
    g.bus
        .mmio_write(base + 0x1014, &0u32.to_le_bytes())
        .unwrap();
    assert_eq!(
        g.bus.mmio_target(0xc000_0010),
        Some(MmioTarget::Bar(slot(2), 0, 0x10))
    );
    g.bus.mmio_write(0xc000_0010, &[1, 2, 3, 4]).unwrap();
    let mut back = [0u8; 4];
    g.bus.bar_read(slot(2), 0, 0x10, &mut back).unwrap();
    assert_eq!(back, [1, 2, 3, 4]);
    assert_eq!(g.bus.bar_read_value(slot(2), 0, 0x11, 2), Ok(0x0302));
    g.bus
        .bar_write_value(slot(2), 0, 0x10, 1, 0xffff_ff09)
        .unwrap();
    assert_eq!(g.bus.bar_read_value(slot(2), 0, 0x10, 4), Ok(0x0403_0209));
    assert!(g.bus.bar_read_value(slot(2), 0, 0x10, 3).is_err());
    assert_eq!(
        g.bus.mmio_read(0x1234_0000, &mut back).unwrap_err().reason,
        UnmappedReason::NoDevice
    );
    assert!(g.bus.mmio_read(base + 0x1000, &mut [0u8; 3]).is_err());
    let id = g.request(encode(&Message::BusD0Exit(Fixed::new(wire::Empty {}))));
    g.expect_completion(id);
    assert_eq!(
        g.bus
            .mmio_read(base + 0x1000, &mut back)
            .unwrap_err()
            .reason,
        UnmappedReason::NoDevice
    );
}

/// A configuration that cannot make a bus is a typed error naming the bus and the slot.
#[test]
fn bad_configs_are_typed_errors() {
    let no_versions = BusConfig {
        versions: vec![],
        ..BusConfig::default()
    };
    assert!(matches!(
        HostBus::new(no_versions),
        Err(ConfigError::NoVersions(_))
    ));
    let twice = BusConfig {
        functions: vec![FunctionSpec::nic(1), FunctionSpec::nic(1)],
        ..BusConfig::default()
    };
    assert!(matches!(
        HostBus::new(twice),
        Err(ConfigError::DuplicateSlot { slot: 1, .. })
    ));
    let mut bad = FunctionSpec::nic(2);
    bad.bars[0].size = 100;
    let err = HostBus::new(BusConfig {
        functions: vec![bad],
        ..BusConfig::default()
    })
    .unwrap_err();
    assert!(err.to_string().contains("slot 0x2"), "{err}");
}

/// A device the host sees only through the `Device` trait: relations describe it from its
/// config space, its BARs answer through it, and it cannot be re-serialed from a spec.
#[test]
fn custom_device_behind_the_trait() {
    struct Counter {
        reads: u32,
    }
    impl Device for Counter {
        fn config_read(&mut self, offset: u16) -> u32 {
            match offset {
                0 => 0xabcd_1414,
                8 => 0x0c03_0000,
                _ => 0,
            }
        }
        fn config_write(&mut self, _offset: u16, _value: u32, _mask: u32) {}
        fn probed_bars(&self) -> [u32; 6] {
            [0xffff_f000, 0, 0, 0, 0, 0]
        }
        fn bar_read(&mut self, bar: u8, _offset: u64, data: &mut [u8]) -> Result<(), Unmapped> {
            if bar != 0 {
                return Err(UnmappedReason::NoSuchBar.into());
            }
            self.reads += 1;
            data.fill(self.reads as u8);
            Ok(())
        }
        fn bar_write(&mut self, _bar: u8, _offset: u64, _data: &[u8]) -> Result<(), Unmapped> {
            Ok(())
        }
    }
    let mut g = Guest::new(BusConfig::default());
    g.bus
        .hot_add_device(
            g.now,
            FunctionIdentity {
                slot: slot(3),
                serial: 5,
                numa_node: None,
            },
            Box::new(Counter { reads: 0 }),
        )
        .unwrap();
    let id = g.request(query_version(ProtocolVersion::V1_4));
    g.expect_completion(id);
    g.send(query_relations());
    let out = g.take();
    let Message::BusRelations2(r) = g.decode_message(&out[0]) else {
        panic!("{out:?}")
    };
    let f = &r.functions[0];
    assert_eq!(
        (f.v_id.get(), f.d_id.get(), f.base_class),
        (0x1414, 0xabcd, 0x0c)
    );
    let mut buf = [0u8; 2];
    g.bus.bar_read(slot(3), 0, 0, &mut buf).unwrap();
    g.bus.bar_read(slot(3), 0, 0, &mut buf).unwrap();
    assert_eq!(buf, [2, 2]);
    assert_eq!(
        g.act(HostAction::Reserial { slot: 3, serial: 1 }),
        Err(ActionError::NoSpec(3))
    );
}

/// The config window is backed only in D0: before D0 entry and after D0 exit a config
/// access faults. At rescind, an eager host (teardown at EJECT) pulls the window and every
/// BAR; a patient one leaves them.
#[test]
fn config_window_mapping() {
    for teardown in [Teardown::AtEject, Teardown::AtEjectionComplete] {
        let mut g = Guest::new(BusConfig {
            functions: vec![FunctionSpec::nic(1)],
            policy: HostPolicy {
                teardown,
                ..HostPolicy::default()
            },
            ..BusConfig::default()
        });
        g.probe_to_survey(ProtocolVersion::V1_4);
        assert_eq!(
            g.bus.config_read(slot(1), 0, 4).unwrap_err().reason,
            UnmappedReason::WindowUnmapped
        );
        g.enter_d0(0xfe00_0000);
        assert_eq!(g.bus.config_read(slot(1), 0, 2), Ok(0x15b3));
        g.act(HostAction::Rescind {}).unwrap();
        let mut b = [0u8];
        match teardown {
            Teardown::AtEject => {
                assert_eq!(
                    g.bus.config_read(slot(1), 0, 2).unwrap_err().reason,
                    UnmappedReason::WindowUnmapped
                );
                assert_eq!(
                    g.bus.bar_read(slot(1), 0, 0, &mut b).unwrap_err().reason,
                    UnmappedReason::TornDown
                );
                assert!(g.has_event(|e| matches!(e, HostEventKind::BarsTornDown { .. })));
            }
            Teardown::AtEjectionComplete => {
                assert_eq!(g.bus.config_read(slot(1), 0, 2), Ok(0x15b3));
                g.bus.bar_read(slot(1), 0, 0, &mut b).unwrap();
            }
        }
    }
}
