//! The report parser against reports captured from real runs of the 5.10 driver.

use super::*;
use crate::{DriverVersion, Instrumentation};

/// A duplicated QUERY_RESOURCE_REQUIREMENTS completion on 5.10 (`hostile` response rule,
/// seed 1): the channel callback reads a request packet from a work item's dead frame.
const STACK: &str = include_str!("../testdata/asan_stack_use_after_scope_510.txt");
/// A duplicated BUS_D0ENTRY completion on 5.10 (seed 0): the callback reads the freed
/// request packet (the runtime's quarantine poisons freed blocks).
const HEAP: &str = include_str!("../testdata/asan_use_after_poison_510.txt");
fn exe() -> &'static Path {
    DriverVersion::Debian5_10.guest_executable_with(Instrumentation::Asan)
}

#[test]
fn frame_lines_parse() {
    let f = parse_frame("    #0 0x5555555608f6 in hv_pci_onchannelcallback /k/pci-hyperv.c:2513")
        .expect("frame");
    assert_eq!(f.index, 0);
    assert_eq!(f.function.as_deref(), Some("hv_pci_onchannelcallback"));
    assert_eq!(
        split_place(f.place.as_deref().unwrap_or("")),
        ("/k/pci-hyperv.c".to_owned(), 2513)
    );
    let f = parse_frame("    #3 0x7f (/lib/libc.so.6+0xa71f4)").expect("frame");
    assert_eq!(f.module, Some(("/lib/libc.so.6".to_owned(), 0xa71f4)));
    assert_eq!(
        split_place("/x/vmbus.c:67:3"),
        ("/x/vmbus.c".to_owned(), 67)
    );
    assert_eq!(parse_frame("#define x"), None);
    assert_eq!(parse_frame("  [32, 48) 'removed' (line 2121)"), None);
}

/// The whole report is kept, symbolised, without the shadow map: the access, the dead frame
/// and the variable in it, the threads' creation stacks, the summary.
#[test]
fn stack_report_whole_and_symbolised() {
    let r = sanitizer_report(STACK, exe()).expect("a report");
    assert!(
        r.headline
            .starts_with("AddressSanitizer: stack-use-after-scope"),
        "{}",
        r.headline
    );
    let t = &r.text;
    for key in [
        "ERROR: AddressSanitizer: stack-use-after-scope",
        "READ of size 8",
        "#0 hv_pci_onchannelcallback pci-hyperv.c:2513",
        "#1 tasklet_main shim/runtime/vmbus.c:67",
        "is located in stack of thread T2 at offset 96 in frame",
        "#0 pci_devices_present_work pci-hyperv.c:2115",
        "[64, 80) 'comp_pkt' (line 2011)",
        "[96, 120) 'pkt' (line 2015) <== Memory access",
        "Thread T2 created by T0 here:",
        "#4 hv_pci_probe pci-hyperv.c:3233",
        "SUMMARY: AddressSanitizer",
    ] {
        assert!(t.contains(key), "{key:?} missing from\n{t}");
    }
    assert!(!t.contains("Shadow byte"), "{t}");
    assert!(!t.contains("Addressable:"), "{t}");
    assert!(!t.contains("0x5555555608f6"), "frames keep no raw pc: {t}");
    assert!(!t.contains("==32004=="), "{t}");
    assert_eq!(r.frames.len(), 5);
    assert_eq!(r.frames[0].location.line, 2513);
    assert_eq!(
        r.object.as_deref(),
        Some(
            "[96, 120) 'pkt' (line 2015) in the stack frame of pci_devices_present_work pci-hyperv.c:2115"
        )
    );
}

/// A heap report names the region and its allocation stack, the driver's frame in it.
#[test]
fn heap_report_names_the_allocation() {
    let r = sanitizer_report(HEAP, exe()).expect("a report");
    assert!(
        r.text.contains("allocated by thread T0 here:"),
        "{}",
        r.text
    );
    assert!(
        r.text.contains("#4 hv_pci_enter_d0 pci-hyperv.c:2855"),
        "{}",
        r.text
    );
    assert_eq!(
        r.object.as_deref(),
        Some("0 bytes inside of 32-byte region, allocated in hv_pci_enter_d0 pci-hyperv.c:2855")
    );
}

/// Frames AddressSanitizer leaves as `(MODULE+0xOFF)` when it finds no symbolizer are
/// symbolised from the executable, inlined frames included; frames of other modules keep
/// their module and offset. (The captured report's frames, rewritten in that form with the
/// current build's addresses of the same functions, so the test follows rebuilds.)
#[test]
fn unsymbolised_frames_are_symbolised() {
    let exe = exe();
    let names = [
        "hv_pci_onchannelcallback",
        "tasklet_main",
        "pci_devices_present_work",
    ];
    let addrs = crate::forensics::testutil::function_addresses(exe, &names);
    let module = format!(
        "/elsewhere/{}",
        exe.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    );
    let raw = format!(
        "==7==ERROR: AddressSanitizer: stack-use-after-scope on address 0x7ffff49f5060\n\
         READ of size 8 at 0x7ffff49f5060 thread T1\n\
         \x20   #0 0x5555555608f6 ({module}+{:#x})\n\
         \x20   #1 0x55555556cfd4 ({module}+{:#x})\n\
         \x20   #2 0x7ffff76a71f4 (/lib/x86_64-linux-gnu/libc.so.6+0xa71f4)\n\
         \n\
         Address 0x7ffff49f5060 is located in stack of thread T2 at offset 96 in frame\n\
         \x20   #0 0x555555561fe2 in pci_devices_present_work ({module}+{:#x})\n",
        addrs[0], addrs[1], addrs[2]
    );
    let r = sanitizer_report(&raw, exe).expect("a report");
    assert!(
        r.text.contains("#0 hv_pci_onchannelcallback pci-hyperv.c:"),
        "{}",
        r.text
    );
    assert!(
        r.text.contains("#1 tasklet_main shim/runtime/vmbus.c:"),
        "{}",
        r.text
    );
    assert!(
        r.text.contains("#0 pci_devices_present_work pci-hyperv.c:"),
        "{}",
        r.text
    );
    assert!(
        !r.text.contains("+0x") || r.text.contains("#2 libc.so.6+0xa71f4"),
        "{}",
        r.text
    );
    assert!(r.text.contains("#2 libc.so.6+0xa71f4"), "{}", r.text);
    assert!(!r.text.contains("_ASAN+0x"), "{}", r.text);
    assert_eq!(r.frames.len(), 3);
    assert_eq!(r.frames[0].location.origin(), super::super::Origin::Driver);
    assert!(r.frames[0].location.line > 0);
}

#[test]
fn no_report_no_text() {
    assert_eq!(
        sanitizer_report("kshim: fault pc=0x1 addr=0x2 main=0x3\n", exe()),
        None
    );
}
