//! docs/scenarios.md lists, for every table of a scenario file, exactly the keys the
//! deserializers accept: each table's accepted keys are read from the error a bogus key
//! gets, and compared with the page's table.

use petri::scenario::Scenario;
use std::collections::BTreeSet;

const BUS: &str = "name = \"x\"\n[[bus]]\nfunctions = [{ slot = 1 }]\n";
const STEP: &str = "[[bus.script.steps]]\nwhen = { at = \"1s\" }\n";
const RULE: &str = "[[bus.script.responses]]\nmessage = \"EJECT\"\n";

/// Each section of the page with TOML that puts a bogus key (or variant) in it.
fn probes() -> Vec<(&'static str, Vec<String>)> {
    let after = |extra: &str| vec![format!("{BUS}{extra}")];
    vec![
        ("top", vec![format!("bogus = 1\n{BUS}")]),
        ("guest", after("[guest]\nbogus = 1")),
        ("relay", after("[relay]\nbogus = 1")),
        ("limits", after("[limits]\nbogus = 1")),
        ("chaos", after("[chaos]\nbogus = 1")),
        ("expect", after("[[expect]]\nbogus = 1")),
        ("stall", after("[guest]\nstall = { bogus = 1 }")),
        ("check", after("[[check]]\nbogus = 1")),
        (
            "bus",
            vec!["name = \"x\"\n[[bus]]\nfunctions = [{ slot = 1 }]\nbogus = 1".to_owned()],
        ),
        (
            "function",
            vec!["name = \"x\"\n[[bus]]\nfunctions = [{ slot = 1, bogus = 1 }]".to_owned()],
        ),
        ("policy", after("[bus.policy]\nbogus = 1")),
        ("script", after("[bus.script]\nbogus = 1")),
        (
            "step",
            after(&format!(
                "{STEP}action = {{ kind = \"rescind\" }}\nbogus = 1"
            )),
        ),
        (
            "trigger",
            after("[[bus.script.steps]]\nwhen = { bogus = 1 }\naction = { kind = \"rescind\" }"),
        ),
        (
            "match",
            after(
                "[[bus.script.steps]]\nwhen = { received = { bogus = 1 } }\naction = { kind = \"rescind\" }",
            ),
        ),
        (
            "action",
            after(&format!("{STEP}action = {{ kind = \"bogus\" }}")),
        ),
        (
            "hostile",
            after(&format!(
                "{STEP}action = {{ kind = \"hostile\", packet = {{ type = \"bogus\" }} }}"
            )),
        ),
        (
            "bar",
            vec!["name = \"x\"\n[[bus]]\nfunctions = [{ slot = 1, bars = [{ bogus = 1 }] }]".to_owned()],
        ),
        (
            "msix",
            vec!["name = \"x\"\n[[bus]]\nfunctions = [{ slot = 1, msix = { bogus = 1 } }]".to_owned()],
        ),
        (
            "packet",
            [
                "raw",
                "unknown_message_type",
                "relations_count_overflow",
                "completion_for_unknown_transaction",
                "eject_unknown_slot",
            ]
            .into_iter()
            .map(|kind| {
                format!(
                    "{BUS}{STEP}action = {{ kind = \"hostile\", packet = {{ type = \"{kind}\", bogus = 1 }} }}"
                )
            })
            .collect(),
        ),
        (
            "response",
            vec![
                format!("{BUS}{RULE}response = \"bogus\""),
                format!("{BUS}{RULE}response = {{ bogus = 1 }}"),
            ],
        ),
    ]
}

/// The names after "expected" in a deserializer's error: in backquotes (serde's), else
/// separated by commas, `or` and `one of` (a response's own message).
fn accepted(error: &str) -> BTreeSet<String> {
    let Some((_, list)) = error.split_once("expected") else {
        panic!("no list of accepted keys in {error:?}");
    };
    if list.contains('`') {
        return list
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect();
    }
    list.replace(" or a table with one of ", ", ")
        .replace(" or ", ", ")
        .split(',')
        .map(|w| w.trim().to_owned())
        .filter(|w| !w.is_empty())
        .collect()
}

/// The first column's backquoted names of the table under `<!-- keys: id -->`.
fn documented(page: &str, id: &str) -> BTreeSet<String> {
    let marker = format!("<!-- keys: {id} -->");
    let Some((_, rest)) = page.split_once(&marker) else {
        panic!("docs/scenarios.md has no section {id}");
    };
    rest.lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2)
        .filter_map(|l| l.split('|').nth(1))
        .filter_map(|cell| cell.trim().strip_prefix('`')?.split('`').next())
        .map(|k| k.trim_matches('"').to_owned())
        .collect()
}

#[test]
fn the_reference_lists_every_key() {
    let page = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/scenarios.md"
    ))
    .expect("docs/scenarios.md");
    for (id, tomls) in probes() {
        let mut keys = BTreeSet::new();
        for toml in tomls {
            let e = Scenario::from_toml("probe.toml", &toml)
                .err()
                .unwrap_or_else(|| panic!("{id}: a bogus key was accepted:\n{toml}"));
            keys.extend(accepted(&e.to_string()));
        }
        assert_eq!(
            documented(&page, id),
            keys,
            "docs/scenarios.md section {id} (left) differs from what the deserializers accept (right)"
        );
    }
    assert!(
        page.contains("bare integer, which means **milliseconds**"),
        "durations' unit"
    );
}

/// An action or hostile packet that takes no other keys refuses one all the same, by name
/// (regression test: serde let a bogus key through on a kind without fields, so
/// `{ kind = "rescind", after = "5ms" }`, a misplaced `after`, was silently ignored).
#[test]
fn kinds_without_keys_refuse_a_bogus_one() {
    let actions = [
        "kind = \"rescind\"",
        "kind = \"send_relations\"",
        "kind = \"hostile\", packet = { type = \"empty\", bogus = 1 }",
        "kind = \"hostile\", packet = { type = \"truncated_relations\", bogus = 1 }",
        "kind = \"hostile\", packet = { type = \"repeat_last_completion\", bogus = 1 }",
    ];
    for action in actions {
        let bogus = if action.contains("bogus") {
            action.to_owned()
        } else {
            format!("{action}, bogus = 1")
        };
        let toml = format!("{BUS}{STEP}action = {{ {bogus} }}");
        let e = Scenario::from_toml("probe.toml", &toml)
            .err()
            .unwrap_or_else(|| panic!("a bogus key was accepted in {{ {bogus} }}"));
        assert!(
            e.to_string().contains("unknown field `bogus`"),
            "{action}: {e}"
        );
        let fine = format!(
            "{BUS}{STEP}action = {{ {} }}",
            bogus.replace(", bogus = 1", "")
        );
        Scenario::from_toml("probe.toml", &fine)
            .unwrap_or_else(|e| panic!("{{ {action} }} without the bogus key: {e}"));
    }
}
