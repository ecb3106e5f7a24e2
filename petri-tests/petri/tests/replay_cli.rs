//! What a kernel developer meets first in `petri replay` and its chart: step numbers, the
//! choice points, one vocabulary (spec names, `01.0`, completions with their request and
//! status), script steps and chaos in scenario words, and a held change's release explained.

mod cli;

use cli::{petri, stdout, temp};

/// The replay of C2's crash numbers its steps, marks every choice point with what ran and
/// what else could have, and speaks one vocabulary.
#[test]
fn replay_points_at_the_race() {
    let out = petri(&["replay", "--seed", "0", "c2", "--guest", "6.2"]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("   #1 "), "step numbers: {text}");
    assert!(
        text.contains(">> choice 1: ran ") && text.contains("; could have run: bus 0 "),
        "choice points: {text}"
    );
    assert!(
        text.contains("host  -> guest  completion of PCI_CREATE_INTERRUPT_MESSAGE3 01.0: SUCCESS"),
        "completions name their request and status: {text}"
    );
    assert!(text.contains("guest -> host   PCI_BUS_D0ENTRY"), "{text}");
    assert!(
        text.contains(
            r#"script step 1 fires (received CREATE_INTERRUPT_MESSAGE* for slot 1): { kind = "eject", slot = 1 }"#
        ),
        "script steps in scenario words: {text}"
    );
    for old in ["completion 0x", "EJECT(1)", "script step 0"] {
        assert!(!text.contains(old), "{old:?} left in: {text}");
    }
}

/// Through the relay, the held EJECT's release says why it was let go, and BAR backings are
/// words, not Rust names.
#[test]
fn replay_explains_a_release() {
    let out = petri(&["replay", "--seed", "0", "c2", "--guest", "6.2", "--relay"]);
    let text = stdout(&out);
    assert!(
        text.contains("PCI_EJECT 01.0 held: not settled [held]"),
        "{text}"
    );
    assert!(
        text.contains("PCI_EJECT 01.0 released after 100 ms held: 01.0 settled after 100 ms quiet"),
        "{text}"
    );
    assert!(
        text.contains("01.0: BARs backed by the relay's shield"),
        "{text}"
    );
    assert!(
        !text.contains("Shield") && !text.contains("Device"),
        "{text}"
    );
}

/// A chaotic host's actions are written as a scenario writes them.
#[test]
fn chaos_in_scenario_words() {
    let out = petri(&["replay", "--seed", "1", "chaos", "--guest", "6.3"]);
    let text = stdout(&out);
    assert!(text.contains("chaos: { kind = "), "{text}");
    for debug in ["HotAdd", "Eject {", "SurpriseRemove", "Reserial"] {
        assert!(!text.contains(debug), "{debug:?} in: {text}");
    }
}

/// A direct run's chart has no relay legend; the crash's text is wrapped whole, with the
/// guest's last steps before it. A relayed chart keeps the legend.
#[test]
fn chart_shows_the_crash_in_context() {
    let path = temp("direct.svg", "crash");
    let p = path.to_str().unwrap();
    let out = petri(&[
        "replay", "--seed", "0", "c2", "--guest", "6.2", "--chart", p,
    ]);
    assert!(out.status.success());
    let svg = std::fs::read_to_string(&path).unwrap();
    assert!(
        !svg.contains("answered locally") && !svg.contains(">held<"),
        "{svg}"
    );
    assert!(
        svg.contains("the guest&#39;s last steps before it")
            || svg.contains("the guest's last steps before it")
    );
    assert!(svg.contains("driver[01.0] (hv_arch_irq_unmask)"), "{svg}");
    assert!(
        svg.contains("int_desc-&gt;address"),
        "the crash's text is whole: {svg}"
    );
    assert!(!svg.contains('…') || svg.contains(" …</text>"), "{svg}");
    assert!(!svg.contains("completion 0x"), "{svg}");
    let path = temp("relay.svg", "crash");
    let p = path.to_str().unwrap();
    petri(&[
        "replay", "--seed", "0", "c2", "--guest", "6.2", "--relay", "--chart", p,
    ]);
    let svg = std::fs::read_to_string(&path).unwrap();
    assert!(svg.contains("answered locally"), "{svg}");
    assert!(svg.contains("released after 100 ms held"), "{svg}");
}

/// `--mode direct|relay|both` is accepted alongside `--relay` and `--direct`, and the two
/// schedule options state their defaults in `--help` of run and demo.
#[test]
fn one_vocabulary_for_modes_and_schedules() {
    let out = petri(&[
        "run",
        "c2",
        "--guest",
        "6.2",
        "--mode",
        "relay",
        "--schedules",
        "3",
    ]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.starts_with("c2 6.2 relay: 0/3"), "{text}");
    assert!(!text.contains("direct"), "{text}");
    let out = petri(&[
        "run",
        "c2",
        "--guest",
        "6.2",
        "--mode",
        "both",
        "--schedules",
        "2",
    ]);
    assert_eq!(
        stdout(&out)
            .lines()
            .filter(|l| l.starts_with("c2 "))
            .count(),
        2
    );
    let out = petri(&["run", "c2", "--mode", "relay", "--direct"]);
    assert_eq!(out.status.code(), Some(2), "--mode and --direct conflict");
    let out = petri(&[
        "replay", "--seed", "0", "c2", "--guest", "6.2", "--mode", "relay",
    ]);
    assert!(stdout(&out).starts_with("c2 on linux-6.2 through the relay"));
    for command in ["run", "demo"] {
        let help = stdout(&petri(&[command, "--help"]));
        assert!(
            help.contains("--schedules") && help.contains("--real-schedules"),
            "{help}"
        );
        assert!(
            help.contains("[default: 20]") || help.contains("else 20]"),
            "{help}"
        );
        assert!(help.contains("scenario's own number"), "{help}");
    }
    assert!(stdout(&petri(&["run", "--help"])).contains("--mode <MODE>"));
}

/// A systematic run names its failing schedule, `replay --systematic N` replays that very
/// schedule, and a fully walked choice tree is called exhaustive.
#[test]
fn systematic_schedules_replay() {
    let out = petri(&[
        "run",
        "c2",
        "--guest",
        "6.2",
        "--direct",
        "--systematic",
        "--schedules",
        "50",
    ]);
    let text = stdout(&out);
    let cmd = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("replay: petri "))
        .unwrap_or_else(|| panic!("a replay command: {text}"));
    assert!(cmd.starts_with("replay --systematic "), "{cmd}");
    assert!(text.contains("not exhaustive"), "{text}");
    let args: Vec<&str> = cmd.split(' ').collect();
    let replay = stdout(&petri(&args));
    assert!(replay.contains("systematic schedule"), "{replay}");
    assert!(
        replay.contains("outcome: bus 0: guest null_deref"),
        "{replay}"
    );
    let out = petri(&["run", "c2", "--guest", "6.2", "--relay", "--systematic"]);
    let text = stdout(&out);
    assert!(
        text.contains("exhaustive: the systematic walk ran every schedule"),
        "{text}"
    );
    let out = petri(&[
        "run",
        "c2",
        "--guest",
        "6.2",
        "--relay",
        "--systematic",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(v["exhaustive"], true);
    assert_eq!(v["strategy"], "systematic");
    let out = petri(&[
        "replay",
        "--systematic",
        "99",
        "c2",
        "--guest",
        "6.2",
        "--relay",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no schedule 99"));
}
