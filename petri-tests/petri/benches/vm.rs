//! petri's benchmarks: hot-plug cycles through host_sim -> relay -> the Linux 6.2 model, and
//! the probe of 64 buses through the relay against one bus (buses probe concurrently).
//!
//! The first is a wall-clock measurement (criterion); the second compares virtual times, so
//! its figure is exact and the same on every machine. A summary with both figures and their
//! targets is printed at the end.

use criterion::{Criterion, Throughput};
use guest_linux::{GuestConfig, KernelModel};
use host_sim::{BusConfig, FunctionSpec, HostAction, HostPolicy, Time};
use petri::sched::Chooser;
use petri::vm::{RunLimits, Vm, VmSpec};
use std::hint::black_box;
use std::time::{Duration, Instant};
use vpci_relay::RelayConfig;

fn spec(buses: usize, latency: Duration) -> VmSpec {
    let mut guest = GuestConfig::new(KernelModel::Linux62);
    guest.trace = false;
    VmSpec {
        buses: (0..buses)
            .map(|i| BusConfig {
                name: format!("vpci{i}"),
                functions: vec![FunctionSpec::nic(1)],
                policy: HostPolicy {
                    latency: Time(latency),
                    ..HostPolicy::default()
                },
                ..BusConfig::default()
            })
            .collect(),
        guest,
        relay: Some(RelayConfig::default()),
        limits: RunLimits {
            max_steps: u64::MAX,
            max_time: Duration::from_secs(1 << 40),
        },
        record: false,
        chaos: None,
        stall: None,
        checks: Vec::new(),
        safeguards: vpci_relay::Safeguards::ALL_ON,
    }
}

fn booted() -> Vm {
    let mut vm = Vm::new(&spec(1, Duration::ZERO), Chooser::seeded(1)).expect("valid spec");
    assert_eq!(vm.settle(), None);
    vm
}

/// One hot-add and eject of slot 2, run until the bus is quiet again.
fn cycle(vm: &mut Vm, serial: u32) {
    let _ = vm.host_act(
        0,
        HostAction::HotAdd(FunctionSpec::nic(2).with_serial(serial)),
    );
    let _ = vm.settle();
    let _ = vm.host_act(0, HostAction::Eject { slot: 2 });
    let _ = vm.settle();
    vm.forget_choices();
}

/// Virtual time until every bus's guest has probed.
fn probe_time(buses: usize) -> Duration {
    let mut vm =
        Vm::new(&spec(buses, Duration::from_millis(1)), Chooser::seeded(1)).expect("valid spec");
    assert_eq!(vm.settle(), None);
    (0..buses)
        .map(|b| vm.probed_at(b).expect("every bus probes"))
        .max()
        .unwrap_or_default()
}

/// Criterion's median estimate for a benchmark id, in nanoseconds, from its report files.
fn criterion_median_ns(id: &str) -> Option<f64> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target")
        });
    let path = target.join("criterion").join(id).join("new/estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["median"]["point_estimate"].as_f64()
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let mut group = c.benchmark_group("hotplug");
    group.throughput(Throughput::Elements(1));
    let mut vm = booted();
    let mut serial = 0u32;
    group.bench_function("add_eject_cycle_relay_linux62", |b| {
        b.iter(|| {
            serial = serial.wrapping_add(1);
            cycle(black_box(&mut vm), serial);
        })
    });
    group.finish();
    assert_eq!(vm.failure(), None, "the long run stayed healthy");

    // The summary reads criterion's median back; without it (a filtered run), a timed loop.
    let per_second = criterion_median_ns("hotplug/add_eject_cycle_relay_linux62")
        .map(|ns| 1e9 / ns)
        .unwrap_or_else(|| {
            let mut vm = booted();
            let n = 20_000u32;
            let start = Instant::now();
            for i in 0..n {
                cycle(&mut vm, i);
            }
            f64::from(n) / start.elapsed().as_secs_f64()
        });

    let one = probe_time(1);
    let many = probe_time(64);
    let ratio = many.as_secs_f64() / one.as_secs_f64();
    println!();
    println!("summary");
    println!(
        "  hot-plug add/eject cycles through host_sim -> relay -> linux-6.2: {per_second:.0}/s (target >= 100000/s)"
    );
    println!(
        "  probe with 1 ms host latency: 1 bus {:.1} ms, 64 buses {:.1} ms (virtual): ratio {ratio:.2} (target <= 1.3)",
        one.as_secs_f64() * 1000.0,
        many.as_secs_f64() * 1000.0
    );
    c.final_summary();
}
