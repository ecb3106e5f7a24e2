//! `petri replay --dump-rings` for the guest models: each bus's two ring images hold the
//! packets that crossed the guest's channel, in the order the replay shows them, and a long
//! run keeps only the newest ring's worth.

mod cli;

use cli::{petri, stderr, stdout};
use guest_linux::{GuestConfig, KernelModel};
use host_sim::{BusConfig, FunctionSpec, HostAction};
use petri::ring_dump::{dump_image, ring_image};
use petri::sched::Chooser;
use petri::trace::Lane;
use petri::vm::{RunLimits, Vm, VmSpec, describe};
use petri::wire::{RING_CAPACITY, RING_DATA_BYTES};
use std::time::Duration;
use vmbus_channel::Packet;
use vpci_protocol::{ProtocolVersion, Sender};
use vpci_relay::RelayConfig;

/// A message as both the replay and `petri ring dump` name it: the vPCI type, or `COMP`.
fn replay_name(label: &str) -> String {
    if label.starts_with("completion of ") {
        "COMP".to_owned()
    } else {
        label
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned()
    }
}

/// The messages of the replay's lines into the guest (`to_guest`) or out of it, in order.
fn replayed(text: &str, to_guest: bool) -> Vec<String> {
    text.lines()
        .filter_map(|line| {
            // `  #2      0.000 ms  host  -> guest  LABEL`: lanes are five columns wide.
            let (from, rest) = line.split_once(" ms  ")?.1.split_once(" -> ")?;
            let (to, label) = (rest.get(..5)?, rest.get(5..)?);
            let (from, to) = (from.trim(), to.trim());
            let crossed = if to_guest {
                to == "guest" && from != "guest"
            } else {
                from == "guest" && to != "guest"
            };
            (crossed && label.trim() != "rescind").then(|| replay_name(label.trim()))
        })
        .collect()
}

/// `petri ring dump`'s message names for one image, in ring order.
fn dumped(path: &std::path::Path, from: &str) -> Vec<String> {
    let out = petri(&["ring", "dump", "--from", from, &path.to_string_lossy()]);
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("one JSON object a line");
            match v["type"].as_str() {
                Some("DATA_INBAND") => v["vpci"]["type"].as_str().unwrap_or("?").to_owned(),
                other => other.unwrap_or("?").to_owned(),
            }
        })
        .collect()
}

/// c2 on both models, direct and through the relay: the replay writes bus 0's two images,
/// says how many packets each holds, and `petri ring dump` lists exactly the messages the
/// replay shows crossing the guest's channel, in the same order.
#[test]
fn model_replay_dumps_the_guest_channel() {
    for guest in ["6.2", "6.3"] {
        for relay in [false, true] {
            let dir = cli::temp(&format!("rings-{guest}-{relay}"), "model_dump");
            let _ = std::fs::remove_dir_all(&dir);
            let dir_text = dir.to_string_lossy().into_owned();
            let mut args = vec!["replay", "--seed", "0", "c2", "--guest", guest];
            if relay {
                args.push("--relay");
            }
            args.extend(["--dump-rings", &dir_text]);
            let out = petri(&args);
            assert!(out.status.success(), "{args:?}: {}", stderr(&out));
            let text = stdout(&out);
            assert!(
                text.contains("rebuilt from the recorded packets, all left unread"),
                "{text}"
            );
            for (file, from, to_guest) in [
                ("bus0-host-to-guest.ring", "host", true),
                ("bus0-guest-to-host.ring", "guest", false),
            ] {
                let what = format!("{guest} relay={relay} {file}");
                let expected = replayed(&text, to_guest);
                // The probe's exchange at least: version, relations, requirements, D0.
                assert!(expected.len() >= 4, "{what}: {expected:?}\n{text}");
                assert!(
                    text.contains(&format!("{file}: {} packets\n", expected.len())),
                    "{what}: {text}"
                );
                let listed = dumped(&dir.join(file), from);
                assert_eq!(listed, expected, "{what}");
            }
            let first_sent = dumped(&dir.join("bus0-guest-to-host.ring"), "guest");
            assert_eq!(
                first_sent.first().map(String::as_str),
                Some("PCI_QUERY_PROTOCOL_VERSION")
            );
            let _ = std::fs::remove_dir_all(&dir);
            if let Some(parent) = dir.parent() {
                let _ = std::fs::remove_dir(parent);
            }
        }
    }
}

fn long_spec(relay: bool) -> VmSpec {
    let mut guest = GuestConfig::new(KernelModel::Linux63);
    guest.trace = false;
    VmSpec {
        buses: vec![BusConfig {
            functions: vec![FunctionSpec::nic(1)],
            ..BusConfig::default()
        }],
        guest,
        relay: relay.then(RelayConfig::default),
        limits: RunLimits {
            max_steps: u64::MAX,
            max_time: Duration::from_secs(1_000_000),
        },
        record: true,
        chaos: None,
        stall: None,
        checks: Vec::new(),
        safeguards: vpci_relay::Safeguards::ALL_ON,
    }
}

/// 400 hot-plug cycles (several rings' worth of packets each way): the recording keeps at
/// most a ring's capacity per direction, older packets overwritten; what it keeps is exactly
/// the newest packets the trace shows crossing the channel, in order, and its image is one
/// ring (16 KiB of data) that reads back as those packets.
#[test]
fn long_run_keeps_only_the_newest_ring() {
    for relay in [false, true] {
        let mut vm = Vm::new(&long_spec(relay), Chooser::seeded(3)).unwrap();
        assert_eq!(vm.settle(), None);
        for cycle in 0..400 {
            vm.host_act(
                0,
                HostAction::HotAdd(FunctionSpec::nic(2).with_serial(cycle)),
            )
            .unwrap();
            assert_eq!(vm.settle(), None, "cycle {cycle}");
            vm.host_act(0, HostAction::Eject { slot: 2 }).unwrap();
            assert_eq!(vm.settle(), None, "cycle {cycle}");
        }
        let trace = vm.run().trace.expect("recorded");
        for to_guest in [true, false] {
            let what = format!("relay={relay} to_guest={to_guest}");
            let kept: Vec<&Packet> = trace.wire.packets(0, to_guest).collect();
            let all: Vec<&str> = trace
                .lines
                .iter()
                .filter(|l| {
                    let crossed = if to_guest {
                        l.to == Lane::Guest && l.from != Lane::Guest
                    } else {
                        l.from == Lane::Guest && l.to != Lane::Guest
                    };
                    crossed && l.label != "rescind"
                })
                .map(|l| l.label.as_str())
                .collect();
            let overwritten = trace.wire.overwritten(0, to_guest);
            assert!(overwritten > 0, "{what}: {} packets in all", all.len());
            assert!(trace.wire.bytes(0, to_guest) <= RING_CAPACITY, "{what}");
            assert_eq!(kept.len() as u64 + overwritten, all.len() as u64, "{what}");
            let newest = &all[all.len() - kept.len()..];
            let kept_labels: Vec<String> = kept.iter().map(|p| describe(p)).collect();
            assert_eq!(kept_labels, newest, "{what}");
            // Nearly full: the next older packet would not have fit.
            assert!(
                trace.wire.bytes(0, to_guest) > RING_CAPACITY - 512,
                "{what}: {}",
                trace.wire.bytes(0, to_guest)
            );
            let packets: Vec<Packet> = kept.into_iter().cloned().collect();
            let image = ring_image(&packets).unwrap();
            assert_eq!(image.len(), 4096 + RING_DATA_BYTES, "{what}");
            let from = if to_guest {
                Sender::Host
            } else {
                Sender::Guest
            };
            let n = dump_image(&image, ProtocolVersion::V1_4, from, |_| {}).unwrap();
            assert_eq!(n, packets.len(), "{what}");
        }
    }
}
